//! The route table: `apply(desired)` diffs what providers want against what runs and
//! touches only what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::access_log::AccessLog;
use crate::acl::{Acl, display_nets};
use crate::balance::Backoff;
use crate::client_limits::ClientTable;
use crate::error::RouteError;
use crate::forward::{self, Live, RouteCtx};
use crate::route::{Family, Protocol, RouteId, RouteSpec};
use crate::stats::{RouteState, RouteStats, RouteStatus};

/// What one `apply` changed, by route id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Routes that started listening (new, or retried after an error or conflict).
    pub started: Vec<RouteId>,
    /// Routes that were removed and stopped.
    pub removed: Vec<RouteId>,
    /// Running routes whose targets, options or hooks changed in place.
    pub updated: Vec<RouteId>,
    /// Running routes left exactly as they were.
    pub unchanged: Vec<RouteId>,
    /// Routes in the table that are not serving (invalid, failed to bind, or in conflict), and
    /// running routes whose update was invalid and refused (they keep their previous settings).
    pub failed: Vec<(RouteId, RouteState)>,
}

/// The running routes of one process.
///
/// `apply` calls are serialised; `status` may be called at any time from any task and
/// never waits for traffic (only, for the length of a `bind` call, for an apply's start step).
/// `apply` is cancel-safe: if its future is dropped, routes it already removed still stop.
pub struct RouteTable {
    /// Serialises `apply` and `shutdown`.
    apply_lock: tokio::sync::Mutex<()>,
    /// Every route in the table, serving or not.
    entries: Mutex<BTreeMap<RouteId, Entry>>,
    /// Parent of every route's connection token: cancelled by `shutdown` (then replaced, so
    /// the table can be used again) or drop.
    root: Mutex<CancellationToken>,
    /// Trackers of removed routes whose connections are still draining.
    draining: Mutex<Vec<TaskTracker>>,
    /// The drain-grace timers of removed routes, awaited by `shutdown`.
    timers: TaskTracker,
    /// Source of [`Entry::seq`].
    next_seq: std::sync::atomic::AtomicU64,
    /// The ACL every route applies besides its own; locked after `entries` when both are.
    global_acl: Mutex<Arc<Acl>>,
    /// The port the OS last picked for each port-0 route, so a route that goes and comes
    /// back (a restarted container) gets the same port when it is still free.
    picked_ports: Mutex<PickedPorts>,
    /// How long a failed target is skipped; see [`RouteTable::with_target_backoff`].
    backoff: Backoff,
    /// Where routes started from now on send their access-log events.
    access_log: Mutex<Option<AccessLog>>,
}

/// Remembered OS-picked ports, bounded so route churn cannot grow it without end.
#[derive(Default)]
struct PickedPorts {
    ports: std::collections::HashMap<RouteId, u16>,
    /// Insertion order, oldest first, for forgetting beyond [`PickedPorts::MAX`].
    order: std::collections::VecDeque<RouteId>,
}

impl PickedPorts {
    const MAX: usize = 65_536;

    fn remember(&mut self, id: &RouteId, port: u16) {
        if self.ports.insert(id.clone(), port).is_none() {
            self.order.push_back(id.clone());
            if self.order.len() > Self::MAX
                && let Some(old) = self.order.pop_front()
            {
                self.ports.remove(&old);
            }
        }
    }
}

/// One route in the table, serving or not.
struct Entry {
    /// The route as it runs (a refused invalid update does not replace it).
    spec: RouteSpec,
    /// Insertion order: the older of two conflicting routes keeps the address.
    seq: u64,
    /// When the route entered the table.
    since: SystemTime,
    /// Its counters, kept across retries.
    stats: Arc<RouteStats>,
    /// Listening, or why not.
    state: RouteState,
    /// The forwarder, while listening.
    running: Option<Running>,
}

