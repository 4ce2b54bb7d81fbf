//! dockward: a label-driven TCP/UDP forwarder sidecar for Docker.
//!
//! Providers (routes files, Docker labels) publish the routes they want; the controller
//! merges them and applies the whole set to proxy-core's route table, which diffs it
//! against what runs. The admin API and `dockward routes` show the result.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod cli;
mod commands;
mod controller;
mod logging;
mod metrics;
mod providers;
mod routes_file;
mod routes_view;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::cli::{Cli, Command, LogArgs, LogFormat};

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
