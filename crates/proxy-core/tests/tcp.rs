//! The TCP forwarder, end to end on loopback: bytes, half-close, resets, limits, hooks and
//! timeouts, each seen from a real client and a real target.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proxy_core::{ConnInfo, Direction, Hooks, Protocol, RouteOptions, RouteSpec, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, mpsc};

const MIB: usize = 1024 * 1024;

/// What a hook records, read back by the test.
type Shared<T> = Arc<Mutex<Vec<T>>>;

/// Sends `size` bytes through a proxied echo route while reading the echo concurrently, and
/// checks length, checksum and the route's byte counters.
async fn echo_through_the_proxy(size: usize) {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("echo", echo.addr)).await;

    let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
    let (mut rx, mut tx) = stream.into_split();
    let writer = async move {
        let mut hash = FNV_OFFSET;
        let mut sent = 0;
        let mut seed = 1;
        while sent < size {
            let chunk = pattern(MIB.min(size - sent), seed);
            hash = fnv1a(hash, &chunk);
            tx.write_all(&chunk).await.expect("write to the proxy");
            sent += chunk.len();
            seed += 1;
        }
        tx.shutdown().await.expect("shut down writing");
        hash
    };
    let reader = async move {
        let mut hash = FNV_OFFSET;
        let mut received = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = rx.read(&mut buf).await.expect("read the echo");
            if n == 0 {
                break;
            }
            hash = fnv1a(hash, &buf[..n]);
            received += n;
        }
        (received, hash)
    };
    let (sent_hash, (received, received_hash)) = within("the echo", async { tokio::join!(writer, reader) }).await;

    assert_eq!(received, size, "echoed length");
    assert_eq!(received_hash, sent_hash, "checksum of the echo");
    eventually("the connection is closed and counted", || {
        let s = status_of(&table, "echo").stats;
        s.active == 0 && s.total == 1
    })
    .await;
    let stats = status_of(&table, "echo").stats;
    assert_eq!((stats.bytes_in, stats.bytes_out), (size as u64, size as u64));
    table.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_echo_arrives_whole_and_in_order() {
    echo_through_the_proxy(MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_echo_arrives_whole_and_in_order() {
    echo_through_the_proxy(64 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_target_and_its_reply_still_arrives() {
    init_tracing();
    let reply = Arc::new(pattern(MIB, 7));
    let server = reply_after_fin_server(reply.clone());
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("halfclose", server.addr)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(&pattern(100 * 1024, 3)).await.expect("write the request");
    client.shutdown().await.expect("shut down writing");
    let mut got = Vec::new();
    within("the reply", client.read_to_end(&mut got)).await.expect("read the reply");

    assert_eq!(got.len(), reply.len(), "reply length");
    assert_eq!(fnv1a(FNV_OFFSET, &got), fnv1a(FNV_OFFSET, &reply), "reply checksum");
    table.shutdown().await;
}

#[tokio::test]
async fn target_half_close_reaches_the_client_which_can_still_send() {
    init_tracing();
    // The target greets, shuts down writing, then counts what the client still sends.
    let (report, mut reports) = mpsc::unbounded_channel();
    let server = serve(listener_on(LOCALHOST), move |mut stream| {
        let report = report.clone();
        async move {
            let _ = stream.write_all(b"hello").await;
            let _ = stream.shutdown().await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            let _ = report.send(rest);
        }
    });
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("greeter", server.addr)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut greeting = Vec::new();
    within("the greeting and EOF", client.read_to_end(&mut greeting)).await.expect("read");
    assert_eq!(greeting, b"hello");
    client.write_all(b"still talking").await.expect("write after the target's FIN");
    client.shutdown().await.expect("shut down writing");

    let received = within("the target's report", reports.recv()).await;
    assert_eq!(received.as_deref(), Some(&b"still talking"[..]));
    table.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_each_echo_and_are_counted() {
    init_tracing();
    const CLIENTS: usize = 1000;
    let echo = echo_server();
    let table = Arc::new(RouteTable::new());
    let addr = apply_one(&table, tcp_route("many", echo.addr)).await;

    // Every client echoes, then waits until all of them are connected at once before closing.
    let all_open = Arc::new(Barrier::new(CLIENTS + 1));
    let may_close = Arc::new(Barrier::new(CLIENTS + 1));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (all_open, may_close) = (all_open.clone(), may_close.clone());
        clients.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect to the proxy");
            echo_once(&mut stream, format!("client {i}").as_bytes()).await;
            all_open.wait().await;
            may_close.wait().await;
            drop(stream);
        });
    }
    within("all clients to echo", all_open.wait()).await;
    let stats = status_of(&table, "many").stats;
    assert_eq!((stats.active, stats.total), (CLIENTS as u64, CLIENTS as u64), "all open at once");
    within("all clients to close", may_close.wait()).await;
    within("the client tasks", async {
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
    })
    .await;

    eventually("every connection is closed", || status_of(&table, "many").stats.active == 0).await;
    let stats = status_of(&table, "many").stats;
    assert_eq!((stats.total, stats.dial_errors, stats.rejected), (CLIENTS as u64, 0, 0));
    assert_eq!(echo.accepted(), CLIENTS);
    table.shutdown().await;
}

#[tokio::test]
async fn refused_target_closes_the_client_promptly_and_counts_a_dial_error() {
    init_tracing();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("down", refused_addr())).await;

    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.expect("connect to the proxy");
    expect_closed(&mut client).await;
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());

    eventually("the dial error is counted", || status_of(&table, "down").stats.dial_errors == 1).await;
    let stats = status_of(&table, "down").stats;
    let last_error = stats.last_error.unwrap_or_default();
    assert!(last_error.contains("refused"), "last_error: {last_error}");
    assert_eq!((stats.total, stats.active), (1, 0));
    table.shutdown().await;
}

