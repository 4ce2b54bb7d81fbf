//! Carrying out a [`Plan`]: stopping removed routes, pushing updates to running forwarders,
//! binding and spawning new ones, and recording each route's state.
//!
//! Every step here is synchronous and runs under the entries lock; the only wait of an
//! apply (for removed listeners to close) happens between [`RouteTable::remove`] and
//! [`RouteTable::execute`], after every removed route has been told to stop.

use std::collections::{BTreeMap, btree_map};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::plan::{Action, Plan};
use super::{ApplyReport, Entry, RouteTable, Running};
use crate::client_limits::ClientTable;
use crate::error::RouteError;
use crate::forward::{self, Live, RouteCtx};
use crate::stats::{RouteState, RouteStats};
use route_spec::{Protocol, RouteId, RouteSpec};

impl RouteTable {
    /// Stops and forgets the routes `gone`. Returns the listener tasks to await: once they
    /// end, the removed routes' ports are free.
    ///
    /// Synchronous, so a cancelled `apply` cannot leave a removed route listening.
    pub(super) fn remove(&self, entries: &mut BTreeMap<RouteId, Entry>, gone: &[RouteId]) -> Vec<JoinHandle<()>> {
        let mut listeners = Vec::new();
        for id in gone {
            if let Some(entry) = entries.remove(id)
                && let Some(running) = entry.running
            {
                listeners.extend(self.begin_stop(&entry.spec, running, entry.spec.options.drain_grace));
            }
        }
        listeners
    }

    /// Carries out the rest of `plan` (its removals done): updates in place, refusals, then
    /// the starts, oldest first. Adds what it did to `report`.
    pub(super) fn execute(&self, entries: &mut BTreeMap<RouteId, Entry>, mut plan: Plan, report: &mut ApplyReport) {
        for d in &plan.disagreements {
            warn!(protocol = %d.id.protocol, listen = %d.id.listen, alias = %d.id.alias, source = %d.first, other = %d.other, action = "merge", "replicas of one route disagree on its options; the first one's are used");
        }
        report.unchanged = plan.unchanged;
        for (id, spec) in plan.update {
            let Some(entry) = entries.get_mut(&id) else { continue };
            let Some(running) = &entry.running else { continue };
            let previous = running.live.borrow().clone();
            running.live.send_replace(Arc::new(Live::from_spec(&spec, self.global(), Some(&previous), self.backoff)));
            info!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, source = %spec.source, dst = %forward::dial::display_targets(&spec.targets), action = "update", "route updated in place");
            entry.spec = spec;
            report.updated.push(id);
        }
        for (id, message) in plan.refuse {
            // Still running on its old settings, which `entry.spec` keeps showing: status
            // must tell what actually runs.
            if let Some(entry) = entries.get(&id) {
                let listen = entry.running.as_ref().map_or(id.listen, |r| r.bound);
                warn!(protocol = %id.protocol, listen = %listen, alias = %id.alias, action = "update", error = %message, "invalid update refused; route keeps its previous settings");
                entry.stats.set_last_error(message.clone());
            }
            report.failed.push((id, RouteState::Error { message }));
        }

        while let Some(start) = plan.start.next() {
            let id = start.id;
            let entry = match entries.entry(id.clone()) {
                btree_map::Entry::Occupied(row) => {
                    let entry = row.into_mut();
                    entry.spec = start.spec;
                    entry
                }
                btree_map::Entry::Vacant(row) => row.insert(Entry {
                    spec: start.spec,
                    seq: self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    since: SystemTime::now(),
                    stats: Arc::new(RouteStats::default()),
                    state: RouteState::Error { message: "not started".into() },
                    running: None,
                }),
            };
            let state = match start.action {
                Action::Conflict { with } => {
                    warn!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, held_by = %with, action = "conflict", "listen address taken by another route");
                    RouteState::Conflict { with }
                }
                Action::Invalid { message } => RouteState::Error { message },
                Action::Bind { port } => match self.start(entry, port) {
                    Ok(running) => {
                        info!(protocol = %id.protocol, listen = %running.bound, alias = %id.alias, source = %entry.spec.source, dst = %forward::dial::display_targets(&entry.spec.targets), action = "start", "route listening");
                        entry.running = Some(running);
                        entry.state = RouteState::Listening;
                        report.started.push(id);
                        continue;
                    }
                    Err(e) => {
                        plan.start.bind_failed(&id);
                        RouteState::Error { message: e.to_string() }
                    }
                },
            };
            if let RouteState::Error { message } = &state {
                error!(protocol = %id.protocol, listen = %id.listen, alias = %id.alias, error = %message, action = "start", "route failed to start");
            }
            if let Some(m) = state.message() {
                entry.stats.set_last_error(m);
            }
            entry.state = state.clone();
            report.failed.push((id, state));
        }
    }

    /// Binds and spawns one valid route's forwarder; a port-0 route asks first for
    /// `remembered`, the port it had, and takes any if that one is gone.
    fn start(&self, entry: &Entry, remembered: Option<u16>) -> Result<Running, RouteError> {
        let spec = &entry.spec;
        let bind_err = |source| RouteError::Bind { protocol: spec.protocol, addr: spec.listen, source };
        let (live, live_rx) = watch::channel(Arc::new(Live::from_spec(spec, self.global(), None, self.backoff)));
        let stop_accepting = CancellationToken::new();
        let close_conns = self.root().child_token();
        let tracker = TaskTracker::new();
        let access_log = self.access_log();
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
            self.picked_ports.lock().unwrap_or_else(|p| p.into_inner()).remember(&spec.id(), bound.port());
        }
        Ok(Running { bound, live, stop_accepting, close_conns, tracker, serve, clients })
    }

    /// Stops a route without waiting: the listener is told to close at once, open
    /// connections are closed at once or after `grace`. Returns the listener task to await
    /// when the caller must know the socket is closed.
    ///
    /// Synchronous on purpose, so no cancelled caller can leave the route half-stopped.
    pub(super) fn begin_stop(&self, spec: &RouteSpec, running: Running, grace: Duration) -> Option<JoinHandle<()>> {
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
