//! The route table's `apply(desired)` diff, drain and shutdown, seen through real sockets:
//! which listeners stay bound, which connections survive, which ports are free again.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use proxy_core::{Family, Protocol, RouteOptions, RouteSpec, RouteState, RouteTable, Target};
use tokio::net::TcpStream;

/// A TCP route `alias` on an explicit listen address.
fn route_on(alias: &str, listen: SocketAddr, target: &Server) -> RouteSpec {
    RouteSpec::new(alias, Protocol::Tcp, listen, vec![target.target()])
}

/// Whether a plain listener can bind `addr` right now.
fn can_bind(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

#[tokio::test]
async fn a_connection_on_an_unchanged_route_survives_a_hundred_applies_of_other_routes() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let keep = tcp_route("keep", echo.addr);
    let addr = apply_one(&table, keep.clone()).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"before").await;

    for i in 0..100 {
        // Each round adds one route and removes the previous round's; every other round a
        // "flapper" route comes and goes too.
        let mut desired = vec![keep.clone(), tcp_route(&format!("other-{i}"), echo.addr)];
        if i % 2 == 0 {
            desired.push(tcp_route("flapper", echo.addr));
        }
        let report = table.apply(desired).await;
        assert_eq!(report.unchanged, vec![keep.id()], "round {i}");
        assert!(report.failed.is_empty(), "round {i}: {:?}", report.failed);
        echo_once(&mut client, format!("after apply {i}").as_bytes()).await;
    }

    assert_eq!(bound_of(&table, "keep"), addr, "the listener was never rebound");
    let stats = status_of(&table, "keep").stats;
    assert_eq!((stats.total, stats.active), (1, 1), "the one connection was never redialled");
    table.shutdown().await;
}

#[tokio::test]
async fn a_target_update_keeps_the_listener_and_the_open_connection_on_the_old_target() {
    init_tracing();
    let old = echo_server();
    let new = echo_server();
    let table = RouteTable::new();
    let addr = apply_one(&table, tcp_route("svc", old.addr)).await;
    let mut before = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut before, b"to the old target").await;

    let updated = tcp_route("svc", new.addr);
    let report = table.apply(vec![updated.clone()]).await;
    assert_eq!(report.updated, vec![updated.id()]);
    assert_eq!(bound_of(&table, "svc"), addr, "same listener, same port");
    assert_eq!(status_of(&table, "svc").spec.targets, updated.targets);

    echo_once(&mut before, b"still the old target").await;
    assert_eq!((old.accepted(), new.accepted()), (1, 0), "the open connection was not redialled");

    let mut after = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut after, b"to the new target").await;
    assert_eq!((old.accepted(), new.accepted()), (1, 1), "new connections reach the new target");
    echo_once(&mut before, b"and the old one carries on").await;
    table.shutdown().await;
}

#[tokio::test]
async fn removal_frees_the_port_and_closes_open_connections_at_once() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("gone", echo.addr);
    let addr = apply_one(&table, spec.clone()).await;
    assert!(!can_bind(addr), "precondition: a listening route holds its port");
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"hello").await;

    let report = table.apply(vec![]).await;
    assert_eq!(report.removed, vec![spec.id()]);
    assert!(can_bind(addr), "the port must be free as soon as apply returns");
    assert!(table.status().is_empty());
    expect_closed(&mut client).await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_bind_conflict_is_reported_does_not_stop_other_routes_and_is_retried() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let outsider = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let taken = outsider.local_addr().expect("local_addr");
    let blocked = route_on("blocked", taken, &echo);
    let fine = tcp_route("fine", echo.addr);

    let report = table.apply(vec![blocked.clone(), fine.clone()]).await;
    assert_eq!(report.started, vec![fine.id()]);
    let status = status_of(&table, "blocked");
    let RouteState::Error { message } = &status.state else { panic!("expected an error, got {:?}", status.state) };
    assert_eq!(message, &format!("cannot bind tcp {taken}: Address already in use (os error 98)"));
    assert_eq!(status.bound, None);
    assert_eq!(status.stats.last_error.as_ref(), Some(message));
    assert_eq!(report.failed, vec![(blocked.id(), status.state.clone())]);

    let mut client = TcpStream::connect(bound_of(&table, "fine")).await.expect("connect");
    echo_once(&mut client, b"unaffected").await;

    drop(outsider);
    let report = table.apply(vec![blocked.clone(), fine.clone()]).await;
    assert_eq!(report.started, vec![blocked.id()], "retried on the next apply");
    assert_eq!(report.unchanged, vec![fine.id()]);
    assert_eq!(status_of(&table, "blocked").state, RouteState::Listening);
    assert_eq!(bound_of(&table, "blocked"), taken);
    let mut client = TcpStream::connect(taken).await.expect("connect");
    echo_once(&mut client, b"now up").await;
    table.shutdown().await;
}

