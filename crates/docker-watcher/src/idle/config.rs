//! The idle-sleep labels of one container, read into an [`IdleConfig`]. Pure.
//!
//! GoDoxy's names and defaults (`internal/idlewatcher/runtime/config.go`):
//!
//! | label | meaning | default |
//! | --- | --- | --- |
//! | `proxy.idle_timeout` | how long nobody is connected before the container is put to sleep; turns idle sleep on | off |
//! | `proxy.wake_timeout` | how long a wake may take (start, then ready) before held clients are given up | `3m` |
//! | `proxy.stop_method` | `stop`, `pause` or `kill` | `stop` |
//! | `proxy.stop_timeout` | how long `stop` waits before killing | `1m` |
//! | `proxy.stop_signal` | the signal `stop` (or `kill`) sends: `SIGINT`, `SIGTERM`, `SIGKILL`, `SIGQUIT`, `SIGHUP` (or without `SIG`) | the image's |
//! | `proxy.depends_on` | containers started first, in order (`db,cache`, or Compose's `db:service_healthy`) | none |
//!
//! Without `proxy.depends_on`, Compose's own `com.docker.compose.depends_on` label is read,
//! as GoDoxy does. A wrong value is a [`LabelError`] naming the label and value; the routes
//! stay (idle sleep is off for the container).

use std::collections::BTreeMap;
use std::time::Duration;

use route_spec::fields::kind::duration;

use crate::labels::LabelError;

/// `proxy.idle_timeout`.
pub const LABEL_IDLE_TIMEOUT: &str = "proxy.idle_timeout";
/// `proxy.wake_timeout`.
pub const LABEL_WAKE_TIMEOUT: &str = "proxy.wake_timeout";
/// `proxy.stop_method`.
pub const LABEL_STOP_METHOD: &str = "proxy.stop_method";
/// `proxy.stop_timeout`.
pub const LABEL_STOP_TIMEOUT: &str = "proxy.stop_timeout";
/// `proxy.stop_signal`.
pub const LABEL_STOP_SIGNAL: &str = "proxy.stop_signal";
/// `proxy.depends_on`.
pub const LABEL_DEPENDS_ON: &str = "proxy.depends_on";
/// Compose's record of a service's `depends_on`: `db:service_started:false,...`.
pub const COMPOSE_DEPENDS_ON: &str = "com.docker.compose.depends_on";

/// GoDoxy's default `wake_timeout`.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(180);
/// GoDoxy's default `stop_timeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout accepted (a typo such as `30d` is refused rather than obeyed).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a sleeping container is put to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopMethod {
    /// `docker stop`: the stop signal, then SIGKILL after `stop_timeout`.
    #[default]
    Stop,
    /// `docker pause`: frozen, memory kept; wakes fastest.
    Pause,
    /// `docker kill`: the stop signal (default SIGKILL) and no wait.
    Kill,
}

impl StopMethod {
    /// `stop`, `pause` or `kill`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopMethod::Stop => "stop",
            StopMethod::Pause => "pause",
            StopMethod::Kill => "kill",
        }
    }
}

/// A container started before the sleeping one, in `depends_on` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Its container name, or its Compose service name in the same project.
    pub name: String,
    /// Wait for it to be healthy (Compose's `service_healthy`), not only running.
    pub healthy: bool,
}

/// One container's idle-sleep settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleConfig {
    /// Nobody connected for this long: put to sleep.
    pub idle_timeout: Duration,
    /// A wake that takes longer fails: held clients are closed.
    pub wake_timeout: Duration,
    /// How it is put to sleep.
    pub stop_method: StopMethod,
    /// How long `stop` waits for the process to exit before killing it.
    pub stop_timeout: Duration,
    /// The signal sent by `stop` and `kill`, without `SIG` (`TERM`); `None`: the image's
    /// (`stop`) or KILL (`kill`).
    pub stop_signal: Option<String>,
    /// Started first, in order.
    pub depends_on: Vec<Dependency>,
}

