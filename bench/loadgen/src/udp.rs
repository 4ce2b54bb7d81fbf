//! UDP scenarios: paced datagram streams with sequence numbers (loss at a fixed rate, and a
//! search for the highest rate under a loss budget), and many client sessions held open.
//!
//! Every datagram starts with a 4-byte step id and an 8-byte sequence number. Replies from an
//! earlier step are ignored, so one socket (one proxy session) serves a whole search.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::sock::big_buffers;
use crate::stats::JsonLine;

const HEADER: usize = 12;

/// What one paced step saw.
#[derive(Clone, Copy)]
pub struct Step {
    pub rate: f64,
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    /// Sent per second actually achieved (below `rate` when the sender could not keep up),
    /// forgiving the last 20 ms, so one late wake-up at the end of a step is not a limit.
    pub achieved: f64,
}

impl Step {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 { 1.0 } else { 1.0 - self.received as f64 / self.sent as f64 }
    }
    /// The load tool itself fell more than 3 % behind the wanted rate.
    pub fn sender_limited(&self) -> bool {
        self.achieved < 0.97 * self.rate
    }
}

pub fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    big_buffers(&sock);
    sock.connect(addr)?;
    Ok(sock)
}

/// Sends `size`-byte datagrams at `rate` per second for `secs`, then waits up to `grace` for
/// the last echoes; counts distinct sequence numbers that came back.
pub fn run_step(sock: &UdpSocket, step: u32, size: usize, rate: f64, secs: f64, grace: Duration) -> io::Result<Step> {
    let total = (rate * secs).round().max(1.0) as u64;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rx = sock.try_clone()?;
    rx.set_read_timeout(Some(Duration::from_millis(10)))?;
    let receiver = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = vec![0u64; (total as usize).div_ceil(64)];
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut buf) else { continue };
                if n < HEADER || u32::from_le_bytes(buf[0..4].try_into().unwrap()) != step {
                    continue;
                }
                let seq = u64::from_le_bytes(buf[4..12].try_into().unwrap());
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                if seq < total && seen[word] & (1 << bit) == 0 {
                    seen[word] |= 1 << bit;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut out = vec![0x5Au8; size.max(HEADER)];
    out[0..4].copy_from_slice(&step.to_le_bytes());
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let start = Instant::now();
    let give_up = Duration::from_secs_f64(secs * 1.5 + 0.5);
    while sent < total {
        let elapsed = start.elapsed();
        if elapsed > give_up {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(total);
        if sent >= due {
            // Ahead of schedule: sleep rather than spin, the echo server shares this core.
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        for _ in 0..(due - sent).min(256) {
            out[4..12].copy_from_slice(&sent.to_le_bytes());
            if sock.send(&out).is_err() {
                send_errors += 1;
            }
            sent += 1;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let wait_end = Instant::now() + grace;
    while Instant::now() < wait_end && received.load(Ordering::Relaxed) < sent {
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    Ok(Step {
        rate,
        sent,
        received: received.load(Ordering::Relaxed),
        send_errors,
        achieved: sent as f64 / (send_secs - 0.02).max(secs),
    })
}

fn step_json(s: &Step) -> String {
    format!(
        "{{\"rate\":{},\"sent\":{},\"received\":{},\"loss_pct\":{:.4},\"achieved\":{:.0}}}",
        s.rate as u64,
        s.sent,
        s.received,
        s.loss() * 100.0,
        s.achieved
    )
}

pub fn rate(addr: SocketAddr, size: usize, rate: f64, secs: f64) -> io::Result<()> {
    let sock = connect(addr)?;
    let s = run_step(&sock, 1, size, rate, secs, Duration::from_millis(300))?;
    let mut line = JsonLine::new("udp-rate");
    line.int("size", size as u64).num("rate", rate).int("sent", s.sent).int("received", s.received);
    line.num("loss_pct", s.loss() * 100.0).num("achieved", s.achieved).int("send_errors", s.send_errors);
    line.bool("sender_limited", s.sender_limited());
    line.print();
    Ok(())
}

/// Rising rates: doubles from `start` while loss stays within `max_loss`, then bisects
/// `bisect` times between the last good and the first bad rate; a failed step is confirmed by
/// a second try. A step where the sender
/// itself could not keep up counts as bad and is flagged, so a harness limit is never
/// reported as the proxy's.
pub fn search(
    addr: SocketAddr,
    size: usize,
    start: f64,
    max: f64,
    secs: f64,
    max_loss: f64,
    bisect: u32,
) -> io::Result<()> {
    let sock = connect(addr)?;
    let grace = Duration::from_millis(250);
    let mut steps = Vec::new();
    let mut step_id = 0u32;
    let mut run = |rate: f64, steps: &mut Vec<Step>| -> io::Result<Step> {
        step_id += 1;
        let s = run_step(&sock, step_id, size, rate, secs, grace)?;
        steps.push(s);
        Ok(s)
    };
    let ok = |s: &Step| s.loss() <= max_loss && !s.sender_limited();
    // A failed step is run once more and the second result stands, so one scheduling hiccup
    // on a shared machine does not end the search early.
    let mut run_confirmed = |rate: f64, steps: &mut Vec<Step>| -> io::Result<Step> {
        let s = run(rate, steps)?;
        if ok(&s) { Ok(s) } else { run(rate, steps) }
    };
    // A short warm-up so the first measured step does not pay for session setup.
    let _ = run_confirmed(1000.0, &mut Vec::new())?;

    let mut good: Option<Step> = None;
    let mut bad: Option<Step> = None;
    let mut r = start;
    loop {
        let s = run_confirmed(r, &mut steps)?;
        if ok(&s) {
            good = Some(s);
            if r >= max {
                break;
            }
            r = (r * 2.0).min(max);
        } else {
            bad = Some(s);
            break;
        }
    }
    if let (Some(_), Some(_)) = (good, bad) {
        for _ in 0..bisect {
            let (g, b) = (good.unwrap().rate, bad.unwrap().rate);
            if b - g < g * 0.05 {
                break;
            }
            let s = run_confirmed(((g + b) / 2.0).round(), &mut steps)?;
            if ok(&s) { good = Some(s) } else { bad = Some(s) }
        }
    }
    let mut line = JsonLine::new("udp-search");
    line.int("size", size as u64).num("max_loss_pct", max_loss * 100.0);
    line.num("best_pps", good.map_or(0.0, |s| s.rate));
    line.num("best_mbit_s", good.map_or(0.0, |s| s.rate * size as f64 * 8.0 / 1e6));
    line.bool("hit_max", good.is_some_and(|s| s.rate >= max));
    line.bool("first_bad_sender_limited", bad.is_some_and(|s| s.sender_limited()));
    let mut arr = String::from("[");
    for (i, s) in steps.iter().enumerate() {
        if i > 0 {
            arr.push(',');
        }
        let _ = write!(arr, "{}", step_json(s));
    }
    arr.push(']');
    line.raw("steps", &arr);
    line.print();
    Ok(())
}

/// `sessions` client sockets, each sends one datagram and waits for its echo (three tries),
/// printed once all are done; then all are held for `hold_secs` or until SIGTERM/SIGINT.
pub async fn sessions(addr: SocketAddr, sessions: usize, parallel: usize, hold_secs: f64) -> io::Result<()> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(sessions);
    let mut failed = 0u64;
    let mut tasks = JoinSet::new();
    let mut launched = 0usize;
    while launched < sessions || !tasks.is_empty() {
        while launched < sessions && tasks.len() < parallel {
            let id = launched as u64;
            launched += 1;
            tasks.spawn(async move {
                let sock = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                sock.connect(addr).await?;
                let msg = id.to_le_bytes();
                let mut buf = [0u8; 64];
                for _ in 0..3 {
                    sock.send(&msg).await?;
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
                        if buf[..n] == msg {
                            return Ok(sock);
                        }
                    }
                }
                Err(io::Error::new(io::ErrorKind::TimedOut, "no echo"))
            });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            _ => failed += 1,
        }
    }
    let mut line = JsonLine::new("udp-sessions");
    line.int("wanted", sessions as u64).int("sessions", held.len() as u64).int("failed", failed);
    line.num("open_secs", start.elapsed().as_secs_f64());
    line.print();
    crate::tcp::hold(hold_secs).await;
    drop(held);
    Ok(())
}
