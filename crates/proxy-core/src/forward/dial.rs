//! Resolving targets at dial time and connecting to the first that answers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket, lookup_host};

use crate::error::DialError;
use crate::route::Target;

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

/// Connects to the first target (and the first of its addresses) that accepts; the error
/// is the last failure seen.
///
/// `timeout` bounds each step on its own: resolving one target's name, and connecting to one
/// of its addresses. A resolver that hangs therefore costs one timeout, not the client.
pub(crate) async fn tcp(targets: &[Target], timeout: Duration) -> Result<(TcpStream, SocketAddr), DialError> {
    let mut last = None;
    for target in targets {
        let resolved = match tokio::time::timeout(timeout, resolve(target)).await {
            Ok(resolved) => resolved,
            Err(_) => Err(DialError::Timeout { target: target.clone(), timeout }),
        };
        let addrs = match resolved {
            Ok(addrs) => addrs,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(source)) => last = Some(DialError::Connect { target: target.clone(), addr, source }),
                Err(_) => last = Some(DialError::Timeout { target: target.clone(), timeout }),
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::Refused("route has no target".into())))
}

/// A UDP socket connected to the first target that resolves.
pub(crate) async fn udp(targets: &[Target]) -> Result<(UdpSocket, SocketAddr), DialError> {
    let mut last = None;
    for target in targets {
        let addrs = match resolve(target).await {
            Ok(addrs) => addrs,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        for addr in addrs {
            match udp_connect(addr).await {
                Ok(socket) => return Ok((socket, addr)),
                Err(source) => last = Some(DialError::Connect { target: target.clone(), addr, source }),
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::Refused("route has no target".into())))
}

/// An unconnected-then-connected UDP socket of `addr`'s family on an OS-picked port.
async fn udp_connect(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}
