//! One session with the engine, from connect to a lost stream: events first, then the list,
//! then events applied as they come, with periodic resyncs and swarm services on a manager.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DockerConfig, label_filters_hold};
use crate::error::WatchError;
use crate::events::{Batch, Incoming, Stream, container_event_filters, note_event, swarm_event_filters};
use crate::io::engine;
use crate::io::event_stream::read_events;
use crate::io::http::RawClient;
use crate::io::services::{self, Answer, ServiceListing, SwarmClient};
use crate::io::tls::TlsEngine;
use crate::memory::State;
use crate::recheck::{Recheck, due_rechecks, schedule_recheck};
use crate::swarm::ServiceView;
use crate::views::ContainerFacts;
use crate::views::short_id;

/// A container id, the event that named it, and what inspecting it said.
type Inspected = (String, &'static str, Result<Option<ContainerFacts>, WatchError>);

/// A service id, why it was looked at, and what listing it said.
type ListedService = (String, &'static str, Result<Answer<Option<ServiceListing>>, WatchError>);

/// Aborts an event reader when its owner drops it, however the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Swarm watching within one session: present while the engine is an active manager.
struct SwarmSession {
    client: SwarmClient,
    _reader: AbortOnDrop,
    /// Containers of tasks that an event said stopped, while the manager may still call
    /// their task running; pruned at each full list.
    dead: HashSet<String>,
    /// Services to look at again soon, because some task is still starting or stopping.
    rechecks: BTreeMap<String, Recheck>,
}

/// One connection to the engine, from connect to a lost stream.
pub(crate) struct Session<'a> {
    config: &'a DockerConfig,
    host: &'a str,
    state: &'a mut State,
    /// Set once the first list has been applied.
    pub(crate) synced: bool,
    /// Set when the engine (a socket proxy in front of it) refused to list services: this
    /// session then watches containers only, without asking again.
    swarm_refused: bool,
    /// The engine's TLS set-up once connected over TLS, for the bare requests.
    tls: Option<Arc<TlsEngine>>,
}

impl<'a> Session<'a> {
    /// A session that has not connected yet.
    pub(crate) fn new(config: &'a DockerConfig, host: &'a str, state: &'a mut State) -> Self {
        Session { config, host, state, synced: false, swarm_refused: false, tls: None }
    }

    /// Runs until `shutdown` (`Ok`) or until the engine is lost (`Err`).
    pub(crate) async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), WatchError> {
        let connected = engine::connect(self.host, self.config.tls.as_deref(), self.config.request_timeout).await?;
        let docker = connected.docker;
        self.tls = connected.tls;
        let version = engine::engine_version(&docker, self.host).await?;

        // Events first, so nothing that happens during the list is missed.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let container_filters = container_event_filters(&self.config.label_filters);
        let _reader = AbortOnDrop(tokio::spawn(read_events(
            docker.clone(),
            container_filters,
            Stream::Containers,
            events_tx.clone(),
        )));
        let mut swarm = None;
        self.update_swarm(&docker, &mut swarm, &events_tx).await?;

        self.state.own_networks = engine::own_networks_of(&docker, self.host, &self.config.own_container).await?;
        self.state.site =
            engine::site_from_inside(&docker, self.host, &self.config.own_container, &self.config.site).await?;

        self.resync(&docker, &mut swarm).await?;
        self.state.snap.connected = true;
        self.state.snap.synced = true;
        self.state.snap.last_error = None;
        self.state.snap.engine = Some(version.clone());
        self.state.publish();
        self.synced = true;
        info!(
            host = %self.host,
            engine = %version,
            containers = self.state.snap.containers.len(),
            swarm = self.state.snap.swarm,
            services = self.state.snap.services.len(),
            "watching Docker engine"
        );

        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.resync_interval,
            self.config.resync_interval,
        );
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_recheck = swarm.as_ref().and_then(|s: &SwarmSession| s.rechecks.values().map(|r| r.due).min());
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = events.recv() => {
                    let mut batch = Batch::default();
                    let mut next = msg;
                    loop {
                        match next {
                            Some(Incoming::Event(ev, stream)) => note_event(&mut batch, swarm.as_mut().map(|s| &mut s.dead), ev, stream),
                            Some(Incoming::Failed(source)) => return Err(WatchError::engine(self.host, "events", source)),
                            Some(Incoming::Ended) | None => return Err(WatchError::StreamEnded { host: self.host.to_string() }),
                        }
                        // Take everything already queued: a burst becomes one publication.
                        next = match events.try_recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        };
                    }
                    let mut changed = self.apply_events(&docker, batch.containers).await?;
                    if !batch.services.is_empty() {
                        changed |= self.apply_services(&mut swarm, batch.services, true).await?;
                    }
                    if changed {
                        self.state.publish();
                    }
                }
                _ = sleep_until_or_never(next_recheck) => {
                    let now = tokio::time::Instant::now();
                    let due: BTreeMap<String, &'static str> = swarm
                        .as_ref()
                        .map(|s| due_rechecks(&s.rechecks, now))
                        .unwrap_or_default();
                    if self.apply_services(&mut swarm, due, false).await? {
                        self.state.publish();
                    }
                }
                _ = resync.tick() => {
                    debug!(host = %self.host, "periodic resync");
                    let mut changed = self.update_swarm(&docker, &mut swarm, &events_tx).await?;
                    changed |= self.resync(&docker, &mut swarm).await?;
                    if changed {
                        self.state.publish();
                    }
                }
            }
        }
    }

    /// Asks the engine whether it is an active swarm manager, and starts or stops watching
    /// services accordingly; returns whether the snapshot changed.
    async fn update_swarm(
        &mut self,
        docker: &Docker,
        swarm: &mut Option<SwarmSession>,
        events_tx: &mpsc::UnboundedSender<Incoming>,
    ) -> Result<bool, WatchError> {
        if self.swarm_refused {
            return Ok(false);
        }
        let node = services::manager_node(docker, self.host).await?;
        match (node, swarm.is_some()) {
            (Some(node_id), false) => {
                info!(
                    host = %self.host,
                    node = short_id(&node_id),
                    "the engine is a swarm manager: watching services too"
                );
                let version = docker.client_version().to_string();
                let raw = RawClient::new(self.host, version, self.config.request_timeout, self.tls.clone());
                let client =
                    SwarmClient::new(docker.clone(), raw, self.host, node_id, self.config.label_filters.clone());
                let reader =
                    tokio::spawn(read_events(docker.clone(), swarm_event_filters(), Stream::Swarm, events_tx.clone()));
                *swarm = Some(SwarmSession {
                    client,
                    _reader: AbortOnDrop(reader),
                    dead: HashSet::new(),
                    rechecks: BTreeMap::new(),
                });
                self.state.snap.swarm = true;
                Ok(true)
            }
            (None, true) => Ok(self.leave_swarm(swarm)),
            _ => Ok(false),
        }
    }

    /// Stops watching services (the engine is no longer a manager); their routes go.
    fn leave_swarm(&mut self, swarm: &mut Option<SwarmSession>) -> bool {
        if swarm.take().is_none() && !self.state.snap.swarm {
            return false;
        }
        info!(host = %self.host, "the engine is no longer a swarm manager: services are not watched");
        self.state.snap.swarm = false;
        self.state.reconcile_services(&[]);
        true
    }

    /// Stops watching services because reading them is refused; warns once per session.
    fn services_refused(&mut self, swarm: &mut Option<SwarmSession>, why: &str) -> bool {
        warn!(
            host = %self.host,
            error = why,
            "the engine is a swarm manager, but reading its services is refused; only containers are watched \
             (a socket proxy must pass GET /services and /tasks: SERVICES=1, TASKS=1)"
        );
        self.swarm_refused = true;
        swarm.take();
        let had = self.state.snap.swarm || !self.state.snap.services.is_empty();
        self.state.snap.swarm = false;
        self.state.reconcile_services(&[]);
        had
    }

    /// Lists every container (and service) and reconciles; returns whether anything changed.
    async fn resync(&mut self, docker: &Docker, swarm: &mut Option<SwarmSession>) -> Result<bool, WatchError> {
        let views =
            engine::list_views(docker, self.host, &self.config.label_filters, self.config.container_control).await?;
        let mut changed = self.state.reconcile(views);
        let Some(s) = swarm.as_mut() else {
            return Ok(changed | self.state.reconcile_services(&[]));
        };
        match s.client.list(&s.dead).await? {
            Answer::Listed(listings) => {
                let seen: HashSet<&String> = listings.iter().flat_map(|l| l.containers.iter()).collect();
                s.dead.retain(|c| seen.contains(c));
                s.rechecks.clear();
                for l in listings.iter().filter(|l| l.converging) {
                    schedule_recheck(&mut s.rechecks, &l.view.id, true);
                }
                let views: Vec<ServiceView> = listings.into_iter().map(|l| l.view).collect();
                changed |= self.state.reconcile_services(&views);
            }
            Answer::NotAManager => changed |= self.leave_swarm(swarm),
            Answer::Refused(why) => {
                changed |= self.services_refused(swarm, &why);
                // Task containers make routes of their own again.
                let views =
                    engine::list_views(docker, self.host, &self.config.label_filters, self.config.container_control)
                        .await?;
                changed |= self.state.reconcile(views);
            }
        }
        Ok(changed)
    }

    /// Re-inspects the containers events named; returns whether anything changed.
    async fn apply_events(
        &mut self,
        docker: &Docker,
        batch: BTreeMap<String, &'static str>,
    ) -> Result<bool, WatchError> {
        // Owned futures (a cloned client is a cheap handle), built without a closure, so the
        // watcher's future stays Send.
        let mut jobs = Vec::with_capacity(batch.len());
        for (id, action) in batch {
            let docker = docker.clone();
            let host = self.host.to_string();
            jobs.push(async move {
                if action == "destroy" {
                    return (id, action, Ok(None));
                }
                let view = engine::inspect_view(&docker, &host, &id).await;
                (id, action, view)
            });
        }
        let inspected: Vec<Inspected> =
            futures::stream::iter(jobs).buffer_unordered(self.config.inspect_concurrency.max(1)).collect().await;
        let mut changed = false;
        for (id, action, view) in inspected {
            // Podman's event filter takes several labels as alternatives, not all required:
            // an event may name a container the label filter excludes.
            let facts = view?.filter(|c| label_filters_hold(&c.view.labels, &self.config.label_filters));
            let entry = facts.as_ref().and_then(|c| self.state.routes_of(c));
            changed |= self.state.set(&id, entry, action);
        }
        Ok(changed)
    }

    /// Lists the services named (with their tasks) again; returns whether anything changed.
    ///
    /// `fresh` (an event named them, rather than a recheck) restarts their recheck delays.
    async fn apply_services(
        &mut self,
        swarm: &mut Option<SwarmSession>,
        batch: BTreeMap<String, &'static str>,
        fresh: bool,
    ) -> Result<bool, WatchError> {
        let Some(s) = swarm.as_mut() else { return Ok(false) };
        let mut jobs = Vec::with_capacity(batch.len());
        for (id, why) in batch {
            let client = s.client.clone();
            let dead = s.dead.clone();
            jobs.push(async move {
                let listing = client.one(&id, &dead).await;
                (id, why, listing)
            });
        }
        let listed: Vec<ListedService> =
            futures::stream::iter(jobs).buffer_unordered(self.config.inspect_concurrency.max(1)).collect().await;
        let mut changed = false;
        let mut gone: Option<Answer<()>> = None;
        for (id, why, listing) in listed {
            let listing = match listing? {
                Answer::Listed(listing) => listing,
                Answer::NotAManager => {
                    gone = Some(Answer::NotAManager);
                    continue;
                }
                Answer::Refused(why) => {
                    gone = Some(Answer::Refused(why));
                    continue;
                }
            };
            match &listing {
                Some(l) if l.converging => schedule_recheck(&mut s.rechecks, &id, fresh),
                _ => {
                    s.rechecks.remove(&id);
                }
            }
            let entry = listing.as_ref().and_then(|l| self.state.service_routes_of(&l.view));
            changed |= self.state.set_service(&id, entry, why);
        }
        match gone {
            Some(Answer::NotAManager) => changed |= self.leave_swarm(swarm),
            Some(Answer::Refused(why)) => changed |= self.services_refused(swarm, &why),
            _ => {}
        }
        Ok(changed)
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}
