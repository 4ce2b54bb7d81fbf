//! How fast labels become listening ports, measured against a real engine and printed (not
//! asserted: timings depend on the machine):
//!
//! - container start → its port accepting through dockward, p50/p99 over 50 starts (target
//!   p99 < 100 ms);
//! - 200 labelled containers started together → all routed (target < 5 s once started).
//!   `DOCKWARD_DOCKER_BURST` changes the count.
//!
//! Alone in its test binary so that no other test competes for the two cores while it measures.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dockward_tests::docker::{ContainerSpec, DockwardWithDocker, TestContainer, TestEngine, free_tcp_port};

/// Ports no other port of this test uses.
fn distinct_ports(n: usize) -> Vec<u16> {
    let mut seen = HashSet::new();
    while seen.len() < n {
        seen.insert(free_tcp_port());
    }
    seen.into_iter().collect()
}

fn accepting(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(100)).is_ok()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1).min(sorted.len() - 1);
    sorted[i]
}

async fn labelled(engine: &TestEngine, prefix: &str, port: u16) -> TestContainer {
    let spec = format!("{port}:9");
    engine.create(&ContainerSpec::sleeper(prefix, &[("proxy.p.port", &spec), ("proxy.p.bind", "127.0.0.1")])).await
}

#[tokio::test(flavor = "multi_thread")]
async fn start_to_accepting_latency_and_burst_routing_time_are_printed() {
    let Some(engine) = TestEngine::connect("perf").await else { return };
    let dockward = DockwardWithDocker::start(&engine, None);
    let deadline = Duration::from_secs(30);

    // Sequential starts.
    const STARTS: usize = 50;
    let ports = distinct_ports(STARTS);
    let mut containers = Vec::new();
    for &port in &ports {
        containers.push(labelled(&engine, "perf-seq", port).await);
    }
    let mut latencies = Vec::new();
    for (c, &port) in containers.iter().zip(&ports) {
        c.start().await;
        let started = Instant::now();
        while !accepting(port) {
            assert!(started.elapsed() < deadline, "port {port} of {} never accepted; log:\n{}", c.name, dockward.log());
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "container start -> port accepting through dockward, {STARTS} starts: p50 {:?} p99 {:?} max {:?} (target p99 < 100ms)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[STARTS - 1]
    );
    engine.remove_all(&mut containers);

    // A burst.
    let count: usize = std::env::var("DOCKWARD_DOCKER_BURST").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let ports = distinct_ports(count);
    let mut containers = Vec::new();
    for &port in &ports {
        containers.push(labelled(&engine, "perf-burst", port).await);
    }
    let t0 = Instant::now();
    futures::future::join_all(containers.iter().map(|c| c.start())).await;
    let all_started = t0.elapsed();
    let mut pending: Vec<u16> = ports.clone();
    let give_up = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        pending.retain(|&p| !accepting(p));
        assert!(
            Instant::now() < give_up,
            "{} of {count} ports never accepted; log:\n{}",
            pending.len(),
            dockward.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_routed = t0.elapsed();
    println!(
        "burst of {count} labelled containers started together: engine started them all in {all_started:?}, \
         all ports accepting after {all_routed:?} ({:?} after the last start returned; target < 5s)",
        all_routed.saturating_sub(all_started)
    );
    engine.remove_all(&mut containers);
}
