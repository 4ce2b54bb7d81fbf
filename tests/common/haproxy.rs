//! HAProxy (Debian's `haproxy`) as a real peer: found on the host, or the test is skipped.
//! `DOCKWARD_REQUIRE_HAPROXY=1` (set by .ci/run, which installs it) turns the skip into a
//! failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Whether the run must have HAProxy (`DOCKWARD_REQUIRE_HAPROXY=1`).
pub fn haproxy_required() -> bool {
    std::env::var("DOCKWARD_REQUIRE_HAPROXY").is_ok_and(|v| v == "1" || v == "true")
}

/// The HAProxy executable, or `None` (after printing SKIP for `test`) when it is missing and
/// not required.
pub fn haproxy_bin(test: &str) -> Option<PathBuf> {
    let found = ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|bin| Command::new(bin).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    if found.is_none() {
        assert!(!haproxy_required(), "DOCKWARD_REQUIRE_HAPROXY=1 but no haproxy executable (apt-get install haproxy)");
        crate::skip::skip("haproxy", test, "haproxy is not installed (apt-get install haproxy; .ci/run installs it)");
    }
    found
}
