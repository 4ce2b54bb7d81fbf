//! The access log end to end: `dockward run --access-log FILE` writes one line per
//! connection as it ends, reopens the file on SIGHUP (logrotate), counts what it drops in
//! /metrics, and the fail2ban example matches the lines it really wrote.
//!
//! The fail2ban check needs Debian's `fail2ban-regex`: SKIP without it, FAIL when
//! DOCKWARD_REQUIRE_FAIL2BAN=1 (set by .ci/run).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use dockward_tests::dockward::{DEADLINE, Dockward, connect_from, echo_server, http_get, poll, round_trip, signal};
use dockward_tests::skip::skip;

/// Lines of the access log at `path` so far (none while it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits until the access log at `path` has at least `n` lines, and returns them.
fn wait_lines(dw: &Dockward, path: &Path, n: usize) -> Vec<String> {
    poll(&format!("{n} access-log lines in {}:\n{}", path.display(), dw.log()), DEADLINE, || {
        let lines = lines(path);
        (lines.len() >= n).then_some(lines)
    })
}

/// A route `ssh` to an echo server, denying 127.0.0.2 (the brute forcer of these tests).
fn start(args: &[&str]) -> (Dockward, SocketAddr) {
    let echo = echo_server();
    let yaml = format!(
        "routes:\n  ssh:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    deny: [127.0.0.2]\n",
        echo.port()
    );
    let dw = Dockward::start_with_args(&yaml, "127.0.0.1:0", args);
    let listen = dw.listen_addr("ssh");
    (dw, listen)
}

/// One connection from `from` that sends `message`, reads it back and closes.
fn echo_from(from: IpAddr, listen: SocketAddr, message: &[u8]) {
    let mut stream = connect_from(from, listen);
    assert_eq!(round_trip(&mut stream, message), message);
}

/// Connects from `from` and waits until dockward closes the connection unanswered.
fn refused_from(from: IpAddr, listen: SocketAddr) {
    use std::io::Read as _;
    let mut stream = connect_from(from, listen);
    let mut buf = [0u8; 16];
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)), "a denied client gets no bytes");
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[test]
fn each_connection_is_one_text_line_naming_client_target_bytes_and_outcome() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let (dw, listen) = start(&["--access-log", path.to_str().expect("utf-8 path")]);
    echo_from(CLIENT, listen, b"hello");
    refused_from(ATTACKER, listen);
    let lines = wait_lines(&dw, &path, 2);
    let closed = lines.iter().find(|l| l.contains("outcome=closed")).expect("a closed line");
    let fields: Vec<&str> = closed.split(' ').collect();
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "RFC 3339 time first: {closed}");
    assert_eq!(&fields[1..4], ["ssh", "tcp", &listen.to_string()], "{closed}");
    assert!(fields[4].starts_with("client=127.0.0.3:"), "{closed}");
    assert!(fields[5].starts_with("target=127.0.0.1:"), "{closed}");
    assert_eq!(&fields[7..], ["in=5", "out=5", "outcome=closed"], "{closed}");
    let denied = lines.iter().find(|l| l.contains("outcome=denied")).expect("a denied line");
    assert!(denied.contains(" client=127.0.0.2:") && denied.contains(" target=- "), "{denied}");
    assert!(denied.ends_with(r#"outcome=denied error="route ACL: in deny list""#), "{denied}");
}

#[test]
fn json_lines_parse_and_the_log_is_off_unless_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.json");
    let (dw, listen) = start(&["--access-log", path.to_str().expect("utf-8 path"), "--access-log-format", "json"]);
    echo_from(CLIENT, listen, b"abc");
    let line = wait_lines(&dw, &path, 1).remove(0);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        (v["alias"].as_str(), v["protocol"].as_str(), v["outcome"].as_str()),
        (Some("ssh"), Some("tcp"), Some("closed"))
    );
    assert_eq!((v["bytes_in"].as_u64(), v["bytes_out"].as_u64()), (Some(3), Some(3)));
    assert!(v["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.3:")), "{line}");
    assert!(v["error"].is_null(), "{line}");
    let (status, metrics) = http_get(&dw.admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("dockward_access_log_dropped_total 0"), "{metrics}");

    // Without --access-log: no line anywhere, and no dropped counter.
    let (quiet, listen) = start(&[]);
    echo_from(CLIENT, listen, b"abc");
    let (_, metrics) = http_get(&quiet.admin, "/metrics").expect("GET /metrics");
    assert!(!metrics.contains("access_log_dropped"), "{metrics}");
    assert!(!quiet.log().contains("outcome="), "{}", quiet.log());
}