#[tokio::test]
async fn the_first_target_that_answers_is_used() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let dead = refused_addr();
    let spec = RouteSpec::new(
        "fallback",
        Protocol::Tcp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new(dead.ip().to_string(), dead.port()), echo.target()],
    );
    let addr = apply_one(&table, spec).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"second target").await;
    assert_eq!(status_of(&table, "fallback").stats.dial_errors, 0, "a fallback that works is no dial error");
    table.shutdown().await;
}

/// A loopback listener that completes no handshake: created with a backlog of 0 and its
/// accept queue filled, so the kernel drops further SYNs and connects hang. `None` when
/// this kernel does not behave that way.
async fn unanswering_target() -> Option<(socket2::Socket, Vec<TcpStream>, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener.bind(&SocketAddr::new(LOCALHOST, 0).into()).expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener.local_addr().expect("local_addr").as_socket().expect("an IP address");
    let mut held = Vec::new();
    // Linux queues backlog + 1 connections; the first connect that does not complete shows
    // the queue is full.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(250), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => return Some((listener, held, addr)),
        }
    }
    None
}

#[tokio::test]
async fn a_target_that_never_answers_is_given_up_after_the_connect_timeout() {
    init_tracing();
    let Some((_listener, _held, target)) = unanswering_target().await else {
        println!("SKIP: this kernel completes handshakes beyond a full accept queue");
        return;
    };
    let table = RouteTable::new();
    let timeout = Duration::from_millis(300);
    let spec =
        tcp_route("hang", target).with_options(RouteOptions { connect_timeout: timeout, ..RouteOptions::default() });
    let addr = apply_one(&table, spec).await;

    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.expect("connect to the proxy");
    expect_closed(&mut client).await;
    let waited = started.elapsed();
    assert!(waited >= timeout, "closed after {waited:?}, before the connect timeout");

    eventually("the dial error is counted", || status_of(&table, "hang").stats.dial_errors == 1).await;
    let last_error = status_of(&table, "hang").stats.last_error.unwrap_or_default();
    assert!(last_error.contains("timed out after 300ms"), "last_error: {last_error}");
    table.shutdown().await;
}

