//! Hostile and careless routes files (issue 15): secrets never echoed, deep nesting refused
//! quickly without delaying other files, reads retried, a recreated directory watched again,
//! and a deleted file's routes removed once it stays gone.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use dockward_tests::dockward::{
    DEADLINE, Dockward, command, echo_server, http_get, poll, routes_yaml, spawn_controller,
};
use serde_json::Value;

/// A `dockward run` over several routes files in `dir`, with the interval of the periodic
/// re-read shortened to `reread` (a hidden flag made for tests).
struct Controller {
    child: Child,
    dir: tempfile::TempDir,
    admin: String,
}

impl Controller {
    fn start(files: &[(&str, &str)], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = command();
        cmd.arg("run").args(["--admin", "127.0.0.1:0", "--no-docker", "--log-level", "debug"]).args(extra);
        for (name, yaml) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&path, yaml).expect("write routes file");
            cmd.arg("--routes").arg(path);
        }
        let (child, admin) = spawn_controller(cmd, dir.path());
        Controller { child, dir, admin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockward.log")).unwrap_or_default()
    }

    fn routes(&self) -> Vec<Value> {
        let (status, body) = http_get(&self.admin, "/routes").expect("GET /routes");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON rows")
    }

    /// Waits until some row satisfies `ok` and returns it.
    fn wait_row(&self, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let give_up = Instant::now() + limit;
        loop {
            let rows = self.routes();
            if let Some(row) = rows.iter().find(|r| ok(r)) {
                return row.clone();
            }
            assert!(
                Instant::now() < give_up,
                "never saw {what} within {limit:?}; last rows: {}\nlog:\n{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- dockward log ----\n{}---- end of log ----", self.log());
        }
    }
}

fn source_is(row: &Value, path: &Path) -> bool {
    row["source"] == path.display().to_string()
}

#[test]
fn a_secret_file_over_the_routes_file_is_never_echoed_by_the_api_or_the_log() {
    let echo = echo_server();
    let dw = Dockward::start(&routes_yaml(&[("steady", echo.port())]));
    dw.listen_addr("steady");
    let secrets = [
        (
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY\nDB_PASS=hunter2\n",
            "wJalrXUtnFEMIK7MDENG",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXQAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "b3BlbnNzaC1rZXkt",
        ),
        ("root:$6$Zx8ke3Rq$ShadowHashShadowHashShadowHash/abcdefgh:19000:0:99999:7:::\n", "Zx8ke3Rq"),
        ("daemon:*:19000:0:99999:7:::\nroot: $6$Qm4ew9Tz$AnotherShadowHashValue\n", "Qm4ew9Tz"),
    ];
    for (text, secret) in secrets {
        dw.write_routes(text);
        let row = poll("the file's error row", DEADLINE, || {
            let rows = dw.routes();
            rows.into_iter().find(|r| r["protocol"].is_null() && r["error"].as_str().is_some_and(|e| !e.is_empty()))
        });
        let body = http_get(&dw.admin, "/routes").expect("GET /routes").1;
        assert!(!body.contains(secret), "GET /routes shows {secret}: {row}");
        assert!(!dw.log().contains(secret), "the log shows {secret}:\n{}", dw.log());
        let table = String::from_utf8_lossy(&dw.cli(&["routes"]).stdout).into_owned();
        assert!(!table.contains(secret), "dockward routes shows {secret}:\n{table}");
        // Back to a good file, so that the next secret is a new error.
        dw.write_routes(&routes_yaml(&[("steady", echo.port())]));
        poll("the error to clear", DEADLINE, || dw.routes().iter().all(|r| r["state"] == "listening").then_some(()));
    }
}

