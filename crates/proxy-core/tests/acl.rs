//! Access control end to end: who gets in on TCP and UDP routes, per route and table-wide,
//! and that a refused client never costs a dial.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use proxy_core::{Acl, ConnInfo, Hooks, IpNet, Protocol, RouteOptions, RouteSpec, RouteTable, StatsSnapshot, Target};
use tokio::net::{TcpStream, UdpSocket};

/// Networks from text, as the `allow`/`deny` fields write them.
fn nets(text: &str) -> Vec<IpNet> {
    route_spec::nets::parse_nets(text).expect("test networks")
}

/// Options with `allow` and `deny` set.
fn acl_options(allow: &str, deny: &str) -> RouteOptions {
    RouteOptions { allow: nets(allow), deny: nets(deny), ..RouteOptions::default() }
}

fn stats(table: &RouteTable, alias: &str) -> StatsSnapshot {
    status_of(table, alias).stats
}

/// A pre-dial hook that only counts its calls.
fn counting_hook() -> (Hooks, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let hooks = Hooks::pre_dial(move |_: &ConnInfo<'_>| {
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    (hooks, calls)
}

#[tokio::test]
async fn a_denied_tcp_client_is_closed_before_anything_is_dialled() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let (hooks, hook_calls) = counting_hook();
    let spec = tcp_route("guarded", echo.addr).with_options(acl_options("", "127.0.0.1")).with_hooks(hooks);
    let addr = apply_one(&table, spec).await;

    let mut client = TcpStream::connect(addr).await.expect("the kernel completes the handshake");
    expect_closed(&mut client).await;

    let s = stats(&table, "guarded");
    assert_eq!((s.denied, s.total, s.active, s.rejected, s.dial_errors), (1, 0, 0, 0, 0));
    assert_eq!(echo.accepted(), 0, "nothing may be dialled for a denied client");
    assert_eq!(hook_calls.load(Ordering::SeqCst), 0, "the pre-dial hook is not even asked");
    table.shutdown().await;
}

#[tokio::test]
async fn an_allow_list_admits_its_networks_only_and_deny_wins_over_it() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("lan", echo.addr).with_options(acl_options("10.0.0.0/8", ""))).await;
    let mut outsider = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut outsider).await;
    assert_eq!(stats(&table, "lan").denied, 1);

    // Loopback allowed, but this very address denied: deny wins.
    let spec = tcp_route("lan", echo.addr).with_options(acl_options("127.0.0.0/8", "127.0.0.1"));
    let report = table.apply(vec![spec]).await;
    assert_eq!(report.updated.len(), 1, "an ACL change is an update in place: {report:?}");
    let mut denied = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut denied).await;
    assert_eq!(stats(&table, "lan").denied, 2);

    let spec = tcp_route("lan", echo.addr).with_options(acl_options("127.0.0.0/8", "127.0.0.2"));
    table.apply(vec![spec]).await;
    let mut admitted = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut admitted, b"inside").await;
    assert_eq!(echo.accepted(), 1, "only the admitted client was dialled");
    table.shutdown().await;
}

#[tokio::test]
async fn an_acl_update_keeps_the_listener_and_the_connections_already_admitted() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("svc", echo.addr)).await;
    let mut before = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut before, b"one").await;

    let report = table.apply(vec![tcp_route("svc", echo.addr).with_options(acl_options("", "127.0.0.0/8"))]).await;
    assert_eq!(report.updated.len(), 1, "{report:?}");
    assert_eq!(bound_of(&table, "svc"), addr, "the listener stays bound");
    let mut after = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut after).await;
    echo_once(&mut before, b"still admitted").await;
    let s = stats(&table, "svc");
    assert_eq!((s.denied, s.active), (1, 1));
    table.shutdown().await;
}

#[tokio::test]
async fn an_ipv4_mapped_client_is_judged_as_ipv4() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    // An IPv6 listener on the IPv4-mapped loopback address: IPv4 clients reach it and are
    // reported as ::ffff:127.0.0.1, as they are on a dual-stack [::] listener.
    let listen = SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 0);
    let deny = RouteSpec::new("mapped-deny", Protocol::Tcp, listen, vec![echo.target()])
        .with_options(acl_options("", "127.0.0.1"));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let record = Hooks::pre_dial(move |info: &ConnInfo<'_>| {
        log.lock().expect("lock").push(info.peer.ip());
        Ok(())
    });
    let allow = RouteSpec::new("mapped-allow", Protocol::Tcp, listen, vec![echo.target()])
        .with_options(acl_options("127.0.0.1/32", ""))
        .with_hooks(record);
    let report = table.apply(vec![deny, allow]).await;
    assert!(report.failed.is_empty(), "binding ::ffff:127.0.0.1: {report:?}");

    let denied_port = bound_of(&table, "mapped-deny").port();
    let mut client = TcpStream::connect(("127.0.0.1", denied_port)).await.expect("connect");
    expect_closed(&mut client).await;
    assert_eq!(stats(&table, "mapped-deny").denied, 1);

    let allowed_port = bound_of(&table, "mapped-allow").port();
    let mut client = TcpStream::connect(("127.0.0.1", allowed_port)).await.expect("connect");
    echo_once(&mut client, b"mapped").await;
    assert_eq!(stats(&table, "mapped-allow").denied, 0);
    let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    assert_eq!(*seen.lock().expect("lock"), vec![mapped], "the socket reported the client as IPv4-mapped");
    assert_eq!(echo.accepted(), 1);
    table.shutdown().await;
}

