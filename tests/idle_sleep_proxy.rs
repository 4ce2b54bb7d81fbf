//! Idle sleep behind the socket proxy deploy/ ships: the real HAProxy (Debian's `haproxy`)
//! runs deploy/socket-proxy/haproxy-idle-sleep.cfg unchanged, listening on a unix socket in
//! a temp dir (its `PROXY_LISTEN`) in front of the engine's socket (its `DOCKER_SOCKET`).
//!
//! - With a real engine: dockward with `--allow-container-control` talks to the engine only
//!   through it, puts redis containers to sleep with each stop method (stop, pause, kill) and
//!   wakes them on a client, so every call it makes (start, stop, pause, unpause, kill and the
//!   reads) passes; then create, exec, DELETE and other writes sent to the same proxy are
//!   refused with 403 and never reach the engine.
//! - Without one: a recorder stands in for the engine's socket and a table of requests shows
//!   what the file lets through (exactly dockward's calls) and what it refuses, including
//!   traversal, escapes and a body on a start.
//!
//! HAProxy missing: SKIP, unless `DOCKWARD_REQUIRE_HAPROXY=1`. No engine (or no
//! `redis-server` on the host): SKIP, unless `DOCKWARD_REQUIRE_DOCKER=1`. All traffic is on loopback or unix sockets.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockward_tests::docker::{
    CASE_LABEL, DockwardWithDocker, RUN_LABEL, docker_cli, engine_socket, free_tcp_port, run_id,
};
use dockward_tests::dockward::{DEADLINE, poll, workspace_root};
use dockward_tests::haproxy::haproxy_bin;
use dockward_tests::idle::{
    CONTROL, SLEEP_WITHIN, engine, events, labels, loopback, now_secs, ping, redis, refs, state_of, wait_state,
};

/// The file under test, relative to the workspace root.
const CONFIG: &str = "deploy/socket-proxy/haproxy-idle-sleep.cfg";
/// What HAProxy answers a refused request with (its built-in 403 page).
const REFUSAL: &str = "Request forbidden by administrative rules.";

/// HAProxy running the deploy file, in front of `upstream`; killed when dropped.
struct DeployProxy {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl DeployProxy {
    fn start(bin: &Path, upstream: &Path) -> DeployProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("docker-api.sock");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(workspace_root().join(CONFIG))
            .env("PROXY_LISTEN", &socket)
            .env("DOCKER_SOCKET", upstream)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        let mut proxy = DeployProxy { child, dir, socket };
        let give_up = Instant::now() + DEADLINE;
        while UnixStream::connect(&proxy.socket).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("haproxy exited with {status}:\n{}", proxy.log());
            }
            assert!(Instant::now() < give_up, "haproxy never listened on {}:\n{}", proxy.socket.display(), proxy.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        proxy
    }

