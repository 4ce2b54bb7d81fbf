//! The route table: `apply(desired)` diffs what providers want against what runs and
//! touches only what changed.
//!
//! An apply is a [plan](plan::plan), pure and decided first (which routes to remove,
//! update in place, leave alone and start, and who gets a contested address), then its
//! execution ([`execute`]): removed routes stop before anything binds, updates go to the
//! running forwarders, new routes bind oldest first. This file holds the table's state and
//! its public face.

mod execute;
pub mod plan;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::access_log::AccessLog;
use crate::acl::Acl;
use crate::balance::Backoff;
use crate::client_limits::ClientTable;
use crate::forward::Live;
use crate::stats::{RouteState, RouteStats, RouteStatus};
use route_spec::nets::display_nets;
use route_spec::{RouteId, RouteSpec};

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
    ports: HashMap<RouteId, u16>,
    /// Insertion order, oldest first, for forgetting beyond [`PickedPorts::MAX`].
    order: VecDeque<RouteId>,
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
    ///   route stays in the table with its error and is retried on the next apply. Of two
    ///   routes claiming one address, the older keeps it (new routes are aged in the order
    ///   given); the other takes over once it is gone.
    /// - A port-0 route that ran before asks for the port it had, and takes any if that
    ///   one is gone.
    pub async fn apply(&self, desired: Vec<RouteSpec>) -> ApplyReport {
        let _serialised = self.apply_lock.lock().await;
        let mut report = ApplyReport::default();

        // Decide everything, then stop what is no longer wanted before anything binds, so
        // freed ports can be taken. Every removed route is told to stop before the first
        // await, so dropping this future half-way cannot leave a listener nobody will stop.
        let (plan, listeners) = {
            let mut entries = self.entries();
            let mut plan = {
                let rows = entries
                    .iter()
                    .map(|(id, e)| (id, plan::Row { spec: &e.spec, seq: e.seq, listening: e.running.is_some() }))
                    .collect();
                let picked = self.picked_ports.lock().unwrap_or_else(|p| p.into_inner());
                plan::plan(&rows, desired, &picked.ports)
            };
            report.removed = std::mem::take(&mut plan.remove);
            let listeners = self.remove(&mut entries, &report.removed);
            (plan, listeners)
        };
        // Returns once every removed TCP listener is closed: its port is free when apply returns.
        futures::future::join_all(listeners).await;

        self.execute(&mut self.entries(), plan, &mut report);
        self.reap_drained();
        report
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
