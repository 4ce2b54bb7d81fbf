//! The UDP forwarder: one listening socket per route, one session per client address.
//!
//! # Sessions
//!
//! The first datagram from a client address opens a session: the pre-dial hook is asked,
//! the route's *current* settings are read (so an update in place reaches new sessions
//! while existing ones keep their upstream, idle timeout and hooks), and a UDP socket
//! *connected* to a target is made for it. Datagrams from the client are sent on that
//! socket straight from the route's single receive loop, in arrival order, through one
//! reusable 64 KiB buffer: nothing is allocated and no task is spawned per datagram. A run
//! of one client's datagrams within a receive batch leaves in one sendmmsg.
//! (Should an upstream socket's send buffer be full, the loop waits for it, as a blocking
//! forwarder would, rather than drop or reorder.)
//! Replies are read by one relay task per session and sent back to the client from the
//! listening socket; a connected socket only accepts datagrams from its target.
//!
//! When every target is an IP literal, the upstream socket is made inline (no lookup, so
//! no waiting). Otherwise the session starts in a *dialling* state: the lookup runs in its
//! own task (bounded by `connect_timeout`) so one slow resolver answer never stalls the
//! route, and the client's datagrams meanwhile wait in a small bounded queue
//! ([`PENDING_MAX_DATAGRAMS`] per session, [`PENDING_MAX_BYTES`] per route; beyond it they
//! are dropped and counted). The queue is flushed in order once the socket is ready.
//!
//! # Targets
//!
//! A new session picks its target by the route's `balance` strategy (see
//! [`crate::Balance`]) and keeps it for its life: with `ip_hash`, every session of one client
//! IP goes to the same target. UDP has no handshake to fail, so passive health is read from
//! the session's socket: an ICMP port-unreachable report marks the target down (new
//! sessions avoid it for the backoff; the session itself stays, in case the target comes
//! back) and a reply marks it up. Each open session is counted on its target (`least_conn`,
//! status) until it leaves the table.
//!
//! # Idle timeout
//!
//! A session ends after `udp_idle_timeout` without a datagram in *either* direction. The
//! time of the last datagram is one atomic per session, stamped by the receive loop and by
//! the relay. The relay holds one `sleep_until` for its deadline and, when it fires,
//! re-reads the stamp and sleeps again if anything moved; so the timer is re-armed at most
//! once per timeout, not per datagram. Per-session deadlines were chosen over a periodic
//! sweep because they are exact, cost nothing while the route is quiet (a sweep would wake
//! every route every second forever) and work unchanged under Tokio's paused clock.
//!
//! Ending is a compare-and-swap of the stamp to a "closed" mark, which only succeeds if no
//! datagram touched the session since the relay looked; the receive loop's touch fails on
//! a closed session, so a datagram racing with the expiry opens a fresh session instead of
//! vanishing into a dead one.
//!
//! # Session cap
//!
//! At `max_udp_sessions` the least recently used session is evicted (and counted). Recency
//! lives in a min-heap of `(stamp, session)` entries kept *lazily*: the hot path only
//! stores the atomic stamp; when a session must be evicted the oldest entry is popped and,
//! if its session was used since, pushed back with the fresh stamp. Each push pays for one
//! burst of activity, so eviction is O(log n) amortised and no datagram scans the table.
//! Entries of sessions that ended otherwise are skipped when popped, and the heap is
//! rebuilt from the table once stale entries outnumber live ones.
//!
//! # Shutdown
//!
//! - `ctx.close_conns` cancelled: every session's task ends, the table is cleared and
//!   [`serve`] returns only once no task holds the listening socket, so the port is free
//!   when the route table sees `serve` return.
//! - Only `ctx.stop_accepting` cancelled (a route removed with a drain grace): datagrams
//!   from clients without a session are dropped and counted, but existing sessions keep
//!   flowing both ways, since the listening socket also carries their replies, until
//!   `close_conns` fires. Once the last of them has ended (idle or evicted) there is
//!   nothing left to drain, so [`serve`] returns early and the port is free before the
//!   grace runs out.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, trace, warn};

use super::mmsg::{self, RecvBatch};
use super::{Live, RouteCtx, dial};
use crate::balance::{Lease, Member};
use crate::error::DialError;
use crate::hooks::Direction;
use crate::stats::RouteStats;

