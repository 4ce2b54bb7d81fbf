//! Running one test in a child process of its own.
//!
//! A test that counts process-wide resources (open descriptors) or changes them (lowers
//! RLIMIT_NOFILE, fills the descriptor table) would see, or starve, the other tests that
//! `cargo test` runs in threads of the same process. Such a test starts with
//! `if !in_child("its_name") { return; }`: in the test process that re-executes the test
//! binary with a filter selecting the one test and [`CHILD_ENV`] set, and checks that it
//! passed; in the child it returns true and the test runs alone.

use std::process::Command;

/// Set (to the test's name) in the child process.
pub const CHILD_ENV: &str = "PROXY_CORE_TEST_CHILD";

/// True in the child process running test `name`; elsewhere runs that child, fails the
/// test if it fails (showing its output), and returns false.
pub fn in_child(name: &str) -> bool {
    if std::env::var(CHILD_ENV).is_ok_and(|child| child == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("run the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "the child did not run {name}:\n{stdout}");
    print!("{stdout}");
    false
}

/// How many descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}
