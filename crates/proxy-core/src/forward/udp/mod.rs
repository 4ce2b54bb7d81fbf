//! The UDP forwarder: one listening socket per route, one session per client address.
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
//! name lookups and cancellation. Client datagrams and replies take turns when both are
//! waiting, so neither direction can starve the other. Expiry and the datagrams run on the
//! same task, so they cannot race: a datagram that arrives as its session expires is
//! handled either before (and the session lives on) or after (and it opens a fresh
//! session); it never vanishes into a dead one.
//!
//! The parts:
//! - this file: the loop ([`serve`]);
//! - [`sessions`]: opening (hooks, descriptor budget, dialling), expiry, eviction, closing;
//! - [`relay`]: moving datagrams, client → target and target → client, in batches;
//! - [`slab`]: the session table, addressed by keys that outlive no session;
//! - [`lru`]: recency, a lazy min-heap behind the idle timeout and the session cap.
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

mod lru;
mod relay;
mod sessions;
mod slab;
mod tuning;
mod upstream;

use std::io;
use std::sync::Arc;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, trace};

use super::RouteCtx;
use super::epoll::{Epoll, Events};
use super::mmsg::RecvBatch;
use lru::Clock;
use sessions::{Event, Sessions};
use tuning::{LISTEN_RCVBUF, READY_MAX, RECV_BACKOFF_MAX, RECV_BACKOFF_MIN};

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
