//! Docker health in routing, end to end: the built binary, a real engine, and two
//! host-network replicas of one alias whose `HEALTHCHECK` flips (`test -f /tmp/ok`, the file
//! made and removed with `docker exec`). An unhealthy replica gets no new client and shows
//! as `(down, docker: unhealthy)`; a healthy one comes back; a replica still `starting` is
//! not used while another is healthy, and is used when it is the only one.
//!
//! Docker only: Podman runs health checks from systemd timers, which its test service
//! here has not. All traffic stays on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dockward_tests::docker::{ContainerSpec, DockwardWithDocker, TestContainer, TestEngine, free_tcp_port, loopback};

/// Routes and verdicts must follow the engine within this (expected: about one check
/// interval after the change).
const FOLLOW: Duration = Duration::from_secs(20);
/// How often the flipping replicas' health check runs.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// The health check: healthy while /tmp/ok exists.
const CHECK: &str = "test -f /tmp/ok";

/// A replica of alias `app` on listen port `listen`, serving `name` on `target`.
fn replica(name: &str, listen: u16, target: u16) -> ContainerSpec {
    let port = format!("{listen}:{target}");
    ContainerSpec::tcp_named(
        &format!("health-{name}"),
        target,
        name,
        &[("proxy.aliases", "app"), ("proxy.app.port", &port), ("proxy.app.bind", "127.0.0.1")],
    )
}

/// Makes the container's health check pass from its next run.
fn make_healthy(c: &TestContainer) {
    c.exec(&["/bin/sh", "-c", ": > /tmp/ok"]);
}

/// Makes the container's health check fail from its next run.
fn make_unhealthy(c: &TestContainer) {
    c.exec(&["/bin/busybox", "rm", "-f", "/tmp/ok"]);
}

/// Connects through `listen`; the connection and the name of the replica that greeted.
fn reach(listen: u16) -> (TcpStream, String) {
    let stream = TcpStream::connect_timeout(&loopback(listen), Duration::from_secs(5)).expect("connect to dockward");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).expect("a replica's greeting");
    (stream, line.trim().to_string())
}

/// The names `n` new clients reach.
fn names(listen: u16, n: usize) -> Vec<String> {
    (0..n).map(|_| reach(listen).1).collect()
}

/// Writes `msg` on `stream` and reads it back (the replica echoes after its greeting).
fn echo(stream: &mut TcpStream, msg: &str) {
    stream.write_all(format!("{msg}\n").as_bytes()).expect("write on the held connection");
    let mut line = String::new();
    BufReader::new(&*stream).read_line(&mut line).expect("read on the held connection");
    assert_eq!(line.trim(), msg);
}

