//! How to reach an engine and how patient to be with it: plain values, no I/O.

use std::net::IpAddr;
use std::time::Duration;

use crate::targets::EngineSite;

/// Where the engine is when neither `--docker-host` nor an environment variable says, and
/// no Podman socket exists.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Rootful Podman's API socket (the systemd unit `podman.socket`).
pub const PODMAN_ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

/// How dockward finds its own container, for the "shared network" target rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OwnContainer {
    /// Look at /proc/self/mountinfo, /proc/self/cgroup and HOSTNAME, then ask the engine.
    #[default]
    Detect,
    /// Never use the rule.
    Disabled,
    /// This container id or name.
    Id(String),
}

/// How to reach the engine and how patient to be with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`, `http://host:2375`; `None` uses
    /// `DOCKER_HOST`, else the default socket.
    pub host: Option<String>,
    /// Timeout of each request (the event stream's only for its first answer). Default 30 s.
    pub request_timeout: Duration,
    /// Full re-list period. Default 60 s.
    pub resync_interval: Duration,
    /// First retry delay after a failure. Default 250 ms.
    pub backoff_min: Duration,
    /// Longest retry delay: how late, at worst, a returning engine is noticed. Default 1 s.
    pub backoff_max: Duration,
    /// How dockward's own container is found.
    pub own_container: OwnContainer,
    /// Containers inspected at once while applying a burst of events. Default 16.
    pub inspect_concurrency: usize,
    /// Only containers carrying every one of these labels are watched: Docker's label
    /// filter syntax, `key` or `key=value` (all must match). Empty (the default): every
    /// container. Lets several dockward instances share one engine, each serving its own
    /// project (`com.docker.compose.project=shop`).
    pub label_filters: Vec<String>,
    /// Where the engine runs. [`EngineSite::Remote`]: its containers are reached on that
    /// machine's address (host network, published ports), not on their own. Default: local.
    pub site: EngineSite,
    /// Write access for idle sleep: start, stop, pause, unpause and kill containers labelled
    /// `proxy.idle_timeout` (and their `depends_on`). Off (the default): dockward only reads
    /// the engine, and idle labels are an error row naming `--allow-container-control`.
    pub container_control: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            request_timeout: Duration::from_secs(30),
            resync_interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(1),
            own_container: OwnContainer::Detect,
            inspect_concurrency: 16,
            label_filters: Vec::new(),
            site: EngineSite::Local,
            container_control: false,
        }
    }
}

impl DockerConfig {
    /// The default configuration for `host` (`None`: `DOCKER_HOST`, else the default socket).
    pub fn with_host(host: Option<String>) -> Self {
        DockerConfig { host, ..Default::default() }
    }

    /// The engine address this configuration uses.
    pub fn effective_host(&self) -> String {
        effective_host(self.host.as_deref())
    }
}

/// One `--docker-host` value: `URL`, or `NAME=URL` for one of several engines.
///
/// ```
/// use docker_watcher::{EngineAddress, EngineSite};
///
/// let nas = EngineAddress::parse("nas=tcp://10.0.0.5:2375").unwrap();
/// assert_eq!(nas.name.as_deref(), Some("nas"));
/// assert_eq!(nas.site(), EngineSite::Remote("10.0.0.5".into()));
/// let local = EngineAddress::parse("unix:///var/run/docker.sock").unwrap();
/// assert_eq!((local.site(), local.name), (EngineSite::Local, None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineAddress {
    /// The engine's name: shown before its containers' names (`nas/minecraft`) when several
    /// engines are watched, and used by `dockward check --container nas/minecraft`.
    pub name: Option<String>,
    /// `unix:///path`, `tcp://host:port`, `http://host:port`, or a socket path.
    pub url: String,
}

