//! Stopping `dockward run`: signals, exit status, freed ports, drain grace.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use dockward_tests::dockward::{DEADLINE, Dockward, connect, echo_server, poll, round_trip, routes_yaml, signal};

#[test]
fn sigterm_exits_zero_and_frees_the_ports() {
    let echo = echo_server();
    let mut dw = Dockward::start(&routes_yaml(&[("a", echo.port()), ("b", echo.port())]));
    let a = dw.listen_addr("a");
    let b = dw.listen_addr("b");
    let mut open = connect(a);
    assert_eq!(round_trip(&mut open, b"x"), b"x");

    dw.sigterm();
    let status = dw.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", dw.log());

    // Every port is free again: the routes' and the admin API's.
    let admin = dw.admin.clone();
    for addr in [a.to_string(), b.to_string(), admin] {
        TcpListener::bind(&addr).unwrap_or_else(|e| panic!("{addr} still taken after exit: {e}"));
    }
    // With no drain grace the open connection was closed, not left dangling.
    let mut buf = [0u8; 1];
    let closed = open.read(&mut buf);
    assert!(
        matches!(closed, Ok(0)) || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}"
    );
    assert!(dw.log().contains("stopping signal=\"SIGTERM\""), "{}", dw.log());
}

#[test]
fn sigint_stops_it_too() {
    let mut dw = Dockward::start("routes: {}\n");
    signal(dw.pid(), libc::SIGINT);
    assert_eq!(dw.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn open_connections_may_finish_within_the_drain_grace() {
    let echo = echo_server();
    let yaml = format!(
        "routes:\n  slow:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    drain_grace: 30s\n",
        echo.port()
    );
    let mut dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("slow");
    let mut open = connect(listen);
    assert_eq!(round_trip(&mut open, b"before"), b"before");

    dw.sigterm();
    // The listener closes at once ...
    poll("the listener to close", DEADLINE, || TcpStream::connect(listen).is_err().then_some(()));
    // ... while the open connection keeps working and the process waits for it.
    assert_eq!(round_trip(&mut open, b"draining"), b"draining");
    assert!(dw.is_running(), "dockward exited before its open connection finished");

    // Once the client is done, dockward exits well before the grace runs out.
    drop(open);
    let status = dw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", dw.log());
}

#[test]
fn a_second_signal_stops_waiting_for_open_connections() {
    let echo = echo_server();
    let yaml = format!(
        "routes:\n  slow:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    drain_grace: 1h\n",
        echo.port()
    );
    let mut dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("slow");
    let mut open = connect(listen);
    assert_eq!(round_trip(&mut open, b"x"), b"x");

    dw.sigterm();
    poll("the listener to close", DEADLINE, || TcpStream::connect(listen).is_err().then_some(()));
    dw.sigterm();
    let status = dw.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "an interrupted drain is not a clean stop; log:\n{}", dw.log());
}

#[test]
fn run_with_nothing_to_serve_is_a_usage_error() {
    let out = dockward_tests::dockward::run(&["run", "--no-docker", "--admin", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--routes <FILE>"));
}
