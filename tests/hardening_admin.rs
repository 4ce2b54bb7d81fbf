//! The admin API under hostile clients (issue 15 items 4, 9 and 17): timeouts, a connection
//! cap that keeps `/healthz` answering, its own thread, and a v4-mapped loopback address.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dockward_tests::dockward::{DEADLINE, Dockward, http_get, poll};

/// Whether the server closed `stream`: a read returns end-of-file (or a reset) rather than
/// timing out after `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A response still on its way; keep reading.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn silent_half_sent_and_idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let dw = Dockward::start_with_args("routes: {}\n", "127.0.0.1:0", &["--admin-header-timeout", "1s"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&dw.admin).expect("connect");
    let mut partial = TcpStream::connect(&dw.admin).expect("connect");
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: dockward\r\nX-Slow: ").expect("write");
    let mut keep_alive = TcpStream::connect(&dw.admin).expect("connect");
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: dockward\r\n\r\n").expect("write");
    let mut head = [0u8; 17];
    keep_alive.read_exact(&mut head).expect("the first answer");
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");

    for (name, stream) in [("silent", &mut silent), ("partial", &mut partial), ("keep-alive", &mut keep_alive)] {
        assert!(closed_within(stream, DEADLINE), "the {name} connection is still open after {:?}", started.elapsed());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(http_get(&dw.admin, "/healthz").expect("GET /healthz").0, 200);
}

#[test]
fn connections_beyond_the_cap_close_the_least_recently_active_and_healthz_still_answers() {
    const CAP: usize = 8;
    const EXTRA: usize = 4;
    let dw = Dockward::start_with_args(
        "routes: {}\n",
        "127.0.0.1:0",
        &["--admin-max-connections", &CAP.to_string(), "--admin-header-timeout", "60s"],
    );
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..CAP + EXTRA {
        silent.push(TcpStream::connect(&dw.admin).expect("connect"));
    }
    // The oldest EXTRA made room for the newest.
    let closed = poll("EXTRA connections to be closed", DEADLINE, || {
        let closed: Vec<usize> =
            (0..silent.len()).filter(|&i| closed_within(&mut silent[i], Duration::from_millis(20))).collect();
        (closed.len() >= EXTRA).then_some(closed)
    });
    assert_eq!(closed, (0..EXTRA).collect::<Vec<_>>());

    // A health check still gets in, and is answered.
    let (status, body) = http_get(&dw.admin, "/healthz").expect("GET /healthz at the cap");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let still_open =
        (EXTRA..silent.len()).filter(|&i| !closed_within(&mut silent[i], Duration::from_millis(20))).count();
    assert_eq!(still_open, CAP - 1, "the health check took exactly one slot, from the stalest connection");
    assert!(dw.log().contains("admin API connection cap reached"), "{}", dw.log());
}

#[test]
fn the_admin_api_runs_on_its_own_thread() {
    let dw = Dockward::start("routes: {}\n");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", dw.pid())).expect("/proc/PID/task");
    let names: Vec<String> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "dockward-admin"), "threads: {names:?}");
    assert_eq!(http_get(&dw.admin, "/healthz").expect("GET /healthz").0, 200);
}

#[test]
fn a_v4_mapped_loopback_admin_address_is_loopback() {
    if std::net::TcpListener::bind("[::ffff:127.0.0.1]:0").is_err() {
        eprintln!("SKIP: no IPv6 sockets here");
        return;
    }
    let dw = Dockward::start_with("routes: {}\n", "[::ffff:127.0.0.1]:0");
    assert_eq!(http_get(&dw.admin, "/healthz").expect("GET /healthz").0, 200);
    assert!(!dw.log().contains("non-loopback"), "{}", dw.log());
}

#[test]
fn a_unix_socket_the_user_may_not_open_is_reported_as_permission_denied() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    // SAFETY: getuid(2) takes nothing and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIP: needs root to run `dockward routes` as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("admin.sock");
    let dw = Dockward::start_with("routes: {}\n", &format!("unix:{}", socket.display()));
    let out =
        match dockward_tests::dockward::command().args(["routes", "--admin", &dw.admin]).uid(65534).gid(65534).output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("SKIP: cannot run dockward as nobody: {e}");
                return;
            }
        };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("permission denied opening {}", dw.admin)), "{stderr}");
    assert!(!stderr.contains("no dockward controller answers"), "{stderr}");
}
