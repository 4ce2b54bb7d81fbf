//! Docker Swarm: on a swarm manager, a service's labels define routes to its running tasks,
//! kept true as the service is updated, scaled and removed.
//!
//! The engine becomes a single-node swarm (`docker swarm init --advertise-addr 127.0.0.1`,
//! only when it is in none; it leaves the swarm at the end, also when the test fails). The
//! services run the locally built test image (never pulled: `--no-resolve-image`) on the
//! host network, their tasks listening on loopback, and every route binds 127.0.0.1: all
//! traffic stays on 127.0.0.1. This test changes the engine's swarm state, so nextest runs
//! it alone (.config/nextest.toml).

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use std::sync::Arc;

use docker_watcher::{DockerConfig, DockerSnapshot, DockerWatcher, OwnContainer};
use dockward_tests::docker::{CASE_LABEL, DockwardWithDocker, RUN_LABEL, TestEngine, free_tcp_port, loopback, run_id};
use dockward_tests::dockward::poll;
use dockward_tests::swarm::{ServiceSpec, TestService, TestSwarm, in_a_swarm, serial};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Routes must follow services within this (expected: about a second, the time the swarm
/// takes to start a task).
const FOLLOW: Duration = Duration::from_secs(20);
/// A target inside a just-started task may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(20);

/// Connects to `addr` and reads what the tag server there says, up to its close.
fn read_tag(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

/// Reads tags through `addr` until one is `want`, failing after `limit` with the last answer.
fn tag_eventually(addr: SocketAddr, want: &str, limit: Duration) {
    let give_up = Instant::now() + limit;
    loop {
        let got = read_tag(addr);
        if matches!(&got, Ok(tag) if tag == want) {
            return;
        }
        assert!(Instant::now() < give_up, "no {want:?} through {addr} within {limit:?}; last: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `targets` of a row, as strings.
fn targets(row: &Value) -> Vec<String> {
    row["targets"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Waits until some row satisfies `ok`; fails with the rows and dockward's log.
fn wait_rows(dockward: &DockwardWithDocker, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let give_up = Instant::now() + FOLLOW;
    loop {
        let rows = dockward.routes();
        if let Some(row) = rows.iter().find(|r| ok(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < give_up,
            "never saw {what} within {FOLLOW:?}; rows: {}\nlog:\n{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
            dockward.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_labels_define_routes_that_follow_the_service() {
    let _serial = serial().await;
    let Some(engine) = TestEngine::connect("swarm").await else { return };
    let Some(swarm) = TestSwarm::join(&engine) else { return };
    println!("swarm initialised by this test: {}", swarm.initialised);
    let mut dockward = DockwardWithDocker::start(&engine, None);
    poll("dockward to watch services", FOLLOW, || {
        dockward.log().contains("the engine is a swarm manager: watching services too").then_some(())
    });

    let (listen, ctr_listen) = (free_tcp_port(), free_tcp_port());
    let (a1, a2, b) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let echo_a1 = format!("{listen}:{a1}");
    let ctr_port = format!("{ctr_listen}:{a1}");
    // Labels on the service; one more route from a label on its containers
    // (`--container-label`), which the service's routes include, and which must not also
    // make a route of the task's container of its own.
    let a = TestService::create(
        &engine,
        &ServiceSpec::tag_servers(
            "swarm-a",
            &[(a1, "a1"), (a2, "a2")],
            &[("proxy.aliases", "echo"), ("proxy.echo.port", &echo_a1), ("proxy.*.bind", "127.0.0.1")],
        )
        .with_container_labels(&[("proxy.ctr.port", &ctr_port), ("proxy.ctr.bind", "127.0.0.1")]),
    );

    // Created: a route to its one task, at 127.0.0.1 (host network, this node).
    let row = dockward.wait_row(&a.name, "echo", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(row["listen"], format!("127.0.0.1:{listen}"));
    assert_eq!(targets(&row), [format!("127.0.0.1:{a1}")]);
    tag_eventually(loopback(listen), "a1", TARGET_UP);
    let ctr = dockward.wait_row(&a.name, "ctr", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(ctr["listen"], format!("127.0.0.1:{ctr_listen}"));
    let tasks = a.running_containers();
    assert_eq!(tasks.len(), 1, "one replica: {tasks:?}");
    let rows = dockward.routes();
    assert!(
        rows.iter().all(|r| r["source"] == a.name.as_str()),
        "every route is the service's, none the task container's own: {}",
        serde_json::to_string_pretty(&rows).unwrap_or_default()
    );
    assert_eq!(rows.len(), 2, "echo and ctr, once each: {rows:?}");

    // A label update changes the route in place: same listener, new target, same task.
    a.set_label("proxy.echo.port", &format!("{listen}:{a2}"));
    let row = dockward.wait_row(&a.name, "echo", "retargeted", FOLLOW, |r| targets(r) == [format!("127.0.0.1:{a2}")]);
    assert_eq!(row["listen"], format!("127.0.0.1:{listen}"));
    assert_eq!(row["state"], "listening");
    tag_eventually(loopback(listen), "a2", TARGET_UP);
    assert_eq!(a.running_containers(), tasks, "a label update does not restart the task");

    // Scaled to 0: no running task, no route, the port closed. Back to 1: the same port.
    a.scale(0);
    dockward.wait_gone(&a.name, "echo", FOLLOW);
    dockward.wait_gone(&a.name, "ctr", FOLLOW);
    assert!(TcpStream::connect(loopback(listen)).is_err(), "port {listen} still accepts with no task");
    // Its task's servers must be gone before a new task can bind their ports.
    a.wait_no_containers(FOLLOW);
    a.scale(1);
    let row = dockward.wait_row(&a.name, "echo", "listening again", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(row["listen"], format!("127.0.0.1:{listen}"), "back on the same port");
    tag_eventually(loopback(listen), "a2", TARGET_UP);

    // A second service with the same alias and listen port: one route over both services'
    // tasks, balanced.
    let echo_b = format!("{listen}:{b}");
    let svc_b = TestService::create(
        &engine,
        &ServiceSpec::tag_servers(
            "swarm-b",
            &[(b, "b")],
            &[("proxy.aliases", "echo"), ("proxy.echo.port", &echo_b), ("proxy.echo.bind", "127.0.0.1")],
        ),
    );
    let mut both = [format!("127.0.0.1:{a2}"), format!("127.0.0.1:{b}")];
    both.sort();
    let row = wait_rows(&dockward, "one echo route over both services", |r| {
        let mut t = targets(r);
        t.sort();
        r["alias"] == "echo" && r["state"] == "listening" && t == both
    });
    let source = row["source"].as_str().unwrap_or_default();
    assert!(source.contains(&a.name) && source.contains(&svc_b.name), "{row}");
    let give_up = Instant::now() + TARGET_UP;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        if let Ok(tag) = read_tag(loopback(listen)) {
            seen.insert(tag);
        }
        assert!(Instant::now() < give_up, "traffic never reached both services: saw {seen:?}");
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a2", "b"]);

    // Removed: its targets leave the shared route, then the route goes with the last one.
    drop(svc_b);
    dockward.wait_row(&a.name, "echo", "back to one service", FOLLOW, |r| targets(r) == [format!("127.0.0.1:{a2}")]);

    // A label error shows as an error row whose source is the service.
    let bad = TestService::create(
        &engine,
        &ServiceSpec::sleeper(
            "swarm-bad",
            &[("proxy.web.port", "22:22:22"), ("proxy.vip.port", "1:2"), ("proxy.swarm_target", "vip")],
        ),
    );
    let web = dockward.wait_row(&bad.name, "web", "an error", FOLLOW, |r| r["state"] == "error");
    assert_eq!(web["error"], "label proxy.web.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET");
    let vip = wait_rows(&dockward, "the vip error", |r| r["source"] == bad.name.as_str() && r["alias"].is_null());
    assert_eq!(
        vip["error"],
        "label proxy.swarm_target=\"vip\": the service runs on the host network, which has no virtual IP; remove the \
         label to forward to its tasks"
    );
    drop(bad);

    let a_name = a.name.clone();
    a.remove();
    dockward.wait_gone(&a_name, "echo", FOLLOW);
    assert!(TcpStream::connect(loopback(listen)).is_err(), "port {listen} still accepts after the service is gone");
    assert!(dockward.is_running(), "dockward still runs");
    drop(dockward);
    drop(swarm);
}

/// Waits until the watcher's snapshot satisfies `pred`; fails with the last one.
async fn wait_snapshot(
    rx: &mut watch::Receiver<Arc<DockerSnapshot>>,
    what: &str,
    pred: impl Fn(&DockerSnapshot) -> bool,
) -> Arc<DockerSnapshot> {
    let found = tokio::time::timeout(FOLLOW, rx.wait_for(|s| pred(s))).await.map(|r| r.map(|s| s.clone()));
    match found {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("the watcher stopped while waiting for {what}"),
        Err(_) => panic!("no snapshot with {what} within {FOLLOW:?}; last: {:#?}", rx.borrow().clone()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watcher_follows_the_engine_into_and_out_of_a_swarm() {
    let _serial = serial().await;
    let Some(engine) = TestEngine::connect("swarm_toggle").await else { return };
    if in_a_swarm() {
        dockward_tests::skip::skip(
            "docker",
            "the_watcher_follows_the_engine_into_and_out_of_a_swarm",
            "the engine is in a swarm already",
        );
        return;
    }
    // A short resync: that is when the watcher asks the engine whether it became a manager.
    let config = DockerConfig {
        resync_interval: Duration::from_millis(300),
        own_container: OwnContainer::Disabled,
        label_filters: vec![format!("{RUN_LABEL}={}", run_id()), format!("{CASE_LABEL}={}", engine.case)],
        ..Default::default()
    };
    let watcher = DockerWatcher::new(config);
    let mut rx = watcher.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher.run(shutdown.clone()));
    wait_snapshot(&mut rx, "the first list, not in a swarm", |s| s.synced && !s.swarm).await;

    let swarm = TestSwarm::join(&engine).expect("the engine was in no swarm");
    wait_snapshot(&mut rx, "swarm mode", |s| s.swarm).await;

    // Labels on the service and on its containers: all of them the service's routes, none
    // its task container's own.
    let svc = TestService::create(
        &engine,
        &ServiceSpec::sleeper("toggle", &[("proxy.x.port", "1:2"), ("proxy.x.bind", "127.0.0.1")])
            .with_container_labels(&[("proxy.y.port", "3:4"), ("proxy.y.bind", "127.0.0.1")]),
    );
    let snap = wait_snapshot(&mut rx, "the service's routes", |s| {
        s.service_by_name(&svc.name).is_some_and(|e| e.routes.len() == 2)
    })
    .await;
    let entry = snap.service_by_name(&svc.name).expect("the service");
    let routes: Vec<(String, String, Vec<String>)> = entry
        .routes
        .iter()
        .map(|r| (r.alias.clone(), r.source.clone(), r.targets.iter().map(|t| t.to_string()).collect()))
        .collect();
    assert_eq!(
        routes,
        [
            ("x".to_string(), svc.name.clone(), vec!["127.0.0.1:2".to_string()]),
            ("y".to_string(), svc.name.clone(), vec!["127.0.0.1:4".to_string()]),
        ]
    );
    assert_eq!(svc.running_containers().len(), 1);
    assert!(snap.containers.is_empty(), "the task's container makes no routes: {:#?}", snap.containers);

    // Out of the swarm: services are not watched any more, and their routes are gone.
    drop(svc);
    drop(swarm);
    let snap = wait_snapshot(&mut rx, "swarm mode off", |s| !s.swarm).await;
    assert!(snap.services.is_empty(), "{:#?}", snap.services);
    assert!(snap.connected, "leaving the swarm is no engine trouble");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns").expect("no panic");
}
