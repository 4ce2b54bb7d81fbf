//! A real Docker engine for the tests.
//!
//! - [`TestEngine::connect`] reaches the engine (DOCKER_HOST, else the local socket). With no
//!   engine it prints `SKIP` and returns `None`, unless `DOCKWARD_REQUIRE_DOCKER=1` (set by
//!   `scripts/start-dockerd.sh`, which .ci/run sources): then it panics, so CI cannot pass by
//!   skipping.
//! - The test image [`TEST_IMAGE`] is built locally once per run with `docker import` from a
//!   tarball holding the host's static `/bin/busybox` and a few links to it. Nothing is ever
//!   pulled: no registry is reachable.
//! - Every container carries [`RUN_LABEL`]` = <run id>` and [`CASE_LABEL`]` = <test name>`, and
//!   is removed when its [`TestContainer`] drops, even when the test panics; the
//!   [`TestEngine`] sweeps whatever its case left behind, and leftovers of runs killed long
//!   ago are swept at the first connect.
//! - [`TestEngine::podman`] reaches Podman's Docker-compatible API the same way (see
//!   [`crate::podman`]), so one test body runs against both engines: the [`on_each_engine!`]
//!   macro makes a `docker::NAME` and a `podman::NAME` test of it.
//! - Containers run with network mode `host` and listen on loopback only: **all test traffic
//!   stays on 127.0.0.1**. UDP echo uses the host's socat, with `/usr`, `/lib` and `/lib64`
//!   mounted read-only.

use std::collections::HashMap;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, PortBinding, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, RenameContainerOptions,
    StartContainerOptions, StopContainerOptions,
};

/// The locally built image every test container runs.
pub const TEST_IMAGE: &str = "dockward-test-busybox:latest";
/// [`TEST_IMAGE`] as Podman names it: `podman import` files it under `localhost/`, and its
/// Docker-compatible API would look a short name up on Docker Hub.
pub const PODMAN_TEST_IMAGE: &str = "localhost/dockward-test-busybox:latest";

/// Which kind of engine a [`TestEngine`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// dockerd.
    Docker,
    /// `podman system service`.
    Podman,
}

impl EngineKind {
    /// The image the test containers run, as this engine names it.
    pub fn image(self) -> &'static str {
        match self {
            EngineKind::Docker => TEST_IMAGE,
            EngineKind::Podman => PODMAN_TEST_IMAGE,
        }
    }
}
/// Label carrying the id of this test run (one test process).
pub const RUN_LABEL: &str = "dockward.test.run";
/// Label carrying the test's name.
pub const CASE_LABEL: &str = "dockward.test.case";
/// Containers of runs older than this are leftovers of killed runs and are swept.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The id of this test process's run: pid and start time.
pub fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
    })
}

/// A short unique container name: `dwt-<prefix>-<run>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("dwt-{prefix}-{}-{}", run_id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Whether the run must have an engine (`DOCKWARD_REQUIRE_DOCKER=1`).
pub fn docker_required() -> bool {
    std::env::var("DOCKWARD_REQUIRE_DOCKER").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The engine's unix socket, from DOCKER_HOST or the default; `None` when DOCKER_HOST is not
/// a unix socket (a proxy in front of the engine forwards to one).
pub fn engine_socket() -> Option<std::path::PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(std::path::PathBuf::from),
        _ => Some(std::path::PathBuf::from("/var/run/docker.sock")),
    }
}

/// What to run in a test container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Name prefix; the name is made unique.
    pub prefix: String,
    /// Labels besides the run and case labels.
    pub labels: Vec<(String, String)>,
    /// The command.
    pub cmd: Vec<String>,
    /// Mount the host's /usr, /lib and /lib64 read-only (for socat).
    pub host_libs: bool,
    /// Restart policy `unless-stopped`: the engine starts it again when it comes back.
    pub restart_unless_stopped: bool,
    /// Network mode; `None` is `host`.
    pub network: Option<String>,
    /// TCP ports published on 127.0.0.1: (container port, host port).
    pub publish: Vec<(u16, u16)>,
    /// A health check: a shell command run every so often; one failure makes the
    /// container unhealthy, one success healthy.
    pub health_check: Option<(String, Duration)>,
    /// Ports exposed without publishing them (`53/udp`, `8080/tcp`), as `--expose` does.
    pub expose: Vec<String>,
}

