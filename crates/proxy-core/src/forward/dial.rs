//! Resolving targets at dial time and connecting to the one the route's strategy picks,
//! moving on to the next when it does not answer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::FutureExt;
use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpStream, lookup_host};
use tokio::time::Instant;

use crate::balance::{Lease, TargetSet, Try};
use crate::error::DialError;
use route_spec::Target;

/// Targets as written, for the `dst` log field: `db:5432,10.0.0.2:5432`.
pub(crate) fn display_targets(targets: &[Target]) -> String {
    targets.iter().map(Target::to_string).collect::<Vec<_>>().join(",")
}

/// The addresses of a target: the literal itself, or a fresh DNS answer.
pub(crate) async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, DialError> {
    if let Some(addr) = target.ip_addr() {
        return Ok(vec![addr]);
    }
    let addrs: Vec<SocketAddr> = lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| DialError::Resolve { target: target.clone(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(DialError::NoAddress { target: target.clone() });
    }
    Ok(addrs)
}

/// Connects to one target: the first of its addresses that accepts.
///
/// `timeout` bounds each step on its own: resolving the name, and connecting to one of its
/// addresses. A resolver that hangs therefore costs one timeout, not the client.
pub(crate) async fn tcp_target(target: &Target, timeout: Duration) -> Result<(TcpStream, SocketAddr), DialError> {
    let addrs = match tokio::time::timeout(timeout, resolve(target)).await {
        Ok(resolved) => resolved?,
        Err(_) => return Err(DialError::Timeout { target: target.clone(), timeout }),
    };
    let mut last = None;
    for addr in addrs {
        match connect(addr, timeout).await {
            Ok(Some(stream)) => return Ok((stream, addr)),
            Ok(None) => last = Some(DialError::Timeout { target: target.clone(), timeout }),
            Err(source) => last = Some(DialError::Connect { target: target.clone(), addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| DialError::NoAddress { target: target.clone() }))
}

/// Connects to `addr`, with `TCP_NODELAY` set before the handshake.
///
/// The outcome is read from the readiness the kernel reports, not asked for with
/// `getsockopt(SO_ERROR)`: a failed connect reports an error or hang-up (then, and only
/// then, the error is fetched), a successful one only writable. One system call less per
/// connection than `TcpStream::connect`, and one less again for setting `TCP_NODELAY` later.
///
/// `None` when `timeout` passed first. The timer is armed only when the handshake is not
/// over after one pass of the runtime's I/O driver: on loopback (and any fast path) it is,
/// and arming the earliest timer costs a wake-up of the driver (an eventfd write) per dial.
async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Option<TcpStream>> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    // Small writes (a request, a reply) leave at once, as the client's did.
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let interest = Interest::WRITABLE | Interest::ERROR;
    // Woken again once the driver has run: the handshake's outcome is known by then if it
    // is over.
    tokio::task::yield_now().await;
    let ready = match stream.ready(interest).now_or_never() {
        Some(ready) => ready?,
        None => match tokio::time::timeout(timeout, stream.ready(interest)).await {
            Ok(ready) => ready?,
            Err(_) => return Ok(None),
        },
    };
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| io::ErrorKind::ConnectionRefused.into()));
    }
    Ok(Some(stream))
}

/// Whether a dial failed on this host rather than at the target: out of descriptors, socket
/// buffers, memory or local ports. Such a failure says nothing about the target, so it
/// never marks one down (and trying the next target would fail the same way).
pub(crate) fn is_local(e: &DialError) -> bool {
    let DialError::Connect { source, .. } = e else { return false };
    matches!(
        source.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Connects a client from `client` to a target of `set`: the strategy's pick first, then
/// the next healthy ones, then (everything having failed) those marked down. Each failure
/// marks its target down; a success marks it up. The error is the last failure seen.
///
/// A local failure ([`is_local`]) marks nothing down and ends the dial at once.
///
/// The [`Lease`] counts the connection on its target for as long as it is held.
pub(crate) async fn tcp(
    set: &TargetSet,
    client: IpAddr,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr, Lease), DialError> {
    let mut last = None;
    // Targets due for a probe that another connection is probing: tried last.
    let mut deferred = Vec::new();
    for (index, how) in set.plan(client, Instant::now(), true) {
        let member = &set.members()[index];
        let claim = match how {
            Try::Probe => match member.claim_probe() {
                Some(claim) => Some(claim),
                None => {
                    deferred.push(index);
                    continue;
                }
            },
            Try::Healthy | Try::Fallback => None,
        };
        match tcp_target(member.target(), timeout).await {
            Ok((stream, addr)) => {
                set.succeeded(member);
                return Ok((stream, addr, Lease::new(member.clone())));
            }
            Err(e) if is_local(&e) => return Err(e),
            Err(e) => {
                set.failed(member, &e.to_string(), claim.is_some());
                last = Some(e);
            }
        }
    }
    for index in deferred {
        let member = &set.members()[index];
        match tcp_target(member.target(), timeout).await {
            Ok((stream, addr)) => {
                set.succeeded(member);
                return Ok((stream, addr, Lease::new(member.clone())));
            }
            Err(e) if is_local(&e) => return Err(e),
            Err(e) => {
                set.failed(member, &e.to_string(), false);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::Refused("route has no target".into())))
}

/// A UDP socket connected to the target of `set` picked for a client from `client` (the
/// next one if its name does not resolve), with the lease counting the session on it.
///
/// The socket is a plain non-blocking one, not registered with Tokio: the UDP forwarder
/// watches it through its own epoll instance.
///
/// A UDP "connect" sends nothing, so a dial cannot tell a live target from a dead one:
/// only a name that does not resolve marks a target down here.
pub(crate) async fn udp(
    set: &TargetSet,
    client: IpAddr,
) -> Result<(std::net::UdpSocket, SocketAddr, Lease), DialError> {
    let mut last = None;
    for (index, _) in set.plan(client, Instant::now(), false) {
        let member = &set.members()[index];
        let addrs = match resolve(member.target()).await {
            Ok(addrs) => addrs,
            Err(e) => {
                set.failed(member, &e.to_string(), false);
                last = Some(e);
                continue;
            }
        };
        for addr in addrs {
            match udp_connect(addr) {
                Ok(socket) => return Ok((socket, addr, Lease::new(member.clone()))),
                // A local failure (no socket left): not the target's fault.
                Err(source) => last = Some(DialError::Connect { target: member.target().clone(), addr, source }),
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::Refused("route has no target".into())))
}

/// A non-blocking, close-on-exec UDP socket of `addr`'s family connected to it (which
/// binds it to an OS-picked port).
fn udp_connect(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}
