//! The Docker watcher against a real engine: labelled host-network containers become routes
//! in the snapshot and follow the containers' lives.
//!
//! Every watcher here runs with a one-hour resync, so whatever arrives within seconds was
//! carried by an event, not by the periodic re-list. Tests share the engine with each other
//! (and with other test binaries), so each looks only at its own containers, by name.
//! Without an engine each test prints SKIP (and fails under DOCKWARD_REQUIRE_DOCKER=1).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docker_watcher::{DockerConfig, DockerSnapshot, DockerWatcher, OwnContainer};
use dockward_tests::docker::{ContainerSpec, TestEngine, free_tcp_port, run_id};
use dockward_tests::on_each_engine;
use proxy_core::{Protocol, Target};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Far beyond any wait in these tests: changes must come from events.
const NO_RESYNC: Duration = Duration::from_secs(3600);
/// How long an event-driven change may take before the test fails (expected: milliseconds).
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

fn config(engine: &TestEngine) -> DockerConfig {
    DockerConfig {
        host: engine.host.clone(),
        resync_interval: NO_RESYNC,
        own_container: OwnContainer::Disabled,
        ..Default::default()
    }
}

/// A running watcher, cancelled when dropped.
struct Running {
    rx: watch::Receiver<Arc<DockerSnapshot>>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn start(config: DockerConfig) -> Running {
        let watcher = DockerWatcher::new(config);
        let rx = watcher.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watcher.run(shutdown.clone()));
        Running { rx, shutdown, task: Some(task) }
    }

    /// Starts a watcher and waits for its first full list.
    async fn synced(config: DockerConfig) -> Running {
        let mut r = Running::start(config);
        r.wait("the first list", Duration::from_secs(20), |s| s.synced && s.connected).await;
        r
    }

    /// Waits until `pred` holds for the latest snapshot; fails with the last one on timeout.
    async fn wait(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&DockerSnapshot) -> bool,
    ) -> Arc<DockerSnapshot> {
        let result = tokio::time::timeout(deadline, self.rx.wait_for(|s| pred(s))).await.map(|r| r.map(|s| s.clone()));
        match result {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => panic!("watcher stopped while waiting for {what}"),
            Err(_) => {
                let last = self.rx.borrow().clone();
                panic!("no snapshot with {what} within {deadline:?}; last: {last:#?}")
            }
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("run() returns promptly on shutdown")
                .expect("run() does not panic");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The (alias, protocol, listen port, target) of a container's routes, by container name.
fn routes_of(s: &DockerSnapshot, name: &str) -> Option<Vec<(String, Protocol, u16, Target)>> {
    s.by_name(name).map(|c| {
        c.routes.iter().map(|r| (r.alias.clone(), r.protocol, r.listen.port(), r.targets[0].clone())).collect()
    })
}

fn has(s: &DockerSnapshot, name: &str) -> bool {
    s.by_name(name).is_some()
}

#[tokio::test]
async fn start_event_to_snapshot_latency_is_printed() {
    let Some(engine) = TestEngine::connect("start_latency").await else { return };
    let mut w = Running::synced(config(&engine)).await;
    const STARTS: usize = 20;
    let mut containers = Vec::new();
    for i in 0..STARTS {
        let port = format!("{}", 20000 + i);
        containers.push(engine.create(&ContainerSpec::sleeper("latency", &[("proxy.l.port", &port)])).await);
    }
    let mut after_return = Vec::new();
    let mut after_call = Vec::new();
    for c in &containers {
        let t0 = Instant::now();
        c.start().await;
        let t1 = Instant::now();
        w.wait("the started container", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        let t2 = Instant::now();
        after_return.push(t2.saturating_duration_since(t1));
        after_call.push(t2 - t0);
    }
    after_return.sort();
    after_call.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q).ceil() as usize).saturating_sub(1).min(v.len() - 1)];
    println!(
        "docker start -> snapshot over {STARTS} starts: after the start call returned p50 {:?} p99 {:?} max {:?}; \
         from the start call p50 {:?} p99 {:?}",
        p(&after_return, 0.5),
        p(&after_return, 0.99),
        after_return[STARTS - 1],
        p(&after_call, 0.5),
        p(&after_call, 0.99),
    );
    w.stop().await;
}