impl ContainerSpec {
    /// A container that only sleeps (and exits at once on SIGTERM), with `labels`.
    pub fn sleeper(prefix: &str, labels: &[(&str, &str)]) -> Self {
        ContainerSpec {
            prefix: prefix.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cmd: ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 86400 & wait"].map(String::from).to_vec(),
            host_libs: false,
            restart_unless_stopped: false,
            network: None,
            publish: Vec::new(),
            health_check: None,
            expose: Vec::new(),
        }
    }

    /// A TCP echo server on 127.0.0.1:`port` (socat, one process per connection).
    pub fn tcp_echo(prefix: &str, port: u16, labels: &[(&str, &str)]) -> Self {
        Self::socat(prefix, &[format!("TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork")], labels)
    }

    /// socat servers echoing on each address, under a shell that exits at once on SIGTERM
    /// (socat as PID 1 would ignore it, and every stop would wait for the kill timeout).
    ///
    /// TCP echoes copy in 4 KiB (`-b4096`): socat echoes through one pipe that only it reads,
    /// and its default 8 KiB write into a nearly full pipe blocks for good, stalling a bulk
    /// echo both ways at once; 4 KiB always fits once the pipe polls writable. (UDP keeps the
    /// default: `-b` also caps the datagram size read.)
    fn socat(prefix: &str, listens: &[String], labels: &[(&str, &str)]) -> Self {
        let mut script = "trap 'exit 0' TERM INT; ".to_string();
        for l in listens {
            let buffer = if l.starts_with("TCP") { "-b4096 " } else { "" };
            script.push_str(&format!("/usr/bin/socat {buffer}{l} PIPE & "));
        }
        script.push_str("wait");
        ContainerSpec {
            cmd: vec!["/bin/sh".into(), "-c".into(), script],
            host_libs: true,
            ..Self::sleeper(prefix, labels)
        }
    }

    /// A TCP echo server on 127.0.0.1:`tcp` and a UDP one on 127.0.0.1:`udp`, in one container.
    pub fn tcp_and_udp_echo(prefix: &str, tcp: u16, udp: u16, labels: &[(&str, &str)]) -> Self {
        Self::socat(
            prefix,
            &[
                format!("TCP4-LISTEN:{tcp},bind=127.0.0.1,reuseaddr,fork"),
                format!("UDP4-RECVFROM:{udp},bind=127.0.0.1,fork"),
            ],
            labels,
        )
    }

    /// A UDP echo server on 127.0.0.1:`port` (socat, each datagram answered to its sender).
    pub fn udp_echo(prefix: &str, port: u16, labels: &[(&str, &str)]) -> Self {
        Self::socat(prefix, &[format!("UDP4-RECVFROM:{port},bind=127.0.0.1,fork")], labels)
    }

    /// A TCP echo server on all addresses of its own network, port `port` (for containers
    /// that do not use the host's network; reach it through a published port).
    pub fn tcp_echo_any(prefix: &str, port: u16, labels: &[(&str, &str)]) -> Self {
        Self::socat(prefix, &[format!("TCP4-LISTEN:{port},reuseaddr,fork")], labels)
    }

    /// On network mode `network` (`slirp4netns`, a network name), with container port
    /// `container` published on 127.0.0.1:`host`.
    pub fn on_network(mut self, network: &str, container: u16, host: u16) -> Self {
        self.network = Some(network.to_string());
        self.publish.push((container, host));
        self
    }

    /// Exposing `ports` (`53/udp`, `8080/tcp`) without publishing them.
    pub fn exposing(mut self, ports: &[String]) -> Self {
        self.expose.extend(ports.iter().cloned());
        self
    }

    /// With restart policy `unless-stopped`.
    pub fn restart_unless_stopped(mut self) -> Self {
        self.restart_unless_stopped = true;
        self
    }

