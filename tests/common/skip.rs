//! Skipping a test that needs what this machine lacks (a Docker engine, HAProxy, a
//! browser), so that `make test` can say what did not run.
//!
//! nextest keeps a passing test's output to itself, so a `SKIP` line alone never reaches
//! the person running `make test`. [`skip`] prints it and, when `DOCKWARD_SKIP_FILE` names a
//! file (the Makefile sets `target/test-skips.log`), appends one tab-separated line to it:
//! `KIND<TAB>TEST<TAB>WHY`. The Makefile prints a one-line summary from that file at the end.

use std::fmt::Display;
use std::io::Write as _;

/// The variable naming the file skips are appended to.
pub const SKIP_FILE_VAR: &str = "DOCKWARD_SKIP_FILE";

/// Prints `SKIP TEST: WHY` and records it under `kind` (`docker`, `haproxy`, `podman`,
/// `browser`, ...). The caller returns from the test right after.
pub fn skip(kind: &str, test: &str, why: impl Display) {
    let why = why.to_string();
    println!("SKIP {test}: {why}");
    let Some(path) = std::env::var_os(SKIP_FILE_VAR) else { return };
    // One write of a short line with O_APPEND: lines of tests running in parallel processes
    // do not interleave.
    let line = format!("{kind}\t{test}\t{}\n", why.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", path.to_string_lossy());
    }
}
