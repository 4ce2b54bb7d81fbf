//! The UDP forwarder, driven through the route table on loopback.
//!
//! Every port comes from the OS. Nothing sleeps to synchronise: tests wait for replies,
//! poll counters against a deadline, or move Tokio's paused clock. Real sockets and an
//! auto-advancing paused clock do not mix (the runtime jumps to the next timer while a
//! datagram is still between two sockets), so time-travelling tests pause the clock only
//! around their silent stretches: `pause(); advance(..); resume()`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::child::{in_child, open_fds};
use proxy_core::fd_budget::FdBudget;
use proxy_core::{
    ConnInfo, Direction, Hooks, Protocol, ProxyVersion, RouteOptions, RouteSpec, RouteTable, StatsSnapshot, Target,
};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// What a test upstream answers.
#[derive(Clone, Copy)]
enum Reply {
    /// The datagram itself.
    Echo,
    /// The sender's address as text: tells which upstream socket a session uses.
    WhoAmI,
}

/// Every payload a test upstream received, in order.
type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// A UDP server on loopback that logs every datagram it receives; stopped on drop.
struct Upstream {
    addr: SocketAddr,
    log: Log,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(ip: IpAddr, reply: Reply) -> Upstream {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind upstream");
        let addr = socket.local_addr().expect("upstream address");
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
                task_log.lock().unwrap().push(buf[..n].to_vec());
                let _ = match reply {
                    Reply::Echo => socket.send_to(&buf[..n], from).await,
                    Reply::WhoAmI => socket.send_to(from.to_string().as_bytes(), from).await,
                };
            }
        });
        Upstream { addr, log, task }
    }

    fn target(&self) -> Target {
        Target::new(self.addr.ip().to_string(), self.addr.port())
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn udp_route(alias: &str, listen: SocketAddr, targets: Vec<Target>) -> RouteSpec {
    RouteSpec::new(alias, Protocol::Udp, listen, targets)
}

fn any_port(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

/// Applies `routes` and returns the bound address of the first.
async fn start(table: &RouteTable, routes: Vec<RouteSpec>) -> SocketAddr {
    let alias = routes[0].alias.clone();
    let report = table.apply(routes).await;
    assert!(report.failed.is_empty(), "routes failed to start: {:?}", report.failed);
    bound(table, &alias)
}

fn bound(table: &RouteTable, alias: &str) -> SocketAddr {
    let status = table.status().into_iter().find(|s| s.spec.alias == alias).expect("route in table");
    status.bound.unwrap_or_else(|| panic!("route {alias} not listening: {:?}", status.state))
}

fn stats(table: &RouteTable, alias: &str) -> StatsSnapshot {
    table.status().into_iter().find(|s| s.spec.alias == alias).expect("route in table").stats
}

async fn client(ip: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind client")
}

/// The next datagram on `socket`, failing the test after [`WAIT`].
async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("no datagram within the deadline")
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Sends `payload` to `proxy` and returns the reply.
async fn roundtrip(socket: &UdpSocket, proxy: SocketAddr, payload: &[u8]) -> Vec<u8> {
    socket.send_to(payload, proxy).await.expect("send");
    recv(socket).await
}

/// The upstream address a WhoAmI server saw for this client's session.
async fn whoami(socket: &UdpSocket, proxy: SocketAddr) -> String {
    String::from_utf8(roundtrip(socket, proxy, b"who").await).expect("utf-8 address")
}

/// Polls `condition` until it holds, failing the test after [`WAIT`] (of real or paused time).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Moves Tokio's clock forward by `by` without letting real time pass, then lets the
/// timers that came due run.
async fn time_travel(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    tokio::time::resume();
}

/// A payload whose every byte depends on its position and length.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8) ^ len) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// Data path
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn datagrams_of_1_1400_and_65507_bytes_pass_whole() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("echo", any_port(LOCALHOST), vec![echo.target()])]).await;
    let client = client(LOCALHOST).await;

    for len in [1, 1_400, 65_507] {
        let payload = pattern(len);
        let reply = roundtrip(&client, proxy, &payload).await;
        assert_eq!(reply.len(), len, "reply to a {len}-byte datagram");
        assert!(reply == payload, "reply to a {len}-byte datagram differs");
    }

    let total_bytes = 1 + 1_400 + 65_507;
    let s = stats(&table, "echo");
    assert_eq!((s.total, s.active), (1, 1), "one session for one client");
    assert_eq!((s.datagrams_in, s.datagrams_out), (3, 3));
    assert_eq!((s.bytes_in, s.bytes_out), (total_bytes, total_bytes));
    assert_eq!((s.dropped, s.dial_errors), (0, 0));
    table.shutdown().await;
}