/// What a container's labels say about idle sleep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleLabels {
    /// No `proxy.idle_timeout` (or `0`): idle sleep is off.
    Off,
    /// On, with these settings.
    On(IdleConfig),
    /// The labels are wrong; idle sleep is off for the container.
    Invalid(Vec<LabelError>),
}

/// The signals GoDoxy accepts for `stop_signal`, without `SIG`.
const SIGNALS: &[&str] = &["INT", "TERM", "KILL", "QUIT", "HUP"];

/// Reads the idle-sleep labels of a container.
pub fn read(labels: &BTreeMap<String, String>) -> IdleLabels {
    let mut errors = Vec::new();
    let timeout = |key: &str, default: Duration, errors: &mut Vec<LabelError>| -> Duration {
        let Some(value) = labels.get(key) else { return default };
        if value.trim().is_empty() {
            return default;
        }
        match duration(value) {
            Ok(d) if d > MAX_TIMEOUT => {
                errors.push(LabelError::label(None, key, value, "must be at most 365 days"));
                default
            }
            Ok(d) => d,
            Err(reason) => {
                errors.push(LabelError::label(None, key, value, reason));
                default
            }
        }
    };
    let idle_timeout = timeout(LABEL_IDLE_TIMEOUT, Duration::ZERO, &mut errors);
    if idle_timeout.is_zero() && errors.is_empty() {
        return IdleLabels::Off;
    }
    let mut wake_timeout = timeout(LABEL_WAKE_TIMEOUT, DEFAULT_WAKE_TIMEOUT, &mut errors);
    if wake_timeout.is_zero() {
        wake_timeout = DEFAULT_WAKE_TIMEOUT;
    }
    let mut stop_timeout = timeout(LABEL_STOP_TIMEOUT, DEFAULT_STOP_TIMEOUT, &mut errors);
    if stop_timeout.is_zero() {
        stop_timeout = DEFAULT_STOP_TIMEOUT;
    }
    let stop_method = match labels.get(LABEL_STOP_METHOD).map(|v| (v, v.trim().to_ascii_lowercase())) {
        None => StopMethod::Stop,
        Some((_, m)) if m.is_empty() || m == "stop" => StopMethod::Stop,
        Some((_, m)) if m == "pause" => StopMethod::Pause,
        Some((_, m)) if m == "kill" => StopMethod::Kill,
        Some((value, _)) => {
            errors.push(LabelError::label(None, LABEL_STOP_METHOD, value, "expected stop, pause or kill"));
            StopMethod::Stop
        }
    };
    let stop_signal = match labels.get(LABEL_STOP_SIGNAL) {
        None => None,
        Some(value) => {
            let upper = value.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper).to_string();
            if bare.is_empty() {
                None
            } else if SIGNALS.contains(&bare.as_str()) {
                Some(bare)
            } else {
                errors.push(LabelError::label(
                    None,
                    LABEL_STOP_SIGNAL,
                    value,
                    "expected one of SIGINT, SIGTERM, SIGKILL, SIGQUIT, SIGHUP",
                ));
                None
            }
        }
    };
    let depends_on = match labels.get(LABEL_DEPENDS_ON).filter(|v| !v.trim().is_empty()) {
        Some(value) => dependencies(LABEL_DEPENDS_ON, value, &mut errors),
        None => match labels.get(COMPOSE_DEPENDS_ON) {
            Some(value) => dependencies(COMPOSE_DEPENDS_ON, value, &mut errors),
            None => Vec::new(),
        },
    };
    if !errors.is_empty() {
        return IdleLabels::Invalid(errors);
    }
    IdleLabels::On(IdleConfig { idle_timeout, wake_timeout, stop_method, stop_timeout, stop_signal, depends_on })
}

