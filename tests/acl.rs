//! Access control end to end: a route's `deny`/`allow` and the global `--deny`/`--allow`
//! refuse clients before anything is dialled, and every refusal is counted in
//! `dockward routes --json` and `/metrics`.

use std::io::{ErrorKind, Read as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use dockward_tests::dockward::{Dockward, connect, connect_from, echo_server, http_get, round_trip, udp_echo_server};
use dockward_tests::prometheus;

/// A target that must never be dialled: a listener nobody accepts from, checked at the end.
struct UntouchedTarget(TcpListener);

impl UntouchedTarget {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
        listener.set_nonblocking(true).expect("non-blocking");
        UntouchedTarget(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("target address").port()
    }

    /// Fails if any connection reached the target.
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("the target was dialled (from {peer}) for a refused client"),
            Err(e) => panic!("accept on the target: {e}"),
        }
    }
}

/// Reads until the forwarder closes the connection: end of stream or a reset, never data.
fn assert_closed_without_data(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
        Ok(n) => panic!("a refused client received {n} bytes"),
        Err(e) => panic!("a refused client was neither closed nor reset: {e}"),
    }
}

fn metrics(dw: &Dockward) -> prometheus::Exposition {
    let (status, text) = http_get(&dw.admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn a_denied_client_is_closed_before_any_dial_and_counted() {
    let target = UntouchedTarget::new();
    let yaml = format!(
        "routes:\n  guarded:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    deny: [127.0.0.1, '::1']\n",
        target.port()
    );
    let dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("guarded");

    assert_closed_without_data(connect(listen));
    let row = dw.wait_route("guarded", "one denial", |r| r["denied"] == 1);
    assert_eq!((row["connections_total"].as_u64(), row["dial_errors"].as_u64()), (Some(0), Some(0)), "{row}");
    assert_eq!(row["proxy_header_errors"], 0, "{row}");
    target.assert_untouched();

    let exp = metrics(&dw);
    let route = [("alias", "guarded"), ("protocol", "tcp")];
    assert_eq!(exp.types.get("dockward_route_denied_total").map(String::as_str), Some("counter"));
    assert_eq!(exp.value("dockward_route_denied_total", &route), Some(1.0));
    assert_eq!(exp.value("dockward_route_proxy_header_errors_total", &route), Some(0.0));
    assert_eq!(exp.value("dockward_route_connections_total", &route), Some(0.0));

    // `dockward routes --json` carries the same counter.
    let out = dw.cli(&["routes", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON rows");
    assert_eq!(rows[0]["denied"], 1, "{rows:?}");
}

#[test]
fn the_global_deny_flag_refuses_the_clients_of_every_route() {
    let target = UntouchedTarget::new();
    let yaml = format!(
        "routes:\n  a:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n  b:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n",
        p = target.port()
    );
    let dw = Dockward::start_with_args(&yaml, "127.0.0.1:0", &["--deny", "127.0.0.0/8"]);
    for alias in ["a", "b"] {
        assert_closed_without_data(connect(dw.listen_addr(alias)));
        dw.wait_route(alias, "one denial", |r| r["denied"] == 1);
    }
    target.assert_untouched();
    assert!(dw.log().contains("global ACL set"), "the global ACL is logged at start:\n{}", dw.log());
}

#[test]
fn a_global_allow_list_admits_only_its_clients_and_route_lists_narrow_it() {
    let echo = echo_server();
    let loopback2 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let loopback3 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let yaml = format!(
        "routes:\n  open:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n  narrow:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n    deny: 127.0.0.3\n",
        p = echo.port()
    );
    let dw = Dockward::start_with_args(&yaml, "127.0.0.1:0", &["--allow", "127.0.0.2,127.0.0.3", "--allow", "::1"]);
    let open: SocketAddr = dw.listen_addr("open");
    let narrow: SocketAddr = dw.listen_addr("narrow");

    // 127.0.0.1 is in no allow list: refused everywhere.
    assert_closed_without_data(connect(open));
    dw.wait_route("open", "one denial", |r| r["denied"] == 1);
    // 127.0.0.2 and .3 are allowed globally.
    assert_eq!(round_trip(&mut connect_from(loopback2, open), b"from .2"), b"from .2");
    assert_eq!(round_trip(&mut connect_from(loopback3, open), b"from .3"), b"from .3");
    // The route's own deny still wins for .3.
    assert_eq!(round_trip(&mut connect_from(loopback2, narrow), b"from .2"), b"from .2");
    assert_closed_without_data(connect_from(loopback3, narrow));
    dw.wait_route("narrow", "one denial", |r| r["denied"] == 1);
    let row = dw.wait_route("open", "two connections", |r| r["connections_total"] == 2);
    assert_eq!(row["denied"], 1, "{row}");
}

#[test]
fn a_denied_udp_datagram_is_dropped_and_opens_no_session() {
    let echo = udp_echo_server();
    let yaml = format!(
        "routes:\n  dns:\n    scheme: udp\n    bind: 127.0.0.1\n    port: {}\n    deny: 127.0.0.1\n",
        echo.port()
    );
    let dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("dns");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.send_to(b"query", listen).expect("send");
    let row = dw.wait_route("dns", "one denial", |r| r["denied"] == 1);
    assert_eq!((row["connections_total"].as_u64(), row["bytes_in"].as_u64()), (Some(0), Some(0)), "{row}");
    let exp = metrics(&dw);
    assert_eq!(exp.value("dockward_route_denied_total", &[("alias", "dns"), ("protocol", "udp")]), Some(1.0));
    assert_eq!(exp.value("dockward_route_udp_sessions_total", &[("alias", "dns")]), Some(0.0));
}
