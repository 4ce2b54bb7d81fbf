//! Socket options the load tool sets on its own sockets (never on a proxy's).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockRef, Socket, Type};

/// Receive and send buffers of 4 MiB (capped by net.core.rmem_max/wmem_max), so bursts are
/// absorbed by the load tool and any loss counted happened in the proxy under test.
pub fn big_buffers<S: std::os::fd::AsFd>(sock: &S) {
    let s = SockRef::from(sock);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

/// A tokio listener with SO_REUSEADDR and a deep backlog.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    tokio::net::TcpListener::from_std(s.into())
}
