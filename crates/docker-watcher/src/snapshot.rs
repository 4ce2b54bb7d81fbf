//! What the watcher publishes: every labelled running container's (and swarm service's)
//! routes and errors.

use std::collections::BTreeMap;

use route_spec::RouteSpec;

use crate::labels::{ContainerRoutes, LabelError};

/// The Docker provider's whole desired state at one moment.
///
/// Published through a `tokio::sync::watch` channel: a consumer that is slower than a burst
/// of events only ever sees the latest snapshot, so 200 containers starting together cost a
/// few applies, not 200.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DockerSnapshot {
    /// Running containers that carry `proxy.*` labels, by container id. Stopped, dead and
    /// paused containers are absent: they contribute no routes.
    pub containers: BTreeMap<String, ContainerRoutes>,
    /// Swarm services that carry `proxy.*` labels, by service id (`id` and `name` of each
    /// entry are the service's). Empty unless the engine is a swarm manager.
    pub services: BTreeMap<String, ContainerRoutes>,
    /// True while the engine is an active swarm manager and its services are watched; then
    /// the containers of swarm tasks contribute no routes of their own (their service does).
    pub swarm: bool,
    /// True while the watcher holds a live event stream on an engine it has listed.
    ///
    /// When the engine goes away the last known containers are kept (their forwarders keep
    /// running) until it is back and a fresh list says otherwise.
    pub connected: bool,
    /// True once a full list has succeeded: before that, an empty `containers` means
    /// "not known yet", not "none".
    pub synced: bool,
    /// The last engine error, cleared once connected again.
    pub last_error: Option<String>,
    /// The engine's version once connected, e.g. `20.10.24 (API 1.41)`.
    pub engine: Option<String>,
    /// Counts publications, starting at 0 for the initial empty snapshot.
    pub generation: u64,
}

impl DockerSnapshot {
    /// Every route of every container, then of every service, in id then alias order.
    pub fn routes(&self) -> impl Iterator<Item = &RouteSpec> {
        self.entries().flat_map(|c| c.routes.iter())
    }

    /// Every label error, with the container (or service) it belongs to.
    pub fn errors(&self) -> impl Iterator<Item = (&ContainerRoutes, &LabelError)> {
        self.entries().flat_map(|c| c.errors.iter().map(move |e| (c, e)))
    }

    /// The container with this name, if it is in the snapshot.
    pub fn by_name(&self, name: &str) -> Option<&ContainerRoutes> {
        self.containers.values().find(|c| c.name == name)
    }

    /// The swarm service with this name, if it is in the snapshot.
    pub fn service_by_name(&self, name: &str) -> Option<&ContainerRoutes> {
        self.services.values().find(|c| c.name == name)
    }

    /// Every container entry, then every service entry.
    fn entries(&self) -> impl Iterator<Item = &ContainerRoutes> {
        self.containers.values().chain(self.services.values())
    }
}