#[tokio::test]
async fn bursts_from_two_clients_arrive_whole_and_in_order() {
    // Runs of one client's datagrams within a receive batch leave in one sendmmsg.
    const BURST: usize = 32;
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("burst", any_port(LOCALHOST), vec![echo.target()])]).await;
    let (a, b) = (client(LOCALHOST).await, client(LOCALHOST).await);
    assert_eq!(roundtrip(&a, proxy, b"a open").await, b"a open");
    assert_eq!(roundtrip(&b, proxy, b"b open").await, b"b open");

    for round in 0..2 {
        for (name, socket) in [("a", &a), ("b", &b)] {
            for i in 0..BURST {
                socket.send_to(format!("{name} {round} {i}").as_bytes(), proxy).await.expect("send");
            }
        }
    }
    for (name, socket) in [("a", &a), ("b", &b)] {
        for round in 0..2 {
            for i in 0..BURST {
                assert_eq!(String::from_utf8(recv(socket).await).unwrap(), format!("{name} {round} {i}"));
            }
        }
    }
    for name in ["a", "b"] {
        let got: Vec<String> = echo
            .payloads()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .filter(|p| p.starts_with(name) && !p.ends_with("open"))
            .collect();
        let want: Vec<String> =
            (0..2).flat_map(|round| (0..BURST).map(move |i| format!("{name} {round} {i}"))).collect();
        assert_eq!(got, want, "client {name}'s datagrams, in order");
    }
    let s = stats(&table, "burst");
    let n = 2 + 4 * BURST as u64;
    assert_eq!((s.datagrams_in, s.datagrams_out, s.dropped), (n, n, 0));
    table.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_each_get_only_their_own_replies() {
    const CLIENTS: usize = 100;
    const ROUNDS: usize = 10;
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("many", any_port(LOCALHOST), vec![echo.target()])]).await;

    let clients: Vec<JoinHandle<()>> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let socket = client(LOCALHOST).await;
                for round in 0..ROUNDS {
                    let payload = format!("client {c} round {round}").into_bytes();
                    let reply = roundtrip(&socket, proxy, &payload).await;
                    assert_eq!(
                        String::from_utf8_lossy(&reply),
                        String::from_utf8_lossy(&payload),
                        "client {c} got someone else's reply"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client task");
    }

    // A datagram is counted just after it is sent, possibly after the other side has read it.
    let all = (CLIENTS * ROUNDS) as u64;
    eventually("every datagram is counted", || {
        let s = stats(&table, "many");
        (s.datagrams_in, s.datagrams_out) == (all, all)
    })
    .await;
    let s = stats(&table, "many");
    assert_eq!((s.total, s.active), (CLIENTS as u64, CLIENTS as u64), "one session per client");
    assert_eq!((s.datagrams_in, s.datagrams_out, s.dropped), (all, all, 0));
    table.shutdown().await;
}

#[tokio::test]
async fn on_read_hook_sees_every_datagram_both_ways() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let seen_in = Arc::new(AtomicU64::new(0));
    let seen_out = Arc::new(AtomicU64::new(0));
    let (hook_in, hook_out) = (seen_in.clone(), seen_out.clone());
    let hooks = Hooks::default().with_on_read(move |_: &ConnInfo<'_>, direction: Direction, data: &[u8]| {
        let counter = if direction == Direction::ClientToTarget { &hook_in } else { &hook_out };
        counter.fetch_add(data.len() as u64, Relaxed);
    });
    let table = RouteTable::new();
    let route = udp_route("hooked", any_port(LOCALHOST), vec![echo.target()]).with_hooks(hooks);
    let proxy = start(&table, vec![route]).await;
    let client = client(LOCALHOST).await;

    for len in [10, 200, 3_000] {
        roundtrip(&client, proxy, &pattern(len)).await;
    }

    assert_eq!(seen_in.load(Relaxed), 3_210);
    assert_eq!(seen_out.load(Relaxed), 3_210);
    table.shutdown().await;
}

