//! What `dockward routes` and `GET /routes` show: one [`RouteRow`] per route or provider
//! error, as JSON or as a table.

use std::time::SystemTime;

use proxy_core::{Protocol, RouteState, RouteStatus};
use route_spec::WakePhase;
use serde::{Deserialize, Serialize};

use crate::counters::{COUNTERS, Counts};
use crate::providers::ProviderError;

/// One line of `dockward routes`: a route in the table, or an input that did not become one.
///
/// This is the JSON contract of `GET /routes` and `dockward routes --json`; fields are only
/// ever added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// The route's alias; `null` for an error about a whole input (a file that is not YAML).
    pub alias: Option<String>,
    /// `tcp` or `udp`; `null` for a provider error.
    pub protocol: Option<Protocol>,
    /// The scheme as written: `tcp`, `udp4`, ...; `null` for a provider error.
    pub scheme: Option<String>,
    /// The address actually bound while listening (with the OS-picked port), else the one asked for.
    pub listen: Option<String>,
    /// Where connections go, as `host:port`.
    pub targets: Vec<String>,
    /// Each target's health and connections, in `targets` order, while listening.
    #[serde(default)]
    pub target_health: Vec<TargetHealth>,
    /// Where the route came from: a file path or a container name.
    pub source: String,
    /// `listening`, `error` or `conflict`; with idle sleep, `sleeping`, `waking` or
    /// `stopping` while the route listens and its container is not up.
    pub state: String,
    /// Why the route is not listening; `null` while it is.
    pub error: Option<String>,
    /// TCP connections or UDP sessions open now.
    pub connections_active: u64,
    /// TCP connections or UDP sessions opened since the route started.
    pub connections_total: u64,
    /// Every other counter of [`COUNTERS`], one key each (`bytes_in`, `denied`, ...).
    #[serde(flatten)]
    pub counters: Counts,
    /// The latest error seen on the data path (a failed dial), even while listening.
    pub last_error: Option<String>,
    /// When the route entered the table (RFC 3339, UTC); `null` for a provider error.
    pub since: Option<String>,
    /// Seconds since `since`, when the answer was made.
    pub age_seconds: Option<u64>,
}

/// One target of a listening route, as `GET /routes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// The target as `host:port`.
    pub target: String,
    /// False while it is marked down (a failed dial or health check), or while its
    /// provider calls it unhealthy.
    pub healthy: bool,
    /// TCP connections or UDP sessions open on it now.
    pub active: u64,
    /// TCP connections or UDP sessions opened on it.
    pub total: u64,
    /// Failures in a row; 0 once it answers again.
    pub failures: u64,
    /// The latest failure, kept after it recovers.
    pub last_error: Option<String>,
    /// Its provider's verdict (`docker: healthy`, `docker: starting`, `docker: unhealthy`),
    /// `null` without one.
    #[serde(default)]
    pub verdict: Option<String>,
}

impl RouteRow {
    /// The row of a route in the table, as of `now`.
    pub fn from_status(status: &RouteStatus, now: SystemTime) -> Self {
        let spec = &status.spec;
        let s = &status.stats;
        RouteRow {
            alias: Some(spec.alias.clone()),
            protocol: Some(spec.protocol),
            scheme: Some(spec.scheme().to_string()),
            listen: Some(status.bound.unwrap_or(spec.listen).to_string()),
            targets: spec.targets.iter().map(|t| t.to_string()).collect(),
            target_health: status
                .targets
                .iter()
                .map(|t| TargetHealth {
                    target: t.target.to_string(),
                    healthy: t.healthy,
                    active: t.active,
                    total: t.total,
                    failures: t.failures,
                    last_error: t.last_error.clone(),
                    verdict: t.verdict.as_ref().map(ToString::to_string),
                })
                .collect(),
            source: spec.source.clone(),
            state: state_name(status),
            error: status.state.message(),
            connections_active: s.active,
            connections_total: s.total,
            counters: Counts::from_snapshot(s),
            last_error: s.last_error.clone(),
            since: Some(humantime::format_rfc3339_seconds(status.since).to_string()),
            age_seconds: Some(now.duration_since(status.since).unwrap_or_default().as_secs()),
        }
    }

    /// The value of the counter whose JSON key is `key` (`bytes_in`, `denied`, ...; see
    /// [`COUNTERS`]); 0 for a key that is not a counter.
    pub fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).unwrap_or_default()
    }

    /// The row of an input that did not become a route.
    pub fn from_error(error: &ProviderError) -> Self {
        RouteRow {
            alias: error.alias.clone(),
            source: error.source.clone(),
            state: RouteState::Error { message: String::new() }.name().to_string(),
            error: Some(error.message.clone()),
            ..Default::default()
        }
    }
}

