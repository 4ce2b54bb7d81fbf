//! The watcher: keeps a [`DockerSnapshot`] true as containers start, stop, die and come back.
//!
//! One session = connect, negotiate the API version, open the event stream, list, then apply
//! events until the stream is lost:
//!
//! 1. The event stream (type=container; start, die, stop, kill, destroy, pause, unpause,
//!    rename, health_status) is opened **before** the list, with `since` a second in the past,
//!    so no event falls in the gap between the two.
//! 2. Each event re-inspects that one container (404 = gone) and updates its entry only;
//!    events that arrive together are inspected together and published once.
//! 3. Every `resync_interval` (60 s) the containers are listed again and reconciled, because
//!    event streams can stall silently.
//! 4. A lost stream (engine restart, socket error, an event bollard cannot decode) ends the
//!    session: back off (250 ms doubling to 1 s), reconnect, re-list, reconcile. While the
//!    engine is away the last snapshot's containers are kept and `connected` is false; a WARN
//!    is logged at most once a minute. The short cap is deliberate: however long the engine
//!    was away, its routes are back within about a second of it answering again, and one
//!    attempt a second at a lost engine costs nothing.
//!
//! On a swarm manager (`GET /info`: the node is active and has control) a session also
//! watches services: a second event stream (type=service: create, update, remove; and the
//! start, die, stop, kill and destroy of containers carrying `com.docker.swarm.service.id`,
//! because a task's state changes come with no event of their own) makes it list that one
//! service and its tasks again; a service whose tasks are still starting or stopping is
//! looked at again shortly (100 ms doubling to 5 s) until it settles. The containers of
//! swarm tasks then make no routes of their own: their service does. Whether the engine is
//! a manager is asked again at each periodic resync.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::{self, short_id};
use crate::error::WatchError;
use crate::http::RawClient;
use crate::labels::{ContainerRoutes, ContainerView, has_proxy_labels, parse_labels};
use crate::own::OwnContainer;
use crate::services::{self, Answer, ServiceListing, SwarmClient};
use crate::snapshot::DockerSnapshot;
use crate::swarm::{SWARM_SERVICE_ID_LABEL, ServiceView, parse_service_labels};

/// The container events that can change a container's routes.
pub const WATCHED_EVENTS: &[&str] =
    &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "health_status"];

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

/// Watches one Docker engine and publishes [`DockerSnapshot`]s.
///
/// ```no_run
/// # async fn demo() {
/// use docker_watcher::{DockerConfig, DockerWatcher};
/// use tokio_util::sync::CancellationToken;
///
/// let watcher = DockerWatcher::new(DockerConfig::default());
/// let mut snapshots = watcher.subscribe();
/// let shutdown = CancellationToken::new();
/// tokio::spawn(watcher.run(shutdown.clone()));
/// while snapshots.changed().await.is_ok() {
///     let snap = snapshots.borrow_and_update().clone();
///     println!("{} routes", snap.routes().count());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct DockerWatcher {
    config: DockerConfig,
    host: String,
    tx: watch::Sender<Arc<DockerSnapshot>>,
}

impl DockerWatcher {
    /// A watcher that has not connected yet; nothing happens until [`DockerWatcher::run`].
    pub fn new(config: DockerConfig) -> Self {
        let host = config.effective_host();
        let (tx, _) = watch::channel(Arc::new(DockerSnapshot::default()));
        DockerWatcher { config, host, tx }
    }

    /// The engine address in use.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A receiver of snapshots; it holds the latest one at once, and is told of each new one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DockerSnapshot>> {
        self.tx.subscribe()
    }

    /// Runs until `shutdown` is cancelled; never returns early and never panics on engine
    /// trouble: it retries with backoff forever.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut state = State::new(self.tx);
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut last_warn: Option<Instant> = None;
        loop {
            let mut session = Session {
                config: &self.config,
                host: &self.host,
                state: &mut state,
                synced: false,
                swarm_refused: false,
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = session.run(&shutdown) => r,
            };
            let synced = session.synced;
            let err = match result {
                Ok(()) => return, // shut down
                Err(e) => e,
            };
            if synced {
                // It worked for a while: the next attempt starts from the shortest delay.
                backoff.reset();
            }
            let text = err.chain();
            state.disconnected(text.clone());
            let delay = backoff.next_delay();
            // Losing a working engine is always news; failing again is, at most once a minute.
            let loud = synced || last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if loud {
                last_warn = Some(Instant::now());
                warn!(host = %self.host, error = %text, retry_in = ?delay, "Docker engine unavailable; retrying in the background");
            } else {
                debug!(host = %self.host, error = %text, retry_in = ?delay, "Docker engine still unavailable");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), next: min }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The watcher's memory across sessions, and the channel it publishes on.
