//! The watcher: keeps a [`DockerSnapshot`] true as containers start, stop, die and come back.
//!
//! One session = connect, negotiate the API version, open the event stream, list, then apply
//! events until the stream is lost:
//!
//! 1. The event stream (type=container; start, die, stop, kill, destroy, pause, unpause,
//!    rename, health_status) is opened **before** the list, with `since` a second in the past,
//!    so no event falls in the gap between the two.
//! 2. Each event re-inspects that one container (404 = gone) and updates its entry only;
//!    events that arrive together are inspected together and published once.
//! 3. Every `resync_interval` (60 s) the containers are listed again and reconciled, because
//!    event streams can stall silently.
//! 4. A lost stream (engine restart, socket error, an event bollard cannot decode) ends the
//!    session: back off (250 ms doubling to 1 s), reconnect, re-list, reconcile. While the
//!    engine is away the last snapshot's containers are kept and `connected` is false; a WARN
//!    is logged at most once a minute. The short cap is deliberate: however long the engine
//!    was away, its routes are back within about a second of it answering again, and one
//!    attempt a second at a lost engine costs nothing.
//!
//! On a swarm manager (`GET /info`: the node is active and has control) a session also
//! watches services: a second event stream (type=service: create, update, remove; and the
//! start, die, stop, kill and destroy of containers carrying `com.docker.swarm.service.id`,
//! because a task's state changes come with no event of their own) makes it list that one
//! service and its tasks again; a service whose tasks are still starting or stopping is
//! looked at again shortly (100 ms doubling to 5 s) until it settles. The containers of
//! swarm tasks then make no routes of their own: their service does. Whether the engine is
//! a manager is asked again at each periodic resync.
//!
//! Podman's Docker-compatible API is watched the same way; where it differs, the pure
//! modules and the session adapt: its list lacks the network mode (entries are inspected),
//! its event names differ (`crate::events`), its event stream answers only with its first
//! event (`crate::io::event_stream`), and its label filter on events matches any label
//! rather than all (inspected containers are checked against the filter).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::DockerConfig;
use crate::idle::Sleepers;
use crate::io::control::Control;
use crate::io::session::Session;
use crate::memory::State;
use crate::snapshot::DockerSnapshot;

/// Watches one Docker engine and publishes [`DockerSnapshot`]s.
///
/// ```no_run
/// # async fn demo() {
/// use docker_watcher::{DockerConfig, DockerWatcher};
/// use tokio_util::sync::CancellationToken;
///
/// let watcher = DockerWatcher::new(DockerConfig::default());
/// let mut snapshots = watcher.subscribe();
/// let shutdown = CancellationToken::new();
/// tokio::spawn(watcher.run(shutdown.clone()));
/// while snapshots.changed().await.is_ok() {
///     let snap = snapshots.borrow_and_update().clone();
///     println!("{} routes", snap.routes().count());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct DockerWatcher {
    config: DockerConfig,
    host: String,
    tx: watch::Sender<Arc<DockerSnapshot>>,
}

impl DockerWatcher {
    /// A watcher that has not connected yet; nothing happens until [`DockerWatcher::run`].
    pub fn new(config: DockerConfig) -> Self {
        let host = config.effective_host();
        let (tx, _) = watch::channel(Arc::new(DockerSnapshot::default()));
        DockerWatcher { config, host, tx }
    }

