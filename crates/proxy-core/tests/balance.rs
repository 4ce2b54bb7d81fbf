//! Load balancing over several targets, passive and active health, replicas sharing one
//! route, TCP and UDP from one draft, and port ranges; all on loopback.
//!
//! Targets answer every connection (or datagram) with their own name, so each client can
//! tell which target it reached. A failed target's backoff is made long (60 s) for the
//! tests that watch it being skipped, so that it cannot pass by itself on a slow machine,
//! and is then crossed by moving Tokio's clock (`pause(); advance(..); resume()`), never by
//! sleeping.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use proxy_core::{
    Balance, HealthCheck, Protocol, ProviderHealth, RouteOptions, RouteSpec, RouteState, RouteTable, Target, Verdict,
};
use route_spec::RouteDraft;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The backoff of tests that watch a failed target being skipped.
const LONG_BACKOFF: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A TCP listener on `127.0.0.1:port` with `SO_REUSEADDR`, so a port a test server just
/// left can be taken again.
fn listener_at(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(LOCALHOST, port))?;
    socket.listen(1024)
}

/// A target that writes `name` to every client, then echoes until the client is done.
fn named_on(listener: TcpListener, name: &'static str) -> Server {
    serve(listener, move |mut stream| async move {
        if stream.write_all(name.as_bytes()).await.is_err() {
            return;
        }
        let (mut r, mut w) = stream.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
}

/// [`named_on`] on a port of the OS's choosing.
fn named(name: &'static str) -> Server {
    named_on(listener_on(LOCALHOST), name)
}

/// Connects to `proxy` (from `from` when given) and returns the connection and the name
/// of the target that answered (`len` bytes).
async fn reach(proxy: SocketAddr, from: Option<IpAddr>, len: usize) -> (TcpStream, String) {
    within("a target's name through the proxy", async {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0)).expect("bind the client to its source address");
        }
        let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
        let mut name = vec![0u8; len];
        stream.read_exact(&mut name).await.expect("the target's name");
        (stream, String::from_utf8(name).expect("utf-8 name"))
    })
    .await
}

/// The name of the target one short connection reaches.
async fn who(proxy: SocketAddr) -> String {
    reach(proxy, None, 1).await.1
}

/// Moves Tokio's clock forward by `by` without letting real time pass.
async fn time_travel(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::task::yield_now().await;
    tokio::time::resume();
}

/// A TCP route `alias` on `127.0.0.1:0` over `targets`, with `options`.
fn balanced(alias: &str, targets: &[&Server], options: RouteOptions) -> RouteSpec {
    RouteSpec::new(alias, Protocol::Tcp, SocketAddr::new(LOCALHOST, 0), targets.iter().map(|s| s.target()).collect())
        .with_options(options)
}

/// Options with `balance` set.
fn strategy(balance: Balance) -> RouteOptions {
    RouteOptions { balance, ..Default::default() }
}

/// The status of route `alias`'s target at `addr`.
fn target_status(table: &RouteTable, alias: &str, addr: SocketAddr) -> proxy_core::TargetStatus {
    let want = Target::new(addr.ip().to_string(), addr.port());
    let status = status_of(table, alias);
    match status.targets.into_iter().find(|t| t.target == want) {
        Some(t) => t,
        None => panic!("route {alias:?} has no target {want}"),
    }
}

/// A loopback port free for both TCP and UDP right now, found by binding both.
fn free_tcp_udp_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
        let port = tcp.local_addr().expect("local_addr").port();
        if std::net::UdpSocket::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP in 100 tries");
}

/// `n` TCP listeners on consecutive loopback ports, found by trial binding (bounded).
///
/// The candidates lie below the ephemeral range (32768 and up on Linux), which a busy
/// machine's client sockets riddle with holes; the starting point varies per process.
fn consecutive_listeners(n: u16) -> Vec<std::net::TcpListener> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut base = 20_000 + (seed ^ std::process::id().wrapping_mul(7919)) % 12_000;
    'attempt: for _ in 0..500 {
        base = 20_000 + (base - 20_000 + 997) % 12_000;
        let mut run = Vec::new();
        for i in 0..u32::from(n) {
            match std::net::TcpListener::bind((LOCALHOST, (base + i) as u16)) {
                Ok(l) => run.push(l),
                Err(_) => continue 'attempt,
            }
        }
        return run;
    }
    panic!("no run of {n} free consecutive ports in 500 tries");
}

