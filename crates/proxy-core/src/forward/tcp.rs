//! The TCP forwarder: accept, admit, dial, copy both ways with half-close forwarded.
//!
//! Admission happens before anything is dialled: a client refused by the route's or the
//! global ACL is closed right after `accept`, without a task. When the route accepts the
//! PROXY protocol and the peer is trusted, the header is read first (in the connection's
//! task, within `proxy_protocol_timeout`) and the client it names is judged instead; see
//! [`crate::proxy_protocol`]. Bytes read along with the header, and the header the route
//! sends on, reach the target before the copy (and splice) takes over.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, error};

use super::{Live, RouteCtx, dial};
use crate::access_log::Outcome;
use crate::client_limits::ClientGuard;
use crate::proxy_protocol::{self, Accept, Transport};
use crate::stats::RouteStats;
use route_spec::Direction;

/// Size of the buffer a direction borrows while bytes are ready; released when the
/// socket has nothing more to read, so an idle connection holds none.
const COPY_BUF: usize = 32 * 1024;
/// First pause after an accept error such as EMFILE; doubled at each error in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while errors persist.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs the accept loop until the route is removed; the listener is dropped on return.
pub(crate) async fn serve(listener: TcpListener, ctx: RouteCtx) {
    // One shared copy for every connection: a pointer each instead of a whole context.
    let shared = Arc::new(ctx.clone());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let live = ctx.current();
                // A trusted proxy's header names the real client: that one is judged once the
                // header is read. Everyone else is judged here, before a task is spawned.
                let header_expected = live.options.accept_proxy_protocol.is_some() && live.trusted.contains(peer.ip());
                let mut client_guard = None;
                if !header_expected {
                    if let Err((acl, reason)) = live.access.check(peer.ip()) {
                        RouteStats::add(&ctx.stats.denied, 1);
                        debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "deny", acl = acl.as_str(), %reason, "refused by ACL");
                        ctx.log_refused(&live, peer, Outcome::Denied, || format!("{} ACL: {reason}", acl.as_str()));
                        drop(client);
                        continue;
                    }
                    if live.options.accept_proxy_protocol == Some(Accept::Required) {
                        RouteStats::add(&ctx.stats.proxy_header_errors, 1);
                        debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "proxy_header_error", "untrusted peer where a PROXY header is required");
                        ctx.log_refused(&live, peer, Outcome::Denied, || {
                            "PROXY header required from an untrusted peer".into()
                        });
                        drop(client);
                        continue;
                    }
                    match admit_client(&ctx, &live, peer) {
                        Ok(guard) => client_guard = guard,
                        Err(()) => {
                            drop(client);
                            continue;
                        }
                    }
                }
                let max = live.options.max_connections;
                if max > 0 && ctx.stats.active.load(Relaxed) >= u64::from(max) {
                    RouteStats::add(&ctx.stats.rejected, 1);
                    debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "reject", max_connections = max, "over max_connections");
                    ctx.log_refused(&live, peer, Outcome::Limited, || format!("max_connections {max} reached"));
                    drop(client);
                    continue;
                }
                // Counted here, not in the task, so a burst of accepts cannot overshoot
                // max_connections before the spawned tasks get to run.
                RouteStats::add(&ctx.stats.total, 1);
                RouteStats::add(&ctx.stats.active, 1);
                let active = ActiveGuard(ctx.stats.clone());
                let admitted = Admitted { header_expected, active, client: client_guard };
                ctx.tracker.spawn(connection(client, peer, admitted, live, shared.clone()));
            }
            Err(e) if is_per_connection(&e) => {
                debug!(protocol = "tcp", listen = %ctx.listen, action = "accept", error = %e, "client gone before accept");
            }
            Err(e) => {
                error!(protocol = "tcp", listen = %ctx.listen, action = "accept", error = %e, backoff = ?backoff, "accept failed; backing off");
                ctx.stats.set_last_error(format!("accept: {e}"));
                tokio::select! {
                    _ = ctx.stop_accepting.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
}

/// Errors that concern one would-be connection, not the listener: Linux hands a pending
/// connection's network error to `accept` (see accept(2)); retry at once, without backoff.
fn is_per_connection(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | Interrupted
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// Asks the route's per-client limits about `peer`: `Err` (counted, logged) when it is over
/// one, else the guard that counts its connection as open.
fn admit_client(ctx: &RouteCtx, live: &Live, peer: SocketAddr) -> Result<Option<ClientGuard>, ()> {
    if !live.limits.is_set() {
        return Ok(None);
    }
    ctx.clients.admit(peer.ip(), &live.limits, true).map_err(|refusal| {
        RouteStats::add(&ctx.stats.limited, 1);
        debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "limit", %refusal, "over a per-client limit");
        ctx.log_refused(live, peer, Outcome::Limited, || refusal.to_string());
    })
}

/// What the accept loop hands a connection's task.
struct Admitted {
    /// Whether a PROXY header is expected first (the route accepts them and the peer is
    /// trusted); the client it names is judged then.
    header_expected: bool,
    /// The connection's unit of the route's `active`.
    active: ActiveGuard,
    /// The connection's unit of its client's open connections, once judged.
    client: Option<ClientGuard>,
}

/// The route's reasons for ending a copy (see [`until_closed`]).
const DRAINED: &str = "route removed";
/// See [`DRAINED`].
const IDLE: &str = "idle timeout";

/// One unit of `active`, given back however the connection ends (even if its task is
/// dropped before it first runs).
struct ActiveGuard(Arc<RouteStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// One client: its PROXY header when one is expected (`header_expected`: the route accepts
/// them and `socket_peer` is trusted) and the ACL and limits for the client it names,
/// pre-dial hook, dial, the PROXY header sent on and any bytes read with the header, then
/// copy both ways until both sides are done, the route closes its connections, or the idle
/// timeout fires. The access log gets its line at the end.
async fn connection(
    mut client: TcpStream,
    socket_peer: SocketAddr,
    admitted: Admitted,
    live: Arc<Live>,
    ctx: Arc<RouteCtx>,
) {
    let Admitted { header_expected, active: _active, client: mut _client_guard } = admitted;
    // Tells a wake hook, by being dropped, that this client left.
    let mut _presence = None;
    let accepted = Instant::now();
    // The client: the socket's peer, or the one a trusted header names.
    let mut peer = socket_peer;
    // Everything before the copy, boxed: its state (header, hook, dial, header sent on)
    // is freed once the connection is established, so an open connection's task holds
    // only what copying needs.
    let established = Box::pin(async {
        // The address the client connected to when a header named one.
        let mut header_dst = None;
        // Client bytes read along with the header: forwarded before anything else.
        let mut early = Vec::new();
        if header_expected && let Some(mode) = live.options.accept_proxy_protocol {
            let read = tokio::select! {
                _ = ctx.close_conns.cancelled() => return Err((Outcome::Drained, DRAINED.to_string())),
                read = Box::pin(proxy_protocol::read_header(&mut client, mode, live.options.proxy_protocol_timeout)) => read,
            };
            match read {
                Ok(received) => {
                    if let Some(addresses) = received.header.and_then(|h| h.addresses) {
                        peer = addresses.source;
                        header_dst = Some(addresses.destination);
                    }
                    early = received.rest;
                }
                Err(e) => {
                    RouteStats::add(&ctx.stats.proxy_header_errors, 1);
                    debug!(protocol = "tcp", listen = %ctx.listen, peer = %socket_peer, action = "proxy_header_error", error = %e, "no valid PROXY header");
                    return Err((Outcome::Denied, format!("PROXY header: {e}")));
                }
            }
            if let Err((acl, reason)) = live.access.check(peer.ip()) {
                RouteStats::add(&ctx.stats.denied, 1);
                debug!(protocol = "tcp", listen = %ctx.listen, %peer, proxy = %socket_peer, action = "deny", acl = acl.as_str(), %reason, "refused by ACL");
                return Err((Outcome::Denied, format!("{} ACL: {reason}", acl.as_str())));
            }
            if live.limits.is_set() {
                match ctx.clients.admit(peer.ip(), &live.limits, true) {
                    Ok(guard) => _client_guard = guard,
                    Err(refusal) => {
                        RouteStats::add(&ctx.stats.limited, 1);
                        debug!(protocol = "tcp", listen = %ctx.listen, %peer, proxy = %socket_peer, action = "limit", %refusal, "over a per-client limit");
                        return Err((Outcome::Limited, refusal.to_string()));
                    }
                }
            }
        }
        let info = ctx.conn_info(peer);
        if let Some(hook) = &live.hooks.pre_dial
            && let Err(reason) = hook.pre_dial(&info)
        {
            RouteStats::add(&ctx.stats.rejected, 1);
            debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "refuse", %reason, "pre-dial hook refused");
            return Err((Outcome::Denied, format!("pre-dial hook: {reason}")));
        }
        // A sleeping target: the client is held (accepted, not refused) until it is awake, then
        // dialled at the targets as they are now (a woken container may have a new address).
        let mut woken = None;
        if let Some(hook) = &live.hooks.wake {
            let arrival = hook.arrive(&info);
            _presence = arrival.presence;
            if let Some(ready) = arrival.ready {
                RouteStats::add(&ctx.stats.held, 1);
                debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "hold", "held while the target wakes");
                let ready = tokio::select! {
                    _ = ctx.close_conns.cancelled() => return Err((Outcome::Drained, DRAINED.to_string())),
                    ready = ready => ready,
                };
                if let Err(reason) = ready {
                    RouteStats::add(&ctx.stats.wake_failed, 1);
                    let error = format!("wake: {reason}");
                    ctx.stats.set_last_error(error.clone());
                    debug!(protocol = "tcp", listen = %ctx.listen, %peer, action = "wake_error", %reason, "the target did not wake");
                    return Err((Outcome::DialError, error));
                }
                woken = Some(ctx.current());
            }
        }
        let targets = woken.as_ref().map_or(&live.targets, |now| &now.targets);
        let dialled = tokio::select! {
            _ = ctx.close_conns.cancelled() => return Err((Outcome::Drained, DRAINED.to_string())),
            dialled = Box::pin(dial::tcp(targets, peer.ip(), live.options.connect_timeout)) => dialled,
        };
        // The lease counts this connection on its target (least_conn, status) until it ends.
        let (upstream, dst, _lease) = match dialled {
            Ok(ok) => ok,
            Err(e) => {
                RouteStats::add(&ctx.stats.dial_errors, 1);
                ctx.stats.set_last_error(e.to_string());
                // DEBUG like every per-connection event: a dead target must not turn each client
                // into a WARN line. The error is in the route's stats (dial_errors, last_error);
                // a target going down is logged once, by the target set.
                // A local failure (EMFILE...) is this host's, not the target's: `local` says so.
                let local = dial::is_local(&e);
                debug!(protocol = "tcp", listen = %ctx.listen, %peer, dst = %targets.display(), action = "dial_error", local, error = %e, "no target answered");
                return Err((Outcome::DialError, e.to_string()));
            }
        };
        // TCP_NODELAY: the client socket has it from the listener (Linux copies it on accept),
        // the upstream one from the dial.
        #[cfg(not(target_os = "linux"))]
        let _ = client.set_nodelay(true);
        // What a header sent on names as destination: the accepted header's, else the address
        // this client connected to (asked of the kernel only when a header is sent).
        let local = match live.options.proxy_protocol {
            Some(_) => header_dst.or_else(|| client.local_addr().ok()).unwrap_or(ctx.listen),
            None => ctx.listen,
        };
        if let Err(e) = Box::pin(send_first(&upstream, &live, &ctx, peer, local, &early)).await {
            debug!(protocol = "tcp", listen = %ctx.listen, %peer, %dst, action = "close", error = %e, "writing to the target failed");
            let outcome = if ctx.close_conns.is_cancelled() { Outcome::Drained } else { Outcome::Reset };
            return Err((outcome, e.to_string()));
        }
        if peer == socket_peer {
            debug!(protocol = "tcp", listen = %ctx.listen, %peer, %dst, action = "accept", "connected");
        } else {
            debug!(protocol = "tcp", listen = %ctx.listen, %peer, proxy = %socket_peer, %dst, action = "accept", "connected");
        }

        Ok((upstream, dst, _lease, early.len() as u64))
    })
    .await;
    let (upstream, dst, _lease, early) = match established {
        Ok(established) => established,
        Err((outcome, error)) => {
            if let Some(log) = ctx.access_log(&live) {
                let mut event = ctx.event(peer, outcome, Some(error));
                event.duration = accepted.elapsed();
                log.send(event);
            }
            return;
        }
    };
    let bytes = [AtomicU64::new(early), AtomicU64::new(0)];
    let outcome = forward(&client, &upstream, &live, &ctx, peer, &bytes).await;
    match &outcome {
        Ok(()) => debug!(protocol = "tcp", listen = %ctx.listen, %peer, %dst, action = "close", "done"),
        Err(reason) => debug!(protocol = "tcp", listen = %ctx.listen, %peer, %dst, action = "close", %reason, "closed"),
    }
    if let Some(log) = ctx.access_log(&live) {
        let (outcome, error) = match outcome {
            Ok(()) => (Outcome::Closed, None),
            Err(reason) if reason == DRAINED => (Outcome::Drained, None),
            Err(reason) if reason == IDLE => (Outcome::IdleTimeout, None),
            Err(reason) => (Outcome::Reset, Some(reason)),
        };
        let mut event = ctx.event(peer, outcome, error);
        event.target = Some(dst);
        event.duration = accepted.elapsed();
        event.bytes_in = bytes[0].load(Relaxed);
        event.bytes_out = bytes[1].load(Relaxed);
        log.send(event);
    }
}

