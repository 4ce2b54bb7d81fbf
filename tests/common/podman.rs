//! Podman for the tests: its Docker-compatible API, reached like a Docker engine.
//!
//! - [`TestEngine::podman`] connects to the service that `scripts/start-podman.sh` starts
//!   (`DOCKWARD_PODMAN_HOST`, else that script's socket, else rootful Podman's
//!   `/run/podman/podman.sock`). Without one it prints `SKIP` and returns `None`, unless
//!   `DOCKWARD_REQUIRE_PODMAN=1` (set by the script, which .ci/run sources): then it panics.
//! - The test image is `podman import`ed from the same busybox tarball as Docker's, as
//!   [`PODMAN_TEST_IMAGE`](crate::docker::PODMAN_TEST_IMAGE). Nothing is pulled.
//! - Containers are created through the API like Docker's, with nofile and nproc limits of
//!   1024, and cleaned up with `podman --url HOST rm -f`.
//! - [`on_each_engine!`](crate::on_each_engine) turns one test body into a Docker and a
//!   Podman test.

use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;

use crate::docker::{EngineKind, TestEngine, build_image};

/// The socket `scripts/start-podman.sh` starts the service on, by default.
pub const SCRIPT_SOCKET: &str = "unix:///run/dockward-podman/podman.sock";
/// Rootful Podman's socket (systemd's `podman.socket`).
pub const ROOTFUL_SOCKET: &str = "unix:///run/podman/podman.sock";

/// Whether the run must have Podman (`DOCKWARD_REQUIRE_PODMAN=1`).
pub fn podman_required() -> bool {
    std::env::var("DOCKWARD_REQUIRE_PODMAN").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The Podman service's address: `DOCKWARD_PODMAN_HOST`, else the first of the script's and
/// rootful Podman's sockets that exists.
pub fn podman_host() -> String {
    if let Ok(h) = std::env::var("DOCKWARD_PODMAN_HOST")
        && !h.trim().is_empty()
    {
        return h.trim().to_string();
    }
    [SCRIPT_SOCKET, ROOTFUL_SOCKET]
        .into_iter()
        .find(|h| std::path::Path::new(h.trim_start_matches("unix://")).exists())
        .unwrap_or(SCRIPT_SOCKET)
        .to_string()
}

async fn try_connect(host: &str) -> Result<Docker, String> {
    let docker = Docker::connect_with_host(host).map_err(|e| e.to_string())?.with_timeout(Duration::from_secs(60));
    // Patient: on a loaded machine the service can take seconds to answer.
    let docker = tokio::time::timeout(Duration::from_secs(30), docker.negotiate_version())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    docker.ping().await.map_err(|e| e.to_string())?;
    Ok(docker)
}

impl TestEngine {
    /// Connects to Podman's API, imports the test image if needed. `None` (after printing
    /// SKIP) when no Podman service answers and the run does not require one.
    pub async fn podman(case: &str) -> Option<TestEngine> {
        let host = podman_host();
        let docker = match try_connect(&host).await {
            Ok(d) => d,
            Err(e) => {
                if podman_required() {
                    panic!("DOCKWARD_REQUIRE_PODMAN=1 but no Podman service answers at {host}: {e}");
                }
                crate::skip::skip(
                    "podman",
                    case,
                    format!("no Podman service at {host} ({e}); run scripts/start-podman.sh"),
                );
                return None;
            }
        };
        static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
        let built = BUILT.get_or_init(|| build_image(EngineKind::Podman, Some(&host)));
        if let Err(e) = built {
            panic!("importing the test image into Podman at {host}: {e}");
        }
        Some(TestEngine { docker, case: case.to_string(), host: Some(host), kind: EngineKind::Podman })
    }

    /// The engine of `kind` for test case `case`, or `None` (SKIP) when the run has none.
    pub async fn of_kind(kind: EngineKind, case: &str) -> Option<TestEngine> {
        match kind {
            EngineKind::Docker => TestEngine::connect(case).await,
            EngineKind::Podman => TestEngine::podman(&format!("{case}_podman")).await,
        }
    }
}

/// Turns each `async fn NAME(engine: TestEngine) { .. }` into two tests, `docker::NAME` and
/// `podman::NAME`, running the body against each engine (or printing SKIP without it):
///
/// ```ignore
/// on_each_engine! {
///     /// A stopped container's routes go.
///     async fn stop_removes_the_routes(engine) { /* uses engine: TestEngine */ }
/// }
/// ```
#[macro_export]
macro_rules! on_each_engine {
    ($($(#[$meta:meta])* async fn $name:ident($engine:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            async fn $name($engine: $crate::docker::TestEngine) $body
        )*
        mod docker {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let kind = $crate::docker::EngineKind::Docker;
                    if let Some(engine) = $crate::docker::TestEngine::of_kind(kind, stringify!($name)).await {
                        super::$name(engine).await;
                    }
                }
            )*
        }
        mod podman {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let kind = $crate::docker::EngineKind::Podman;
                    if let Some(engine) = $crate::docker::TestEngine::of_kind(kind, stringify!($name)).await {
                        super::$name(engine).await;
                    }
                }
            )*
        }
    };
}
