//! Idle sleep's engine calls: the only writes dockward ever makes, and only with
//! `--allow-container-control`. Start, stop, pause, unpause and kill of containers, plus the
//! reads a wake needs (inspect, and a list to find a `depends_on` container by its Compose
//! service name). Nothing else: a socket proxy that allows exactly these is enough.
//!
//! One driver task per sleeping container ([`spawn_driver`]) follows [`Sleeper::next`]:
//! puts it to sleep when idle, wakes it when a client arrives, and reports back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{KillContainerOptions, ListContainersOptions, StopContainerOptions};
use route_spec::{Protocol, Target};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

use super::engine;
use crate::idle::config::{Dependency, IdleConfig, StopMethod};
use crate::idle::sleeper::{Next, Sleeper};
use crate::labels::COMPOSE_PROJECT_LABEL;

/// The engine connection idle sleep writes through, made on first use and kept.
pub(crate) struct Control {
    host: String,
    /// The engine's TLS certificate directory, as the watcher's own connection uses.
    tls: Option<std::path::PathBuf>,
    timeout: Duration,
    docker: tokio::sync::Mutex<Option<Docker>>,
}

impl Control {
    /// Writes to the engine at `host` (over TLS with the certificates in `tls`).
    pub(crate) fn new(host: &str, tls: Option<std::path::PathBuf>, timeout: Duration) -> Arc<Self> {
        Arc::new(Control { host: host.to_string(), tls, timeout, docker: tokio::sync::Mutex::new(None) })
    }

    async fn docker(&self) -> Result<Docker, String> {
        let mut slot = self.docker.lock().await;
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let connected =
            engine::connect(&self.host, self.tls.as_deref(), self.timeout).await.map_err(|e| e.to_string())?;
        *slot = Some(connected.docker.clone());
        Ok(connected.docker)
    }

    /// Forgets the connection after a failure, so the next call reconnects.
    async fn reset(&self) {
        *self.docker.lock().await = None;
    }

    async fn call<T, F, Fut>(&self, what: &str, name: &str, f: F) -> Result<T, String>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
    {
        let docker = self.docker().await?;
        match f(docker).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(e, bollard::errors::Error::DockerResponseServerError { .. }) {
                    self.reset().await;
                }
                Err(format!("{what} {name}: {}", short_error(&e)))
            }
        }
    }

    async fn inspect(&self, name: &str) -> Result<ContainerInspectResponse, String> {
        self.call("inspecting", name, |d| async move { d.inspect_container(name, None).await }).await
    }
}

/// The engine's message without bollard's wrapping.
fn short_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

/// Starts the task that puts `sleeper`'s container to sleep and wakes it; it ends when the
/// sleeper is retired.
pub(crate) fn spawn_driver(sleeper: Arc<Sleeper>, control: Arc<Control>) {
    tokio::spawn(drive(sleeper, control));
}