#[test]
fn a_deeply_nested_file_is_refused_quickly_and_another_file_s_edit_still_applies() {
    let echo = echo_server();
    let c = Controller::start(&[("a.yml", &routes_yaml(&[("a", echo.port())])), ("b.yml", "routes: {}\n")], &[]);
    let (a, b) = (c.path("a.yml"), c.path("b.yml"));
    c.wait_row("route a listening", DEADLINE, |r| r["alias"] == "a" && r["state"] == "listening");

    let started = Instant::now();
    std::fs::write(&b, format!("routes: {}{}\n", "[".repeat(200_000), "]".repeat(200_000))).expect("write b.yml");
    let row = c.wait_row("b.yml's depth error", Duration::from_secs(5), |r| {
        source_is(r, &b) && r["error"].as_str().is_some_and(|e| e.contains("nested more than 64 deep"))
    });
    assert_eq!(row["error"], "lists and maps nested more than 64 deep (line 1); a routes file needs 4");

    std::fs::write(&a, routes_yaml(&[("a", echo.port()), ("a2", echo.port())])).expect("write a.yml");
    c.wait_row("route a2 listening", Duration::from_secs(5), |r| r["alias"] == "a2" && r["state"] == "listening");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "refusing b.yml and applying a.yml took {took:?}");
}

#[test]
fn a_file_whose_read_failed_is_read_again_on_the_periodic_tick_without_any_event() {
    // routes.yml is a symlink into a directory nobody watches: making its target there sends
    // no event to the watched directory, as descriptors coming back after an EMFILE do not.
    let echo = echo_server();
    let dir = tempfile::tempdir().expect("temp dir");
    let (live, elsewhere) = (dir.path().join("live"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&live).expect("mkdir");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let file = live.join("routes.yml");
    std::os::unix::fs::symlink(elsewhere.join("real.yml"), &file).expect("symlink");
    let mut cmd = command();
    cmd.arg("run").arg("--routes").arg(&file);
    cmd.args(["--admin", "127.0.0.1:0", "--no-docker", "--log-level", "debug", "--reread-interval", "1s"]);
    let (child, admin) = spawn_controller(cmd, dir.path());
    let c = Controller { child, dir, admin };
    let row = c.wait_row("the unreadable file's error", DEADLINE, |r| source_is(r, &file) && r["state"] == "error");
    assert!(row["error"].as_str().is_some_and(|e| e.starts_with("cannot read the file: ")), "{row}");

    std::fs::write(elsewhere.join("real.yml"), routes_yaml(&[("late", echo.port())])).expect("write target");
    c.wait_row("route late listening", DEADLINE, |r| r["alias"] == "late" && r["state"] == "listening");
    poll("the error row to clear", DEADLINE, || c.routes().iter().all(|r| r["state"] == "listening").then_some(()));
}

#[test]
fn a_deleted_and_recreated_directory_is_watched_again() {
    let echo = echo_server();
    let c = Controller::start(&[("live/routes.yml", &routes_yaml(&[("first", echo.port())]))], &[]);
    let live = c.path("live");
    let file = c.path("live/routes.yml");
    c.wait_row("route first listening", DEADLINE, |r| r["alias"] == "first" && r["state"] == "listening");

    std::fs::remove_dir_all(&live).expect("rm -rf live");
    std::fs::create_dir(&live).expect("mkdir live");
    std::fs::write(&file, routes_yaml(&[("second", echo.port())])).expect("write live/routes.yml");
    c.wait_row("route second listening", DEADLINE, |r| r["alias"] == "second" && r["state"] == "listening");

    // The watch itself is back, not just a poll: a later edit applies at once.
    let edited = Instant::now();
    std::fs::write(&file, routes_yaml(&[("second", echo.port()), ("third", echo.port())])).expect("edit");
    c.wait_row("route third listening", DEADLINE, |r| r["alias"] == "third" && r["state"] == "listening");
    assert!(edited.elapsed() < Duration::from_secs(3), "the edit took {:?}", edited.elapsed());
    assert!(c.log().contains("watching the directory again"), "{}", c.log());
}

#[test]
fn a_deleted_file_s_routes_are_removed_once_it_stays_missing_and_a_row_says_so() {
    let echo = echo_server();
    let c =
        Controller::start(&[("routes.yml", &routes_yaml(&[("doomed", echo.port())]))], &["--reread-interval", "1s"]);
    let file = c.path("routes.yml");
    let listen =
        c.wait_row("route doomed listening", DEADLINE, |r| r["alias"] == "doomed" && r["state"] == "listening");

    std::fs::remove_file(&file).expect("rm routes.yml");
    let row = c.wait_row("the file-gone row", DEADLINE, |r| {
        source_is(r, &file) && r["error"].as_str().is_some_and(|e| e.starts_with("the file is gone"))
    });
    assert_eq!(row["error"], "the file is gone (missing for 1s or more); its routes were removed");
    assert!(c.routes().iter().all(|r| r["alias"] != "doomed"), "the route is still there");
    let addr: std::net::SocketAddr = listen["listen"].as_str().and_then(|s| s.parse().ok()).expect("address");
    poll("the port to close", DEADLINE, || std::net::TcpStream::connect(addr).is_err().then_some(()));
    let table = command().args(["routes", "--admin", &c.admin]).output().expect("dockward routes");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("the file is gone"), "{table}");
    assert!(c.log().contains("routes file deleted: its routes are removed"), "{}", c.log());
}