    /// The address for `--docker-host`.
    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Everything HAProxy printed: one line per request (`METHOD URI STATUS FLAGS MS`) and
    /// any warning.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The requests HAProxy logged so far, as `(method, uri, status)`.
    fn requests(&self) -> Vec<(String, String, u16)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [method, uri, status, _flags, _ms] => {
                        Some((method.to_string(), uri.to_string(), status.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Sends one request (`Connection: close`) and returns the status and body.
    fn send(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let mut s = UnixStream::connect(&self.socket).expect("connect to the proxy");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let length = if headers.contains("Transfer-Encoding") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: docker\r\n{headers}{length}Connection: close\r\n\r\n{body}");
        s.write_all(request.as_bytes()).expect("write the request");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for DeployProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- haproxy log ----\n{}---- end of haproxy log ----", self.log());
        }
    }
}

#[test]
fn the_deploy_config_is_valid_without_a_warning() {
    let Some(bin) = haproxy_bin("the_deploy_config_is_valid_without_a_warning") else { return };
    // With its defaults (the compose file's values), as the official image would read it.
    let out = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(workspace_root().join(CONFIG))
        .env_remove("PROXY_LISTEN")
        .env_remove("DOCKER_SOCKET")
        .output()
        .expect("haproxy -c runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "haproxy -c {CONFIG}:\n{text}");
    assert!(!text.contains("WARNING") && !text.contains("ALERT"), "haproxy -c {CONFIG}:\n{text}");
}

/// A stand-in for the engine's socket that answers every request `200 upstream` and records
/// `METHOD PATH` of each: what got through the proxy.
fn recorder(socket: &Path) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(socket).expect("bind the recorder");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut head = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                head.push(std::mem::take(&mut line));
            }
            let request: Vec<&str> = head.first().map(|l| l.split_whitespace().collect()).unwrap_or_default();
            let [method, path, ..] = request.as_slice() else { continue };
            record.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{method} {path}"));
            let body = if *method == "HEAD" { "" } else { "upstream" };
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{body}");
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    seen
}

#[test]
fn the_deploy_config_passes_exactly_dockwards_calls() {
    let Some(bin) = haproxy_bin("the_deploy_config_passes_exactly_dockwards_calls") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = dir.path().join("engine.sock");
    let seen = recorder(&upstream);
    let proxy = DeployProxy::start(&bin, &upstream);

    // Every call dockward makes, with and without the version prefix, with their queries.
    let allowed = [
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", "/v1.41/version"),
        ("GET", "/v1.41/info"),
        ("GET", "/v1.41/events?since=1&filters=%7B%22type%22%3A%5B%22container%22%5D%7D"),
        ("GET", "/v1.41/containers/json?all=1&filters=%7B%7D"),
        ("GET", "/containers/json"),
        ("GET", "/v1.41/containers/4f1c2d3e5a6b/json"),
        ("GET", "/v1.41/containers/my-app_1.web/json"),
        ("POST", "/v1.41/containers/4f1c2d3e5a6b/start"),
        ("POST", "/v1.41/containers/4f1c2d3e5a6b/stop?t=60"),
        ("POST", "/v1.41/containers/4f1c2d3e5a6b/pause"),
        ("POST", "/v1.41/containers/4f1c2d3e5a6b/unpause"),
        ("POST", "/v1.41/containers/4f1c2d3e5a6b/kill?signal=SIGTERM"),
        ("POST", "/containers/4f1c2d3e5a6b/start"),
        ("GET", "/v1.41/services?status=true"),
        ("GET", "/v1.41/services/svc1"),
        ("GET", "/v1.41/tasks?filters=%7B%7D"),
        ("GET", "/v1.41/nodes/node1"),
    ];
    for (method, path) in allowed {
        let (status, body) = proxy.send(method, path, "", "");
        assert_eq!(status, 200, "{method} {path} refused: {body}");
    }
    let passed = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sent: Vec<String> = allowed.iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(passed, sent, "each allowed request reached the engine once, as sent");

    // (method, path, extra headers, body): writes and reads dockward never makes, and tricks.
    let refused = [
        ("POST", "/v1.41/containers/create", "", r#"{"Image":"x","HostConfig":{"Privileged":true}}"#),
        ("POST", "/v1.41/containers/abc/exec", "", r#"{"Cmd":["sh"]}"#),
        ("DELETE", "/v1.41/containers/abc?force=1", "", ""),
        ("POST", "/v1.41/containers/abc/restart", "", ""),
        ("POST", "/v1.41/containers/abc/update", "", "{}"),
        ("POST", "/v1.41/containers/abc/rename?name=x", "", ""),
        ("POST", "/v1.41/containers/abc/attach?stream=1", "", ""),
        ("POST", "/v1.41/containers/abc/wait", "", ""),
        ("PUT", "/v1.41/containers/abc/archive?path=/", "", "tar"),
        ("GET", "/v1.41/containers/abc/archive?path=/etc/shadow", "", ""),
        ("GET", "/v1.41/containers/abc/logs?stdout=1", "", ""),
        ("GET", "/v1.41/containers/abc/export", "", ""),
        ("POST", "/v1.41/containers/prune", "", ""),
        ("POST", "/v1.41/exec/abc/start", "", "{}"),
        ("GET", "/v1.41/images/json", "", ""),
        ("POST", "/v1.41/images/create?fromImage=x", "", ""),
        ("GET", "/v1.41/volumes", "", ""),
        ("POST", "/v1.41/networks/create", "", "{}"),
        ("POST", "/v1.41/build", "", ""),
        ("GET", "/v1.41/secrets", "", ""),
        ("POST", "/v1.41/swarm/init", "", "{}"),
        ("GET", "/v1.41/nodes", "", ""),
        ("GET", "/v1.41/system/df", "", ""),
        // A start with a body: before API 1.24 the engine applies it as the HostConfig.
        ("POST", "/v1.23/containers/abc/start", "Content-Type: application/json\r\n", r#"{"Privileged":true}"#),
        ("POST", "/v1.41/containers/abc/start", "Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"),
        // The right path with the wrong method, and the right method on the wrong path.
        ("GET", "/v1.41/containers/abc/start", "", ""),
        ("DELETE", "/v1.41/containers/abc/json", "", ""),
        ("POST", "/v1.41/containers/json", "", ""),
        ("PUT", "/v1.41/containers/abc/stop", "", ""),
        // Paths that only look like allowed ones.
        ("GET", "/v1.41/containers/../images/json", "", ""),
        ("POST", "/v1.41/containers/abc/start/../../create", "", ""),
        ("POST", "/v1.41/containers/%2e%2e/create", "", ""),
        ("GET", "/v1.41/containers/a%2Fb/json", "", ""),
        ("GET", "//containers/json", "", ""),
        ("GET", "/v1.41/containers/json/../../images/json", "", ""),
        ("GET", "/vX/containers/json", "", ""),
        ("GET", "/v1.41/CONTAINERS/json", "", ""),
        ("POST", "/v1.41/containers/abc/startx", "", ""),
        ("POST", "/v1.41/containers//start", "", ""),
    ];
    for (method, path, headers, body) in refused {
        let (status, answer) = proxy.send(method, path, headers, body);
        assert_eq!(status, 403, "{method} {path} was not refused: {answer}");
        assert!(answer.contains(REFUSAL), "{method} {path}: HAProxy's own 403: {answer}");
    }
    let after = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(after.len(), passed.len(), "refused requests reached the engine: {:?}", &after[passed.len()..]);
    // HAProxy logs a request once its answer is out: the last line may trail the answer.
    poll("every refusal in HAProxy's log", DEADLINE, || {
        let logged = proxy.requests().iter().filter(|(_, _, status)| *status == 403).count();
        (logged == refused.len()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sleep_works_through_the_deploy_proxy_which_refuses_other_writes() {
    let case = "idle_sleep_through_the_deploy_proxy";
    let Some(engine) = engine(case).await else { return };
    let Some(bin) = haproxy_bin(case) else { return };
    let Some(upstream) = engine_socket() else {
        dockward_tests::skip::skip("docker", case, "DOCKER_HOST is not a unix socket; the proxy forwards to one");
        return;
    };
    let proxy = DeployProxy::start(&bin, &upstream);

    // One redis per stop method, each idle after 2 s.
    let mut sleepers = Vec::new();
    for (method, asleep) in [("stop", "exited"), ("pause", "paused"), ("kill", "exited")] {
        let (listen, target) = (free_tcp_port(), free_tcp_port());
        let mut l = labels("redis", &format!("{listen}:{target}"), "2s");
        l.push(("proxy.stop_method".into(), method.into()));
        let c = engine.run(&redis(target, &refs(&l))).await;
        sleepers.push((c, listen, asleep));
    }
    let since = now_secs();
    let dockward = DockwardWithDocker::start_with_args(Some(&proxy.host()), case, None, CONTROL);

    for (c, listen, asleep) in &sleepers {
        wait_state(&c.id, asleep, SLEEP_WITHIN, &dockward);
        dockward.wait_row(&c.name, "redis", "sleeping", SLEEP_WITHIN, |r| r["state"] == "sleeping");
        assert_eq!(ping(loopback(*listen)).as_deref(), Ok("+PONG"), "{} woken through the proxy", c.name);
        assert_eq!(state_of(&c.id), "running");
    }
    for (c, ..) in &sleepers {
        let row = dockward.row(&c.name, "redis").expect("row");
        assert_eq!(row["wake_failed"], 0, "{row}");
    }

    // Everything dockward asked went through: each write is there (HAProxy logs a request
    // once its answer is out, so the last line may trail the wake), and nothing was refused.
    let done = |calls: &[(String, String, u16)], action: &str| {
        calls.iter().any(|(method, uri, status)| {
            let path = uri.split('?').next().unwrap_or_default();
            method == "POST" && path.ends_with(&format!("/{action}")) && (200..300).contains(status)
        })
    };
    let writes = ["start", "stop", "pause", "unpause", "kill"];
    let calls = poll("dockward's writes in HAProxy's log", DEADLINE, || {
        let calls = proxy.requests();
        writes.iter().all(|action| done(&calls, action)).then_some(calls)
    });
    let refused: Vec<_> = calls.iter().filter(|(_, _, status)| *status == 403).collect();
    assert!(refused.is_empty(), "the proxy refused dockward: {refused:?}\nlog:\n{}", dockward.log());
    for read in ["/containers/json", "/info"] {
        assert!(calls.iter().any(|(method, uri, _)| method == "GET" && uri.contains(read)), "no {read}: {calls:#?}");
    }

    // The same proxy refuses other writes, and the engine never sees them.
    let (victim, ..) = &sleepers[0];
    let id = victim.id.as_str();
    let before = calls.len();
    let create = format!(
        r#"{{"Image":"dockward-test-busybox:latest","Cmd":["true"],"Labels":{{"{RUN_LABEL}":"{}","{CASE_LABEL}":"{case}"}},"HostConfig":{{"Privileged":true,"Binds":["/:/host"]}}}}"#,
        run_id()
    );
    let attempts = [
        ("POST", "/v1.41/containers/create".to_string(), create.as_str()),
        ("POST", format!("/v1.41/containers/{id}/exec"), r#"{"Cmd":["cat","/etc/hostname"]}"#),
        ("DELETE", format!("/v1.41/containers/{id}?force=1"), ""),
        ("POST", format!("/v1.41/containers/{id}/restart"), ""),
        ("GET", format!("/v1.41/containers/{id}/archive?path=/etc"), ""),
        ("POST", format!("/v1.23/containers/{id}/start"), r#"{"Privileged":true}"#),
    ];
    for (method, path, body) in &attempts {
        let (status, answer) = proxy.send(method, path, "Content-Type: application/json\r\n", body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer.contains(REFUSAL), "{method} {path}: {answer}");
    }
    poll("the refusals in HAProxy's log", DEADLINE, || {
        let denied = proxy.requests().iter().skip(before).filter(|(_, _, status)| *status == 403).count();
        (denied == attempts.len()).then_some(())
    });

    // The engine's side: the container is still there, nothing ran in it, it was not
    // restarted, and no container was created for this case.
    assert!(!state_of(id).is_empty(), "{id} is gone");
    let actions: Vec<String> = events(&[id], since)
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| a.starts_with("exec") || a == "destroy" || a == "restart")
        .collect();
    assert!(actions.is_empty(), "{actions:?}");
    let out = docker_cli(None)
        .args(["ps", "-aq", "--filter", &format!("label={CASE_LABEL}={case}")])
        .output()
        .expect("docker ps");
    let ids = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(ids, sleepers.len(), "no container created through the proxy");
    drop(dockward);
}
