//! The watcher's memory across sessions: one entry of routes per container (and swarm
//! service), changed by what an inspect or a full list said, and published as a
//! [`DockerSnapshot`]. Pure: it never talks to the engine; the session in
//! [`crate::io::session`] hands it answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::health;
use crate::idle::{Sleepers, asleep_routes};
use crate::labels::{ContainerRoutes, has_proxy_labels};
use crate::snapshot::DockerSnapshot;
use crate::swarm::{SWARM_SERVICE_ID_LABEL, ServiceView, parse_service_labels};
use crate::targets::{EngineSite, container_routes};
use crate::views::{ContainerFacts, short_id};

/// The watcher's memory across sessions, and the channel it publishes on.
pub(crate) struct State {
    pub(crate) tx: watch::Sender<Arc<DockerSnapshot>>,
    pub(crate) snap: DockerSnapshot,
    pub(crate) own_networks: Vec<String>,
    /// Where the engine runs: how containers that their own address cannot serve are reached.
    pub(crate) site: EngineSite,
    /// Idle sleep's containers, by id.
    pub(crate) sleepers: Sleepers,
}

impl State {
    pub(crate) fn new(tx: watch::Sender<Arc<DockerSnapshot>>) -> Self {
        State {
            tx,
            snap: DockerSnapshot::default(),
            own_networks: Vec::new(),
            site: EngineSite::Local,
            sleepers: Sleepers::new(None),
        }
    }

    pub(crate) fn publish(&mut self) {
        self.snap.generation += 1;
        self.tx.send_replace(Arc::new(self.snap.clone()));
    }

    pub(crate) fn disconnected(&mut self, error: String) {
        if self.snap.connected || self.snap.last_error.as_deref() != Some(error.as_str()) {
            self.snap.connected = false;
            self.snap.last_error = Some(error);
            self.publish();
        }
    }

    /// The routes a container asks for, or `None` when it contributes nothing.
    pub(crate) fn routes_of(&self, facts: &ContainerFacts) -> Option<ContainerRoutes> {
        let view = &facts.view;
        if !view.has_proxy_labels() {
            return None;
        }
        // A swarm task's container: its service's labels make the routes, not its own.
        if self.snap.swarm && view.labels.contains_key(SWARM_SERVICE_ID_LABEL) {
            return None;
        }
        let mut routes = if view.state.is_running() {
            health::judged(container_routes(facts, &self.site, &self.own_networks), facts.health)
        } else if self.sleepers.keeps_asleep(facts) {
            // Idle sleep: a stopped or paused container's ports stay bound, to wake it.
            asleep_routes(facts, &self.site, &self.own_networks)
        } else {
            return None;
        };
        self.sleepers.attach(facts, &mut routes);
        Some(routes)
    }

    /// The routes a service asks for, or `None` when it carries no `proxy.*` label.
    pub(crate) fn service_routes_of(&self, view: &ServiceView) -> Option<ContainerRoutes> {
        if !has_proxy_labels(&view.labels) {
            return None;
        }
        Some(parse_service_labels(view, &self.own_networks))
    }

    /// Sets one container's entry; returns whether anything changed.
    pub(crate) fn set(&mut self, id: &str, entry: Option<ContainerRoutes>, why: &str) -> bool {
        if entry.is_none() {
            self.sleepers.forget(id);
        }
        set_entry(&mut self.snap.containers, Kind::Container, id, entry, why)
    }

    /// Sets one service's entry; returns whether anything changed.
    pub(crate) fn set_service(&mut self, id: &str, entry: Option<ContainerRoutes>, why: &str) -> bool {
        set_entry(&mut self.snap.services, Kind::Service, id, entry, why)
    }

    /// Replaces every container entry from a full list; returns whether anything changed.
    pub(crate) fn reconcile(&mut self, containers: Vec<ContainerFacts>) -> bool {
        let fresh: BTreeMap<String, ContainerRoutes> =
            containers.iter().filter_map(|c| Some((c.view.id.clone(), self.routes_of(c)?))).collect();
        self.sleepers.retain(&|id| fresh.contains_key(id));
        reconcile_entries(&mut self.snap.containers, Kind::Container, fresh, "not running")
    }

    /// Replaces every service entry from a full list; returns whether anything changed.
    pub(crate) fn reconcile_services(&mut self, views: &[ServiceView]) -> bool {
        let fresh: BTreeMap<String, ContainerRoutes> =
            views.iter().filter_map(|v| Some((v.id.clone(), self.service_routes_of(v)?))).collect();
        reconcile_entries(&mut self.snap.services, Kind::Service, fresh, "gone")
    }
}

/// What an entry of the snapshot stands for, for logs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Container,
    Service,
}

fn set_entry(
    map: &mut BTreeMap<String, ContainerRoutes>,
    kind: Kind,
    id: &str,
    entry: Option<ContainerRoutes>,
    why: &str,
) -> bool {
    let old = map.get(id);
    if old == entry.as_ref() {
        return false;
    }
    log_change(kind, old, entry.as_ref(), why);
    match entry {
        Some(e) => map.insert(id.to_string(), e),
        None => map.remove(id),
    };
    true
}

fn reconcile_entries(
    map: &mut BTreeMap<String, ContainerRoutes>,
    kind: Kind,
    fresh: BTreeMap<String, ContainerRoutes>,
    gone_why: &str,
) -> bool {
    let gone: Vec<String> = map.keys().filter(|id| !fresh.contains_key(*id)).cloned().collect();
    let mut changed = false;
    for id in gone {
        changed |= set_entry(map, kind, &id, None, gone_why);
    }
    for (id, entry) in fresh {
        changed |= set_entry(map, kind, &id, Some(entry), "listed");
    }
    changed
}

fn log_change(kind: Kind, old: Option<&ContainerRoutes>, new: Option<&ContainerRoutes>, why: &str) {
    match (kind, old, new) {
        (Kind::Container, Some(old), None) => {
            info!(container = %old.name, id = short_id(&old.id), routes = old.routes.len(), reason = why, "container routes removed")
        }
        (Kind::Service, Some(old), None) => {
            info!(
                service = %old.name,
                id = short_id(&old.id),
                routes = old.routes.len(),
                reason = why,
                "service routes removed"
            )
        }
        (kind, _, Some(new)) => {
            let aliases: Vec<&str> = new.routes.iter().map(|r| r.alias.as_str()).collect();
            let targets: usize = new.routes.iter().map(|r| r.targets.len()).max().unwrap_or(0);
            match kind {
                Kind::Container => {
                    info!(container = %new.name, id = short_id(&new.id), routes = ?aliases, errors = new.errors.len(), reason = why, "container routes")
                }
                Kind::Service => {
                    info!(
                        service = %new.name,
                        id = short_id(&new.id),
                        routes = ?aliases,
                        targets,
                        errors = new.errors.len(),
                        reason = why,
                        "service routes"
                    )
                }
            }
            for e in &new.errors {
                if old.is_none_or(|o| !o.errors.contains(e)) {
                    match kind {
                        Kind::Container => {
                            warn!(container = %new.name, alias = e.alias().unwrap_or(""), error = %e, "bad container label")
                        }
                        Kind::Service => {
                            warn!(
                                service = %new.name,
                                alias = e.alias().unwrap_or(""),
                                error = %e,
                                "bad service label"
                            )
                        }
                    }
                }
            }
        }
        (_, None, None) => {}
    }
}
