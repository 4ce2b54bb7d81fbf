//! The last minutes of every route's counters, for the status page's sparklines.
//!
//! A sampler takes one [`Sample`] per route every [`SAMPLE_INTERVAL`] and keeps the latest
//! [`SAMPLES`] of each (ten minutes), so a page opened now draws the recent past at once
//! instead of starting from an empty chart. Memory is bounded: at most [`MAX_SERIES`] routes
//! are followed, a route's series is dropped when it leaves the table, and each series is a
//! fixed-size ring. `GET /history` serves it as [`HistoryJson`].
//!
//! Samples hold the counters as `GET /routes` shows them (cumulative), not rates: the page
//! divides differences by elapsed time, the same way for these samples as for the ones it
//! polls itself, and a counter that went down (the route was removed and added again)
//! counts as a restart from 0.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::controller::View;
use crate::routes_view::{self, RouteRow};

/// How often every route is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How many samples a route keeps: ten minutes at [`SAMPLE_INTERVAL`].
pub const SAMPLES: usize = 120;

/// How many routes are followed at most; routes beyond it (in `GET /routes` order) have no
/// history. 512 routes × 120 samples × 40 bytes is under 2.5 MiB.
pub const MAX_SERIES: usize = 512;

/// The names of a sample's fields, in the order [`Sample`] serialises them.
pub const FIELDS: [&str; 5] = ["t", "bytes_in", "bytes_out", "connections_active", "connections_total"];

/// The counters of one route at one moment, serialised as an array in [`FIELDS`] order
/// (`t` in milliseconds since the Unix epoch) to keep `GET /history` small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample(pub u64, pub u64, pub u64, pub u64, pub u64);

/// Which route a series belongs to: the labels `/metrics` uses too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    alias: String,
    protocol: &'static str,
    listen: String,
}

/// The shared ring of samples; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    series: Arc<Mutex<BTreeMap<Key, VecDeque<Sample>>>>,
}

/// What `GET /history` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryJson {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// Samples kept per route at most.
    pub capacity: usize,
    /// The server's clock when the answer was made (ms since the Unix epoch), so a client
    /// with another clock can place samples by their age.
    pub now: u64,
    /// The names of each sample's fields, in order.
    pub fields: [&'static str; 5],
    /// One entry per route followed.
    pub series: Vec<SeriesJson>,
}

/// One route's samples, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeriesJson {
    /// The route's alias.
    pub alias: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The listen address as `GET /routes` shows it.
    pub listen: String,
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, VecDeque<Sample>>> {
        // A panic while holding the lock cannot leave a ring half-written in a way that
        // matters for a chart; keep serving.
        self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one sample of every route among `rows` (provider errors are skipped) taken
    /// at `now`, and forgets the routes no longer there.
    pub fn record(&self, rows: &[RouteRow], now: SystemTime) {
        let t = unix_ms(now);
        let mut series = self.lock();
        let mut seen = Vec::with_capacity(rows.len().min(MAX_SERIES));
        for row in rows {
            let (Some(alias), Some(protocol), Some(listen)) = (&row.alias, row.protocol, &row.listen) else {
                continue;
            };
            let key = Key { alias: alias.clone(), protocol: protocol.as_str(), listen: listen.clone() };
            if !series.contains_key(&key) && series.len() >= MAX_SERIES {
                continue;
            }
            let ring = series.entry(key.clone()).or_insert_with(|| VecDeque::with_capacity(SAMPLES));
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(Sample(
                t,
                row.counter("bytes_in"),
                row.counter("bytes_out"),
                row.connections_active,
                row.connections_total,
            ));
            seen.push(key);
        }
        seen.sort();
        series.retain(|key, _| seen.binary_search(key).is_ok());
    }

    /// Everything kept, as `GET /history` answers it at `now`.
    pub fn to_json(&self, now: SystemTime) -> HistoryJson {
        let series = self
            .lock()
            .iter()
            .map(|(key, ring)| SeriesJson {
                alias: key.alias.clone(),
                protocol: key.protocol,
                listen: key.listen.clone(),
                samples: ring.iter().copied().collect(),
            })
            .collect();
        HistoryJson {
            interval_seconds: SAMPLE_INTERVAL.as_secs(),
            capacity: SAMPLES,
            now: unix_ms(now),
            fields: FIELDS,
            series,
        }
    }

    /// Samples `view` now and every [`SAMPLE_INTERVAL`] until `shutdown` fires.
    pub async fn run(self, view: View, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = SystemTime::now();
                    self.record(&routes_view::rows(&view.table().status(), &[], now), now);
                }
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proxy_core::{Protocol, StatsSnapshot};

    use super::*;
    use crate::counters::Counts;
    use crate::providers::ProviderError;

    fn row(alias: &str, listen: &str, bytes: u64) -> RouteRow {
        let mut row = RouteRow::from_error(&ProviderError::route("r.yml", alias, "x"));
        row.protocol = Some(Protocol::Tcp);
        row.listen = Some(listen.to_string());
        row.counters =
            Counts::from_snapshot(&StatsSnapshot { bytes_in: bytes, bytes_out: bytes * 2, ..Default::default() });
        row.connections_active = 1;
        row.connections_total = bytes / 10;
        row
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_route_keeps_its_latest_samples_oldest_first() {
        let history = History::new();
        for i in 0..SAMPLES as u64 + 3 {
            history.record(&[row("ssh", "127.0.0.1:2222", i * 10)], at(i * 5));
        }
        let json = history.to_json(at(1000));
        assert_eq!((json.interval_seconds, json.capacity, json.now), (5, SAMPLES, 1_000_000));
        assert_eq!(json.series.len(), 1);
        let series = &json.series[0];
        assert_eq!((series.alias.as_str(), series.protocol, series.listen.as_str()), ("ssh", "tcp", "127.0.0.1:2222"));
        assert_eq!(series.samples.len(), SAMPLES);
        assert_eq!(series.samples[0], Sample(15_000, 30, 60, 1, 3));
        assert_eq!(series.samples[SAMPLES - 1].0, (SAMPLES as u64 + 2) * 5000);
        assert_eq!(
            serde_json::to_value(&json).unwrap()["series"][0]["samples"][0],
            serde_json::json!([15_000, 30, 60, 1, 3])
        );
    }

    #[test]
    fn removed_routes_and_provider_errors_have_no_series() {
        let history = History::new();
        history.record(&[row("a", "127.0.0.1:1", 1), row("b", "127.0.0.1:2", 1)], at(0));
        let error = RouteRow::from_error(&ProviderError::whole("r.yml", "not YAML"));
        history.record(&[row("b", "127.0.0.1:2", 2), error], at(5));
        let json = history.to_json(at(5));
        let names: Vec<&str> = json.series.iter().map(|s| s.alias.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(json.series[0].samples.len(), 2);
    }

    #[test]
    fn at_most_max_series_routes_are_followed() {
        let history = History::new();
        let rows: Vec<RouteRow> = (0..MAX_SERIES + 10).map(|i| row(&format!("r{i:04}"), "127.0.0.1:1", 0)).collect();
        history.record(&rows, at(0));
        history.record(&rows, at(5));
        let json = history.to_json(at(5));
        assert_eq!(json.series.len(), MAX_SERIES);
        assert!(json.series.iter().all(|s| s.samples.len() == 2));
    }
}