#[tokio::test]
async fn host_name_target_is_resolved_per_session_and_keeps_order() {
    // Serve on whatever `localhost` resolves to first, as the dialler will pick that one.
    let Some(first) = tokio::net::lookup_host(("localhost", 9)).await.ok().and_then(|mut a| a.next()) else {
        println!("skipped: `localhost` does not resolve on this machine");
        return;
    };
    let echo = Upstream::start(first.ip(), Reply::Echo).await;
    let table = RouteTable::new();
    let target = Target::new("localhost", echo.addr.port());
    let proxy = start(&table, vec![udp_route("named", any_port(LOCALHOST), vec![target])]).await;
    let client = client(LOCALHOST).await;

    // Sent back to back: the first ones wait while the name resolves, and keep their order.
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| format!("datagram {i}").into_bytes()).collect();
    for payload in &payloads {
        client.send_to(payload, proxy).await.expect("send");
    }
    for payload in &payloads {
        assert_eq!(recv(&client).await, *payload);
    }

    let s = stats(&table, "named");
    assert_eq!((s.total, s.active, s.dial_errors, s.dropped), (1, 1, 0, 0));
    assert_eq!(echo.payloads(), payloads, "order at the target");
    table.shutdown().await;
}

#[tokio::test]
async fn icmp_unreachable_marks_the_target_down_without_ending_the_session_and_a_reply_marks_it_up() {
    // A port nobody listens on yet: the first datagram draws an ICMP port unreachable, which
    // the session's socket reports as ECONNREFUSED.
    let reserved = std::net::UdpSocket::bind((LOCALHOST, 0)).expect("reserve a port");
    let target_addr = reserved.local_addr().expect("reserved address");
    drop(reserved);
    let table = RouteTable::new();
    let target = Target::new(target_addr.ip().to_string(), target_addr.port());
    let proxy = start(&table, vec![udp_route("flaky", any_port(LOCALHOST), vec![target])]).await;
    assert_eq!(target_health(&table, "flaky"), vec![(true, 0)]);
    let client = client(LOCALHOST).await;

    client.send_to(b"nobody home", proxy).await.expect("send");
    eventually("the target is marked down", || target_health(&table, "flaky") == vec![(false, 1)]).await;
    assert_eq!(stats(&table, "flaky").datagrams_in, 1);

    // The target comes up on that port; the same session reaches it.
    let Ok(server) = UdpSocket::bind(target_addr).await else {
        println!("skipped: the reserved port {target_addr} was taken by someone else");
        return;
    };
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + WAIT;
    let upstream = loop {
        assert!(tokio::time::Instant::now() < deadline, "no datagram reached the target after it came up");
        client.send_to(b"anyone now?", proxy).await.expect("send");
        if let Ok(Ok((n, from))) = tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut buf)).await {
            assert_eq!(&buf[..n], b"anyone now?");
            break from;
        }
    };
    server.send_to(b"here", upstream).await.expect("reply");
    assert_eq!(recv(&client).await, b"here");
    eventually("a reply marks the target up", || target_health(&table, "flaky") == vec![(true, 0)]).await;

    let s = stats(&table, "flaky");
    assert_eq!((s.total, s.active), (1, 1), "still the first session");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Session lifetime
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_ends_after_idle_timeout_of_silence_in_both_directions() {
    let idle = Duration::from_secs(60);
    let table = RouteTable::new();
    let server = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind target");
    let target = Target::new("127.0.0.1", server.local_addr().expect("target address").port());
    let options = RouteOptions { udp_idle_timeout: idle, ..RouteOptions::default() };
    let proxy = start(&table, vec![udp_route("idle", any_port(LOCALHOST), vec![target]).with_options(options)]).await;
    let client = client(LOCALHOST).await;

    client.send_to(b"hello", proxy).await.expect("send");
    let mut buf = [0u8; 64];
    let (n, upstream) = tokio::time::timeout(WAIT, server.recv_from(&mut buf)).await.expect("forwarded").expect("recv");
    assert_eq!(&buf[..n], b"hello");

    // Only the target speaks, every 3/4 of the timeout: that keeps the session alive well
    // past one timeout after the client's last datagram.
    for i in 0..3 {
        time_travel(idle * 3 / 4).await;
        let push = format!("push {i}");
        server.send_to(push.as_bytes(), upstream).await.expect("push");
        assert_eq!(recv(&client).await, push.as_bytes(), "the session carries replies after {i} pauses");
    }
    let s = stats(&table, "idle");
    assert_eq!((s.total, s.active), (1, 1), "replies alone keep the session");

    // Silence both ways: just short of the timeout it is still there...
    time_travel(idle - Duration::from_secs(1)).await;
    assert_eq!(stats(&table, "idle").active, 1, "ended before its idle timeout");
    // ...and once the timeout has passed it is gone.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    eventually("the idle session ended", || stats(&table, "idle").active == 0).await;
    tokio::time::resume();

    // The next datagram opens a new session with a new upstream socket.
    client.send_to(b"again", proxy).await.expect("send");
    let (n, second) = tokio::time::timeout(WAIT, server.recv_from(&mut buf)).await.expect("forwarded").expect("recv");
    assert_eq!(&buf[..n], b"again");
    assert_ne!(second, upstream, "a fresh session has a fresh upstream socket");
    let s = stats(&table, "idle");
    assert_eq!((s.total, s.active, s.evicted), (2, 1, 0));
    table.shutdown().await;
}