#[tokio::test]
async fn the_global_acl_applies_to_every_route_besides_its_own() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::with_global_acl(Acl::new(vec![], nets("127.0.0.1")));
    assert_eq!(table.global_acl().deny(), nets("127.0.0.1").as_slice());
    let addr = apply_one(&table, tcp_route("svc", echo.addr)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut client).await;
    assert_eq!(stats(&table, "svc").denied, 1);

    // Lifted for new clients of the running route, with no apply.
    assert!(table.set_global_acl(Acl::open()));
    assert!(!table.set_global_acl(Acl::open()), "setting the same ACL changes nothing");
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"open").await;

    // Both must admit: the route allows loopback, the global allow list does not.
    table.apply(vec![tcp_route("svc", echo.addr).with_options(acl_options("127.0.0.0/8", ""))]).await;
    table.set_global_acl(Acl::new(nets("10.0.0.0/8"), vec![]));
    let mut client = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut client).await;
    // A route started later gets the global ACL too.
    let later = tcp_route("later", echo.addr);
    table.apply(vec![tcp_route("svc", echo.addr).with_options(acl_options("127.0.0.0/8", "")), later]).await;
    let mut client = TcpStream::connect(bound_of(&table, "later")).await.expect("connect");
    expect_closed(&mut client).await;
    assert_eq!((stats(&table, "svc").denied, stats(&table, "later").denied), (2, 1));
    assert_eq!(echo.accepted(), 1);
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

/// A UDP echo target that counts what it receives.
struct UdpEcho {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn udp_echo() -> UdpEcho {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind the target");
    let addr = socket.local_addr().expect("target address");
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    UdpEcho { addr, received, task }
}

fn udp_route(alias: &str, target: SocketAddr, options: RouteOptions) -> RouteSpec {
    RouteSpec::new(alias, Protocol::Udp, SocketAddr::new(LOCALHOST, 0), vec![Target::new("127.0.0.1", target.port())])
        .with_options(options)
}

async fn roundtrip(socket: &UdpSocket, proxy: SocketAddr, payload: &[u8]) -> Vec<u8> {
    socket.send_to(payload, proxy).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    let n = within("a reply", socket.recv(&mut buf)).await.expect("recv");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn a_denied_datagram_is_dropped_and_opens_no_session() {
    init_tracing();
    let target = udp_echo().await;
    let table = RouteTable::new();
    let (hooks, hook_calls) = counting_hook();
    let spec = udp_route("dns", target.addr, acl_options("", "127.0.0.1")).with_hooks(hooks);
    let proxy = apply_one(&table, spec).await;
    let client = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");

    for _ in 0..3 {
        client.send_to(b"query", proxy).await.expect("send");
    }
    eventually("the three datagrams are refused", || stats(&table, "dns").denied == 3).await;
    let s = stats(&table, "dns");
    assert_eq!((s.total, s.active, s.dropped, s.datagrams_in), (0, 0, 3, 0));
    assert_eq!(target.received.load(Ordering::SeqCst), 0, "nothing reaches the target");
    assert_eq!(hook_calls.load(Ordering::SeqCst), 0);

    // Lifted by an update in place: the next datagram opens a session.
    let report = table.apply(vec![udp_route("dns", target.addr, RouteOptions::default())]).await;
    assert_eq!(report.updated.len(), 1, "{report:?}");
    assert_eq!(roundtrip(&client, proxy, b"now").await, b"now");
    let s = stats(&table, "dns");
    assert_eq!((s.total, s.denied), (1, 3));
    table.shutdown().await;
}

#[tokio::test]
async fn an_admitted_udp_session_outlives_a_later_deny_but_new_clients_do_not_get_in() {
    init_tracing();
    let target = udp_echo().await;
    let table = RouteTable::new();
    let proxy = apply_one(&table, udp_route("dns", target.addr, acl_options("127.0.0.0/8", ""))).await;
    let admitted = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    assert_eq!(roundtrip(&admitted, proxy, b"first").await, b"first");

    table.apply(vec![udp_route("dns", target.addr, acl_options("", "127.0.0.0/8"))]).await;
    let newcomer = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    newcomer.send_to(b"let me in", proxy).await.expect("send");
    eventually("the newcomer is refused", || stats(&table, "dns").denied == 1).await;
    assert_eq!(roundtrip(&admitted, proxy, b"second").await, b"second", "the open session is not judged again");
    let s = stats(&table, "dns");
    assert_eq!((s.total, s.active, s.denied), (1, 1, 1));
    assert_eq!(target.received.load(Ordering::SeqCst), 2);
    table.shutdown().await;
}

#[tokio::test]
async fn the_global_acl_refuses_udp_clients_too() {
    init_tracing();
    let target = udp_echo().await;
    let table = RouteTable::with_global_acl(Acl::new(nets("10.0.0.0/8"), vec![]));
    let proxy = apply_one(&table, udp_route("dns", target.addr, RouteOptions::default())).await;
    let client = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    client.send_to(b"query", proxy).await.expect("send");
    eventually("the datagram is refused", || stats(&table, "dns").denied == 1).await;
    assert_eq!(stats(&table, "dns").total, 0);
    table.shutdown().await;
}
