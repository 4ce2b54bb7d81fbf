//! Per-client limits end to end: `max_connections_per_ip` and `rate_limit` turn a client
//! away at accept (TCP, before any dial) or drop its datagram without a session (UDP),
//! count it as `limited` and log it; and a flood of distinct sources keeps the per-client
//! table under its cap.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use proxy_core::client_limits::TABLE_CAP;
use proxy_core::{AccessLog, Outcome, Protocol, Rate, RouteOptions, RouteSpec, RouteTable, Target};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind a loopback source");
    within("connect", socket.connect(addr)).await.expect("the kernel completes the handshake")
}

fn rate(text: &str) -> Option<Rate> {
    Some(text.parse().expect("a test rate"))
}

#[tokio::test]
async fn a_client_at_max_connections_per_ip_is_closed_at_accept_before_any_dial() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let (log, mut events) = AccessLog::channel(64);
    table.set_access_log(Some(log));
    let options = RouteOptions { max_connections_per_ip: 2, ..RouteOptions::default() };
    let addr = apply_one(&table, tcp_route("ssh", echo.addr).with_options(options)).await;

    let me = Ipv4Addr::new(127, 0, 0, 1);
    let mut first = connect_from(me, addr).await;
    let mut second = connect_from(me, addr).await;
    echo_once(&mut first, b"1").await;
    echo_once(&mut second, b"2").await;
    let mut third = connect_from(me, addr).await;
    expect_closed(&mut third).await;
    assert_eq!(echo.accepted(), 2, "the limited client was never dialled");
    let limited = within("the limited event", events.recv()).await.expect("an event");
    assert_eq!(
        (limited.outcome, limited.error.as_deref()),
        (Outcome::Limited, Some("max_connections_per_ip 2 reached"))
    );

    // Another client is not affected; and once one of ours closes, we get in again.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    echo_once(&mut other, b"other").await;
    drop(first);
    eventually("the closed connection is given back", || status_of(&table, "ssh").stats.active == 2).await;
    let mut again = connect_from(me, addr).await;
    echo_once(&mut again, b"again").await;
    let s = status_of(&table, "ssh").stats;
    assert_eq!((s.limited, s.total), (1, 4));
    table.shutdown().await;
}

#[tokio::test]
async fn new_connections_beyond_the_burst_are_limited_per_client() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let options = RouteOptions { rate_limit: rate("1/m"), rate_limit_burst: 3, ..RouteOptions::default() };
    let addr = apply_one(&table, tcp_route("ssh", echo.addr).with_options(options)).await;
    let me = Ipv4Addr::new(127, 0, 0, 5);
    for _ in 0..3 {
        let mut client = connect_from(me, addr).await;
        echo_once(&mut client, b"ok").await;
    }
    let mut fourth = connect_from(me, addr).await;
    expect_closed(&mut fourth).await;
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 6), addr).await;
    echo_once(&mut other, b"other").await;
    let s = status_of(&table, "ssh").stats;
    assert_eq!((s.limited, s.total, echo.accepted()), (1, 4, 4));
    table.shutdown().await;
}

/// A UDP route to `target`.
fn udp_route(alias: &str, target: SocketAddr, options: RouteOptions) -> RouteSpec {
    RouteSpec::new(
        alias,
        Protocol::Udp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new(target.ip().to_string(), target.port())],
    )
    .with_options(options)
}

