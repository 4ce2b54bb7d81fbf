//! The deploy files, proven: every label in the compose files parses into the routes its
//! comments promise, the compose files are valid compose, the systemd unit passes
//! `systemd-analyze verify`, and the image (deploy/Dockerfile.local, the scratch variant of
//! deploy/Dockerfile) runs on a real engine as non-root with the socket mounted and host
//! networking, forwards a labelled container's port below 1024 and lists it through
//! `docker exec … dockward routes`.
//!
//! Nothing is pulled: the image is built FROM scratch out of the binary the tests build. All
//! traffic stays on 127.0.0.1. Without an engine, docker-compose or systemd-analyze, the test
//! that needs it prints SKIP, unless `DOCKWARD_REQUIRE_DOCKER=1` (set by
//! scripts/start-dockerd.sh in CI) makes a missing engine or docker-compose a failure.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dockward_tests::docker::{
    CASE_LABEL, ContainerSpec, RUN_LABEL, TestEngine, docker_required, free_tcp_port, run_id, tcp_echo_eventually,
    unique_name,
};
use dockward_tests::dockward::{bin, http_get, workspace_root};

/// How many routes each compose file's labels make (as its header comment says), in file name
/// order. A new compose file under deploy/ or examples/labels/ needs a line here.
const EXPECTED_ROUTES: &[(&str, usize)] = &[
    // postgres 1, sleeping when idle.
    ("deploy/docker-compose.idle-sleep.yml", 1),
    ("deploy/docker-compose.remote-host.yml", 0),
    ("deploy/docker-compose.socket-proxy.yml", 0),
    // ssh 1, dns 1, minecraft tcp+udp 2.
    ("deploy/docker-compose.yml", 4),
    ("examples/labels/dns-udp.yml", 1),
    // java tcp+udp 2 (mc-db has no proxy label).
    ("examples/labels/minecraft-idle.yml", 2),
    // java tcp+udp 2, bedrock 1.
    ("examples/labels/minecraft.yml", 3),
    ("examples/labels/postgres.yml", 1),
    ("examples/labels/ssh.yml", 1),
    // turn tcp+udp 2, relay 41 ports.
    ("examples/labels/tcp-udp.yml", 43),
    ("examples/labels/wireguard-udp.yml", 1),
];