/// The handles of one serving route's forwarder.
struct Running {
    /// The address actually bound.
    bound: SocketAddr,
    /// Pushes updated targets, options and hooks to the forwarder.
    live: watch::Sender<Arc<Live>>,
    /// Ends the accept loop and drops the listener.
    stop_accepting: CancellationToken,
    /// Closes open connections and sessions.
    close_conns: CancellationToken,
    /// The listener task and every connection or session task.
    tracker: TaskTracker,
    /// The listener task; it has dropped its socket when this completes.
    serve: JoinHandle<()>,
    /// The route's per-client state.
    clients: Arc<ClientTable>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// An empty table. Must be used inside a Tokio runtime.
    pub fn new() -> Self {
        RouteTable {
            apply_lock: tokio::sync::Mutex::new(()),
            entries: Mutex::new(BTreeMap::new()),
            root: Mutex::new(CancellationToken::new()),
            draining: Mutex::new(Vec::new()),
            timers: TaskTracker::new(),
            next_seq: std::sync::atomic::AtomicU64::new(0),
            global_acl: Mutex::new(Arc::new(Acl::open())),
            picked_ports: Mutex::new(PickedPorts::default()),
            backoff: Backoff::default(),
            access_log: Mutex::new(None),
        }
    }

    /// Sends an [`AccessEvent`](crate::AccessEvent) for every TCP connection and UDP session
    /// that ends (and every client refused) to `log`, for each route whose `access_log` is
    /// on. Routes started before this call keep what they had: set it before the first
    /// apply.
    pub fn set_access_log(&self, log: Option<AccessLog>) {
        *self.access_log.lock().unwrap_or_else(|p| p.into_inner()) = log;
    }

    /// The access log's sink, if one is set.
    pub fn access_log(&self) -> Option<AccessLog> {
        self.access_log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many clients the per-client limits of the route `id` track now; `None` when it
    /// is not serving. For tests of the table's bound.
    #[doc(hidden)]
    pub fn tracked_clients(&self, id: &RouteId) -> Option<usize> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(id)?.running.as_ref().map(|r| r.clients.len())
    }