    /// A TCP server on 127.0.0.1:`port` that greets each client with `name` and a newline,
    /// then echoes (socat, one process per connection), so a client can tell which
    /// container it reached.
    pub fn tcp_named(prefix: &str, port: u16, name: &str, labels: &[(&str, &str)]) -> Self {
        let script = format!(
            "trap 'exit 0' TERM INT; /usr/bin/socat TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork \
             'SYSTEM:echo {name}; exec cat' & wait"
        );
        ContainerSpec {
            cmd: vec!["/bin/sh".into(), "-c".into(), script],
            host_libs: true,
            ..Self::sleeper(prefix, labels)
        }
    }

    /// With a health check running shell command `cmd` every `interval`.
    pub fn health_check(mut self, cmd: &str, interval: Duration) -> Self {
        self.health_check = Some((cmd.to_string(), interval));
        self
    }
}

/// `127.0.0.1:port`: where every test sends its traffic.
pub fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `docker` CLI, talking to `host` when given (else to DOCKER_HOST or the local socket).
pub fn docker_cli(host: Option<&str>) -> Command {
    engine_cli(EngineKind::Docker, host)
}

/// The engine's own CLI (`docker -H HOST`, `podman --url HOST`), talking to `host` when given.
/// Both take the same `ps`, `rm`, `import` and `image inspect` arguments.
pub fn engine_cli(kind: EngineKind, host: Option<&str>) -> Command {
    let (program, flag) = match kind {
        EngineKind::Docker => ("docker", "-H"),
        EngineKind::Podman => ("podman", "--url"),
    };
    let mut cmd = Command::new(program);
    if let Some(host) = host {
        cmd.args([flag, host]);
    }
    cmd
}

/// A reachable engine, for one test case.
pub struct TestEngine {
    /// The client (API version negotiated).
    pub docker: Docker,
    /// The test's name, carried by its containers.
    pub case: String,
    /// The engine's address when it is not the default one (a [`crate::private_engine`], Podman).
    pub host: Option<String>,
    /// Docker or Podman.
    pub kind: EngineKind,
}

impl TestEngine {
    /// Connects, builds the test image if needed, sweeps stale leftovers. `None` (after
    /// printing SKIP) when no engine answers and the run does not require one.
    pub async fn connect(case: &str) -> Option<TestEngine> {
        let docker = match Self::try_connect().await {
            Ok(d) => d,
            Err(e) => {
                if docker_required() {
                    panic!("DOCKWARD_REQUIRE_DOCKER=1 but no Docker engine answers: {e}");
                }
                crate::skip::skip(
                    "docker",
                    case,
                    format!("no Docker engine reachable ({e}); run scripts/start-dockerd.sh"),
                );
                return None;
            }
        };
        ensure_image().unwrap_or_else(|e| panic!("building {TEST_IMAGE}: {e}"));
        static SWEPT: OnceLock<()> = OnceLock::new();
        if SWEPT.set(()).is_ok() {
            sweep_stale(&docker).await;
        }
        Some(TestEngine { docker, case: case.to_string(), host: None, kind: EngineKind::Docker })
    }

    /// Connects to the engine at `host` (`unix:///path`), which must answer, and imports the
    /// test image into it if it lacks it.
    pub async fn connect_to(case: &str, host: &str) -> TestEngine {
        let docker = Docker::connect_with_host(host)
            .unwrap_or_else(|e| panic!("client for {host}: {e}"))
            .with_timeout(Duration::from_secs(60));
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .unwrap_or_else(|_| panic!("{host}: version negotiation timed out"))
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        build_image(EngineKind::Docker, Some(host)).unwrap_or_else(|e| panic!("building {TEST_IMAGE} on {host}: {e}"));
        TestEngine { docker, case: case.to_string(), host: Some(host.to_string()), kind: EngineKind::Docker }
    }

    async fn try_connect() -> Result<Docker, String> {
        let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?.with_timeout(Duration::from_secs(60));
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        docker.ping().await.map_err(|e| e.to_string())?;
        Ok(docker)
    }