/// Datagrams a client may have waiting while its session's target is being resolved.
pub(crate) const PENDING_MAX_DATAGRAMS: usize = 8;
/// Bytes all of a route's dialling sessions may have waiting at once.
pub(crate) const PENDING_MAX_BYTES: usize = 1 << 20;
/// Replies a relay forwards before going back through its `select!`, so that one flooding
/// target yields to cancellation, its timer and Tokio's cooperative budget.
const RELAY_BURST: usize = 64;
/// First and longest pause after an error on the listening socket.
const RECV_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// See [`RECV_BACKOFF_MIN`].
const RECV_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest pause of a relay after repeated unexpected errors on its upstream socket.
const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Stale heap entries tolerated beyond the number of live sessions before a rebuild.
const LRU_SLACK: usize = 1024;
/// Receive buffer asked for the listening socket (the kernel caps it at `net.core.rmem_max`).
/// The default (about 200 KiB, a few hundred datagrams) overflows whenever the loop is kept
/// off its CPU for a few milliseconds at tens of thousands of datagrams per second. Kernel
/// memory, charged only while datagrams wait.
const LISTEN_RCVBUF: usize = 4 << 20;
/// Receive buffer asked for each session's upstream socket (its replies); as above.
const UPSTREAM_RCVBUF: usize = 1 << 20;

thread_local! {
    /// The relays' receive batch: one per worker thread rather than buffers per session,
    /// borrowed only between two await points.
    static REPLY_BATCH: RefCell<RecvBatch> = RefCell::new(RecvBatch::new());
}

/// Serves datagrams until `ctx.close_conns` is cancelled; see the module doc.
///
/// Returns only after every session task has ended and the listening socket is closed.
pub(crate) async fn serve(socket: UdpSocket, ctx: RouteCtx) {
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(LISTEN_RCVBUF) {
        debug!(protocol = "udp", listen = %ctx.listen, error = %e, "cannot enlarge the receive buffer");
    }
    let socket = Arc::new(socket);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut sessions = Sessions::new(Route {
        ctx: ctx.clone(),
        socket: socket.clone(),
        clock: Clock { epoch: Instant::now() },
        events: events_tx,
        tasks: TaskTracker::new(),
    });
    // Up to mmsg::BATCH datagrams per recvmmsg call, in buffers reused for the route's life.
    let mut batch = RecvBatch::new();
    let mut backoff = RECV_BACKOFF_MIN;
    let mut draining = false;
    loop {
        if draining && sessions.map.is_empty() {
            debug!(protocol = "udp", listen = %ctx.listen, action = "stop", "route removed and no session left");
            break;
        }
        let step = tokio::select! {
            biased;
            _ = ctx.close_conns.cancelled() => break,
            _ = ctx.stop_accepting.cancelled(), if !draining => {
                draining = true;
                continue;
            }
            Some(event) = events.recv() => Step::Event(event),
            ready = socket.readable() => Step::Received(ready.and_then(|()| batch.try_recv_unconnected(&socket))),
        };
        match step {
            Step::Event(event) => sessions.on_event(event).await,
            Step::Received(Ok(n)) => {
                backoff = RECV_BACKOFF_MIN;
                sessions.on_batch(&batch, n).await;
            }
            Step::Received(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Step::Received(Err(e)) if is_transient(&e) => {
                trace!(protocol = "udp", listen = %ctx.listen, action = "recv", error = %e, "transient receive error");
            }
            Step::Received(Err(e)) => {
                error!(protocol = "udp", listen = %ctx.listen, action = "recv", error = %e, backoff = ?backoff, "receive failed; backing off");
                ctx.stats.set_last_error(format!("receive: {e}"));
                tokio::select! {
                    _ = ctx.close_conns.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECV_BACKOFF_MAX);
            }
        }
    }
    sessions.close().await;
    drop(events);
    // The last handle: every relay holding a clone has ended.
    drop(socket);
}

/// What woke the receive loop.
enum Step {
    /// A session task reported something.
    Event(Event),
    /// The listening socket returned a batch of datagrams (how many) or an error.
    Received(io::Result<usize>),
}

/// Errors of the listening socket that concern one datagram, not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// Errors on a connected upstream socket that report an ICMP message about an earlier
/// datagram (the target's port was closed, say). They are consumed by the read that
/// returns them and leave the session usable.
fn is_icmp_report(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
    )
}