    /// The same table with another passive-health backoff: a target that fails is skipped
    /// for `base`, doubling with each further failure up to `max` (default 1 s and 30 s).
    /// For tests, which need a backoff long enough not to pass by itself.
    #[doc(hidden)]
    pub fn with_target_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff { base, max: max.max(base) };
        self
    }

    /// An empty table whose routes all apply `acl` besides their own; see
    /// [`RouteTable::set_global_acl`]. Must be used inside a Tokio runtime.
    pub fn with_global_acl(acl: Acl) -> Self {
        let table = Self::new();
        *table.global_acl.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(acl);
        table
    }

    /// The table-wide ACL, shared.
    fn global(&self) -> Arc<Acl> {
        self.global_acl.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The ACL every route's clients must pass in addition to the route's own `allow`/`deny`.
    pub fn global_acl(&self) -> Acl {
        (*self.global()).clone()
    }

    /// Sets the table-wide ACL: a client must pass both it and its route's own ACL (a deny
    /// in either refuses; an allow list in either must admit the client). Returns whether
    /// it changed.
    ///
    /// Takes effect at once for new TCP connections and new UDP sessions of every route,
    /// running or started later; connections and sessions already admitted are not judged
    /// again. Never waits for traffic or for an `apply`.
    pub fn set_global_acl(&self, acl: Acl) -> bool {
        let entries = self.entries();
        let acl = Arc::new(acl);
        {
            let mut global = self.global_acl.lock().unwrap_or_else(|p| p.into_inner());
            if **global == *acl {
                return false;
            }
            *global = acl.clone();
        }
        for entry in entries.values() {
            if let Some(running) = &entry.running {
                let previous = running.live.borrow().clone();
                running.live.send_replace(Arc::new(Live::from_spec(
                    &entry.spec,
                    acl.clone(),
                    Some(&previous),
                    self.backoff,
                )));
            }
        }
        info!(allow = %display_nets(acl.allow()), deny = %display_nets(acl.deny()), action = "global_acl", "global ACL set");
        true
    }

    /// The entries, locked. Never held across an `.await`.
    fn entries(&self) -> MutexGuard<'_, BTreeMap<RouteId, Entry>> {
        // A panic while holding this lock would leave plain data behind; keep serving it.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current root token.
    fn root(&self) -> CancellationToken {
        self.root.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The trackers of removed routes still draining, locked.
    fn draining(&self) -> MutexGuard<'_, Vec<TaskTracker>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the running routes match `desired`.
    ///
    /// - Specs with the same [`RouteId`] are one route (the replicas of a service: same
    ///   alias, protocol and listen port, from different containers): its targets are the
    ///   union of theirs in the order given, its source their sources joined with `, `, and
    ///   its options and hooks those of the first (a WARN names both sources when a later
    ///   one's differ). Replicas coming and going thus update the route in place.
    /// - A route whose id is unchanged and whose spec is equal is left alone.
    /// - A route whose targets, options or hooks changed is updated in place: the listener
    ///   stays bound, new clients use the new settings, open ones finish undisturbed, and
    ///   the targets that stay keep their health and connection counts.
    /// - A route no longer desired stops listening at once; its open connections close
    ///   after its drain grace.
    /// - A route that is invalid, cannot bind, or whose listen address is held by another
    ///   route stays in the table with its error and is retried on the next apply.
    pub async fn apply(&self, desired: Vec<RouteSpec>) -> ApplyReport {
        let _serialised = self.apply_lock.lock().await;
        let mut report = ApplyReport::default();

        // Desired routes in the order given (new routes are aged in that order, so of two
        // new routes claiming one address the one given first keeps it), replicas merged.
        let wanted = merge_replicas(desired);
        let ids: BTreeSet<RouteId> = wanted.iter().map(|(id, _)| id.clone()).collect();

        // 1. Stop what is no longer wanted, before anything binds, so freed ports can be taken.
        //    Every removed route is told to stop before the first await, so dropping this
        //    future half-way cannot leave a listener that nobody will ever stop.
        let listeners: Vec<JoinHandle<()>> = {
            let mut entries = self.entries();
            let gone: Vec<RouteId> = entries.keys().filter(|id| !ids.contains(*id)).cloned().collect();
            let mut listeners = Vec::new();
            for id in gone {
                if let Some(entry) = entries.remove(&id) {
                    if let Some(running) = entry.running {
                        listeners.extend(self.begin_stop(&entry.spec, running, entry.spec.options.drain_grace));
                    }
                    report.removed.push(id);
                }
            }
            listeners
        };
        // Returns once every removed TCP listener is closed: its port is free when apply returns.
        futures::future::join_all(listeners).await;

        // 2. Update what exists; collect what must (re)start.
        let mut to_start: Vec<RouteId> = Vec::new();
        {
            let mut entries = self.entries();
            for (id, spec) in wanted {
                match entries.get_mut(&id) {
                    Some(entry) => {
                        if entry.running.is_some() && entry.spec == spec {
                            report.unchanged.push(id);
                            continue;
                        }
                        match (&entry.running, spec.validate()) {
                            (Some(running), Ok(())) => {
                                let previous = running.live.borrow().clone();
                                running.live.send_replace(Arc::new(Live::from_spec(
                                    &spec,
                                    self.global(),
                                    Some(&previous),
                                    self.backoff,
                                )));
                                info!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, source = %spec.source, dst = %forward::dial::display_targets(&spec.targets), action = "update", "route updated in place");
                                entry.spec = spec;
                                report.updated.push(id);
                            }
                            (Some(running), Err(e)) => {
                                // Still running on its old settings, which `entry.spec` keeps
                                // showing: status must tell what actually runs.
                                let message = e.to_string();
                                warn!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, action = "update", error = %message, "invalid update refused; route keeps its previous settings");
                                entry.stats.set_last_error(message.clone());
                                report.failed.push((id, RouteState::Error { message }));
                            }
                            (None, _) => {
                                entry.spec = spec;
                                to_start.push(id);
                            }
                        }
                    }
                    None => {
                        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        entries.insert(
                            id.clone(),
                            Entry {
                                spec,
                                seq,
                                since: SystemTime::now(),
                                stats: Arc::new(RouteStats::default()),
                                state: RouteState::Error { message: "not started".into() },
                                running: None,
                            },
                        );
                        to_start.push(id);
                    }
                }
            }

            // 3. Start in age order so the oldest claimant of an address keeps it.
            to_start.sort_by_key(|id| entries.get(id).map(|e| e.seq).unwrap_or(u64::MAX));
            for id in to_start {
                let Some(entry) = entries.get(&id) else { continue };
                let state = match self.claimed_by(&entries, &entry.spec) {
                    Some(holder) => RouteState::Conflict { with: holder },
                    None => match self.start(entry) {
                        Ok(running) => {
                            let bound = running.bound;
                            if let Some(entry) = entries.get_mut(&id) {
                                entry.running = Some(running);
                                entry.state = RouteState::Listening;
                            }
                            let dst = entries.get(&id).map(|e| forward::dial::display_targets(&e.spec.targets));
                            let source = entries.get(&id).map(|e| e.spec.source.clone());
                            info!(protocol = %id.protocol, listen = %bound, alias = %id.alias, source = source.unwrap_or_default(), dst = dst.unwrap_or_default(), action = "start", "route listening");
                            report.started.push(id);
                            continue;
                        }
                        Err(e) => RouteState::Error { message: e.to_string() },
                    },
                };
                match &state {
                    RouteState::Conflict { with } => {
                        warn!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, held_by = %with, action = "conflict", "listen address taken by another route")
                    }
                    _ => {
                        error!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, error = %state.message().unwrap_or_default(), action = "start", "route failed to start")
                    }
                }
                if let Some(entry) = entries.get_mut(&id) {
                    entry.state = state.clone();
                    if let Some(m) = state.message() {
                        entry.stats.set_last_error(m);
                    }
                }
                report.failed.push((id, state));
            }
        }
        self.reap_drained();
        report
    }

    /// The running route that holds `spec`'s protocol and listen address, if another does.
    fn claimed_by(&self, entries: &BTreeMap<RouteId, Entry>, spec: &RouteSpec) -> Option<RouteId> {
        if spec.listen.port() == 0 {
            return None;
        }
        entries
            .values()
            .filter(|e| e.running.is_some() && e.spec.protocol == spec.protocol)
            .find(|e| overlaps((e.spec.listen, e.spec.family), (spec.listen, spec.family)))
            .map(|e| e.spec.id())
    }

    /// Validates, binds and spawns one route's forwarder.
    fn start(&self, entry: &Entry) -> Result<Running, RouteError> {
        let spec = &entry.spec;
        spec.validate()?;
        let bind_err = |source| RouteError::Bind { protocol: spec.protocol, addr: spec.listen, source };
        let (live, live_rx) = watch::channel(Arc::new(Live::from_spec(spec, self.global(), None, self.backoff)));
        let stop_accepting = CancellationToken::new();
        let close_conns = self.root().child_token();
        let tracker = TaskTracker::new();
        let access_log = self.access_log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let clients = Arc::new(ClientTable::default());
        let make_ctx = |bound| RouteCtx {
            alias: Arc::from(spec.alias.as_str()),
            protocol: spec.protocol,
            listen: bound,
            live: live_rx.clone(),
            stats: entry.stats.clone(),
            stop_accepting: stop_accepting.clone(),
            close_conns: close_conns.clone(),
            tracker: tracker.clone(),
            access_log: access_log.clone(),
            clients: clients.clone(),
        };
        // A port-0 route that ran before asks for the port it had, and takes any if that
        // one is gone.
        let id = spec.id();
        let remembered = if spec.listen.port() == 0 {
            self.picked_ports.lock().unwrap_or_else(|p| p.into_inner()).ports.get(&id).copied()
        } else {
            None
        };
        let (bound, serve) = match spec.protocol {
            Protocol::Tcp => {
                let listener = bind_preferring(spec.listen, remembered, |addr| forward::bind::tcp(addr, spec.family))
                    .map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                // Idle while the route's health_check is off; ends when the route stops accepting.
                tracker.spawn(forward::health::run(make_ctx(bound)));
                (bound, tracker.spawn(forward::tcp::serve(listener, make_ctx(bound))))
            }
            Protocol::Udp => {
                let socket = bind_preferring(spec.listen, remembered, |addr| forward::bind::udp(addr, spec.family))
                    .map_err(bind_err)?;
                let bound = socket.local_addr().map_err(bind_err)?;
                (bound, tracker.spawn(forward::udp::serve(socket, make_ctx(bound))))
            }
        };
        if spec.listen.port() == 0 {
            self.picked_ports.lock().unwrap_or_else(|p| p.into_inner()).remember(&id, bound.port());
        }
        Ok(Running { bound, live, stop_accepting, close_conns, tracker, serve, clients })
    }

    /// Stops a route without waiting: the listener is told to close at once, open
    /// connections are closed at once or after `grace`. Returns the listener task to await
    /// when the caller must know the socket is closed.
    ///
    /// Synchronous on purpose, so no cancelled caller can leave the route half-stopped.
    fn begin_stop(&self, spec: &RouteSpec, running: Running, grace: Duration) -> Option<JoinHandle<()>> {
        running.stop_accepting.cancel();
        running.tracker.close();
        if grace.is_zero() {
            running.close_conns.cancel();
        } else {
            // The timer is not one of the route's tasks: a route whose connections have all
            // finished is done draining without waiting out the grace.
            let close = running.close_conns.clone();
            let tracker = running.tracker.clone();
            self.timers.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => close.cancel(),
                    _ = close.cancelled() => {}
                    _ = tracker.wait() => {}
                }
            });
        }
        info!(protocol = %spec.protocol, listen = %running.bound, alias = %spec.alias, action = "stop", drain_grace = ?grace, "route stopped listening");
        self.draining().push(running.tracker);
        // A TCP listener closes on stop_accepting; a UDP socket also carries replies to open
        // sessions, so it lives until the connections close.
        (spec.protocol == Protocol::Tcp || grace.is_zero()).then_some(running.serve)
    }

    /// Forgets the trackers of removed routes that have finished draining.
    fn reap_drained(&self) {
        self.draining().retain(|t| !t.is_empty());
    }

    /// A snapshot of every route in the table, in id order; never blocks traffic.
    pub fn status(&self) -> Vec<RouteStatus> {
        self.entries()
            .values()
            .map(|e| RouteStatus {
                spec: e.spec.clone(),
                bound: e.running.as_ref().map(|r| r.bound),
                state: e.state.clone(),
                since: e.since,
                stats: e.stats.snapshot(),
                targets: e.running.as_ref().map(|r| r.live.borrow().targets.status()).unwrap_or_default(),
            })
            .collect()
    }

    /// Stops every route: listeners close, connections close (draining routes at once),
    /// and returns when no task, socket or listener of the table remains.
    ///
    /// The table is empty afterwards and may be used again.
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(Duration::ZERO).await
    }

    /// Like [`RouteTable::shutdown`], but lets open connections finish for up to `grace`
    /// (bounded by each route's own drain grace) before closing them.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let _serialised = self.apply_lock.lock().await;
        let listeners: Vec<JoinHandle<()>> = {
            let mut entries = self.entries();
            std::mem::take(&mut *entries)
                .into_values()
                .filter_map(|e| {
                    let running = e.running?;
                    self.begin_stop(&e.spec, running, e.spec.options.drain_grace.min(grace))
                })
                .collect()
        };
        futures::future::join_all(listeners).await;
        let trackers: Vec<TaskTracker> = std::mem::take(&mut *self.draining());
        let all = futures::future::join_all(trackers.iter().map(|t| t.wait()));
        tokio::select! {
            _ = all => {}
            _ = tokio::time::sleep(grace) => {}
        }
        // Closes whatever still runs, draining routes included; a fresh root serves the
        // routes of any later apply.
        let root = std::mem::take(&mut *self.root.lock().unwrap_or_else(|p| p.into_inner()));
        root.cancel();
        futures::future::join_all(trackers.iter().map(|t| t.wait())).await;
        self.timers.close();
        self.timers.wait().await;
        self.timers.reopen();
    }
}