#[test]
fn a_missing_file_at_start_does_not_claim_previous_routes_keep_running() {
    let c = Controller::start(&[("other.yml", "routes: {}\n")], &[]);
    drop(c);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = command();
    cmd.arg("run").arg("--routes").arg(dir.path().join("absent.yml"));
    cmd.args(["--admin", "127.0.0.1:0", "--no-docker"]);
    let (child, admin) = spawn_controller(cmd, dir.path());
    let c = Controller { child, dir, admin };
    poll("the warning", DEADLINE, || c.log().contains("routes file not applied").then_some(()));
    let log = c.log();
    assert!(log.contains("routes file not applied; it serves no routes until it loads"), "{log}");
    assert!(!log.contains("previous routes keep running"), "{log}");
}

#[test]
fn an_edit_read_during_a_descriptor_outage_is_applied_once_descriptors_are_back() {
    // Under a 128-descriptor limit, UDP sessions (one socket each) fill the table; an edit
    // then fails to open with EMFILE. The sessions expire after 4 s and free their
    // descriptors, and no file event follows: only the periodic re-read can apply the edit.
    const LIMIT: u64 = 128;
    let udp_echo = dockward_tests::dockward::udp_echo_server();
    let echo = echo_server();
    let hog = format!(
        "routes:\n  hog:\n    scheme: udp\n    bind: 127.0.0.1\n    port: {}\n    udp_idle_timeout: 4s\n",
        udp_echo.port()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("routes.yml");
    std::fs::write(&file, &hog).expect("write routes file");
    let mut cmd = command();
    cmd.arg("run").arg("--routes").arg(&file);
    cmd.args(["--admin", "127.0.0.1:0", "--no-docker", "--log-level", "info", "--reread-interval", "1s"]);
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setrlimit(2) between fork and exec touches no memory but the struct given.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (child, admin) = spawn_controller(cmd, dir.path());
    let c = Controller { child, dir, admin };
    let pid = c.child.id();
    let row = c.wait_row("route hog listening", DEADLINE, |r| r["alias"] == "hog" && r["state"] == "listening");
    let hog_addr: std::net::SocketAddr = row["listen"].as_str().and_then(|s| s.parse().ok()).expect("address");
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);

    // One datagram from each of many client sockets: a session each, until the table is full.
    let mut clients = Vec::new();
    let give_up = Instant::now() + DEADLINE;
    while open_fds() < LIMIT && Instant::now() < give_up {
        for _ in 0..8 {
            let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client socket");
            client.send_to(b"x", hog_addr).expect("send");
            clients.push(client);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if open_fds() < LIMIT {
        eprintln!(
            "SKIP: UDP sessions stop short of the descriptor limit ({} of {LIMIT}): a reserve keeps descriptors free",
            open_fds()
        );
        return;
    }
    std::fs::write(&file, format!("{hog}  late: {{bind: 127.0.0.1, port: {}}}\n", echo.port())).expect("edit");
    poll("the EMFILE read error in the log", DEADLINE, || {
        c.log().contains("error=cannot read the file: Too many open files").then_some(())
    });

    // The sessions expire, descriptors come back, and the edit applies with no new event.
    c.wait_row("route late listening", Duration::from_secs(20), |r| r["alias"] == "late" && r["state"] == "listening");
    poll("the error row to clear", DEADLINE, || c.routes().iter().all(|r| r["state"] == "listening").then_some(()));
}
