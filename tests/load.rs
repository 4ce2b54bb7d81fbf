//! Load without loss: checksummed TCP streams and sequence-numbered UDP datagrams of 1 to
//! 65,507 bytes through the built dockward binary, to echo targets on loopback, every byte
//! of every echo checked (`dockward_tests::load`). Nothing may be lost, corrupted or
//! reordered within a connection or session, and dockward's own `dropped` counter stays 0.
//!
//! The normal suite moves 256 MiB of TCP and 20,000 datagrams. `make soak` runs the
//! `soak_*` tests (ignored here) against a release build: 10 GiB of TCP and 1,000,000
//! datagrams, the datagrams paced at half the lossless rate measured first on this machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dockward_tests::dockward::Dockward;
use dockward_tests::load::{Pace, UdpEcho, UdpReport, tcp_echo_target, tcp_transfer, udp_transfer};

const MIB: u64 = 1024 * 1024;
/// A transfer fails when nothing moves for this long.
const STALL: Duration = Duration::from_secs(30);
/// Bytes in flight for the paced UDP runs: below the kernel's default receive buffer (208 KiB),
/// all that dockward's sockets get where `net.core.rmem_max` is not raised, so no buffer on
/// the path can overflow however the threads are scheduled.
const UDP_WINDOW: u64 = 192 * 1024;
/// Client sockets, hence dockward sessions, in a UDP run.
const SESSIONS: u32 = 4;

/// dockward with a TCP route `bulk` and a UDP route `dgram` to loopback echo targets.
struct Rig {
    dw: Dockward,
    tcp: SocketAddr,
    udp: SocketAddr,
    udp_echo: UdpEcho,
}

impl Rig {
    fn start() -> Rig {
        let tcp_target = tcp_echo_target();
        let udp_echo = UdpEcho::start();
        let yaml = format!(
            "routes:\n  bulk:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n  dgram:\n    scheme: udp\n    bind: 127.0.0.1\n    port: {}\n",
            tcp_target.port(),
            udp_echo.addr.port()
        );
        let dw = Dockward::start(&yaml);
        let (tcp, udp) = (dw.listen_addr("bulk"), dw.listen_addr("dgram"));
        Rig { dw, tcp, udp, udp_echo }
    }

    fn row(&self, alias: &str) -> serde_json::Value {
        self.dw.routes().into_iter().find(|r| r["alias"] == alias).expect("the route's row")
    }

    /// Sends `total` bytes over `connections` and checks the echo and dockward's counters.
    fn tcp(&self, total: u64, connections: usize) {
        let report = tcp_transfer(self.tcp, total, connections, STALL).unwrap_or_else(|e| panic!("TCP transfer: {e}"));
        println!(
            "TCP: {} MiB each way over {connections} connections in {:.1?}: {:.0} MiB/s",
            total / MIB,
            report.elapsed,
            report.rate() / MIB as f64
        );
        let row = self.dw.wait_route("bulk", "done and counted", |r| {
            r["connections_active"] == 0 && r["bytes_in"] == total && r["bytes_out"] == total
        });
        assert_eq!(row["connections_total"], connections as u64, "{row}");
        assert_eq!(row["dial_errors"], 0, "{row}");
    }

    /// Sends `count` datagrams paced by `pace`; the report, without judging it.
    fn udp(&self, count: u64, pace: Pace) -> UdpReport {
        udp_transfer(self.udp, &self.udp_echo, SESSIONS, count, pace, Duration::from_secs(5))
    }

    /// Checks that a UDP run lost nothing, and that dockward counted it all.
    fn assert_udp_lossless(&self, report: &UdpReport, before: &serde_json::Value) {
        let row = self.row("dgram");
        let delta = |k: &str| row[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        println!(
            "UDP: {} datagrams, {} MiB each way in {:.1?}: {:.0} MiB/s; {report:?}; dockward dropped {}",
            report.sent,
            report.bytes / MIB,
            report.elapsed,
            report.rate() / MIB as f64,
            delta("dropped")
        );
        assert_eq!(delta("dropped"), 0, "dockward's own dropped counter: {row}");
        // Per socket, so exact; the system-wide snmp deltas are only reported (other
        // processes' sockets count there too).
        let drops = &report.drops;
        assert_eq!((drops.forwarder_sockets, drops.test_sockets), (0, 0), "kernel drops (buffers full): {report:?}");
        assert!(report.lossless(), "lost, reordered or corrupted: {report:?}");
        assert_eq!((delta("datagrams_in"), delta("datagrams_out")), (report.sent, report.sent), "{row}");
        assert_eq!((delta("bytes_in"), delta("bytes_out")), (report.bytes, report.bytes), "{row}");
    }
}

#[test]
fn tcp_256_mib_arrive_whole_and_in_order_through_dockward() {
    Rig::start().tcp(256 * MIB, 4);
}

#[test]
fn udp_20000_datagrams_of_1_to_65507_bytes_arrive_whole_and_in_order_through_dockward() {
    let rig = Rig::start();
    let before = rig.row("dgram");
    let report = rig.udp(20_000, Pace { rate: 200 * MIB, window: UDP_WINDOW });
    rig.assert_udp_lossless(&report, &before);
}

#[test]
#[ignore = "soak: `make soak` (release build, under a minute)"]
fn soak_10_gib_of_tcp_arrive_whole_and_in_order() {
    let started = Instant::now();
    Rig::start().tcp(10 * 1024 * MIB, 4);
    println!("soak TCP took {:.1?}", started.elapsed());
}

#[test]
#[ignore = "soak: `make soak` (release build, 2 to 4 minutes)"]
fn soak_a_million_udp_datagrams_arrive_whole_and_in_order_below_the_lossless_rate() {
    let rig = Rig::start();
    // The lossless rate of this machine: bursts at doubling rates, with a window far above
    // any socket buffer so only the rate paces them, until one loses anything.
    let mut lossless = None;
    for rate in [25, 50, 100, 200, 400, 800, 1600].map(|r| r * MIB) {
        let report = rig.udp(10_000, Pace { rate, window: 64 * MIB });
        let clean = report.lossless() && report.drops.forwarder_sockets == 0 && report.drops.test_sockets == 0;
        println!(
            "probe at {} MiB/s: {:.0} MiB/s achieved, {} of {} echoed; {:?}",
            rate / MIB,
            report.rate() / MIB as f64,
            report.received,
            report.sent,
            report.drops
        );
        if !clean {
            break;
        }
        lossless = Some(report.rate() as u64);
    }
    let lossless = lossless.expect("no rate was lossless, not even the lowest");
    let rate = lossless / 2;
    println!("measured lossless rate {} MiB/s; the soak runs at {} MiB/s", lossless / MIB, rate / MIB);

    let started = Instant::now();
    let before = rig.row("dgram");
    let report = rig.udp(1_000_000, Pace { rate, window: UDP_WINDOW });
    rig.assert_udp_lossless(&report, &before);
    println!("soak UDP took {:.1?}", started.elapsed());
}