/// `listening`, `error` or `conflict`; a listening route of a container that sleeps when
/// idle shows `sleeping` (or `waking`, or `stopping`) while its container is not up.
fn state_name(status: &RouteStatus) -> String {
    if status.state == RouteState::Listening
        && let Some(wake) = &status.spec.hooks.wake
        && let Some(phase) = wake.status().phase
        && phase != WakePhase::Awake
    {
        return phase.as_str().to_string();
    }
    status.state.name().to_string()
}

/// Every row: routes in the table and provider errors, by source, then alias.
pub fn rows(statuses: &[RouteStatus], errors: &[ProviderError], now: SystemTime) -> Vec<RouteRow> {
    let mut rows: Vec<RouteRow> = statuses.iter().map(|s| RouteRow::from_status(s, now)).collect();
    rows.extend(errors.iter().map(RouteRow::from_error));
    // Stable: a route's error row stays right after the route it did not replace.
    rows.sort_by(|a, b| (&a.source, &a.alias).cmp(&(&b.source, &b.alias)));
    rows
}

/// Renders rows as the `dockward routes` table, header included, one line per row.
pub fn render_table(rows: &[RouteRow]) -> String {
    // The counters with a column (IN, OUT) come from the counter list, between CONNS and AGE.
    let columns = || COUNTERS.iter().filter_map(|c| c.column);
    let mut header = vec!["ALIAS", "PROTO", "LISTEN", "TARGETS", "SOURCE", "STATE", "CONNS"];
    header.extend(columns().map(|(name, _)| name));
    header.push("AGE");
    let dash = || "-".to_string();
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = match &r.error {
                Some(e) => format!("{}: {e}", r.state),
                None => r.state.clone(),
            };
            let is_route = r.protocol.is_some();
            let mut line = vec![
                r.alias.clone().unwrap_or_else(dash),
                r.scheme.clone().unwrap_or_else(dash),
                r.listen.clone().unwrap_or_else(dash),
                if r.targets.is_empty() { dash() } else { targets_cell(r) },
                r.source.clone(),
                state,
                if is_route { format!("{}/{}", r.connections_active, r.connections_total) } else { dash() },
            ];
            line.extend(
                r.counters
                    .iter()
                    .filter_map(|(c, n)| c.column.map(|(_, show)| if is_route { show(n) } else { dash() })),
            );
            line.push(r.age_seconds.map(human_age).unwrap_or_else(dash));
            line
        })
        .collect();
    crate::table::render(&header, &lines)
}

/// The targets, each marked `(down)` while it is marked unhealthy, with its provider's
/// verdict unless that is healthy: `10.0.0.5:80(down, docker: unhealthy)`,
/// `10.0.0.6:80(docker: starting)`.
fn targets_cell(row: &RouteRow) -> String {
    let cells: Vec<String> = row
        .targets
        .iter()
        .map(|t| {
            let Some(h) = row.target_health.iter().find(|h| &h.target == t) else { return t.clone() };
            let mut marks: Vec<&str> = Vec::new();
            if !h.healthy {
                marks.push("down");
            }
            marks.extend(h.verdict.as_deref().filter(|v| !v.ends_with(": healthy")));
            if marks.is_empty() { t.clone() } else { format!("{t}({})", marks.join(", ")) }
        })
        .collect();
    cells.join(",")
}

