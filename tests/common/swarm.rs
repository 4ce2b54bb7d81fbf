//! A single-node Docker Swarm for the tests, and services that clean up after themselves.
//!
//! - [`TestSwarm::join`] makes the test engine a swarm manager: `docker swarm init
//!   --advertise-addr 127.0.0.1` when it is in no swarm (remembered with a node label, so a
//!   run killed half-way is finished by the next one), or the swarm it is already in. When
//!   the guard drops — also when the test panics — the services of this run are removed and,
//!   if the tests initialised the swarm, the engine leaves it (`docker swarm leave --force`)
//!   and the `docker_gwbridge` network the init created is removed: the engine is left as
//!   found.
//! - [`TestService`]: `docker service create --no-resolve-image` with the locally built
//!   [`TEST_IMAGE`] (nothing is pulled, no registry is asked for a digest), on the host
//!   network so all traffic stays on loopback. Every service carries [`RUN_LABEL`] and
//!   [`CASE_LABEL`] both on the service and on its containers; it is removed when dropped.
//!   Services of runs older than half an hour are swept at the first join.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::docker::{CASE_LABEL, RUN_LABEL, TEST_IMAGE, TestEngine, run_id, unique_name};

/// Node label marking a swarm the tests initialised (and must leave).
const INITIALISED_LABEL: &str = "dockward.test.swarm-initialised";
/// Services of runs older than this are leftovers of killed runs and are swept.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Runs `docker ARGS` and returns its output; panics when the CLI cannot be started.
fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("docker CLI: {e}"))
}

/// Runs `docker ARGS`, failing the test with its stderr unless it succeeds; returns stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker info`'s `{{.Swarm.LocalNodeState}}` and `{{.Swarm.ControlAvailable}}`.
fn swarm_state() -> (String, bool) {
    let text = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]);
    let mut words = text.split_whitespace();
    let state = words.next().unwrap_or("").to_string();
    (state, words.next() == Some("true"))
}

/// Serialises the swarm tests of one test binary: `cargo test` runs them on parallel
/// threads, and each turns the engine into a swarm manager and back. (nextest runs each
/// alone anyway, see .config/nextest.toml.) Hold the guard for the whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Whether the engine is in a swarm now (any node state but `inactive`).
pub fn in_a_swarm() -> bool {
    swarm_state().0 != "inactive"
}

/// The engine as a swarm manager for the length of one test.
pub struct TestSwarm {
    /// Whether the tests initialised this swarm: then dropping leaves it.
    pub initialised: bool,
    /// Whether `docker_gwbridge` existed before the init (else dropping removes it).
    gwbridge_existed: bool,
}

impl TestSwarm {
    /// Makes the test engine a swarm manager; `None` (after printing SKIP) when it is a
    /// worker of another swarm, which the tests must not touch.
    /// Takes the [`TestEngine`] to be sure the engine answers and the test image exists.
    pub fn join(_engine: &TestEngine) -> Option<TestSwarm> {
        let gwbridge_existed = network_exists("docker_gwbridge");
        let (state, manager) = swarm_state();
        let swarm = match state.as_str() {
            "inactive" => {
                docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                // The guard first: whatever fails next, dropping it leaves the swarm.
                let swarm = TestSwarm { initialised: true, gwbridge_existed };
                let node = docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"]);
                docker_ok(&["node", "update", "--label-add", &format!("{INITIALISED_LABEL}=true"), &node]);
                swarm
            }
            "active" if manager => {
                // Initialised by an earlier run that was killed before leaving: finish its job.
                let label = format!("{{{{index .Spec.Labels \"{INITIALISED_LABEL}\"}}}}");
                let ours = docker_ok(&["node", "inspect", "self", "--format", &label]) == "true";
                TestSwarm { initialised: ours, gwbridge_existed: !ours && gwbridge_existed }
            }
            other => {
                crate::skip::skip(
                    "docker",
                    "swarm",
                    format!("the engine's swarm state is {other:?} (manager: {manager}); not touching it"),
                );
                return None;
            }
        };
        static SWEPT: OnceLock<()> = OnceLock::new();
        if SWEPT.set(()).is_ok() {
            sweep_stale_services();
        }
        Some(swarm)
    }
}

