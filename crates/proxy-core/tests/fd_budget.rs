//! One sender spraying UDP routes from thousands of (spoofable) source addresses cannot take
//! every descriptor: sessions draw from a process-wide budget that keeps a reserve, so TCP
//! accepts and opening files go on working while new UDP sessions are refused.
//!
//! The scenario lowers RLIMIT_NOFILE, reads the budget from it and counts the process's
//! descriptors, so it runs alone in a child process (see `common::child`).
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};

use common::child::{in_child, open_fds};
use common::*;
use proxy_core::fd_budget::{FdBudget, Oversubscribed};
use proxy_core::{Protocol, RouteOptions, RouteSpec, RouteTable, Target};
use tokio::net::{TcpStream, UdpSocket};

/// The soft RLIMIT_NOFILE of the child: a budget of 768 sessions, a reserve of 256.
const LIMIT: u64 = 1024;
/// The cap of the route filled first.
const FULL_CAP: usize = 500;
/// Source addresses spraying the second route: far more than the budget.
const SPRAY: usize = 3_000;
/// Datagrams sent before waiting for the route to have handled them all (the listening
/// socket's receive buffer holds far more).
const PACE: usize = 50;

#[test]
fn spoofed_sources_on_udp_routes_cannot_exhaust_descriptors_and_tcp_still_accepts() {
    if !in_child("spoofed_sources_on_udp_routes_cannot_exhaust_descriptors_and_tcp_still_accepts") {
        return;
    }
    set_nofile_limit(LIMIT);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        if tokio::time::timeout(DEADLINE * 3, scenario()).await.is_err() {
            panic!("the descriptor budget scenario did not finish within {:?}", DEADLINE * 3);
        }
    });
}

async fn scenario() {
    let budget = FdBudget::global();
    assert_eq!((budget.limit(), budget.capacity()), (LIMIT, 768), "the budget follows the lowered limit");

    let upstream = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind the UDP target");
    let target = upstream.local_addr().expect("the UDP target's address");
    let echo = echo_server();
    let table = RouteTable::new();
    let full_options = RouteOptions { max_udp_sessions: FULL_CAP as u32, ..RouteOptions::default() };
    // One apply: the table's desired set is all three.
    let report = table
        .apply(vec![
            udp_route("full", target).with_options(full_options),
            udp_route("spray", target),
            tcp_route("tcp", echo.addr),
        ])
        .await;
    assert!(report.failed.is_empty(), "routes failed to start: {:?}", report.failed);
    let (full, spray, tcp) = (bound_of(&table, "full"), bound_of(&table, "spray"), bound_of(&table, "tcp"));
    // 500 + the default 16,384: the caps add up to more than the budget (registered as
    // the routes' tasks start).
    let oversubscribed = Some(Oversubscribed { caps: 500 + 16_384, capacity: 768, limit: LIMIT });
    eventually("both UDP routes registered their caps", || budget.oversubscribed() == oversubscribed).await;

    // One route at its cap.
    let mut most_fds = open_fds();
    for i in 0..FULL_CAP {
        send_from(source(i), full);
        if (i + 1) % PACE == 0 {
            eventually("the full route opened its sessions", || status_of(&table, "full").stats.active == i as u64 + 1)
                .await;
            most_fds = most_fds.max(open_fds());
        }
    }
    assert_eq!(budget.in_use(), FULL_CAP);

    // Then one datagram each from thousands of sources to the other route.
    for i in 0..SPRAY {
        send_from(source(FULL_CAP + i), spray);
        if (i + 1) % PACE == 0 || i + 1 == SPRAY {
            let handled = |t: &RouteTable| {
                let s = status_of(t, "spray").stats;
                s.active + s.rejected + s.dial_errors
            };
            eventually("the spraying route handled every datagram", || handled(&table) == i as u64 + 1).await;
            most_fds = most_fds.max(open_fds());
        }
    }
    let s = status_of(&table, "spray").stats;
    let room = (768 - FULL_CAP) as u64;
    assert_eq!(
        (s.active, s.rejected, s.dropped, s.dial_errors),
        (room, SPRAY as u64 - room, SPRAY as u64 - room, 0),
        "sessions up to the budget, the rest refused and counted"
    );
    assert!(
        s.last_error.as_deref().is_some_and(|e| e.contains("all 768 descriptors of the session budget are in use")),
        "the refusal is the route's last error: {:?}",
        s.last_error
    );
    assert_eq!(budget.in_use(), 768);
    println!("at most {most_fds} descriptors open under a limit of {LIMIT}");
    assert!(
        most_fds + (FdBudget::reserve_for(LIMIT) as usize) / 2 < LIMIT as usize,
        "{most_fds} descriptors open at most: the reserve must stay free under a {LIMIT} limit"
    );

    // The reserve is there: files open, and the TCP route accepts and forwards.
    let file = File::open("/proc/self/status").expect("a file can still be opened");
    let mut stream = within("a TCP connect", TcpStream::connect(tcp)).await.expect("connect to the TCP route");
    echo_once(&mut stream, b"still accepting").await;
    assert_eq!(status_of(&table, "tcp").stats.total, 1);
    drop((file, stream));

    // A route at its own cap still serves a new client: it evicts its least recently used
    // session and reuses that descriptor, however spent the budget is.
    let client = StdUdpSocket::bind(SocketAddr::new(source(FULL_CAP + SPRAY).into(), 0)).expect("bind a client");
    client.send_to(b"new", full).expect("send");
    eventually("the full route evicted one to make room", || status_of(&table, "full").stats.evicted == 1).await;
    let s = status_of(&table, "full").stats;
    assert_eq!((s.active, s.total, s.rejected), (FULL_CAP as u64, FULL_CAP as u64 + 1, 0));

    table.shutdown().await;
    assert_eq!(budget.in_use(), 0, "every session gave its descriptor back");
}

/// A UDP route on loopback to `target`.
fn udp_route(alias: &str, target: SocketAddr) -> RouteSpec {
    RouteSpec::new(alias, Protocol::Udp, SocketAddr::new(LOCALHOST, 0), vec![Target::new("127.0.0.1", target.port())])
}

/// Source address number `i`: 127.2.x.y, one per sender.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// One datagram from `from` (a fresh socket, closed at once) to `to`.
fn send_from(from: Ipv4Addr, to: SocketAddr) {
    let socket = StdUdpSocket::bind((from, 0)).expect("bind a sender");
    socket.send_to(b"hello", to).expect("send");
}

/// Lowers the soft RLIMIT_NOFILE to `limit` (at most the hard limit).
fn set_nofile_limit(limit: u64) {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `current` is a valid, writable rlimit for getrlimit to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    assert!(current.rlim_max >= limit, "the hard limit {} is below {limit}", current.rlim_max);
    let lowered = libc::rlimit { rlim_cur: limit, rlim_max: current.rlim_max };
    // SAFETY: `lowered` is a valid rlimit read by setrlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}
