//! Client datagrams onto a session's socket: the route's PROXY v2 header in front (from two
//! buffers, the payload not copied), the on-read hook, waiting while the socket's send
//! buffer is full, and what a datagram too large for the socket becomes (the route's last
//! error, logged at most once a second). Used by the relay's batches and by sessions
//! flushing what they held while their target was being resolved.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsFd;

use tokio_util::sync::CancellationToken;
use tracing::{trace, warn};

use crate::fd_budget::Throttle;
use crate::forward::epoll;
use crate::forward::{Live, RouteCtx};
use crate::stats::RouteStats;
use route_spec::Direction;

/// The largest UDP payload over IPv4: 65,535 less the IP and UDP headers.
pub(super) const MAX_PAYLOAD_V4: usize = 65_507;
/// The largest UDP payload over IPv6 (without jumbograms): 65,535 less the UDP header.
pub(super) const MAX_PAYLOAD_V6: usize = 65_527;

/// Forwards one client datagram on a session's socket (with the route's PROXY header, if
/// configured, and past the on-read hook), waiting while its send buffer is full.
///
/// `oversize` throttles the reports of datagrams too large for the socket.
pub(super) async fn send_upstream(
    ctx: &RouteCtx,
    oversize: &Throttle,
    socket: &StdUdpSocket,
    live: &Live,
    peer: SocketAddr,
    data: &[u8],
) {
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
            let header = header.as_ref().map_or(0, |h| h.as_bytes().len());
            send_failed(ctx, oversize, socket, peer, data.len(), header, &e);
        }
    }
}

/// Counts a client datagram of `len` bytes (sent behind a `header` of so many bytes) that
/// `socket` did not take. Usually the ICMP report of an earlier datagram (ECONNREFUSED),
/// consumed by this send: traced only, the session stays. A datagram too large for the
/// socket (EMSGSIZE: over 65,507 bytes to an IPv4 target or 65,527 to IPv6, the header
/// included) is the client's or the route's problem: it becomes the route's last error
/// and is logged, at most once a second per route (`oversize`).
pub(super) fn send_failed(
    ctx: &RouteCtx,
    oversize: &Throttle,
    socket: &StdUdpSocket,
    peer: SocketAddr,
    len: usize,
    header: usize,
    e: &io::Error,
) {
    RouteStats::add(&ctx.stats.dropped, 1);
    if e.raw_os_error() != Some(libc::EMSGSIZE) {
        trace!(protocol = "udp", listen = %ctx.listen, %peer, action = "send", error = %e, "datagram to target dropped");
        return;
    }
    let Some(dropped) = oversize.hit() else { return };
    let ipv6 = socket.peer_addr().is_ok_and(|dst| dst.is_ipv6());
    let max = if ipv6 { MAX_PAYLOAD_V6 } else { MAX_PAYLOAD_V4 } - header;
    let message = if header > 0 {
        format!(
            "datagram of {len} bytes dropped: with the {header}-byte PROXY header the target's socket takes at most {max}"
        )
    } else {
        format!("datagram of {len} bytes dropped: the target's socket takes at most {max}")
    };
    warn!(protocol = "udp", listen = %ctx.listen, %peer, action = "drop", bytes = len, max, dropped, "{message}");
    ctx.stats.set_last_error(message);
}

/// Waits until `socket` may be written to, through a registration with Tokio that lasts
/// only this wait; an error if the route closes first.
async fn writable(socket: &StdUdpSocket, close: &CancellationToken) -> io::Result<()> {
    tokio::select! {
        _ = close.cancelled() => Err(io::Error::other("route closing")),
        ready = epoll::writable(socket.as_fd()) => ready,
    }
}
