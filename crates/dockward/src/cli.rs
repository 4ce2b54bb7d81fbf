//! The command line: every command, flag and environment variable `dockward` accepts.
//!
//! Names and flags here are a contract that users and scripts rely on; change them only
//! by adding.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admin::{AdminAddr, DEFAULT_ADMIN_ADDR};

/// dockward: forwards TCP and UDP ports to the targets that Docker labels and routes files name.
#[derive(Debug, Parser)]
#[command(name = "dockward", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: serve the routes of route files (and Docker) until SIGINT or SIGTERM.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// List the routes of a running controller, asking its admin API.
    #[command(after_help = ROUTES_EXAMPLES)]
    Routes(RoutesArgs),
    /// Validate route files offline: print the routes they define, or every error (exit 1).
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Print the version.
    Version,
}

const RUN_EXAMPLES: &str = "\
Examples:
  dockward run --routes examples/routes.yml
  dockward run --routes /etc/dockward/routes.yml --admin unix:/run/dockward.sock
  dockward run --no-docker --routes a.yml --routes b.yml --log-format json

Routes files are watched: edits apply within ~100 ms; a file with errors keeps its previous
routes running and shows its errors in `dockward routes`.";

const ROUTES_EXAMPLES: &str = "\
Examples:
  dockward routes
  dockward routes --json | jq '.[] | {alias, listen, bytes_in, bytes_out}'
  DOCKWARD_ADMIN=unix:/run/dockward.sock dockward routes";

const CHECK_EXAMPLES: &str = "\
Examples:
  dockward check --routes examples/routes.yml
  dockward check --routes a.yml --routes b.yml   # also finds routes of both that share a port";

/// Logging flags of `dockward run`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter such as
    /// `info,proxy_core=debug`. Default: RUST_LOG, else info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The admin API address flag, shared by `run` and `routes`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API address: HOST:PORT or unix:/path/to/socket.
    #[arg(long, value_name = "ADDR", env = "DOCKWARD_ADMIN", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin: AdminAddr,
}

/// Flags of `dockward run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A routes file (YAML) to serve and watch for changes; may be given several times.
    #[arg(long = "routes", value_name = "FILE")]
    pub routes: Vec<PathBuf>,
    /// Where the admin API listens.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Once the admin API listens, write its bound address to FILE (useful with port 0).
    #[arg(long, value_name = "FILE")]
    pub admin_addr_file: Option<PathBuf>,
    /// Turn the Docker provider off: serve route files only.
    #[arg(long)]
    pub no_docker: bool,
    /// Docker engine to watch. Default: DOCKER_HOST, else the local socket.
    #[arg(long, value_name = "URL", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// How logs are written.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Flags of `dockward routes`.
#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// The running controller's admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `dockward check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A routes file (YAML) to validate; may be given several times.
    #[arg(long = "routes", value_name = "FILE")]
    pub routes: Vec<PathBuf>,
    // Label checks (`--labels k=v ...`, `--container NAME`) belong here, next to `routes`;
    // `commands::check` validates each kind of input and reports them together.
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_several_routes_files_and_an_admin_address() {
        let cli = Cli::try_parse_from([
            "dockward",
            "run",
            "--routes",
            "a.yml",
            "--routes",
            "b.yml",
            "--admin",
            "unix:/run/dockward.sock",
            "--no-docker",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.log.log_level, None);
        assert_eq!(run.routes, vec![PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
        assert_eq!(run.admin.admin, AdminAddr::Unix("/run/dockward.sock".into()));
        assert!(run.no_docker);
        assert_eq!(run.log.log_format, LogFormat::Json);
    }

    #[test]
    fn a_bad_admin_address_is_a_usage_error() {
        let err = Cli::try_parse_from(["dockward", "routes", "--admin", "localhost"]).unwrap_err();
        assert!(err.to_string().contains("HOST:PORT or unix:/path"), "{err}");
    }
}
