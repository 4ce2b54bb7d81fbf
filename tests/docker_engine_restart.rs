//! dockerd stopped and started again, ten times, while dockward runs and traffic flows:
//! dockward keeps running, an open connection on a routes-file route carries traffic
//! throughout, untouched, and each time the Docker route is back (on the same port, carrying
//! traffic) within 3 s of the engine answering again.
//!
//! The engine restarted is a private one (`dockward_tests::private_engine`): a second dockerd
//! in a temporary directory, so the machine's engine, which other tests use at the same time,
//! is never disturbed. It needs root and dockerd; without them the test prints SKIP, unless
//! DOCKWARD_REQUIRE_DOCKER=1 (CI), where it fails instead.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, loopback, tcp_echo_eventually,
};
use dockward_tests::dockward::echo_server;
use dockward_tests::private_engine::PrivateEngine;

/// Engine restarts.
const RESTARTS: usize = 10;
/// The Docker route must accept again within this of the engine answering again.
const ROUTES_BACK: Duration = Duration::from_secs(3);
/// Outages held this long (besides the immediate restarts) make dockward's reconnection
/// back off further than a quick restart does; the route must still be back in time.
const LONG_OUTAGE: Duration = Duration::from_secs(8);
/// Which restarts hold the engine down for [`LONG_OUTAGE`].
const LONG_OUTAGES_AT: &[usize] = &[4];

/// Round trips on one open connection, in a thread, until stopped: each must come back
/// whole and in time, or the thread records the failure and stops.
struct SteadyTraffic {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl SteadyTraffic {
    fn start(mut stream: TcpStream) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let (stop_flag, count) = (stop.clone(), round_trips.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            let mut back = vec![0u8; 4096];
            let mut n: u64 = 0;
            while !stop_flag.load(Ordering::Relaxed) {
                // Distinct bytes every time, so a stale or misplaced echo shows.
                let message: Vec<u8> = (0..4096u64).map(|i| (i.wrapping_mul(31) ^ n) as u8).collect();
                stream.write_all(&message).map_err(|e| format!("round trip {n}: write: {e}"))?;
                stream.read_exact(&mut back).map_err(|e| format!("round trip {n}: read: {e}"))?;
                if back != message {
                    return Err(format!("round trip {n}: the echo differs"));
                }
                n += 1;
                count.store(n, Ordering::Relaxed);
            }
            Ok(())
        });
        SteadyTraffic { stop, round_trips, thread: Some(thread) }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Waits until `more` round trips beyond the count now, failing if the thread has stopped.
    fn wait_for(&self, more: u64) {
        let target = self.round_trips() + more;
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.round_trips() < target {
            let stopped = self.thread.as_ref().is_none_or(|t| t.is_finished());
            assert!(!stopped && Instant::now() < give_up, "traffic on the open connection stopped");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("not finished yet");
        thread.join().map_err(|_| "the traffic thread panicked".to_string())??;
        Ok(self.round_trips())
    }
}

/// Whether dockward shows the engine as lost (the `docker` error row).
fn engine_lost(dockward: &DockwardWithDocker) -> bool {
    dockward.routes().iter().any(|r| r["source"] == "docker" && r["state"] == "error")
}

/// Polls until dockward is back in touch with the engine (no `docker` error row) and an
/// echo comes back through `addr`; how long that took.
fn until_routed_again(dockward: &DockwardWithDocker, addr: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    let echoes = || -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut back = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"ping"
    };
    while engine_lost(dockward) || !echoes() {
        assert!(started.elapsed() < limit, "no route through {addr} after {limit:?}; log:\n{}", dockward.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_routes_come_back_within_3s_of_each_of_ten_engine_restarts_and_file_routes_are_untouched() {
    const NAME: &str = "docker_engine_restart";
    if !PrivateEngine::usable_for(NAME) {
        return;
    }
    let mut private = PrivateEngine::start();
    let engine = TestEngine::connect_to(NAME, &private.host).await;

    // A routes-file route to an in-process echo server, and a labelled container that the
    // engine starts again when it comes back.
    let file_target = echo_server();
    let yaml = format!("routes:\n  filefwd:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n", file_target.port());
    let mut dockward = DockwardWithDocker::start(&engine, Some(&yaml));
    let (target, listen) = (free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let c = engine
        .run(
            &ContainerSpec::tcp_echo("restart", target, &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")])
                .restart_unless_stopped(),
        )
        .await;
    dockward.wait_row(&c.name, "svc", "listening", Duration::from_secs(10), |r| r["state"] == "listening");
    assert_eq!(tcp_echo_eventually(loopback(listen), b"before", Duration::from_secs(15)), b"before");

    let file_row = dockward.routes().into_iter().find(|r| r["alias"] == "filefwd").expect("the file route");
    let file_listen: SocketAddr = file_row["listen"].as_str().and_then(|s| s.parse().ok()).expect("listen address");
    let traffic = SteadyTraffic::start(TcpStream::connect(file_listen).expect("connect through the file route"));
    traffic.wait_for(10);

    let mut back_after = Vec::new();
    for restart in 0..RESTARTS {
        private.stop_daemon();
        assert!(dockward.is_running(), "dockward keeps running without the engine");
        dockward_tests::dockward::poll("dockward to see the engine gone", Duration::from_secs(10), || {
            engine_lost(&dockward).then_some(())
        });
        traffic.wait_for(10); // the open connection carries traffic while the engine is away
        if LONG_OUTAGES_AT.contains(&restart) {
            // Pacing, not synchronisation: the outage itself is what is being tested.
            std::thread::sleep(LONG_OUTAGE);
            traffic.wait_for(10);
        }

        private.start_daemon();
        // From the engine answering again to the route carrying traffic with dockward back in
        // touch: the watcher reconnects, re-lists, and the container (restarted by its policy)
        // is routed again.
        let took = until_routed_again(&dockward, loopback(listen), Duration::from_secs(60));
        back_after.push(took);
        assert!(took < ROUTES_BACK, "restart {restart}: the Docker route was back {took:?} after the engine answered");
        let row =
            dockward.wait_row(&c.name, "svc", "listening", Duration::from_secs(10), |r| r["state"] == "listening");
        assert_eq!(row["listen"], format!("127.0.0.1:{listen}"), "back on the same port");
        let message = format!("after restart {restart}");
        assert_eq!(
            tcp_echo_eventually(loopback(listen), message.as_bytes(), Duration::from_secs(15)),
            message.as_bytes()
        );
        traffic.wait_for(10);
    }

    println!("routes back after the engine answered, per restart: {back_after:?}");
    let file_row = dockward.routes().into_iter().find(|r| r["alias"] == "filefwd").expect("the file route");
    assert_eq!(file_row["connections_total"], 1, "the file route was never restarted: {file_row}");
    let round_trips = traffic.finish().unwrap_or_else(|e| panic!("the open file-route connection broke: {e}"));
    assert!(round_trips >= 10 * (2 * RESTARTS as u64 + 1), "{round_trips} round trips");
    assert!(dockward.is_running());
    drop(c);
    drop(engine);
    private.stop_daemon();
}