    /// The engine address in use.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A receiver of snapshots; it holds the latest one at once, and is told of each new one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DockerSnapshot>> {
        self.tx.subscribe()
    }

    /// Runs until `shutdown` is cancelled; never returns early and never panics on engine
    /// trouble: it retries with backoff forever.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut state = State::new(self.tx);
        state.site = self.config.site.clone();
        if self.config.container_control {
            state.sleepers =
                Sleepers::new(Some(Control::new(&self.host, self.config.tls.clone(), self.config.request_timeout)));
        }
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut last_warn: Option<Instant> = None;
        loop {
            let mut session = Session::new(&self.config, &self.host, &mut state);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = session.run(&shutdown) => r,
            };
            let synced = session.synced;
            let err = match result {
                Ok(()) => return, // shut down
                Err(e) => e,
            };
            if synced {
                // It worked for a while: the next attempt starts from the shortest delay.
                backoff.reset();
            }
            let text = err.chain();
            state.disconnected(text.clone());
            let delay = backoff.next_delay();
            // Losing a working engine is always news; failing again is, at most once a minute.
            let loud = synced || last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if loud {
                last_warn = Some(Instant::now());
                warn!(host = %self.host, error = %text, retry_in = ?delay, "Docker engine unavailable; retrying in the background");
            } else {
                debug!(host = %self.host, error = %text, retry_in = ?delay, "Docker engine still unavailable");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), next: min }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OwnContainer;
    use crate::mock_engine::MockEngine;
    use tokio::task::JoinHandle;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    /// Starts a watcher on `host` and returns its first synced snapshot.
    async fn first_sync(host: &str) -> (Arc<DockerSnapshot>, CancellationToken, JoinHandle<()>) {
        let config = DockerConfig {
            host: Some(host.to_string()),
            own_container: OwnContainer::Disabled,
            resync_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let watcher = DockerWatcher::new(config);
        let mut rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        let snap = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.synced || s.last_error.is_some()))
            .await
            .expect("a snapshot")
            .expect("the watcher is alive")
            .clone();
        (snap, shutdown, task)
    }

    fn manager_info() -> serde_json::Value {
        serde_json::json!({"Swarm": {"NodeID": "n1", "LocalNodeState": "active", "ControlAvailable": true}})
    }

    #[tokio::test]
    async fn a_swarm_managers_labelled_services_become_routes_to_their_tasks() {
        let engine = MockEngine::start(&[
            ("/info", 200, manager_info()),
            ("/containers/json", 200, serde_json::json!([])),
            (
                "/services",
                200,
                serde_json::json!([{"ID": "s1", "Spec": {"Name": "web", "Labels": {"proxy.web.port": "8080:80"}}}]),
            ),
            (
                "/tasks",
                200,
                serde_json::json!([{
                    "ID": "t1", "ServiceID": "s1", "NodeID": "n2", "DesiredState": "running",
                    "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c1"}},
                    "NetworksAttachments": [
                        {"Network": {"ID": "b", "Spec": {"Name": "backend"}}, "Addresses": ["10.0.1.5/24"]}
                    ]
                }]),
            ),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && snap.swarm, "{snap:?}");
        let web = snap.service_by_name("web").expect("the service's entry");
        let targets: Vec<String> = web.routes[0].targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["10.0.1.5:80"]);
        assert_eq!(web.routes[0].source, "web");
        assert!(engine.asked("/tasks?filters="), "{:?}", engine.requests);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn services_refused_by_a_socket_proxy_leave_containers_watched() {
        let engine = MockEngine::start(&[
            ("/info", 200, manager_info()),
            ("/containers/json", 200, serde_json::json!([])),
            ("/services", 403, serde_json::json!({"message": "forbidden"})),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && !snap.swarm, "{snap:?}");
        assert_eq!(snap.last_error, None);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn a_refused_info_means_no_swarm_not_a_failure() {
        let engine = MockEngine::start(&[
            ("/info", 403, serde_json::json!({"message": "forbidden"})),
            ("/containers/json", 200, serde_json::json!([])),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        assert!(snap.synced && snap.connected && !snap.swarm, "{snap:?}");
        assert!(!engine.asked("/services"), "{:?}", engine.requests);
        shutdown.cancel();
        task.await.expect("no panic");
    }

    /// Podman's list has no `HostConfig`: a host-network container running before the
    /// watcher must still get its loopback target (it was once an error row, "networks: none").
    #[tokio::test]
    async fn a_podman_list_entry_without_host_config_is_inspected() {
        let id = "843405ff3af0e7e04da424fb2d3ba3c43076052e6817e07e0c525efce3ca6a42";
        let inspect_path = format!("/containers/{id}/json");
        let engine = MockEngine::start(&[
            ("/info", 200, serde_json::json!({})),
            (
                "/containers/json",
                200,
                serde_json::json!([{
                    "Id": id, "Names": ["/pm1"], "Labels": {"proxy.x.port": "4999:22"}, "State": "running",
                    "NetworkSettings": {"Networks": null}
                }]),
            ),
            (
                &inspect_path,
                200,
                serde_json::json!({
                    "Id": id, "Name": "pm1", "Config": {"Labels": {"proxy.x.port": "4999:22"}},
                    "HostConfig": {"NetworkMode": "host"}, "NetworkSettings": {"Networks": {}},
                    "State": {"Status": "running"}
                }),
            ),
        ]);
        let (snap, shutdown, task) = first_sync(&engine.host).await;
        let entry = snap.by_name("pm1").expect("the container's entry");
        assert!(entry.errors.is_empty(), "{:?}", entry.errors);
        assert_eq!(entry.routes[0].targets[0].to_string(), "127.0.0.1:22");
        shutdown.cancel();
        task.await.expect("no panic");
    }

    /// Podman sends no headers on `/events` before its first event: the request times out,
    /// and that must neither end the session nor mark the engine lost; the stream is opened
    /// again instead.
    #[tokio::test]
    async fn an_event_stream_without_headers_is_opened_again_not_a_lost_engine() {
        let engine = MockEngine::start(&[
            ("/info", 200, serde_json::json!({})),
            ("/containers/json", 200, serde_json::json!([])),
            ("/events", crate::mock_engine::WITHHOLD, serde_json::json!(null)),
        ]);
        let config = DockerConfig {
            host: Some(engine.host.clone()),
            own_container: OwnContainer::Disabled,
            resync_interval: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let watcher = DockerWatcher::new(config);
        let mut rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.synced))
            .await
            .expect("synced")
            .expect("the watcher is alive");
        let generation = rx.borrow().generation;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while engine.count("/events") < 3 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", engine.requests);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let snap = rx.borrow().clone();
        assert!(snap.connected && snap.last_error.is_none(), "{snap:?}");
        assert_eq!(snap.generation, generation, "nothing was published: no session was lost");
        assert_eq!(engine.count("/containers/json"), 1, "listed once: the session went on");
        shutdown.cancel();
        task.await.expect("no panic");
    }

    #[tokio::test]
    async fn unreachable_engine_is_reported_and_retried_until_shutdown() {
        let dir = std::env::temp_dir().join(format!("dockward-no-engine-{}", std::process::id()));
        let config = DockerConfig {
            host: Some(format!("unix://{}/docker.sock", dir.display())),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Default::default()
        };
        let watcher = DockerWatcher::new(config);
        let mut rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        let snap = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.last_error.is_some()))
            .await
            .expect("an error is published")
            .expect("the watcher is alive")
            .clone();
        assert!(!snap.connected && !snap.synced);
        assert!(snap.last_error.as_deref().unwrap_or("").contains("cannot reach the Docker engine"), "{snap:?}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("run returns on shutdown").expect("no panic");
    }
}
