//! Every per-route counter, declared once: [`COUNTERS`] drives the JSON row of `GET /routes`
//! (and `dockward routes --json`), the `dockward routes` table and `/metrics`.
//!
//! A new counter is its field in proxy-core's `stats.rs` (one entry), where it is incremented,
//! and one entry here. The connection counts (`connections_active`/`_total`) are not in the
//! list: they are a gauge and a counter whose /metrics family depends on the protocol
//! (`route_connections` for TCP, `route_udp_sessions` for UDP) and the table shows them as one
//! `CONNS` column; `routes_view` and `metrics` handle them by name.

use proxy_core::{Protocol, StatsSnapshot};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A counter's column in the `dockward routes` table: its header and how a value is shown.
pub type Column = (&'static str, fn(u64) -> String);

/// One per-route counter: what the JSON row, the table and /metrics need to show it.
#[derive(Debug)]
pub struct Counter {
    /// Its key in a `GET /routes` row.
    pub key: &'static str,
    /// Its /metrics family, without the `dockward_` prefix and the `_total` suffix.
    pub metric: &'static str,
    /// The family's HELP text.
    pub help: &'static str,
    /// The protocol of the routes it counts for; `None` for both. /metrics has a series only
    /// for those routes (the JSON row always has the key, 0 where it does not apply).
    pub protocol: Option<Protocol>,
    /// Its column in the `dockward routes` table, if it has one, and how a value is shown.
    pub column: Option<Column>,
    /// How it is read from a route's counters.
    pub read: fn(&StatsSnapshot) -> u64,
}

/// Every per-route counter, in the order of the JSON row's keys and of /metrics families.
pub const COUNTERS: &[Counter] = &[
    Counter {
        key: "bytes_in",
        metric: "route_bytes_in",
        help: "bytes from clients to targets",
        protocol: None,
        column: Some(("IN", human_bytes)),
        read: |s| s.bytes_in,
    },
    Counter {
        key: "bytes_out",
        metric: "route_bytes_out",
        help: "bytes from targets to clients",
        protocol: None,
        column: Some(("OUT", human_bytes)),
        read: |s| s.bytes_out,
    },
    Counter {
        key: "datagrams_in",
        metric: "route_datagrams_in",
        help: "datagrams from clients to targets",
        protocol: Some(Protocol::Udp),
        column: None,
        read: |s| s.datagrams_in,
    },
    Counter {
        key: "datagrams_out",
        metric: "route_datagrams_out",
        help: "datagrams from targets to clients",
        protocol: Some(Protocol::Udp),
        column: None,
        read: |s| s.datagrams_out,
    },
    Counter {
        key: "dial_errors",
        metric: "route_dial_errors",
        help: "dials that reached no target",
        protocol: None,
        column: None,
        read: |s| s.dial_errors,
    },
    Counter {
        key: "rejected",
        metric: "route_rejected",
        help: "clients turned away by max_connections or a hook",
        protocol: None,
        column: None,
        read: |s| s.rejected,
    },
    Counter {
        key: "evicted",
        metric: "route_udp_evicted",
        help: "UDP sessions evicted at max_udp_sessions",
        protocol: Some(Protocol::Udp),
        column: None,
        read: |s| s.evicted,
    },
    Counter {
        key: "dropped",
        metric: "route_udp_dropped",
        help: "UDP datagrams dropped",
        protocol: Some(Protocol::Udp),
        column: None,
        read: |s| s.dropped,
    },
    Counter {
        key: "denied",
        metric: "route_denied",
        help: "clients refused by the route's or the global ACL (TCP connections, UDP datagrams)",
        protocol: None,
        column: None,
        read: |s| s.denied,
    },
    Counter {
        key: "proxy_header_errors",
        metric: "route_proxy_header_errors",
        help: "TCP connections closed for a missing, invalid, late or untrusted PROXY header",
        protocol: Some(Protocol::Tcp),
        column: None,
        read: |s| s.proxy_header_errors,
    },
    Counter {
        key: "limited",
        metric: "route_limited",
        help: "clients over max_connections_per_ip or rate_limit (TCP connections, UDP datagrams)",
        protocol: None,
        column: None,
        read: |s| s.limited,
    },
    Counter {
        key: "held",
        metric: "route_held",
        help: "clients held while their sleeping container woke (idle sleep)",
        protocol: None,
        column: None,
        read: |s| s.held,
    },
    Counter {
        key: "wake_failed",
        metric: "route_wake_failed",
        help: "held clients given up because the wake failed or timed out",
        protocol: None,
        column: None,
        read: |s| s.wake_failed,
    },
    Counter {
        key: "buffered",
        metric: "route_buffered",
        help: "datagrams buffered while a sleeping container woke",
        protocol: Some(Protocol::Udp),
        column: None,
        read: |s| s.buffered,
    },
];

/// The values of [`COUNTERS`] for one route, in their order. In JSON, one key per counter
/// (meant to be flattened into a row); a missing key reads as 0, an unknown one is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u64; N]);

/// How many counters [`COUNTERS`] has.
const N: usize = COUNTERS.len();

impl Counts {
    /// Every counter read from `stats`.
    pub fn from_snapshot(stats: &StatsSnapshot) -> Self {
        Counts(std::array::from_fn(|i| (COUNTERS[i].read)(stats)))
    }

    /// Each counter with its value, in [`COUNTERS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static Counter, u64)> + '_ {
        COUNTERS.iter().zip(self.0)
    }

    /// The value of the counter whose JSON key is `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.iter().find(|(c, _)| c.key == key).map(|(_, n)| n)
    }

    /// Adds `other` counter by counter (saturating).
    pub fn add(&mut self, other: &Counts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(N))?;
        for (c, n) in self.iter() {
            map.serialize_entry(c.key, &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;

        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = Counts;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of route counters")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut counts = Counts::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match COUNTERS.iter().position(|c| c.key == key) {
                        Some(i) => counts.0[i] = map.next_value()?,
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(counts)
            }
        }

        deserializer.deserialize_map(CountsVisitor)
    }
}

