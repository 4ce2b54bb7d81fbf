//! dockward: a label-driven TCP/UDP forwarder sidecar for Docker.
//!
//! This file only parses the command line and runs one command; the library crate
//! (`lib.rs`) holds everything else.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use dockward::cli::{Cli, Command, LogArgs, LogFormat};
use dockward::{commands, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = LogArgs { log_format: LogFormat::Text, log_level: None };
    let (log, default_level) = match &cli.command {
        Command::Run(run) => (&run.log, "info"),
        _ => (&quiet, "warn"),
    };
    if let Err(e) = logging::init(log, default_level) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Version => {
            println!("dockward {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => Ok(commands::check::check(&args)),
        Command::Run(args) => {
            runtime().and_then(|rt| rt.block_on(commands::run::run(args))).map(|()| ExitCode::SUCCESS)
        }
        Command::Routes(args) => {
            runtime().and_then(|rt| rt.block_on(commands::routes::routes(args))).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}
