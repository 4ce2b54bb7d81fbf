//! Out of descriptors: when `accept` fails with EMFILE the TCP accept loop backs off instead
//! of spinning on the still-readable listener, and serves the waiting clients once
//! descriptors are free again.
//!
//! The scenario lowers the process's RLIMIT_NOFILE and uses up every descriptor, which would
//! starve any other test running beside it, so it runs in a child process: this test binary
//! re-executed with [`CHILD_ENV`] set and a filter selecting the one test.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proxy_core::RouteTable;
use socket2::{Domain, Socket, Type};

/// Set in the child process: run the scenario instead of spawning a child.
const CHILD_ENV: &str = "PROXY_CORE_EMFILE_CHILD";
/// The test's name, to select it in the child.
const TEST_NAME: &str = "accept_backs_off_on_emfile_without_spinning_and_recovers";
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
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "the child did not run the scenario:\n{stdout}");
}

/// The scenario, in the child process.
fn child() {
    let log = Log::default();
    tracing_subscriber::fmt().with_writer(log.clone()).with_ansi(false).with_env_filter("proxy_core=error").init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        match tokio::time::timeout(DEADLINE * 3, scenario(log)).await {
            Ok(()) => {}
            Err(_) => panic!("the EMFILE scenario did not finish within {:?}", DEADLINE * 3),
        }
    });
}

async fn scenario(log: Log) {
    let echo = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("emfile", echo.addr)).await;

    // The clients' sockets are made while descriptors are plentiful; connecting them later
    // takes none.
    let clients: Vec<Socket> =
        (0..CLIENTS).map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).expect("a client socket")).collect();

    // A limit just above the highest open descriptor, then every free slot filled.
    let highest = highest_fd();
    set_nofile_limit(highest + 32);
    let mut filler = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
    }
    assert!(!filler.is_empty(), "no descriptor was free to fill");

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