/// The route `app`'s row, once `ok` holds for it; fails with the rows and log after `FOLLOW`.
fn wait_app(dockward: &DockwardWithDocker, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let give_up = Instant::now() + FOLLOW;
    loop {
        let rows = dockward.routes();
        if let Some(row) = rows.iter().find(|r| r["alias"] == "app" && r["state"] == "listening" && ok(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < give_up,
            "route app never became {what} within {FOLLOW:?}; rows: {}\nlog:\n{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
            dockward.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Target `127.0.0.1:port`'s entry in a row's `target_health`.
fn health_of(row: &serde_json::Value, port: u16) -> serde_json::Value {
    let target = format!("127.0.0.1:{port}");
    let entries = row["target_health"].as_array().cloned().unwrap_or_default();
    entries.into_iter().find(|h| h["target"] == target.as_str()).unwrap_or(serde_json::Value::Null)
}

/// Whether the row shows target `port` with verdict `verdict` (`docker: healthy`, ...).
fn says(row: &serde_json::Value, port: u16, verdict: &str) -> bool {
    health_of(row, port)["verdict"] == verdict
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_replica_gets_no_new_client_until_it_is_healthy_again() {
    let Some(engine) = TestEngine::connect("health_flip").await else { return };
    let dockward = DockwardWithDocker::start(&engine, None);
    let (listen, port_a, port_b) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let a = engine.run(&replica("a", listen, port_a).health_check(CHECK, CHECK_EVERY)).await;
    let b = engine.run(&replica("b", listen, port_b).health_check(CHECK, CHECK_EVERY)).await;
    make_healthy(&a);
    make_healthy(&b);
    let row = wait_app(&dockward, "both healthy", |r| {
        says(r, port_a, "docker: healthy") && says(r, port_b, "docker: healthy")
    });
    let since = row["since"].clone();

    // Both serve; one connection to b is held open.
    let mut held = None;
    let mut seen = Vec::new();
    let give_up = Instant::now() + FOLLOW;
    while held.is_none() {
        assert!(Instant::now() < give_up, "b never answered; seen: {seen:?}");
        let (stream, name) = reach(listen);
        if name == "b" {
            held = Some(stream);
        }
        seen.push(name);
    }
    let mut on_b = held.unwrap_or_else(|| unreachable!());
    echo(&mut on_b, "hello b");

    // b's check fails: it is down, with the reason, in the JSON and the table.
    make_unhealthy(&b);
    let row = wait_app(&dockward, "b unhealthy", |r| says(r, port_b, "docker: unhealthy"));
    let b_health = health_of(&row, port_b);
    assert_eq!(b_health["healthy"], false, "{b_health}");
    assert_eq!(health_of(&row, port_a)["healthy"], true, "{row}");
    assert_eq!(row["since"], since, "updated in place, not restarted");
    let out = dockward.cli(&["routes"]);
    assert!(out.status.success(), "dockward routes: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with("app ")).unwrap_or_else(|| panic!("no app row in:\n{table}"));
    assert!(line.contains(&format!("127.0.0.1:{port_b}(down, docker: unhealthy)")), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port_a},")) || line.contains(&format!("127.0.0.1:{port_a} ")), "{line}");
    let out = dockward.cli(&["routes", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("routes --json is JSON");
    let app = rows.iter().find(|r| r["alias"] == "app").expect("app row");
    assert_eq!(health_of(app, port_b)["verdict"], "docker: unhealthy");

    // New clients all reach a; the connection already open on b carries on.
    assert_eq!(names(listen, 6), vec!["a"; 6]);
    echo(&mut on_b, "still on b");

    // b passes again: new clients reach it again.
    make_healthy(&b);
    let row = wait_app(&dockward, "b healthy again", |r| says(r, port_b, "docker: healthy"));
    assert_eq!(health_of(&row, port_b)["healthy"], true);
    let back = names(listen, 4);
    assert!(back.contains(&"b".to_string()) && back.contains(&"a".to_string()), "{back:?}");
    echo(&mut on_b, "and still");
    assert_eq!(row["since"], since, "never restarted");
    assert!(dockward.log().contains("target down: its provider calls it unhealthy"), "{}", dockward.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_starting_replica_is_used_only_while_no_other_is_healthy() {
    let Some(engine) = TestEngine::connect("health_starting").await else { return };
    let dockward = DockwardWithDocker::start(&engine, None);
    let (listen, port_a, port_b) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    // b's first check is an hour away: it stays `starting` for the whole test.
    let b = engine.run(&replica("b", listen, port_b).health_check(CHECK, Duration::from_secs(3600))).await;
    let row = wait_app(&dockward, "b starting", |r| says(r, port_b, "docker: starting"));
    assert_eq!(health_of(&row, port_b)["healthy"], true, "starting is not down");

    // The only replica: used although it is starting.
    let give_up = Instant::now() + FOLLOW;
    loop {
        // The server inside may need a moment to bind.
        if let Ok(stream) = TcpStream::connect_timeout(&loopback(listen), Duration::from_secs(5)) {
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok_and(|n| n > 0) {
                assert_eq!(line.trim(), "b");
                break;
            }
        }
        assert!(Instant::now() < give_up, "b never answered through dockward");
        std::thread::sleep(Duration::from_millis(50));
    }

    // a joins and turns healthy: every new client goes to a, none to the starting b.
    let a = engine.run(&replica("a", listen, port_a).health_check(CHECK, CHECK_EVERY)).await;
    make_healthy(&a);
    wait_app(&dockward, "a healthy", |r| says(r, port_a, "docker: healthy") && says(r, port_b, "docker: starting"));
    assert_eq!(names(listen, 8), vec!["a"; 8]);
    let out = dockward.cli(&["routes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("127.0.0.1:{port_b}(docker: starting)")), "{table}");

    // a fails its check: b, though still starting, is all that is left, and serves.
    make_unhealthy(&a);
    wait_app(&dockward, "a unhealthy", |r| says(r, port_a, "docker: unhealthy"));
    assert_eq!(names(listen, 4), vec!["b"; 4]);
    drop(b);
}