/// Each publication needs a change, and each change an event of one of this test's
/// containers (the label filter keeps other tests' containers, which share the engine and
/// run in parallel, out of the count), so 40 starts can never make more than 40 snapshots.
/// How many fewer depends on how the engine spaces its events, so that is printed, not asserted.
#[tokio::test]
async fn a_burst_of_starts_publishes_at_most_once_per_container() {
    let Some(engine) = TestEngine::connect("burst").await else { return };
    let count: usize = std::env::var("DOCKWARD_DOCKER_BURST").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let only_ours = vec![
        format!("{}={}", dockward_tests::docker::RUN_LABEL, run_id()),
        format!("{}={}", dockward_tests::docker::CASE_LABEL, engine.case),
    ];
    let mut w = Running::synced(DockerConfig { label_filters: only_ours, ..config(&engine) }).await;
    let mut containers = Vec::new();
    for i in 0..count {
        let port = format!("{}", 21000 + i);
        containers.push(engine.create(&ContainerSpec::sleeper("burst", &[("proxy.b.port", &port)])).await);
    }
    let generation_before = w.rx.borrow().generation;
    let t0 = Instant::now();
    futures::future::join_all(containers.iter().map(|c| c.start())).await;
    let started = t0.elapsed();
    let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
    let snap = w.wait("every burst container", Duration::from_secs(120), |s| names.iter().all(|n| has(s, n))).await;
    println!(
        "burst of {count} starts: all started in {started:?}, all in the snapshot after {:?}, {} snapshots published",
        t0.elapsed(),
        snap.generation - generation_before
    );
    assert!(snap.generation - generation_before <= count as u64, "at most one publication per container");
    w.stop().await;
}

/// A unix-socket forwarder in front of the real engine that the test can cut and restore,
/// to lose the watcher's connection without touching dockerd.
struct SocketProxy {
    path: PathBuf,
    upstream: PathBuf,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SocketProxy {
    fn new(path: PathBuf, upstream: PathBuf) -> Self {
        SocketProxy { path, upstream, tasks: Arc::new(Mutex::new(Vec::new())) }
    }

    fn up(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                tasks.lock().expect("lock").push(conn);
            }
        });
        self.tasks.lock().expect("lock").push(accept);
    }

    /// Closes the listener and every connection through it.
    fn down(&self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.down();
    }
}

