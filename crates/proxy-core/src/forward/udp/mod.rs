//! The UDP forwarder: one listening socket per route, one session per client address.
//!
//! # One task per route
//!
//! A route's UDP traffic, both ways, and the lifetime of all its sessions are handled by a
//! single task, [`serve`], which owns the session table outright (no lock and no channel on
//! the data path; only the route's counters are shared). A session is a plain record in
//! that table: it costs no task, no Tokio registration, no timer and no cancellation token.
//! This is what keeps an idle session at about 200 bytes of user-space memory (slab slot,
//! map entry, heap entry), where a relay task, a socket registration and a child token per
//! session cost about 1.8 KB; and it saves a task wake-up per reply: the datagrams of both
//! directions are moved by the task that is already running. The price is that one route's
//! datagrams are forwarded on one core at a time; at the rates a single core sustains
//! (hundreds of thousands of datagrams per second), that is the better trade than
//! cross-thread wake-ups and a shared, locked table.
//!
//! The task waits, in one `select!`, for: the listening socket (client datagrams), the
//! sessions' epoll instance (replies), the route's one timer (idle expiry), the news of
//! name lookups (see *Dialling*) and cancellation. Client datagrams and replies take turns
//! when both are waiting, so neither direction can starve the other.
//!
//! # Sessions
//!
//! The first datagram from a client address opens a session: the pre-dial hook is asked,
//! the route's *current* settings are read (so an update in place reaches new sessions
//! while existing ones keep their upstream, idle timeout and hooks), and a plain
//! non-blocking UDP socket *connected* to a target is made for it. Sessions live in a slab
//! (indexed by a key of slot and generation) with a map from client address to slot.
//!
//! **Client → target.** Datagrams are received from the listening socket in batches
//! (recvmmsg) into buffers reused for the route's life, and sent on the session's socket in
//! arrival order: a run of one client's datagrams within a batch leaves in one sendmmsg.
//! Nothing is allocated and nothing is spawned per datagram. Should a session socket's
//! send buffer be full (rare), the task waits for it to drain (a temporary Tokio
//! registration of that one socket) rather than drop or reorder, as a blocking forwarder
//! would.
//!
//! **Target → client.** Every session socket is registered, level-triggered and readable,
//! in one epoll instance per route (see [`super::epoll`]), with the session's key as the
//! event data, never a pointer. That epoll descriptor is itself registered with Tokio
//! (`AsyncFd`), so the route's task wakes when *any* session socket is readable. It then
//! collects the ready keys, drains each socket (at most [`REPLY_BURST`] datagrams per
//! socket per round, for fairness) into one batch and sends the batch from the listening
//! socket with one sendmmsg, each datagram to its own client, across sessions. A connected
//! socket only accepts datagrams from its target.
//!
//! **Dialling.** When every target is an IP literal, the upstream socket is made inline
//! (no lookup, so no waiting). Otherwise the session starts in a *dialling* state: the
//! lookup runs in its own task (bounded by `connect_timeout`) so one slow resolver answer
//! never stalls the route, and the client's datagrams meanwhile wait in a small bounded
//! queue ([`PENDING_MAX_DATAGRAMS`] per session, [`PENDING_MAX_BYTES`] per route; beyond it
//! they are dropped and counted). The queue is flushed in order once the socket is ready.
//!
//! A session ends by leaving the table: its socket is removed from the epoll instance
//! and closed, its lookup task (if any) aborted, its counters settled. Besides idleness,
//! eviction and the route closing, a read error on its socket other than an ICMP report
//! (which no connected UDP socket should see) ends it; the client's next datagram opens a
//! fresh one.
//!
//! # Targets
//!
//! A new session picks its target by the route's `balance` strategy (see
//! [`crate::Balance`]) and keeps it for its life: with `ip_hash`, every session of one
//! client IP goes to the same target. UDP has no handshake to fail, so passive health is
//! read from the session's socket: an ICMP port-unreachable report (a read returning
//! `ECONNREFUSED`) marks the target down (new sessions avoid it for the backoff; the
//! session itself stays, in case the target comes back) and a reply marks it up. Each open
//! session is counted on its target (`least_conn`, status) until it leaves the table.
//!
//! # Idle timeout and the session cap
//!
//! A session ends after `udp_idle_timeout` without a datagram in *either* direction. Each
//! session keeps the stamp of its last datagram; recency lives in a min-heap of
//! `(stamp, session)` entries kept *lazily*: the hot path only writes the session's stamp,
//! and each session has one heap entry, pushed when it opens. The route has **one timer**,
//! set to the oldest entry's stamp plus the idle timeout. When it fires, due entries are
//! popped and each session's real stamp re-read: one used since is pushed back with its
//! fresh stamp, one that was not has expired. So an entry is re-pushed at most once per
//! timeout per busy session, not per datagram, and a quiet route costs nothing (a periodic
//! sweep would wake every route forever). Sessions opened under different idle timeouts
//! (after an update in place) sit in separate heaps, one per timeout, so each heap's order
//! is also its deadline order. All of this reads Tokio's clock, so it works unchanged under
//! its paused clock.
//!
//! Expiry and the datagrams run on the same task, so they cannot race: a datagram that
//! arrives as its session expires is handled either before (and the session lives on) or
//! after (and it opens a fresh session); it never vanishes into a dead one.
//!
//! At `max_udp_sessions` the least recently used session is evicted (and counted): the
//! oldest entry is popped and, if its session was used since, pushed back with the fresh
//! stamp. Each push pays for one burst of activity, so eviction is O(log n) amortised and
//! no datagram scans the table. Entries of sessions that ended otherwise are skipped when
//! popped, and the heaps are rebuilt from the table once stale entries outnumber live ones.
//!
//! # Shutdown
//!
//! - `ctx.close_conns` cancelled: every session is dropped, and [`serve`] returns; it is
//!   the only owner of the listening socket, so the port is free when the route table
//!   sees `serve` return.
//! - Only `ctx.stop_accepting` cancelled (a route removed with a drain grace): datagrams
//!   from clients without a session are dropped and counted, but existing sessions keep
//!   flowing both ways, since the listening socket also carries their replies, until
//!   `close_conns` fires. Once the last of them has ended (idle or evicted) there is
//!   nothing left to drain, so [`serve`] returns early and the port is free before the
//!   grace runs out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, trace, warn};

