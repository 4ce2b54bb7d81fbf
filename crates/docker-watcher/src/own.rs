//! Dockward's own container (I/O): which one it is and which networks it is on, for the
//! "shared network" target rule. The one place both the watcher and `check --container`
//! find those networks.

use bollard::Docker;

use crate::engine;
use crate::error::WatchError;

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

impl OwnContainer {
    /// The networks of dockward's own container, as this setting finds it; empty when it is
    /// disabled or dockward runs outside a container.
    pub(crate) async fn networks(&self, docker: &Docker, host: &str) -> Result<Vec<String>, WatchError> {
        match self {
            OwnContainer::Disabled => Ok(Vec::new()),
            OwnContainer::Id(id) => engine::own_networks(docker, host, id).await,
            OwnContainer::Detect => match engine::detect_own_container_id() {
                Some(id) => engine::own_networks(docker, host, &id).await,
                None => Ok(Vec::new()),
            },
        }
    }
}
