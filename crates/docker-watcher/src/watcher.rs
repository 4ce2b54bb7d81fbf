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
//!    session: back off (250 ms doubling to 30 s), reconnect, re-list, reconcile. While the
//!    engine is away the last snapshot's containers are kept and `connected` is false; a WARN
//!    is logged at most once a minute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::{self, short_id};
use crate::error::WatchError;
use crate::labels::{ContainerRoutes, ContainerView, parse_labels};
use crate::snapshot::DockerSnapshot;

/// The container events that can change a container's routes.
pub const WATCHED_EVENTS: &[&str] =
    &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "health_status"];

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
    /// Longest retry delay. Default 30 s.
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
            backoff_max: Duration::from_secs(30),
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
            let mut session = Session { config: &self.config, host: &self.host, state: &mut state, synced: false };
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
        Some(parse_labels(view, &self.own_networks))
    }

    /// Sets one container's entry; returns whether anything changed.
    fn set(&mut self, id: &str, entry: Option<ContainerRoutes>, why: &str) -> bool {
        let old = self.snap.containers.get(id);
        if old == entry.as_ref() {
            return false;
        }
        log_change(old, entry.as_ref(), why);
        match entry {
            Some(e) => self.snap.containers.insert(id.to_string(), e),
            None => self.snap.containers.remove(id),
        };
        true
    }

    /// Replaces every entry from a full list; returns whether anything changed.
    fn reconcile(&mut self, views: Vec<ContainerView>) -> bool {
        let mut fresh: BTreeMap<String, ContainerRoutes> = BTreeMap::new();
        for view in &views {
            if let Some(entry) = self.routes_of(view) {
                fresh.insert(view.id.clone(), entry);
            }
        }
        let gone: Vec<String> = self.snap.containers.keys().filter(|id| !fresh.contains_key(*id)).cloned().collect();
        let mut changed = false;
        for id in gone {
            changed |= self.set(&id, None, "not running");
        }
        for (id, entry) in fresh {
            changed |= self.set(&id, Some(entry), "listed");
        }
        changed
    }
}

fn log_change(old: Option<&ContainerRoutes>, new: Option<&ContainerRoutes>, why: &str) {
    match (old, new) {
        (Some(old), None) => {
            info!(container = %old.name, id = short_id(&old.id), routes = old.routes.len(), reason = why, "container routes removed")
        }
        (_, Some(new)) => {
            let aliases: Vec<&str> = new.routes.iter().map(|r| r.alias.as_str()).collect();
            info!(container = %new.name, id = short_id(&new.id), routes = ?aliases, errors = new.errors.len(), reason = why, "container routes");
            for e in &new.errors {
                if old.is_none_or(|o| !o.errors.contains(e)) {
                    warn!(container = %new.name, alias = e.alias().unwrap_or(""), error = %e, "bad container label");
                }
            }
        }
        (None, None) => {}
    }
}

/// A container id, the event that named it, and what inspecting it said.
type Inspected = (String, &'static str, Result<Option<ContainerView>, WatchError>);

/// What the event reader hands the session.
enum Incoming {
    Event(EventMessage),
    Failed(bollard::errors::Error),
    Ended,
}

/// Aborts the event reader when the session ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection to the engine, from connect to a lost stream.
struct Session<'a> {
    config: &'a DockerConfig,
    host: &'a str,
    state: &'a mut State,
    /// Set once the first list has been applied.
    synced: bool,
}

impl Session<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), WatchError> {
        let docker = engine::connect(self.host, self.config.request_timeout).await?;
        let version = engine::engine_version(&docker, self.host).await?;

        // Events first, so nothing that happens during the list is missed.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let _reader =
            AbortOnDrop(tokio::spawn(read_events(docker.clone(), self.config.label_filters.clone(), events_tx)));

        self.state.own_networks = match &self.config.own_container {
            OwnContainer::Disabled => Vec::new(),
            OwnContainer::Id(id) => engine::own_networks(&docker, self.host, id).await?,
            OwnContainer::Detect => match engine::detect_own_container_id() {
                Some(id) => engine::own_networks(&docker, self.host, &id).await?,
                None => Vec::new(),
            },
        };

        self.resync(&docker).await?;
        self.state.snap.connected = true;
        self.state.snap.synced = true;
        self.state.snap.last_error = None;
        self.state.snap.engine = Some(version.clone());
        self.state.publish();
        self.synced = true;
        info!(host = %self.host, engine = %version, containers = self.state.snap.containers.len(), "watching Docker engine");

        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.resync_interval,
            self.config.resync_interval,
        );
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = events.recv() => {
                    let mut batch: BTreeMap<String, &'static str> = BTreeMap::new();
                    let mut next = msg;
                    loop {
                        match next {
                            Some(Incoming::Event(ev)) => note_event(&mut batch, ev),
                            Some(Incoming::Failed(source)) => return Err(WatchError::engine(self.host, "events", source)),
                            Some(Incoming::Ended) | None => return Err(WatchError::StreamEnded { host: self.host.to_string() }),
                        }
                        // Take everything already queued: a burst becomes one publication.
                        next = match events.try_recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        };
                    }
                    if self.apply_events(&docker, batch).await? {
                        self.state.publish();
                    }
                }
                _ = resync.tick() => {
                    debug!(host = %self.host, "periodic resync");
                    if self.resync(&docker).await? {
                        self.state.publish();
                    }
                }
            }
        }
    }

    /// Lists every container and reconciles; returns whether anything changed.
    async fn resync(&mut self, docker: &Docker) -> Result<bool, WatchError> {
        let views = engine::list_views(docker, self.host, &self.config.label_filters).await?;
        Ok(self.state.reconcile(views))
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
}

/// Records an event's container in the batch; the last action wins for the log line.
fn note_event(batch: &mut BTreeMap<String, &'static str>, ev: EventMessage) {
    let Some(id) = ev.actor.and_then(|a| a.id) else { return };
    let action = ev.action.unwrap_or_default();
    let action = action.split(':').next().unwrap_or("").trim().to_string();
    let action: &'static str = WATCHED_EVENTS.iter().find(|w| **w == action).copied().unwrap_or("event");
    debug!(id = short_id(&id), action, "container event");
    batch.insert(id, action);
}

/// Streams container events into `tx` until the stream ends or the session drops the reader.
async fn read_events(docker: Docker, label_filters: Vec<String>, tx: mpsc::UnboundedSender<Incoming>) {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs().saturating_sub(1)).unwrap_or(0);
    let mut filters: std::collections::HashMap<String, Vec<String>> = [
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), WATCHED_EVENTS.iter().map(|e| e.to_string()).collect()),
    ]
    .into_iter()
    .collect();
    if !label_filters.is_empty() {
        filters.insert("label".to_string(), label_filters);
    }
    let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
    let mut stream = std::pin::pin!(docker.events(Some(options)));
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(ev) => Incoming::Event(ev),
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

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
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