use super::epoll::{self, Epoll, Events};
use super::mmsg::{self, BATCH, RecvBatch};
use super::{Live, RouteCtx, dial};
use crate::balance::Lease;
use crate::error::DialError;
use crate::hooks::Direction;
use crate::stats::RouteStats;

/// Datagrams a client may have waiting while its session's target is being resolved.
pub(crate) const PENDING_MAX_DATAGRAMS: usize = 8;
/// Bytes all of a route's dialling sessions may have waiting at once.
pub(crate) const PENDING_MAX_BYTES: usize = 1 << 20;
/// Replies read from one session's socket per round, so that one flooding target yields
/// to the other sessions, the client direction and the timer.
const REPLY_BURST: usize = 64;
/// Ready sessions collected per round of replies (one epoll_wait).
const READY_MAX: usize = 64;
/// First and longest pause after an error on the listening socket.
const RECV_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// See [`RECV_BACKOFF_MIN`].
const RECV_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Stale heap entries tolerated beyond the number of live sessions before a rebuild.
const LRU_SLACK: usize = 1024;
/// Receive buffer asked for the listening socket (the kernel caps it at `net.core.rmem_max`).
/// The default (about 200 KiB, a few hundred datagrams) overflows whenever the loop is kept
/// off its CPU for a few milliseconds at tens of thousands of datagrams per second. Kernel
/// memory, charged only while datagrams wait.
const LISTEN_RCVBUF: usize = 4 << 20;
/// Receive buffer asked for each session's upstream socket (its replies); as above.
const UPSTREAM_RCVBUF: usize = 1 << 20;