/// What session tasks tell the receive loop.
enum Event {
    /// A dialling session's target was resolved and its socket made, or not.
    Dialled {
        /// The session's client.
        peer: SocketAddr,
        /// The session's id, to ignore news about a session already gone.
        id: u64,
        /// The connected upstream socket, its address and the lease on its target, or why
        /// there is none.
        result: Result<(UdpSocket, SocketAddr, Lease), DialError>,
    },
    /// A relay ended (idle, evicted or closing); the session leaves the table if still there.
    Ended {
        /// The session's client.
        peer: SocketAddr,
        /// The session's id.
        id: u64,
    },
}

/// The route's clock in nanoseconds since the forwarder started, on Tokio's (pausable) time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the forwarder started.
    epoch: Instant,
}

impl Clock {
    /// Nanoseconds since the epoch; never [`Activity::CLOSED`].
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(Activity::CLOSED - 1).min(Activity::CLOSED - 1)
    }

    /// The instant of a stamp returned by [`Clock::now`].
    fn at(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp)
    }

    /// When a session last used at `stamp` goes idle; a timeout too long to add means never
    /// in practice (a century on), rather than a panic.
    fn idle_deadline(&self, stamp: u64, idle: Duration) -> Instant {
        let last = self.at(stamp);
        last.checked_add(idle).unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
    }
}

/// When a session last carried a datagram in either direction, or that it has ended.
///
/// Shared by the receive loop and the session's relay; see the module doc for the protocol.
#[derive(Debug)]
struct Activity(AtomicU64);

impl Activity {
    /// The mark of a session its relay ended for idleness.
    const CLOSED: u64 = u64::MAX;

    /// Activity stamped `now`.
    fn new(now: u64) -> Self {
        Activity(AtomicU64::new(now))
    }

