//! Route churn through dockward's routes file: the time from a file edit to the new port
//! accepting (and to a removed port refusing), and cycles of adding and removing many routes
//! while the script measures a long stream on an unchanged route.
//!
//! The file is `base` (YAML ending inside the `routes:` mapping, written by the script) plus
//! one generated TCP route per port, all forwarding to `target`.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stats::{JsonLine, Samples};

/// How the file is rewritten: in place (truncate and write, as `echo > file` does) or by
/// writing a sibling and renaming it over (as most editors and config tools do).
#[derive(Clone, Copy)]
pub enum WriteMode {
    InPlace,
    Rename,
}

impl std::str::FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inplace" => Ok(WriteMode::InPlace),
            "rename" => Ok(WriteMode::Rename),
            _ => Err("expected inplace or rename".into()),
        }
    }
}

pub struct RoutesFile {
    pub path: std::path::PathBuf,
    pub base: String,
    pub target: SocketAddr,
    pub mode: WriteMode,
}

impl RoutesFile {
    /// Writes `base` plus one route per port.
    pub fn write(&self, ports: &[u16]) -> io::Result<()> {
        let mut text = self.base.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for p in ports {
            let _ = write!(
                text,
                "  bench-churn-{p}:\n    scheme: tcp\n    bind: 127.0.0.1\n    host: {}\n    port: \"{p}:{}\"\n",
                self.target.ip(),
                self.target.port()
            );
        }
        match self.mode {
            WriteMode::InPlace => std::fs::write(&self.path, text),
            WriteMode::Rename => {
                let tmp = self.path.with_extension("tmp-bench");
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &self.path)
            }
        }
    }
}

/// Poll period when timing one edit: fine, since the figure is the measurement.
const APPLY_POLL: Duration = Duration::from_micros(200);
/// Poll period while churning: coarse, so the poller takes little CPU from the stream measured
/// alongside.
const CHURN_POLL: Duration = Duration::from_millis(1);

fn accepting(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// Polls every `every` until every port in `ports` is accepting (`want`) or refusing (`!want`).
fn wait_all(ports: &[u16], want: bool, every: Duration, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut pending: Vec<u16> = ports.to_vec();
    while start.elapsed() < timeout {
        pending.retain(|&p| accepting(p) != want);
        if pending.is_empty() {
            return Some(start.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

/// For each port: add its route, time until it accepts; remove it, time until it refuses.
pub fn apply(file: &RoutesFile, ports: &[u16], timeout: Duration) -> io::Result<()> {
    let mut add = Samples::default();
    let mut remove = Samples::default();
    let mut timeouts = 0u64;
    file.write(&[])?;
    std::thread::sleep(Duration::from_millis(300));
    for &p in ports {
        let t0 = Instant::now();
        file.write(&[p])?;
        match wait_all(&[p], true, APPLY_POLL, timeout) {
            Some(_) => add.push(t0.elapsed().as_nanos() as u64),
            None => timeouts += 1,
        }
        let t0 = Instant::now();
        file.write(&[])?;
        match wait_all(&[p], false, APPLY_POLL, timeout) {
            Some(_) => remove.push(t0.elapsed().as_nanos() as u64),
            None => timeouts += 1,
        }
    }
    let mut line = JsonLine::new("route-apply");
    line.int("edits", ports.len() as u64 * 2).int("timeouts", timeouts);
    let ms = |s: &mut Samples, q| s.quantile_us(q) / 1000.0;
    line.num("add_p50_ms", ms(&mut add, 0.5)).num("add_max_ms", ms(&mut add, 1.0));
    line.num("remove_p50_ms", ms(&mut remove, 0.5)).num("remove_max_ms", ms(&mut remove, 1.0));
    line.print();
    Ok(())
}

/// Until `secs` pass (at most `max_cycles`): write the file with every port's route, wait
/// until a spread sample of them accepts; write it back to `base`, wait until they refuse.
pub fn churn(file: &RoutesFile, ports: &[u16], secs: f64, max_cycles: u64, timeout: Duration) -> io::Result<()> {
    let step = (ports.len() / 10).max(1);
    let mut sample: Vec<u16> = ports.iter().step_by(step).copied().collect();
    sample.extend(ports.last());
    let mut add = Samples::default();
    let mut remove = Samples::default();
    let mut timeouts = 0u64;
    let mut cycles = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs && cycles < max_cycles {
        let t0 = Instant::now();
        file.write(ports)?;
        match wait_all(&sample, true, CHURN_POLL, timeout) {
            Some(_) => add.push(t0.elapsed().as_nanos() as u64),
            None => timeouts += 1,
        }
        let t0 = Instant::now();
        file.write(&[])?;
        match wait_all(&sample, false, CHURN_POLL, timeout) {
            Some(_) => remove.push(t0.elapsed().as_nanos() as u64),
            None => timeouts += 1,
        }
        cycles += 1;
    }
    let mut line = JsonLine::new("route-churn");
    line.int("routes", ports.len() as u64).int("cycles", cycles).int("timeouts", timeouts);
    line.num("secs", start.elapsed().as_secs_f64());
    let ms = |s: &mut Samples, q| s.quantile_us(q) / 1000.0;
    line.num("add_all_p50_ms", ms(&mut add, 0.5)).num("add_all_max_ms", ms(&mut add, 1.0));
    line.num("remove_all_p50_ms", ms(&mut remove, 0.5)).num("remove_all_max_ms", ms(&mut remove, 1.0));
    line.print();
    Ok(())
}

pub fn read_ports(spec: &str) -> Result<Vec<u16>, String> {
    let text = if let Some(path) = spec.strip_prefix('@') {
        std::fs::read_to_string(Path::new(path)).map_err(|e| format!("{path}: {e}"))?
    } else {
        spec.to_string()
    };
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("port {s:?}: {e}")))
        .collect()
}
