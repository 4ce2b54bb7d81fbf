//! Driving the built `dockward` binary: start it with a routes file and an admin API on an
//! OS-picked loopback port, ask it for its routes, stop it with a signal.
//!
//! The binary is the workspace's own `dockward`, built once per test process with
//! `cargo build -p dockward` (a no-op when it is fresh); `DOCKWARD_BIN` points at another
//! build instead. Nothing here sleeps to synchronise: every wait polls a condition against a
//! deadline and fails with what it saw.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any wait in these helpers may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The workspace root (where `Cargo.toml`, `examples/` and `tests/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `dockward` binary under test; built on first use.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("DOCKWARD_BIN") {
            return PathBuf::from(path);
        }
        build_bin().unwrap_or_else(|e| panic!("cannot build dockward: {e}"))
    })
}

/// `cargo build -p dockward`, returning the executable cargo reports, wherever the target
/// directory is (CARGO_TARGET_DIR, a shared target, ...).
fn build_bin() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let output = Command::new(cargo)
        .args(["build", "-p", "dockward", "--bin", "dockward", "--message-format=json-render-diagnostics"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo build failed: {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "dockward")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no dockward executable".to_string())
}

/// A `dockward` command with a clean environment: no admin address, Docker host, TLS
/// setting, global ACL or log filter inherited from the machine running the tests.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove("DOCKWARD_ADMIN").env_remove("DOCKER_HOST").env_remove("RUST_LOG");
    cmd.env_remove("DOCKWARD_ALLOW").env_remove("DOCKWARD_DENY").env_remove("DOCKWARD_DOCKER_LABEL_FILTER");
    cmd.env_remove("DOCKWARD_DOCKER_TLS").env_remove("DOCKER_TLS_VERIFY").env_remove("DOCKER_CERT_PATH");
    cmd
}

/// Runs `dockward ARGS` from the workspace root and waits for it.
pub fn run(args: &[&str]) -> Output {
    command().args(args).current_dir(workspace_root()).output().expect("dockward runs")
}

/// Polls `probe` until it returns `Some`, failing after `limit` with `what`.
pub fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < give_up, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Spawns `cmd` (a `dockward run ...` without `--admin-addr-file`) with its stdout and stderr
/// in `dir/dockward.log`, and waits until it has written its admin address, which it returns
/// (`127.0.0.1:PORT` or `unix:/path`); fails with the log if the process exits first.
pub fn spawn_controller(mut cmd: Command, dir: &Path) -> (Child, String) {
    let addr_file = dir.join("admin.addr");
    let log_path = dir.join("dockward.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = cmd
        .arg("--admin-addr-file")
        .arg(&addr_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("dockward starts");
    let admin = poll("the admin address file", DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("dockward exited during start-up with {status}:\n{log}");
        }
        Some(std::fs::read_to_string(&addr_file).ok()?.trim().to_string())
    });
    (child, admin)
}

/// A running `dockward run`, with its own directory holding the routes file and the log.
///
/// Dropping it kills the process; a failing test prints the process's log.
pub struct Dockward {
    child: Child,
    dir: tempfile::TempDir,
    /// The routes file it serves.
    pub routes_file: PathBuf,
    /// Its admin API address as `dockward routes --admin` takes it (`127.0.0.1:PORT` or `unix:/path`).
    pub admin: String,
    exit: Option<ExitStatus>,
}

impl Dockward {
    /// Starts `dockward run --routes FILE` with `yaml` as the file, the admin API on an
    /// OS-picked loopback port, Docker off, and waits until the admin API answers.
    pub fn start(yaml: &str) -> Self {
        Self::start_with(yaml, "127.0.0.1:0")
    }

    /// Like [`Dockward::start`] with the admin API at `admin` (e.g. `unix:/path`).
    pub fn start_with(yaml: &str, admin: &str) -> Self {
        Self::start_with_args(yaml, admin, &[])
    }

    /// Like [`Dockward::start_with`], with more `dockward run` flags (`--deny 127.0.0.1`).
    pub fn start_with_args(yaml: &str, admin: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes_file = dir.path().join("routes.yml");
        std::fs::write(&routes_file, yaml).expect("write routes file");
        let mut cmd = command();
        cmd.arg("run").arg("--routes").arg(&routes_file);
        cmd.args(["--admin", admin, "--no-docker", "--log-level", "debug"]).args(args);
        let (child, admin) = spawn_controller(cmd, dir.path());
        Dockward { child, dir, routes_file, admin, exit: None }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the routes file and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockward.log")).unwrap_or_default()
    }