    /// The last stamp, or [`Activity::CLOSED`].
    fn last(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Records a datagram at `now`; false if the session has already ended.
    fn touch(&self, now: u64) -> bool {
        let mut current = self.0.load(Relaxed);
        loop {
            if current == Self::CLOSED {
                return false;
            }
            // A stamp at or after `now` already keeps the session alive past `now + idle`.
            if current >= now {
                return true;
            }
            match self.0.compare_exchange_weak(current, now, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Ends the session if no datagram moved the stamp since it read `seen`.
    fn close_if_unchanged(&self, seen: u64) -> bool {
        self.0.compare_exchange(seen, Self::CLOSED, Relaxed, Relaxed).is_ok()
    }
}

/// What every session of a route shares.
struct Route {
    /// The route's context.
    ctx: RouteCtx,
    /// The listening socket; replies leave from it.
    socket: Arc<UdpSocket>,
    /// The route's clock.
    clock: Clock,
    /// Where session tasks report.
    events: mpsc::UnboundedSender<Event>,
    /// Every session task of this route, so [`serve`] can wait for them before returning;
    /// each is also tracked by the route's own tracker.
    tasks: TaskTracker,
}

impl Route {
    /// Forwards one client datagram on a session's upstream socket.
    async fn send_upstream(&self, upstream: &UdpSocket, live: &Live, peer: SocketAddr, data: &[u8]) {
        if let Some(hook) = &live.hooks.on_read {
            hook.on_read(&self.ctx.conn_info(peer), Direction::ClientToTarget, data);
        }
        let sent = match live.options.proxy_protocol {
            None => upstream.send(data).await,
            Some(version) => {
                // Encoded on the stack for each datagram (28 or 52 bytes): no allocation and
                // no per-session state; the header names the client and the bound address.
                let header = crate::proxy_protocol::encode(
                    version,
                    crate::proxy_protocol::Transport::Datagram,
                    peer,
                    self.ctx.listen,
                );
                send_with_header(upstream, header.as_bytes(), data).await
            }
        };
        match sent {
            Ok(_) => {
                RouteStats::add(&self.ctx.stats.bytes_in, data.len() as u64);
                RouteStats::add(&self.ctx.stats.datagrams_in, 1);
            }
            Err(e) => {
                // Often the ICMP report of an earlier datagram (ECONNREFUSED), consumed by
                // this send; the session stays.
                RouteStats::add(&self.ctx.stats.dropped, 1);
                trace!(protocol = "udp", listen = %self.ctx.listen, %peer, action = "send", error = %e, "datagram to target dropped");
            }
        }
    }

    /// Spawns a task on both the route's tracker and this forwarder's.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.ctx.tracker.spawn(self.tasks.track_future(task));
    }
}

/// Sends `header ‖ data` as one datagram on a connected socket, from two buffers
/// (sendmsg with two iovecs): the payload is not copied.
async fn send_with_header(upstream: &UdpSocket, header: &[u8], data: &[u8]) -> io::Result<usize> {
    let parts = [std::io::IoSlice::new(header), std::io::IoSlice::new(data)];
    upstream.async_io(tokio::io::Interest::WRITABLE, || socket2::SockRef::from(upstream).send_vectored(&parts)).await
}

/// One client's session, as the receive loop holds it.
struct Session {
    /// Unique within the route; tells a session from a later one of the same client.
    id: u64,
    /// The route's settings when the session opened.
    live: Arc<Live>,
    /// Last use, shared with the relay.
    activity: Arc<Activity>,
    /// Ends the session's task; a child of `close_conns`, cancelled when the session is dropped.
    cancel: CancellationToken,
    /// Dialling or open.
    state: State,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where a session stands.
enum State {
    /// The target is being resolved; the client's datagrams wait here, oldest first.
    Dialling {
        /// Waiting datagrams.
        queue: VecDeque<Box<[u8]>>,
    },
    /// Forwarding.
    Open {
        /// The socket connected to the target.
        upstream: Arc<UdpSocket>,
        /// The target's address.
        dst: SocketAddr,
        /// Counts the session on its target until the session leaves the table.
        lease: Lease,
    },
}

/// The session table of one route, owned by the receive loop (no lock).
struct Sessions {
    /// What the sessions share.
    route: Route,
    /// Sessions by client address.
    map: HashMap<SocketAddr, Session>,
    /// Least recently used first: `(stamp, id, peer)`, possibly stale; see the module doc.
    lru: BinaryHeap<Reverse<(u64, u64, SocketAddr)>>,
    /// The next session id.
    next_id: u64,
    /// Bytes waiting in the queues of dialling sessions.
    pending_bytes: usize,
    /// Whether the last dial failed: the first failure in a row logs a warning, the rest debug.
    dial_failing: bool,
}

impl Sessions {
    /// An empty table.
    fn new(route: Route) -> Self {
        Sessions {
            route,
            map: HashMap::new(),
            lru: BinaryHeap::new(),
            next_id: 0,
            pending_bytes: 0,
            dial_failing: false,
        }
    }

    /// The stats of the route.
    fn stats(&self) -> &RouteStats {
        &self.route.ctx.stats
    }

    /// Handles the `n` datagrams of a receive, in order. A run of datagrams from one client
    /// whose session is open goes out in one sendmmsg on its socket; the rest one by one.
    async fn on_batch(&mut self, batch: &RecvBatch, n: usize) {
        let mut i = 0;
        while i < n {
            let Some(peer) = batch.peer(i) else {
                i += 1;
                continue;
            };
            let mut end = i + 1;
            while end < n && batch.peer(end) == Some(peer) {
                end += 1;
            }
            if end - i > 1 && self.send_run(batch, i..end, peer).await {
                i = end;
            } else {
                // A new, dialling or just expired session, or one that needs each datagram
                // (hooks, PROXY header): this one alone, then the rest of the run again.
                self.on_datagram(batch.data(i), peer).await;
                i += 1;
            }
        }
    }

    /// Sends datagrams `run` of `batch`, all from `peer`, on its open session's socket with
    /// as few sendmmsg calls as the socket takes; false (nothing done) when the session is
    /// not open, has ended, or has hooks or a PROXY header to apply per datagram.
    async fn send_run(&mut self, batch: &RecvBatch, run: std::ops::Range<usize>, peer: SocketAddr) -> bool {
        let now = self.route.clock.now();
        let Some(session) = self.map.get(&peer) else { return false };
        let State::Open { upstream, .. } = &session.state else { return false };
        let live = &session.live;
        if live.hooks.on_read.is_some() || live.options.proxy_protocol.is_some() || !session.activity.touch(now) {
            return false;
        }
        let stats = &self.route.ctx.stats;
        let mut next = run.start;
        while next < run.end {
            match mmsg::try_send(upstream, batch, next..run.end, None) {
                Ok(sent) if sent > 0 => {
                    let bytes: usize = (next..next + sent).map(|i| batch.data(i).len()).sum();
                    RouteStats::add(&stats.bytes_in, bytes as u64);
                    RouteStats::add(&stats.datagrams_in, sent as u64);
                    next += sent;
                }
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                    // The first unsent datagram failed (often the ICMP report of an earlier one):
                    // dropped, as by `send_upstream`; the session stays.
                    RouteStats::add(&stats.dropped, 1);
                    trace!(protocol = "udp", listen = %self.route.ctx.listen, %peer, action = "send", error = %e, "datagram to target dropped");
                    next += 1;
                }
                _ => {
                    // The send buffer is full: wait for it, one datagram at a time, in order.
                    for i in next..run.end {
                        self.route.send_upstream(upstream, live, peer, batch.data(i)).await;
                    }
                    break;
                }
            }
        }
        true
    }

    /// Handles one datagram from `peer`.
    async fn on_datagram(&mut self, data: &[u8], peer: SocketAddr) {
        let now = self.route.clock.now();
        if let Some(session) = self.map.get_mut(&peer) {
            if session.activity.touch(now) {
                match &mut session.state {
                    State::Open { upstream, .. } => {
                        self.route.send_upstream(upstream, &session.live, peer, data).await;
                    }
                    State::Dialling { queue } => {
                        if queue.len() < PENDING_MAX_DATAGRAMS && self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                            queue.push_back(Box::from(data));
                            self.pending_bytes += data.len();
                        } else {
                            RouteStats::add(&self.route.ctx.stats.dropped, 1);
                        }
                    }
                }
                return;
            }
            // Its relay ended it for idleness a moment ago (the end event is on its way):
            // this datagram opens a fresh session.
            self.remove(peer);
        }
        self.open(data, peer, now).await;
    }

    /// Opens a session for `peer`, whose first datagram is `data`.
    async fn open(&mut self, data: &[u8], peer: SocketAddr, now: u64) {
        let ctx = &self.route.ctx;
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
            return;
        }
        if let Some(hook) = &live.hooks.pre_dial
            && let Err(reason) = hook.pre_dial(&ctx.conn_info(peer))
        {
            RouteStats::add(&ctx.stats.rejected, 1);
            RouteStats::add(&ctx.stats.dropped, 1);
            // A refused client has no session to remember it by, so this is per datagram: trace.
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "refuse", %reason, "pre-dial hook refused");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity::new(now));
        let cancel = ctx.close_conns.child_token();
        let state = if live.targets.members().iter().all(|m| m.target().ip_addr().is_some()) {
            // IP literals only: dial::udp makes no lookup, so this completes without waiting.
            match dial::udp(&live.targets, peer.ip()).await {
                Ok((upstream, dst, lease)) => {
                    let upstream = Arc::new(upstream);
                    self.route.send_upstream(&upstream, &live, peer, data).await;
                    State::Open { upstream, dst, lease }
                }
                Err(e) => {
                    self.dial_failed(peer, &e, 1);
                    return;
                }
            }
        } else {
            let mut queue = VecDeque::with_capacity(PENDING_MAX_DATAGRAMS);
            if self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                queue.push_back(Box::from(data));
                self.pending_bytes += data.len();
            } else {
                RouteStats::add(&ctx.stats.dropped, 1);
            }
            let (live, cancel, events) = (live.clone(), cancel.clone(), self.route.events.clone());
            self.route.spawn(setup(live, cancel, events, peer, id));
            State::Dialling { queue }
        };
        self.make_room(live.options.max_udp_sessions);
        let opened = matches!(state, State::Open { .. });
        self.map.insert(peer, Session { id, live, activity, cancel, state });
        self.lru.push(Reverse((now, id, peer)));
        if opened {
            self.opened(peer);
        }
    }

    /// Counts, logs and starts the relay of `peer`'s session, which has just become open.
    fn opened(&mut self, peer: SocketAddr) {
        self.dial_failing = false;
        let Some(session) = self.map.get(&peer) else { return };
        let State::Open { upstream, dst, lease } = &session.state else { return };
        let route = &self.route;
        if let Err(e) = socket2::SockRef::from(&**upstream).set_recv_buffer_size(UPSTREAM_RCVBUF) {
            trace!(protocol = "udp", %peer, error = %e, "cannot enlarge the receive buffer");
        }
        RouteStats::add(&route.ctx.stats.total, 1);
        RouteStats::add(&route.ctx.stats.active, 1);
        debug!(protocol = "udp", listen = %route.ctx.listen, %peer, dst = %dst, action = "session_open", "session opened");
        let relay = Relay {
            ctx: route.ctx.clone(),
            listener: route.socket.clone(),
            upstream: upstream.clone(),
            peer,
            dst: *dst,
            target: lease.member().clone(),
            id: session.id,
            live: session.live.clone(),
            activity: session.activity.clone(),
            clock: route.clock,
            cancel: session.cancel.clone(),
            events: route.events.clone(),
        };
        route.spawn(relay.run());
    }

    /// Applies what a session task reported.
    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Ended { peer, id } => {
                if self.map.get(&peer).is_some_and(|s| s.id == id) {
                    self.remove(peer);
                }
            }
            Event::Dialled { peer, id, result } => self.on_dialled(peer, id, result).await,
        }
    }

    /// Opens a dialling session whose socket is ready (flushing its queue in order), or
    /// drops it when the dial failed. A session evicted meanwhile is not revived.
    async fn on_dialled(
        &mut self,
        peer: SocketAddr,
        id: u64,
        result: Result<(UdpSocket, SocketAddr, Lease), DialError>,
    ) {
        let Some(session) = self.map.get_mut(&peer).filter(|s| s.id == id) else { return };
        match result {
            Ok((upstream, dst, lease)) => {
                let upstream = Arc::new(upstream);
                let State::Dialling { queue } =
                    std::mem::replace(&mut session.state, State::Open { upstream: upstream.clone(), dst, lease })
                else {
                    return;
                };
                for datagram in queue {
                    self.pending_bytes -= datagram.len();
                    self.route.send_upstream(&upstream, &session.live, peer, &datagram).await;
                }
                self.opened(peer);
            }
            Err(e) => {
                // `remove` counts the queued datagrams as dropped.
                self.remove(peer);
                self.dial_failed(peer, &e, 0);
            }
        }
    }

    /// Counts and logs a dial failure for `peer`, with `dropped` datagrams lost to it.
    fn dial_failed(&mut self, peer: SocketAddr, e: &DialError, dropped: u64) {
        let ctx = &self.route.ctx;
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

    /// Evicts least recently used sessions until one more fits under `max`.
    fn make_room(&mut self, max: u32) {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        // Bounds re-queueing when relays keep touching sessions while we look.
        let mut refreshes = self.map.len();
        while self.map.len() >= max {
            let Some(Reverse((stamp, id, peer))) = self.lru.pop() else {
                self.rebuild_lru();
                if self.lru.is_empty() {
                    return;
                }
                continue;
            };
            let Some(session) = self.map.get(&peer).filter(|s| s.id == id) else { continue };
            let last = session.activity.last();
            if last == Activity::CLOSED {
                // Ended for idleness already: it frees its slot without an eviction.
                self.remove(peer);
                continue;
            }
            if last > stamp && refreshes > 0 {
                refreshes -= 1;
                self.lru.push(Reverse((last, id, peer)));
                continue;
            }
            if let Some(session) = self.remove(peer) {
                RouteStats::add(&self.stats().evicted, 1);
                let dst = match &session.state {
                    State::Open { dst, .. } => Some(*dst),
                    State::Dialling { .. } => None,
                };
                debug!(protocol = "udp", listen = %self.route.ctx.listen, %peer, dst = ?dst, action = "evict", max_udp_sessions = max, "least recently used session evicted");
            }
        }
    }

    /// Takes `peer`'s session out of the table (which cancels its task) and settles its
    /// counters: `active` for an open one, `dropped` for datagrams still queued.
    fn remove(&mut self, peer: SocketAddr) -> Option<Session> {
        let session = self.map.remove(&peer)?;
        self.settle(&session);
        if self.lru.len() > 2 * self.map.len() + LRU_SLACK {
            self.rebuild_lru();
        }
        Some(session)
    }

    /// Settles the counters of a session leaving the table.
    fn settle(&mut self, session: &Session) {
        match &session.state {
            State::Open { .. } => {
                self.route.ctx.stats.active.fetch_sub(1, Relaxed);
            }
            State::Dialling { queue } => {
                let bytes: usize = queue.iter().map(|d| d.len()).sum();
                self.pending_bytes -= bytes;
                RouteStats::add(&self.route.ctx.stats.dropped, queue.len() as u64);
            }
        }
    }

    /// Rebuilds the recency heap from the table, dropping stale entries; O(n).
    fn rebuild_lru(&mut self) {
        let entries: Vec<_> = self
            .map
            .iter()
            .map(|(peer, s)| {
                // An ended session sorts first, to be reclaimed before anything is evicted.
                let last = s.activity.last();
                Reverse((if last == Activity::CLOSED { 0 } else { last }, s.id, *peer))
            })
            .collect();
        self.lru = BinaryHeap::from(entries);
    }

    /// Ends every session and waits until no session task remains.
    async fn close(mut self) {
        let map = std::mem::take(&mut self.map);
        for session in map.values() {
            self.settle(session);
        }
        // Dropping the sessions cancels their tasks (already cancelled through `close_conns`).
        drop(map);
        self.lru.clear();
        self.route.tasks.close();
        self.route.tasks.wait().await;
    }
}

