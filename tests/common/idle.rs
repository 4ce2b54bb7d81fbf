//! Idle sleep against a real engine: the engine, skipped without the host's `redis-server`
//! and `dnsmasq` (run in the test image with the host's /usr and /lib mounted, listening on
//! loopback); a redis server to put to sleep and wake and the labels that make it sleep; and
//! the engine's own word on what happened to a container (its state, its start/stop/pause
//! events).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::docker::loopback;
use crate::docker::{
    ContainerSpec, DockwardWithDocker, TestContainer, TestEngine, docker_cli, docker_required, free_tcp_port,
};

/// A container must be put to sleep within this after its idle timeout.
pub const SLEEP_WITHIN: Duration = Duration::from_secs(30);
/// A woken container must answer within this (a start takes well under a second here).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// The `dockward run` flag idle sleep needs.
pub const CONTROL: &[&str] = &["--allow-container-control"];

/// The engine, when there is one and the host has the servers the tests run; else SKIP (a
/// failure when the run requires Docker: `scripts/start-dockerd.sh` installs them).
pub async fn engine(case: &str) -> Option<TestEngine> {
    let engine = TestEngine::connect(case).await?;
    for server in ["/usr/bin/redis-server", "/usr/sbin/dnsmasq"] {
        if !std::path::Path::new(server).exists() {
            assert!(!docker_required(), "{server} is missing; scripts/start-dockerd.sh installs it");
            crate::skip::skip("docker", case, format!("{server} is missing; run scripts/start-dockerd.sh"));
            return None;
        }
    }
    Some(engine)
}

/// redis on 127.0.0.1:`port`, with `labels`.
pub fn redis(port: u16, labels: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        cmd: [
            "/usr/bin/redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec(),
        host_libs: true,
        ..ContainerSpec::sleeper("redis", labels)
    }
}

/// Labels of a route `alias` with port spec `port` (listening on loopback only), sleeping
/// after `idle`.
pub fn labels(alias: &str, port: &str, idle: &str) -> Vec<(String, String)> {
    vec![
        ("proxy.aliases".into(), alias.into()),
        (format!("proxy.{alias}.port"), port.into()),
        (format!("proxy.{alias}.bind"), "127.0.0.1".into()),
        ("proxy.idle_timeout".into(), idle.into()),
    ]
}

/// Borrowed pairs, as [`ContainerSpec`]'s constructors take them.
pub fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The engine's word for the container's state (`running`, `exited`, `paused`).
pub fn state_of(id: &str) -> String {
    let out = docker_cli(None).args(["inspect", "-f", "{{.State.Status}}", id]).output().expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits up to `limit` until the container is `want`; fails with dockward's log.
pub fn wait_state(id: &str, want: &str, limit: Duration, dockward: &DockwardWithDocker) {
    let give_up = Instant::now() + limit;
    loop {
        let now = state_of(id);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "container never became {want} (is {now}) within {limit:?}; log:\n{}",
            dockward.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container actions (`start`, `stop`, `die`, `pause`, `unpause`) the engine logged for
/// `ids` since `since` (seconds), in order, as `(id, action)`.
pub fn events(ids: &[&str], since: u64) -> Vec<(String, String)> {
    let until = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() + 1).unwrap_or(0);
    let mut cmd = docker_cli(None);
    cmd.args([
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--format",
        "{{.Actor.ID}} {{.Action}}",
    ]);
    for id in ids {
        cmd.args(["--filter", &format!("container={id}")]);
    }
    cmd.args(["--filter", "type=container"]);
    let out = cmd.output().expect("docker events");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(id, a)| (id.to_string(), a.to_string())))
        .collect()
}

/// Seconds since the epoch, for [`events`].
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One redis `PING` over a fresh connection, on the first try: the answer, or the error.
pub fn ping(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_WITHIN)).map_err(|e| e.to_string())?;
    ping_on(&mut s)
}

/// One redis `PING` on an open connection.
pub fn ping_on(s: &mut TcpStream) -> Result<String, String> {
    s.write_all(b"PING\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// A redis container on a free loopback port, labelled `proxy.aliases=redis`, a route on
/// another free port and `proxy.idle_timeout=idle` (plus `extra`): started when `start`, else
/// only created. Returns it and the route's listen port.
pub async fn redis_route(
    engine: &TestEngine,
    idle: &str,
    extra: &[(&str, String)],
    start: bool,
) -> (TestContainer, u16) {
    let (listen, target) = (free_tcp_port(), free_tcp_port());
    let mut l = labels("redis", &format!("{listen}:{target}"), idle);
    l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let spec = redis(target, &refs(&l));
    let c = if start { engine.run(&spec).await } else { engine.create(&spec).await };
    (c, listen)
}

/// dockward with container control, watching `engine`'s test case.
pub fn controlling(engine: &TestEngine) -> DockwardWithDocker {
    DockwardWithDocker::start_with_args(engine.host.as_deref(), &engine.case, None, CONTROL)
}