#[tokio::test]
async fn of_two_routes_on_one_address_the_first_keeps_it_and_the_second_takes_over_when_it_goes() {
    init_tracing();
    let echo_first = echo_server();
    let echo_second = echo_server();
    let table = RouteTable::new();
    let port = refused_addr();
    // Named against alphabetical order: "given first" must not mean "sorts first".
    let first = route_on("zeta", port, &echo_first);
    let second = route_on("alpha", port, &echo_second);

    let report = table.apply(vec![first.clone(), second.clone()]).await;
    assert_eq!(report.started, vec![first.id()]);
    let conflict = RouteState::Conflict { with: first.id() };
    assert_eq!(report.failed, vec![(second.id(), conflict.clone())]);
    assert_eq!(status_of(&table, "alpha").state, conflict);
    let message = conflict.message().unwrap_or_default();
    assert!(message.contains("route \"zeta\""), "the conflict names the holder: {message}");

    let mut client = TcpStream::connect(port).await.expect("connect");
    echo_once(&mut client, b"first").await;
    assert_eq!((echo_first.accepted(), echo_second.accepted()), (1, 0));

    // Still in conflict while the first stays, however often it is applied.
    let report = table.apply(vec![first.clone(), second.clone()]).await;
    assert_eq!(report.failed, vec![(second.id(), conflict)]);

    let report = table.apply(vec![second.clone()]).await;
    assert_eq!((report.removed, report.started), (vec![first.id()], vec![second.id()]));
    assert_eq!(bound_of(&table, "alpha"), port);
    let mut client = TcpStream::connect(port).await.expect("connect");
    echo_once(&mut client, b"second").await;
    assert_eq!((echo_first.accepted(), echo_second.accepted()), (1, 1));
    table.shutdown().await;
}

#[tokio::test]
async fn a_route_whose_bind_fails_leaves_its_address_to_the_next_route_in_the_same_apply() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    // A listener on 127.0.0.2 keeps the wildcard off its port, but not 127.0.0.1.
    let outsider = std::net::TcpListener::bind(("127.0.0.2", 0)).expect("bind");
    let port = outsider.local_addr().expect("local_addr").port();
    let wildcard = route_on("wildcard", SocketAddr::from(([0, 0, 0, 0], port)), &echo);
    let local = route_on("local", SocketAddr::from((LOCALHOST, port)), &echo);

    let report = table.apply(vec![wildcard.clone(), local.clone()]).await;
    assert_eq!(report.started, vec![local.id()], "the younger route binds once the older one failed");
    let failed =
        RouteState::Error { message: format!("cannot bind tcp 0.0.0.0:{port}: Address already in use (os error 98)") };
    assert_eq!(report.failed, vec![(wildcard.id(), failed)]);
    let mut client = TcpStream::connect((LOCALHOST, port)).await.expect("connect");
    echo_once(&mut client, b"local").await;

    // Retried on the next apply, the wildcard now finds its address held.
    drop(outsider);
    let report = table.apply(vec![wildcard.clone(), local.clone()]).await;
    assert_eq!(report.failed, vec![(wildcard.id(), RouteState::Conflict { with: local.id() })]);
    assert_eq!(report.unchanged, vec![local.id()]);
    table.shutdown().await;
}

#[tokio::test]
async fn an_invalid_spec_is_listed_with_the_validation_message() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let invalid = tcp_route("ssh", echo.addr).with_family(Family::V6);
    let fine = tcp_route("fine", echo.addr);

    let report = table.apply(vec![invalid.clone(), fine.clone()]).await;
    assert_eq!(report.started, vec![fine.id()]);
    let expected =
        RouteState::Error { message: "route \"ssh\": scheme tcp6 but bind address 127.0.0.1 is IPv4".into() };
    assert_eq!(report.failed, vec![(invalid.id(), expected.clone())]);
    let status = status_of(&table, "ssh");
    assert_eq!((status.state, status.bound), (expected, None));
    table.shutdown().await;
}

#[tokio::test]
async fn an_invalid_update_is_refused_and_the_route_keeps_serving_its_previous_settings() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("svc", echo.addr);
    let addr = apply_one(&table, spec.clone()).await;

    let mut broken = spec.clone();
    broken.targets.clear();
    let report = table.apply(vec![broken]).await;
    let message = "route \"svc\": no target".to_string();
    assert_eq!(report.failed, vec![(spec.id(), RouteState::Error { message: message.clone() })]);

    let status = status_of(&table, "svc");
    assert_eq!(status.state, RouteState::Listening);
    assert_eq!(status.spec.targets, spec.targets, "status shows what actually runs");
    assert_eq!(status.stats.last_error, Some(message));
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"old settings").await;
    table.shutdown().await;
}

