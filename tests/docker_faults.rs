//! Docker faults, end to end through the built binary and a real engine: a container killed
//! with SIGKILL in the middle of a transfer, and containers started and stopped over and
//! over, which must leave no descriptor, route or listener behind in dockward.
//!
//! Containers use the host's network and listen on loopback (see `dockward_tests::docker`);
//! every one carries this run's label and is removed even when a test fails.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, loopback, tcp_echo_eventually,
};
use dockward_tests::dockward::{echo_server, poll};
use dockward_tests::load::Pattern;

/// Routes must follow containers within this (expected: well under a second).
const FOLLOW: Duration = Duration::from_secs(10);
/// A target inside a just-started container may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(15);
/// How soon a client must see the end of a connection whose target was killed.
const PROMPTLY: Duration = Duration::from_secs(2);

/// A connection streaming a checked pattern through an echo route, in two threads.
struct Transfer {
    echoed: Arc<AtomicU64>,
    reader: std::thread::JoinHandle<Result<u64, String>>,
}

impl Transfer {
    fn start(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect through dockward");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let pattern = Pattern::new(42);
        let mut writer = stream.try_clone().expect("clone the stream");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            loop {
                pattern.fill(sent, &mut buf);
                if writer.write_all(&buf).is_err() {
                    return;
                }
                sent += buf.len() as u64;
            }
        });
        let echoed = Arc::new(AtomicU64::new(0));
        let progress = echoed.clone();
        let mut reader = stream;
        let reader = std::thread::spawn(move || -> Result<u64, String> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => {
                        pattern.check(got, &buf[..n]).map_err(|at| format!("wrong byte at offset {at}"))?;
                        got += n as u64;
                        progress.store(got, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
                    Err(e) => return Err(format!("after {got} bytes: {e}")),
                }
            }
        });
        Transfer { echoed, reader }
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_mid_transfer_ends_the_client_promptly_and_only_its_route_goes() {
    let Some(engine) = TestEngine::connect("faults_kill9").await else { return };
    let file_target = echo_server();
    let yaml = format!("routes:\n  filefwd:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n", file_target.port());
    let mut dockward = DockwardWithDocker::start(&engine, Some(&yaml));
    let (victim_target, victim_listen) = (free_tcp_port(), free_tcp_port());
    let (other_target, other_listen) = (free_tcp_port(), free_tcp_port());
    let victim_port = format!("{victim_listen}:{victim_target}");
    let other_port = format!("{other_listen}:{other_target}");
    let victim = engine
        .run(&ContainerSpec::tcp_echo(
            "kill9",
            victim_target,
            &[("proxy.victim.port", &victim_port), ("proxy.victim.bind", "127.0.0.1")],
        ))
        .await;
    let other = engine
        .run(&ContainerSpec::tcp_echo(
            "bystander",
            other_target,
            &[("proxy.other.port", &other_port), ("proxy.other.bind", "127.0.0.1")],
        ))
        .await;
    dockward.wait_row(&victim.name, "victim", "listening", FOLLOW, |r| r["state"] == "listening");
    dockward.wait_row(&other.name, "other", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(tcp_echo_eventually(loopback(victim_listen), b"up", TARGET_UP), b"up");
    assert_eq!(tcp_echo_eventually(loopback(other_listen), b"up", TARGET_UP), b"up");
    let file_row = dockward.routes().into_iter().find(|r| r["alias"] == "filefwd").expect("the file route");
    let file_listen: SocketAddr = file_row["listen"].as_str().and_then(|s| s.parse().ok()).expect("listen address");

    // Transfers on the victim's route, the bystander's and the file route at once.
    let doomed = Transfer::start(loopback(victim_listen));
    let bystander = Transfer::start(loopback(other_listen));
    let file = Transfer::start(file_listen);
    let give_up = Instant::now() + Duration::from_secs(30);
    while [&doomed, &bystander, &file].iter().any(|t| t.echoed() < 8 << 20) {
        let echoed = [doomed.echoed(), bystander.echoed(), file.echoed()];
        assert!(Instant::now() < give_up, "8 MiB not echoed on every connection in 30 s: {echoed:?}");
        std::thread::sleep(Duration::from_millis(5));
    }

    let killed = Instant::now();
    victim.kill("KILL").await;
    poll("the client to see the end", Duration::from_secs(30), || doomed.reader.is_finished().then_some(()));
    let took = killed.elapsed();
    let echoed = doomed.reader.join().expect("reader thread").unwrap_or_else(|e| panic!("the doomed transfer: {e}"));
    assert!(took < PROMPTLY, "the client saw the end {took:?} after the kill");
    assert!(echoed >= 8 << 20, "{echoed} bytes echoed, every one checked");

    dockward.wait_gone(&victim.name, "victim", FOLLOW);
    let gone = killed.elapsed();
    assert!(TcpStream::connect(loopback(victim_listen)).is_err(), "the killed container's port still accepts");
    println!("after SIGKILL: client saw the end in {took:?}, route gone in {gone:?}");

    // dockward runs on; the others never noticed and new connections work.
    assert!(dockward.is_running());
    for (t, what) in [(&bystander, "the bystander"), (&file, "the file route")] {
        let before = t.echoed();
        poll(&format!("{what} to go on"), Duration::from_secs(10), || (t.echoed() >= before + (4 << 20)).then_some(()));
        assert!(!t.reader.is_finished(), "{what}'s transfer ended");
    }
    assert_eq!(tcp_echo_eventually(loopback(other_listen), b"still here", TARGET_UP), b"still here");
    let stats = dockward.row(&other.name, "other").expect("the bystander's route");
    assert_eq!(stats["dial_errors"], 0, "{stats}");
}

/// What dockward holds: descriptors, of which inet sockets (TCP and UDP, listening or not),
/// and resident memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holdings {
    fds: usize,
    inet_sockets: usize,
    rss_kib: u64,
}

