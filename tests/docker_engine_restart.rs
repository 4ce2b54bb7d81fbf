//! dockerd itself stopped and started again while dockward runs: dockward keeps running, an
//! open connection on a routes-file route is undisturbed, and the Docker routes are back
//! once the engine (and the container, by its restart policy) is.
//!
//! This stops the machine's dockerd, so it runs only where the project started that dockerd
//! itself (scripts/start-dockerd.sh, which CI sources and which exports
//! DOCKWARD_REQUIRE_DOCKER=1), or when DOCKWARD_TEST_RESTART_DOCKERD=1 says so; it is alone in
//! its test binary, so no other test of the run sees the engine go away. Whatever happens,
//! the engine is started again before the test ends.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, docker_required, free_tcp_port, tcp_echo_eventually,
};
use dockward_tests::dockward::{echo_server, workspace_root};

const PID_FILE: &str = "/var/run/docker.pid";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn engine_answers() -> bool {
    Command::new("timeout").args(["10", "docker", "version"]).output().is_ok_and(|o| o.status.success())
}

/// The pid of the running dockerd, from its pid file, when it is alive.
fn dockerd_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(PID_FILE).ok()?.trim().parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
    (!zombie).then_some(pid)
}

fn start_engine() {
    let script = workspace_root().join("scripts/start-dockerd.sh");
    let status = Command::new("bash").arg(&script).status().expect("run start-dockerd.sh");
    assert!(status.success(), "{} failed", script.display());
}

fn stop_engine() {
    let pid = dockerd_pid().expect("dockerd's pid");
    dockward_tests::dockward::signal(u32::try_from(pid).expect("pid"), libc::SIGTERM);
    let give_up = Instant::now() + Duration::from_secs(60);
    while dockerd_pid() == Some(pid) {
        assert!(Instant::now() < give_up, "dockerd did not stop within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the engine again if the test leaves it stopped, even on panic.
struct EngineBack;

impl Drop for EngineBack {
    fn drop(&mut self) {
        if !engine_answers() {
            start_engine();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_routes_come_back_after_dockerd_restarts_and_file_routes_are_undisturbed() {
    const NAME: &str = "docker_routes_come_back_after_dockerd_restarts";
    let allowed = docker_required() || std::env::var("DOCKWARD_TEST_RESTART_DOCKERD").is_ok_and(|v| v == "1");
    if !allowed {
        println!("SKIP {NAME}: stops dockerd; runs under DOCKWARD_REQUIRE_DOCKER=1 or DOCKWARD_TEST_RESTART_DOCKERD=1");
        return;
    }
    let Some(engine) = TestEngine::connect(NAME).await else { return };
    let own_daemon = std::env::var("DOCKER_HOST").map_or(true, |h| h.is_empty() || h == "unix:///var/run/docker.sock");
    if !own_daemon || dockerd_pid().is_none() {
        println!("SKIP {NAME}: the engine is not a local dockerd with {PID_FILE}");
        return;
    }
    let _engine_back = EngineBack;

    // A routes-file route to an in-process echo server, and a labelled container.
    let file_target = echo_server();
    let yaml = format!("routes:\n  filefwd:\n    bind: 127.0.0.1\n    port: {}\n", file_target.port());
    let mut dockward = DockwardWithDocker::start(&engine, Some(&yaml));
    let (target, listen) = (free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let c = engine
        .run(
            &ContainerSpec::tcp_echo("restart", target, &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")])
                .restart_unless_stopped(),
        )
        .await;
    dockward.wait_row(&c.name, "svc", "listening", Duration::from_secs(10), |r| r["state"] == "listening");
    assert_eq!(tcp_echo_eventually(loopback(listen), b"before", Duration::from_secs(15)), b"before");

    let file_row = dockward.routes().into_iter().find(|r| r["alias"] == "filefwd").expect("the file route");
    let file_listen: SocketAddr = file_row["listen"].as_str().and_then(|s| s.parse().ok()).expect("listen address");
    let mut open = TcpStream::connect(file_listen).expect("connect through the file route");
    open.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut round_trip = |msg: &[u8]| {
        open.write_all(msg).expect("write on the open file-route connection");
        let mut back = vec![0u8; msg.len()];
        open.read_exact(&mut back).expect("read on the open file-route connection");
        back
    };
    assert_eq!(round_trip(b"one"), b"one");

    stop_engine();
    assert!(dockward.is_running(), "dockward keeps running without the engine");
    assert_eq!(round_trip(b"two"), b"two", "the open connection survives the engine going away");

    start_engine();
    // The container comes back by its restart policy; the watcher reconnects (backoff) and
    // re-lists; the route is back on the same port.
    let row =
        dockward.wait_row(&c.name, "svc", "listening again", Duration::from_secs(60), |r| r["state"] == "listening");
    assert_eq!(row["listen"], format!("127.0.0.1:{listen}"));
    assert_eq!(tcp_echo_eventually(loopback(listen), b"after", Duration::from_secs(15)), b"after");
    assert_eq!(round_trip(b"three"), b"three", "the open connection is still undisturbed");
    assert!(dockward.is_running());
}