    /// Rewrites the routes file in place (truncate and write, as `>` in a shell does).
    pub fn write_routes(&self, yaml: &str) {
        std::fs::write(&self.routes_file, yaml).expect("write routes file");
    }

    /// Replaces the routes file by writing a new one and renaming it over, as editors do.
    pub fn replace_routes(&self, yaml: &str) {
        let tmp = self.dir.path().join(".routes.yml.swp");
        std::fs::write(&tmp, yaml).expect("write temp routes file");
        std::fs::rename(&tmp, &self.routes_file).expect("rename routes file");
    }

    /// `GET /routes` as JSON rows.
    pub fn routes(&self) -> Vec<Value> {
        let (status, body) = http_get(&self.admin, "/routes").expect("GET /routes");
        assert_eq!(status, 200, "GET /routes: {body}");
        serde_json::from_str::<Vec<Value>>(&body).expect("GET /routes is a JSON array")
    }

    /// Waits until the route `alias` satisfies `ok`, and returns its row.
    pub fn wait_route(&self, alias: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let give_up = Instant::now() + DEADLINE;
        loop {
            let last = self.routes();
            if let Some(row) = last.iter().find(|r| r["alias"] == alias && r["protocol"].is_string() && ok(r)) {
                return row.clone();
            }
            assert!(
                Instant::now() < give_up,
                "route {alias:?} never became {what}; last GET /routes: {}\nlog:\n{}",
                serde_json::to_string_pretty(&last).unwrap_or_default(),
                self.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the route `alias` listens and returns the address it bound.
    pub fn listen_addr(&self, alias: &str) -> SocketAddr {
        let row = self.wait_route(alias, "listening", |r| r["state"] == "listening");
        row["listen"].as_str().and_then(|s| s.parse().ok()).expect("listen is an address")
    }

    /// Runs `dockward ARGS --admin ADMIN` against this process.
    pub fn cli(&self, args: &[&str]) -> Output {
        command().args(args).args(["--admin", &self.admin]).output().expect("dockward runs")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.child.id(), libc::SIGTERM);
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let give_up = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(Instant::now() < give_up, "dockward did not exit within {limit:?}; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }
}

impl Drop for Dockward {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- dockward log ----\n{}---- end of log ----", self.log());
        }
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// A plain `GET path` over HTTP/1.1 to `admin` (`HOST:PORT` or `unix:/path`): status and body.
pub fn http_get(admin: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(admin, path, &[])
}

/// Like [`http_get`], with extra request headers.
pub fn http_get_with(admin: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: dockward\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut raw = Vec::new();
    if let Some(socket) = admin.strip_prefix("unix:") {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut raw)?;
    } else {
        let mut stream = TcpStream::connect(admin)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut raw)?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    Ok((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A loopback TCP echo server on an OS-picked port, serving until the test process ends.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A loopback UDP echo server on an OS-picked port, serving until the test process ends.
pub fn udp_echo_server() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP echo server");
    let addr = socket.local_addr().expect("UDP echo server address");
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    });
    addr
}

/// A connection to `addr` with read and write timeouts, so a broken forwarder fails the
/// test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    stream
}

/// Like [`connect`], from the local address `from` (`127.0.0.2`, say: any of 127.0.0.0/8
/// works on Linux without configuration), so the client differs from dockward's own peers.
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    let stream = runtime
        .block_on(async {
            let socket =
                if from.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(addr).await?.into_std()
        })
        .unwrap_or_else(|e| panic!("connect {addr} from {from}: {e}"));
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    stream
}

/// Writes `message` and reads back exactly as many bytes: what an echo target returns.
pub fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write through dockward");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("read the echo back through dockward");
    back
}

/// Connects to `addr`, sends `message` and returns the echo.
pub fn echo_via(addr: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    round_trip(&mut stream, message)
}

/// A YAML routes file with one TCP route per `(alias, target port)`, each listening on an
/// OS-picked loopback port.
pub fn routes_yaml(routes: &[(&str, u16)]) -> String {
    let mut yaml = String::from("routes:\n");
    for (alias, port) in routes {
        yaml.push_str(&format!("  {alias}:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {port}\n"));
    }
    yaml
}
