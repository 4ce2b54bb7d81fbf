//! A route's sessions: how one opens, how it ends.
//!
//! The first datagram from a client address opens a session: the ACL and the pre-dial hook
//! are asked, the route's *current* settings are read (so an update in place reaches new
//! sessions while existing ones keep their upstream, idle timeout and hooks), a descriptor
//! is drawn from the process's budget ([`crate::fd_budget`]; when it is spent the datagram
//! is refused), and a plain non-blocking UDP socket *connected* to a target is made for it.
//! Sessions live in a [`Table`] (slab and index by client address).
//!
//! **Dialling.** When every target is an IP literal, the upstream socket is made inline
//! (no lookup, so no waiting). Otherwise the session starts in a *dialling* state: the
//! lookup runs in its own task (bounded by `connect_timeout`) so one slow resolver answer
//! never stalls the route, and the client's datagrams meanwhile wait in a small bounded
//! queue ([`PENDING_MAX_DATAGRAMS`] per session, [`PENDING_MAX_BYTES`] per route; beyond it
//! they are dropped and counted). The queue is flushed in order once the socket is ready.
//!
//! **Targets.** A new session picks its target by the route's `balance` strategy (see
//! [`crate::Balance`]) and keeps it for its life: with `ip_hash`, every session of one
//! client IP goes to the same target. UDP has no handshake to fail, so passive health is
//! read from the session's socket (see [`super::relay`]). Each open session is counted on
//! its target (`least_conn`, status) until it leaves the table.
//!
//! **The end.** A session ends after `udp_idle_timeout` without a datagram in *either*
//! direction, or when evicted as the least recently used at the route's cap (both through
//! the [`Lru`]), when a read on its socket fails with anything but an ICMP report, or when
//! the route closes. It ends by leaving the table: its socket is removed from the epoll
//! instance and closed, its descriptor permit returned, its lookup task (if any) aborted,
//! its counters settled. The client's next datagram opens a fresh one.
//!
//! **The cap** is `max_udp_sessions`, or the whole descriptor budget if that is smaller; at
//! the cap the least recently used session is evicted (and counted) to make room.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use route_spec::Ready;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::lru::{Clock, Lru};
use super::slab::{Key, Peer, Table};
use super::tuning::{LRU_SLACK, OVERSIZE_LOG_PERIOD, PENDING_MAX_BYTES, PENDING_MAX_DATAGRAMS, UPSTREAM_RCVBUF};
use super::upstream::send_upstream;
use crate::access_log::Outcome;
use crate::balance::Lease;
use crate::error::DialError;
use crate::fd_budget::{CapRegistration, FdBudget, FdPermit, Throttle};
use crate::forward::epoll::Epoll;
use crate::forward::{Live, RouteCtx, dial};
use crate::stats::RouteStats;

/// What lookup tasks tell the route's task.
pub(super) enum Event {
    /// A dialling session's target was resolved and its socket made, or not.
    Dialled {
        /// The session; news about a session already gone is ignored.
        key: Key,
        /// The connected upstream socket, its address and the lease on its target, or why
        /// there is none.
        result: Result<(StdUdpSocket, SocketAddr, Lease), DialError>,
    },
}

/// One client's session.
pub(super) struct Session {
    /// The client.
    pub(super) peer: SocketAddr,
    /// When a datagram last went either way, on the route's [`Clock`].
    pub(super) last: u64,
    /// The route's settings when the session opened.
    pub(super) live: Arc<Live>,
    /// Dialling or open.
    pub(super) state: State,
    /// The session's descriptor in the process's budget, returned as the session (and its
    /// socket) is dropped.
    pub(super) _permit: FdPermit,
    /// When the session opened, on the route's [`Clock`].
    pub(super) opened: u64,
    /// What it carried, for the access log.
    pub(super) tally: Tally,
    /// Tells a wake hook, by being dropped, that this client left.
    pub(super) _presence: Option<Box<dyn Send + Sync>>,
}

/// What one session carried: bytes and datagrams, client → target and target → client.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) datagrams_in: u64,
    pub(super) datagrams_out: u64,
}

