//! Out of descriptors: when `accept` fails with EMFILE the TCP accept loop backs off instead
//! of spinning on the still-readable listener, and serves the waiting clients once
//! descriptors are free again; when the dial fails with EMFILE the target is not marked down.
//!
//! Each scenario lowers the process's RLIMIT_NOFILE and uses up every descriptor, which would
//! starve any other test running beside it, so it runs in a child process: this test binary
//! re-executed by `common::child::in_child` with a filter selecting that test.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proxy_core::RouteTable;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in the child process to the test's name: run its scenario instead of spawning a child.
/// Clients waiting in the listen queue while descriptors are exhausted.
const CLIENTS: usize = 3;
/// How long CPU time and retries are measured while `accept` keeps failing.
const WINDOW: Duration = Duration::from_millis(800);
/// Most accept retries allowed in [`WINDOW`]: the backoff doubles from 5 ms to 1 s, so about
/// eight fit; a loop retrying every millisecond would make hundreds.
const MAX_RETRIES_IN_WINDOW: usize = 12;

/// The child's log, kept in memory so accept failures can be counted.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// How many "accept failed" events were logged so far.
    fn accept_failures(&self) -> usize {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).matches("accept failed").count()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn accept_backs_off_on_emfile_without_spinning_and_recovers() {
    in_child("accept_backs_off_on_emfile_without_spinning_and_recovers", "proxy_core=error", accept_scenario);
}

#[test]
fn a_dial_failing_with_emfile_does_not_mark_the_target_down() {
    in_child("a_dial_failing_with_emfile_does_not_mark_the_target_down", "proxy_core=debug", dial_scenario);
}

#[test]
fn a_reader_stalled_mid_transfer_holds_one_pipe_per_direction_until_it_reads() {
    in_child(
        "a_reader_stalled_mid_transfer_holds_one_pipe_per_direction_until_it_reads",
        "proxy_core=error",
        stalled_scenario,
    );
}

/// Runs `scenario` in a child process (this binary re-executed, selecting test `name`, by
/// [`child::in_child`]); in the child, runs it with the log captured at `filter`.
fn in_child<F: Future<Output = ()>>(name: &str, filter: &str, scenario: impl FnOnce(Log) -> F) {
    if !child::in_child(name) {
        return;
    }
    let log = Log::default();
    tracing_subscriber::fmt().with_writer(log.clone()).with_ansi(false).with_env_filter(filter).init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        match tokio::time::timeout(DEADLINE * 3, scenario(log)).await {
            Ok(()) => {}
            Err(_) => panic!("the scenario did not finish within {:?}", DEADLINE * 3),
        }
    });
}

/// Sets the limit just above the highest open descriptor and fills every free slot with
/// `/dev/null`; the files hold the slots until dropped.
fn fill_descriptor_table() -> Vec<File> {
    set_nofile_limit(highest_fd() + 32);
    let mut filler = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
    }
    assert!(!filler.is_empty(), "no descriptor was free to fill");
    filler
}

/// A client accepted with the last free descriptor: the dial's socket fails with EMFILE. That
/// is this host's failure, so the healthy target stays up (no `target_down`) and serves the
/// next client as soon as descriptors are free.
async fn dial_scenario(log: Log) {
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("emfile-dial", echo.addr)).await;
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a client socket");

    // Every descriptor but one in use: the proxy's accept takes it, its dial finds none.
    let mut filler = fill_descriptor_table();
    filler.pop();

    client.connect(&addr.into()).expect("the kernel queues the connection");
    eventually("the dial fails", || status_of(&table, "emfile-dial").stats.dial_errors == 1).await;
    drop(filler);

    let status = status_of(&table, "emfile-dial");
    assert!(
        status.stats.last_error.as_deref().is_some_and(|e| e.contains("Too many open files")),
        "the dial failed for another reason: {:?}",
        status.stats.last_error
    );
    let target = &status.targets[0];
    assert!(target.healthy, "a local EMFILE marked the target down: {target:?}");
    assert_eq!(target.failures, 0, "a local EMFILE counted as the target's failure");
    let logged = String::from_utf8_lossy(&log.0.lock().expect("log lock")).into_owned();
    assert!(!logged.contains("target_down"), "a local EMFILE was logged as target_down:\n{logged}");

    // The client of the failed dial is closed; the next one is served.
    let std_stream: std::net::TcpStream = client.into();
    std_stream.set_nonblocking(true).expect("non-blocking");
    let mut refused = tokio::net::TcpStream::from_std(std_stream).expect("register the client");
    expect_closed(&mut refused).await;
    let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect after the outage");
    echo_once(&mut next, b"after EMFILE").await;
    table.shutdown().await;
}