/// Resolves a dialling session's targets and makes its socket, then reports to the loop.
async fn setup(
    live: Arc<Live>,
    cancel: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
    peer: SocketAddr,
    id: u64,
) {
    let timeout = live.options.connect_timeout;
    let result = tokio::select! {
        _ = cancel.cancelled() => return,
        dialled = tokio::time::timeout(timeout, dial::udp(&live.targets, peer.ip())) => match dialled {
            Ok(result) => result,
            Err(_) => Err(match live.targets.members().first() {
                Some(member) => DialError::Timeout { target: member.target().clone(), timeout },
                None => DialError::Refused("route has no target".into()),
            }),
        },
    };
    // The loop is gone only when the route is closing; the socket is dropped with the event.
    let _ = events.send(Event::Dialled { peer, id, result });
}

/// The task carrying one session's replies and keeping its idle deadline.
struct Relay {
    /// The route's context (stats, hooks' view, `close_conns`).
    ctx: RouteCtx,
    /// The listening socket, which sends the replies.
    listener: Arc<UdpSocket>,
    /// The session's socket connected to its target.
    upstream: Arc<UdpSocket>,
    /// The client.
    peer: SocketAddr,
    /// The target's address.
    dst: SocketAddr,
    /// The target's shared state: an ICMP port-unreachable marks it down, a reply up.
    target: Arc<Member>,
    /// The session's id.
    id: u64,
    /// The route's settings when the session opened.
    live: Arc<Live>,
    /// Last use, shared with the receive loop.
    activity: Arc<Activity>,
    /// The route's clock.
    clock: Clock,
    /// Cancelled on eviction and when the route closes.
    cancel: CancellationToken,
    /// Where the end is reported.
    events: mpsc::UnboundedSender<Event>,
}

