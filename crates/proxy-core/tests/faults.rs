//! Faults in the middle of a transfer, seen from both ends of a real connection on loopback:
//! a target that resets while bytes are flowing, a client that resets while bytes are
//! flowing. The connection hit ends promptly on both sides, the others carry on untouched,
//! the counters add up, and nothing is left behind: `active` returns to 0 and the runtime
//! has no more live tasks than before the connections opened.
//!
//! The other faults of a target (refuses, never answers and the connect timeout fires,
//! resets before any byte) are specified in `tcp.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proxy_core::{RouteTable, StatsSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

const MIB: u64 = 1024 * 1024;

/// How soon a peer must see the end of a connection whose other side was reset.
const PROMPTLY: Duration = Duration::from_secs(2);

/// An endless, deterministic byte stream (xorshift64), so a receiver can check every byte
/// it gets against what the sender wrote, in order, without holding any of it.
struct Stream {
    state: u64,
    /// Bytes of the current word already handed out.
    used: usize,
    word: [u8; 8],
}

impl Stream {
    fn new(seed: u64) -> Self {
        Stream { state: seed | 1, used: 8, word: [0; 8] }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }

    /// Checks that `got` is what comes next; on a mismatch, the offset of the first bad byte
    /// within `got`.
    fn check(&mut self, got: &[u8]) -> Result<(), usize> {
        let mut want = vec![0u8; got.len()];
        self.fill(&mut want);
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            Some(at) => Err(at),
            None => Ok(()),
        }
    }
}

/// Writes the stream of `seed` until told to stop or the socket fails; returns the bytes
/// written.
async fn write_stream(mut tx: OwnedWriteHalf, seed: u64, mut stop: oneshot::Receiver<()>) -> u64 {
    let mut stream = Stream::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let mut written = 0;
    loop {
        stream.fill(&mut buf);
        // Checked between whole writes: a write cut short would leave `written` unsure.
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            break;
        }
        if tx.write_all(&buf).await.is_err() {
            return written;
        }
        written += buf.len() as u64;
    }
    let _ = tx.shutdown().await;
    written
}

/// Writes the stream of `seed` until told to stop, then closes the socket with RST (SO_LINGER
/// 0, no FIN first); returns the bytes written.
async fn write_until_reset(mut stream: TcpStream, seed: u64, mut stop: oneshot::Receiver<()>) -> u64 {
    let mut source = Stream::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let mut written = 0;
    loop {
        source.fill(&mut buf);
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            break;
        }
        stream.write_all(&buf).await.expect("write to the proxy");
        written += buf.len() as u64;
    }
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(stream);
    written
}

/// How a reader's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// FIN.
    Eof,
    /// RST (or another error).
    Error(std::io::ErrorKind),
}

/// Reads and checks the stream of `seed`, publishing the count so far in `progress`; returns
/// the bytes read and how the stream ended. Panics on a wrong byte.
async fn read_stream(mut rx: OwnedReadHalf, seed: u64, progress: Arc<Mutex<u64>>) -> (u64, End) {
    let mut stream = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => return (read, End::Eof),
            Ok(n) => n,
            Err(e) => return (read, End::Error(e.kind())),
        };
        if let Err(at) = stream.check(&buf[..n]) {
            panic!("stream {seed}: wrong byte at offset {}", read + at as u64);
        }
        read += n as u64;
        *progress.lock().expect("lock") = read;
    }
}

/// A client connection streaming through the proxy to an echo target, checking the echo.
struct EchoFlow {
    stop: Option<oneshot::Sender<()>>,
    writer: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<(u64, End)>,
    echoed: Arc<Mutex<u64>>,
}

impl EchoFlow {
    fn start(stream: TcpStream, seed: u64) -> Self {
        let (rx, tx) = stream.into_split();
        let (stop, stopped) = oneshot::channel();
        let echoed = Arc::new(Mutex::new(0));
        let writer = tokio::spawn(write_stream(tx, seed, stopped));
        let reader = tokio::spawn(read_stream(rx, seed, echoed.clone()));
        EchoFlow { stop: Some(stop), writer, reader, echoed }
    }

    fn echoed(&self) -> u64 {
        *self.echoed.lock().expect("lock")
    }

    /// Stops writing (FIN) and waits for the echo to end: (written, echoed, how it ended).
    async fn finish(mut self) -> (u64, u64, End) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let written = within("the writer to stop", self.writer).await.expect("writer task");
        let (echoed, end) = within("the echo to end", self.reader).await.expect("reader task");
        (written, echoed, end)
    }
}

/// An echo target whose connections, in accept order, can each be reset on demand.
struct ResettableEcho {
    server: Server,
    kills: Arc<Mutex<Vec<Option<oneshot::Sender<()>>>>>,
}

