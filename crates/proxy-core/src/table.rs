//! The route table: `apply(desired)` diffs what providers want against what runs and
//! touches only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::acl::{Acl, display_nets};
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
        }
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
                running.live.send_replace(Arc::new(Live::from_spec(&entry.spec, acl.clone())));
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
    /// - A route whose id is unchanged and whose spec is equal is left alone.
    /// - A route whose targets, options or hooks changed is updated in place: the listener
    ///   stays bound, new clients use the new settings, open ones finish undisturbed.
    /// - A route no longer desired stops listening at once; its open connections close
    ///   after its drain grace.
    /// - A route that is invalid, cannot bind, or whose listen address is held by another
    ///   route stays in the table with its error and is retried on the next apply.
    pub async fn apply(&self, desired: Vec<RouteSpec>) -> ApplyReport {
        let _serialised = self.apply_lock.lock().await;
        let mut report = ApplyReport::default();

        // Desired routes in the order given (new routes are aged in that order, so of two
        // new routes claiming one address the one given first keeps it); first occurrence
        // of an id wins, later duplicates are reported.
        let mut ids: BTreeSet<RouteId> = BTreeSet::new();
        let mut wanted: Vec<(RouteId, RouteSpec)> = Vec::with_capacity(desired.len());
        let mut duplicates = Vec::new();
        for spec in desired {
            let id = spec.id();
            if ids.insert(id.clone()) {
                wanted.push((id, spec));
            } else {
                duplicates.push(id);
            }
        }
        for id in duplicates {
            warn!(alias = %id.alias, source = %id.source, action = "duplicate", "route given twice; the first one is used");
        }

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
                                running.live.send_replace(Arc::new(Live::from_spec(&spec, self.global())));
                                info!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, dst = %forward::dial::display_targets(&spec.targets), action = "update", "route updated in place");
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
                            info!(protocol = %id.protocol, listen = %bound, alias = %id.alias, source = %id.source, dst = dst.unwrap_or_default(), action = "start", "route listening");
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
        let (live, live_rx) = watch::channel(Arc::new(Live::from_spec(spec, self.global())));
        let stop_accepting = CancellationToken::new();
        let close_conns = self.root().child_token();
        let tracker = TaskTracker::new();
        let make_ctx = |bound| RouteCtx {
            alias: Arc::from(spec.alias.as_str()),
            protocol: spec.protocol,
            listen: bound,
            live: live_rx.clone(),
            stats: entry.stats.clone(),
            stop_accepting: stop_accepting.clone(),
            close_conns: close_conns.clone(),
            tracker: tracker.clone(),
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
        Ok(Running { bound, live, stop_accepting, close_conns, tracker, serve })
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