async fn drive(sleeper: Arc<Sleeper>, control: Arc<Control>) {
    // Dependencies this driver started, stopped again after the container (reverse order).
    let mut started_deps: Vec<String> = Vec::new();
    loop {
        if sleeper.retired.is_cancelled() {
            return;
        }
        match sleeper.next(Instant::now()) {
            Next::Wake { client } => {
                let config = sleeper.config();
                match client {
                    Some(client) => {
                        info!(container = %sleeper.name, %client, "waking container: first client from {client}")
                    }
                    None => {
                        info!(container = %sleeper.name, "waking container: a client arrived while it was being stopped")
                    }
                }
                let began = Instant::now();
                let result = tokio::select! {
                    _ = sleeper.retired.cancelled() => return,
                    r = tokio::time::timeout(config.wake_timeout, wake(&control, &sleeper, &config, &mut started_deps)) => r,
                };
                let result = match result {
                    Ok(Ok(())) => Ok(began.elapsed()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("not ready within wake_timeout {}", show(config.wake_timeout))),
                };
                match &result {
                    Ok(took) => info!(container = %sleeper.name, took_ms = took.as_millis() as u64, "container awake"),
                    Err(e) => {
                        warn!(container = %sleeper.name, error = %e, "waking the container failed; held clients are closed")
                    }
                }
                sleeper.woke(result);
            }
            Next::Sleep { idle } => {
                let config = sleeper.config();
                info!(container = %sleeper.name, idle = %show(idle), method = config.stop_method.as_str(), "container idle for {}: putting it to sleep", show(idle));
                let result = put_to_sleep(&control, &sleeper.id, &config).await;
                if let Err(e) = &result {
                    warn!(container = %sleeper.name, error = %e, "putting the container to sleep failed; it stays up");
                } else {
                    for dep in started_deps.drain(..).rev() {
                        let stop = StopContainerOptions { t: Some(stop_secs(config.stop_timeout)), signal: None };
                        let id = dep.as_str();
                        let patience = control.timeout + config.stop_timeout;
                        let stopped = control
                            .call("stopping", id, |d| async move {
                                d.with_timeout(patience).stop_container(id, Some(stop)).await
                            })
                            .await;
                        if let Err(e) = stopped {
                            warn!(container = %sleeper.name, error = %e, "stopping a dependency failed");
                        }
                    }
                }
                sleeper.slept(result);
            }
            Next::WaitUntil(at) => {
                tokio::select! {
                    _ = sleeper.retired.cancelled() => return,
                    _ = sleeper.notify.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            Next::Wait => {
                tokio::select! {
                    _ = sleeper.retired.cancelled() => return,
                    _ = sleeper.notify.notified() => {}
                }
            }
        }
    }
}

fn show(d: Duration) -> String {
    humantime_like(d)
}

/// `30s`, `1m30s`, `250ms`: short, for logs and errors.
fn humantime_like(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

fn stop_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Stops, pauses or kills the container as `config` says.
async fn put_to_sleep(control: &Control, id: &str, config: &IdleConfig) -> Result<(), String> {
    match config.stop_method {
        StopMethod::Pause => control.call("pausing", id, |d| async move { d.pause_container(id).await }).await,
        StopMethod::Kill => {
            let signal = format!("SIG{}", config.stop_signal.as_deref().unwrap_or("KILL"));
            let kill = KillContainerOptions { signal };
            control.call("killing", id, |d| async move { d.kill_container(id, Some(kill)).await }).await
        }
        StopMethod::Stop => {
            match &config.stop_signal {
                // The engine's stop takes a signal only from API 1.42: send it, wait, then kill.
                Some(signal) => {
                    let kill = KillContainerOptions { signal: format!("SIG{signal}") };
                    control.call("signalling", id, |d| async move { d.kill_container(id, Some(kill)).await }).await?;
                    let deadline = Instant::now() + config.stop_timeout;
                    while Instant::now() < deadline {
                        if !is_running(&control.inspect(id).await?) {
                            return Ok(());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let kill = KillContainerOptions::default();
                    control.call("killing", id, |d| async move { d.kill_container(id, Some(kill)).await }).await
                }
                None => {
                    let stop = StopContainerOptions { t: Some(stop_secs(config.stop_timeout)), signal: None };
                    // The engine answers once the process is gone, up to stop_timeout later: the
                    // request may take that long, whatever the usual request timeout.
                    let patience = control.timeout + config.stop_timeout;
                    control
                        .call("stopping", id, |d| async move {
                            d.with_timeout(patience).stop_container(id, Some(stop)).await
                        })
                        .await
                }
            }
        }
    }
}

fn status_of(c: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    c.state.as_ref().and_then(|s| s.status)
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| s.running == Some(true) && s.paused != Some(true))
}

/// `Some(healthy)` when the container has a healthcheck, `None` without one.
fn health_of(c: &ContainerInspectResponse) -> Option<bool> {
    let status = c.state.as_ref()?.health.as_ref()?.status?;
    match status {
        HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
        HealthStatusEnum::HEALTHY => Some(true),
        HealthStatusEnum::STARTING | HealthStatusEnum::UNHEALTHY => Some(false),
    }
}

/// Starts (or unpauses) the container `name`; already running is fine.
async fn start(control: &Control, name: &str) -> Result<ContainerInspectResponse, String> {
    let c = control.inspect(name).await?;
    let id = c.id.clone().unwrap_or_else(|| name.to_string());
    match status_of(&c) {
        Some(ContainerStateStatusEnum::RUNNING) => {}
        Some(ContainerStateStatusEnum::PAUSED) => {
            control.call("unpausing", name, |d| async move { d.unpause_container(&id).await }).await?;
        }
        _ => {
            control.call("starting", name, |d| async move { d.start_container(&id, None).await }).await?;
        }
    }
    Ok(c)
}

/// How often readiness is probed: often at first (most services are up within a second),
/// then less.
fn probe_interval(since: Duration) -> Duration {
    if since < Duration::from_secs(2) { Duration::from_millis(5) } else { Duration::from_millis(100) }
}

/// Starts the dependencies in order, then the container, and returns once it is ready:
/// healthy if it has a healthcheck, else every target answers (TCP: accepts a connection;
/// UDP: its port is bound). The caller bounds it by `wake_timeout`.
async fn wake(
    control: &Control,
    sleeper: &Sleeper,
    config: &IdleConfig,
    started: &mut Vec<String>,
) -> Result<(), String> {
    for dep in &config.depends_on {
        let name = find_dependency(control, &sleeper.id, dep).await?;
        let before = control.inspect(&name).await?;
        if !is_running(&before) {
            start(control, &name).await?;
            if !started.contains(&name) {
                started.push(name.clone());
            }
        }
        wait_ready(control, &name, dep.healthy, &[]).await.map_err(|e| format!("dependency {}: {e}", dep.name))?;
    }
    start(control, &sleeper.id).await?;
    let targets = sleeper.readiness();
    wait_ready(control, &sleeper.id, false, &targets).await
}

/// Waits until `name` runs and is ready: healthy when it has a healthcheck (or `healthy`
/// is asked), else every one of `targets` answers (see [`answers`]).
async fn wait_ready(
    control: &Control,
    name: &str,
    healthy: bool,
    targets: &[(Protocol, Target)],
) -> Result<(), String> {
    let began = Instant::now();
    let mut next_inspect = began;
    let mut state_ok = false;
    loop {
        let now = Instant::now();
        if now >= next_inspect || !state_ok {
            let c = control.inspect(name).await?;
            match status_of(&c) {
                Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                    let code = c.state.as_ref().and_then(|s| s.exit_code).unwrap_or_default();
                    return Err(format!("the container exited (code {code}) while waking"));
                }
                _ => {}
            }
            state_ok = is_running(&c)
                && match health_of(&c) {
                    Some(h) => h,
                    None => !healthy,
                };
            // A healthcheck decides alone; without one, the ports do.
            if state_ok && (health_of(&c).is_some() || targets.is_empty()) {
                return Ok(());
            }
            next_inspect = now + Duration::from_millis(250);
        }
        if state_ok && all_accept(targets).await {
            return Ok(());
        }
        tokio::time::sleep(probe_interval(began.elapsed())).await;
    }
}

/// True when every target answers: a TCP target accepts a connection (closed again at
/// once); a UDP target's port is bound, so the datagrams held for it are not lost to an
/// ICMP "port unreachable" (see [`udp_bound`]).
async fn all_accept(targets: &[(Protocol, Target)]) -> bool {
    for (protocol, t) in targets {
        let up = match protocol {
            Protocol::Tcp => {
                let dial = TcpStream::connect((t.host.as_str(), t.port));
                matches!(tokio::time::timeout(Duration::from_secs(1), dial).await, Ok(Ok(_)))
            }
            Protocol::Udp => udp_bound(t).await,
        };
        if !up {
            return false;
        }
    }
    true
}

/// Whether a UDP target's port is bound. A loopback target (a host-network container, on the
/// host dockward runs on) is looked up in `/proc/net/udp` and `udp6`, which touches nothing.
/// Otherwise a zero-length datagram is sent from a connected socket: a port nobody has bound
/// answers with ICMP "port unreachable", which the next receive reports; silence for 20 ms
/// counts as bound (servers drop an empty datagram).
async fn udp_bound(target: &Target) -> bool {
    if let Some(addr) = target.ip_addr()
        && addr.ip().is_loopback()
        && let Some(bound) = proc_udp_bound(addr.port())
    {
        return bound;
    }
    let Ok(Some(addr)) = tokio::net::lookup_host((target.host.as_str(), target.port)).await.map(|mut a| a.next())
    else {
        return false;
    };
    let local: std::net::SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let Ok(socket) = tokio::net::UdpSocket::bind(local).await else { return false };
    if socket.connect(addr).await.is_err() || socket.send(&[]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(20), socket.recv(&mut buf)).await {
        Err(_) => true,
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() != std::io::ErrorKind::ConnectionRefused,
    }
}

/// Whether `/proc/net/udp` or `udp6` lists a socket bound to `port` (on any address); `None`
/// when neither can be read.
fn proc_udp_bound(port: u16) -> Option<bool> {
    let mut readable = false;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        readable = true;
        if udp_table_has_port(&text, port) {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// Whether a `/proc/net/udp`-format table has a socket whose local port is `port`.
fn udp_table_has_port(text: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    text.lines().skip(1).any(|line| line.split_whitespace().nth(1).is_some_and(|local| local.ends_with(&want)))
}

/// The container a `depends_on` entry names: a container of that name, else the one of that
/// Compose service in the same project as the sleeping container.
async fn find_dependency(control: &Control, sleeper_id: &str, dep: &Dependency) -> Result<String, String> {
    let own = control.inspect(sleeper_id).await?;
    let project =
        own.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(COMPOSE_PROJECT_LABEL)).cloned();
    if let Some(project) = project {
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("{COMPOSE_PROJECT_LABEL}={project}"), format!("com.docker.compose.service={}", dep.name)],
        )]
        .into_iter()
        .collect();
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let list =
            control.call("listing", &dep.name, |d| async move { d.list_containers(Some(options)).await }).await?;
        if let Some(id) = list.into_iter().find_map(|c| c.id) {
            return Ok(id);
        }
    }
    match control.inspect(&dep.name).await {
        Ok(c) => Ok(c.id.unwrap_or_else(|| dep.name.clone())),
        Err(e) => Err(format!("dependency {:?} not found: {e}", dep.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_table_is_read_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  372: 0100007F:B0F1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 0
  373: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 124 2 0000000000000000 0
";
        assert!(udp_table_has_port(table, 0xB0F1));
        assert!(udp_table_has_port(table, 53));
        assert!(!udp_table_has_port(table, 0xF1));
        assert!(!udp_table_has_port(table, 0), "the remote address is not read");
    }

    #[tokio::test]
    async fn udp_bound_tells_a_bound_port_from_a_free_one() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(udp_bound(&Target::new("127.0.0.1", port)).await);
        drop(socket);
        assert!(!udp_bound(&Target::new("127.0.0.1", port)).await);
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(humantime_like(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime_like(Duration::from_secs(30)), "30s");
        assert_eq!(humantime_like(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime_like(Duration::from_secs(180)), "3m");
        assert_eq!(humantime_like(Duration::from_secs(3725)), "1h2m5s");
    }
}