impl Tally {
    /// Counts `datagrams` datagrams of `bytes` bytes from the client.
    pub(super) fn client(&mut self, datagrams: usize, bytes: usize) {
        self.datagrams_in += datagrams as u64;
        self.bytes_in += bytes as u64;
    }

    /// Counts `datagrams` datagrams of `bytes` bytes from the target.
    pub(super) fn target(&mut self, datagrams: usize, bytes: usize) {
        self.datagrams_out += datagrams as u64;
        self.bytes_out += bytes as u64;
    }
}

impl Session {
    /// The target, once the session is open.
    pub(super) fn dst(&self) -> Option<SocketAddr> {
        match &self.state {
            State::Open { dst, .. } => Some(*dst),
            State::Dialling { .. } => None,
        }
    }
}

impl Peer for Session {
    fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Where a session stands.
pub(super) enum State {
    /// The target is being resolved, or woken.
    Dialling {
        /// The client's waiting datagrams, oldest first.
        queue: VecDeque<Box<[u8]>>,
        /// True while the target wakes: queued datagrams count as `buffered`.
        held: bool,
        /// The lookup task, aborted if the session ends first.
        task: Option<AbortHandle>,
    },
    /// Forwarding.
    Open {
        /// The non-blocking socket connected to the target, in the route's epoll instance.
        socket: StdUdpSocket,
        /// The target's address.
        dst: SocketAddr,
        /// Counts the session on its target until the session leaves the table.
        lease: Lease,
    },
}

/// The state of one route's forwarder, owned by its task.
pub(super) struct Sessions {
    /// The route's context.
    pub(super) ctx: RouteCtx,
    /// The route's clock.
    pub(super) clock: Clock,
    /// Where lookup tasks report.
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// Every open session's socket, watched for replies; made with the first session.
    pub(super) epoll: Option<Arc<AsyncFd<Epoll>>>,
    /// The sessions.
    pub(super) table: Table<Session>,
    /// Recency and idle deadlines.
    pub(super) lru: Lru,
    /// Bytes waiting in the queues of dialling sessions.
    pub(super) pending_bytes: usize,
    /// Whether the last dial failed: the first failure in a row logs a warning, the rest debug.
    pub(super) dial_failing: bool,
    /// The process's descriptor budget, which every session draws from.
    pub(super) budget: &'static FdBudget,
    /// This route's `max_udp_sessions`, counted in the budget's sum of caps.
    pub(super) cap: CapRegistration,
    /// Whether the last session was refused for want of descriptors: the first refusal in a
    /// row is recorded as the route's last error.
    pub(super) budget_refusing: bool,
    /// Reports of datagrams too large for a session's socket, at most one a second.
    pub(super) oversize: Throttle,
}

impl Sessions {
    /// No session yet.
    pub(super) fn new(ctx: RouteCtx, clock: Clock, events: mpsc::UnboundedSender<Event>) -> Self {
        let budget = FdBudget::global();
        let cap = budget.register_cap(ctx.current().options.max_udp_sessions);
        Sessions {
            ctx,
            clock,
            events,
            epoll: None,
            table: Table::default(),
            lru: Lru::default(),
            pending_bytes: 0,
            dial_failing: false,
            budget,
            cap,
            budget_refusing: false,
            oversize: Throttle::new(OVERSIZE_LOG_PERIOD),
        }
    }

    /// Whether no session is left.
    pub(super) fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// When the next session may go idle.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.lru.next_deadline(&self.clock)
    }

    /// The epoll instance, made (and registered with Tokio) on first use.
    pub(super) fn epoll(&mut self) -> io::Result<Arc<AsyncFd<Epoll>>> {
        if let Some(epoll) = &self.epoll {
            return Ok(epoll.clone());
        }
        let epoll = Arc::new(Epoll::new()?.register()?);
        self.epoll = Some(epoll.clone());
        Ok(epoll)
    }