#[tokio::test]
async fn a_udp_client_over_its_rate_is_dropped_without_opening_a_session() {
    init_tracing();
    let target = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind target");
    let table = RouteTable::new();
    let options = RouteOptions { rate_limit: rate("1/m"), ..RouteOptions::default() };
    let addr = apply_one(&table, udp_route("dns", target.local_addr().expect("addr"), options)).await;

    let first = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        // Datagrams of an open session are not new sessions: all pass.
        first.send_to(b"q", addr).await.expect("send");
        within("a datagram at the target", target.recv_from(&mut buf)).await.expect("recv");
    }
    // A second socket of the same client IP would open a second session: over the rate.
    let second = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    second.send_to(b"q", addr).await.expect("send");
    eventually("the datagram is limited", || status_of(&table, "dns").stats.limited == 1).await;
    let s = status_of(&table, "dns").stats;
    assert_eq!((s.total, s.active, s.datagrams_in), (1, 1, 3));
    table.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_100000_distinct_udp_sources_keeps_the_client_table_under_its_cap() {
    init_tracing();
    let target = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind target");
    let table = RouteTable::new();
    let options =
        RouteOptions { rate_limit: rate("1/m"), rate_limit_burst: 1, max_udp_sessions: 64, ..RouteOptions::default() };
    let spec = udp_route("flood", target.local_addr().expect("addr"), options);
    let id = spec.id();
    let addr = apply_one(&table, spec).await;

    const SOURCES: u32 = 100_000;
    const CHUNK: u32 = 100;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut largest = 0;
    let mut sent = 0u32;
    while sent < SOURCES {
        // CHUNK sources, each its own address in 127.1.0.0/16 + and its own port.
        for i in sent..sent + CHUNK {
            let ip = Ipv4Addr::from(0x7f01_0000 + i);
            let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind a loopback source");
            socket.send_to(b"x", addr).expect("send");
        }
        sent += CHUNK;
        // Every datagram opens a session (each source's first) or is limited; wait until
        // the route has handled the chunk, so the receive buffer never overflows.
        loop {
            let s = status_of(&table, "flood").stats;
            if s.total + s.limited + s.dropped >= u64::from(sent) {
                break;
            }
            assert!(tokio::time::Instant::now() < give_up, "the flood took too long: {sent} sent, {s:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let tracked = table.tracked_clients(&id).expect("the route serves");
        largest = largest.max(tracked);
    }
    let s = status_of(&table, "flood").stats;
    assert!(s.total >= u64::from(SOURCES) * 9 / 10, "most sources were handled: {s:?}");
    assert!(largest <= TABLE_CAP, "the table grew to {largest}, over its cap of {TABLE_CAP}");
    assert!(largest > TABLE_CAP / 2, "the flood filled the table ({largest}), so pruning was exercised");
    table.shutdown().await;
}

/// A connection to `addr` that opens with a PROXY v1 header naming `source` as the client.
async fn connect_as(source: &str, addr: SocketAddr) -> TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr).await;
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if source.contains(':') { "2001:db8:ffff::1" } else { "198.51.100.1" };
    let header = format!("PROXY {family} {source} {destination} 40000 443\r\n");
    stream.write_all(header.as_bytes()).await.expect("write the header");
    stream
}

#[tokio::test]
async fn limits_count_the_client_a_trusted_proxy_header_names_and_group_ipv6_by_prefix() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let options = RouteOptions {
        max_connections_per_ip: 1,
        accept_proxy_protocol: Some(route_spec::AcceptProxy::Required),
        trusted: route_spec::nets::parse_nets("127.0.0.0/8").expect("nets"),
        ..RouteOptions::default()
    };
    assert_eq!(options.client_ipv6_prefix, 64, "the documented default");
    let addr = apply_one(&table, tcp_route("ssh", echo.addr).with_options(options)).await;

    // All from 127.0.0.1, but three clients by their headers: each gets its one connection.
    let mut a = connect_as("203.0.113.7", addr).await;
    let mut b = connect_as("203.0.113.8", addr).await;
    let mut v6 = connect_as("2001:db8:0:1::1", addr).await;
    echo_once(&mut a, b"a").await;
    echo_once(&mut b, b"b").await;
    echo_once(&mut v6, b"v6").await;
    // The same client again: over its limit, whatever the socket's address says.
    let mut a_again = connect_as("203.0.113.7", addr).await;
    expect_closed(&mut a_again).await;
    // Another address of the same /64 is the same client; another /64 is not.
    let mut same_64 = connect_as("2001:db8:0:1::ffff", addr).await;
    expect_closed(&mut same_64).await;
    let mut other_64 = connect_as("2001:db8:0:2::1", addr).await;
    echo_once(&mut other_64, b"other /64").await;
    let s = status_of(&table, "ssh").stats;
    assert_eq!(s.limited, 2);
    assert_eq!(echo.accepted(), 4, "limited clients were never dialled");
    table.shutdown().await;
}

#[tokio::test]
async fn an_ipv6_client_over_loopback_is_limited_too() {
    init_tracing();
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("SKIP an_ipv6_client_over_loopback_is_limited_too: no IPv6 loopback on this host");
        return;
    };
    drop(probe);
    let echo = echo_server();
    let table = RouteTable::new();
    let options = RouteOptions { max_connections_per_ip: 1, ..RouteOptions::default() };
    let route = RouteSpec::new(
        "ssh",
        Protocol::Tcp,
        "[::1]:0".parse().expect("addr"),
        vec![Target::new("127.0.0.1", echo.addr.port())],
    )
    .with_options(options);
    let addr = apply_one(&table, route).await;
    let mut first = within("connect", TcpStream::connect(addr)).await.expect("connect over ::1");
    echo_once(&mut first, b"1").await;
    let mut second = within("connect", TcpStream::connect(addr)).await.expect("connect over ::1");
    expect_closed(&mut second).await;
    assert_eq!(status_of(&table, "ssh").stats.limited, 1);
    table.shutdown().await;
}