/// Copies both ways until both sides are done (`Ok`), or a reset, the route closing its
/// connections, or the idle timeout ends it (`Err` with the reason).
///
/// Either direction failing (a reset) ends both; a clean FIN only ends its own. Both
/// sockets are then closed normally, not with RST: bytes already handed to the kernel for
/// the surviving peer are still delivered (a server that replies and then resets, as Linux
/// does when it closes with unread input, must not lose its reply).
///
/// This is the state an open connection sits in, so its future is kept small: the relay
/// (copy, then splice for bulk) is a hand-written future of a few words, and the idle timer
/// is boxed only when a route has one. Closing both sockets when it returns is part of the
/// relay's contract: it leaves the last FIN to that close.
async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    live: &Live,
    ctx: &RouteCtx,
    peer: SocketAddr,
    bytes: &[AtomicU64; 2],
) -> Result<(), String> {
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    let pipe = Pipe { ctx, live, peer, started, last_activity: &last_activity, bytes };
    #[cfg(target_os = "linux")]
    if live.hooks.on_read.is_none() {
        let splice = super::splice::enabled();
        let both = std::pin::pin!(
            super::splice::Relay::new(client, upstream, splice, |direction, n| pipe.count(direction, n))
        );
        return until_closed(both, live, ctx, started, &last_activity).await?.map_err(|e| e.to_string());
    }
    // Boxed: this copy's state is large, and only hooked or non-Linux routes need it.
    let mut both = Box::pin(async {
        tokio::try_join!(
            pipe.copy(client, upstream, Direction::ClientToTarget),
            pipe.copy(upstream, client, Direction::TargetToClient),
        )
        .map(|_| ())
    });
    Box::pin(until_closed(both.as_mut(), live, ctx, started, &last_activity)).await?.map_err(|e| e.to_string())
}

