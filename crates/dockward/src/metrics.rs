//! `GET /metrics`: per-route counters in Prometheus text format, read from the route table
//! at scrape time (no second set of counters to keep in step).
//!
//! Every per-route series carries the labels `alias`, `protocol` and `listen` (the bound
//! address, else the configured one).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use proxy_core::{Protocol, RouteState, RouteStatus};
use route_spec::{WAKE_BUCKETS, WakePhase, WakeStatus};

use crate::controller::View;
use crate::counters::{COUNTERS, Counts};
use crate::providers::ProviderError;

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
struct Sums {
    up: i64,
    /// TCP connections or UDP sessions (the labels say which), opened and open now.
    total: u64,
    active: i64,
    counters: Counts,
}

#[derive(Debug)]
struct RouteCollector {
    view: View,
}

impl Collector for RouteCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = self.view.table().access_log().map(|log| log.dropped());
        encode_routes(encoder, &self.view.table().status(), &self.view.provider_errors(), dropped)
    }
}

/// Encodes the per-route series of `statuses`, the provider-error gauge of `errors` and,
/// with an access log, the count of its `dropped` lines.
fn encode_routes(
    mut encoder: DescriptorEncoder,
    statuses: &[RouteStatus],
    errors: &[ProviderError],
    dropped: Option<u64>,
) -> Result<(), std::fmt::Error> {
    let mut routes: BTreeMap<RouteLabels, Sums> = BTreeMap::new();
    for status in statuses {
        let c = routes.entry(route_labels(status)).or_default();
        let s = &status.stats;
        c.up += i64::from(status.state == RouteState::Listening);
        c.total += s.total;
        c.active += i64::try_from(s.active).unwrap_or(i64::MAX);
        c.counters.add(&Counts::from_snapshot(s));
    }

    gauge(&mut encoder, &routes, "route_up", "1 while the route listens, 0 while it is in error or conflict", |c| {
        c.up
    })?;
    let tcp = |l: &RouteLabels| l[1].1 == Protocol::Tcp.as_str();
    let udp = |l: &RouteLabels| l[1].1 == Protocol::Udp.as_str();
    counter(&mut encoder, &routes, tcp, "route_connections", "TCP connections accepted and dialled", |c| c.total)?;
    gauge_if(&mut encoder, &routes, tcp, "route_connections_active", "TCP connections open now", |c| c.active)?;
    counter(&mut encoder, &routes, udp, "route_udp_sessions", "UDP sessions opened", |c| c.total)?;
    gauge_if(&mut encoder, &routes, udp, "route_udp_sessions_active", "UDP sessions open now", |c| c.active)?;
    for def in COUNTERS {
        let applies = |l: &RouteLabels| def.protocol.is_none_or(|p| l[1].1 == p.as_str());
        counter(&mut encoder, &routes, applies, def.metric, def.help, |c| c.counters.get(def.key).unwrap_or_default())?;
    }

    encode_sleep(&mut encoder, statuses)?;

    let mut by_source: BTreeMap<String, i64> = BTreeMap::new();
    for e in errors {
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
    if let Some(dropped) = dropped {
        let dropped = ConstCounter::new(dropped);
        let family = encoder.encode_descriptor(
            "access_log_dropped",
            "access-log lines dropped because the writer fell behind",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(family)?;
    }
    Ok(())
}

/// Idle sleep's series, present only when some route's container sleeps when idle: per
/// route, whether it sleeps or wakes now; per container, its wakes, sleeps, failures and the
/// wake-duration histogram.
fn encode_sleep(encoder: &mut DescriptorEncoder, statuses: &[RouteStatus]) -> Result<(), std::fmt::Error> {
    let mut phases: BTreeMap<RouteLabels, WakePhase> = BTreeMap::new();
    let mut containers: BTreeMap<String, WakeStatus> = BTreeMap::new();
    for status in statuses {
        let Some(wake) = &status.spec.hooks.wake else { continue };
        let w = wake.status();
        if let Some(phase) = w.phase {
            phases.insert(route_labels(status), phase);
        }
        containers.entry(w.name.clone()).or_insert(w);
    }
    if phases.is_empty() && containers.is_empty() {
        return Ok(());
    }
    for (name, help, which) in [
        ("route_sleeping", "1 while the route's container sleeps (or is being put to sleep)", 0),
        ("route_waking", "1 while the route's container wakes, its clients held", 1),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        for (labels, phase) in &phases {
            let on = match which {
                0 => matches!(phase, WakePhase::Sleeping | WakePhase::Stopping),
                _ => *phase == WakePhase::Waking,
            };
            ConstGauge::new(i64::from(on)).encode(family.encode_family(labels)?)?;
        }
    }
    type Read = fn(&WakeStatus) -> u64;
    let counters: [(&str, &str, Read); 3] = [
        ("container_wakes", "wakes of a sleeping container that ended ready", |w| w.wakes),
        ("container_sleeps", "times a container was put to sleep for idleness", |w| w.sleeps),
        ("container_wake_failures", "wakes that failed or timed out", |w| w.wake_failures),
    ];
    for (name, help, read) in counters {
        let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (container, w) in &containers {
            let labels = [("container", container.clone())];
            ConstCounter::new(read(w)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "container_wake_duration_seconds",
        "from the first client to the container ready, for wakes that succeeded",
        None,
        MetricType::Histogram,
    )?;
    for (container, w) in &containers {
        let labels = [("container", container.clone())];
        let buckets: Vec<(f64, u64)> = WAKE_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(w.wake_buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        family.encode_family(&labels)?.encode_histogram::<Vec<(String, String)>>(
            w.wake_seconds,
            w.wakes,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// The labels of a route's series.
fn route_labels(status: &RouteStatus) -> RouteLabels {
    let spec = &status.spec;
    [
        ("alias", spec.alias.clone()),
        ("protocol", spec.protocol.as_str().to_string()),
        // The listening address, not the source: a load-balanced route's source is the
        // list of its replicas, which changes on every scale up or down and would start
        // a new series (and reset every counter) each time.
        ("listen", status.bound.unwrap_or(spec.listen).to_string()),
    ]
}

fn counter(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Sums>,
    keep: impl Fn(&RouteLabels) -> bool,
    name: &str,
    help: &str,
    value: impl Fn(&Sums) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, counts) in routes.iter().filter(|(l, _)| keep(l)) {
        ConstCounter::new(value(counts)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_if(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Sums>,
    keep: impl Fn(&RouteLabels) -> bool,
    name: &str,
    help: &str,
    value: impl Fn(&Sums) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, counts) in routes.iter().filter(|(l, _)| keep(l)) {
        ConstGauge::new(value(counts)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<RouteLabels, Sums>,
    name: &str,
    help: &str,
    value: impl Fn(&Sums) -> i64,
) -> Result<(), std::fmt::Error> {
    gauge_if(encoder, routes, |_| true, name, help, value)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use proxy_core::{RouteSpec, StatsSnapshot, Target};

    use super::*;

    /// A collector over fixed statuses, for tests.
    #[derive(Debug)]
    struct Fixed(Vec<RouteStatus>, Vec<ProviderError>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_routes(encoder, &self.0, &self.1, None)
        }
    }

    // `..Default::default()` is needless until a counter is added: then the golden files
    // gain it (as 0) and nothing else changes here.
    #[allow(clippy::needless_update)]
    fn status(alias: &str, protocol: Protocol, listen: &str, state: RouteState, n: u64) -> RouteStatus {
        let spec = RouteSpec::new(alias, protocol, listen.parse().unwrap(), vec![Target::new("127.0.0.1", 22)]);
        RouteStatus {
            bound: None,
            spec,
            state,
            since: SystemTime::UNIX_EPOCH,
            stats: StatsSnapshot {
                active: n,
                total: n + 1,
                bytes_in: n + 2,
                bytes_out: n + 3,
                datagrams_in: n + 4,
                datagrams_out: n + 5,
                dial_errors: n + 6,
                rejected: n + 7,
                evicted: n + 8,
                dropped: n + 9,
                denied: n + 10,
                proxy_header_errors: n + 11,
                ..Default::default()
            },
            targets: Vec::new(),
        }
    }

    fn exposition(openmetrics: bool) -> String {
        let mut registry = Registry::with_prefix("dockward");
        let error = RouteState::Error { message: "bind failed".into() };
        registry.register_collector(Box::new(Fixed(
            vec![
                status("ssh", Protocol::Tcp, "127.0.0.1:2222", RouteState::Listening, 100),
                status("dns", Protocol::Udp, "127.0.0.1:5353", RouteState::Listening, 200),
                // Two entries with the same labels are added up.
                status("dns", Protocol::Udp, "127.0.0.1:5353", error, 1000),
            ],
            vec![ProviderError::whole("r.yml", "bad"), ProviderError::route("r.yml", "x", "bad")],
        )));
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        }
        out
    }

    #[test]
    fn the_exposition_is_exactly_the_documented_one() {
        // Byte for byte, family order included: the files were taken before the counters
        // were declared in one list, and guard that list's output.
        assert_eq!(exposition(false), include_str!("../testdata/metrics.prom"));
        assert_eq!(exposition(true), include_str!("../testdata/metrics.openmetrics"));
    }
}