impl EngineAddress {
    /// Reads `URL` or `NAME=URL`; a name is letters, digits, `_`, `.` and `-`.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let arg = arg.trim();
        let (name, url) = match arg.split_once('=') {
            Some((name, url)) if !name.contains([':', '/']) => (Some(name.trim()), url.trim()),
            _ => (None, arg),
        };
        if let Some(name) = name
            && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!("engine name {name:?}: use letters, digits, '_', '.' and '-' (NAME=URL)"));
        }
        if url.is_empty() {
            return Err("no engine URL, e.g. unix:///var/run/docker.sock or nas=tcp://10.0.0.5:2375".to_string());
        }
        Ok(EngineAddress { name: name.map(str::to_string), url: url.to_string() })
    }

    /// Where the engine runs. A named engine reached over `tcp://`, `http://` or `https://` at
    /// a host that is not a loopback address is on another machine; every other engine
    /// (unnamed, a unix socket, loopback) is on this one, as a single `--docker-host` always
    /// was (a socket proxy on a shared network included).
    pub fn site(&self) -> EngineSite {
        if self.name.is_none() {
            return EngineSite::Local;
        }
        let Some(rest) = ["tcp://", "http://", "https://"].iter().find_map(|s| self.url.strip_prefix(s)) else {
            return EngineSite::Local;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if host.is_empty() || loopback { EngineSite::Local } else { EngineSite::Remote(host.to_string()) }
    }

    /// The watcher configuration for this engine (defaults otherwise).
    pub fn config(&self) -> DockerConfig {
        DockerConfig { host: Some(self.url.clone()), site: self.site(), ..Default::default() }
    }
}

/// Which engine `dockward check --container ARG` means: `ENGINE/NAME` names it; a bare
/// `NAME` means the only engine. Returns the engine and the container's name.
pub fn pick_engine<'a>(engines: &'a [EngineAddress], arg: &'a str) -> Result<(&'a EngineAddress, &'a str), String> {
    let names = || engines.iter().filter_map(|e| e.name.as_deref()).collect::<Vec<_>>().join(", ");
    match arg.split_once('/') {
        Some((engine, name)) => engines
            .iter()
            .find(|e| e.name.as_deref() == Some(engine))
            .map(|e| (e, name))
            .ok_or_else(|| format!("{arg}: no engine named {engine:?} (engines: {})", names())),
        None if engines.len() == 1 => Ok((&engines[0], arg)),
        None => Err(format!("{arg}: several engines are watched; write ENGINE/{arg} (engines: {})", names())),
    }
}

/// Checks a set of engines for watching together: with several, each needs a name of its
/// own (it prefixes its containers' names).
pub fn check_engines(engines: &[EngineAddress]) -> Result<(), String> {
    if engines.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in engines {
        let Some(name) = e.name.as_deref() else {
            return Err(format!("several Docker engines: name each one, NAME=URL (unnamed: {})", e.url));
        };
        if !seen.insert(name) {
            return Err(format!("two Docker engines are named {name:?}"));
        }
    }
    Ok(())
}

/// The engine address for an explicit `--docker-host` (trimmed), else the environment's
/// (`DOCKER_HOST`, then `CONTAINER_HOST`), else the first socket that `exists` of Docker's,
/// rootful Podman's and rootless Podman's (`$XDG_RUNTIME_DIR/podman/podman.sock`), else
/// Docker's. `env` and `exists` are the process's in real use; tests pass their own.
pub(crate) fn choose_host(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&str) -> bool,
) -> String {
    let given = |h: Option<String>| h.map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    if let Some(h) = given(explicit.map(str::to_string)).or_else(|| given(env("DOCKER_HOST"))) {
        return h;
    }
    if let Some(h) = given(env("CONTAINER_HOST")) {
        return h;
    }
    let docker = DEFAULT_DOCKER_HOST.trim_start_matches("unix://");
    let rootless = given(env("XDG_RUNTIME_DIR")).map(|dir| format!("{}/podman/podman.sock", dir.trim_end_matches('/')));
    let candidates = [Some(docker.to_string()), Some(PODMAN_ROOTFUL_SOCKET.to_string()), rootless];
    match candidates.into_iter().flatten().find(|p| exists(p)) {
        Some(path) => format!("unix://{path}"),
        None => DEFAULT_DOCKER_HOST.to_string(),
    }
}

/// Whether `labels` carry every one of `filters` (`key` or `key=value`), as Docker's label
/// filter judges.
pub(crate) fn label_filters_hold(labels: &std::collections::BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(f.as_str()),
    })
}