impl Drop for TestSwarm {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and this must run during a panic too.
        remove_services(&format!("label={RUN_LABEL}={}", run_id()));
        if !self.initialised {
            return;
        }
        // Let the removed services' containers go first, so none is left behind by the leave.
        let give_up = Instant::now() + Duration::from_secs(20);
        while Instant::now() < give_up && !task_containers().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = docker(&["swarm", "leave", "--force"]);
        if !out.status.success() {
            eprintln!("docker swarm leave --force: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let leftovers = task_containers();
        if !leftovers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(leftovers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        if !self.gwbridge_existed {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// Containers of this run's swarm tasks, stopped or not.
fn task_containers() -> Vec<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={RUN_LABEL}={}", run_id()),
        "--filter",
        "label=com.docker.swarm.service.id",
    ]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

fn network_exists(name: &str) -> bool {
    docker(&["network", "inspect", "--format", "{{.Name}}", name]).status.success()
}

/// Removes every service matching `filter` (`label=K=V`).
fn remove_services(filter: &str) {
    let out = docker(&["service", "ls", "-q", "--filter", filter]);
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    if !ids.is_empty() {
        let mut args = vec!["service", "rm"];
        args.extend(ids.iter().map(String::as_str));
        let _ = Command::new("docker").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Removes services of test runs that are not this one and were created long ago.
fn sweep_stale_services() {
    let out = docker(&["service", "ls", "-q", "--filter", &format!("label={RUN_LABEL}")]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let info = docker(&[
            "service",
            "inspect",
            "--format",
            &format!("{{{{.CreatedAt.Unix}}}} {{{{index .Spec.Labels \"{RUN_LABEL}\"}}}}"),
            id,
        ]);
        let text = String::from_utf8_lossy(&info.stdout).to_string();
        let mut words = text.split_whitespace();
        let created: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(now);
        let run = words.next().unwrap_or("");
        if run != run_id() && now.saturating_sub(created) > STALE_AFTER.as_secs() {
            let _ = docker(&["service", "rm", id]);
        }
    }
}

/// What to run as a test service.
#[derive(Debug, Clone, Default)]
pub struct ServiceSpec {
    /// Name prefix; the name is made unique.
    pub prefix: String,
    /// Labels on the service (besides the run and case labels).
    pub labels: Vec<(String, String)>,
    /// Labels on its containers (besides the run and case labels).
    pub container_labels: Vec<(String, String)>,
    /// The shell script its containers run (under `/bin/sh -c`).
    pub script: String,
    /// Mount the host's /usr, /lib and /lib64 read-only (for socat).
    pub host_libs: bool,
}

impl ServiceSpec {
    /// A service whose task answers every TCP connection to 127.0.0.1:PORT with `TAG\n` and
    /// closes it, one socat per `(port, tag)`.
    pub fn tag_servers(prefix: &str, servers: &[(u16, &str)], labels: &[(&str, &str)]) -> Self {
        let mut script = "trap 'exit 0' TERM INT; ".to_string();
        for (port, tag) in servers {
            script.push_str(&format!(
                "/usr/bin/socat TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo {tag}' & "
            ));
        }
        script.push_str("wait");
        ServiceSpec {
            prefix: prefix.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            container_labels: Vec::new(),
            script,
            host_libs: true,
        }
    }

    /// A service that only sleeps, with `labels`.
    pub fn sleeper(prefix: &str, labels: &[(&str, &str)]) -> Self {
        ServiceSpec {
            prefix: prefix.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            container_labels: Vec::new(),
            script: "trap 'exit 0' TERM INT; sleep 86400 & wait".to_string(),
            host_libs: false,
        }
    }

    /// With these labels on its containers too (`--container-label`).
    pub fn with_container_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.container_labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self
    }
}

/// A swarm service of the test; removed when dropped, even when the test panicked.
pub struct TestService {
    /// Its unique name.
    pub name: String,
}

impl TestService {
    /// `docker service create --detach --no-resolve-image --network host --replicas 1`.
    ///
    /// The restart condition stays the default (`any`): with `none`, a service scaled to 0
    /// and back to 1 before its old task is gone never starts a new one (swarm 20.10).
    pub fn create(engine: &TestEngine, spec: &ServiceSpec) -> TestService {
        let name = unique_name(&spec.prefix);
        let run = format!("{RUN_LABEL}={}", run_id());
        let case = format!("{CASE_LABEL}={}", engine.case);
        let mut args: Vec<String> = [
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--network",
            "host",
            "--replicas",
            "1",
            "--stop-grace-period",
            "2s",
            "--name",
            &name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for label in [&run, &case] {
            args.extend(["--label".to_string(), label.clone(), "--container-label".to_string(), label.clone()]);
        }
        for (k, v) in &spec.labels {
            args.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        for (k, v) in &spec.container_labels {
            args.extend(["--container-label".to_string(), format!("{k}={v}")]);
        }
        if spec.host_libs {
            // In target order: `docker service update` sorts the mounts, and mounts in another
            // order would make any update (even of a label) replace the tasks.
            for p in ["/lib", "/lib64", "/usr"].into_iter().filter(|p| Path::new(p).exists()) {
                args.extend(["--mount".to_string(), format!("type=bind,src={p},dst={p},readonly")]);
            }
        }
        args.extend([TEST_IMAGE.to_string(), "/bin/sh".into(), "-c".into(), spec.script.clone()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        TestService { name }
    }

    /// `docker service update --detach --label-add K=V`: changes the service's labels only
    /// (its tasks keep running).
    pub fn set_label(&self, key: &str, value: &str) {
        docker_ok(&["service", "update", "--detach", "--label-add", &format!("{key}={value}"), &self.name]);
    }

    /// `docker service scale --detach NAME=N`.
    pub fn scale(&self, replicas: u32) {
        docker_ok(&["service", "scale", "--detach", &format!("{}={replicas}", self.name)]);
    }

    /// Waits until none of its task containers runs any more.
    pub fn wait_no_containers(&self, limit: Duration) {
        let give_up = Instant::now() + limit;
        while !self.running_containers().is_empty() {
            assert!(Instant::now() < give_up, "{}: task containers still run after {limit:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The names of its task containers that run now.
    pub fn running_containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}", self.name),
        ]);
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }

    /// Removes it now.
    pub fn remove(self) {
        // Drop does it.
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["service", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
