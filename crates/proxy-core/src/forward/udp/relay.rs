//! Moving datagrams: client → target on the session's socket, target → client from the
//! listening socket, in batches.
//!
//! **Client → target.** Datagrams are received from the listening socket in batches
//! (recvmmsg) into buffers reused for the route's life, and sent on the session's socket in
//! arrival order: a run of one client's datagrams within a batch leaves in one sendmmsg.
//! Nothing is allocated and nothing is spawned per datagram. Should a session socket's
//! send buffer be full (rare), the task waits for it to drain (a temporary Tokio
//! registration of that one socket) rather than drop or reorder, as a blocking forwarder
//! would. A datagram the session's socket cannot carry (with a PROXY v2 header in front,
//! anything over 65,507 bytes minus the header over IPv4) is dropped, counted, recorded as
//! the route's last error and logged at most once a second.
//!
//! **Target → client.** Every session socket is registered, level-triggered and readable,
//! in one epoll instance per route (see [`crate::forward::epoll`]), with the session's key
//! as the event data, never a pointer. That epoll descriptor is itself registered with
//! Tokio (`AsyncFd`), so the route's task wakes when *any* session socket is readable. It
//! then collects the ready keys, drains each socket (at most [`REPLY_BURST`] datagrams per
//! socket per round, for fairness) into one batch and sends the batch from the listening
//! socket with one sendmmsg, each datagram to its own client, across sessions. A connected
//! socket only accepts datagrams from its target.
//!
//! **Passive health.** An ICMP port-unreachable report (a read returning `ECONNREFUSED`)
//! marks the session's target down (new sessions avoid it for the backoff; the session
//! itself stays, in case the target comes back) and a reply marks it up.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::UdpSocket;
use tracing::{debug, error, trace};

use super::sessions::{Sessions, State};
use super::slab::Key;
use super::tuning::{PENDING_MAX_BYTES, PENDING_MAX_DATAGRAMS, REPLY_BURST};
use super::upstream::{send_failed, send_upstream};
use crate::access_log::Outcome;
use crate::forward::epoll::Events;
use crate::forward::mmsg::{self, BATCH, RecvBatch};
use crate::stats::RouteStats;
use route_spec::Direction;

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

impl Sessions {
    // ----------------------------------------------------------------- client → target

    /// Handles the `n` datagrams of a receive, in order. A run of datagrams from one client
    /// whose session is open goes out in one sendmmsg on its socket; the rest one by one.
    pub(super) async fn on_batch(&mut self, batch: &RecvBatch, n: usize) {
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
    pub(super) async fn send_run(&mut self, batch: &RecvBatch, run: std::ops::Range<usize>, peer: SocketAddr) -> bool {
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
                    session.tally.client(sent, bytes);
                    next += sent;
                }
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                    // The first unsent datagram failed (often the ICMP report of an earlier one):
                    // dropped, as by `send_upstream`; the session stays.
                    send_failed(&self.ctx, &self.oversize, socket, peer, batch.data(next).len(), 0, &e);
                    next += 1;
                }
                _ => {
                    // The send buffer is full: wait for it, one datagram at a time, in order.
                    for i in next..run.end {
                        send_upstream(&self.ctx, &self.oversize, socket, live, peer, batch.data(i)).await;
                        session.tally.client(1, batch.data(i).len());
                    }
                    break;
                }
            }
        }
        true
    }

    /// Handles one datagram from `peer`.
    pub(super) async fn on_datagram(&mut self, data: &[u8], peer: SocketAddr) {
        let now = self.clock.now();
        if let Some(key) = self.table.find(&peer)
            && let Some(session) = self.table.get_mut(key)
        {
            session.last = session.last.max(now);
            match &mut session.state {
                State::Open { socket, .. } => {
                    send_upstream(&self.ctx, &self.oversize, socket, &session.live, peer, data).await;
                    session.tally.client(1, data.len());
                }
                State::Dialling { queue, held, .. } => {
                    if queue.len() < PENDING_MAX_DATAGRAMS && self.pending_bytes + data.len() <= PENDING_MAX_BYTES {
                        queue.push_back(Box::from(data));
                        self.pending_bytes += data.len();
                        if *held {
                            RouteStats::add(&self.ctx.stats.buffered, 1);
                        }
                    } else {
                        RouteStats::add(&self.ctx.stats.dropped, 1);
                    }
                }
            }
            return;
        }
        self.open(data, peer, now).await;
    }

    // ----------------------------------------------------------------- target → client

    /// Forwards what the ready session sockets hold, up to [`READY_MAX`](super::tuning::READY_MAX) sockets and
    /// [`REPLY_BURST`] datagrams from each, to their clients in batches across sessions.
    /// True when every ready socket was drained, so the epoll instance may be marked not
    /// ready.
    pub(super) async fn on_replies(&mut self, listener: &UdpSocket, batch: &mut RecvBatch, ready: &mut Events) -> bool {
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
                        let bytes = (filled..filled + received).map(|j| batch.data(j).len()).sum();
                        session.tally.target(received, bytes);
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
                        let (dst, error) = (Some(*dst), Some(e.to_string()));
                        if let Some(session) = self.remove(key) {
                            self.log_end(&session, dst, Outcome::Reset, error);
                        }
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
    pub(super) async fn flush(&self, listener: &UdpSocket, batch: &RecvBatch, count: usize) {
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
}