async fn accept_scenario(log: Log) {
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("emfile", echo.addr)).await;

    // The clients' sockets are made while descriptors are plentiful; connecting them later
    // takes none.
    let clients: Vec<Socket> =
        (0..CLIENTS).map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).expect("a client socket")).collect();

    // A limit just above the highest open descriptor, then every free slot filled.
    let filler = fill_descriptor_table();

    for client in &clients {
        client.connect(&addr.into()).expect("the kernel queues the connection");
    }
    eventually("accept reports EMFILE", || {
        status_of(&table, "emfile").stats.last_error.is_some_and(|e| e.contains("Too many open files"))
    })
    .await;

    // While accept keeps failing, the loop must not spin: a measurement window, not a wait
    // for anything to happen.
    let (cpu_before, wall_before, failures_before) = (cpu_time(), Instant::now(), log.accept_failures());
    tokio::time::sleep(WINDOW).await;
    let (cpu, wall, retries) =
        (cpu_time() - cpu_before, wall_before.elapsed(), log.accept_failures() - failures_before);
    assert!(cpu < wall / 5, "the accept loop spun: {cpu:?} of CPU in {wall:?} while out of descriptors");
    assert!(retries <= MAX_RETRIES_IN_WINDOW, "{retries} accept retries in {wall:?}: no backoff");
    assert_eq!(status_of(&table, "emfile").stats.total, 0, "nothing can have been accepted");

    // Descriptors back: the waiting clients are served (so the loop kept retrying).
    drop(filler);
    for client in clients {
        let std_stream: std::net::TcpStream = client.into();
        std_stream.set_nonblocking(true).expect("non-blocking");
        let mut stream = tokio::net::TcpStream::from_std(std_stream).expect("register the client");
        echo_once(&mut stream, b"after EMFILE").await;
    }
    assert_eq!(status_of(&table, "emfile").stats.total, CLIENTS as u64);
    table.shutdown().await;
}

/// A target that stops reading in the middle of a bulk upload: the connection holds its two
/// sockets and one pipe with bytes in it (the README's number: bytes in a pipe cannot be
/// handed back), no more; once the target reads again every byte arrives and the connection
/// ends holding none.
async fn stalled_scenario(_log: Log) {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the target");
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("stalled", target.local_addr().expect("target address"))).await;
    let (pipes_before, sockets_before) = (open_of("pipe:"), open_of("socket:"));

    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect to the proxy");
    let (mut server, _) = within("the proxy's dial", target.accept()).await.expect("accept the proxy");
    // Write until nothing more is taken: every buffer on the way is full and the proxy's
    // pipe holds bytes it cannot send.
    let chunk = vec![7u8; 256 * 1024];
    let mut sent = 0usize;
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 20 {
        match client.try_write(&chunk) {
            Ok(n) => {
                sent += n;
                refused_in_a_row = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused_in_a_row += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("writing to the proxy: {e}"),
        }
    }
    assert!(sent > 1024 * 1024, "only {sent} bytes were taken before the stall");
    // Client, server, and the proxy's two sockets; one pipe (two descriptors), holding bytes.
    assert_eq!(open_of("socket:") - sockets_before, 4, "sockets of one stalled connection");
    assert_eq!(open_of("pipe:") - pipes_before, 2, "pipe descriptors of one connection stalled one way");

    // The target reads again: every byte arrives, then the half-close, and the connection ends.
    client.shutdown().await.expect("half-close");
    let mut received = Vec::new();
    within("the stalled bytes", server.read_to_end(&mut received)).await.expect("read the upload");
    assert_eq!(received.len(), sent);
    drop(server);
    expect_closed(&mut client).await;
    drop(client);
    eventually("the connection's sockets closed", || open_of("socket:") == sockets_before).await;
    // The pipe went back to the pool (kept open for the next transfer), not to the connection.
    assert!(open_of("pipe:") - pipes_before <= 2, "pipes left open: {}", open_of("pipe:") - pipes_before);
    assert_eq!(status_of(&table, "stalled").stats.active, 0);
    table.shutdown().await;
}

/// How many of this process's descriptors are of a kind (`pipe:`, `socket:`).
fn open_of(kind: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(kind))
        .count()
}

/// The highest descriptor number open in this process.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Lowers the soft RLIMIT_NOFILE to `limit` (at most the hard limit).
fn set_nofile_limit(limit: u64) {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `current` is a valid, writable rlimit for getrlimit to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    let lowered = libc::rlimit { rlim_cur: limit.min(current.rlim_max), rlim_max: current.rlim_max };
    // SAFETY: `lowered` is a valid rlimit read by setrlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// User and system CPU time this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