/// Runs `copy` until it ends, or `Err(reason)` when the route closes its connections or the
/// idle timeout fires first. `copy` is borrowed, not moved in, so its state is not stored twice.
async fn until_closed<T>(
    copy: std::pin::Pin<&mut impl Future<Output = T>>,
    live: &Live,
    ctx: &RouteCtx,
    started: Instant,
    last_activity: &AtomicU64,
) -> Result<T, String> {
    match live.options.tcp_idle_timeout {
        None => tokio::select! {
            r = copy => Ok(r),
            _ = ctx.close_conns.cancelled() => Err(DRAINED.to_string()),
        },
        Some(_) => {
            let idle = Box::pin(idle(live, started, last_activity));
            tokio::select! {
                r = copy => Ok(r),
                _ = ctx.close_conns.cancelled() => Err(DRAINED.to_string()),
                _ = idle => Err(IDLE.to_string()),
            }
        }
    }
}

/// Writes what the target must get before the copy starts: the PROXY header the route
/// sends (naming `peer` and `local`), then `early`, the client bytes read with an accepted
/// header (counted, and shown to the on-read hook, like any client bytes).
async fn send_first(
    upstream: &TcpStream,
    live: &Live,
    ctx: &RouteCtx,
    peer: SocketAddr,
    local: SocketAddr,
    early: &[u8],
) -> io::Result<()> {
    let header = live.options.proxy_protocol.map(|v| proxy_protocol::encode(v, Transport::Stream, peer, local));
    if !early.is_empty()
        && let Some(hook) = &live.hooks.on_read
    {
        hook.on_read(&ctx.conn_info(peer), Direction::ClientToTarget, early);
    }
    let write = async {
        match (&header, early.is_empty()) {
            (None, true) => Ok(()),
            (Some(h), true) => write_all(upstream, h.as_bytes()).await,
            (None, false) => write_all(upstream, early).await,
            // One write, so the header and the first bytes can share a segment.
            (Some(h), false) => write_all(upstream, &[h.as_bytes(), early].concat()).await,
        }
    };
    tokio::select! {
        written = write => written?,
        _ = ctx.close_conns.cancelled() => return Err(io::Error::other("route removed")),
    }
    RouteStats::add(&ctx.stats.bytes_in, early.len() as u64);
    Ok(())
}