on_each_engine! {
    async fn labelled_host_network_container_appears_with_a_loopback_target(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let (listen, target) = (free_tcp_port(), free_tcp_port());
        let port = format!("{listen}:{target}");
        let c = engine
            .run(&ContainerSpec::sleeper(
                "appear",
                &[
                    ("proxy.aliases", "ssh,dns"),
                    ("proxy.ssh.port", &port),
                    ("proxy.dns.port", "53"),
                    ("proxy.dns.scheme", "udp"),
                ],
            ))
            .await;

        let snap = w.wait("the container", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        let entry = snap.by_name(&c.name).expect("present");
        assert_eq!(entry.id, c.id);
        assert!(entry.errors.is_empty(), "{:?}", entry.errors);
        assert_eq!(
            routes_of(&snap, &c.name).expect("present"),
            vec![
                ("ssh".to_string(), Protocol::Tcp, listen, Target::new("127.0.0.1", target)),
                ("dns".to_string(), Protocol::Udp, 0, Target::new("127.0.0.1", 53)),
            ]
        );
        assert!(entry.routes.iter().all(|r| r.source == c.name), "the source of every route is the container name");
        w.stop().await;
    }

    async fn containers_running_before_the_watcher_are_found_by_the_first_list(engine) {
        let c = engine.run(&ContainerSpec::sleeper("prelisted", &[("proxy.web.port", "18080:80")])).await;
        let w = Running::synced(config(&engine)).await;
        let snap = w.rx.borrow().clone();
        assert_eq!(
            routes_of(&snap, &c.name),
            Some(vec![("web".to_string(), Protocol::Tcp, 18080, Target::new("127.0.0.1", 80))])
        );
        w.stop().await;
    }

    async fn stop_removes_the_routes_and_restart_brings_them_back(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let listen = free_tcp_port();
        let port = format!("{listen}:22");
        let c = engine.run(&ContainerSpec::sleeper("stoprestart", &[("proxy.ssh.port", &port)])).await;
        let before = w.wait("the container", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        let routes_before = routes_of(&before, &c.name);

        c.stop().await;
        w.wait("the stopped container gone", EVENT_DEADLINE, |s| !has(s, &c.name)).await;

        c.start().await;
        let after = w.wait("the restarted container back", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        assert_eq!(routes_of(&after, &c.name), routes_before, "same routes, same listen port");
        w.stop().await;
    }

    async fn a_paused_container_contributes_no_routes_until_unpaused(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let c = engine.run(&ContainerSpec::sleeper("pause", &[("proxy.p.port", "1234")])).await;
        w.wait("the container", EVENT_DEADLINE, |s| has(s, &c.name)).await;

        c.pause().await;
        w.wait("the paused container gone", EVENT_DEADLINE, |s| !has(s, &c.name)).await;

        c.unpause().await;
        w.wait("the unpaused container back", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        w.stop().await;
    }

    async fn a_removed_container_is_gone(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let c = engine.run(&ContainerSpec::sleeper("destroy", &[("proxy.d.port", "4321")])).await;
        w.wait("the container", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        c.remove().await;
        w.wait("the removed container gone", EVENT_DEADLINE, |s| !s.containers.contains_key(&c.id)).await;
        w.stop().await;
    }

    async fn a_renamed_container_changes_the_source_of_its_routes(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let mut c = engine.run(&ContainerSpec::sleeper("rename", &[("proxy.r.port", "4322")])).await;
        w.wait("the container", EVENT_DEADLINE, |s| has(s, &c.name)).await;
        let new_name = format!("{}-renamed", c.name);
        c.rename(&new_name).await;
        let snap = w.wait("the new name", EVENT_DEADLINE, |s| has(s, &new_name)).await;
        let entry = snap.by_name(&new_name).expect("present");
        assert_eq!(entry.routes[0].source, new_name);
        w.stop().await;
    }

    async fn bad_labels_on_one_container_do_not_affect_a_good_one(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let (good_port, ok_port) = (free_tcp_port(), free_tcp_port());
        let good_spec = format!("{good_port}:7");
        let ok_spec = format!("{ok_port}:7");
        let bad = engine
            .run(&ContainerSpec::sleeper(
                "bad",
                &[
                    ("proxy.aliases", "ok,broken,typo"),
                    ("proxy.ok.port", &ok_spec),
                    ("proxy.broken.port", "22:22:22"),
                    ("proxy.typo.port", "2200:22"),
                    ("proxy.typo.scheme", "tcpp"),
                ],
            ))
            .await;
        let good = engine.run(&ContainerSpec::sleeper("good", &[("proxy.echo.port", &good_spec)])).await;

        let snap = w.wait("both containers", EVENT_DEADLINE, |s| has(s, &bad.name) && has(s, &good.name)).await;
        assert_eq!(
            routes_of(&snap, &good.name),
            Some(vec![("echo".to_string(), Protocol::Tcp, good_port, Target::new("127.0.0.1", 7))])
        );
        let bad_entry = snap.by_name(&bad.name).expect("present");
        assert_eq!(
            routes_of(&snap, &bad.name),
            Some(vec![("ok".to_string(), Protocol::Tcp, ok_port, Target::new("127.0.0.1", 7))]),
            "the valid alias of the bad container still works"
        );
        let errors: Vec<String> = bad_entry.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            vec![
                "label proxy.broken.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET".to_string(),
                "label proxy.typo.scheme=\"tcpp\": unknown scheme (did you mean \"tcp\"?)".to_string(),
            ]
        );
        assert!(snap.by_name(&good.name).expect("present").errors.is_empty());
        w.stop().await;
    }

    async fn an_excluded_container_has_no_routes(engine) {
        let mut w = Running::synced(config(&engine)).await;
        let c =
            engine.run(&ContainerSpec::sleeper("excluded", &[("proxy.exclude", "true"), ("proxy.x.port", "4323")])).await;
        let marker = engine.run(&ContainerSpec::sleeper("marker", &[("proxy.m.port", "4324")])).await;
        // The marker started after the excluded one: once it is seen, the excluded one was handled.
        let snap = w.wait("the marker", EVENT_DEADLINE, |s| has(s, &marker.name)).await;
        assert!(snap.by_name(&c.name).is_none_or(|e| e.excluded && e.routes.is_empty() && e.errors.is_empty()));
        w.stop().await;
    }

    async fn a_lost_engine_connection_is_retried_and_reconciled(engine) {
        let upstream = match engine.host.clone().or_else(|| std::env::var("DOCKER_HOST").ok()) {
            Some(h) if h.starts_with("unix://") => PathBuf::from(h.trim_start_matches("unix://")),
            Some(h) if !h.is_empty() => {
                dockward_tests::skip::skip("docker", "a_lost_engine_connection_is_retried_and_reconciled", format!("DOCKER_HOST={h} is not a unix socket"));
                return;
            }
            _ => PathBuf::from("/var/run/docker.sock"),
        };
        let path = std::env::temp_dir().join(format!("dockward-test-{}-{:?}.sock", run_id(), engine.kind));
        let proxy = SocketProxy::new(path.clone(), upstream);
        let c = engine.run(&ContainerSpec::sleeper("lost", &[("proxy.l.port", "4325")])).await;

        let mut w = Running::start(DockerConfig {
            host: Some(format!("unix://{}", path.display())),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..config(&engine)
        });
        // No engine behind the address yet: reported, not fatal.
        let snap = w.wait("an error", EVENT_DEADLINE, |s| s.last_error.is_some()).await;
        assert!(!snap.connected);

        proxy.up();
        w.wait("connected with the container", EVENT_DEADLINE, |s| s.connected && has(s, &c.name)).await;

        proxy.down();
        let snap = w.wait("disconnected", EVENT_DEADLINE, |s| !s.connected).await;
        assert!(has(&snap, &c.name), "the last known containers are kept while the engine is away");

        // What happens while the watcher is blind is found by the re-list on reconnect.
        c.stop().await;
        proxy.up();
        let snap =
            w.wait("reconnected without the stopped container", EVENT_DEADLINE, |s| s.connected && !has(s, &c.name)).await;
        assert_eq!(snap.last_error, None);
        w.stop().await;
        drop(proxy);
        assert!(!Path::new(&path).exists());
    }

    async fn a_label_filter_limits_the_watcher_to_matching_containers(engine) {
        let filter = format!("{}={}", dockward_tests::docker::CASE_LABEL, engine.case);
        let mut w =
            Running::synced(DockerConfig { label_filters: vec![filter, "dockward.test.pick=yes".to_string()], ..config(&engine) })
                .await;
        let skipped = engine.run(&ContainerSpec::sleeper("unpicked", &[("proxy.u.port", "4326")])).await;
        let picked =
            engine.run(&ContainerSpec::sleeper("picked", &[("proxy.k.port", "4327"), ("dockward.test.pick", "yes")])).await;
        // Started after the unpicked one: once it is seen, the unpicked one's event would have been too.
        let snap = w.wait("the picked container", EVENT_DEADLINE, |s| has(s, &picked.name)).await;
        assert!(!has(&snap, &skipped.name));
        assert!(
            snap.containers.values().all(|c| c.name == picked.name),
            "only matching containers: {:?}",
            snap.containers.keys()
        );
        w.stop().await;
    }
}