impl Drop for RouteTable {
    fn drop(&mut self) {
        self.root().cancel();
        for entry in self.entries().values() {
            if let Some(running) = &entry.running {
                running.stop_accepting.cancel();
            }
        }
    }
}

/// The desired specs by id, in the order each id was first given, with the specs of one
/// id merged into one route; see [`RouteTable::apply`].
fn merge_replicas(desired: Vec<RouteSpec>) -> Vec<(RouteId, RouteSpec)> {
    let mut index: HashMap<RouteId, usize> = HashMap::with_capacity(desired.len());
    let mut merged: Vec<(RouteId, RouteSpec, Vec<String>)> = Vec::with_capacity(desired.len());
    for spec in desired {
        let id = spec.id();
        let Some(&i) = index.get(&id) else {
            index.insert(id.clone(), merged.len());
            let sources = if spec.source.is_empty() { Vec::new() } else { vec![spec.source.clone()] };
            merged.push((id, spec, sources));
            continue;
        };
        let (_, first, sources) = &mut merged[i];
        if spec.options != first.options || spec.hooks != first.hooks {
            let first_source = sources.first().map(String::as_str).unwrap_or_default();
            warn!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, source = %first_source, other = %spec.source, action = "merge", "replicas of one route disagree on its options; the first one's are used");
        }
        for target in spec.targets {
            if !first.targets.contains(&target) {
                first.targets.push(target);
            }
        }
        if !spec.source.is_empty() && !sources.contains(&spec.source) {
            sources.push(spec.source);
        }
    }
    merged
        .into_iter()
        .map(|(id, mut spec, sources)| {
            if sources.len() > 1 {
                spec.source = sources.join(", ");
            }
            (id, spec)
        })
        .collect()
}