#[tokio::test]
async fn with_a_drain_grace_a_removed_route_stops_listening_but_its_connection_lasts_until_the_grace_ends() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let grace = Duration::from_millis(800);
    let spec = tcp_route("draining", echo.addr).with_options(RouteOptions { drain_grace: grace, ..Default::default() });
    let addr = apply_one(&table, spec).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"before removal").await;

    let removed_at = Instant::now();
    table.apply(vec![]).await;
    assert!(can_bind(addr), "the listener closes at once, grace or not");
    echo_once(&mut client, b"during the grace").await;
    assert!(removed_at.elapsed() < grace, "the test was too slow to check the grace; raise it");

    assert_eq!(expect_closed(&mut client).await, Closed::Eof);
    assert!(removed_at.elapsed() >= grace, "closed after {:?}, before the grace ended", removed_at.elapsed());
    table.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_listener_and_connection() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let lingering = tcp_route("lingering", echo.addr)
        .with_options(RouteOptions { drain_grace: Duration::from_secs(60), ..Default::default() });
    table.apply(vec![tcp_route("plain", echo.addr), lingering]).await;
    let plain = bound_of(&table, "plain");
    let lingering = bound_of(&table, "lingering");
    let mut a = TcpStream::connect(plain).await.expect("connect");
    let mut b = TcpStream::connect(lingering).await.expect("connect");
    echo_once(&mut a, b"a").await;
    echo_once(&mut b, b"b").await;

    within("shutdown", table.shutdown()).await;
    assert!(can_bind(plain) && can_bind(lingering), "no listener may remain");
    assert!(table.status().is_empty());
    expect_closed(&mut a).await;
    expect_closed(&mut b).await;
}

#[tokio::test]
async fn shutdown_with_grace_returns_as_soon_as_the_last_connection_ends() {
    init_tracing();
    let echo = echo_server();
    let table = Arc::new(RouteTable::new());
    let long = Duration::from_secs(60);
    let addr = apply_one(
        &table,
        tcp_route("svc", echo.addr).with_options(RouteOptions { drain_grace: long, ..Default::default() }),
    )
    .await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"hello").await;

    let shutting_down = tokio::spawn({
        let table = table.clone();
        async move { table.shutdown_with_grace(long).await }
    });
    eventually("the listener closes", || can_bind(addr)).await;
    echo_once(&mut client, b"still served while draining").await;
    assert!(!shutting_down.is_finished());

    drop(client);
    within("shutdown to return once the connection ended", shutting_down).await.expect("shutdown task");
}

#[tokio::test]
async fn the_table_serves_again_after_shutdown() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    apply_one(&table, tcp_route("first life", echo.addr)).await;
    table.shutdown().await;

    let addr = apply_one(&table, tcp_route("second life", echo.addr)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    echo_once(&mut client, b"alive").await;
    table.shutdown().await;
}

#[tokio::test]
async fn a_dropped_apply_still_stops_the_routes_it_removed() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let aliases = ["one", "two", "three"];
    table.apply(aliases.iter().map(|alias| tcp_route(alias, echo.addr)).collect()).await;
    let addrs: Vec<SocketAddr> = aliases.iter().map(|alias| bound_of(&table, alias)).collect();
    assert!(addrs.iter().all(|addr| !can_bind(*addr)), "precondition: listening routes hold their ports");

    // Polled once, then dropped while it waits for the listener tasks to finish.
    let dropped = table.apply(vec![]).now_or_never();
    assert!(dropped.is_none(), "precondition: apply waits for its listeners, so dropping it cut it short");
    eventually("every removed route's port is free", || addrs.iter().all(|addr| can_bind(*addr))).await;
    table.shutdown().await;
}

#[tokio::test]
async fn port_zero_reports_the_bound_address_and_the_spec_as_given() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("any-port", echo.addr);
    let addr = apply_one(&table, spec.clone()).await;

    let status = status_of(&table, "any-port");
    assert_eq!(status.state, RouteState::Listening);
    assert_eq!(addr.ip(), LOCALHOST);
    assert_ne!(addr.port(), 0);
    assert_eq!(status.spec.listen.port(), 0, "the id keeps the requested port");
    assert_eq!(status.spec.targets, vec![Target::new("127.0.0.1", echo.addr.port())]);
    table.shutdown().await;
}

#[tokio::test]
async fn a_port_zero_route_that_comes_back_gets_the_port_it_had() {
    init_tracing();
    let echo = echo_server();
    let table = RouteTable::new();
    let spec = tcp_route("comes-back", echo.addr);
    let first = apply_one(&table, spec.clone()).await;
    table.apply(vec![]).await;
    let again = apply_one(&table, spec.clone()).await;
    assert_eq!(again, first, "a restarted route keeps its OS-picked port while it is free");

    // When someone else took the port meanwhile, the route still comes up, elsewhere.
    table.apply(vec![]).await;
    let squatter = std::net::TcpListener::bind(first).expect("the freed port can be taken");
    let elsewhere = apply_one(&table, spec).await;
    assert_ne!(elsewhere.port(), first.port());
    assert_eq!(status_of(&table, "comes-back").state, RouteState::Listening);
    drop(squatter);
    table.shutdown().await;
}