/// `42s`, `5m`, `3h`, `2d`: the largest whole unit of an age in seconds.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::counters::human_bytes;
    use proxy_core::{RouteId, RouteSpec, StatsSnapshot, Target, TargetStatus};

    use super::*;
    use crate::table::MAX_CELL_WIDTH;

    fn status(alias: &str, state: RouteState) -> RouteStatus {
        let spec =
            RouteSpec::new(alias, Protocol::Tcp, "127.0.0.1:0".parse().unwrap(), vec![Target::new("127.0.0.1", 22)])
                .with_source("r.yml");
        RouteStatus {
            bound: (state == RouteState::Listening).then(|| "127.0.0.1:40022".parse().unwrap()),
            spec,
            state,
            since: SystemTime::UNIX_EPOCH,
            stats: StatsSnapshot {
                active: 1,
                total: 3,
                bytes_in: 1536,
                bytes_out: 5,
                denied: 4,
                proxy_header_errors: 2,
                ..Default::default()
            },
            targets: Vec::new(),
        }
    }

    #[test]
    fn a_listening_route_shows_its_bound_address_and_counters() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(125);
        let row = RouteRow::from_status(&status("ssh", RouteState::Listening), now);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["alias"], "ssh");
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["listen"], "127.0.0.1:40022");
        assert_eq!(json["targets"], serde_json::json!(["127.0.0.1:22"]));
        assert_eq!(json["source"], "r.yml");
        assert_eq!(json["state"], "listening");
        assert_eq!(json["error"], serde_json::Value::Null);
        assert_eq!((json["connections_active"].as_u64(), json["connections_total"].as_u64()), (Some(1), Some(3)));
        assert_eq!((json["bytes_in"].as_u64(), json["bytes_out"].as_u64()), (Some(1536), Some(5)));
        assert_eq!((json["denied"].as_u64(), json["proxy_header_errors"].as_u64()), (Some(4), Some(2)));
        assert_eq!((row.counter("bytes_in"), row.counter("denied"), row.counter("no_such")), (1536, 4, 0));
        assert_eq!(json["since"], "1970-01-01T00:00:00Z");
        assert_eq!(json["age_seconds"], 125);
        let back: RouteRow = serde_json::from_value(json).unwrap();
        assert_eq!(back, row);
    }

    #[test]
    // `..Default::default()` is needless until a counter is added: then the golden file gains
    // it (as 0) and nothing else changes here.
    #[allow(clippy::needless_update)]
    fn the_json_is_exactly_the_documented_one() {
        // Byte for byte, key order included, as `GET /routes` sends it; taken before the
        // counters were declared in one list.
        let mut listening = status("ssh", RouteState::Listening);
        listening.stats = StatsSnapshot {
            active: 1,
            total: 2,
            bytes_in: 3,
            bytes_out: 4,
            datagrams_in: 5,
            datagrams_out: 6,
            dial_errors: 7,
            rejected: 8,
            evicted: 9,
            dropped: 10,
            denied: 11,
            proxy_header_errors: 12,
            last_error: Some("refused".into()),
            ..Default::default()
        };
        listening.targets = vec![TargetStatus {
            target: Target::new("127.0.0.1", 22),
            healthy: true,
            active: 1,
            total: 2,
            failures: 0,
            last_error: None,
            verdict: None,
        }];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(125);
        let r = rows(&[listening], &[ProviderError::route("r.yml", "web", "port \"x\": bad")], now);
        let mut json = serde_json::to_string_pretty(&r).unwrap();
        json.push('\n');
        assert_eq!(json, include_str!("../testdata/routes.json"));
    }

    #[test]
    fn the_table_has_the_documented_columns_and_human_units() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(125);
        let conflict = RouteState::Conflict {
            with: RouteId {
                source: "r.yml".into(),
                alias: "ssh".into(),
                protocol: Protocol::Tcp,
                family: Default::default(),
                listen: "127.0.0.1:2222".parse().unwrap(),
            },
        };
        let table = render_table(&rows(
            &[status("ssh", RouteState::Listening), status("ssh2", conflict)],
            &[ProviderError::route("r.yml", "web", "port \"x\": bad")],
            now,
        ));
        let expected = r#"ALIAS  PROTO  LISTEN           TARGETS       SOURCE  STATE                                                                         CONNS  IN       OUT  AGE
