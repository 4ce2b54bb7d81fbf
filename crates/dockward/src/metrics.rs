//! `GET /metrics`: per-route counters in Prometheus text format, read from the route table
//! at scrape time (no second set of counters to keep in step).
//!
//! Every per-route series carries the labels `alias`, `protocol` and `listen` (the bound
//! address, else the configured one).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use proxy_core::{Protocol, RouteState};

use crate::controller::View;

/// The content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics registry of one controller.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry whose collector reads `view` at each scrape.
    pub fn new(view: View) -> Self {
        let mut registry = Registry::with_prefix("dockward");
        registry.register("build", "dockward's version", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        registry.register_collector(Box::new(RouteCollector { view }));
        Metrics { registry }
    }

    /// The exposition and its content type: OpenMetrics when asked for, else Prometheus text.
    pub fn encode(&self, openmetrics: bool) -> Result<(String, &'static str), std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            Ok((out, OPENMETRICS_TEXT))
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            Ok((out, PROMETHEUS_TEXT))
        }
    }
}

/// Labels of a per-route series.
type RouteLabels = [(&'static str, String); 3];

/// Sums of one route's counters (two table entries may share labels; they are added up).
#[derive(Default)]
struct Counts {
    up: i64,
    connections_total: u64,
    connections_active: i64,
    udp_sessions_total: u64,
    udp_sessions_active: i64,
    bytes_in: u64,
    bytes_out: u64,
    datagrams_in: u64,
    datagrams_out: u64,
    dial_errors: u64,
    rejected: u64,
    udp_evicted: u64,
    udp_dropped: u64,
    denied: u64,
    proxy_header_errors: u64,
    limited: u64,
}

#[derive(Debug)]
struct RouteCollector {
    view: View,
}

impl Collector for RouteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut routes: BTreeMap<RouteLabels, Counts> = BTreeMap::new();
        for status in self.view.table().status() {
            let spec = &status.spec;
            let labels = [
                ("alias", spec.alias.clone()),
                ("protocol", spec.protocol.as_str().to_string()),
                // The listening address, not the source: a load-balanced route's source is the
                // list of its replicas, which changes on every scale up or down and would start
                // a new series (and reset every counter) each time.
                ("listen", status.bound.unwrap_or(spec.listen).to_string()),
            ];
            let c = routes.entry(labels).or_default();
            let s = &status.stats;
            c.up += i64::from(status.state == RouteState::Listening);
            match spec.protocol {
                Protocol::Tcp => {
                    c.connections_total += s.total;
                    c.connections_active += s.active as i64;
                }
                Protocol::Udp => {
                    c.udp_sessions_total += s.total;
                    c.udp_sessions_active += s.active as i64;
                }
            }
            c.bytes_in += s.bytes_in;
            c.bytes_out += s.bytes_out;
            c.datagrams_in += s.datagrams_in;
            c.datagrams_out += s.datagrams_out;
            c.dial_errors += s.dial_errors;
            c.rejected += s.rejected;
            c.udp_evicted += s.evicted;
            c.udp_dropped += s.dropped;
            c.denied += s.denied;
            c.proxy_header_errors += s.proxy_header_errors;
            c.limited += s.limited;
        }

        gauge(
            &mut encoder,
            &routes,
            "route_up",
            "1 while the route listens, 0 while it is in error or conflict",
            |c| c.up,
        )?;
        let tcp = |l: &RouteLabels| l[1].1 == "tcp";
        let udp = |l: &RouteLabels| l[1].1 == "udp";
        counter(&mut encoder, &routes, tcp, "route_connections", "TCP connections accepted and dialled", |c| {
            c.connections_total
        })?;
        gauge_if(&mut encoder, &routes, tcp, "route_connections_active", "TCP connections open now", |c| {
            c.connections_active
        })?;
        counter(&mut encoder, &routes, udp, "route_udp_sessions", "UDP sessions opened", |c| c.udp_sessions_total)?;
        gauge_if(&mut encoder, &routes, udp, "route_udp_sessions_active", "UDP sessions open now", |c| {
            c.udp_sessions_active
        })?;
        let all = |_: &RouteLabels| true;
        counter(&mut encoder, &routes, all, "route_bytes_in", "bytes from clients to targets", |c| c.bytes_in)?;
        counter(&mut encoder, &routes, all, "route_bytes_out", "bytes from targets to clients", |c| c.bytes_out)?;
        counter(&mut encoder, &routes, udp, "route_datagrams_in", "datagrams from clients to targets", |c| {
            c.datagrams_in
        })?;
        counter(&mut encoder, &routes, udp, "route_datagrams_out", "datagrams from targets to clients", |c| {
            c.datagrams_out
        })?;
        counter(&mut encoder, &routes, all, "route_dial_errors", "dials that reached no target", |c| c.dial_errors)?;
        counter(
            &mut encoder,
            &routes,
            all,
            "route_rejected",
            "clients turned away by max_connections or a hook",
            |c| c.rejected,
        )?;
        counter(&mut encoder, &routes, udp, "route_udp_evicted", "UDP sessions evicted at max_udp_sessions", |c| {
            c.udp_evicted
        })?;
        counter(&mut encoder, &routes, udp, "route_udp_dropped", "UDP datagrams dropped", |c| c.udp_dropped)?;
        counter(
            &mut encoder,
            &routes,
            all,
            "route_denied",
            "clients refused by the route's or the global ACL (TCP connections, UDP datagrams)",
            |c| c.denied,
        )?;
        counter(
            &mut encoder,
            &routes,
            tcp,
            "route_proxy_header_errors",
            "TCP connections closed for a missing, invalid, late or untrusted PROXY header",
            |c| c.proxy_header_errors,
        )?;
        counter(
            &mut encoder,
            &routes,
            all,
            "route_limited",
            "clients over max_connections_per_ip or rate_limit (TCP connections, UDP datagrams)",
            |c| c.limited,
        )?;
        if let Some(log) = self.view.table().access_log() {
            let dropped = ConstCounter::new(log.dropped());
            let family = encoder.encode_descriptor(
                "access_log_dropped",
                "access-log lines dropped because the writer fell behind",
                None,
                dropped.metric_type(),
            )?;
            dropped.encode(family)?;
        }

        let errors = self.view.provider_errors();
        let mut by_source: BTreeMap<String, i64> = BTreeMap::new();
        for e in &errors {
            *by_source.entry(e.source.clone()).or_default() += 1;
        }
        let gauge_metric = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "provider_errors",
            "inputs that did not become routes, by source",
            None,
            gauge_metric.metric_type(),
        )?;
        for (source, n) in by_source {
            let labels = [("source", source)];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Counts>,
    keep: impl Fn(&RouteLabels) -> bool,
    name: &str,
    help: &str,
    value: impl Fn(&Counts) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, counts) in routes.iter().filter(|(l, _)| keep(l)) {
        ConstCounter::new(value(counts)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_if(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Counts>,
    keep: impl Fn(&RouteLabels) -> bool,
    name: &str,
    help: &str,
    value: impl Fn(&Counts) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, counts) in routes.iter().filter(|(l, _)| keep(l)) {
        ConstGauge::new(value(counts)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Counts>,
    name: &str,
    help: &str,
    value: impl Fn(&Counts) -> i64,
) -> Result<(), std::fmt::Error> {
    gauge_if(encoder, routes, |_| true, name, help, value)
}