#[tokio::test]
async fn a_target_reset_ends_the_client_connection_too() {
    init_tracing();
    // The target accepts, then aborts while the client's direction is still open.
    let server = serve(listener_on(LOCALHOST), |stream| async move {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    });
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("reset", server.addr)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut client).await;
    eventually("the connection ends", || status_of(&table, "reset").stats.active == 0).await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_client_reset_ends_the_target_connection_too() {
    init_tracing();
    let (report, mut reports) = mpsc::unbounded_channel();
    let server = serve(listener_on(LOCALHOST), move |mut stream| {
        let report = report.clone();
        async move {
            let mut first = [0u8; 5];
            let _ = stream.read_exact(&mut first).await;
            let _ = report.send(Ok(first.to_vec()));
            let mut rest = [0u8; 64];
            let _ = report.send(stream.read(&mut rest).await.map(|n| rest[..n].to_vec()));
        }
    });
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("reset", server.addr)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(b"hello").await.expect("write");
    let first = within("the target to read", reports.recv()).await.expect("report").expect("read");
    assert_eq!(first, b"hello");
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(client);

    // EOF or a reset, but an end: the target is not left waiting on a dead client.
    let next = within("the target to see the end", reports.recv()).await.expect("report");
    if let Ok(bytes) = next {
        assert!(bytes.is_empty(), "unexpected bytes after the reset: {bytes:?}");
    }
    eventually("the connection ends", || status_of(&table, "reset").stats.active == 0).await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_reply_already_forwarded_is_not_lost_when_the_target_then_resets() {
    init_tracing();
    // Common in the wild: a server replies, then closes with unread input, so its kernel
    // sends RST instead of FIN. What the proxy has already taken must still reach a client
    // that reads slowly: closing the client side abortively would throw it away.
    let reply = Arc::new(pattern(256 * 1024, 11));
    let (go, reset_now) = mpsc::unbounded_channel::<()>();
    let reset_now = Arc::new(tokio::sync::Mutex::new(reset_now));
    let server = serve(listener_on(LOCALHOST), {
        let reply = reply.clone();
        move |mut stream| {
            let (reply, reset_now) = (reply.clone(), reset_now.clone());
            async move {
                let _ = stream.write_all(&reply).await;
                reset_now.lock().await.recv().await;
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
        }
    });
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("reply-then-reset", server.addr)).await;

    // A client with a small receive window that does not read yet, so much of the reply
    // waits in the proxy's send buffer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut client = socket.connect(addr).await.expect("connect");
    eventually("the proxy has taken the whole reply", || {
        status_of(&table, "reply-then-reset").stats.bytes_out == reply.len() as u64
    })
    .await;
    go.send(()).expect("the target waits");
    eventually("the proxy has seen the reset", || status_of(&table, "reply-then-reset").stats.active == 0).await;

    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    within("the reply", async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("after {} bytes: {e}", got.len()),
            }
        }
    })
    .await;
    assert_eq!(got.len(), reply.len());
    assert_eq!(fnv1a(FNV_OFFSET, &got), fnv1a(FNV_OFFSET, &reply));
    table.shutdown().await;
}

#[tokio::test]
async fn clients_beyond_max_connections_are_closed_at_once_and_counted() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("capped", echo.addr).with_options(RouteOptions { max_connections: 2, ..Default::default() });
    let addr = apply_one(&table, spec).await;

    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut first, b"one").await;
    echo_once(&mut second, b"two").await;

    let mut third = TcpStream::connect(addr).await.expect("the kernel still completes the handshake");
    expect_closed(&mut third).await;
    let stats = status_of(&table, "capped").stats;
    assert_eq!((stats.rejected, stats.active, stats.total), (1, 2, 2));
    assert_eq!(echo.accepted(), 2, "nothing is dialled for a rejected client");

    // The open ones are untouched, and a freed slot is taken again.
    echo_once(&mut first, b"still one").await;
    drop(second);
    eventually("the second connection is gone", || status_of(&table, "capped").stats.active == 1).await;
    let mut fourth = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut fourth, b"four").await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_clients_cannot_overshoot_max_connections() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("burst", echo.addr).with_options(RouteOptions { max_connections: 5, ..Default::default() });
    let addr = apply_one(&table, spec).await;

    // Twenty handshakes complete in the kernel before the accept loop sees any of them.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("every client is accepted or rejected", || {
        let s = status_of(&table, "burst").stats;
        s.total + s.rejected == 20
    })
    .await;
    let stats = status_of(&table, "burst").stats;
    assert_eq!((stats.total, stats.rejected), (5, 15));
    table.shutdown().await;
}

