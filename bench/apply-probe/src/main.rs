//! `apply-probe`: the time from `RouteTable::apply` being called to the route's port
//! accepting (and, on removal, refusing), with no file watcher or debounce in between:
//! the figure issue 5's "route apply → accepting ≤ 10 ms" target is about.
//!
//! ```text
//! apply-probe --target 127.0.0.1:ECHO --ports P,P,..|@FILE [--edits 20] [--bulk 1000]
//! ```
//! The first `--edits` ports are added and removed one at a time; the next `--bulk` are
//! added in one apply and removed in one apply. Prints one JSON line. Loopback only.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use proxy_core::{Protocol, RouteSpec, RouteTable, Target};

fn route(port: u16, target: SocketAddr) -> RouteSpec {
    let listen = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    RouteSpec::new(
        format!("probe-{port}"),
        Protocol::Tcp,
        listen,
        vec![Target::new(target.ip().to_string(), target.port())],
    )
}

async fn accepting(port: u16) -> bool {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_ok()
}

/// Polls every 100 µs until every port is accepting (`want`) or refusing; None after 5 s.
async fn wait_all(ports: &[u16], want: bool) -> Option<Duration> {
    let start = Instant::now();
    let mut pending = ports.to_vec();
    while start.elapsed() < Duration::from_secs(5) {
        let mut still = Vec::new();
        for &p in &pending {
            if accepting(p).await != want {
                still.push(p);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    None
}

fn quantile_ms(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn json_num(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "null".into() }
}

async fn probe(target: SocketAddr, ports: &[u16], edits: usize, bulk: usize) -> Result<String, String> {
    if ports.len() < edits + bulk {
        return Err(format!("{} ports given, {} needed", ports.len(), edits + bulk));
    }
    let table = RouteTable::new();
    let (mut apply_add, mut accept_add, mut apply_rm, mut refuse_rm) = (vec![], vec![], vec![], vec![]);
    let mut failures = 0u64;
    for &p in &ports[..edits] {
        let t0 = Instant::now();
        let report = table.apply(vec![route(p, target)]).await;
        let applied = t0.elapsed();
        failures += report.failed.len() as u64;
        match wait_all(&[p], true).await {
            Some(_) => {
                apply_add.push(ms(applied));
                accept_add.push(ms(t0.elapsed()));
            }
            None => failures += 1,
        }
        let t0 = Instant::now();
        table.apply(Vec::new()).await;
        let applied = t0.elapsed();
        match wait_all(&[p], false).await {
            Some(_) => {
                apply_rm.push(ms(applied));
                refuse_rm.push(ms(t0.elapsed()));
            }
            None => failures += 1,
        }
    }
    let bulk_ports = &ports[edits..edits + bulk];
    let step = (bulk / 10).max(1);
    let mut sample: Vec<u16> = bulk_ports.iter().step_by(step).copied().collect();
    sample.extend(bulk_ports.last());
    let t0 = Instant::now();
    let report = table.apply(bulk_ports.iter().map(|&p| route(p, target)).collect()).await;
    let bulk_apply = t0.elapsed();
    failures += report.failed.len() as u64;
    let bulk_accept = wait_all(&sample, true).await.map(|_| t0.elapsed());
    let t0 = Instant::now();
    table.apply(Vec::new()).await;
    let bulk_rm_apply = t0.elapsed();
    let bulk_refuse = wait_all(&sample, false).await.map(|_| t0.elapsed());
    table.shutdown().await;

    Ok(format!(
        "{{\"test\":\"apply-probe\",\"edits\":{edits},\"bulk\":{bulk},\"failures\":{failures},\
         \"add_apply_p50_ms\":{},\"add_accepting_p50_ms\":{},\"add_accepting_max_ms\":{},\
         \"remove_apply_p50_ms\":{},\"remove_refusing_p50_ms\":{},\"remove_refusing_max_ms\":{},\
         \"bulk_add_apply_ms\":{},\"bulk_add_accepting_ms\":{},\"bulk_remove_apply_ms\":{},\"bulk_remove_refusing_ms\":{}}}",
        json_num(quantile_ms(&mut apply_add, 0.5)),
        json_num(quantile_ms(&mut accept_add, 0.5)),
        json_num(quantile_ms(&mut accept_add, 1.0)),
        json_num(quantile_ms(&mut apply_rm, 0.5)),
        json_num(quantile_ms(&mut refuse_rm, 0.5)),
        json_num(quantile_ms(&mut refuse_rm, 1.0)),
        json_num(ms(bulk_apply)),
        json_num(bulk_accept.map_or(f64::NAN, ms)),
        json_num(ms(bulk_rm_apply)),
        json_num(bulk_refuse.map_or(f64::NAN, ms)),
    ))
}

fn parse() -> Result<(SocketAddr, Vec<u16>, usize, usize), String> {
    let (mut target, mut ports, mut edits, mut bulk) = (None, None, 20usize, 1000usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => target = Some(value.parse::<SocketAddr>().map_err(|e| format!("--target: {e}"))?),
            "--ports" => {
                let text = match value.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
                    None => value,
                };
                let list: Result<Vec<u16>, _> = text
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect();
                ports = Some(list.map_err(|e| format!("--ports: {e}"))?);
            }
            "--edits" => edits = value.parse().map_err(|e| format!("--edits: {e}"))?,
            "--bulk" => bulk = value.parse().map_err(|e| format!("--bulk: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let target = target.ok_or("--target is required")?;
    if !target.ip().is_loopback() {
        return Err(format!("{target} is not a loopback address"));
    }
    Ok((target, ports.ok_or("--ports is required")?, edits, bulk))
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match parse() {
        Ok((target, ports, edits, bulk)) => probe(target, &ports, edits, bulk).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apply-probe: {e}");
            ExitCode::from(2)
        }
    }
}