struct State {
    tx: watch::Sender<Arc<DockerSnapshot>>,
    snap: DockerSnapshot,
    own_networks: Vec<String>,
}

impl State {
    fn new(tx: watch::Sender<Arc<DockerSnapshot>>) -> Self {
        State { tx, snap: DockerSnapshot::default(), own_networks: Vec::new() }
    }

    fn publish(&mut self) {
        self.snap.generation += 1;
        self.tx.send_replace(Arc::new(self.snap.clone()));
    }

    fn disconnected(&mut self, error: String) {
        if self.snap.connected || self.snap.last_error.as_deref() != Some(error.as_str()) {
            self.snap.connected = false;
            self.snap.last_error = Some(error);
            self.publish();
        }
    }

    /// The routes `view` asks for, or `None` when it contributes nothing.
    fn routes_of(&self, view: &ContainerView) -> Option<ContainerRoutes> {
        if !view.state.is_running() || !view.has_proxy_labels() {
            return None;
        }
        // A swarm task's container: its service's labels make the routes, not its own.
        if self.snap.swarm && view.labels.contains_key(SWARM_SERVICE_ID_LABEL) {
            return None;
        }
        Some(parse_labels(view, &self.own_networks))
    }

    /// The routes a service asks for, or `None` when it carries no `proxy.*` label.
    fn service_routes_of(&self, view: &ServiceView) -> Option<ContainerRoutes> {
        if !has_proxy_labels(&view.labels) {
            return None;
        }
        Some(parse_service_labels(view, &self.own_networks))
    }

    /// Sets one container's entry; returns whether anything changed.
    fn set(&mut self, id: &str, entry: Option<ContainerRoutes>, why: &str) -> bool {
        set_entry(&mut self.snap.containers, Kind::Container, id, entry, why)
    }

    /// Sets one service's entry; returns whether anything changed.
    fn set_service(&mut self, id: &str, entry: Option<ContainerRoutes>, why: &str) -> bool {
        set_entry(&mut self.snap.services, Kind::Service, id, entry, why)
    }

    /// Replaces every container entry from a full list; returns whether anything changed.
    fn reconcile(&mut self, views: Vec<ContainerView>) -> bool {
        let fresh: BTreeMap<String, ContainerRoutes> =
            views.iter().filter_map(|v| Some((v.id.clone(), self.routes_of(v)?))).collect();
        reconcile_entries(&mut self.snap.containers, Kind::Container, fresh, "not running")
    }

