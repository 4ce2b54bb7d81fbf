//! The route table: `apply(desired)` diffs what providers want against what runs and
//! touches only what changed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

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
    /// Routes in the table that are not serving: invalid, failed to bind, or in conflict.
    pub failed: Vec<(RouteId, RouteState)>,
}

/// The running routes of one process.
///
/// `apply` calls are serialised; `status` may be called at any time from any task and
/// never waits for an apply or for traffic.
pub struct RouteTable {
    apply_lock: tokio::sync::Mutex<()>,
    entries: Mutex<BTreeMap<RouteId, Entry>>,
    /// Parent of every route's connection token: cancelled by `shutdown` or drop.
    root: CancellationToken,
    /// Trackers of removed routes whose connections are still draining.
    draining: Mutex<Vec<TaskTracker>>,
    next_seq: std::sync::atomic::AtomicU64,
}

struct Entry {
    spec: RouteSpec,
    /// Insertion order: the older of two conflicting routes keeps the address.
    seq: u64,
    since: SystemTime,
    stats: Arc<RouteStats>,
    state: RouteState,
    running: Option<Running>,
}

struct Running {
    bound: SocketAddr,
    live: watch::Sender<Arc<Live>>,
    stop_accepting: CancellationToken,
    close_conns: CancellationToken,
    tracker: TaskTracker,
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
            root: CancellationToken::new(),
            draining: Mutex::new(Vec::new()),
            next_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<RouteId, Entry>> {
        // A panic while holding this lock would leave plain data behind; keep serving it.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

        // Desired routes by id, first occurrence wins; later duplicates are reported.
        let mut wanted: BTreeMap<RouteId, RouteSpec> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for spec in desired {
            let id = spec.id();
            if wanted.contains_key(&id) {
                duplicates.push(id);
            } else {
                wanted.insert(id, spec);
            }
        }
        for id in duplicates {
            warn!(alias = %id.alias, source = %id.source, action = "duplicate", "route given twice; the first one is used");
        }

        // 1. Stop what is no longer wanted, before anything binds, so freed ports can be taken.
        let gone: Vec<(RouteId, Entry)> = {
            let mut entries = self.entries();
            let ids: Vec<RouteId> = entries.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
            ids.into_iter().filter_map(|id| entries.remove(&id).map(|e| (id, e))).collect()
        };
        for (id, entry) in gone {
            if let Some(running) = entry.running {
                self.stop(&entry.spec, running).await;
            }
            report.removed.push(id);
        }

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
                        entry.spec = spec;
                        match &entry.running {
                            Some(running) if entry.spec.validate().is_ok() => {
                                running.live.send_replace(Arc::new(Live::from_spec(&entry.spec)));
                                info!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, dst = ?entry.spec.targets, action = "update", "route updated in place");
                                report.updated.push(id);
                            }
                            Some(_) => {
                                // Still running on its old settings; the new ones are invalid.
                                let message = entry.spec.validate().err().map(|e| e.to_string()).unwrap_or_default();
                                warn!(alias = %id.alias, action = "update", error = %message, "invalid update ignored; route keeps its previous settings");
                                entry.stats.set_last_error(message.clone());
                                report.failed.push((id, RouteState::Error { message }));
                            }
                            None => to_start.push(id),
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
                            info!(protocol = %id.protocol, listen = %bound, alias = %id.alias, source = %id.source, action = "start", "route listening");
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
                        error!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, error = ?state.message(), action = "start", "route failed to start")
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
        let (live, live_rx) = watch::channel(Arc::new(Live::from_spec(spec)));
        let stop_accepting = CancellationToken::new();
        let close_conns = self.root.child_token();
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
        let (bound, serve) = match spec.protocol {
            Protocol::Tcp => {
                let listener = forward::bind::tcp(spec.listen, spec.family).map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                (bound, tracker.spawn(forward::tcp::serve(listener, make_ctx(bound))))
            }
            Protocol::Udp => {
                let socket = forward::bind::udp(spec.listen, spec.family).map_err(bind_err)?;
                let bound = socket.local_addr().map_err(bind_err)?;
                (bound, tracker.spawn(forward::udp::serve(socket, make_ctx(bound))))
            }
        };
        Ok(Running { bound, live, stop_accepting, close_conns, tracker, serve })
    }

    /// Stops listening at once; open connections close after the drain grace.
    async fn stop(&self, spec: &RouteSpec, running: Running) {
        let grace = spec.options.drain_grace;
        running.stop_accepting.cancel();
        if grace.is_zero() {
            running.close_conns.cancel();
        }
        running.tracker.close();
        // TCP listeners close on stop_accepting; a UDP socket also carries replies to open
        // sessions, so it lives until the connections close.
        if spec.protocol == Protocol::Tcp || grace.is_zero() {
            let _ = running.serve.await;
        }
        if !grace.is_zero() {
            let close = running.close_conns.clone();
            running.tracker.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => close.cancel(),
                    _ = close.cancelled() => {}
                }
            });
        }
        self.draining.lock().unwrap_or_else(|p| p.into_inner()).push(running.tracker);
        info!(protocol = %spec.protocol, listen = %spec.listen, alias = %spec.alias, action = "stop", drain_grace = ?grace, "route stopped listening");
    }

    fn reap_drained(&self) {
        self.draining.lock().unwrap_or_else(|p| p.into_inner()).retain(|t| !t.is_empty());
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
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(std::time::Duration::ZERO).await
    }

    /// Like [`RouteTable::shutdown`], but lets open connections finish for up to `grace`
    /// (bounded by each route's own drain grace) before closing them.
    pub async fn shutdown_with_grace(&self, grace: std::time::Duration) {
        let _serialised = self.apply_lock.lock().await;
        let running: Vec<(RouteSpec, Running)> = {
            let mut entries = self.entries();
            std::mem::take(&mut *entries).into_values().filter_map(|e| e.running.map(|r| (e.spec, r))).collect()
        };
        for (mut spec, running) in running {
            spec.options.drain_grace = spec.options.drain_grace.min(grace);
            self.stop(&spec, running).await;
        }
        let trackers: Vec<TaskTracker> = std::mem::take(&mut *self.draining.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures::future::join_all(trackers.iter().map(|t| t.wait()));
        tokio::select! {
            _ = all => {}
            _ = tokio::time::sleep(grace) => {}
        }
        self.root.cancel();
        futures::future::join_all(trackers.iter().map(|t| t.wait())).await;
    }
}

impl Drop for RouteTable {
    fn drop(&mut self) {
        self.root.cancel();
        for entry in self.entries().values() {
            if let Some(running) = &entry.running {
                running.stop_accepting.cancel();
            }
        }
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
