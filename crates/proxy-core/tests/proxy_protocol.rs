//! The PROXY protocol end to end: headers sent to targets (TCP v1/v2, UDP v2 per
//! datagram), headers accepted from trusted proxies (required, optional, untrusted, late,
//! split), and the client they name reaching hooks, the ACL and the header sent on.
//!
//! Targets check what they receive with the crate's own parser, `proxy_protocol::parse_header`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proxy_core::proxy_protocol::{self, Accept, Header, Parsed, Transport, Version};
use proxy_core::{ConnInfo, Hooks, IpNet, Protocol, RouteOptions, RouteSpec, RouteTable, StatsSnapshot, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn nets(text: &str) -> Vec<IpNet> {
    route_spec::nets::parse_nets(text).expect("test networks")
}

fn stats(table: &RouteTable, alias: &str) -> StatsSnapshot {
    status_of(table, alias).stats
}

/// Options that accept headers in `mode` from `trusted`.
fn accepting(mode: Accept, trusted: &str) -> RouteOptions {
    RouteOptions { accept_proxy_protocol: Some(mode), trusted: nets(trusted), ..RouteOptions::default() }
}

/// A TCP target that reads a PROXY header with the crate's parser, reports it (or the parse
/// error), then echoes every byte that followed it.
fn header_target() -> (Server, mpsc::UnboundedReceiver<Result<Header, String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(listener_on(LOCALHOST), move |mut stream| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let header = loop {
                match proxy_protocol::parse_header(&buf) {
                    Ok(Parsed::Header(h)) => break h,
                    Ok(Parsed::Incomplete) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let mut chunk = [0u8; 512];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Err(format!("closed after {} bytes", buf.len())));
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let rest = buf.split_off(header.len);
            let _ = tx.send(Ok(header));
            if stream.write_all(&rest).await.is_err() {
                return;
            }
            let (mut r, mut w) = stream.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        }
    });
    (server, rx)
}

/// The next header a [`header_target`] reported.
async fn next_header(rx: &mut mpsc::UnboundedReceiver<Result<Header, String>>) -> Header {
    match within("the target to report a header", rx.recv()).await {
        Some(Ok(header)) => header,
        Some(Err(e)) => panic!("the target got no valid header: {e}"),
        None => panic!("the target stopped"),
    }
}

/// A pre-dial hook recording the client address it is shown.
fn peer_recorder() -> (Hooks, Arc<Mutex<Vec<SocketAddr>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let hooks = Hooks::pre_dial(move |info: &ConnInfo<'_>| {
        log.lock().expect("lock").push(info.peer);
        Ok(())
    });
    (hooks, seen)
}

// ---------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------

async fn tcp_header_names_the_client_and_the_route(version: Version) {
    init_tracing();
    let (target, mut headers) = header_target();
    let table = RouteTable::new();
    let options = RouteOptions { proxy_protocol: Some(version), ..RouteOptions::default() };
    let addr = apply_one(&table, tcp_route("pp", target.addr).with_options(options)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"payload after the header").await;
    let header = next_header(&mut headers).await;
    assert_eq!((header.version, header.transport), (version, Transport::Stream));
    let addresses = header.addresses.expect("a PROXY command with addresses");
    assert_eq!(addresses.source, client.local_addr().expect("client address"));
    assert_eq!(addresses.destination, addr);
    let s = stats(&table, "pp");
    assert_eq!(s.bytes_in, 24, "the header is not counted as client bytes");
    table.shutdown().await;
}

#[tokio::test]
async fn a_v1_header_names_the_client_and_the_bound_address_before_any_byte() {
    tcp_header_names_the_client_and_the_route(Version::V1).await;
}

#[tokio::test]
async fn a_v2_header_names_the_client_and_the_bound_address_before_any_byte() {
    tcp_header_names_the_client_and_the_route(Version::V2).await;
}

