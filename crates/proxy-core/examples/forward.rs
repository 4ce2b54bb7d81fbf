//! Forwards one TCP port programmatically, like GoDoxy's "Programmatic Stream Creation".
//!
//! ```text
//! cargo run -p proxy-core --example forward -- 127.0.0.1:2222 127.0.0.1:22
//! cargo run -p proxy-core --example forward -- '[::]:8053' db.internal:5432
//! ```
//!
//! LISTEN is an `IP:port` to bind (port 0 lets the OS pick; the bound address is printed);
//! TARGET is `host:port`, `IP:port` or `[IPv6]:port`, resolved at every connection. A
//! pre-dial hook logs each client before anything is dialled. Ctrl-C stops the forwarder
//! through [`RouteTable::shutdown`]. Set `RUST_LOG=proxy_core=debug` to see every connection.

use std::net::SocketAddr;
use std::process::ExitCode;

use proxy_core::{ConnInfo, Hooks, Protocol, RouteSpec, RouteState, RouteTable, Target};

/// What the program was asked to do.
struct Args {
    /// The address to bind.
    listen: SocketAddr,
    /// Where to forward to.
    target: Target,
}

/// Reads `LISTEN TARGET` from the command line.
fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: forward LISTEN TARGET   (e.g. forward 127.0.0.1:2222 127.0.0.1:22)".into());
    };
    let listen = listen.parse().map_err(|e| format!("LISTEN {listen:?}: {e}; expected IP:port"))?;
    let target = target.parse().map_err(|e| format!("TARGET: {e}"))?;
    Ok(Args { listen, target })
}

/// The pre-dial hook: logs the client and lets it through. Returning `Err(reason)` instead
/// would close the client without dialling the target.
fn log_client(info: &ConnInfo<'_>) -> Result<(), String> {
    tracing::info!(alias = info.alias, peer = %info.peer, listen = %info.listen, action = "pre_dial", "client connecting");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };

    let table = RouteTable::new();
    let target = args.target.to_string();
    let route = RouteSpec::new("forward", Protocol::Tcp, args.listen, vec![args.target])
        .with_source("examples/forward.rs")
        .with_hooks(Hooks::pre_dial(log_client));
    table.apply(vec![route]).await;

    // One route in, one status out: listening, or why not (address in use, invalid spec).
    let Some(status) = table.status().into_iter().next() else {
        eprintln!("the route is missing from the table");
        return ExitCode::FAILURE;
    };
    match (&status.state, status.bound) {
        (RouteState::Listening, Some(bound)) => {
            println!("forwarding {bound} -> {target}; Ctrl-C to stop");
        }
        (state, _) => {
            eprintln!("cannot forward: {}", state.message().unwrap_or_default());
            return ExitCode::FAILURE;
        }
    }

    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("waiting for Ctrl-C: {e}");
    }
    let stats = table.status().into_iter().next().map(|s| s.stats).unwrap_or_default();
    table.shutdown().await;
    println!(
        "stopped after {} connections ({} bytes in, {} bytes out, {} dial errors)",
        stats.total, stats.bytes_in, stats.bytes_out, stats.dial_errors
    );
    ExitCode::SUCCESS
}
