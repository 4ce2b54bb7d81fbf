//! Helpers shared by the proxy-core integration tests.
//!
//! Everything runs on loopback with ports from the OS: servers bind `:0` and report the
//! address they got; routes listen on `127.0.0.1:0` and the test reads the bound address
//! back from [`RouteTable::status`]. Waiting is done by polling with a deadline
//! ([`eventually`]) or by awaiting an I/O result under [`within`], never by sleeping.
#![allow(dead_code)] // each test binary uses its own subset

pub mod child;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proxy_core::{Protocol, RouteSpec, RouteStatus, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long any single wait in a test may take before it fails. Generous: the machine has
/// two cores shared with builds; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Sends test logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=proxy_core=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `fut`, failing the test with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, failing the test with `what`
/// after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {DEADLINE:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback test server; dropping it stops it and closes its connections.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// The accept loop; owns the connection tasks.
    task: JoinHandle<()>,
}

impl Server {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The server's address as a route target.
    pub fn target(&self) -> Target {
        Target::new(self.addr.ip().to_string(), self.addr.port())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on `ip:0` with a backlog large enough for a thousand clients at once.
pub fn listener_on(ip: IpAddr) -> TcpListener {
    let socket = if ip.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.expect("socket");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind a test server");
    socket.listen(4096).expect("listen")
}

/// Runs `handle` on every connection accepted by `listener`.
pub fn serve<F, Fut>(listener: TcpListener, handle: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("local_addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            conns.spawn(handle(stream));
            while conns.try_join_next().is_some() {}
        }
    });
    Server { addr, accepted, task }
}

/// Echoes every byte back; after the client's FIN, finishes writing and closes.
pub fn echo_server() -> Server {
    echo_server_on(LOCALHOST)
}

/// [`echo_server`] on a given loopback address.
pub fn echo_server_on(ip: IpAddr) -> Server {
    serve(listener_on(ip), |mut stream| async move {
        let (mut r, mut w) = stream.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
}

/// Reads until the client's FIN, only then sends `reply` and closes: a reply can only arrive
/// if the half-close reached the server and the other direction stayed open.
pub fn reply_after_fin_server(reply: Arc<Vec<u8>>) -> Server {
    serve(listener_on(LOCALHOST), move |mut stream| {
        let reply = reply.clone();
        async move {
            let mut sink = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            if stream.write_all(&reply).await.is_ok() {
                let _ = stream.shutdown().await;
            }
        }
    })
}

/// Accepts and holds connections without reading or writing, until dropped.
pub fn silent_server() -> Server {
    serve(listener_on(LOCALHOST), |stream| async move {
        let _held = stream;
        std::future::pending::<()>().await
    })
}

/// An address nothing listens on: bound by the OS, then released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local_addr")
}

/// A TCP route `alias` listening on `127.0.0.1:0` toward `target`.
pub fn tcp_route(alias: &str, target: SocketAddr) -> RouteSpec {
    RouteSpec::new(
        alias,
        Protocol::Tcp,
        SocketAddr::new(LOCALHOST, 0),
        vec![Target::new(target.ip().to_string(), target.port())],
    )
}

/// The status of route `alias`; fails the test when the table has no such route.
pub fn status_of(table: &RouteTable, alias: &str) -> RouteStatus {
    match table.status().into_iter().find(|s| s.spec.alias == alias) {
        Some(status) => status,
        None => panic!("route {alias:?} is not in the table"),
    }
}

/// The address route `alias` is bound to; fails the test when it is not listening.
pub fn bound_of(table: &RouteTable, alias: &str) -> SocketAddr {
    let status = status_of(table, alias);
    match status.bound {
        Some(addr) => addr,
        None => panic!("route {alias:?} is not listening: {:?}", status.state),
    }
}

/// Applies `spec` as the table's only route and returns the address it bound.
pub async fn apply_one(table: &RouteTable, spec: RouteSpec) -> SocketAddr {
    let alias = spec.alias.clone();
    table.apply(vec![spec]).await;
    bound_of(table, &alias)
}

/// Writes `msg`, reads back as many bytes, and checks they are the same.
pub async fn echo_once(stream: &mut TcpStream, msg: &[u8]) {
    within("an echo", async {
        stream.write_all(msg).await.expect("write to the proxy");
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, msg, "the echo differs from what was sent");
    })
    .await
}

/// What the peer did to a connection that the test expected to be closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A clean end of stream (FIN).
    Eof,
    /// A reset (RST).
    Reset,
}

/// Reads until the peer closes, failing the test if data arrives or nothing happens in time.
pub async fn expect_closed(stream: &mut TcpStream) -> Closed {
    let mut buf = [0u8; 64];
    match within("the proxy to close the connection", stream.read(&mut buf)).await {
        Ok(0) => Closed::Eof,
        Ok(n) => panic!("expected the connection to close, got {n} bytes: {:?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Closed::Reset,
        Err(e) => panic!("expected EOF or a reset, got {e}"),
    }
}

/// FNV-1a, 64-bit, continued from `hash` (start from [`FNV_OFFSET`]).
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic, non-repeating test bytes (xorshift64), so a dropped, duplicated or
/// reordered chunk changes the checksum.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether this machine can bind TCP on `[::1]`.
pub fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}