ssh    tcp    127.0.0.1:40022  127.0.0.1:22  r.yml   listening                                                                     1/3    1.5 KiB  5 B  2m
ssh2   tcp    127.0.0.1:0      127.0.0.1:22  r.yml   conflict: listen address held by route "ssh" (tcp 127.0.0.1:2222 from r.yml)  1/3    1.5 KiB  5 B  2m
web    -      -                -             r.yml   error: port "x": bad                                                          -      -        -    -
"#;
        assert_eq!(table, expected);
    }

    #[test]
    fn targets_marked_down_say_so() {
        let mut status = status("web", RouteState::Listening);
        status.spec.targets.push(Target::new("127.0.0.1", 23));
        status.targets = status
            .spec
            .targets
            .iter()
            .map(|t| TargetStatus {
                target: t.clone(),
                healthy: t.port == 22,
                active: 0,
                total: 0,
                failures: u64::from(t.port != 22),
                last_error: None,
                verdict: None,
            })
            .collect();
        let row = RouteRow::from_status(&status, SystemTime::UNIX_EPOCH);
        assert_eq!(row.target_health[1].failures, 1);
        assert_eq!(targets_cell(&row), "127.0.0.1:22,127.0.0.1:23(down)");
    }

    #[test]
    fn a_provider_verdict_shows_in_the_json_and_the_table() {
        use proxy_core::{ProviderHealth, Verdict};
        let mut status = status("web", RouteState::Listening);
        let says = |health| Some(Verdict::new("docker", health));
        let verdicts = [
            (21, true, says(ProviderHealth::Healthy)),
            (22, false, says(ProviderHealth::Unhealthy)),
            (23, true, says(ProviderHealth::Starting)),
            (24, false, says(ProviderHealth::Starting)),
            (25, true, None),
        ];
        status.spec.targets = verdicts.iter().map(|(port, _, _)| Target::new("127.0.0.1", *port)).collect();
        status.targets = verdicts
            .iter()
            .map(|(port, healthy, verdict)| TargetStatus {
                target: Target::new("127.0.0.1", *port),
                healthy: *healthy,
                active: 0,
                total: 0,
                failures: 0,
                last_error: None,
                verdict: verdict.clone(),
            })
            .collect();
        let row = RouteRow::from_status(&status, SystemTime::UNIX_EPOCH);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["target_health"][1]["verdict"], "docker: unhealthy");
        assert_eq!(json["target_health"][1]["healthy"], false);
        assert_eq!(json["target_health"][4]["verdict"], serde_json::Value::Null);
        assert_eq!(
            targets_cell(&row),
            "127.0.0.1:21,127.0.0.1:22(down, docker: unhealthy),127.0.0.1:23(docker: starting),\
             127.0.0.1:24(down, docker: starting),127.0.0.1:25"
        );
    }

    #[test]
    fn an_empty_list_is_just_the_header() {
        assert_eq!(render_table(&[]), "ALIAS  PROTO  LISTEN  TARGETS  SOURCE  STATE  CONNS  IN  OUT  AGE\n");
    }

    #[test]
    fn whole_file_errors_sort_before_that_file_s_routes() {
        let now = SystemTime::UNIX_EPOCH;
        let r = rows(&[status("ssh", RouteState::Listening)], &[ProviderError::whole("r.yml", "bad")], now);
        assert_eq!(r[0].alias, None);
        assert_eq!(r[1].alias.as_deref(), Some("ssh"));
    }

    #[test]
    fn cells_longer_than_a_format_width_from_the_admin_json_are_clipped_not_a_panic() {
        // What `dockward routes` does with an answer: parse the JSON, render the table. A
        // 100,000-character label value makes an error text that long; a 70,000-character
        // host, a target that long.
        let long_error = format!("label proxy.a.port={:?}: bad", "9".repeat(100_000));
        let mut long_host = status("b", RouteState::Listening);
        long_host.spec.targets = vec![Target::new("h".repeat(70_000), 22)];
        let json = serde_json::to_value(rows(
            &[long_host],
            &[ProviderError::route("web", "a", long_error)],
            SystemTime::UNIX_EPOCH,
        ))
        .unwrap();
        let rows: Vec<RouteRow> = serde_json::from_value(json).unwrap();
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{:.300}", table);
        assert!(lines[1].starts_with("b  ") && lines[1].contains("…[clipped: 70003 chars]"), "{:.2000}", lines[1]);
        assert!(lines[2].starts_with("a  ") && lines[2].contains("…[clipped: 100033 chars]"), "{:.2000}", lines[2]);
        assert!(table.len() < 4 * MAX_CELL_WIDTH * 3, "{}", table.len());
    }

    #[test]
    fn aliases_and_errors_from_the_admin_json_cannot_forge_a_row() {
        // Raw strings as a controller (or anything answering at --admin) may send them.
        let forged = "web\nssh-backdoor  tcp  0.0.0.0:22  10.6.6.6:22  r.yml  listening";
        let mut row = RouteRow::from_status(&status(forged, RouteState::Listening), SystemTime::UNIX_EPOCH);
        row.source = "r.yml\u{202e}lmy.r".into();
        let error = ProviderError::route("r.yml", "e", "label proxy.esc\x1b[31mRED\x1b[0m.port: \x1b[8mhidden");
        let json = serde_json::to_string(&[row, RouteRow::from_error(&error)]).unwrap();
        let rows: Vec<RouteRow> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            render_table(&rows),
            "\
ALIAS                                                              PROTO  LISTEN           TARGETS       SOURCE              STATE                                                               CONNS  IN       OUT  AGE
web\\nssh-backdoor  tcp  0.0.0.0:22  10.6.6.6:22  r.yml  listening  tcp    127.0.0.1:40022  127.0.0.1:22  r.yml\\u{202e}lmy.r  listening                                                           1/3    1.5 KiB  5 B  0s
e                                                                  -      -                -             r.yml               error: label proxy.esc\\u{1b}[31mRED\\u{1b}[0m.port: \\u{1b}[8mhidden  -      -        -    -
"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 1), "5.0 MiB");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(60), "1m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(3 * 86400 + 5), "3d");
    }
}
