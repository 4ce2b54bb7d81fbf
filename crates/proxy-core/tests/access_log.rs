//! The access log end to end: one event per TCP connection and UDP session as it ends,
//! with its outcome, counts and client; refused clients too; and a full queue never stalls
//! traffic.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use proxy_core::{AccessEvent, AccessLog, Outcome, Protocol, RouteOptions, RouteSpec, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// A table whose access log queues up to `capacity` events, and the queue's reading end.
fn logged_table(capacity: usize) -> (RouteTable, AccessLog, mpsc::Receiver<AccessEvent>) {
    let table = RouteTable::new();
    let (log, rx) = AccessLog::channel(capacity);
    table.set_access_log(Some(log.clone()));
    (table, log, rx)
}

/// The next event, within the deadline.
async fn next(rx: &mut mpsc::Receiver<AccessEvent>) -> AccessEvent {
    within("an access-log event", rx.recv()).await.expect("the table holds a sender")
}

#[tokio::test]
async fn a_tcp_connection_ends_with_one_event_carrying_its_bytes() {
    init_tracing();
    let echo = echo_server();
    let (table, _log, mut rx) = logged_table(16);
    let addr = apply_one(&table, tcp_route("web", echo.addr)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let me = client.local_addr().expect("local_addr");
    echo_once(&mut client, b"hello, access log").await;
    client.shutdown().await.expect("FIN");
    let mut rest = Vec::new();
    within("the proxy's FIN", client.read_to_end(&mut rest)).await.expect("read");

    let event = next(&mut rx).await;
    assert_eq!((&*event.alias, event.protocol, event.listen), ("web", Protocol::Tcp, addr));
    assert_eq!((event.client, event.target), (me, Some(echo.addr)));
    assert_eq!((event.bytes_in, event.bytes_out), (17, 17));
    assert_eq!((event.outcome, event.error.as_deref()), (Outcome::Closed, None));
    assert!(rx.try_recv().is_err(), "one event per connection");
    table.shutdown().await;
}

#[tokio::test]
async fn refused_and_failed_tcp_clients_are_logged_with_their_reason() {
    init_tracing();
    let (table, _log, mut rx) = logged_table(16);
    let echo = echo_server();
    let options = RouteOptions { deny: route_spec::nets::parse_nets("127.0.0.1").unwrap(), ..RouteOptions::default() };
    let denied = tcp_route("denied", echo.addr).with_options(options);
    let dead = tcp_route("dead", refused_addr());
    table.apply(vec![denied, dead]).await;

    let mut client = TcpStream::connect(bound_of(&table, "denied")).await.expect("connect");
    expect_closed(&mut client).await;
    let event = next(&mut rx).await;
    assert_eq!((&*event.alias, event.outcome, event.target), ("denied", Outcome::Denied, None));
    assert_eq!(event.error.as_deref(), Some("route ACL: in deny list"), "{event:?}");

    let mut client = TcpStream::connect(bound_of(&table, "dead")).await.expect("connect");
    expect_closed(&mut client).await;
    let event = next(&mut rx).await;
    assert_eq!((&*event.alias, event.outcome), ("dead", Outcome::DialError));
    assert!(event.error.is_some_and(|e| !e.is_empty()));
    table.shutdown().await;
}

#[tokio::test]
async fn open_connections_are_logged_as_drained_when_the_route_stops() {
    init_tracing();
    let echo = echo_server();
    let (table, _log, mut rx) = logged_table(16);
    let addr = apply_one(&table, tcp_route("web", echo.addr)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"x").await;
    table.shutdown().await;
    let event = next(&mut rx).await;
    assert_eq!((event.outcome, event.bytes_in, event.bytes_out), (Outcome::Drained, 1, 1));
}

#[tokio::test]
async fn a_udp_session_is_logged_once_when_it_goes_idle_with_its_datagrams() {
    init_tracing();
    let (table, _log, mut rx) = logged_table(16);
    let target = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind target");
    let target_addr = target.local_addr().expect("local_addr");
    let options = RouteOptions { udp_idle_timeout: Duration::from_millis(200), ..RouteOptions::default() };
    let spec = RouteSpec::new(
        "dns",
        Protocol::Udp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new(target_addr.ip().to_string(), target_addr.port())],
    )
    .with_options(options);
    let addr = apply_one(&table, spec).await;

    let client = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    let me = client.local_addr().expect("local_addr");
    let mut buf = [0u8; 64];
    for query in [&b"one"[..], b"two!"] {
        client.send_to(query, addr).await.expect("send");
        let (n, from) = within("the datagram at the target", target.recv_from(&mut buf)).await.expect("recv");
        assert_eq!(&buf[..n], query);
        target.send_to(b"reply", from).await.expect("reply");
        within("the reply", client.recv_from(&mut buf)).await.expect("recv reply");
    }

    let event = next(&mut rx).await;
    assert_eq!((event.protocol, event.client, event.target), (Protocol::Udp, me, Some(target_addr)));
    assert_eq!((event.datagrams_in, event.bytes_in, event.datagrams_out, event.bytes_out), (2, 7, 2, 10));
    assert_eq!(event.outcome, Outcome::IdleTimeout);
    assert!(event.duration >= Duration::from_millis(200), "{:?}", event.duration);
    table.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_lines_and_counts_them_without_stalling_traffic() {
    init_tracing();
    let echo = echo_server();
    // Nobody reads: every event past the first is dropped.
    let (table, log, _rx) = logged_table(1);
    let addr = apply_one(&table, tcp_route("web", echo.addr)).await;
    for _ in 0..20 {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        echo_once(&mut client, b"ping").await;
    }
    eventually("19 lines are counted as dropped", || log.dropped() == 19).await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_route_with_access_log_false_is_left_out() {
    init_tracing();
    let echo = echo_server();
    let (table, _log, mut rx) = logged_table(16);
    let quiet =
        tcp_route("quiet", echo.addr).with_options(RouteOptions { access_log: false, ..RouteOptions::default() });
    table.apply(vec![quiet, tcp_route("loud", echo.addr)]).await;
    for alias in ["quiet", "loud"] {
        let mut client = TcpStream::connect(bound_of(&table, alias)).await.expect("connect");
        echo_once(&mut client, b"x").await;
        client.shutdown().await.expect("FIN");
        let mut rest = Vec::new();
        within("the proxy's FIN", client.read_to_end(&mut rest)).await.expect("read");
    }
    let event = next(&mut rx).await;
    assert_eq!(&*event.alias, "loud", "only the route that logs sends events");
    table.shutdown().await;
    assert!(rx.try_recv().is_err(), "nothing from the quiet route");
}
