//! Routes files end to end: the built binary, a routes file, loopback echo servers.

use std::time::{Duration, Instant};

use dockward_tests::dockward::{
    DEADLINE, Dockward, connect, echo_server, echo_via, poll, round_trip, routes_yaml, udp_echo_server,
};

#[test]
fn traffic_flows_through_a_file_route_and_is_counted() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("echo", echo.port())]));
    let listen = dw.listen_addr("echo");
    assert!(listen.ip().is_loopback() && listen.port() != 0, "bound address {listen}");

    let mut stream = connect(listen);
    assert_eq!(round_trip(&mut stream, b"hello dockward"), b"hello dockward");
    assert_eq!(round_trip(&mut stream, &[7u8; 1000]), vec![7u8; 1000]);
    drop(stream);

    let row = dw.wait_route("echo", "counted 1014 bytes each way", |r| {
        r["bytes_in"] == 1014 && r["bytes_out"] == 1014 && r["connections_active"] == 0
    });
    assert_eq!(row["connections_total"], 1);
    assert_eq!(row["protocol"], "tcp");
    assert_eq!(row["state"], "listening");
    assert_eq!(row["error"], serde_json::Value::Null);
    assert_eq!(row["targets"], serde_json::json!([format!("127.0.0.1:{}", echo.port())]));
    assert_eq!(row["source"], dw.routes_file.display().to_string());

    // The CLI shows the same numbers.
    let out = dw.cli(&["routes", "--json"]);
    assert!(out.status.success(), "routes --json: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("routes --json prints JSON");
    let row = rows.iter().find(|r| r["alias"] == "echo").expect("the echo route");
    assert_eq!((row["bytes_in"].as_u64(), row["bytes_out"].as_u64()), (Some(1014), Some(1014)));
    assert_eq!(row["listen"], listen.to_string());
}

#[test]
fn an_edited_file_adds_a_route_within_a_second_and_open_connections_keep_working() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("first", echo.port())]));
    let first = dw.listen_addr("first");
    let mut open = connect(first);
    assert_eq!(round_trip(&mut open, b"before"), b"before");

    let edited = Instant::now();
    dw.write_routes(&routes_yaml(&[("first", echo.port()), ("second", echo.port())]));
    let second = dw.listen_addr("second");
    assert_eq!(echo_via(second, b"new route"), b"new route");
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(1), "the new route answered after {took:?}");

    // The unchanged route was neither restarted nor disturbed.
    assert_eq!(dw.listen_addr("first"), first);
    assert_eq!(round_trip(&mut open, b"after"), b"after");
    let row = dw.wait_route("first", "one connection open", |r| r["connections_active"] == 1);
    assert_eq!(row["connections_total"], 1);
}

#[test]
fn a_file_replaced_by_rename_is_seen_and_a_removed_route_closes() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("old", echo.port())]));
    let old = dw.listen_addr("old");

    dw.replace_routes(&routes_yaml(&[("new", echo.port())]));
    let new = dw.listen_addr("new");
    assert_eq!(echo_via(new, b"renamed"), b"renamed");
    poll("the old route to be gone", DEADLINE, || dw.routes().iter().all(|r| r["alias"] != "old").then_some(()));
    assert!(std::net::TcpStream::connect(old).is_err(), "the removed route's port {old} still accepts");
}

#[test]
fn a_broken_file_keeps_the_old_routes_running_and_shows_the_error() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("steady", echo.port())]));
    let steady = dw.listen_addr("steady");
    let mut open = connect(steady);
    assert_eq!(round_trip(&mut open, b"one"), b"one");

    dw.write_routes("routes:\n  steady:\n    bind: 127.0.0.1\n    prot: 22\n");
    let error = poll("the file error to show", DEADLINE, || {
        dw.routes().into_iter().find(|r| r["state"] == "error" && r["protocol"].is_null())
    });
    assert_eq!(error["alias"], "steady");
    assert_eq!(error["source"], dw.routes_file.display().to_string());
    assert_eq!(error["error"], r#"prot "22": unknown field (did you mean "port"?)"#);

    // The last good version keeps serving, the open connection and new ones alike.
    assert_eq!(dw.listen_addr("steady"), steady);
    assert_eq!(round_trip(&mut open, b"two"), b"two");
    assert_eq!(echo_via(steady, b"three"), b"three");
    assert!(dw.log().contains("routes file not applied"), "the log says why:\n{}", dw.log());

    // The table shows the error row too.
    let table = dw.cli(&["routes"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(r#"error: prot "22": unknown field (did you mean "port"?)"#), "{table}");

    // Fixing the file clears the error.
    dw.write_routes(&routes_yaml(&[("steady", echo.port())]));
    poll("the error to clear", DEADLINE, || dw.routes().iter().all(|r| r["state"] == "listening").then_some(()));
    assert_eq!(round_trip(&mut open, b"four"), b"four");
}

#[test]
fn a_port_taken_by_another_program_shows_the_bind_error() {
    let echo = echo_server();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let dw = Dockward::start(&format!("routes:\n  late:\n    bind: 127.0.0.1\n    port: {port}:{}\n", echo.port()));
    let row = dw.wait_route("late", "in error", |r| r["state"] == "error");
    let error = row["error"].as_str().unwrap_or_default();
    assert!(error.contains("Address already in use"), "{error}");
}

#[test]
fn datagrams_flow_through_a_udp_route_and_are_counted() {
    let echo = udp_echo_server();
    let yaml = format!("routes:\n  dns:\n    scheme: udp\n    bind: 127.0.0.1\n    port: {}\n", echo.port());
    let dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("dns");

    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    client.connect(listen).expect("connect");
    let mut buf = [0u8; 64];
    for message in [&b"query one"[..], b"query two!"] {
        client.send(message).expect("send");
        let n = client.recv(&mut buf).expect("the echo comes back through dockward");
        assert_eq!(&buf[..n], message);
    }

    let row =
        dw.wait_route("dns", "counted two datagrams each way", |r| r["datagrams_in"] == 2 && r["datagrams_out"] == 2);
    assert_eq!(row["protocol"], "udp");
    assert_eq!((row["bytes_in"].as_u64(), row["bytes_out"].as_u64()), (Some(19), Some(19)));
    assert_eq!((row["connections_active"].as_u64(), row["connections_total"].as_u64()), (Some(1), Some(1)));
}