fn holdings(pid: u32) -> Holdings {
    let inodes: HashSet<String> = ["tcp", "tcp6", "udp", "udp6"]
        .iter()
        .flat_map(|t| {
            let text = std::fs::read_to_string(format!("/proc/net/{t}")).unwrap_or_default();
            text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(9).map(String::from)).collect::<Vec<_>>()
        })
        .collect();
    let mut fds = 0;
    let mut inet_sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("dockward's fds").flatten() {
        fds += 1;
        let link = std::fs::read_link(entry.path()).unwrap_or_default().to_string_lossy().into_owned();
        if let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
            && inodes.contains(inode)
        {
            inet_sockets += 1;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Holdings { fds, inet_sockets, rss_kib }
}

/// `dockward routes --json` rows.
fn route_count(dockward: &DockwardWithDocker) -> usize {
    let out = dockward.cli(&["routes", "--json"]);
    assert!(out.status.success(), "routes --json: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("routes --json prints JSON").len()
}

/// Starts and stops a labelled container `cycles` times, each time waiting for its route
/// to listen and carry an echo, then to be gone; then compares what dockward holds with
/// what it held after a few warm-up cycles.
async fn start_stop_cycles_leave_nothing_behind(case: &str, cycles: usize) {
    const WARM_UP: usize = 3;
    // Idle connections to the engine that the Docker client may keep (at most one per
    // inspect running at once, 16): they come and go and are no leak.
    const POOL_SLACK: usize = 16;
    let Some(engine) = TestEngine::connect(case).await else { return };
    let dockward = DockwardWithDocker::start(&engine, None);
    let (target, listen) = (free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let c = engine
        .create(&ContainerSpec::tcp_echo(
            "cycle",
            target,
            &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")],
        ))
        .await;
    let cycle = |n: usize| {
        let (c, dockward) = (&c, &dockward);
        async move {
            c.start().await;
            dockward.wait_row(&c.name, "svc", "listening", FOLLOW, |r| r["state"] == "listening");
            let message = format!("cycle {n}");
            assert_eq!(tcp_echo_eventually(loopback(listen), message.as_bytes(), TARGET_UP), message.as_bytes());
            c.stop().await;
            dockward.wait_gone(&c.name, "svc", FOLLOW);
        }
    };
    for n in 0..WARM_UP {
        cycle(n).await;
    }
    let baseline = holdings(dockward.pid());
    let baseline_routes = route_count(&dockward);

    let started = Instant::now();
    for n in 0..cycles {
        cycle(WARM_UP + n).await;
    }
    let took = started.elapsed();

    // Connections closing and the client's pool settling may take a moment.
    let after = poll("dockward's descriptors to settle", Duration::from_secs(30), || {
        let now = holdings(dockward.pid());
        (now.inet_sockets == baseline.inet_sockets && now.fds <= baseline.fds + POOL_SLACK).then_some(now)
    });
    let routes = route_count(&dockward);
    println!(
        "{cycles} start/stop cycles in {took:.1?} ({:.0?} each): before {baseline:?}, {baseline_routes} routes; \
         after {after:?}, {routes} routes",
        took / cycles as u32
    );
    assert_eq!(routes, baseline_routes, "routes left behind");
    assert!(TcpStream::connect(loopback(listen)).is_err(), "the route's port still accepts");
    // A coarse guard (the allocator keeps what it freed): a leak of a connection's or a
    // route's buffers every cycle would pass it within a few hundred cycles.
    let grown = after.rss_kib.saturating_sub(baseline.rss_kib);
    assert!(grown < 8 * 1024, "resident memory grew by {grown} KiB over {cycles} cycles");
}

/// A cycle takes 0.1 to 0.3 s (the engine starting and stopping a container), so the normal
/// suite runs 50, enough for a leak of one descriptor a cycle to stand out; `make soak` runs
/// 1,000.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_start_stop_cycles_leave_no_descriptor_route_or_listener_behind() {
    start_stop_cycles_leave_nothing_behind("faults_cycles_50", 50).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: `make soak` (2 to 4 minutes)"]
async fn soak_a_thousand_start_stop_cycles_leave_no_descriptor_route_or_listener_behind() {
    start_stop_cycles_leave_nothing_behind("faults_cycles_1000", 1000).await;
}