#[tokio::test]
async fn a_pre_dial_refusal_closes_the_client_and_dials_nothing() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let seen: Shared<(String, SocketAddr, SocketAddr)> = Arc::default();
    let log = seen.clone();
    let hook = Hooks::pre_dial(move |info: &ConnInfo<'_>| {
        log.lock().expect("lock").push((info.alias.to_string(), info.peer, info.listen));
        Err("not on the list".to_string())
    });
    let addr = apply_one(&table, tcp_route("guarded", echo.addr).with_hooks(hook)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let client_addr = client.local_addr().expect("local_addr");
    expect_closed(&mut client).await;

    let stats = status_of(&table, "guarded").stats;
    assert_eq!((stats.rejected, stats.dial_errors), (1, 0));
    assert_eq!(echo.accepted(), 0, "nothing may be dialled");
    assert_eq!(*seen.lock().expect("lock"), vec![("guarded".to_string(), client_addr, addr)]);
    eventually("the refused connection is no longer active", || status_of(&table, "guarded").stats.active == 0).await;
    table.shutdown().await;
}

#[tokio::test]
async fn the_on_read_hook_sees_the_bytes_of_both_directions() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let seen: Shared<(Direction, Vec<u8>)> = Arc::default();
    let log = seen.clone();
    let allowed = Arc::new(AtomicUsize::new(0));
    let count = allowed.clone();
    let hooks = Hooks::pre_dial(move |_: &ConnInfo<'_>| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .with_on_read(move |_: &ConnInfo<'_>, direction: Direction, data: &[u8]| {
        log.lock().expect("lock").push((direction, data.to_vec()));
    });
    let addr = apply_one(&table, tcp_route("watched", echo.addr).with_hooks(hooks)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"ping").await;

    let by_direction = |d: Direction| -> Vec<u8> {
        seen.lock().expect("lock").iter().filter(|(dir, _)| *dir == d).flat_map(|(_, b)| b.clone()).collect()
    };
    assert_eq!(by_direction(Direction::ClientToTarget), b"ping");
    assert_eq!(by_direction(Direction::TargetToClient), b"ping");
    assert_eq!(allowed.load(Ordering::SeqCst), 1, "the pre-dial hook runs once per connection");
    table.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_tcp_idle_timeout() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let idle = Duration::from_millis(200);
    let spec = tcp_route("idle", echo.addr)
        .with_options(RouteOptions { tcp_idle_timeout: Some(idle), ..RouteOptions::default() });
    let addr = apply_one(&table, spec).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"then silence").await;
    let quiet_since = Instant::now();
    assert_eq!(expect_closed(&mut client).await, Closed::Eof);
    assert!(quiet_since.elapsed() >= idle, "closed after {:?} of silence", quiet_since.elapsed());
    eventually("the connection is gone", || status_of(&table, "idle").stats.active == 0).await;
    table.shutdown().await;
}

#[tokio::test]
async fn traffic_keeps_a_connection_open_past_its_idle_timeout() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let idle = Duration::from_millis(500);
    let spec = tcp_route("busy", echo.addr)
        .with_options(RouteOptions { tcp_idle_timeout: Some(idle), ..RouteOptions::default() });
    let addr = apply_one(&table, spec).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    // Pacing, not synchronisation: a byte every 50 ms for three idle timeouts.
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    while started.elapsed() < idle * 3 {
        interval.tick().await;
        echo_once(&mut client, b".").await;
    }
    assert_eq!(status_of(&table, "busy").stats.active, 1);
    table.shutdown().await;
}

#[tokio::test]
async fn an_ipv6_loopback_route_forwards() {
    init_tracing();
    if !has_ipv6_loopback() {
        println!("SKIP: no IPv6 loopback on this machine");
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let echo = echo_server_on(v6);
    let table = RouteTable::new();
    let spec = RouteSpec::new("v6", Protocol::Tcp, SocketAddr::new(v6, 0), vec![echo.target()])
        .with_family(proxy_core::Family::V6);
    let addr = apply_one(&table, spec).await;
    assert_eq!(addr.ip(), v6);

    let mut client = TcpStream::connect(addr).await.expect("connect over IPv6");
    echo_once(&mut client, b"over v6").await;
    assert_eq!(echo.accepted(), 1);
    table.shutdown().await;
}
