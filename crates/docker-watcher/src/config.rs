//! How to reach an engine and how patient to be with it: plain values, no I/O.

use std::time::Duration;

use crate::io::engine;
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
        engine::effective_host(self.host.as_deref())
    }
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