/// The engine address in use: the explicit one, else `DOCKER_HOST`, else `CONTAINER_HOST`
/// (Podman's), else the first socket that exists of Docker's, rootful Podman's
/// (`/run/podman/podman.sock`) and rootless Podman's (`$XDG_RUNTIME_DIR/podman/podman.sock`),
/// else Docker's.
pub fn effective_host(explicit: Option<&str>) -> String {
    choose_host(explicit, |name| std::env::var(name).ok(), |path| std::path::Path::new(path).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(explicit: Option<&str>, env: &[(&str, &str)], sockets: &[&str]) -> String {
        choose_host(
            explicit,
            |name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()),
            |path| sockets.contains(&path),
        )
    }

    #[test]
    fn engine_addresses_name_their_engine_and_say_where_it_runs() {
        let parse = |s: &str| EngineAddress::parse(s);
        let remote = |s: &str| parse(s).map(|e| e.site());
        assert_eq!(
            parse("nas=tcp://10.0.0.5:2375").map(|e| (e.name, e.url)),
            Ok((Some("nas".into()), "tcp://10.0.0.5:2375".into()))
        );
        assert_eq!(parse("tcp://10.0.0.5:2375").map(|e| e.name), Ok(None));
        assert_eq!(parse("/var/run/docker.sock").map(|e| e.url), Ok("/var/run/docker.sock".into()));
        assert_eq!(remote("tcp://10.0.0.5:2375"), Ok(EngineSite::Local), "an unnamed engine is local, as always");
        assert_eq!(remote("nas=tcp://nas.lan:2375"), Ok(EngineSite::Remote("nas.lan".into())));
        assert_eq!(remote("nas=https://[fd00::5]:2376/"), Ok(EngineSite::Remote("fd00::5".into())));
        assert_eq!(remote("b=tcp://127.0.0.1:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("b=tcp://localhost:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("b=tcp://[::1]:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("local=unix:///var/run/docker.sock"), Ok(EngineSite::Local));
        assert!(parse("n a=tcp://x:1").is_err());
        assert!(parse("nas=").is_err());
        assert!(parse(" ").is_err());
    }

    #[test]
    fn several_engines_need_distinct_names_and_check_picks_one() {
        let e = |s: &str| EngineAddress::parse(s).unwrap();
        let two = [e("nas=tcp://10.0.0.5:2375"), e("local=unix:///var/run/docker.sock")];
        assert_eq!(check_engines(&two), Ok(()));
        assert_eq!(check_engines(&[e("unix:///a")]), Ok(()));
        assert!(check_engines(&[e("a=unix:///a"), e("unix:///b")]).unwrap_err().contains("name each one"));
        assert!(check_engines(&[e("a=unix:///a"), e("a=unix:///b")]).unwrap_err().contains("named \"a\""));
        assert_eq!(
            pick_engine(&two, "nas/minecraft").map(|(e, n)| (e.url.as_str(), n)),
            Ok(("tcp://10.0.0.5:2375", "minecraft"))
        );
        assert_eq!(
            pick_engine(&two, "minecraft").unwrap_err(),
            "minecraft: several engines are watched; write ENGINE/minecraft (engines: nas, local)"
        );
        assert_eq!(pick_engine(&two, "pi/x").unwrap_err(), "pi/x: no engine named \"pi\" (engines: nas, local)");
        assert_eq!(pick_engine(&two[..1], "web").map(|(_, n)| n), Ok("web"));
    }

    #[test]
    fn every_label_filter_must_hold() {
        let labels = [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into_iter().collect();
        assert!(label_filters_hold(&labels, &[]));
        assert!(label_filters_hold(&labels, &["a=1".into(), "b".into()]));
        assert!(!label_filters_hold(&labels, &["a=1".into(), "c".into()]));
        assert!(!label_filters_hold(&labels, &["a=2".into()]));
    }

    #[test]
    fn the_engine_is_the_flag_then_the_environment_then_the_first_socket_found() {
        let env = [("DOCKER_HOST", "tcp://a:2375"), ("CONTAINER_HOST", "unix:///c.sock")];
        assert_eq!(host(Some(" unix:///x.sock "), &env, &[]), "unix:///x.sock");
        assert_eq!(host(None, &env, &[]), "tcp://a:2375");
        assert_eq!(host(Some(""), &env[1..], &[]), "unix:///c.sock");
        let rootless = [("XDG_RUNTIME_DIR", "/run/user/1000/")];
        assert_eq!(host(None, &rootless, &[]), "unix:///var/run/docker.sock");
        assert_eq!(
            host(None, &rootless, &["/run/user/1000/podman/podman.sock"]),
            "unix:///run/user/1000/podman/podman.sock"
        );
        assert_eq!(
            host(None, &rootless, &["/run/podman/podman.sock", "/run/user/1000/podman/podman.sock"]),
            "unix:///run/podman/podman.sock"
        );
        assert_eq!(
            host(None, &[], &["/var/run/docker.sock", "/run/podman/podman.sock"]),
            "unix:///var/run/docker.sock"
        );
    }
}