/// Turns a std listener into a Tokio one.
fn tokio_listener(l: std::net::TcpListener) -> TcpListener {
    l.set_nonblocking(true).expect("nonblocking");
    TcpListener::from_std(l).expect("tokio listener")
}

/// A UDP target that answers every datagram with its name; stopped on drop.
struct NamedUdp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl NamedUdp {
    async fn start(name: &'static str, port: u16) -> NamedUdp {
        let socket = UdpSocket::bind((LOCALHOST, port)).await.expect("bind a UDP target");
        let addr = socket.local_addr().expect("local_addr");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let reply = if &buf[..n] == b"who" { name.as_bytes().to_vec() } else { buf[..n].to_vec() };
                let _ = socket.send_to(&reply, from).await;
            }
        });
        NamedUdp { addr, task }
    }

    fn target(&self) -> Target {
        Target::new(self.addr.ip().to_string(), self.addr.port())
    }
}

impl Drop for NamedUdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `payload` from `socket` to `proxy` and returns the reply.
async fn udp_roundtrip(socket: &UdpSocket, proxy: SocketAddr, payload: &[u8]) -> Vec<u8> {
    within("a UDP reply through the proxy", async {
        socket.send_to(payload, proxy).await.expect("send");
        let mut buf = vec![0u8; 2048];
        let n = socket.recv(&mut buf).await.expect("recv");
        buf.truncate(n);
        buf
    })
    .await
}

/// Counts of each name in `names`.
fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_spreads_connections_evenly_over_three_targets() {
    init_tracing();
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let table = RouteTable::new();
    let addr = apply_one(&table, balanced("app", &[&a, &b, &c], RouteOptions::default())).await;

    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(who(addr).await);
    }
    assert_eq!(names[..3], ["a", "b", "c"], "in the order given");
    assert_eq!(tally(names), HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]));
    let totals: Vec<(u64, bool)> = status_of(&table, "app").targets.iter().map(|t| (t.total, t.healthy)).collect();
    assert_eq!(totals, vec![(10, true); 3]);
    table.shutdown().await;
}

#[tokio::test]
async fn least_conn_sends_a_new_client_to_the_target_with_fewer_open_connections() {
    init_tracing();
    let (a, b) = (named("a"), named("b"));
    let table = RouteTable::new();
    let addr = apply_one(&table, balanced("app", &[&a, &b], strategy(Balance::LeastConn))).await;

    // Two held connections, one on each target.
    let (first, first_name) = reach(addr, None, 1).await;
    let (second, second_name) = reach(addr, None, 1).await;
    assert_ne!(first_name, second_name, "a tie at 0 and then 1 open connection: one each");

    // The second ends: its target has fewer open connections, so it gets every new client
    // until the two are even again.
    drop(second);
    let freed = if second_name == "a" { a.addr } else { b.addr };
    eventually("the closed connection leaves its target", || target_status(&table, "app", freed).active == 0).await;
    let mut held = vec![first];
    let (third, third_name) = reach(addr, None, 1).await;
    assert_eq!(third_name, second_name, "the target with no open connection is preferred");
    held.push(third);

    // With every target even, new clients keep them even.
    for _ in 0..6 {
        let (conn, _) = reach(addr, None, 1).await;
        held.push(conn);
        let active: Vec<u64> = status_of(&table, "app").targets.iter().map(|t| t.active).collect();
        assert!(active[0].abs_diff(active[1]) <= 1, "open connections stay balanced: {active:?}");
    }
    table.shutdown().await;
}