#[tokio::test]
async fn udp_sends_a_v2_dgram_header_in_front_of_every_datagram_and_relays_bare_replies() {
    init_tracing();
    let target = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind the target");
    let target_addr = target.local_addr().expect("target address");
    let table = RouteTable::new();
    let options = RouteOptions { proxy_protocol: Some(Version::V2), ..RouteOptions::default() };
    let spec = RouteSpec::new(
        "dns",
        Protocol::Udp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new("127.0.0.1", target_addr.port())],
    )
    .with_options(options);
    let proxy = apply_one(&table, spec).await;
    let client = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind client");
    let client_addr = client.local_addr().expect("client address");

    let mut buf = vec![0u8; 65_536];
    for payload in [b"a".to_vec(), vec![7u8; 1400], b"third".to_vec()] {
        client.send_to(&payload, proxy).await.expect("send");
        let (n, session) = within("the datagram at the target", target.recv_from(&mut buf)).await.expect("recv");
        let Ok(Parsed::Header(header)) = proxy_protocol::parse_header(&buf[..n]) else {
            panic!("no header in front of the datagram: {:?}", &buf[..n.min(32)]);
        };
        assert_eq!((header.version, header.transport, header.len), (Version::V2, Transport::Datagram, 28));
        let addresses = header.addresses.expect("addresses");
        assert_eq!((addresses.source, addresses.destination), (client_addr, proxy));
        assert_eq!(&buf[header.len..n], payload.as_slice(), "the payload follows the header whole");
        // Replies go back without a header.
        target.send_to(&payload, session).await.expect("reply");
        let got = within("the reply", client.recv(&mut buf)).await.expect("recv reply");
        assert_eq!(&buf[..got], payload.as_slice());
    }
    let s = stats(&table, "dns");
    assert_eq!((s.datagrams_in, s.bytes_in, s.total), (3, 1 + 1400 + 5, 1));

    // The largest payload no longer fits with the header: dropped and counted, not cut.
    client.send_to(&vec![1u8; 65_507], proxy).await.expect("send the largest datagram");
    eventually("the oversized datagram is counted as dropped", || stats(&table, "dns").dropped == 1).await;
    assert_eq!(stats(&table, "dns").datagrams_in, 3);
    table.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Accepting
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_trusted_header_names_the_client_for_hooks_the_acl_and_the_header_sent_on() {
    init_tracing();
    let (target, mut headers) = header_target();
    let table = RouteTable::new();
    let (hooks, peers) = peer_recorder();
    let options = RouteOptions {
        proxy_protocol: Some(Version::V2),
        deny: nets("203.0.113.66"),
        ..accepting(Accept::Required, "127.0.0.1")
    };
    let addr = apply_one(&table, tcp_route("behind-lb", target.addr).with_options(options).with_hooks(hooks)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    // Header and first bytes in one segment: the bytes after the header must not be lost.
    client.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nhello").await.expect("write");
    let mut back = [0u8; 5];
    within("the echo", client.read_exact(&mut back)).await.expect("read the echo");
    assert_eq!(&back, b"hello");
    echo_once(&mut client, b" and more").await;

    let header = next_header(&mut headers).await;
    let addresses = header.addresses.expect("addresses");
    assert_eq!(
        (header.version, addresses.source, addresses.destination),
        (Version::V2, sa("203.0.113.7:4242"), sa("198.51.100.1:443"))
    );
    assert_eq!(*peers.lock().expect("lock"), vec![sa("203.0.113.7:4242")], "the hook sees the real client");

    // The ACL judges the client the header names, not the proxy.
    let mut denied = TcpStream::connect(addr).await.expect("connect");
    denied.write_all(b"PROXY TCP4 203.0.113.66 198.51.100.1 4243 443\r\n").await.expect("write");
    expect_closed(&mut denied).await;
    let s = stats(&table, "behind-lb");
    assert_eq!((s.denied, s.total, s.proxy_header_errors, s.bytes_in), (1, 2, 0, 14));
    assert_eq!(target.accepted(), 1, "the denied client was never dialled");
    table.shutdown().await;
}

#[tokio::test]
async fn a_v2_header_split_across_segments_is_read_whole() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let (hooks, peers) = peer_recorder();
    let spec = tcp_route("split", echo.addr).with_options(accepting(Accept::Required, "127.0.0.0/8")).with_hooks(hooks);
    let addr = apply_one(&table, spec).await;

    let header =
        proxy_protocol::encode(Version::V2, Transport::Stream, sa("[2001:db8::7]:5000"), sa("[2001:db8::1]:22"));
    let bytes = header.as_bytes();
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.set_nodelay(true).expect("nodelay");
    for part in [&bytes[..5], &bytes[5..13], &bytes[13..17], &bytes[17..]] {
        client.write_all(part).await.expect("write a piece of the header");
        client.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    echo_once(&mut client, b"SSH-2.0-test\r\n").await;
    assert_eq!(*peers.lock().expect("lock"), vec![sa("[2001:db8::7]:5000")]);
    table.shutdown().await;
}

#[tokio::test]
async fn a_local_header_keeps_the_connections_own_address() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let (hooks, peers) = peer_recorder();
    let spec = tcp_route("health", echo.addr).with_options(accepting(Accept::Required, "127.0.0.1")).with_hooks(hooks);
    let addr = apply_one(&table, spec).await;

    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec(); // the v2 signature
    local.extend([0x20, 0x00, 0, 0]);
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(&local).await.expect("write");
    echo_once(&mut client, b"ping").await;
    assert_eq!(*peers.lock().expect("lock"), vec![client.local_addr().expect("client address")]);
    table.shutdown().await;
}

