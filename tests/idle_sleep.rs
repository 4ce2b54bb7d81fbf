//! Idle sleep against a real Docker engine: containers labelled `proxy.idle_timeout` are
//! stopped once nobody is connected, and the first client wakes them.
//!
//! The servers are real: redis (TCP) and dnsmasq (UDP) from the host's packages, run inside
//! the test image with the host's /usr and /lib mounted read-only, on the host network,
//! listening on loopback. Nothing is pulled; all traffic stays on 127.0.0.1. Each test starts
//! its own dockward with `--allow-container-control`, watching only its own containers.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use dockward_tests::docker::{ContainerSpec, DockwardWithDocker, free_tcp_port, free_udp_port};
use dockward_tests::dockward::{http_get, poll};
use dockward_tests::idle::{
    ANSWER_WITHIN, SLEEP_WITHIN, controlling, engine, events, labels, loopback, now_secs, ping, ping_on, redis_route,
    refs, state_of, wait_state,
};

/// dnsmasq on 127.0.0.1:`port` answering `wake.test` with 10.9.8.7.
fn dnsmasq(port: u16, labels: &[(&str, &str)]) -> ContainerSpec {
    let port = port.to_string();
    let args = [
        "/usr/sbin/dnsmasq",
        "-k",
        "-p",
        &port,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--address=/wake.test/10.9.8.7",
        "--user=",
        "--group=",
        "--pid-file",
    ];
    ContainerSpec { cmd: args.map(String::from).to_vec(), host_libs: true, ..ContainerSpec::sleeper("dns", labels) }
}

/// One DNS query for `wake.test` A, sent once: the answer's address, or the error.
fn dig(addr: SocketAddr) -> Result<[u8; 4], String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(ANSWER_WITHIN)).map_err(|e| e.to_string())?;
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x04wake\x04test\x00\x00\x01\x00\x01");
    socket.send_to(&query, addr).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).map_err(|e| format!("no answer: {e}"))?;
    if n < 4 || buf[..2] != [0x12, 0x34] {
        return Err(format!("not our answer: {:?}", &buf[..n]));
    }
    Ok([buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]])
}