#[tokio::test]
async fn ip_hash_keeps_each_client_ip_on_one_target() {
    init_tracing();
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let table = RouteTable::new();
    let addr = apply_one(&table, balanced("app", &[&a, &b, &c], strategy(Balance::IpHash))).await;

    let mut target_of = HashMap::new();
    for host in 2..=13u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(reach(addr, Some(ip), 1).await.1);
        }
        assert!(seen.iter().all(|n| *n == seen[0]), "client {ip} moved between targets: {seen:?}");
        target_of.insert(ip, seen[0].clone());
    }
    let used: std::collections::HashSet<&String> = target_of.values().collect();
    assert!(used.len() >= 2, "twelve client IPs all hashed to one target: {target_of:?}");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refusing_target_costs_one_failed_dial_then_is_skipped_until_its_backoff_passes() {
    init_tracing();
    let a = named("a");
    let dead = refused_addr();
    let table = RouteTable::new().with_target_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let spec = RouteSpec::new(
        "app",
        Protocol::Tcp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new("127.0.0.1", dead.port()), a.target()],
    );
    let addr = apply_one(&table, spec).await;

    for i in 0..6 {
        assert_eq!(who(addr).await, "a", "connection {i}");
    }
    let down = target_status(&table, "app", dead);
    assert_eq!((down.healthy, down.failures, down.total), (false, 1, 0), "one failed dial marked it down");
    assert!(down.last_error.as_deref().unwrap_or_default().contains("refused"), "{:?}", down.last_error);
    assert_eq!(status_of(&table, "app").stats.dial_errors, 0, "every client was served");

    // It comes back, but is not tried before its backoff has passed.
    let back = named_on(listener_at(dead.port()).expect("take the dead target's port back"), "b");
    for _ in 0..4 {
        assert_eq!(who(addr).await, "a");
    }
    assert_eq!(back.accepted(), 0);

    time_travel(LONG_BACKOFF + Duration::from_secs(1)).await;
    let names = [who(addr).await, who(addr).await];
    assert!(names.contains(&"b".to_string()), "after the backoff it is probed and serves: {names:?}");
    let up = target_status(&table, "app", dead);
    assert_eq!((up.healthy, up.failures), (true, 0));
    let names = [who(addr).await, who(addr).await];
    assert_eq!(tally(names), HashMap::from([("a".into(), 1), ("b".into(), 1)]), "and is in the rotation again");
    table.shutdown().await;
}

#[tokio::test]
async fn when_every_target_is_down_they_are_still_tried() {
    init_tracing();
    let dead = refused_addr();
    let table = RouteTable::new().with_target_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let addr = apply_one(&table, tcp_route("app", dead)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut client).await;
    eventually("the target is marked down", || !target_status(&table, "app", dead).healthy).await;

    // Well within its backoff, the only target is tried anyway, and answers.
    let _back = named_on(listener_at(dead.port()).expect("take the port back"), "a");
    assert_eq!(who(addr).await, "a");
    assert!(target_status(&table, "app", dead).healthy);
    table.shutdown().await;
}