#[tokio::test]
async fn required_closes_a_trusted_peer_without_a_header_and_dials_nothing() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr =
        apply_one(&table, tcp_route("strict", echo.addr).with_options(accepting(Accept::Required, "127.0.0.1"))).await;

    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    expect_closed(&mut plain).await;
    let mut malformed = TcpStream::connect(addr).await.expect("connect");
    malformed.write_all(b"PROXY TCP4 1.2.3.4 nonsense\r\n").await.expect("write");
    expect_closed(&mut malformed).await;
    let mut cut = TcpStream::connect(addr).await.expect("connect");
    cut.write_all(b"PROXY TCP4 1.2.3.4").await.expect("write");
    cut.shutdown().await.expect("shut down writing");
    expect_closed(&mut cut).await;

    eventually("three header errors are counted", || stats(&table, "strict").proxy_header_errors == 3).await;
    assert_eq!(echo.accepted(), 0, "nothing is dialled without a valid header");
    assert_eq!(stats(&table, "strict").dial_errors, 0);
    table.shutdown().await;
}

#[tokio::test]
async fn required_closes_an_untrusted_peer_even_with_a_valid_header() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr =
        apply_one(&table, tcp_route("strict", echo.addr).with_options(accepting(Accept::Required, "10.0.0.0/8"))).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nhi").await.expect("write");
    expect_closed(&mut client).await;
    let s = stats(&table, "strict");
    assert_eq!((s.proxy_header_errors, s.total, s.denied), (1, 0, 0));
    assert_eq!(echo.accepted(), 0);
    table.shutdown().await;
}

#[tokio::test]
async fn optional_passes_plain_bytes_from_a_trusted_peer() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let (hooks, peers) = peer_recorder();
    let spec = tcp_route("mixed", echo.addr).with_options(accepting(Accept::Optional, "127.0.0.1")).with_hooks(hooks);
    let addr = apply_one(&table, spec).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    // "PRO" could start a v1 header; "PROBE" cannot: every byte is the client's.
    echo_once(&mut client, b"PROBE and the rest").await;
    assert_eq!(*peers.lock().expect("lock"), vec![client.local_addr().expect("client address")]);
    assert_eq!(stats(&table, "mixed").bytes_in, 18);
    table.shutdown().await;
}

#[tokio::test]
async fn optional_leaves_an_untrusted_peers_header_as_data() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let addr =
        apply_one(&table, tcp_route("mixed", echo.addr).with_options(accepting(Accept::Optional, "10.0.0.0/8"))).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nspoofed?").await;
    assert_eq!(stats(&table, "mixed").proxy_header_errors, 0);
    table.shutdown().await;
}

#[tokio::test]
async fn a_header_that_does_not_arrive_in_time_closes_the_connection() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let options =
        RouteOptions { proxy_protocol_timeout: Duration::from_millis(200), ..accepting(Accept::Required, "127.0.0.1") };
    let addr = apply_one(&table, tcp_route("slow", echo.addr).with_options(options)).await;

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    expect_closed(&mut silent).await;
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(b"PROXY TCP4 203.0.113.7 ").await.expect("write");
    expect_closed(&mut stalled).await;
    eventually("both are counted", || stats(&table, "slow").proxy_header_errors == 2).await;
    assert_eq!(echo.accepted(), 0);
    assert_eq!(RouteOptions::default().proxy_protocol_timeout, Duration::from_secs(5), "the default wait is 5 s");
    table.shutdown().await;
}

#[tokio::test]
async fn optional_silence_goes_on_without_a_header_so_the_server_can_speak_first() {
    init_tracing();
    // An SMTP-like target: it greets first, then echoes.
    let greeter = serve(listener_on(LOCALHOST), |mut stream| async move {
        if stream.write_all(b"220 ready\r\n").await.is_err() {
            return;
        }
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let table = RouteTable::new();
    let options =
        RouteOptions { proxy_protocol_timeout: Duration::from_millis(100), ..accepting(Accept::Optional, "127.0.0.1") };
    let addr = apply_one(&table, tcp_route("smtp", greeter.addr).with_options(options)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut greeting = [0u8; 11];
    within("the greeting", client.read_exact(&mut greeting)).await.expect("read the greeting");
    assert_eq!(&greeting, b"220 ready\r\n");
    echo_once(&mut client, b"EHLO test\r\n").await;
    assert_eq!(stats(&table, "smtp").proxy_header_errors, 0);
    table.shutdown().await;
}