#[test]
fn the_file_is_reopened_on_sighup_after_logrotate_moves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let (dw, listen) = start(&["--access-log", path.to_str().expect("utf-8 path")]);
    echo_from(CLIENT, listen, b"before");
    wait_lines(&dw, &path, 1);
    std::fs::rename(&path, &rotated).expect("rotate");
    signal(dw.pid(), libc::SIGHUP);
    // The signal is handled asynchronously: connect until a line lands in the new file.
    poll(&format!("a line in the reopened file; log:\n{}", dw.log()), DEADLINE, || {
        echo_from(CLIENT, listen, b"after");
        (!lines(&path).is_empty()).then_some(())
    });
    assert!(lines(&rotated).iter().any(|l| l.contains("in=6 out=6")), "the first line stayed in the rotated file");
    assert!(lines(&path).iter().all(|l| l.contains("in=5 out=5")), "the new file has only later lines");
    let mut dw = dw;
    assert!(dw.is_running(), "SIGHUP does not stop dockward");
}

#[test]
fn the_fail2ban_example_matches_denied_and_short_ssh_connections_dockward_wrote() {
    const TEST: &str = "the_fail2ban_example_matches_denied_and_short_ssh_connections_dockward_wrote";
    let required = std::env::var_os("DOCKWARD_REQUIRE_FAIL2BAN").is_some_and(|v| v == "1");
    if Command::new("fail2ban-regex").arg("--version").output().is_err() {
        assert!(!required, "fail2ban-regex is missing and DOCKWARD_REQUIRE_FAIL2BAN=1");
        skip("fail2ban", TEST, "fail2ban-regex not installed (apt-get install fail2ban)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let (dw, listen) = start(&["--access-log", path.to_str().expect("utf-8 path")]);
    for _ in 0..3 {
        refused_from(ATTACKER, listen);
    }
    for _ in 0..2 {
        echo_from(CLIENT, listen, b"guess");
    }
    wait_lines(&dw, &path, 5);
    drop(dw);

    let filter = dockward_tests::dockward::workspace_root().join("examples/fail2ban/filter.d/dockward-ssh.conf");
    let out = Command::new("fail2ban-regex").arg(&path).arg(&filter).output().expect("fail2ban-regex runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fail2ban-regex failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Lines: 5 lines, 0 ignored, 5 matched, 0 missed"), "{report}");
    let ips = Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(&path)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex runs");
    let matched = String::from_utf8_lossy(&ips.stdout);
    assert_eq!(matched.matches("client=127.0.0.2:").count(), 3, "{matched}");

    // Another route's lines are not SSH's: the alias is part of the filter.
    let other = std::fs::read_to_string(&path).expect("read").replace(" ssh tcp ", " web tcp ");
    let other_path = dir.path().join("web.log");
    std::fs::write(&other_path, other).expect("write");
    let out = Command::new("fail2ban-regex").arg(&other_path).arg(&filter).output().expect("fail2ban-regex runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 matched, 5 missed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_client_over_its_rate_limit_is_limited_in_the_log_the_routes_json_and_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let echo = echo_server();
    let yaml = format!(
        "routes:\n  ssh:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    rate_limit: 1/m\n    rate_limit_burst: 2\n    \
         max_connections_per_ip: 5\n",
        echo.port()
    );
    let dw = Dockward::start_with_args(&yaml, "127.0.0.1:0", &["--access-log", path.to_str().expect("utf-8 path")]);
    let listen = dw.listen_addr("ssh");
    echo_from(CLIENT, listen, b"one");
    echo_from(CLIENT, listen, b"two");
    refused_from(CLIENT, listen);
    echo_from(ATTACKER, listen, b"other client");
    let lines = wait_lines(&dw, &path, 4);
    let limited: Vec<_> = lines.iter().filter(|l| l.contains("outcome=limited")).collect();
    assert_eq!(limited.len(), 1, "{lines:#?}");
    assert!(
        limited[0].contains(" client=127.0.0.3:") && limited[0].ends_with(r#"error="rate_limit 1/m exceeded""#),
        "{}",
        limited[0]
    );
    let row = dw.wait_route("ssh", "limited once", |r| r["limited"] == 1);
    assert_eq!(row["connections_total"], 3, "{row}");
    let (_, metrics) = http_get(&dw.admin, "/metrics").expect("GET /metrics");
    assert!(metrics.lines().any(|l| l.starts_with("dockward_route_limited_total{") && l.ends_with(" 1")), "{metrics}");
}