fn metric(dockward: &DockwardWithDocker, line_start: &str) -> Option<f64> {
    let (_, body) = http_get(&dockward.admin, "/metrics").ok()?;
    body.lines().find(|l| l.starts_with(line_start))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_sleeps_when_idle_and_the_first_ping_wakes_it() {
    let Some(engine) = engine("idle_redis").await else { return };
    let (c, listen) = redis_route(&engine, "2s", &[], true).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "redis", "listening", SLEEP_WITHIN, |r| r["state"] == "listening");
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"), "awake: served");

    // Nobody connected for 2 s: stopped, port still bound, shown as sleeping.
    wait_state(&c.id, "exited", SLEEP_WITHIN, &dockward);
    dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    assert!(dockward.log().contains("putting it to sleep"), "the sleep is logged with its reason");

    // The first PING after that is answered, on the first try.
    let since = now_secs();
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"), "woken by the first client");
    assert_eq!(state_of(&c.id), "running");
    let row = dockward.wait_row(&c.name, "redis", "listening again", SLEEP_WITHIN, |r| r["state"] == "listening");
    assert_eq!(row["held"], 1, "{row}");
    assert_eq!(row["wake_failed"], 0, "{row}");
    let starts = events(&[&c.id], since).into_iter().filter(|(_, a)| a == "start").count();
    assert_eq!(starts, 1);
    let log = dockward.log();
    assert!(log.contains("waking container: first client from 127.0.0.1:"), "the wake is logged with its client");
    assert_eq!(metric(&dockward, &format!("dockward_container_wakes_total{{container=\"{}\"}}", c.name)), Some(1.0));
    assert!(metric(&dockward, &format!("dockward_container_sleeps_total{{container=\"{}\"}}", c.name)) >= Some(1.0));
    assert_eq!(
        metric(&dockward, &format!("dockward_container_wake_duration_seconds_count{{container=\"{}\"}}", c.name)),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connected_quiet_client_keeps_the_container_up() {
    let Some(engine) = engine("idle_held_open").await else { return };
    let (c, listen) = redis_route(&engine, "1s", &[], true).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "redis", "listening", SLEEP_WITHIN, |r| r["state"] == "listening");
    let mut conn = poll("a connection through the route", ANSWER_WITHIN, || {
        let mut s = TcpStream::connect(loopback(listen)).ok()?;
        s.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
        (ping_on(&mut s).ok()? == "+PONG").then_some(s)
    });
    // Quiet for 3x idle_timeout: still running, and the connection still works.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state_of(&c.id), "running", "a connected client keeps it up; log:\n{}", dockward.log());
    assert_eq!(ping_on(&mut conn).as_deref(), Ok("+PONG"));
    drop(conn);
    wait_state(&c.id, "exited", SLEEP_WITHIN, &dockward);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_at_a_sleeping_container_cause_one_start_and_are_all_served() {
    let Some(engine) = engine("idle_fifty").await else { return };
    // Created, never started: dockward lists it and binds its port asleep.
    let (c, listen) = redis_route(&engine, "1s", &[], false).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    let since = now_secs();
    let clients: Vec<_> = (0..50).map(|_| std::thread::spawn(move || ping(loopback(listen)))).collect();
    for client in clients {
        assert_eq!(client.join().expect("client thread").as_deref(), Ok("+PONG"));
    }
    let starts = events(&[&c.id], since).into_iter().filter(|(_, a)| a == "start").count();
    assert_eq!(starts, 1, "one start for 50 clients");
    let row = dockward.row(&c.name, "redis").expect("row");
    assert!(row["held"].as_u64() >= Some(1), "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_method_pause_pauses_and_unpauses() {
    let Some(engine) = engine("idle_pause").await else { return };
    let (c, listen) = redis_route(&engine, "1s", &[("proxy.stop_method", "pause".into())], true).await;
    let dockward = controlling(&engine);
    wait_state(&c.id, "paused", SLEEP_WITHIN, &dockward);
    dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    let since = now_secs();
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"));
    assert_eq!(state_of(&c.id), "running");
    let actions: Vec<String> = events(&[&c.id], since).into_iter().map(|(_, a)| a).collect();
    assert!(actions.contains(&"unpause".to_string()), "{actions:?}");
    assert!(!actions.contains(&"start".to_string()), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn depends_on_starts_the_dependency_first() {
    let Some(engine) = engine("idle_depends_on").await else { return };
    let dep = engine.create(&ContainerSpec::sleeper("db", &[])).await;
    let (c, listen) = redis_route(&engine, "1s", &[("proxy.depends_on", dep.name.clone())], false).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    let since = now_secs();
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"));
    let starts: Vec<String> =
        events(&[&c.id, &dep.id], since).into_iter().filter(|(_, a)| a == "start").map(|(id, _)| id).collect();
    assert_eq!(starts, [dep.id.clone(), c.id.clone()], "the dependency starts first");
    // Idle again: the container sleeps, then the dependency it started.
    wait_state(&c.id, "exited", SLEEP_WITHIN, &dockward);
    wait_state(&dep.id, "exited", SLEEP_WITHIN, &dockward);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_never_listens_closes_held_clients_at_wake_timeout() {
    let Some(engine) = engine("idle_wake_timeout").await else { return };
    let (listen, target) = (free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let mut l = labels("app", &port, "1s");
    l.push(("proxy.wake_timeout".into(), "2s".into()));
    let c = engine.create(&ContainerSpec::sleeper("mute", &refs(&l))).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "app", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    let began = Instant::now();
    let mut s = TcpStream::connect(loopback(listen)).expect("accepted, not refused");
    s.set_read_timeout(Some(ANSWER_WITHIN)).expect("timeout");
    let mut buf = [0u8; 8];
    let end = s.read(&mut buf);
    assert!(matches!(end, Ok(0)) || end.is_err(), "closed: {end:?}");
    let held = began.elapsed();
    assert!(held >= Duration::from_millis(1900), "held until wake_timeout, not {held:?}");
    let row = dockward.wait_row(&c.name, "app", "the wake error", SLEEP_WITHIN, |r| r["wake_failed"] == 1);
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("not ready within wake_timeout 2s"), "{row}");
    assert_eq!(
        metric(&dockward, &format!("dockward_container_wake_failures_total{{container=\"{}\"}}", c.name)),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dnsmasq_sleeps_and_the_first_query_is_answered() {
    let Some(engine) = engine("idle_dnsmasq").await else { return };
    let (listen, target) = (free_udp_port(), free_udp_port());
    let port = format!("{listen}:{target}");
    let l = vec![
        ("proxy.aliases".to_string(), "dns".to_string()),
        ("proxy.dns.scheme".to_string(), "udp".to_string()),
        ("proxy.dns.port".to_string(), port),
        ("proxy.dns.bind".to_string(), "127.0.0.1".to_string()),
        ("proxy.idle_timeout".to_string(), "2s".to_string()),
    ];
    let c = engine.run(&dnsmasq(target, &refs(&l))).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "dns", "listening", SLEEP_WITHIN, |r| r["state"] == "listening");
    wait_state(&c.id, "exited", SLEEP_WITHIN, &dockward);
    dockward.wait_row(&c.name, "dns", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    assert_eq!(dig(loopback(listen)), Ok([10, 9, 8, 7]), "one query, answered after the wake");
    let row = dockward.row(&c.name, "dns").expect("row");
    assert_eq!(row["held"], 1, "{row}");
    assert!(row["buffered"].as_u64() >= Some(1), "{row}");
    assert_eq!(state_of(&c.id), "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_while_asleep_dockward_binds_again_and_wakes_it() {
    let Some(engine) = engine("idle_restart").await else { return };
    let (c, listen) = redis_route(&engine, "1s", &[], true).await;
    let first = controlling(&engine);
    wait_state(&c.id, "exited", SLEEP_WITHIN, &first);
    drop(first);
    // Events are filtered by whole seconds: start after the second the stop fell in.
    let since = now_secs() + 1;
    std::thread::sleep(Duration::from_millis(1100));
    let second = controlling(&engine);
    second.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    // Past its idle timeout again, asleep: it is not stopped a second time.
    std::thread::sleep(Duration::from_millis(1500));
    let actions: Vec<String> = events(&[&c.id], since).into_iter().map(|(_, a)| a).collect();
    assert!(actions.is_empty(), "not touched while asleep: {actions:?}");
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_removed_while_asleep_frees_its_port() {
    let Some(engine) = engine("idle_removed").await else { return };
    let (c, listen) = redis_route(&engine, "1s", &[], false).await;
    let dockward = controlling(&engine);
    dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
    c.remove().await;
    dockward.wait_gone(&c.name, "redis", SLEEP_WITHIN);
    poll("the port free again", SLEEP_WITHIN, || std::net::TcpListener::bind(loopback(listen)).ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_flag_idle_labels_are_an_error_row_naming_it() {
    let Some(engine) = engine("idle_no_flag").await else { return };
    let (c, listen) = redis_route(&engine, "1s", &[], true).await;
    let dockward = DockwardWithDocker::start_with_args(engine.host.as_deref(), &engine.case, None, &[]);
    dockward.wait_row(&c.name, "redis", "listening", SLEEP_WITHIN, |r| r["state"] == "listening");
    let errors = poll("the error row", SLEEP_WITHIN, || {
        let rows = dockward.routes();
        let errors: Vec<String> = rows
            .iter()
            .filter(|r| r["source"] == c.name.as_str() && r["state"] == "error")
            .filter_map(|r| r["error"].as_str().map(String::from))
            .collect();
        (!errors.is_empty()).then_some(errors)
    });
    assert!(errors[0].contains("proxy.idle_timeout") && errors[0].contains("--allow-container-control"), "{errors:?}");
    // Served, never stopped.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&c.id), "running");
    assert_eq!(ping(loopback(listen)).as_deref(), Ok("+PONG"));
}