/// `db,cache` or Compose's `db:service_healthy:false,cache:service_started:true`.
fn dependencies(key: &str, value: &str, errors: &mut Vec<LabelError>) -> Vec<Dependency> {
    let mut out: Vec<Dependency> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or("").trim();
        let healthy = match parts.next().map(str::trim) {
            None | Some("service_started") | Some("") => false,
            Some("service_healthy") => true,
            Some(other) => {
                errors.push(LabelError::label(
                    None,
                    key,
                    value,
                    format!("dependency {name:?} has condition {other:?}; expected service_started or service_healthy"),
                ));
                continue;
            }
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            errors.push(LabelError::label(None, key, value, format!("{item:?} is not a container name")));
            continue;
        }
        if !out.iter().any(|d| d.name == name) {
            out.push(Dependency { name: name.to_string(), healthy });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn off_without_idle_timeout_or_with_zero() {
        assert_eq!(read(&labels(&[])), IdleLabels::Off);
        assert_eq!(read(&labels(&[("proxy.idle_timeout", "0s")])), IdleLabels::Off);
        assert_eq!(read(&labels(&[("proxy.stop_method", "pause")])), IdleLabels::Off);
    }

    #[test]
    fn godoxy_defaults() {
        let IdleLabels::On(c) = read(&labels(&[("proxy.idle_timeout", "30s")])) else { panic!("not on") };
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.wake_timeout, DEFAULT_WAKE_TIMEOUT);
        assert_eq!(c.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(c.stop_method, StopMethod::Stop);
        assert_eq!(c.stop_signal, None);
        assert!(c.depends_on.is_empty());
    }

    #[test]
    fn every_label_read() {
        let IdleLabels::On(c) = read(&labels(&[
            ("proxy.idle_timeout", "1h30m"),
            ("proxy.wake_timeout", "20s"),
            ("proxy.stop_method", "Pause"),
            ("proxy.stop_timeout", "5s"),
            ("proxy.stop_signal", "sigterm"),
            ("proxy.depends_on", "db, cache:service_healthy,db"),
        ])) else {
            panic!("not on")
        };
        assert_eq!(c.idle_timeout, Duration::from_secs(5400));
        assert_eq!(c.wake_timeout, Duration::from_secs(20));
        assert_eq!(c.stop_method, StopMethod::Pause);
        assert_eq!(c.stop_timeout, Duration::from_secs(5));
        assert_eq!(c.stop_signal.as_deref(), Some("TERM"));
        assert_eq!(
            c.depends_on,
            vec![Dependency { name: "db".into(), healthy: false }, Dependency { name: "cache".into(), healthy: true }]
        );
    }

    #[test]
    fn compose_depends_on_is_the_fallback() {
        let IdleLabels::On(c) = read(&labels(&[
            ("proxy.idle_timeout", "1m"),
            ("com.docker.compose.depends_on", "db:service_healthy:false,cache:service_started:true"),
        ])) else {
            panic!("not on")
        };
        let names: Vec<(&str, bool)> = c.depends_on.iter().map(|d| (d.name.as_str(), d.healthy)).collect();
        assert_eq!(names, [("db", true), ("cache", false)]);
    }

    #[test]
    fn errors_name_the_label_and_value() {
        let IdleLabels::Invalid(errors) = read(&labels(&[
            ("proxy.idle_timeout", "30"),
            ("proxy.stop_method", "hibernate"),
            ("proxy.stop_signal", "USR1"),
            ("proxy.depends_on", "db:service_completed_successfully"),
        ])) else {
            panic!("not invalid")
        };
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "label proxy.idle_timeout=\"30\": a duration needs a unit, e.g. 30s or 30ms",
                "label proxy.stop_method=\"hibernate\": expected stop, pause or kill",
                "label proxy.stop_signal=\"USR1\": expected one of SIGINT, SIGTERM, SIGKILL, SIGQUIT, SIGHUP",
                "label proxy.depends_on=\"db:service_completed_successfully\": dependency \"db\" has condition \"service_completed_successfully\"; expected service_started or service_healthy",
            ]
        );
        let IdleLabels::Invalid(errors) = read(&labels(&[("proxy.idle_timeout", "400d")])) else { panic!() };
        assert_eq!(errors[0].to_string(), "label proxy.idle_timeout=\"400d\": must be at most 365 days");
    }
}
