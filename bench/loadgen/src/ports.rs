//! Free loopback ports, chosen at run time, and waiting for a proxy to bind them.
//!
//! Ports come from 10000..32767, below Linux's default ephemeral range (32768..60999), so the
//! client sockets of a churn test can never take a port a proxy is about to bind.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LOW: u16 = 10_000;
const HIGH: u16 = 32_767;

/// `n` ports free for both TCP and UDP on 127.0.0.1, all distinct.
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let span = u32::from(HIGH - LOW);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for i in 0..span {
        if ports.len() == n {
            break;
        }
        let port = LOW + ((seed.wrapping_add(i)) % span) as u16;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (Ok(tcp), Ok(udp)) = (TcpListener::bind(addr), UdpSocket::bind(addr)) else { continue };
        held.push((tcp, udp));
        ports.push(port);
    }
    if ports.len() < n {
        return Err(format!("only {} free ports in {LOW}..{HIGH}, wanted {n}", ports.len()));
    }
    Ok(ports)
}

/// Waits until a TCP connect to `addr` succeeds.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Waits until some socket is bound to UDP `addr`'s port, as /proc/net/udp{,6} shows. Reading
/// the table, rather than trying a bind, never takes the port from the proxy about to bind it.
pub fn wait_udp_bound(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if udp_port_bound(addr.port()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn udp_port_bound(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            // "  sl  local_address rem_address ...": the local address is the second column.
            text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).any(|local| local.ends_with(&want))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_udp_port_is_seen_without_binding_it() {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        assert!(wait_udp_bound(addr, Duration::from_secs(1)));
        drop(sock);
        assert!(!udp_port_bound(addr.port()) || UdpSocket::bind(addr).is_err());
    }
}