    /// Creates a container (not started).
    pub async fn create(&self, spec: &ContainerSpec) -> TestContainer {
        let name = unique_name(&spec.prefix);
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.insert(RUN_LABEL.into(), run_id().into());
        labels.insert(CASE_LABEL.into(), self.case.clone());
        let binds = spec.host_libs.then(|| {
            ["/usr", "/lib", "/lib64"]
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| format!("{p}:{p}:ro"))
                .collect::<Vec<_>>()
        });
        // Podman's defaults (unlimited nofile and nproc) are refused on this machine.
        let ulimits = (self.kind == EngineKind::Podman).then(|| {
            ["nofile", "nproc"]
                .map(|name| ResourcesUlimits { name: Some(name.into()), soft: Some(1024), hard: Some(1024) })
                .to_vec()
        });
        let port_bindings: bollard::models::PortMap = spec
            .publish
            .iter()
            .map(|(container, host)| {
                let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(host.to_string()) };
                (format!("{container}/tcp"), Some(vec![binding]))
            })
            .collect();
        let exposed: Vec<String> = spec
            .publish
            .iter()
            .map(|(container, _)| format!("{container}/tcp"))
            .chain(spec.expose.iter().cloned())
            .collect();
        let healthcheck = spec.health_check.as_ref().map(|(cmd, interval)| HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), cmd.clone()]),
            interval: Some(interval.as_nanos() as i64),
            timeout: Some(Duration::from_secs(10).as_nanos() as i64),
            retries: Some(1),
            ..Default::default()
        });
        let body = ContainerCreateBody {
            image: Some(self.kind.image().into()),
            healthcheck,
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            cmd: Some(spec.cmd.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone().unwrap_or_else(|| "host".into())),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                binds,
                ulimits,
                restart_policy: spec.restart_unless_stopped.then_some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created =
            self.docker.create_container(Some(options), body).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        TestContainer {
            docker: self.docker.clone(),
            host: self.host.clone(),
            kind: self.kind,
            id: created.id,
            name,
            armed: true,
        }
    }

    /// Removes many containers with one `docker rm -f` (dropping each would take one call each).
    pub fn remove_all(&self, containers: &mut [TestContainer]) {
        for chunk in containers.chunks_mut(100) {
            let ids: Vec<&str> = chunk.iter().map(|c| c.id.as_str()).collect();
            let status = engine_cli(self.kind, self.host.as_deref())
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .stdout(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) {
                chunk.iter_mut().for_each(|c| c.armed = false);
            }
        }
    }

    /// Creates and starts a container.
    pub async fn run(&self, spec: &ContainerSpec) -> TestContainer {
        let c = self.create(spec).await;
        c.start().await;
        c
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        // Whatever this case left behind (a container whose guard was leaked, say).
        let filter_run = format!("label={RUN_LABEL}={}", run_id());
        let filter_case = format!("label={CASE_LABEL}={}", self.case);
        let out = engine_cli(self.kind, self.host.as_deref())
            .args(["ps", "-aq", "--filter", &filter_run, "--filter", &filter_case])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = engine_cli(self.kind, self.host.as_deref())
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A test container; removed (forcibly) when dropped, even when the test panicked.
pub struct TestContainer {
    docker: Docker,
    /// The engine's address, when not the default one.
    host: Option<String>,
    /// Docker or Podman.
    kind: EngineKind,
    /// Whether dropping it still has to remove it.
    armed: bool,
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
}

impl TestContainer {
    /// Starts it.
    pub async fn start(&self) {
        self.docker
            .start_container(&self.id, None::<StartContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop(&self) {
        let options = StopContainerOptions { t: Some(5), ..Default::default() };
        self.docker.stop_container(&self.id, Some(options)).await.unwrap_or_else(|e| panic!("stop {}: {e}", self.name));
    }

    /// Sends it `signal` (`docker kill -s SIGNAL`), e.g. `KILL`.
    pub async fn kill(&self, signal: &str) {
        let options = bollard::query_parameters::KillContainerOptions { signal: signal.to_string() };
        self.docker
            .kill_container(&self.id, Some(options))
            .await
            .unwrap_or_else(|e| panic!("kill -s {signal} {}: {e}", self.name));
    }

    /// Pauses it.
    pub async fn pause(&self) {
        self.docker.pause_container(&self.id).await.unwrap_or_else(|e| panic!("pause {}: {e}", self.name));
    }

    /// Unpauses it.
    pub async fn unpause(&self) {
        self.docker.unpause_container(&self.id).await.unwrap_or_else(|e| panic!("unpause {}: {e}", self.name));
    }

    /// Renames it; `self.name` is updated.
    pub async fn rename(&mut self, new_name: &str) {
        let options = RenameContainerOptions { name: new_name.to_string() };
        self.docker.rename_container(&self.id, options).await.unwrap_or_else(|e| panic!("rename {}: {e}", self.name));
        self.name = new_name.to_string();
    }

    /// Runs `cmd` in it (`docker exec`) and waits for it; panics unless it succeeds.
    pub fn exec(&self, cmd: &[&str]) {
        let out = engine_cli(self.kind, self.host.as_deref())
            .arg("exec")
            .arg(&self.id)
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {}: {e}", self.name));
        assert!(out.status.success(), "exec {cmd:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Removes it now (forcibly).
    pub async fn remove(&self) {
        let options = RemoveContainerOptions { force: true, ..Default::default() };
        self.docker.remove_container(&self.id, Some(options)).await.unwrap_or_else(|e| panic!("rm {}: {e}", self.name));
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Synchronous on purpose: Drop cannot await, and this must run during a panic too.
        let _ = engine_cli(self.kind, self.host.as_deref())
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Imports [`TEST_IMAGE`] from the host's static busybox unless the engine has it.
fn ensure_image() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| build_image(EngineKind::Docker, None)).clone()
}

/// Imports the test image into the engine at `host` (default: the usual one) unless it has it.
pub(crate) fn build_image(kind: EngineKind, host: Option<&str>) -> Result<(), String> {
    let present = engine_cli(kind, host)
        .args(["image", "inspect", "--format", "{{.Id}}", kind.image()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("docker CLI: {e}"))?;
    if present.success() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no busybox on the host (apt-get install busybox-static)")?;
    let dir = std::env::temp_dir().join(unique_name("image"));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "nc", "sleep", "httpd", "cat", "echo", "true", "ls"] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| e.to_string())?;
        }
    }
    // Mount points for the host libraries; created empty in the image.
    for d in ["usr", "lib", "lib64", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let tar_out = tar.stdout.ok_or("tar: no stdout")?;
    let import = engine_cli(kind, host)
        .args(["import", "-", kind.image()])
        .stdin(tar_out)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("docker import: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !import.status.success() {
        return Err(format!("docker import failed: {}", String::from_utf8_lossy(&import.stderr)));
    }
    Ok(())
}

/// Removes test containers of runs that ended long ago without cleaning up (killed runs).
async fn sweep_stale(docker: &Docker) {
    let filters: HashMap<String, Vec<String>> = [("label".to_string(), vec![RUN_LABEL.to_string()])].into();
    let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let Ok(list) = docker.list_containers(Some(options)).await else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for c in list {
        let stale = c.created.is_some_and(|t| now - t > STALE_AFTER.as_secs() as i64);
        let ours = c.labels.as_ref().and_then(|l| l.get(RUN_LABEL)).is_some_and(|r| r == run_id());
        if let (true, false, Some(id)) = (stale, ours, c.id) {
            let options = RemoveContainerOptions { force: true, ..Default::default() };
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
}

/// A running `dockward run` with the Docker provider on (and optionally a routes file),
/// its admin API on an OS-picked loopback port. Killed when dropped; a failing test prints
/// its log.
pub struct DockwardWithDocker {
    child: std::process::Child,
    dir: tempfile::TempDir,
    /// Its admin API address (`127.0.0.1:PORT`).
    pub admin: String,
}

impl DockwardWithDocker {
    /// Starts `dockward run` watching `engine` (its `host`, else DOCKER_HOST, else the local
    /// socket), serving `routes_yaml` as a routes file when given. It only sees the containers
    /// of `engine`'s test case (`DOCKWARD_DOCKER_LABEL_FILTER`), so parallel tests, each with
    /// its own dockward, never fight over each other's ports.
    pub fn start(engine: &TestEngine, routes_yaml: Option<&str>) -> Self {
        let host = engine.host.clone().or_else(|| std::env::var("DOCKER_HOST").ok()).filter(|h| !h.is_empty());
        Self::start_at(host.as_deref(), &engine.case, routes_yaml)
    }

    /// Like [`DockwardWithDocker::start`], talking to the engine at `docker_host` (`None`: the
    /// local socket) and seeing only the containers of test case `case`.
    pub fn start_at(docker_host: Option<&str>, case: &str, routes_yaml: Option<&str>) -> Self {
        Self::start_with_args(docker_host, case, routes_yaml, &[])
    }

    /// Like [`DockwardWithDocker::start_at`], with `args` added to `dockward run`
    /// (`--docker-tls nas=DIR`, say).
    pub fn start_with_args(docker_host: Option<&str>, case: &str, routes_yaml: Option<&str>, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = crate::dockward::command();
        cmd.env("DOCKWARD_DOCKER_LABEL_FILTER", format!("{RUN_LABEL}={},{CASE_LABEL}={case}", run_id()));
        cmd.arg("run").args(["--admin", "127.0.0.1:0", "--log-level", "debug,bollard=info,hyper=info,hyper_util=info"]);
        if let Some(yaml) = routes_yaml {
            let file = dir.path().join("routes.yml");
            std::fs::write(&file, yaml).expect("write routes file");
            cmd.arg("--routes").arg(file);
        }
        if let Some(host) = docker_host {
            cmd.args(["--docker-host", host]);
        }
        cmd.args(args);
        let (child, admin) = crate::dockward::spawn_controller(cmd, dir.path());
        DockwardWithDocker { child, dir, admin }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockward.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET /routes` as JSON rows.
    pub fn routes(&self) -> Vec<serde_json::Value> {
        let (status, body) = crate::dockward::http_get(&self.admin, "/routes").expect("GET /routes");
        assert_eq!(status, 200, "GET /routes: {body}");
        serde_json::from_str(&body).expect("GET /routes is a JSON array")
    }

    /// The row of `alias` from `source`, if there is one now.
    pub fn row(&self, source: &str, alias: &str) -> Option<serde_json::Value> {
        self.routes().into_iter().find(|r| r["source"] == source && r["alias"] == alias)
    }

    /// Waits up to `limit` until `alias` of `source` satisfies `ok`; fails with the rows and log.
    pub fn wait_row(
        &self,
        source: &str,
        alias: &str,
        what: &str,
        limit: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let give_up = std::time::Instant::now() + limit;
        loop {
            let rows = self.routes();
            if let Some(r) = rows.iter().find(|r| r["source"] == source && r["alias"] == alias && ok(r)) {
                return r.clone();
            }
            assert!(
                std::time::Instant::now() < give_up,
                "route {alias:?} of {source} never became {what} within {limit:?}; rows: {}\nlog:\n{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `limit` until `source` has no row for `alias`.
    pub fn wait_gone(&self, source: &str, alias: &str, limit: Duration) {
        let give_up = std::time::Instant::now() + limit;
        while self.row(source, alias).is_some() {
            assert!(
                std::time::Instant::now() < give_up,
                "route {alias:?} of {source} still there after {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `dockward ARGS --admin ADMIN` against this process.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        crate::dockward::command().args(args).args(["--admin", &self.admin]).output().expect("dockward runs")
    }
}

impl Drop for DockwardWithDocker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- dockward log ----\n{}---- end of log ----", self.log());
        }
    }
}

/// Sends `message` through `addr` (TCP) and returns the echo, retrying until `limit` while
/// the target behind the route is not answering yet (the container may still be starting).
pub fn tcp_echo_eventually(addr: std::net::SocketAddr, message: &[u8], limit: Duration) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let give_up = std::time::Instant::now() + limit;
    loop {
        let attempt = (|| -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(message)?;
            let mut back = vec![0u8; message.len()];
            s.read_exact(&mut back)?;
            Ok(back)
        })();
        let last_error = match attempt {
            Ok(back) => return back,
            Err(e) => e.to_string(),
        };
        assert!(std::time::Instant::now() < give_up, "no TCP echo through {addr} within {limit:?}: {last_error}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `message` to `addr` (UDP) from a new loopback socket and returns the reply,
/// retrying until `limit`.
pub fn udp_echo_eventually(addr: std::net::SocketAddr, message: &[u8], limit: Duration) -> Vec<u8> {
    let give_up = std::time::Instant::now() + limit;
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP client");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let mut buf = [0u8; 2048];
    loop {
        let _ = socket.send_to(message, addr);
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && from == addr
        {
            return buf[..n].to_vec();
        }
        assert!(std::time::Instant::now() < give_up, "no UDP echo through {addr} within {limit:?}");
    }
}