#[tokio::test]
async fn an_active_health_check_marks_a_target_down_and_up_again_without_any_client() {
    init_tracing();
    let a = named("a");
    let b = named("b");
    let b_addr = b.addr;
    let table = RouteTable::new().with_target_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let options = RouteOptions {
        health_check: HealthCheck::Tcp,
        health_interval: Duration::from_millis(50),
        health_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let addr = apply_one(&table, balanced("app", &[&a, &b], options)).await;
    eventually("the first checks reach b", || b.accepted() >= 1).await;

    drop(b);
    eventually("the check marks b down", || !target_status(&table, "app", b_addr).healthy).await;
    let last_error = target_status(&table, "app", b_addr).last_error.unwrap_or_default();
    assert!(last_error.starts_with("health check: connecting to 127.0.0.1:"), "{last_error}");
    assert_eq!(status_of(&table, "app").stats.total, 0, "no client was needed to find out");
    for _ in 0..4 {
        assert_eq!(who(addr).await, "a", "a target marked down gets no client");
    }

    // Back on the same port: the next check brings it back, long before its backoff.
    let _b = named_on(listener_at(b_addr.port()).expect("take b's port back"), "b");
    eventually("the check marks b up", || target_status(&table, "app", b_addr).healthy).await;
    let names = [who(addr).await, who(addr).await];
    assert!(names.contains(&"b".to_string()), "{names:?}");
    table.shutdown().await;
}

/// `target` with Docker's verdict `health`.
fn docker_says(target: Target, health: ProviderHealth) -> Target {
    target.with_verdict(Some(Verdict::new("docker", health)))
}

#[tokio::test]
async fn a_provider_verdict_moves_new_clients_in_place_and_leaves_open_connections_alone() {
    init_tracing();
    let (a, b) = (named("a"), named("b"));
    let listen = refused_addr();
    // With an active check that finds both targets answering all along.
    let checked = RouteOptions {
        health_check: HealthCheck::Tcp,
        health_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let route = |a_says: ProviderHealth, b_says: ProviderHealth| {
        let targets = vec![docker_says(a.target(), a_says), docker_says(b.target(), b_says)];
        RouteSpec::new("app", Protocol::Tcp, listen, targets).with_options(checked.clone())
    };
    use ProviderHealth::{Healthy, Starting, Unhealthy};
    let table = RouteTable::new();
    table.apply(vec![route(Healthy, Healthy)]).await;
    let mut on_b = loop {
        let (conn, name) = reach(listen, None, 1).await;
        if name == "b" {
            break conn;
        }
    };

    // b is called unhealthy: updated in place; new clients all reach a; b's client stays.
    let report = table.apply(vec![route(Healthy, Unhealthy)]).await;
    assert_eq!(report.updated.len(), 1, "{report:?}");
    for _ in 0..4 {
        assert_eq!(who(listen).await, "a");
    }
    echo_once(&mut on_b, b"still on b").await;
    let sick = target_status(&table, "app", b.addr);
    assert!(!sick.healthy, "an unhealthy verdict is down though every dial and check of b succeeds");
    let checks = b.accepted();
    eventually("the active check keeps reaching b", || b.accepted() > checks).await;
    assert_eq!(who(listen).await, "a");
    assert_eq!(sick.verdict.map(|v| v.to_string()).as_deref(), Some("docker: unhealthy"));
    assert_eq!(sick.active, 1, "the open connection still counts on b");

    // Starting is a lower tier: unused while a is healthy, used once a is not.
    table.apply(vec![route(Healthy, Starting)]).await;
    for _ in 0..4 {
        assert_eq!(who(listen).await, "a");
    }
    assert!(target_status(&table, "app", b.addr).healthy, "starting is not down");
    table.apply(vec![route(Unhealthy, Starting)]).await;
    for _ in 0..4 {
        assert_eq!(who(listen).await, "b");
    }

    // Every target called unhealthy: they are all still tried.
    table.apply(vec![route(Unhealthy, Unhealthy)]).await;
    let names = tally([who(listen).await, who(listen).await, who(listen).await]);
    assert_eq!(names.values().sum::<usize>(), 3, "nobody is refused: {names:?}");

    // Healthy again: both in the rotation.
    table.apply(vec![route(Healthy, Healthy)]).await;
    let names = tally([who(listen).await, who(listen).await]);
    assert_eq!(names, HashMap::from([("a".into(), 1), ("b".into(), 1)]));
    echo_once(&mut on_b, b"and still").await;
    assert_eq!(status_of(&table, "app").bound, Some(listen), "never rebound");
    table.shutdown().await;
}

#[tokio::test]
async fn a_udp_target_called_unhealthy_gets_no_new_session() {
    init_tracing();
    let a = NamedUdp::start("a", 0).await;
    let b = NamedUdp::start("b", 0).await;
    let targets = vec![a.target(), docker_says(b.target(), ProviderHealth::Unhealthy)];
    let table = RouteTable::new();
    let proxy = apply_one(&table, RouteSpec::new("dns", Protocol::Udp, SocketAddr::new(LOCALHOST, 0), targets)).await;
    for _ in 0..4 {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind a client");
        assert_eq!(udp_roundtrip(&socket, proxy, b"who").await, b"a");
    }
    table.shutdown().await;
}

#[tokio::test]
async fn an_active_health_check_on_a_udp_route_is_refused_with_the_reason() {
    init_tracing();
    let table = RouteTable::new();
    let options = RouteOptions { health_check: HealthCheck::Tcp, ..Default::default() };
    let spec = RouteSpec::new("dns", Protocol::Udp, SocketAddr::new(LOCALHOST, 0), vec![Target::new("127.0.0.1", 53)])
        .with_options(options);
    let report = table.apply(vec![spec]).await;
    let [(_, RouteState::Error { message })] = report.failed.as_slice() else {
        panic!("expected one failed route: {report:?}")
    };
    assert!(message.starts_with("route \"dns\": health_check tcp is for TCP routes"), "{message}");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_share_one_listener_and_one_leaving_keeps_it_and_the_others_connections() {
    init_tracing();
    let (a, b) = (named("a"), named("b"));
    let listen = refused_addr();
    let replica = |source: &str, target: &Server| {
        RouteSpec::new("app", Protocol::Tcp, listen, vec![target.target()]).with_source(source)
    };
    let table = RouteTable::new();

    let report = table.apply(vec![replica("app-1", &a), replica("app-2", &b)]).await;
    assert_eq!(report.started.len(), 1, "one route: {report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    let status = status_of(&table, "app");
    assert_eq!(table.status().len(), 1);
    assert_eq!(status.bound, Some(listen));
    assert_eq!(status.spec.source, "app-1, app-2");
    assert_eq!(status.spec.targets, vec![a.target(), b.target()]);
    assert_eq!(status.targets.len(), 2);

    let (mut on_a, name) = reach(listen, None, 1).await;
    assert_eq!(name, "a");
    assert_eq!(who(listen).await, "b", "both replicas serve");

    // app-2 goes away: the route is updated in place.
    let report = table.apply(vec![replica("app-1", &a)]).await;
    assert_eq!(report.updated, vec![replica("app-1", &a).id()]);
    assert!(report.removed.is_empty() && report.started.is_empty(), "{report:?}");
    let status = status_of(&table, "app");
    assert_eq!((status.bound, status.spec.source.as_str()), (Some(listen), "app-1"));
    echo_once(&mut on_a, b"still connected to app-1").await;
    for _ in 0..3 {
        assert_eq!(who(listen).await, "a");
    }
    assert_eq!(target_status(&table, "app", a.addr).total, 4, "a's counters carried over the update");

    // And comes back: again in place.
    let report = table.apply(vec![replica("app-1", &a), replica("app-2", &b)]).await;
    assert_eq!(report.updated.len(), 1);
    echo_once(&mut on_a, b"and still").await;
    table.shutdown().await;
}

#[tokio::test]
async fn two_different_aliases_on_one_port_still_conflict() {
    init_tracing();
    let (a, b) = (named("a"), named("b"));
    let listen = refused_addr();
    let first = RouteSpec::new("app", Protocol::Tcp, listen, vec![a.target()]).with_source("app-1");
    let other = RouteSpec::new("other", Protocol::Tcp, listen, vec![b.target()]).with_source("other-1");
    let table = RouteTable::new();

    let report = table.apply(vec![first.clone(), other.clone()]).await;
    assert_eq!(report.started, vec![first.id()]);
    assert_eq!(report.failed, vec![(other.id(), RouteState::Conflict { with: first.id() })]);
    assert_eq!(who(listen).await, "a");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn udp_sessions_are_spread_round_robin_and_kept_per_client_ip_with_ip_hash() {
    init_tracing();
    let a = NamedUdp::start("a", 0).await;
    let b = NamedUdp::start("b", 0).await;
    let c = NamedUdp::start("c", 0).await;
    let targets = vec![a.target(), b.target(), c.target()];
    let table = RouteTable::new();
    let rr = RouteSpec::new("rr", Protocol::Udp, SocketAddr::new(LOCALHOST, 0), targets.clone());
    let hashed = RouteSpec::new("hashed", Protocol::Udp, SocketAddr::new(LOCALHOST, 0), targets)
        .with_options(strategy(Balance::IpHash));
    let report = table.apply(vec![rr, hashed]).await;
    assert!(report.failed.is_empty(), "{report:?}");
    let (rr_addr, hashed_addr) = (bound_of(&table, "rr"), bound_of(&table, "hashed"));

    // Round robin: six clients, two sessions per target; each session keeps its target.
    let mut clients = Vec::new();
    let mut names = Vec::new();
    for _ in 0..6 {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind a client");
        names.push(String::from_utf8(udp_roundtrip(&socket, rr_addr, b"who").await).expect("utf-8"));
        clients.push(socket);
    }
    assert_eq!(tally(names.clone()), HashMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]));
    for (socket, name) in clients.iter().zip(&names) {
        let again = String::from_utf8(udp_roundtrip(socket, rr_addr, b"who").await).expect("utf-8");
        assert_eq!(&again, name, "a session sticks to its target");
    }
    let sessions: Vec<u64> = status_of(&table, "rr").targets.iter().map(|t| t.active).collect();
    assert_eq!(sessions, vec![2, 2, 2]);

    // ip_hash: every session (client port) of one client IP goes to the same target.
    let mut used = std::collections::HashSet::new();
    for host in 2..=9u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let socket = UdpSocket::bind((ip, 0)).await.expect("bind a client");
            seen.push(String::from_utf8(udp_roundtrip(&socket, hashed_addr, b"who").await).expect("utf-8"));
        }
        assert!(seen.iter().all(|n| *n == seen[0]), "sessions of {ip} went to different targets: {seen:?}");
        used.insert(seen[0].clone());
    }
    assert!(used.len() >= 2, "eight client IPs all hashed to one target");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// tcp+udp and port ranges, from the field grammar
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_udp_builds_a_tcp_and_a_udp_route_on_one_port_and_both_forward() {
    init_tracing();
    let target_port = free_tcp_udp_port();
    let tcp_target = named_on(listener_at(target_port).expect("TCP target"), "t");
    let _udp_target = NamedUdp::start("u", target_port).await;
    let listen = free_tcp_udp_port();

    let mut draft = RouteDraft::new("dns");
    for (field, value) in [("scheme", "tcp+udp"), ("bind", "127.0.0.1"), ("port", &format!("{listen}:{target_port}"))] {
        draft.set(field, value).expect("a valid field");
    }
    let specs = draft.build("compose.yml", "127.0.0.1").expect("two specs");
    let protocols: Vec<Protocol> = specs.iter().map(|s| s.protocol).collect();
    assert_eq!(protocols, vec![Protocol::Tcp, Protocol::Udp]);
    assert!(specs.iter().all(|s| s.listen == SocketAddr::new(LOCALHOST, listen)));

    let table = RouteTable::new();
    let report = table.apply(specs).await;
    assert_eq!(report.started.len(), 2, "{report:?}");
    let proxy = SocketAddr::new(LOCALHOST, listen);
    let (mut conn, name) = reach(proxy, None, 1).await;
    assert_eq!(name, "t");
    echo_once(&mut conn, b"over tcp").await;
    assert_eq!(tcp_target.accepted(), 1);
    let client = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    assert_eq!(udp_roundtrip(&client, proxy, b"who").await, b"u");
    assert_eq!(udp_roundtrip(&client, proxy, b"over udp").await, b"over udp");
    table.shutdown().await;
}

#[tokio::test]
async fn a_port_range_forwards_each_listen_port_to_the_target_port_at_the_same_position() {
    init_tracing();
    const NAMES: [&str; 3] = ["x", "y", "z"];
    let targets = consecutive_listeners(3);
    let first_target = targets[0].local_addr().expect("local_addr").port();
    let _servers: Vec<Server> =
        targets.into_iter().zip(NAMES).map(|(l, name)| named_on(tokio_listener(l), name)).collect();
    let listens = consecutive_listeners(3);
    let first_listen = listens[0].local_addr().expect("local_addr").port();
    drop(listens);

    let mut draft = RouteDraft::new("game");
    let port = format!("{}-{}:{}-{}", first_listen, first_listen + 2, first_target, first_target + 2);
    draft.set("port", &port).expect("a valid range");
    draft.set("bind", "127.0.0.1").expect("a valid bind");
    let specs = draft.build("compose.yml", "127.0.0.1").expect("three specs");
    assert_eq!(specs.len(), 3);
    assert!(specs.iter().all(|s| s.alias == "game"));

    let table = RouteTable::new();
    let report = table.apply(specs).await;
    assert_eq!(report.started.len(), 3, "{report:?}");
    for (i, name) in NAMES.iter().enumerate() {
        let proxy = SocketAddr::new(LOCALHOST, first_listen + i as u16);
        let (mut conn, got) = reach(proxy, None, 1).await;
        assert_eq!(got, *name, "listen port {} reaches target port {}", proxy.port(), first_target + i as u16);
        echo_once(&mut conn, b"ok").await;
    }
    table.shutdown().await;
}

#[test]
fn port_range_errors_name_the_field_the_value_and_the_lengths() {
    let error = |port: &str| RouteDraft::new("game").set("port", port).unwrap_err().to_string();
    assert_eq!(
        error("27015-27020:27015-27019"),
        "port \"27015-27020:27015-27019\": the listen range 27015-27020 has 6 ports but the target range \
         27015-27019 has 5; they must be the same length"
    );
    assert_eq!(error("1-60000:1-60000"), "port \"1-60000:1-60000\": port range 1-60000 has 60000 ports; at most 1000");
    assert_eq!(error("20-10:20-10"), "port \"20-10:20-10\": port range 20-10 is reversed; write 10-20");
    assert_eq!(
        error("27015-27020"),
        "port \"27015-27020\": a port range needs its listen side too, e.g. 27015-27020:27015-27020 \
         (the OS picks single ports only)"
    );
}