/// What became of one batch of replies.
enum Relayed {
    /// Sent to the client, or dropped and counted.
    Done,
    /// Nothing more to read now.
    Empty,
    /// The listening socket's send buffer is full: the replies not sent, copied out to wait.
    Blocked(Vec<Vec<u8>>),
    /// Reading the upstream socket failed.
    Failed(io::Error),
}

impl Relay {
    /// Runs until the session is idle, evicted or closed.
    async fn run(self) {
        let idle = self.live.options.udp_idle_timeout;
        let sleep = tokio::time::sleep_until(self.clock.idle_deadline(self.activity.last(), idle));
        tokio::pin!(sleep);
        let mut errors: u32 = 0;
        let reason = loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    break if self.ctx.close_conns.is_cancelled() { "route closed" } else { "evicted" };
                }
                // Readiness polled in place: the waker lives in the socket's own slot, so this
                // branch adds nothing to the task's size (`readable()` holds a waiter node).
                ready = std::future::poll_fn(|cx| self.upstream.poll_recv_ready(cx)) => {
                    if let Err(e) = ready {
                        // Only when the runtime's I/O driver is gone.
                        debug!(protocol = "udp", listen = %self.ctx.listen, peer = %self.peer, dst = %self.dst, action = "recv", error = %e, "upstream socket unusable");
                        break "upstream socket unusable";
                    }
                    match self.drain().await {
                        Ok(()) => errors = 0,
                        Err(e) => {
                            errors = errors.saturating_add(1);
                            debug!(protocol = "udp", listen = %self.ctx.listen, peer = %self.peer, dst = %self.dst, action = "recv", error = %e, "reading the target failed");
                            // Cold path, boxed so that its timer is not part of every relay's size.
                            Box::pin(self.pause((Duration::from_millis(5) * errors).min(RELAY_BACKOFF_MAX))).await;
                        }
                    }
                }
                _ = &mut sleep => match self.next_deadline(idle) {
                    Some(deadline) => sleep.as_mut().reset(deadline),
                    None => break "idle",
                },
            }
        };
        debug!(protocol = "udp", listen = %self.ctx.listen, peer = %self.peer, dst = %self.dst, action = "session_close", reason, "session closed");
        let _ = self.events.send(Event::Ended { peer: self.peer, id: self.id });
    }

    /// The new idle deadline if a datagram moved it, or `None` once the session is ended.
    fn next_deadline(&self, idle: Duration) -> Option<Instant> {
        loop {
            let seen = self.activity.last();
            if seen == Activity::CLOSED {
                return None;
            }
            let deadline = self.clock.idle_deadline(seen, idle);
            if deadline > Instant::now() {
                return Some(deadline);
            }
            if self.activity.close_if_unchanged(seen) {
                return None;
            }
        }
    }

    /// Forwards up to [`RELAY_BURST`] waiting replies to the client, a batch per syscall pair.
    async fn drain(&self) -> io::Result<()> {
        for _ in 0..RELAY_BURST.div_ceil(mmsg::BATCH) {
            match REPLY_BATCH.with_borrow_mut(|batch| self.relay_batch(batch)) {
                Relayed::Done => {}
                Relayed::Empty => return Ok(()),
                Relayed::Blocked(replies) => {
                    // Rare (the listening socket's send buffer is full): boxed, so that every
                    // relay does not carry room for these futures.
                    if !Box::pin(self.send_blocked(replies)).await {
                        return Ok(());
                    }
                }
                Relayed::Failed(e) if is_icmp_report(&e) => {
                    // The target's port is closed (for now): the report is consumed, the session
                    // stays (the target may come back), but new sessions avoid the target for a while.
                    trace!(protocol = "udp", peer = %self.peer, dst = %self.dst, error = %e, "ICMP report from target");
                    if e.kind() != io::ErrorKind::Interrupted {
                        self.live.targets.failed(&self.target, &e.to_string(), false);
                    }
                }
                Relayed::Failed(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the client's send buffer to take `replies`, in order; false if the session
    /// was cancelled first.
    async fn send_blocked(&self, replies: Vec<Vec<u8>>) -> bool {
        for reply in replies {
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                sent = self.listener.send_to(&reply, self.peer) => sent,
            };
            self.count_sent(sent, reply.len());
        }
        true
    }

    /// Sleeps for `pause`, or less if the session is cancelled.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// Reads a batch of replies (recvmmsg) and sends them to the client without waiting
    /// (sendmmsg).
    fn relay_batch(&self, batch: &mut RecvBatch) -> Relayed {
        let n = match batch.try_recv(&self.upstream) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Relayed::Empty,
            Err(e) => return Relayed::Failed(e),
        };
        // The session's own relay is the only one that closes it, so this cannot fail here.
        self.activity.touch(self.clock.now());
        self.live.targets.succeeded(&self.target);
        if let Some(hook) = &self.live.hooks.on_read {
            for i in 0..n {
                hook.on_read(&self.ctx.conn_info(self.peer), Direction::TargetToClient, batch.data(i));
            }
        }
        let mut next = 0;
        while next < n {
            match mmsg::try_send(&self.listener, batch, next..n, Some(self.peer)) {
                Ok(sent) => {
                    for i in next..next + sent {
                        self.count_sent(Ok(batch.data(i).len()), batch.data(i).len());
                    }
                    next += sent.max(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Relayed::Blocked((next..n).map(|i| batch.data(i).to_vec()).collect());
                }
                Err(e) => {
                    // The first unsent datagram failed (e.g. too large for the path): drop it, go on.
                    self.count_sent(Err(e), batch.data(next).len());
                    next += 1;
                }
            }
        }
        Relayed::Done
    }

    /// Counts a reply sent to the client, or dropped.
    fn count_sent(&self, sent: io::Result<usize>, len: usize) {
        let stats = &self.ctx.stats;
        match sent {
            Ok(_) => {
                RouteStats::add(&stats.bytes_out, len as u64);
                RouteStats::add(&stats.datagrams_out, 1);
            }
            Err(e) => {
                RouteStats::add(&stats.dropped, 1);
                trace!(protocol = "udp", peer = %self.peer, dst = %self.dst, error = %e, "reply to client dropped");
            }
        }
    }
}
