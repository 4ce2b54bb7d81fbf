//! A Docker engine of the test's own: a second `dockerd` (with the containerd it starts for
//! itself) whose data root, exec root, pid file and API socket all live in one temporary
//! directory. A test may stop and start it at will without disturbing the machine's engine,
//! which other tests use at the same time.
//!
//! It runs like the machine's (scripts/start-dockerd.sh): no iptables rules, no default
//! bridge; test containers use the host's network and listen on loopback. Its API may also
//! listen on loopback TCP, plain ([`PrivateEngine::start_with_tcp`]) or with TLS and client
//! certificates required ([`PrivateEngine::start_with_tls`]); the unix socket stays plain, so
//! the test's own client always reaches it. Starting one
//! needs root and a `dockerd` on PATH; [`PrivateEngine::available`] tells whether this run
//! can, so a test can skip (or fail under DOCKWARD_REQUIRE_DOCKER=1).
//!
//! Dropping it stops the daemon (its containers die with it), unmounts what the daemon left
//! mounted under the directory and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon may take to answer after it is started, or to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(60);

/// A private `dockerd`.
pub struct PrivateEngine {
    dir: PathBuf,
    child: Option<Child>,
    /// Its API address, `unix:///tmp/.../docker.sock`.
    pub host: String,
    /// Its API on loopback TCP too, `tcp://127.0.0.1:PORT`, when started with
    /// [`PrivateEngine::start_with_tcp`] or [`PrivateEngine::start_with_tls`].
    pub tcp: Option<String>,
    /// The directory of its TLS files (`ca.pem`, `cert.pem`, `key.pem`) when its TCP API
    /// speaks TLS.
    tls: Option<PathBuf>,
}

impl PrivateEngine {
    /// True when a private engine can run here. Otherwise prints SKIP for test `case` and
    /// returns false, or fails the test when the run requires Docker
    /// (`DOCKWARD_REQUIRE_DOCKER=1`).
    pub fn usable_for(case: &str) -> bool {
        match Self::available() {
            Ok(()) => true,
            Err(why) => {
                assert!(
                    !crate::docker::docker_required(),
                    "DOCKWARD_REQUIRE_DOCKER=1 but a private dockerd cannot run: {why}"
                );
                crate::skip::skip("docker", case, format!("a private dockerd cannot run here: {why}"));
                false
            }
        }
    }

    /// Whether this process can run a private engine (root, `dockerd` on PATH); the reason
    /// when it cannot.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid(2) has no preconditions and touches no memory of ours.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("dockerd").is_file()));
        if !found {
            return Err("no dockerd on PATH".into());
        }
        Ok(())
    }

    /// Starts a daemon in a fresh directory and waits until it answers.
    pub fn start() -> PrivateEngine {
        Self::start_inner(false, None)
    }

    /// Like [`PrivateEngine::start`], with the API also on `tcp://127.0.0.1:PORT` (a port
    /// free a moment ago; plain HTTP, loopback only), kept across restarts.
    pub fn start_with_tcp() -> PrivateEngine {
        Self::start_inner(true, None)
    }

    /// Like [`PrivateEngine::start_with_tcp`], with TLS on that port as `dockerd --tlsverify`
    /// serves it: its certificate and key are `dir`'s `cert.pem` and `key.pem`, and clients
    /// must present a certificate signed by `dir`'s `ca.pem` (see [`crate::certs`]).
    pub fn start_with_tls(dir: &Path) -> PrivateEngine {
        Self::start_inner(true, Some(dir.to_path_buf()))
    }

    fn start_inner(tcp: bool, tls: Option<PathBuf>) -> PrivateEngine {
        sweep_stale();
        // Short: the daemon's and containerd's unix socket paths must fit in 108 bytes.
        let dir = Path::new("/tmp").join(crate::docker::unique_name("eng"));
        std::fs::create_dir_all(&dir).expect("engine directory");
        // An empty configuration file, so /etc/docker/daemon.json of the machine is not read.
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("daemon.json");
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let tcp = tcp.then(|| format!("tcp://127.0.0.1:{}", crate::docker::free_tcp_port()));
        let mut engine = PrivateEngine { dir, child: None, host, tcp, tls };
        engine.start_daemon();
        engine
    }

    /// The directory holding everything of this engine.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Starts the daemon (again) and returns once its API answers.
    pub fn start_daemon(&mut self) {
        assert!(self.child.is_none(), "the engine is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("engine log");
        let d = &self.dir;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none", "--log-level=warn"])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["-H", &self.host])
            .args(self.tcp.iter().flat_map(|tcp| ["-H", tcp.as_str()]))
            .args(self.tls.iter().flat_map(|tls| {
                let file = |name: &str| tls.join(name).into_os_string();
                [
                    "--tlsverify".into(),
                    "--tlscacert".into(),
                    file("ca.pem"),
                    "--tlscert".into(),
                    file("cert.pem"),
                    "--tlskey".into(),
                    file("key.pem"),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("engine log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let give_up = Instant::now() + PATIENCE;
        while !self.answers() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("the private dockerd exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < give_up, "the private dockerd did not answer in {PATIENCE:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon (SIGTERM; it stops its containers and containerd first) and waits
    /// for it to exit.
    pub fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        crate::dockward::signal(child.id(), libc::SIGTERM);
        let give_up = Instant::now() + PATIENCE;
        loop {
            if child.try_wait().expect("try_wait dockerd").is_some() {
                return;
            }
            if Instant::now() >= give_up {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the private dockerd did not stop in {PATIENCE:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the API answers `GET /_ping` with `OK` now (one quick try).
    pub fn answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Some(path) = self.host.strip_prefix("unix://") else { return false };
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("OK")
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::dockward::signal(child.id(), libc::SIGTERM);
            let give_up = Instant::now() + PATIENCE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- private dockerd log ----\n{}---- end of log ----", self.log());
        }
        remove_engine_dir(&self.dir);
    }
}

/// Unmounts what a stopped daemon left mounted under `dir` (its network namespace handle,
/// say), deepest first, and removes `dir`.
fn remove_engine_dir(dir: &Path) {
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").args(["-l", &m]).stderr(Stdio::null()).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops the daemons of test processes that died without cleaning up (killed runs), and
/// removes their directories: `/tmp/dwt-eng-<test pid>-...` whose test process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_prefix("dwt-eng-").and_then(|rest| rest.split('-').next()) else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Some(pid) =
            std::fs::read_to_string(dir.join("docker.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok())
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("dockerd"))
        {
            crate::dockward::signal(pid, libc::SIGTERM);
            let give_up = Instant::now() + PATIENCE;
            let alive = || {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
            };
            while alive() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        remove_engine_dir(&dir);
    }
}
