//! `loadgen`: the load tool behind `make bench`. Every subcommand prints one JSON line
//! (`{"test": ..., ...}`) that bench/run.sh records and bench/report.py tabulates.
//! Loopback only: every address it is given is checked to be 127.0.0.0/8 or ::1.

mod args;
mod echo;
mod ports;
mod routes;
mod sock;
mod stats;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use args::Args;

const USAGE: &str = "\
loadgen SUBCOMMAND [--flag value]...   (one JSON line per run on stdout; loopback addresses only)

  echo-server  [--tcp ADDR] [--udp ADDR]               TCP and UDP echo until killed
  pingpong     --addr ADDR [--size 64] [--secs 5] [--warmup 2000]
                                                       one connection, SIZE-byte request/echo; p50/p99/p999 us
  churn        --addr ADDR [--concurrency 50] [--secs 5]
                                                       connect, 1-byte echo, half-close, EOF; conns/s and p99
  idle         --addr ADDR [--conns 10000] [--parallel 256] [--hold-secs 60]
                                                       open CONNS with one echo each, print, hold
  udp-rate     --addr ADDR [--size 64] --rate PPS [--secs 2]
                                                       paced datagrams with sequence numbers; loss %
  udp-search   --addr ADDR [--size 64] [--start 10000] [--max 1280000] [--secs 1]
               [--max-loss-pct 0.1] [--bisect 3]       highest rate under the loss budget
  udp-sessions --addr ADDR [--sessions 10000] [--parallel 256] [--hold-secs 60]
                                                       one socket per session, one echo each, print, hold
  route-apply  --file FILE --base FILE --target ADDR --ports P,P,..|@FILE [--write inplace|rename]
               [--timeout-ms 5000]                     routes-file edit -> port accepting / refusing
  route-churn  --file FILE --base FILE --target ADDR --ports P,P,..|@FILE [--secs 20]
               [--max-cycles 1000] [--write inplace|rename] [--timeout-ms 10000]
                                                       add and remove all those routes, repeatedly
  ports        --count N                               N ports free for TCP and UDP on 127.0.0.1
  wait-tcp     --addr ADDR [--timeout-ms 10000]        exit 0 once ADDR accepts
  wait-udp     --addr ADDR [--timeout-ms 10000]        exit 0 once something has bound UDP ADDR
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match Args::parse(rest).and_then(|a| run(cmd, a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen {cmd}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Refuses any address off the loopback: this tool never sends elsewhere.
fn loopback(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() { Ok(addr) } else { Err(format!("{addr} is not a loopback address")) }
}

fn current_thread<F: std::future::Future<Output = std::io::Result<()>>>(f: F) -> std::io::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn run(cmd: &str, mut a: Args) -> Result<ExitCode, String> {
    let io = |r: std::io::Result<()>| r.map(|_| ExitCode::SUCCESS).map_err(|e| e.to_string());
    let addr = |a: &mut Args| a.req::<SocketAddr>("addr").and_then(loopback);
    match cmd {
        "echo-server" => {
            let tcp = a.maybe::<SocketAddr>("tcp")?.map(loopback).transpose()?;
            let udp = a.maybe::<SocketAddr>("udp")?.map(loopback).transpose()?;
            a.finish()?;
            io(echo::run(tcp, udp))
        }
        "pingpong" => {
            let (addr, size, secs, warmup) =
                (addr(&mut a)?, a.opt("size", 64usize)?, a.opt("secs", 5.0)?, a.opt("warmup", 2000usize)?);
            a.finish()?;
            io(tcp::pingpong(addr, size, secs, warmup))
        }
        "churn" => {
            let (addr, conc, secs) = (addr(&mut a)?, a.opt("concurrency", 50usize)?, a.opt("secs", 5.0)?);
            a.finish()?;
            io(current_thread(tcp::churn(addr, conc, secs)))
        }
        "idle" => {
            let (addr, n, par, hold) =
                (addr(&mut a)?, a.opt("conns", 10_000usize)?, a.opt("parallel", 256usize)?, a.opt("hold-secs", 60.0)?);
            a.finish()?;
            io(current_thread(tcp::idle(addr, n, par, hold)))
        }
        "udp-rate" => {
            let (addr, size, rate, secs) =
                (addr(&mut a)?, a.opt("size", 64usize)?, a.req("rate")?, a.opt("secs", 2.0)?);
            a.finish()?;
            io(udp::rate(addr, size, rate, secs))
        }
        "udp-search" => {
            let addr = addr(&mut a)?;
            let size = a.opt("size", 64usize)?;
            let (start, max, secs) = (a.opt("start", 10_000.0)?, a.opt("max", 1_280_000.0)?, a.opt("secs", 1.0)?);
            let (loss, bisect) = (a.opt("max-loss-pct", 0.1)? / 100.0, a.opt("bisect", 3u32)?);
            a.finish()?;
            io(udp::search(addr, size, start, max, secs, loss, bisect))
        }
        "udp-sessions" => {
            let (addr, n, par, hold) = (
                addr(&mut a)?,
                a.opt("sessions", 10_000usize)?,
                a.opt("parallel", 256usize)?,
                a.opt("hold-secs", 60.0)?,
            );
            a.finish()?;
            io(current_thread(udp::sessions(addr, n, par, hold)))
        }
        "route-apply" | "route-churn" => {
            let file = routes::RoutesFile {
                path: a.req::<String>("file")?.into(),
                base: {
                    let p: String = a.req("base")?;
                    std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?
                },
                target: loopback(a.req("target")?)?,
                mode: a.opt("write", routes::WriteMode::InPlace)?,
            };
            let ports = routes::read_ports(&a.req::<String>("ports")?)?;
            if cmd == "route-apply" {
                let timeout = Duration::from_millis(a.opt("timeout-ms", 5000)?);
                a.finish()?;
                io(routes::apply(&file, &ports, timeout))
            } else {
                let (secs, cycles) = (a.opt("secs", 20.0)?, a.opt("max-cycles", 1000u64)?);
                let timeout = Duration::from_millis(a.opt("timeout-ms", 10_000)?);
                a.finish()?;
                io(routes::churn(&file, &ports, secs, cycles, timeout))
            }
        }
        "ports" => {
            let n = a.req("count")?;
            a.finish()?;
            let ports = ports::free_ports(n)?;
            println!("{}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" "));
            Ok(ExitCode::SUCCESS)
        }
        "wait-tcp" | "wait-udp" => {
            let (addr, ms) = (addr(&mut a)?, a.opt("timeout-ms", 10_000u64)?);
            a.finish()?;
            let t = Duration::from_millis(ms);
            let up = if cmd == "wait-tcp" { ports::wait_tcp(addr, t) } else { ports::wait_udp_bound(addr, t) };
            Ok(if up { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        _ => Err(format!("unknown subcommand\n{USAGE}")),
    }
}