impl ResettableEcho {
    fn start() -> Self {
        let kills: Arc<Mutex<Vec<Option<oneshot::Sender<()>>>>> = Arc::default();
        let registry = kills.clone();
        let server = serve(listener_on(LOCALHOST), move |mut stream| {
            let (kill, killed) = oneshot::channel::<()>();
            registry.lock().expect("lock").push(Some(kill));
            async move {
                let reset = {
                    let echo = async {
                        let (mut r, mut w) = stream.split();
                        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                            let _ = w.shutdown().await;
                        }
                    };
                    tokio::select! {
                        _ = echo => false,
                        Ok(()) = killed => true,
                    }
                };
                if reset {
                    // SO_LINGER 0: the close sends RST, with bytes still flowing both ways.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            }
        });
        ResettableEcho { server, kills }
    }

    /// Resets the `n`th accepted connection.
    fn reset(&self, n: usize) {
        let kill = self.kills.lock().expect("lock")[n].take().expect("connection not reset yet");
        kill.send(()).expect("the connection is still open");
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reset_mid_stream_ends_that_client_promptly_and_no_other() {
    init_tracing();
    const FLOWS: usize = 4;
    let target = ResettableEcho::start();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("resets", target.server.addr)).await;
    let baseline_tasks = alive_tasks();

    // One connection at a time, so the target's accept order is the flows' order.
    let mut flows = Vec::new();
    for i in 0..FLOWS {
        let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
        flows.push(EchoFlow::start(stream, i as u64 + 1));
        eventually("the target to accept", || target.server.accepted() == i + 1).await;
    }
    eventually("every flow to echo 4 MiB", || flows.iter().all(|f| f.echoed() >= 4 * MIB)).await;
    // Each flow holds a proxy task, a target task and its own writer and reader.
    assert!(alive_tasks() >= baseline_tasks + 4 * FLOWS, "{} tasks, {baseline_tasks} before", alive_tasks());

    let reset_at = Instant::now();
    target.reset(0);
    let victim = flows.remove(0);
    let (victim_echoed, end) = within("the reset client's reader", victim.reader).await.expect("reader task");
    let took = reset_at.elapsed();
    assert!(took < PROMPTLY, "the client saw the end {took:?} after the target's reset");
    assert!(victim_echoed >= 4 * MIB, "{victim_echoed}");
    // The proxy closes the client normally once the target is gone (see tcp.rs): FIN, or a
    // reset should the client's own bytes still be unread in the proxy's socket.
    assert!(matches!(end, End::Eof | End::Error(std::io::ErrorKind::ConnectionReset)), "{end:?}");
    let _ = within("the reset client's writer", victim.writer).await;

    // The others keep streaming: another 8 MiB each after the reset, every byte checked.
    let after: Vec<u64> = flows.iter().map(EchoFlow::echoed).collect();
    eventually("the other flows to go on", || flows.iter().zip(&after).all(|(f, a)| f.echoed() >= a + 8 * MIB)).await;
    assert_eq!(status_of(&table, "resets").stats.active, FLOWS as u64 - 1);
    for flow in flows {
        let (written, echoed, end) = flow.finish().await;
        assert_eq!((echoed, end), (written, End::Eof), "a surviving flow is echoed whole, then ends with FIN");
    }

    eventually("every connection to end", || status_of(&table, "resets").stats.active == 0).await;
    let stats = status_of(&table, "resets").stats;
    assert_eq!((stats.total, stats.dial_errors, stats.rejected), (FLOWS as u64, 0, 0));
    assert!(stats.bytes_out <= stats.bytes_in, "the target cannot echo more than it got: {stats:?}");
    eventually("the connection tasks to be gone", || alive_tasks() <= baseline_tasks).await;
    table.shutdown().await;
}

/// A target that reads and checks the stream of seed 1 to its end, then reports how many
/// bytes it got and how the stream ended.
fn checking_sink() -> (Server, mpsc::UnboundedReceiver<(u64, End)>) {
    let (report, reports) = mpsc::unbounded_channel();
    let server = serve(listener_on(LOCALHOST), move |stream| {
        let report = report.clone();
        async move {
            let (rx, _tx) = stream.into_split();
            let _ = report.send(read_stream(rx, 1, Arc::default()).await);
        }
    });
    (server, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_transfer_closes_the_target_side_and_the_counts_add_up() {
    init_tracing();
    let (sink, mut reports) = checking_sink();
    let echo = echo_server();
    let table = RouteTable::new();
    table.apply(vec![tcp_route("upload", sink.addr), tcp_route("bystander", echo.addr)]).await;
    let (upload, bystander) = (bound_of(&table, "upload"), bound_of(&table, "bystander"));
    let baseline_tasks = alive_tasks();

    // A bystander on another route, streaming throughout.
    let other = EchoFlow::start(TcpStream::connect(bystander).await.expect("connect"), 7);

    let client = TcpStream::connect(upload).await.expect("connect to the proxy");
    let (stop, stopped) = oneshot::channel();
    let writer = tokio::spawn(write_until_reset(client, 1, stopped));
    eventually("16 MiB to reach the target", || status_of(&table, "upload").stats.bytes_in >= 16 * MIB).await;

    // Mid-transfer: the writer stops where it is and the socket is closed with RST.
    stop.send(()).expect("the writer runs");
    let written = within("the client to reset", writer).await.expect("writer task");
    let reset_at = Instant::now();
    let (received, end) = within("the target to see the end", reports.recv()).await.expect("a report");
    let took = reset_at.elapsed();
    assert!(took < PROMPTLY, "the target saw the end {took:?} after the client's reset");
    assert_eq!(end, End::Eof, "the proxy closes the target side cleanly, after what it forwarded");

    eventually("the reset connection to end", || status_of(&table, "upload").stats.active == 0).await;
    let stats: StatsSnapshot = status_of(&table, "upload").stats;
    assert_eq!(stats.bytes_in, received, "bytes_in is exactly what reached the target");
    assert!(received <= written, "the target got {received} bytes of {written} written");
    assert_eq!((stats.total, stats.bytes_out, stats.dial_errors, stats.rejected), (1, 0, 0, 0));

    // The bystander never noticed.
    let before = other.echoed();
    eventually("the bystander to go on", || other.echoed() >= before + 4 * MIB).await;
    let (written, echoed, end) = other.finish().await;
    assert_eq!((echoed, end), (written, End::Eof));
    eventually("the bystander's connection to end", || status_of(&table, "bystander").stats.active == 0).await;
    eventually("the connection tasks to be gone", || alive_tasks() <= baseline_tasks).await;
    table.shutdown().await;
}