/// Every compose file the project ships, relative to the workspace root, sorted.
fn compose_files() -> Vec<String> {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["deploy", "examples/labels"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
            let name = entry.expect("directory entry").file_name().to_string_lossy().into_owned();
            if name.ends_with(".yml") || name.ends_with(".yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

/// The `proxy.*` labels of each service of a compose file, by service name. Compose allows
/// labels as a map or as a list of `key=value`; values may be YAML numbers or booleans.
fn proxy_labels(file: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let text = std::fs::read_to_string(workspace_root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
    let scalar = |v: &serde_norway::Value| match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        other => panic!("{file}: label value {other:?} is not a scalar"),
    };
    let services = doc.get("services").and_then(|s| s.as_mapping()).unwrap_or_else(|| panic!("{file}: no services"));
    let mut out = BTreeMap::new();
    for (name, service) in services {
        let name = scalar(name);
        let pairs: Vec<(String, String)> = match service.get("labels") {
            None => Vec::new(),
            Some(serde_norway::Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
            Some(serde_norway::Value::Sequence(list)) => list
                .iter()
                .map(|item| {
                    let item = scalar(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            Some(other) => panic!("{file}: service {name}: labels {other:?} are neither a map nor a list"),
        };
        let proxy: Vec<_> = pairs.into_iter().filter(|(k, _)| k.starts_with("proxy.")).collect();
        if !proxy.is_empty() {
            out.insert(name, proxy);
        }
    }
    out
}

#[test]
fn every_label_in_the_compose_files_parses_into_the_routes_its_comments_promise() {
    let files = compose_files();
    let listed: Vec<&str> = EXPECTED_ROUTES.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, listed, "every compose file needs a line in EXPECTED_ROUTES, and only those");

    for (file, expected) in EXPECTED_ROUTES {
        let mut routes = 0;
        for (service, labels) in proxy_labels(file) {
            let parsed = docker_watcher::check_labels(&labels, &service);
            let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
            assert!(errors.is_empty(), "{file}: service {service}: {errors:#?}");
            assert!(
                parsed.skipped.is_empty(),
                "{file}: service {service}: aliases without a route: {:?}",
                parsed.skipped
            );
            assert!(!parsed.routes.is_empty(), "{file}: service {service} has proxy labels but no route");
            routes += parsed.routes.len();
        }
        assert_eq!(routes, *expected, "{file}: number of routes its labels make");
    }
}

#[test]
fn dockward_services_that_drop_capabilities_keep_the_one_the_binary_asks_for() {
    // The image's binary has the CAP_NET_BIND_SERVICE file capability: without it in the
    // container's bounding set, exec fails ("operation not permitted") whatever the ports.
    for file in compose_files() {
        let text = std::fs::read_to_string(workspace_root().join(&file)).expect("read compose file");
        let doc: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
        let services = doc.get("services").and_then(|s| s.as_mapping()).expect("services");
        for (name, service) in services {
            let image = service.get("image").and_then(|i| i.as_str()).unwrap_or_default();
            if !image.starts_with("dockward") {
                continue;
            }
            let list = |key: &str| -> Vec<String> {
                let items = service.get(key).and_then(|v| v.as_sequence()).cloned().unwrap_or_default();
                items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
            };
            if list("cap_drop").iter().any(|c| c == "ALL") {
                assert!(list("cap_add").iter().any(|c| c == "NET_BIND_SERVICE"), "{file}: service {name:?}");
            }
        }
    }
}

#[test]
fn the_readme_has_a_row_for_every_container_label() {
    use docker_watcher::labels::{LABEL_ALIASES, LABEL_EXCLUDE, LABEL_NETWORK};
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme.split("\n## Docker labels\n").nth(1).expect("README has a Docker labels section");
    let rows: Vec<&str> =
        section.lines().take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with("| `")).collect();
    for label in
        [LABEL_ALIASES, "proxy.<alias>.<field>", "proxy.#N.<field>", "proxy.*.<field>", LABEL_EXCLUDE, LABEL_NETWORK]
    {
        assert!(rows.iter().any(|r| r.starts_with(&format!("| `{label}` |"))), "no row for {label} in:\n{rows:#?}");
    }
}

#[test]
fn the_local_dockerfile_runs_the_image_as_the_real_one_does() {
    // The instructions that decide how the container runs, in the final stage of each.
    let runtime = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(workspace_root().join(file)).expect("read Dockerfile");
        let last_stage = text.rsplit_once("\nFROM ").map(|(_, s)| s).unwrap_or(&text);
        let keys = ["USER ", "HEALTHCHECK ", "ENTRYPOINT ", "CMD ", "EXPOSE ", "STOPSIGNAL "];
        last_stage.lines().filter(|l| keys.iter().any(|k| l.starts_with(k))).map(str::to_string).collect()
    };
    let real = runtime("deploy/Dockerfile");
    assert_eq!(real, runtime("deploy/Dockerfile.local"));
    assert!(real.contains(&r#"ENTRYPOINT ["dockward"]"#.to_string()), "{real:#?}");
    assert!(real.iter().any(|l| l.starts_with("HEALTHCHECK ") && l.ends_with(r#"CMD ["dockward", "routes"]"#)));
}

/// `docker compose` (the plugin) or `docker-compose` (Debian's package), whichever answers.
fn compose_command() -> Option<Vec<&'static str>> {
    let answers = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [vec!["docker", "compose"], vec!["docker-compose"]].into_iter().find(|cmd| answers(cmd))
}

#[test]
fn the_compose_files_are_valid_compose() {
    let Some(compose) = compose_command() else {
        assert!(!docker_required(), "DOCKWARD_REQUIRE_DOCKER=1 but neither `docker compose` nor docker-compose runs");
        dockward_tests::skip::skip(
            "docker",
            "the_compose_files_are_valid_compose",
            "no docker compose (apt-get install docker-compose)",
        );
        return;
    };
    for file in compose_files() {
        let path = workspace_root().join(&file);
        // From the file's directory, as a user would run it (relative build contexts).
        let out = Command::new(compose[0])
            .args(&compose[1..])
            .arg("-f")
            .arg(&path)
            .args(["config", "-q"])
            .current_dir(path.parent().expect("a directory"))
            .env_remove("DOCKER_GID")
            .output()
            .expect("compose runs");
        assert!(out.status.success(), "{} config {file}: {}", compose.join(" "), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !Command::new("systemd-analyze").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        dockward_tests::skip::skip(
            "systemd",
            "the_systemd_unit_passes_systemd_analyze_verify",
            "no systemd-analyze (apt-get install systemd)",
        );
        return;
    }
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = std::fs::read_to_string(workspace_root().join("deploy/dockward.service")).expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/dockward run --routes /etc/dockward/routes.yml"), "{unit}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dockward.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/dockward", &bin().to_string_lossy())).expect("write unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("verify runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings, with exit status 0: any line about the
    // unit is a failure. (Other units it pulls in, such as docker.service, may warn too.)
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("dockward.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {stderr}");
}

/// A port below 1024 on 127.0.0.1 that is free now (the caller must be root to bind it).
fn free_privileged_port() -> Option<u16> {
    (600..1000).rev().find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

fn has_setcap() -> bool {
    Command::new("sh").args(["-c", "command -v setcap"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The image built by deploy/build-local-image.sh, removed when dropped.
struct LocalImage {
    tag: String,
}

impl LocalImage {
    fn build() -> LocalImage {
        let tag = format!("dockward-deploy-test:{}", run_id());
        let script = workspace_root().join("deploy/build-local-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(bin())
            .arg(&tag)
            .args(["--label", &format!("{RUN_LABEL}={}", run_id())])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        LocalImage { tag }
    }
}

impl Drop for LocalImage {
    fn drop(&mut self) {
        let _ =
            Command::new("docker").args(["rmi", "-f", &self.tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A container started with the docker CLI, removed (forcibly) when dropped; a failing test
/// prints its log first.
struct CliContainer {
    name: String,
}

impl CliContainer {
    fn inspect(&self, format: &str) -> String {
        let out = docker(&["inspect", "--format", format, &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for CliContainer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}---- end of log ----", self.name, self.logs());
        }
        let _ =
            Command::new("docker").args(["rm", "-f", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

/// How dockward's container reaches the engine the tests use: `docker run` arguments.
fn engine_access() -> Vec<String> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let socket = match host.strip_prefix("unix://") {
        Some(path) => path.to_string(),
        None if host.is_empty() => "/var/run/docker.sock".to_string(),
        // tcp://127.0.0.1:…: reachable from a host-network container as it is.
        None => return vec!["-e".into(), format!("DOCKER_HOST={host}")],
    };
    // The socket is root:docker 0660 (or so): the non-root image joins its group.
    let gid = std::fs::metadata(&socket).unwrap_or_else(|e| panic!("{socket}: {e}")).gid();
    vec!["--group-add".into(), gid.to_string(), "-v".into(), format!("{socket}:/var/run/docker.sock:ro")]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_as_non_root_and_forwards_a_labelled_container() {
    let Some(engine) = TestEngine::connect("deploy_image").await else { return };
    let image = LocalImage::build();

    // A port below 1024 proves the file capability (the image runs as uid 65532); only root
    // can give the binary the capability (setcap) and look for a free one.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let setcap = has_setcap();
    assert!(setcap || !root || !docker_required(), "DOCKWARD_REQUIRE_DOCKER=1 as root but no setcap (libcap2-bin)");
    let privileged = if root && setcap { free_privileged_port() } else { None };
    if privileged.is_none() {
        println!("NOTE: not root, no setcap or no free port below 1024: the capability is not tested");
    }
    let (target, listen) = (free_tcp_port(), privileged.unwrap_or_else(free_tcp_port));
    let port = format!("{listen}:{target}");
    let service = engine
        .run(&ContainerSpec::tcp_echo(
            "deploy-target",
            target,
            &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")],
        ))
        .await;

    // The admin port comes from the OS; another process may take it before dockward binds
    // it, so a start that fails on it is retried with another.
    let filter = format!("{RUN_LABEL}={},{CASE_LABEL}={}", run_id(), engine.case);
    let (dockward, admin) = (0..5)
        .find_map(|_| {
            let admin = format!("127.0.0.1:{}", free_tcp_port());
            let c = CliContainer { name: unique_name("deploy-dockward") };
            let mut args: Vec<String> =
                ["run", "-d", "--pull", "never", "--network", "host", "--name", &c.name].map(String::from).to_vec();
            args.extend(["--label".into(), format!("{RUN_LABEL}={}", run_id())]);
            args.extend(["--label".into(), format!("{CASE_LABEL}={}", engine.case)]);
            args.extend(engine_access());
            args.extend(["-e".into(), format!("DOCKWARD_ADMIN={admin}")]);
            args.extend(["-e".into(), format!("DOCKWARD_DOCKER_LABEL_FILTER={filter}")]);
            args.extend(["-e".into(), "RUST_LOG=debug,bollard=info,hyper=info,hyper_util=info".into()]);
            // The image's HEALTHCHECK, checked every second instead of every 30.
            args.extend(["--health-interval", "1s", "--health-timeout", "5s"].map(String::from));
            // No command: the image's ENTRYPOINT and CMD (`dockward run`).
            args.push(image.tag.clone());
            let out = Command::new("docker").args(&args).output().expect("docker run");
            assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
            let give_up = Instant::now() + Duration::from_secs(15);
            loop {
                if http_get(&admin, "/healthz").is_ok_and(|(status, _)| status == 200) {
                    return Some((c, admin));
                }
                if c.inspect("{{.State.Running}}") == "false" {
                    let log = c.logs();
                    assert!(log.contains("cannot listen on"), "dockward's container exited:\n{log}");
                    return None; // the admin port was taken: try another
                }
                assert!(Instant::now() < give_up, "no admin API at {admin}:\n{}", c.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .expect("five admin ports in a row were taken");

    // Non-root: the image's user, and the process on the host really runs as it.
    assert_eq!(dockward.inspect("{{.Config.User}}"), "65532:65532");
    let pid = dockward.inspect("{{.State.Pid}}");
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
        assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{uid}");
    }

    // The labelled container's port is forwarded.
    let give_up = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let (_, body) = http_get(&admin, "/routes").expect("GET /routes");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON rows");
        let row = rows.into_iter().find(|r| r["alias"] == "svc" && r["source"] == service.name.as_str());
        if let Some(row) = row.filter(|r| r["state"] == "listening") {
            break row;
        }
        assert!(Instant::now() < give_up, "route svc of {} not listening within 15 s: {body}", service.name);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(row["listen"], format!("127.0.0.1:{listen}"));
    assert_eq!(row["targets"], serde_json::json!([format!("127.0.0.1:{target}")]));
    let echo =
        tcp_echo_eventually(SocketAddr::from(([127, 0, 0, 1], listen)), b"through the image", Duration::from_secs(15));
    assert_eq!(echo, b"through the image");

    // `docker exec <dockward> dockward routes` lists it (DOCKWARD_ADMIN is the container's).
    let out = docker(&["exec", &dockward.name, "dockward", "routes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "docker exec dockward routes: {}", String::from_utf8_lossy(&out.stderr));
    let line = table.lines().find(|l| l.contains(&service.name)).unwrap_or_else(|| panic!("no row in:\n{table}"));
    for part in ["svc", "tcp", &format!("127.0.0.1:{listen}"), &format!("127.0.0.1:{target}"), "listening"] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }

    // The HEALTHCHECK (`dockward routes` inside the container) reports healthy.
    let give_up = Instant::now() + Duration::from_secs(30);
    while dockward.inspect("{{.State.Health.Status}}") != "healthy" {
        assert!(Instant::now() < give_up, "not healthy: {}", dockward.inspect("{{json .State.Health}}"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