/// `0 B`, `512 B`, `1.5 KiB`, `12.0 MiB`: bytes in binary units with one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_metric_names_are_unique_and_well_formed() {
        let mut keys: Vec<&str> = COUNTERS.iter().map(|c| c.key).collect();
        let mut metrics: Vec<&str> = COUNTERS.iter().map(|c| c.metric).collect();
        keys.sort_unstable();
        keys.dedup();
        metrics.sort_unstable();
        metrics.dedup();
        assert_eq!((keys.len(), metrics.len()), (COUNTERS.len(), COUNTERS.len()));
        for c in COUNTERS {
            assert!(c.metric.starts_with("route_") && !c.metric.ends_with("_total"), "{}", c.metric);
            assert!(c.key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", c.key);
        }
    }

    /// By convention a counter's JSON key is the name of its field in proxy-core's snapshot.
    #[test]
    fn every_counter_reads_its_own_field() {
        let s = StatsSnapshot {
            bytes_in: 1,
            bytes_out: 2,
            datagrams_in: 3,
            datagrams_out: 4,
            dial_errors: 5,
            rejected: 6,
            evicted: 7,
            dropped: 8,
            denied: 9,
            proxy_header_errors: 10,
            limited: 11,
            ..Default::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        for (c, n) in Counts::from_snapshot(&s).iter() {
            assert_eq!(json[c.key].as_u64(), Some(n), "{}", c.key);
        }
    }

    #[test]
    fn json_keeps_the_order_reads_missing_as_zero_and_ignores_unknown_keys() {
        let counts = Counts::from_snapshot(&StatsSnapshot { denied: 4, ..Default::default() });
        let text = serde_json::to_string(&counts).unwrap();
        assert!(text.starts_with(r#"{"bytes_in":0,"bytes_out":0,"#), "{text}");
        assert!(text.contains(r#","denied":4,"#), "{text}");
        assert_eq!(text.matches(':').count(), COUNTERS.len(), "{text}");
        let back: Counts = serde_json::from_str(r#"{"denied": 4, "from_the_future": [1]}"#).unwrap();
        assert_eq!(back, counts);
        assert_eq!(back.get("denied"), Some(4));
        assert_eq!(back.get("nope"), None);
    }
}