#[tokio::test]
async fn client_that_keeps_sending_without_replies_keeps_its_session() {
    // GoDoxy ends a session 30 s after the target's last reply even while the client sends.
    let idle = Duration::from_secs(20);
    let table = RouteTable::new();
    let sink = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind target");
    let target = Target::new("127.0.0.1", sink.local_addr().expect("target address").port());
    let options = RouteOptions { udp_idle_timeout: idle, ..RouteOptions::default() };
    let proxy = start(&table, vec![udp_route("sink", any_port(LOCALHOST), vec![target]).with_options(options)]).await;
    let client = client(LOCALHOST).await;

    let mut buf = [0u8; 64];
    let mut upstream = None;
    // 12 datagrams 10 s apart: two minutes, six idle timeouts, not one reply.
    for i in 0..12 {
        let payload = format!("tick {i}");
        client.send_to(payload.as_bytes(), proxy).await.expect("send");
        let (n, from) = tokio::time::timeout(WAIT, sink.recv_from(&mut buf)).await.expect("forwarded").expect("recv");
        assert_eq!(&buf[..n], payload.as_bytes());
        assert_eq!(*upstream.get_or_insert(from), from, "datagram {i} came from another upstream socket");
        time_travel(Duration::from_secs(10)).await;
    }
    let s = stats(&table, "sink");
    assert_eq!((s.total, s.active, s.datagrams_in, s.datagrams_out), (1, 1, 12, 0));

    tokio::time::pause();
    tokio::time::advance(idle).await;
    eventually("the silent session ended", || stats(&table, "sink").active == 0).await;
    tokio::time::resume();
    table.shutdown().await;
}