    /// Opens a session for `peer`, whose first datagram is `data`.
    pub(super) async fn open(&mut self, data: &[u8], peer: SocketAddr, now: u64) {
        let ctx = &self.ctx;
        if ctx.stop_accepting.is_cancelled() {
            RouteStats::add(&ctx.stats.dropped, 1);
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "drop", "route removed; no new session");
            return;
        }
        let live = ctx.current();
        if let Err((acl, reason)) = live.access.check(peer.ip()) {
            RouteStats::add(&ctx.stats.denied, 1);
            RouteStats::add(&ctx.stats.dropped, 1);
            // Per datagram, like a hook refusal: trace.
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "deny", acl = acl.as_str(), %reason, "refused by ACL");
            ctx.log_refused(&live, peer, Outcome::Denied, || format!("{} ACL: {reason}", acl.as_str()));
            return;
        }
        if live.limits.is_set()
            && let Err(refusal) = ctx.clients.admit(peer.ip(), &live.limits, false)
        {
            RouteStats::add(&ctx.stats.limited, 1);
            RouteStats::add(&ctx.stats.dropped, 1);
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "limit", %refusal, "over a per-client limit");
            ctx.log_refused(&live, peer, Outcome::Limited, || refusal.to_string());
            return;
        }
        if let Some(hook) = &live.hooks.pre_dial
            && let Err(reason) = hook.pre_dial(&ctx.conn_info(peer))
        {
            RouteStats::add(&ctx.stats.rejected, 1);
            RouteStats::add(&ctx.stats.dropped, 1);
            // A refused client has no session to remember it by, so this is per datagram: trace.
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "refuse", %reason, "pre-dial hook refused");
            ctx.log_refused(&live, peer, Outcome::Denied, || format!("pre-dial hook: {reason}"));
            return;
        }
        let max = live.options.max_udp_sessions;
        // An update in place may have changed the cap.
        self.cap.set(max);
        // Room first: a session evicted at the cap gives back the permit the new one takes.
        self.make_room(max.min(u32::try_from(self.budget.capacity()).unwrap_or(u32::MAX)));
        let Some(permit) = FdPermit::try_new() else {
            self.budget_spent(peer);
            return;
        };
        self.budget_refusing = false;
        // A sleeping target holds the session: it dials once the target is awake.
        let arrival = match &live.hooks.wake {
            Some(hook) => hook.arrive(&self.ctx.conn_info(peer)),
            None => Default::default(),
        };
        let presence = arrival.presence;
        if arrival.ready.is_none() && live.targets.members().iter().all(|m| m.target().ip_addr().is_some()) {
            // IP literals only: dial::udp makes no lookup, so this completes without waiting.
            let (socket, dst, lease) = match dial::udp(&live.targets, peer.ip()).await {
                Ok(dialled) => dialled,
                Err(e) => {
                    self.ctx.log_refused(&live, peer, Outcome::DialError, || e.to_string());
                    self.dial_failed(peer, &e, 1);
                    return;
                }
            };
            let state = State::Dialling { queue: VecDeque::new(), held: false, task: None };
            let session = Session {
                peer,
                last: now,
                live,
                state,
                _permit: permit,
                opened: now,
                tally: Tally::default(),
                _presence: presence,
            };
            let Some(key) = self.insert(session) else {
                RouteStats::add(&self.ctx.stats.dropped, 1);
                return;
            };
            if self.go_open(key, socket, dst, lease, 1).is_some()
                && let Some(session) = self.table.get_mut(key)
                && let State::Open { socket, .. } = &session.state
            {
                send_upstream(&self.ctx, &self.oversize, socket, &session.live, peer, data).await;
                session.tally.client(1, data.len());
            }
        } else {
            let held = arrival.ready.is_some();
            if held {
                RouteStats::add(&self.ctx.stats.held, 1);
                debug!(protocol = "udp", listen = %self.ctx.listen, %peer, action = "hold", "session held while the target wakes");
            }
            let mut queue = VecDeque::with_capacity(PENDING_MAX_DATAGRAMS);
            if self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                queue.push_back(Box::from(data));
                self.pending_bytes += data.len();
                if held {
                    RouteStats::add(&self.ctx.stats.buffered, 1);
                }
            } else {
                RouteStats::add(&self.ctx.stats.dropped, 1);
            }
            let state = State::Dialling { queue, held, task: None };
            let session = Session {
                peer,
                last: now,
                live: live.clone(),
                state,
                _permit: permit,
                opened: now,
                tally: Tally::default(),
                _presence: presence,
            };
            let Some(key) = self.insert(session) else { return };
            let wake = arrival.ready.map(|ready| (ready, self.ctx.live.clone()));
            let lookup = setup(live, self.ctx.close_conns.clone(), self.events.clone(), key, peer.ip(), wake);
            let handle = self.ctx.tracker.spawn(lookup).abort_handle();
            if let Some(Session { state: State::Dialling { task, .. }, .. }) = self.table.get_mut(key) {
                *task = Some(handle);
            }
        }
    }

    /// Refuses a session to `peer` for want of descriptors: the datagram is dropped and
    /// counted, the route's last error set (first refusal in a row), and the process logs it
    /// at most once a second.
    fn budget_spent(&mut self, peer: SocketAddr) {
        let ctx = &self.ctx;
        RouteStats::add(&ctx.stats.rejected, 1);
        RouteStats::add(&ctx.stats.dropped, 1);
        let budget = self.budget;
        if !self.budget_refusing {
            self.budget_refusing = true;
            ctx.stats.set_last_error(format!(
                "UDP session refused: all {} descriptors of the session budget are in use (open-file limit {})",
                budget.capacity(),
                budget.limit()
            ));
        }
        match budget.refused() {
            Some(refused) => warn!(
                protocol = "udp", listen = %ctx.listen, %peer, action = "refuse", refused, budget = budget.capacity(),
                nofile_limit = budget.limit(),
                "descriptor budget for UDP sessions spent: new sessions refused until some end"
            ),
            None => trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "refuse", "descriptor budget spent"),
        }
    }

    /// Puts a new (dialling) session in the table and the recency heap; `None` (the session
    /// dropped and settled) if the table cannot take it.
    pub(super) fn insert(&mut self, session: Session) -> Option<Key> {
        let (idle, last) = (session.live.options.udp_idle_timeout, session.last);
        match self.table.insert(session) {
            Ok(key) => {
                self.lru.push(idle, last, key);
                Some(key)
            }
            Err(session) => {
                self.settle(&session);
                None
            }
        }
    }

    /// Opens the dialling session `key` on `socket`: watches it for replies and counts the
    /// session. Returns the datagrams that waited for it, or `None` if the socket cannot be
    /// watched (the session is then removed, its queue and `lost` more datagrams dropped).
    pub(super) fn go_open(
        &mut self,
        key: Key,
        socket: StdUdpSocket,
        dst: SocketAddr,
        lease: Lease,
        lost: u64,
    ) -> Option<VecDeque<Box<[u8]>>> {
        if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(UPSTREAM_RCVBUF) {
            trace!(protocol = "udp", dst = %dst, error = %e, "cannot enlarge the receive buffer");
        }
        let watched = self.epoll().and_then(|epoll| epoll.get_ref().add(socket.as_fd(), key.0));
        let session = self.table.get_mut(key)?;
        let peer = session.peer;
        if let Err(source) = watched {
            // Out of descriptors or memory: as if the socket could not be made.
            let e = DialError::Connect { target: lease.member().target().clone(), addr: dst, source };
            if let Some(session) = self.remove(key) {
                self.log_end(&session, None, Outcome::DialError, Some(e.to_string()));
            }
            self.dial_failed(peer, &e, lost);
            return None;
        }
        let previous = std::mem::replace(&mut session.state, State::Open { socket, dst, lease });
        self.dial_failing = false;
        let stats = &self.ctx.stats;
        RouteStats::add(&stats.total, 1);
        RouteStats::add(&stats.active, 1);
        debug!(protocol = "udp", listen = %self.ctx.listen, %peer, dst = %dst, action = "session_open", "session opened");
        match previous {
            State::Dialling { queue, .. } => Some(queue),
            State::Open { .. } => Some(VecDeque::new()),
        }
    }

    /// Opens a dialling session whose socket is ready (flushing its queue in order), or
    /// drops it when the dial failed. A session gone meanwhile is not revived.
    pub(super) async fn on_dialled(&mut self, key: Key, result: Result<(StdUdpSocket, SocketAddr, Lease), DialError>) {
        let Some(session) = self.table.get(key) else { return };
        if !matches!(session.state, State::Dialling { .. }) {
            return;
        }
        let peer = session.peer;
        match result {
            Ok((socket, dst, lease)) => {
                let Some(queue) = self.go_open(key, socket, dst, lease, 0) else { return };
                let Some(session) = self.table.get_mut(key) else { return };
                let State::Open { socket, .. } = &session.state else { return };
                for datagram in queue {
                    self.pending_bytes = self.pending_bytes.saturating_sub(datagram.len());
                    send_upstream(&self.ctx, &self.oversize, socket, &session.live, peer, &datagram).await;
                    session.tally.client(1, datagram.len());
                }
            }
            Err(e) => {
                if let DialError::Wake(_) = e {
                    RouteStats::add(&self.ctx.stats.wake_failed, 1);
                }
                // `remove` counts the queued datagrams as dropped.
                if let Some(session) = self.remove(key) {
                    self.log_end(&session, None, Outcome::DialError, Some(e.to_string()));
                }
                self.dial_failed(peer, &e, 0);
            }
        }
    }

    /// Counts and logs a dial failure for `peer`, with `dropped` datagrams lost to it.
    pub(super) fn dial_failed(&mut self, peer: SocketAddr, e: &DialError, dropped: u64) {
        let ctx = &self.ctx;
        RouteStats::add(&ctx.stats.dial_errors, 1);
        RouteStats::add(&ctx.stats.dropped, dropped);
        ctx.stats.set_last_error(e.to_string());
        // Every datagram of a client without a session retries the dial: warn once per run
        // of failures rather than once per datagram.
        if self.dial_failing {
            debug!(protocol = "udp", listen = %ctx.listen, %peer, dst = %ctx.current().targets.display(), action = "dial_error", error = %e, "no target");
        } else {
            warn!(protocol = "udp", listen = %ctx.listen, %peer, dst = %ctx.current().targets.display(), action = "dial_error", error = %e, "no target");
        }
        self.dial_failing = true;
    }

    // ----------------------------------------------------------------- lifetime

    /// Ends the sessions whose idle deadline has passed; see the module doc.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some((idle, stamp, key)) = self.lru.pop_expired(now, &self.clock) {
            let Some(session) = self.table.get(key) else { continue };
            let last = session.last;
            if last > stamp && self.clock.idle_deadline(last, idle) > now {
                self.lru.push(idle, last, key);
                continue;
            }
            if let Some(session) = self.remove(key) {
                let dst = session.dst();
                debug!(protocol = "udp", listen = %self.ctx.listen, peer = %session.peer, dst = ?dst, action = "session_close", reason = "idle", "session closed");
                self.log_end(&session, dst, Outcome::IdleTimeout, None);
            }
        }
    }

    /// Evicts least recently used sessions until one more fits under `max`.
    pub(super) fn make_room(&mut self, max: u32) {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        // Bounds re-queueing of sessions used since their entry was pushed.
        let mut refreshes = self.table.len();
        while self.table.len() >= max {
            let Some((idle, stamp, key)) = self.lru.pop_oldest() else {
                self.rebuild_lru();
                if self.lru.len == 0 {
                    return;
                }
                continue;
            };
            let Some(session) = self.table.get(key) else { continue };
            if session.last > stamp && refreshes > 0 {
                refreshes -= 1;
                self.lru.push(idle, session.last, key);
                continue;
            }
            if let Some(session) = self.remove(key) {
                RouteStats::add(&self.ctx.stats.evicted, 1);
                let dst = session.dst();
                debug!(protocol = "udp", listen = %self.ctx.listen, peer = %session.peer, dst = ?dst, action = "evict", max_udp_sessions = max, "least recently used session evicted");
                self.log_end(&session, dst, Outcome::Evicted, Some(format!("max_udp_sessions {max} reached")));
            }
        }
    }

    /// Takes a session out of the table, settles its counters, stops watching its socket
    /// and aborts its lookup; the socket closes when the returned session is dropped.
    pub(super) fn remove(&mut self, key: Key) -> Option<Session> {
        let session = self.table.remove(key)?;
        self.release(&session);
        if self.lru.len > 2 * self.table.len() + LRU_SLACK {
            self.rebuild_lru();
        }
        Some(session)
    }

    /// Settles a session leaving the table and detaches it from the route.
    pub(super) fn release(&mut self, session: &Session) {
        self.settle(session);
        match &session.state {
            State::Open { socket, .. } => {
                if let Some(epoll) = &self.epoll
                    && let Err(e) = epoll.get_ref().delete(socket.as_fd())
                {
                    trace!(protocol = "udp", peer = %session.peer, error = %e, "session socket was not watched");
                }
            }
            State::Dialling { task, .. } => {
                if let Some(task) = task {
                    task.abort();
                }
            }
        }
    }

    /// Settles the counters of a session leaving the table: `active` for an open one,
    /// `dropped` for datagrams still queued.
    pub(super) fn settle(&mut self, session: &Session) {
        match &session.state {
            State::Open { .. } => {
                self.ctx.stats.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            State::Dialling { queue, .. } => {
                let bytes: usize = queue.iter().map(|d| d.len()).sum();
                self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
                RouteStats::add(&self.ctx.stats.dropped, queue.len() as u64);
            }
        }
    }

    /// Sends the access-log line of `session`, which ended with `outcome`.
    pub(super) fn log_end(&self, session: &Session, dst: Option<SocketAddr>, outcome: Outcome, error: Option<String>) {
        let Some(log) = self.ctx.access_log(&session.live) else { return };
        let mut event = self.ctx.event(session.peer, outcome, error);
        event.target = dst;
        event.duration = std::time::Duration::from_nanos(self.clock.now().saturating_sub(session.opened));
        let Tally { bytes_in, bytes_out, datagrams_in, datagrams_out } = session.tally;
        (event.bytes_in, event.bytes_out, event.datagrams_in, event.datagrams_out) =
            (bytes_in, bytes_out, datagrams_in, datagrams_out);
        log.send(event);
    }

    /// Rebuilds the recency heaps from the table, dropping stale entries; O(n).
    pub(super) fn rebuild_lru(&mut self) {
        self.lru.clear();
        for (key, session) in self.table.iter() {
            self.lru.push(session.live.options.udp_idle_timeout, session.last, key);
        }
    }

    /// Ends every session: each socket leaves the epoll instance and is closed.
    pub(super) fn close(&mut self) {
        let sessions: Vec<Session> = self.table.take_all().collect();
        for session in &sessions {
            self.release(session);
            self.log_end(session, session.dst(), Outcome::Drained, None);
        }
        drop(sessions);
        self.lru.clear();
    }
}

/// Resolves a dialling session's targets and makes its socket, then reports to the route.
async fn setup(
    mut live: Arc<Live>,
    close: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
    key: Key,
    client: std::net::IpAddr,
    wake: Option<(Ready, watch::Receiver<Arc<Live>>)>,
) {
    if let Some((ready, now)) = wake {
        let ready = tokio::select! {
            _ = close.cancelled() => return,
            ready = ready => ready,
        };
        if let Err(reason) = ready {
            let _ = events.send(Event::Dialled { key, result: Err(DialError::Wake(reason)) });
            return;
        }
        // Awake: dial the targets as they are now (a woken container may have a new address).
        live = now.borrow().clone();
    }
    let timeout = live.options.connect_timeout;
    let result = tokio::select! {
        _ = close.cancelled() => return,
        dialled = tokio::time::timeout(timeout, dial::udp(&live.targets, client)) => match dialled {
            Ok(result) => result,
            Err(_) => Err(match live.targets.members().first() {
                Some(member) => DialError::Timeout { target: member.target().clone(), timeout },
                None => DialError::Refused("route has no target".into()),
            }),
        },
    };
    // The route is gone only when it is closing; the socket is dropped with the event.
    let _ = events.send(Event::Dialled { key, result });
}
