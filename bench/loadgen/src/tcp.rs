//! TCP scenarios: request/response latency, connection churn, and idle connections held open.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::stats::{JsonLine, Samples};

/// One connection, `size`-byte message, wait for the whole echo, repeat for `secs`.
/// Blocking sockets: the least client overhead between two samples.
pub fn pingpong(addr: SocketAddr, size: usize, secs: f64, warmup: usize) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let out = vec![0xA5u8; size];
    let mut back = vec![0u8; size];
    for _ in 0..warmup {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
    }
    let mut samples = Samples::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    if back != out {
        return Err(io::Error::other("echo returned different bytes"));
    }
    let mut line = JsonLine::new("pingpong");
    line.int("size", size as u64).int("count", samples.len() as u64);
    line.num("rps", samples.len() as f64 / start.elapsed().as_secs_f64());
    samples.summarize(&mut line);
    line.print();
    Ok(())
}

/// `concurrency` loops for `secs`: connect, send 1 byte, read the echo, half-close, read EOF.
/// Waiting for EOF means each sample is a full connection lifetime through the proxy
/// (accept, dial, one echo, FIN both ways), so a proxy cannot look fast by queueing closes.
pub async fn churn(addr: SocketAddr, concurrency: usize, secs: f64) -> io::Result<()> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        tasks.spawn(async move {
            let mut samples = Samples::with_capacity(64 * 1024);
            let mut errors = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                match one_connection(addr).await {
                    Ok(()) => samples.push(t0.elapsed().as_nanos() as u64),
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (samples, errors)
        });
    }
    let mut all = Samples::default();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (s, e) = r.map_err(io::Error::other)?;
        all.extend(s);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut line = JsonLine::new("churn");
    line.int("concurrency", concurrency as u64).int("conns", all.len() as u64).int("errors", errors);
    line.num("conns_per_s", all.len() as f64 / elapsed);
    all.summarize(&mut line);
    line.print();
    Ok(())
}

async fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b != *b"x" {
        return Err(io::Error::other("wrong echo"));
    }
    s.shutdown().await?;
    match s.read(&mut b).await? {
        0 => Ok(()),
        _ => Err(io::Error::other("data after the echo")),
    }
}

/// Opens `conns` connections (`parallel` at a time), one 1-byte echo each, prints one line when
/// all are up, then holds them for `hold_secs` or until SIGTERM/SIGINT.
pub async fn idle(addr: SocketAddr, conns: usize, parallel: usize, hold_secs: f64) -> io::Result<()> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(conns);
    let mut errors = 0u64;
    let mut tasks = JoinSet::new();
    let mut launched = 0;
    while launched < conns || !tasks.is_empty() {
        while launched < conns && tasks.len() < parallel {
            launched += 1;
            tasks.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(b"i").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                Ok::<_, io::Error>(s)
            });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            _ => errors += 1,
        }
    }
    let mut line = JsonLine::new("idle");
    line.int("wanted", conns as u64).int("conns", held.len() as u64).int("errors", errors);
    line.num("open_secs", start.elapsed().as_secs_f64());
    line.print();
    hold(hold_secs).await;
    drop(held);
    Ok(())
}

/// Sleeps for `secs` or until SIGTERM or SIGINT, whichever comes first.
pub async fn hold(secs: f64) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        return;
    };
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
