//! `dockward run` lifts its soft open-file limit to the hard one at start, so the usual
//! 1,024 does not cap it at ~500 TCP connections.

use std::process::{Child, Command};

use dockward_tests::dockward::{bin, spawn_controller};

/// Kills the process when dropped, even if the test fails first.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The soft and hard "Max open files" of process `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let mut fields = line.split_whitespace().skip(3);
    (fields.next().expect("soft").to_string(), fields.next().expect("hard").to_string())
}

#[test]
fn run_raises_a_low_soft_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.yml");
    std::fs::write(&routes, "routes:\n  a: {scheme: tcp, bind: 127.0.0.1, port: \"0:9\"}\n").expect("write routes");
    // A shell lowers the soft limit, then becomes dockward (same pid).
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""]).arg(bin());
    cmd.env_remove("DOCKWARD_ADMIN").env_remove("RUST_LOG");
    cmd.arg("run").arg("--routes").arg(&routes).args(["--no-docker", "--admin", "127.0.0.1:0"]);
    let (child, _admin) = spawn_controller(cmd, dir.path());
    let child = Killed(child);
    let (soft, hard) = nofile(child.0.id());
    let log = std::fs::read_to_string(dir.path().join("dockward.log")).unwrap_or_default();
    if hard == "unlimited" {
        // Raised to the kernel's fs.nr_open instead.
        assert_ne!(soft, "256", "soft limit not raised; log:\n{log}");
    } else {
        assert_eq!(soft, hard, "soft limit not raised; log:\n{log}");
    }
    if hard != "256" {
        assert!(log.contains("raised the open-file limit"), "{log}");
    }
}