#[tokio::test]
async fn session_cap_evicts_the_least_recently_used() {
    let who = Upstream::start(LOCALHOST, Reply::WhoAmI).await;
    let table = RouteTable::new();
    let options = RouteOptions { max_udp_sessions: 3, ..RouteOptions::default() };
    let route = udp_route("capped", any_port(LOCALHOST), vec![who.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let (a, b, c, d) =
        (client(LOCALHOST).await, client(LOCALHOST).await, client(LOCALHOST).await, client(LOCALHOST).await);
    // Each step a second apart on Tokio's clock, so recency never hinges on clock resolution.
    let tick = || time_travel(Duration::from_secs(1));

    let ua = whoami(&a, proxy).await;
    tick().await;
    let ub = whoami(&b, proxy).await;
    tick().await;
    let uc = whoami(&c, proxy).await;
    tick().await;
    assert_eq!(whoami(&a, proxy).await, ua, "a keeps its session below the cap");
    tick().await;
    // Full: b is the least recently used (a was used again after it).
    let ud = whoami(&d, proxy).await;
    tick().await;
    let s = stats(&table, "capped");
    assert_eq!((s.total, s.active, s.evicted), (4, 3, 1));

    assert_eq!(whoami(&a, proxy).await, ua, "a kept its upstream");
    tick().await;
    assert_eq!(whoami(&c, proxy).await, uc, "c kept its upstream");
    tick().await;
    assert_eq!(whoami(&d, proxy).await, ud, "d kept its upstream");
    tick().await;
    // b was the one evicted: it comes back with a new upstream socket, evicting a (now LRU).
    let ub2 = whoami(&b, proxy).await;
    assert_ne!(ub2, ub, "b should have been evicted and given a new upstream");
    let s = stats(&table, "capped");
    assert_eq!((s.total, s.active, s.evicted), (5, 3, 2));
    tick().await;
    assert_eq!(whoami(&c, proxy).await, uc, "c still kept its upstream");
    assert_eq!(whoami(&d, proxy).await, ud, "d still kept its upstream");
    let ua2 = whoami(&a, proxy).await;
    assert_ne!(ua2, ua, "a was the least recently used when b came back");
    table.shutdown().await;
}

#[tokio::test]
async fn update_in_place_reaches_new_sessions_only() {
    let first = Upstream::start(LOCALHOST, Reply::Echo).await;
    let second = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let route = udp_route("moving", any_port(LOCALHOST), vec![first.target()]);
    let proxy = start(&table, vec![route.clone()]).await;
    let old = client(LOCALHOST).await;
    assert_eq!(roundtrip(&old, proxy, b"old 1").await, b"old 1");

    let moved = RouteSpec { targets: vec![second.target()], ..route };
    let report = table.apply(vec![moved]).await;
    assert_eq!(report.updated.len(), 1, "updated in place: {report:?}");
    assert_eq!(bound(&table, "moving"), proxy, "the socket stays bound");

    let new = client(LOCALHOST).await;
    assert_eq!(roundtrip(&new, proxy, b"new 1").await, b"new 1");
    assert_eq!(roundtrip(&old, proxy, b"old 2").await, b"old 2");
    assert_eq!(first.payloads(), vec![b"old 1".to_vec(), b"old 2".to_vec()], "the open session keeps its target");
    assert_eq!(second.payloads(), vec![b"new 1".to_vec()], "a new session uses the new target");
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Refusals and failures
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unresolvable_target_counts_a_dial_error_and_drops_the_datagram() {
    let table = RouteTable::new();
    let route = udp_route("nowhere", any_port(LOCALHOST), vec![Target::new("no-such-host.invalid", 53)]);
    let proxy = start(&table, vec![route]).await;
    let client = client(LOCALHOST).await;

    client.send_to(b"anyone?", proxy).await.expect("send");
    // Resolution fails, or times out after the default connect timeout of 5 s.
    eventually("the dial error is counted", || stats(&table, "nowhere").dial_errors == 1).await;

    let s = stats(&table, "nowhere");
    assert_eq!((s.total, s.active, s.dropped, s.datagrams_in), (0, 0, 1, 0));
    let last_error = s.last_error.expect("the dial error is recorded");
    assert!(last_error.contains("no-such-host.invalid"), "last error names the target: {last_error}");
    let status = table.status().into_iter().find(|s| s.spec.alias == "nowhere").expect("route");
    assert_eq!(status.state.name(), "listening", "a dial error is not a route error");
    table.shutdown().await;
}

#[tokio::test]
async fn pre_dial_refusal_drops_the_datagram_and_opens_nothing() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let refused = client(LOCALHOST).await;
    let allowed = client(LOCALHOST).await;
    let refused_addr = refused.local_addr().expect("client address");
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let hooks = Hooks::pre_dial(move |info: &ConnInfo<'_>| {
        hook_calls.fetch_add(1, Relaxed);
        if info.peer == refused_addr { Err("not on the list".to_string()) } else { Ok(()) }
    });
    let table = RouteTable::new();
    let route = udp_route("guarded", any_port(LOCALHOST), vec![echo.target()]).with_hooks(hooks);
    let proxy = start(&table, vec![route]).await;

    refused.send_to(b"let me in", proxy).await.expect("send");
    // The allowed client's replies prove the refused datagram was handled first.
    for i in 0..3 {
        let payload = format!("allowed {i}");
        assert_eq!(roundtrip(&allowed, proxy, payload.as_bytes()).await, payload.as_bytes());
    }

    let s = stats(&table, "guarded");
    assert_eq!((s.rejected, s.dropped), (1, 1), "the refused datagram is counted");
    assert_eq!((s.total, s.active, s.dial_errors), (1, 1, 0), "only the allowed client has a session");
    assert_eq!(calls.load(Relaxed), 2, "the hook runs once per new session, not per datagram");
    assert!(!echo.payloads().iter().any(|p| p == b"let me in"), "the refused datagram reached the target");
    let mut buf = [0u8; 64];
    assert_eq!(refused.try_recv(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Shutdown and removal
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn after_shutdown_the_udp_port_can_be_bound_again_at_once() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("closing", any_port(LOCALHOST), vec![echo.target()])]).await;
    let clients = [client(LOCALHOST).await, client(LOCALHOST).await, client(LOCALHOST).await];
    for (i, c) in clients.iter().enumerate() {
        let payload = format!("client {i}");
        assert_eq!(roundtrip(c, proxy, payload.as_bytes()).await, payload.as_bytes());
    }
    assert_eq!(stats(&table, "closing").active, 3);

    table.shutdown().await;

    let rebound = std::net::UdpSocket::bind(proxy);
    assert!(rebound.is_ok(), "port still held after shutdown: {:?}", rebound.err());
    assert!(table.status().is_empty());
}

#[tokio::test]
async fn removing_a_route_frees_its_port_when_apply_returns() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("removed", any_port(LOCALHOST), vec![echo.target()])]).await;
    let clients = [client(LOCALHOST).await, client(LOCALHOST).await, client(LOCALHOST).await];
    for (i, c) in clients.iter().enumerate() {
        let payload = format!("client {i}");
        assert_eq!(roundtrip(c, proxy, payload.as_bytes()).await, payload.as_bytes());
    }

    let report = table.apply(vec![]).await;
    assert_eq!(report.removed.len(), 1);

    // Open sessions hold the listening socket for their replies: none may outlive the route.
    let rebound = std::net::UdpSocket::bind(proxy);
    assert!(rebound.is_ok(), "port still held after removal: {:?}", rebound.err());
    table.shutdown().await;
}

