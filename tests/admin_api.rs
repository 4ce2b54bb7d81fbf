//! The admin API and `dockward routes`: JSON, table, metrics, health, unix sockets, and a
//! controller that is not there.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use dockward_tests::dockward::{
    Dockward, command, connect, echo_server, http_get, http_get_with, round_trip, routes_yaml,
};
use dockward_tests::prometheus;

#[test]
fn metrics_parse_as_prometheus_text_and_carry_the_counters() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("echo", echo.port())]));
    let listen = dw.listen_addr("echo");
    let mut stream = connect(listen);
    assert_eq!(round_trip(&mut stream, b"0123456789"), b"0123456789");
    dw.wait_route("echo", "counted", |r| r["bytes_out"] == 10);

    let (status, text) = http_get(&dw.admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let exp = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let route = [("alias", "echo"), ("protocol", "tcp")];
    assert_eq!(exp.types.get("dockward_route_connections_total").map(String::as_str), Some("counter"));
    assert_eq!(exp.value("dockward_route_connections_total", &route), Some(1.0));
    assert_eq!(exp.value("dockward_route_connections_active", &route), Some(1.0));
    assert_eq!(exp.value("dockward_route_bytes_in_total", &route), Some(10.0));
    assert_eq!(exp.value("dockward_route_bytes_out_total", &route), Some(10.0));
    assert_eq!(exp.value("dockward_route_dial_errors_total", &route), Some(0.0));
    assert_eq!(exp.value("dockward_route_up", &route), Some(1.0));
    assert_eq!(exp.value("dockward_route_up", &[("alias", "echo"), ("listen", &listen.to_string())]), Some(1.0));
    for family in ["dockward_route_udp_sessions_total", "dockward_route_udp_sessions_active", "dockward_build_info"] {
        assert!(exp.types.contains_key(family), "{family} is declared:\n{text}");
    }

    // Prometheus servers that ask for OpenMetrics get it, ending with # EOF.
    let (status, om) = http_get_with(&dw.admin, "/metrics", &[("Accept", "application/openmetrics-text")])
        .expect("GET /metrics as OpenMetrics");
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("dockward_route_bytes_in_total{alias=\"echo\",protocol=\"tcp\""), "{om}");
}

#[test]
fn a_dial_error_is_counted_and_shown() {
    // A port nobody listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dw = Dockward::start(&routes_yaml(&[("nowhere", dead)]));
    let listen = dw.listen_addr("nowhere");
    let mut stream = connect(listen);
    let mut buf = [0u8; 1];
    // The forwarder closes the client when the dial fails.
    let _ = std::io::Read::read(&mut stream, &mut buf);
    let row = dw.wait_route("nowhere", "one dial error", |r| r["dial_errors"] == 1);
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("refused")), "{row}");
    assert_eq!(row["state"], "listening");
}

#[test]
fn healthz_answers_and_unknown_paths_are_404() {
    let dw = Dockward::start("routes: {}\n");
    assert_eq!(http_get(&dw.admin, "/healthz").expect("GET /healthz"), (200, "ok\n".to_string()));
    let (status, body) = http_get(&dw.admin, "/nope").expect("GET /nope");
    assert_eq!(status, 404);
    assert!(body.contains("/routes, /healthz and /metrics"), "{body}");
}

#[test]
fn routes_prints_a_table_with_the_documented_columns() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("echo", echo.port())]));
    let listen = dw.listen_addr("echo");
    let mut stream = connect(listen);
    assert_eq!(round_trip(&mut stream, b"12345"), b"12345");
    dw.wait_route("echo", "counted", |r| r["bytes_out"] == 5);

    let out = dw.cli(&["routes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ALIAS", "PROTO", "LISTEN", "TARGETS", "SOURCE", "STATE", "CONNS", "IN", "OUT", "AGE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    let target = format!("127.0.0.1:{}", echo.port());
    let source = dw.routes_file.display().to_string();
    let listen = listen.to_string();
    assert_eq!(row[..10], ["echo", "tcp", &listen, &target, &source, "listening", "1/1", "5", "B", "5"], "{table}");
    assert_eq!(row[10], "B");
    assert!(row[11].ends_with('s'), "AGE in seconds: {}", row[11]);
    // Columns line up under their headers.
    assert_eq!(lines[0].find("STATE"), lines[1].find("listening"), "{table}");
}

#[test]
fn routes_reads_the_admin_address_from_the_environment() {
    let dw = Dockward::start("routes: {}\n");
    let out = command().args(["routes", "--json"]).env("DOCKWARD_ADMIN", &dw.admin).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn routes_against_a_dead_address_exits_non_zero_with_a_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let out = command().args(["routes", "--admin", &addr]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: no dockward controller answers at {addr} (is `dockward run` running?")),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");

    let out = command().args(["routes", "--admin", "unix:/nonexistent/dockward.sock"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no dockward controller answers at unix:/nonexistent/dockward.sock"), "{stderr}");
}

#[test]
fn routes_against_a_port_that_streams_without_end_stops_at_the_size_cap() {
    // Issue 15 #11: the answer used to be buffered until the 5 s timeout (1.4 GB).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            request.push(byte[0]);
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0usize;
        // Until the client hangs up.
        while stream.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let out = command().args(["routes", "--admin", &addr]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(stderr.contains("the answer is larger than 64 MiB: is this a dockward admin API?"), "{stderr}");
    let sent = server.join().expect("server thread");
    // What the client read is capped; the kernel's buffers hold a few MiB more at most.
    assert!(sent < 128 * 1024 * 1024, "the server sent {sent} bytes before the client hung up");
}

#[test]
fn the_admin_api_serves_on_an_owner_only_unix_socket() {
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let sock = sock_dir.path().join("admin.sock");
    let admin = format!("unix:{}", sock.display());
    let mut dw = Dockward::start_with("routes: {}\n", &admin);
    assert_eq!(dw.admin, admin);
    let mode = std::fs::metadata(&sock).expect("socket exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = dw.cli(&["routes", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    dw.sigterm();
    assert!(dw.wait_exit(Duration::from_secs(10)).success());
    assert!(!sock.exists(), "the socket is removed on exit");
}
