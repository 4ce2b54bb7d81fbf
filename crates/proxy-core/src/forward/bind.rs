//! Binding listeners with the family constraint applied.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use route_spec::Family;

/// Listen backlog asked of the OS (capped by `net.core.somaxconn`): a burst of clients
/// queues instead of being refused while the accept loop catches up.
const BACKLOG: i32 = 4096;

/// A non-blocking socket of `addr`'s family, with `IPV6_V6ONLY` set from `family`.
fn socket_for(addr: SocketAddr, family: Family, ty: Type) -> io::Result<Socket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, ty, None)?;
    if addr.is_ipv6() {
        // tcp6/udp6 never take IPv4-mapped clients; plain tcp/udp on [::] are dual-stack.
        socket.set_only_v6(family == Family::V6)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds a TCP listener. `SO_REUSEADDR` lets a removed route's port be taken again at once
/// even while its old connections linger in TIME_WAIT. `TCP_NODELAY` is set here because
/// Linux copies it to every accepted socket: one system call per route instead of one per
/// connection.
pub(crate) fn tcp(addr: SocketAddr, family: Family) -> io::Result<TcpListener> {
    let socket = socket_for(addr, family, Type::STREAM)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds the listening UDP socket of a route.
pub(crate) fn udp(addr: SocketAddr, family: Family) -> io::Result<UdpSocket> {
    let socket = socket_for(addr, family, Type::DGRAM)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