/// Binds `listen`, first on `remembered`'s port when there is one.
fn bind_preferring<T>(
    listen: SocketAddr,
    remembered: Option<u16>,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> std::io::Result<T> {
    match remembered {
        Some(port) => bind(SocketAddr::new(listen.ip(), port)).or_else(|_| bind(listen)),
        None => bind(listen),
    }
}

/// Whether two listen addresses of one protocol would fight over a port.
fn overlaps((a, af): (SocketAddr, Family), (b, bf): (SocketAddr, Family)) -> bool {
    if a.port() != b.port() {
        return false;
    }
    match (a, b) {
        (SocketAddr::V4(x), SocketAddr::V4(y)) => {
            x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified()
        }
        (SocketAddr::V6(x), SocketAddr::V6(y)) => {
            x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified()
        }
        // A dual-stack [::] listener also takes the IPv4 port.
        (SocketAddr::V6(x), SocketAddr::V4(_)) => x.ip().is_unspecified() && af != Family::V6,
        (SocketAddr::V4(_), SocketAddr::V6(y)) => y.ip().is_unspecified() && bf != Family::V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteOptions, Target};

    fn replica(source: &str, listen: &str, host: &str) -> RouteSpec {
        RouteSpec::new("app", Protocol::Tcp, listen.parse().unwrap(), vec![Target::new(host, 80)]).with_source(source)
    }

    #[test]
    fn replicas_on_one_listen_port_merge_into_one_route_over_all_their_targets() {
        let mut slow = replica("app-3", "0.0.0.0:8080", "10.0.0.3");
        slow.options = RouteOptions { connect_timeout: Duration::from_secs(1), ..Default::default() };
        let merged = merge_replicas(vec![
            replica("app-1", "0.0.0.0:8080", "10.0.0.1"),
            replica("app-2", "0.0.0.0:8080", "10.0.0.2"),
            replica("app-2", "0.0.0.0:8080", "10.0.0.1"),
            slow,
            replica("app-1", "0.0.0.0:9090", "10.0.0.1"),
        ]);
        assert_eq!(merged.len(), 2, "one route per listen port");
        let (id, spec) = &merged[0];
        assert_eq!(id.source, "", "the source is not part of an explicit port's id");
        assert_eq!(spec.source, "app-1, app-2, app-3");
        let hosts: Vec<&str> = spec.targets.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "union in first-seen order, no duplicate");
        assert_eq!(spec.options, RouteOptions::default(), "the first replica's options");
        assert_eq!(merged[1].1.source, "app-1");
    }

    #[test]
    fn routes_on_os_picked_ports_stay_one_per_source() {
        let merged =
            merge_replicas(vec![replica("app-1", "0.0.0.0:0", "10.0.0.1"), replica("app-2", "0.0.0.0:0", "10.0.0.2")]);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].0.source.as_str(), merged[1].0.source.as_str()), ("app-1", "app-2"));
    }
}