/// Resolves when the connection has been idle for `tcp_idle_timeout`; never without one.
async fn idle(live: &Live, started: Instant, last_activity: &AtomicU64) {
    let Some(timeout) = live.options.tcp_idle_timeout else {
        return std::future::pending().await;
    };
    let mut deadline = started + timeout;
    loop {
        tokio::time::sleep_until(deadline).await;
        let last = started + Duration::from_millis(last_activity.load(Relaxed));
        let next = last + timeout;
        if next <= Instant::now() {
            return;
        }
        deadline = next;
    }
}

/// What both copy directions of one connection share.
struct Pipe<'a> {
    /// The route: counters, hook view, tokens.
    ctx: &'a RouteCtx,
    /// The settings this connection started with (its on-read hook).
    live: &'a Live,
    /// The client's address, for the hook.
    peer: SocketAddr,
    /// When copying began; `last_activity` counts from here.
    started: Instant,
    /// Milliseconds from `started` to the last byte forwarded either way.
    last_activity: &'a AtomicU64,
    /// This connection's bytes: client → target, target → client (for the access log).
    bytes: &'a [AtomicU64; 2],
}

impl Pipe<'_> {
    /// Copies `from` → `to` through a buffer until `from` sends FIN, then shuts down writing
    /// on `to` (the half-close is forwarded; the other direction keeps flowing).
    ///
    /// Used where splice cannot be: an on-read hook must see the bytes, the kernel refuses
    /// splice, or not on Linux.
    async fn copy(&self, from: &TcpStream, to: &TcpStream, direction: Direction) -> io::Result<()> {
        let counter = match direction {
            Direction::ClientToTarget => &self.ctx.stats.bytes_in,
            Direction::TargetToClient => &self.ctx.stats.bytes_out,
        };
        loop {
            from.readable().await?;
            // Borrowed only while bytes are ready: an idle connection holds no buffer.
            let mut buf = Vec::with_capacity(COPY_BUF);
            loop {
                buf.clear();
                match from.try_read_buf(&mut buf) {
                    Ok(0) => {
                        let _ = SockRef::from(to).shutdown(Shutdown::Write);
                        return Ok(());
                    }
                    Ok(n) => {
                        if let Some(hook) = &self.live.hooks.on_read {
                            hook.on_read(&self.ctx.conn_info(self.peer), direction, &buf[..n]);
                        }
                        write_all(to, &buf[..n]).await?;
                        RouteStats::add(counter, n as u64);
                        RouteStats::add(&self.bytes[direction as usize], n as u64);
                        self.touch();
                        // readable()/writable() do not spend the task's budget: without this a
                        // busy direction could hold the worker (and starve its sibling
                        // direction, the idle timer and route removal) for as long as
                        // bytes keep coming.
                        tokio::task::coop::consume_budget().await;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Counts `n` bytes that reached the other side, and the activity.
    fn count(&self, direction: Direction, n: usize) {
        let counter = match direction {
            Direction::ClientToTarget => &self.ctx.stats.bytes_in,
            Direction::TargetToClient => &self.ctx.stats.bytes_out,
        };
        RouteStats::add(counter, n as u64);
        RouteStats::add(&self.bytes[direction as usize], n as u64);
        self.touch();
    }

    /// Records activity for the idle timeout.
    fn touch(&self) {
        self.last_activity.store(self.started.elapsed().as_millis() as u64, Relaxed);
    }
}

/// Writes all of `data`, waiting for the socket to drain as needed.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