#[tokio::test]
async fn removed_route_with_drain_grace_serves_open_sessions_but_opens_none() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let options = RouteOptions { drain_grace: Duration::from_secs(600), ..RouteOptions::default() };
    let route = udp_route("draining", any_port(LOCALHOST), vec![echo.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let old = client(LOCALHOST).await;
    assert_eq!(roundtrip(&old, proxy, b"before").await, b"before");

    let report = table.apply(vec![]).await;
    assert_eq!(report.removed.len(), 1);

    let newcomer = client(LOCALHOST).await;
    newcomer.send_to(b"too late", proxy).await.expect("send");
    // Handled after the newcomer's datagram, which shares the proxy's receive queue.
    assert_eq!(roundtrip(&old, proxy, b"during").await, b"during");
    assert_eq!(echo.payloads(), vec![b"before".to_vec(), b"during".to_vec()], "no session for the newcomer");

    table.shutdown().await;
    let rebound = std::net::UdpSocket::bind(proxy);
    assert!(rebound.is_ok(), "port still held after shutdown: {:?}", rebound.err());
}

#[tokio::test]
async fn removed_route_with_drain_grace_frees_its_port_once_its_sessions_end() {
    let idle = Duration::from_secs(30);
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let options =
        RouteOptions { drain_grace: Duration::from_secs(600), udp_idle_timeout: idle, ..RouteOptions::default() };
    let route = udp_route("draining", any_port(LOCALHOST), vec![echo.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let old = client(LOCALHOST).await;
    assert_eq!(roundtrip(&old, proxy, b"before").await, b"before");

    table.apply(vec![]).await;
    // The session idles out long before the grace; then nothing holds the port.
    tokio::time::pause();
    tokio::time::advance(idle + Duration::from_secs(1)).await;
    eventually("the port is free", || std::net::UdpSocket::bind(proxy).is_ok()).await;
    tokio::time::resume();
    table.shutdown().await;
}

#[tokio::test]
async fn route_on_ipv6_loopback_forwards() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if let Err(e) = std::net::UdpSocket::bind((v6, 0)) {
        println!("skipped: no IPv6 loopback on this machine ({e})");
        return;
    }
    let echo = Upstream::start(v6, Reply::Echo).await;
    let table = RouteTable::new();
    let proxy = start(&table, vec![udp_route("v6", any_port(v6), vec![echo.target()])]).await;
    assert!(proxy.is_ipv6());
    let client = client(v6).await;

    for len in [1, 1_400, 65_507] {
        let payload = pattern(len);
        assert!(roundtrip(&client, proxy, &payload).await == payload, "{len}-byte datagram over [::1]");
    }
    let s = stats(&table, "v6");
    assert_eq!((s.total, s.active, s.datagrams_in, s.datagrams_out), (1, 1, 3, 3));
    table.shutdown().await;
    assert!(std::net::UdpSocket::bind(proxy).is_ok(), "port still held after shutdown");
}

// ---------------------------------------------------------------------------------------
// Session sockets: descriptors, eviction, ICMP
// ---------------------------------------------------------------------------------------

/// The soft limit on open descriptors, from /proc/self/limits.
fn fd_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// A client socket on its own loopback address (127.1.x.y), so that no two of `n` clients
/// share an address even after one is closed and its port reused.
async fn client_number(i: usize) -> UdpSocket {
    let ip = Ipv4Addr::new(127, 1 + (i / 62_500) as u8, (i / 250 % 250) as u8, (i % 250 + 1) as u8);
    UdpSocket::bind((ip, 0)).await.expect("bind client")
}

/// The health of the route's targets: `(healthy, failures)` each.
fn target_health(table: &RouteTable, alias: &str) -> Vec<(bool, u64)> {
    let status = table.status().into_iter().find(|s| s.spec.alias == alias).expect("route in table");
    status.targets.iter().map(|t| (t.healthy, t.failures)).collect()
}

#[tokio::test]
async fn ten_thousand_sessions_open_expire_and_close_every_socket() {
    // Counts the whole process's descriptors: alone, in a child process.
    if !in_child("ten_thousand_sessions_open_expire_and_close_every_socket") {
        return;
    }
    // One upstream socket per session lives in this process: stay under the fd limit and
    // within the sessions' descriptor budget.
    let sessions = 10_000.min(fd_limit().saturating_sub(500)).min(FdBudget::global().capacity());
    if sessions < 10_000 {
        println!("note: the fd limit allows {sessions} sessions, not 10,000");
    }
    let idle = Duration::from_secs(30);
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let before_route = open_fds();
    let table = RouteTable::new();
    let options = RouteOptions { udp_idle_timeout: idle, ..RouteOptions::default() };
    let route = udp_route("many", any_port(LOCALHOST), vec![echo.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let with_route = open_fds();

    // One datagram and its echo per client; the client's socket is closed after it.
    for i in 0..sessions {
        let client = client_number(i).await;
        let payload = format!("session {i}");
        assert_eq!(roundtrip(&client, proxy, payload.as_bytes()).await, payload.as_bytes());
    }
    let s = stats(&table, "many");
    assert_eq!((s.total, s.active, s.evicted, s.dropped), (sessions as u64, sessions as u64, 0, 0));
    // Each session holds its upstream socket; the route adds one epoll descriptor.
    assert_eq!(open_fds(), with_route + 1 + sessions, "one descriptor per session");

    tokio::time::pause();
    tokio::time::advance(idle + Duration::from_secs(1)).await;
    eventually("every session expired", || stats(&table, "many").active == 0).await;
    tokio::time::resume();
    assert_eq!(open_fds(), with_route + 1, "every session socket is closed");
    let s = stats(&table, "many");
    assert_eq!((s.total, s.evicted), (sessions as u64, 0));

    table.shutdown().await;
    assert_eq!(open_fds(), before_route, "the route left no descriptor behind");
}

#[tokio::test]
async fn evicted_sessions_close_their_sockets_and_the_rest_keep_theirs() {
    // Counts the whole process's descriptors: alone, in a child process.
    if !in_child("evicted_sessions_close_their_sockets_and_the_rest_keep_theirs") {
        return;
    }
    const CAP: usize = 50;
    const CLIENTS: usize = 200;
    let who = Upstream::start(LOCALHOST, Reply::WhoAmI).await;
    let table = RouteTable::new();
    let options = RouteOptions { max_udp_sessions: CAP as u32, ..RouteOptions::default() };
    let route = udp_route("capped", any_port(LOCALHOST), vec![who.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let with_route = open_fds();

    let mut clients = Vec::new();
    let mut upstreams = Vec::new();
    for i in 0..CLIENTS {
        let client = client_number(i).await;
        upstreams.push(whoami(&client, proxy).await);
        clients.push(client);
        // A second apart: recency never hinges on clock resolution.
        time_travel(Duration::from_secs(1)).await;
    }
    let s = stats(&table, "capped");
    assert_eq!((s.total, s.active, s.evicted), (CLIENTS as u64, CAP as u64, (CLIENTS - CAP) as u64));
    // The route's epoll descriptor, and one socket per session left.
    assert_eq!(open_fds(), with_route + clients.len() + 1 + CAP, "evicted sockets are closed");

    // The last CAP clients kept their sessions (and upstream sockets).
    for i in CLIENTS - CAP..CLIENTS {
        assert_eq!(whoami(&clients[i], proxy).await, upstreams[i], "client {i} kept its upstream");
    }
    assert_eq!(stats(&table, "capped").evicted, (CLIENTS - CAP) as u64);
    // The first comes back with a fresh session, evicting the least recently used.
    assert_ne!(whoami(&clients[0], proxy).await, upstreams[0], "client 0 was evicted");
    let s = stats(&table, "capped");
    assert_eq!((s.total, s.active, s.evicted), (CLIENTS as u64 + 1, CAP as u64, (CLIENTS - CAP) as u64 + 1));
    table.shutdown().await;
}

#[tokio::test]
async fn sessions_opened_before_and_after_an_idle_timeout_update_keep_their_own_timeout() {
    let echo = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let long = RouteOptions { udp_idle_timeout: Duration::from_secs(60), ..RouteOptions::default() };
    let route = udp_route("timeouts", any_port(LOCALHOST), vec![echo.target()]).with_options(long);
    let proxy = start(&table, vec![route.clone()]).await;
    let old = client(LOCALHOST).await;
    assert_eq!(roundtrip(&old, proxy, b"old").await, b"old");

    let short = RouteOptions { udp_idle_timeout: Duration::from_secs(10), ..RouteOptions::default() };
    let report = table.apply(vec![route.with_options(short)]).await;
    assert_eq!(report.updated.len(), 1, "updated in place: {report:?}");
    let new = client(LOCALHOST).await;
    assert_eq!(roundtrip(&new, proxy, b"new").await, b"new");
    assert_eq!(stats(&table, "timeouts").active, 2);

    // The new session ends after its 10 s; the old one keeps its 60 s.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(11)).await;
    eventually("the new session expired", || stats(&table, "timeouts").active == 1).await;
    tokio::time::advance(Duration::from_secs(40)).await;
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stats(&table, "timeouts").active, 1, "the old session ended before its own timeout");
    tokio::time::advance(Duration::from_secs(10)).await;
    eventually("the old session expired", || stats(&table, "timeouts").active == 0).await;
    tokio::time::resume();
    let s = stats(&table, "timeouts");
    assert_eq!((s.total, s.evicted), (2, 0));
    table.shutdown().await;
}

#[tokio::test]
async fn a_datagram_too_large_for_its_proxy_v2_header_is_dropped_with_the_real_maximum_as_last_error() {
    let upstream = Upstream::start(LOCALHOST, Reply::Echo).await;
    let table = RouteTable::new();
    let options = RouteOptions { proxy_protocol: Some(ProxyVersion::V2), ..RouteOptions::default() };
    let route = udp_route("v2", any_port(LOCALHOST), vec![upstream.target()]).with_options(options);
    let proxy = start(&table, vec![route]).await;
    let client = client(LOCALHOST).await;

    // 65,507 bytes in all: the most an IPv4 datagram carries.
    client.send_to(&pattern(65_479), proxy).await.expect("send the largest that fits");
    eventually("the largest datagram reached the target", || upstream.payloads().len() == 1).await;
    assert_eq!(upstream.payloads()[0].len(), 28 + 65_479, "header and payload, whole");
    assert_eq!(stats(&table, "v2").last_error, None);

    client.send_to(&pattern(65_480), proxy).await.expect("send one byte more");
    eventually("the oversized datagram is counted as dropped", || stats(&table, "v2").dropped == 1).await;
    let s = stats(&table, "v2");
    assert_eq!((s.datagrams_in, s.active), (1, 1), "the session stays");
    assert_eq!(
        s.last_error.as_deref(),
        Some("datagram of 65480 bytes dropped: with the 28-byte PROXY header the target's socket takes at most 65479")
    );
    table.shutdown().await;
}