/// Serves datagrams until `ctx.close_conns` is cancelled; see the module doc.
///
/// Returns only after every session has been dropped, and drops the listening socket as it
/// returns: nothing else holds it.
pub(crate) async fn serve(socket: UdpSocket, ctx: RouteCtx) {
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(LISTEN_RCVBUF) {
        debug!(protocol = "udp", listen = %ctx.listen, error = %e, "cannot enlarge the receive buffer");
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let clock = Clock { epoch: Instant::now() };
    let mut sessions = Sessions::new(ctx.clone(), clock, events_tx);
    // Up to mmsg::BATCH datagrams per call, in buffers reused for the route's life, for
    // both directions (the task handles one at a time).
    let mut batch = RecvBatch::new();
    let mut ready = Events::with_capacity(READY_MAX);
    let mut backoff = RECV_BACKOFF_MIN;
    let mut draining = false;
    // Which direction goes first when both are waiting: the one not served last.
    let mut replies_first = false;
    // The route's one timer, at the earliest idle deadline of its sessions.
    let timer = tokio::time::sleep_until(clock.epoch);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // The sessions' epoll instance as Tokio watches it; made with the first session.
    let mut upstreams: Option<Arc<AsyncFd<Epoll>>> = None;
    loop {
        if draining && sessions.is_empty() {
            debug!(protocol = "udp", listen = %ctx.listen, action = "stop", "route removed and no session left");
            break;
        }
        let next = sessions.next_deadline();
        if next != armed {
            if let Some(deadline) = next {
                timer.as_mut().reset(deadline);
            }
            armed = next;
        }
        if upstreams.is_none() {
            upstreams = sessions.epoll.clone();
        }
        let step = tokio::select! {
            biased;
            _ = ctx.close_conns.cancelled() => break,
            _ = ctx.stop_accepting.cancelled(), if !draining => {
                draining = true;
                continue;
            }
            Some(event) = events.recv() => Step::Event(event),
            () = &mut timer, if armed.is_some() => Step::Timer,
            ready = readable(upstreams.as_deref()), if replies_first => Step::Replies(ready),
            ready = socket.readable() => Step::Received(ready.and_then(|()| batch.try_recv_unconnected(&socket))),
            ready = readable(upstreams.as_deref()), if !replies_first => Step::Replies(ready),
        };
        match step {
            Step::Event(Event::Dialled { key, result }) => sessions.on_dialled(key, result).await,
            Step::Timer => {
                // Re-armed at the top of the loop, even at the same instant.
                armed = None;
                sessions.expire();
            }
            Step::Replies(Ok(mut guard)) => {
                replies_first = false;
                if sessions.on_replies(&socket, &mut batch, &mut ready).await {
                    // Only if no socket became readable since the readiness was reported.
                    guard.clear_ready();
                }
            }
            Step::Replies(Err(e)) => {
                // Only when the runtime's I/O driver is gone.
                error!(protocol = "udp", listen = %ctx.listen, action = "recv", error = %e, "session sockets unusable");
                break;
            }
            Step::Received(Ok(n)) => {
                backoff = RECV_BACKOFF_MIN;
                replies_first = true;
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
    sessions.close();
    // The only handle: the port is free once this returns.
    drop(socket);
}

/// Waits until a session socket is readable; never, before the first session.
async fn readable(upstreams: Option<&AsyncFd<Epoll>>) -> io::Result<AsyncFdReadyGuard<'_, Epoll>> {
    match upstreams {
        Some(upstreams) => upstreams.readable().await,
        None => std::future::pending().await,
    }
}

/// What woke the route's task.
enum Step<'a> {
    /// A lookup task reported.
    Event(Event),
    /// The earliest idle deadline came.
    Timer,
    /// The listening socket returned a batch of datagrams (how many) or an error.
    Received(io::Result<usize>),
    /// A session socket is readable (or Tokio's I/O driver is gone).
    Replies(io::Result<AsyncFdReadyGuard<'a, Epoll>>),
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

/// What lookup tasks tell the route's task.
enum Event {
    /// A dialling session's target was resolved and its socket made, or not.
    Dialled {
        /// The session; news about a session already gone is ignored.
        key: Key,
        /// The connected upstream socket, its address and the lease on its target, or why
        /// there is none.
        result: Result<(StdUdpSocket, SocketAddr, Lease), DialError>,
    },
}

/// The route's clock in nanoseconds since the forwarder started, on Tokio's (pausable) time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the forwarder started.
    epoch: Instant,
}

impl Clock {
    /// Nanoseconds since the epoch.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When a session last used at `stamp` goes idle; a timeout too long to add means never
    /// in practice (a century on), rather than a panic.
    fn idle_deadline(&self, stamp: u64, idle: Duration) -> Instant {
        let last = self.epoch + Duration::from_nanos(stamp);
        last.checked_add(idle).unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
    }
}

/// A session's identity: its slot in the table and that slot's generation, so that a key
/// of an ended session never names the slot's next occupant. Also the epoll event data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u64);

impl Key {
    /// The key of slot `index` in its `generation`.
    fn new(index: u32, generation: u32) -> Self {
        Key(u64::from(generation) << 32 | u64::from(index))
    }

    /// The slot.
    fn index(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation.
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// One client's session.
struct Session {
    /// The client.
    peer: SocketAddr,
    /// When a datagram last went either way, on the route's [`Clock`].
    last: u64,
    /// The route's settings when the session opened.
    live: Arc<Live>,
    /// Dialling or open.
    state: State,
}

/// Where a session stands.
enum State {
    /// The target is being resolved.
    Dialling {
        /// The client's waiting datagrams, oldest first.
        queue: VecDeque<Box<[u8]>>,
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

/// A slot of the table.
struct Slot {
    /// Bumped each time the slot is vacated.
    generation: u32,
    /// The occupant.
    session: Option<Session>,
}

/// The sessions of a route: a slab of slots and an index by client address.
#[derive(Default)]
struct Table {
    /// Sessions by slot.
    slots: Vec<Slot>,
    /// Vacant slots, reused before the slab grows.
    vacant: Vec<u32>,
    /// The slot of each client's session.
    by_peer: HashMap<SocketAddr, u32>,
}

impl Table {
    /// How many sessions there are.
    fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// The key of `peer`'s session.
    fn find(&self, peer: &SocketAddr) -> Option<Key> {
        let &index = self.by_peer.get(peer)?;
        let slot = self.slots.get(index as usize)?;
        Some(Key::new(index, slot.generation))
    }

    /// The session of `key`, unless it has ended.
    fn get(&self, key: Key) -> Option<&Session> {
        let slot = self.slots.get(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        slot.session.as_ref()
    }

    /// As [`Table::get`], mutable.
    fn get_mut(&mut self, key: Key) -> Option<&mut Session> {
        let slot = self.slots.get_mut(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        slot.session.as_mut()
    }

    /// Adds a session for a client that has none; gives it back if the slab is full.
    fn insert(&mut self, session: Session) -> Result<Key, Session> {
        let index = match self.vacant.pop() {
            Some(index) => index,
            None => {
                let Ok(index) = u32::try_from(self.slots.len()) else { return Err(session) };
                self.slots.push(Slot { generation: 0, session: None });
                index
            }
        };
        let Some(slot) = self.slots.get_mut(index as usize) else { return Err(session) };
        self.by_peer.insert(session.peer, index);
        slot.session = Some(session);
        Ok(Key::new(index, slot.generation))
    }

    /// Takes the session of `key` out.
    fn remove(&mut self, key: Key) -> Option<Session> {
        let slot = self.slots.get_mut(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        let session = slot.session.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.vacant.push(key.index());
        if self.by_peer.get(&session.peer) == Some(&key.index()) {
            self.by_peer.remove(&session.peer);
        }
        Some(session)
    }

    /// Every session with its key.
    fn iter(&self) -> impl Iterator<Item = (Key, &Session)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            let session = slot.session.as_ref()?;
            Some((Key::new(u32::try_from(index).ok()?, slot.generation), session))
        })
    }

    /// Takes every session out, leaving the table empty.
    fn take_all(&mut self) -> impl Iterator<Item = Session> {
        self.by_peer.clear();
        self.vacant.clear();
        std::mem::take(&mut self.slots).into_iter().filter_map(|slot| slot.session)
    }
}

/// The recency heaps: `(stamp, session)` entries, oldest first, possibly stale (see the
/// module doc); one heap per idle timeout in use, almost always one.
#[derive(Default)]
struct Lru {
    /// The heaps, none empty.
    groups: Vec<Group>,
    /// Entries in all heaps.
    len: usize,
}

/// The recency heap of the sessions with one idle timeout.
struct Group {
    /// Their idle timeout.
    idle: Duration,
    /// Oldest stamp first.
    heap: BinaryHeap<Reverse<(u64, Key)>>,
}

impl Lru {
    /// Adds an entry for a session with idle timeout `idle` last used at `stamp`.
    fn push(&mut self, idle: Duration, stamp: u64, key: Key) {
        let entry = Reverse((stamp, key));
        match self.groups.iter_mut().find(|g| g.idle == idle) {
            Some(group) => group.heap.push(entry),
            None => self.groups.push(Group { idle, heap: BinaryHeap::from(vec![entry]) }),
        }
        self.len += 1;
    }

    /// The earliest deadline of any entry.
    fn next_deadline(&self, clock: &Clock) -> Option<Instant> {
        self.groups
            .iter()
            .filter_map(|g| g.heap.peek().map(|Reverse((stamp, _))| clock.idle_deadline(*stamp, g.idle)))
            .min()
    }

    /// Takes the oldest entry of all: `(idle, stamp, key)`.
    fn pop_oldest(&mut self) -> Option<(Duration, u64, Key)> {
        let (group, _) = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.heap.peek().map(|Reverse((stamp, _))| (i, *stamp)))
            .min_by_key(|&(_, stamp)| stamp)?;
        self.pop(group)
    }

    /// Takes an entry whose deadline is at or before `now`.
    fn pop_expired(&mut self, now: Instant, clock: &Clock) -> Option<(Duration, u64, Key)> {
        let group = self.groups.iter().position(|g| {
            g.heap.peek().is_some_and(|Reverse((stamp, _))| clock.idle_deadline(*stamp, g.idle) <= now)
        })?;
        self.pop(group)
    }

    /// Takes the oldest entry of heap `group`.
    fn pop(&mut self, group: usize) -> Option<(Duration, u64, Key)> {
        let g = self.groups.get_mut(group)?;
        let Reverse((stamp, key)) = g.heap.pop()?;
        let idle = g.idle;
        if g.heap.is_empty() {
            self.groups.swap_remove(group);
        }
        self.len -= 1;
        Some((idle, stamp, key))
    }

    /// Forgets every entry.
    fn clear(&mut self) {
        self.groups.clear();
        self.len = 0;
    }
}

/// The state of one route's forwarder, owned by its task.
struct Sessions {
    /// The route's context.
    ctx: RouteCtx,
    /// The route's clock.
    clock: Clock,
    /// Where lookup tasks report.
    events: mpsc::UnboundedSender<Event>,
    /// Every open session's socket, watched for replies; made with the first session.
    epoll: Option<Arc<AsyncFd<Epoll>>>,
    /// The sessions.
    table: Table,
    /// Recency and idle deadlines.
    lru: Lru,
    /// Bytes waiting in the queues of dialling sessions.
    pending_bytes: usize,
    /// Whether the last dial failed: the first failure in a row logs a warning, the rest debug.
    dial_failing: bool,
}

impl Sessions {
    /// No session yet.
    fn new(ctx: RouteCtx, clock: Clock, events: mpsc::UnboundedSender<Event>) -> Self {
        Sessions {
            ctx,
            clock,
            events,
            epoll: None,
            table: Table::default(),
            lru: Lru::default(),
            pending_bytes: 0,
            dial_failing: false,
        }
    }

    /// Whether no session is left.
    fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// When the next session may go idle.
    fn next_deadline(&self) -> Option<Instant> {
        self.lru.next_deadline(&self.clock)
    }

    /// The epoll instance, made (and registered with Tokio) on first use.
    fn epoll(&mut self) -> io::Result<Arc<AsyncFd<Epoll>>> {
        if let Some(epoll) = &self.epoll {
            return Ok(epoll.clone());
        }
        let epoll = Arc::new(Epoll::new()?.register()?);
        self.epoll = Some(epoll.clone());
        Ok(epoll)
    }

    // ----------------------------------------------------------------- client → target

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
                // A new or dialling session, or one that needs each datagram (hooks, PROXY
                // header): this one alone, then the rest of the run again.
                self.on_datagram(batch.data(i), peer).await;
                i += 1;
            }
        }
    }

    /// Sends datagrams `run` of `batch`, all from `peer`, on its open session's socket with
    /// as few sendmmsg calls as the socket takes; false (nothing done) when the session is
    /// not open or has hooks or a PROXY header to apply per datagram.
    async fn send_run(&mut self, batch: &RecvBatch, run: std::ops::Range<usize>, peer: SocketAddr) -> bool {
        let now = self.clock.now();
        let Some(key) = self.table.find(&peer) else { return false };
        let Some(session) = self.table.get_mut(key) else { return false };
        let live = &session.live;
        if live.hooks.on_read.is_some() || live.options.proxy_protocol.is_some() {
            return false;
        }
        let State::Open { socket, .. } = &session.state else { return false };
        session.last = session.last.max(now);
        let stats = &self.ctx.stats;
        let mut next = run.start;
        while next < run.end {
            match mmsg::send_connected(socket.as_fd(), batch, next..run.end) {
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
                    trace!(protocol = "udp", listen = %self.ctx.listen, %peer, action = "send", error = %e, "datagram to target dropped");
                    next += 1;
                }
                _ => {
                    // The send buffer is full: wait for it, one datagram at a time, in order.
                    for i in next..run.end {
                        send_upstream(&self.ctx, socket, live, peer, batch.data(i)).await;
                    }
                    break;
                }
            }
        }
        true
    }

    /// Handles one datagram from `peer`.
    async fn on_datagram(&mut self, data: &[u8], peer: SocketAddr) {
        let now = self.clock.now();
        if let Some(key) = self.table.find(&peer)
            && let Some(session) = self.table.get_mut(key)
        {
            session.last = session.last.max(now);
            match &mut session.state {
                State::Open { socket, .. } => send_upstream(&self.ctx, socket, &session.live, peer, data).await,
                State::Dialling { queue, .. } => {
                    if queue.len() < PENDING_MAX_DATAGRAMS && self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                        queue.push_back(Box::from(data));
                        self.pending_bytes += data.len();
                    } else {
                        RouteStats::add(&self.ctx.stats.dropped, 1);
                    }
                }
            }
            return;
        }
        self.open(data, peer, now).await;
    }

    /// Opens a session for `peer`, whose first datagram is `data`.
    async fn open(&mut self, data: &[u8], peer: SocketAddr, now: u64) {
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
        let max = live.options.max_udp_sessions;
        if live.targets.members().iter().all(|m| m.target().ip_addr().is_some()) {
            // IP literals only: dial::udp makes no lookup, so this completes without waiting.
            let (socket, dst, lease) = match dial::udp(&live.targets, peer.ip()).await {
                Ok(dialled) => dialled,
                Err(e) => {
                    self.dial_failed(peer, &e, 1);
                    return;
                }
            };
            self.make_room(max);
            let state = State::Dialling { queue: VecDeque::new(), task: None };
            let Some(key) = self.insert(Session { peer, last: now, live, state }) else {
                RouteStats::add(&self.ctx.stats.dropped, 1);
                return;
            };
            if self.go_open(key, socket, dst, lease, 1).is_some()
                && let Some(session) = self.table.get(key)
                && let State::Open { socket, .. } = &session.state
            {
                send_upstream(&self.ctx, socket, &session.live, peer, data).await;
            }
        } else {
            self.make_room(max);
            let mut queue = VecDeque::with_capacity(PENDING_MAX_DATAGRAMS);
            if self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                queue.push_back(Box::from(data));
                self.pending_bytes += data.len();
            } else {
                RouteStats::add(&self.ctx.stats.dropped, 1);
            }
            let state = State::Dialling { queue, task: None };
            let Some(key) = self.insert(Session { peer, last: now, live: live.clone(), state }) else { return };
            let lookup = setup(live, self.ctx.close_conns.clone(), self.events.clone(), key, peer.ip());
            let handle = self.ctx.tracker.spawn(lookup).abort_handle();
            if let Some(Session { state: State::Dialling { task, .. }, .. }) = self.table.get_mut(key) {
                *task = Some(handle);
            }
        }
    }

    /// Puts a new (dialling) session in the table and the recency heap; `None` (the session
    /// dropped and settled) if the table cannot take it.
    fn insert(&mut self, session: Session) -> Option<Key> {
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
    fn go_open(
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
            self.remove(key);
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
    async fn on_dialled(&mut self, key: Key, result: Result<(StdUdpSocket, SocketAddr, Lease), DialError>) {
        let Some(session) = self.table.get(key) else { return };
        if !matches!(session.state, State::Dialling { .. }) {
            return;
        }
        let peer = session.peer;
        match result {
            Ok((socket, dst, lease)) => {
                let Some(queue) = self.go_open(key, socket, dst, lease, 0) else { return };
                let Some(session) = self.table.get(key) else { return };
                let State::Open { socket, .. } = &session.state else { return };
                for datagram in queue {
                    self.pending_bytes = self.pending_bytes.saturating_sub(datagram.len());
                    send_upstream(&self.ctx, socket, &session.live, peer, &datagram).await;
                }
            }
            Err(e) => {
                // `remove` counts the queued datagrams as dropped.
                self.remove(key);
                self.dial_failed(peer, &e, 0);
            }
        }
    }

    /// Counts and logs a dial failure for `peer`, with `dropped` datagrams lost to it.
    fn dial_failed(&mut self, peer: SocketAddr, e: &DialError, dropped: u64) {
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

    // ----------------------------------------------------------------- target → client

    /// Forwards what the ready session sockets hold, up to [`READY_MAX`] sockets and
    /// [`REPLY_BURST`] datagrams from each, to their clients in batches across sessions.
    /// True when every ready socket was drained, so the epoll instance may be marked not
    /// ready.
    async fn on_replies(&mut self, listener: &UdpSocket, batch: &mut RecvBatch, ready: &mut Events) -> bool {
        let Some(epoll) = self.epoll.clone() else { return true };
        let n = match epoll.get_ref().wait(ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(e) => {
                error!(protocol = "udp", listen = %self.ctx.listen, action = "recv", error = %e, "waiting for session sockets failed");
                return true;
            }
        };
        let mut drained = n < ready.capacity();
        let now = self.clock.now();
        let mut filled = 0;
        for i in 0..n {
            let Some(key) = ready.key(i).map(Key) else { continue };
            let mut taken = 0;
            loop {
                if taken >= REPLY_BURST {
                    drained = false;
                    break;
                }
                if filled == BATCH {
                    self.flush(listener, batch, filled).await;
                    filled = 0;
                }
                let Some(session) = self.table.get_mut(key) else { break };
                let State::Open { socket, lease, dst } = &session.state else { break };
                match batch.recv_at(socket.as_fd(), filled) {
                    Ok(received) => {
                        session.last = session.last.max(now);
                        session.live.targets.succeeded(lease.member());
                        if let Some(hook) = &session.live.hooks.on_read {
                            let info = self.ctx.conn_info(session.peer);
                            for j in filled..filled + received {
                                hook.on_read(&info, Direction::TargetToClient, batch.data(j));
                            }
                        }
                        batch.set_peers(filled..filled + received, session.peer);
                        filled += received;
                        taken += received.max(1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_icmp_report(&e) => {
                        // The target's port is closed (for now): the report is consumed, the
                        // session stays (the target may come back), but new sessions avoid the
                        // target for a while.
                        trace!(protocol = "udp", peer = %session.peer, dst = %dst, error = %e, "ICMP report from target");
                        if e.kind() != io::ErrorKind::Interrupted {
                            session.live.targets.failed(lease.member(), &e.to_string(), false);
                        }
                        taken += 1;
                    }
                    Err(e) => {
                        debug!(protocol = "udp", listen = %self.ctx.listen, peer = %session.peer, dst = %dst, action = "session_close", error = %e, "reading the target failed; session closed");
                        self.remove(key);
                        break;
                    }
                }
            }
        }
        if filled > 0 {
            self.flush(listener, batch, filled).await;
        }
        drained
    }

    /// Sends the first `count` datagrams of `batch` from the listening socket, each to the
    /// client set on it, in order; waits while the socket's send buffer is full.
    async fn flush(&self, listener: &UdpSocket, batch: &RecvBatch, count: usize) {
        let stats = &self.ctx.stats;
        let mut next = 0;
        while next < count {
            match mmsg::try_send_to_peers(listener, batch, next..count) {
                Ok(sent) if sent > 0 => {
                    let bytes: usize = (next..next + sent).map(|i| batch.data(i).len()).sum();
                    RouteStats::add(&stats.bytes_out, bytes as u64);
                    RouteStats::add(&stats.datagrams_out, sent as u64);
                    next += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Rare (loopback drains fast): wait, as a blocking forwarder would.
                    let writable = tokio::select! {
                        _ = self.ctx.close_conns.cancelled() => false,
                        ready = listener.writable() => ready.is_ok(),
                    };
                    if !writable {
                        RouteStats::add(&stats.dropped, (count - next) as u64);
                        return;
                    }
                }
                sent => {
                    // The first unsent datagram failed (e.g. too large for the path): drop it, go on.
                    RouteStats::add(&stats.dropped, 1);
                    trace!(protocol = "udp", peer = ?batch.peer(next), result = ?sent, "reply to client dropped");
                    next += 1;
                }
            }
        }
    }

    // ----------------------------------------------------------------- lifetime

    /// Ends the sessions whose idle deadline has passed; see the module doc.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((idle, stamp, key)) = self.lru.pop_expired(now, &self.clock) {
            let Some(session) = self.table.get(key) else { continue };
            let last = session.last;
            if last > stamp && self.clock.idle_deadline(last, idle) > now {
                self.lru.push(idle, last, key);
                continue;
            }
            if let Some(session) = self.remove(key) {
                let dst = match &session.state {
                    State::Open { dst, .. } => Some(*dst),
                    State::Dialling { .. } => None,
                };
                debug!(protocol = "udp", listen = %self.ctx.listen, peer = %session.peer, dst = ?dst, action = "session_close", reason = "idle", "session closed");
            }
        }
    }

    /// Evicts least recently used sessions until one more fits under `max`.
    fn make_room(&mut self, max: u32) {
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
                let dst = match &session.state {
                    State::Open { dst, .. } => Some(*dst),
                    State::Dialling { .. } => None,
                };
                debug!(protocol = "udp", listen = %self.ctx.listen, peer = %session.peer, dst = ?dst, action = "evict", max_udp_sessions = max, "least recently used session evicted");
            }
        }
    }

    /// Takes a session out of the table, settles its counters, stops watching its socket
    /// and aborts its lookup; the socket closes when the returned session is dropped.
    fn remove(&mut self, key: Key) -> Option<Session> {
        let session = self.table.remove(key)?;
        self.release(&session);
        if self.lru.len > 2 * self.table.len() + LRU_SLACK {
            self.rebuild_lru();
        }
        Some(session)
    }

    /// Settles a session leaving the table and detaches it from the route.
    fn release(&mut self, session: &Session) {
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
    fn settle(&mut self, session: &Session) {
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

    /// Rebuilds the recency heaps from the table, dropping stale entries; O(n).
    fn rebuild_lru(&mut self) {
        self.lru.clear();
        for (key, session) in self.table.iter() {
            self.lru.push(session.live.options.udp_idle_timeout, session.last, key);
        }
    }

    /// Ends every session: each socket leaves the epoll instance and is closed.
    fn close(&mut self) {
        let sessions: Vec<Session> = self.table.take_all().collect();
        for session in &sessions {
            self.release(session);
        }
        drop(sessions);
        self.lru.clear();
    }
}

/// Forwards one client datagram on a session's socket (with the route's PROXY header, if
/// configured, and past the on-read hook), waiting while its send buffer is full.
async fn send_upstream(ctx: &RouteCtx, socket: &StdUdpSocket, live: &Live, peer: SocketAddr, data: &[u8]) {
    if let Some(hook) = &live.hooks.on_read {
        hook.on_read(&ctx.conn_info(peer), Direction::ClientToTarget, data);
    }
    // Encoded on the stack for each datagram (28 or 52 bytes): no allocation and no
    // per-session state; the header names the client and the bound address.
    let header = live.options.proxy_protocol.map(|version| {
        crate::proxy_protocol::encode(version, crate::proxy_protocol::Transport::Datagram, peer, ctx.listen)
    });
    let sent = loop {
        let sent = match &header {
            None => socket.send(data),
            // `header ‖ data` as one datagram from two buffers: the payload is not copied.
            Some(header) => {
                socket2::SockRef::from(socket).send_vectored(&[IoSlice::new(header.as_bytes()), IoSlice::new(data)])
            }
        };
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = writable(socket, &ctx.close_conns).await {
                    break Err(e);
                }
            }
            sent => break sent,
        }
    };
    match sent {
        Ok(_) => {
            RouteStats::add(&ctx.stats.bytes_in, data.len() as u64);
            RouteStats::add(&ctx.stats.datagrams_in, 1);
        }
        Err(e) => {
            // Often the ICMP report of an earlier datagram (ECONNREFUSED), consumed by
            // this send; the session stays.
            RouteStats::add(&ctx.stats.dropped, 1);
            trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "send", error = %e, "datagram to target dropped");
        }
    }
}

/// Waits until `socket` may be written to, through a registration with Tokio that lasts
/// only this wait; an error if the route closes first.
async fn writable(socket: &StdUdpSocket, close: &CancellationToken) -> io::Result<()> {
    tokio::select! {
        _ = close.cancelled() => Err(io::Error::other("route closing")),
        ready = epoll::writable(socket.as_fd()) => ready,
    }
}

/// Resolves a dialling session's targets and makes its socket, then reports to the route.
async fn setup(
    live: Arc<Live>,
    close: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
    key: Key,
    client: std::net::IpAddr,
) {
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