    /// Replaces every service entry from a full list; returns whether anything changed.
    fn reconcile_services(&mut self, views: &[ServiceView]) -> bool {
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

/// A container id, the event that named it, and what inspecting it said.
type Inspected = (String, &'static str, Result<Option<ContainerView>, WatchError>);

/// A service id, why it was looked at, and what listing it said.
type ListedService = (String, &'static str, Result<Answer<Option<ServiceListing>>, WatchError>);

/// Which event stream an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Container events, with the configured label filters.
    Containers,
    /// Service events and swarm tasks' container events (swarm managers only).
    Swarm,
}

/// What the event readers hand the session.
enum Incoming {
    Event(EventMessage, Stream),
    Failed(bollard::errors::Error),
    Ended,
}

/// Aborts an event reader when its owner drops it, however the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// First delay before looking again at a service that is settling; it doubles up to
/// [`RECHECK_MAX`], and after [`RECHECK_ATTEMPTS`] looks the periodic resync takes over.
const RECHECK_MIN: Duration = Duration::from_millis(100);
const RECHECK_MAX: Duration = Duration::from_secs(5);
const RECHECK_ATTEMPTS: u32 = 12;

/// When to look again at one settling service.
#[derive(Debug, Clone, Copy)]
struct Recheck {
    due: tokio::time::Instant,
    delay: Duration,
    attempts: u32,
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

/// What changed in the events of one batch.
#[derive(Default)]
struct Batch {
    containers: BTreeMap<String, &'static str>,
    services: BTreeMap<String, &'static str>,
}

/// One connection to the engine, from connect to a lost stream.
struct Session<'a> {
    config: &'a DockerConfig,
    host: &'a str,
    state: &'a mut State,
    /// Set once the first list has been applied.
    synced: bool,
    /// Set when the engine (a socket proxy in front of it) refused to list services: this
    /// session then watches containers only, without asking again.
    swarm_refused: bool,
}

impl Session<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), WatchError> {
        let docker = engine::connect(self.host, self.config.request_timeout).await?;
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

        self.state.own_networks = self.config.own_container.networks(&docker, self.host).await?;

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
                            Some(Incoming::Event(ev, stream)) => note_event(&mut batch, swarm.as_mut(), ev, stream),
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
                let raw = RawClient::new(self.host, version, self.config.request_timeout);
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
        let views = engine::list_views(docker, self.host, &self.config.label_filters).await?;
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
                let views = engine::list_views(docker, self.host, &self.config.label_filters).await?;
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
            let view = view?;
            let entry = view.as_ref().and_then(|v| self.state.routes_of(v));
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

/// Schedules (or pushes back) a look at a settling service; gives up after
/// [`RECHECK_ATTEMPTS`] looks without a fresh event.
fn schedule_recheck(rechecks: &mut BTreeMap<String, Recheck>, id: &str, fresh: bool) {
    let now = tokio::time::Instant::now();
    let next = match rechecks.get(id) {
        Some(r) if !fresh => {
            if r.attempts >= RECHECK_ATTEMPTS {
                debug!(service = id, "still settling; left to the periodic resync");
                rechecks.remove(id);
                return;
            }
            let delay = (r.delay * 2).min(RECHECK_MAX);
            Recheck { due: now + delay, delay, attempts: r.attempts + 1 }
        }
        _ => Recheck { due: now + RECHECK_MIN, delay: RECHECK_MIN, attempts: 1 },
    };
    rechecks.insert(id.to_string(), next);
}

/// The services whose recheck is due at `now`.
fn due_rechecks(rechecks: &BTreeMap<String, Recheck>, now: tokio::time::Instant) -> BTreeMap<String, &'static str> {
    rechecks.iter().filter(|(_, r)| r.due <= now).map(|(id, _)| (id.clone(), "settling")).collect()
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// Records an event in the batch; the last action wins for the log line.
fn note_event(batch: &mut Batch, swarm: Option<&mut SwarmSession>, ev: EventMessage, stream: Stream) {
    let typ = ev.typ;
    let Some(actor) = ev.actor else { return };
    let Some(id) = actor.id else { return };
    let action = ev.action.unwrap_or_default();
    let action = action.split(':').next().unwrap_or("").trim().to_string();
    match stream {
        Stream::Containers => {
            let action: &'static str = WATCHED_EVENTS.iter().find(|w| **w == action).copied().unwrap_or("event");
            debug!(id = short_id(&id), action, "container event");
            batch.containers.insert(id, action);
        }
        Stream::Swarm if typ == Some(EventMessageTypeEnum::SERVICE) => {
            let action: &'static str = SERVICE_EVENTS.iter().find(|w| **w == action).copied().unwrap_or("event");
            debug!(service = short_id(&id), action, "service event");
            batch.services.insert(id, action);
        }
        Stream::Swarm => {
            // A task's container started or stopped: the swarm sends no event for the task
            // itself, so its service is listed again.
            let Some(service) = actor.attributes.as_ref().and_then(|a| a.get(SWARM_SERVICE_ID_LABEL)) else { return };
            let Some(s) = swarm else { return };
            match action.as_str() {
                "start" => {
                    s.dead.remove(&id);
                }
                "die" | "stop" | "kill" | "destroy" => {
                    s.dead.insert(id.clone());
                }
                _ => return,
            }
            debug!(service = short_id(service), container = short_id(&id), action = %action, "task container event");
            batch.services.insert(service.clone(), "task");
        }
    }
}

/// The service events that can change a service's routes.
pub const SERVICE_EVENTS: &[&str] = &["create", "update", "remove"];

/// The container events of a swarm task that make the watcher list its service again.
const TASK_CONTAINER_EVENTS: &[&str] = &["start", "die", "stop", "kill", "destroy"];

/// The filters of the container event stream.
fn container_event_filters(label_filters: &[String]) -> HashMap<String, Vec<String>> {
    let mut filters: HashMap<String, Vec<String>> = [
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), WATCHED_EVENTS.iter().map(|e| e.to_string()).collect()),
    ]
    .into_iter()
    .collect();
    if !label_filters.is_empty() {
        filters.insert("label".to_string(), label_filters.to_vec());
    }
    filters
}

/// The filters of the swarm event stream: service events, and container events (a task's
/// container carries [`SWARM_SERVICE_ID_LABEL`]; others are dropped on arrival). No label
/// filter: service events carry no labels, so the service's are checked when it is listed.
fn swarm_event_filters() -> HashMap<String, Vec<String>> {
    let events: BTreeSet<&str> = SERVICE_EVENTS.iter().chain(TASK_CONTAINER_EVENTS).copied().collect();
    [
        ("type".to_string(), vec!["service".to_string(), "container".to_string()]),
        ("event".to_string(), events.into_iter().map(str::to_string).collect()),
    ]
    .into_iter()
    .collect()
}

/// Streams events matching `filters` into `tx` until the stream ends or its owner drops the
/// reader.
async fn read_events(
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
    stream_kind: Stream,
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs().saturating_sub(1)).unwrap_or(0);
    let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
    let mut stream = std::pin::pin!(docker.events(Some(options)));
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(ev) => Incoming::Event(ev, stream_kind),
            Err(e) => {
                let _ = tx.send(Incoming::Failed(e));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Ended);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_engine::MockEngine;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    /// Starts a watcher on `host` and returns its first synced snapshot.
    async fn first_sync(host: &str) -> (Arc<DockerSnapshot>, CancellationToken, JoinHandle<()>) {
        let config = DockerConfig {
            host: Some(host.to_string()),
            own_container: OwnContainer::Disabled,
            resync_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let watcher = DockerWatcher::new(config);
        let mut rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        let snap = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.synced || s.last_error.is_some()))
            .await
            .expect("a snapshot")
            .expect("the watcher is alive")
            .clone();
        (snap, shutdown, task)
    }

    fn manager_info() -> serde_json::Value {
        serde_json::json!({"Swarm": {"NodeID": "n1", "LocalNodeState": "active", "ControlAvailable": true}})
    }

    #[tokio::test]
    async fn a_swarm_managers_labelled_services_become_routes_to_their_tasks() {
        let engine = MockEngine::start(&[
            ("/info", 200, manager_info()),
            ("/containers/json", 200, serde_json::json!([])),
            (
                "/services",
                200,
                serde_json::json!([{"ID": "s1", "Spec": {"Name": "web", "Labels": {"proxy.web.port": "8080:80"}}}]),
            ),
            (
                "/tasks",
                200,
                serde_json::json!([{
                    "ID": "t1", "ServiceID": "s1", "NodeID": "n2", "DesiredState": "running",
                    "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c1"}},
                    "NetworksAttachments": [
                        {"Network": {"ID": "b", "Spec": {"Name": "backend"}}, "Addresses": ["10.0.1.5/24"]}
                    ]
                }]),
            ),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && snap.swarm, "{snap:?}");
        let web = snap.service_by_name("web").expect("the service's entry");
        let targets: Vec<String> = web.routes[0].targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["10.0.1.5:80"]);
        assert_eq!(web.routes[0].source, "web");
        assert!(engine.asked("/tasks?filters="), "{:?}", engine.requests);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn services_refused_by_a_socket_proxy_leave_containers_watched() {
        let engine = MockEngine::start(&[
            ("/info", 200, manager_info()),
            ("/containers/json", 200, serde_json::json!([])),
            ("/services", 403, serde_json::json!({"message": "forbidden"})),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && !snap.swarm, "{snap:?}");
        assert_eq!(snap.last_error, None);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn a_refused_info_means_no_swarm_not_a_failure() {
        let engine = MockEngine::start(&[
            ("/info", 403, serde_json::json!({"message": "forbidden"})),
            ("/containers/json", 200, serde_json::json!([])),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && !snap.swarm, "{snap:?}");
        assert!(!engine.asked("/services"), "{:?}", engine.requests);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn unreachable_engine_is_reported_and_retried_until_shutdown() {
        let dir = std::env::temp_dir().join(format!("dockward-no-engine-{}", std::process::id()));
        let config = DockerConfig {
            host: Some(format!("unix://{}/docker.sock", dir.display())),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Default::default()
        };
        let watcher = DockerWatcher::new(config);
        let mut rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        let snap = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.last_error.is_some()))
            .await
            .expect("an error is published")
            .expect("the watcher is alive")
            .clone();
        assert!(!snap.connected && !snap.synced);
        assert!(snap.last_error.as_deref().unwrap_or("").contains("cannot reach the Docker engine"), "{snap:?}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns on shutdown").expect("no panic");
    }
}
