//! How to reach an engine and how patient to be with it: plain values, no I/O.

use std::time::Duration;

use crate::io::engine;

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
