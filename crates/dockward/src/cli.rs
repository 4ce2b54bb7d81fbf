//! The command line: every command, flag and environment variable `dockward` accepts.
//!
//! Names and flags here are a contract that users and scripts rely on; change them only
//! by adding.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use docker_watcher::{EngineAddress, EngineTls};
use proxy_core::{Acl, IpNet};
use route_spec::nets;

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
    /// Run the controller: serve the routes of route files (and Docker) until SIGINT or SIGTERM; SIGHUP re-reads the routes files.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// List the routes of a running controller, asking its admin API.
    #[command(after_help = ROUTES_EXAMPLES)]
    Routes(RoutesArgs),
    /// Validate route files and container labels: print the routes they define, or every error (exit 1).
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
  dockward run --routes r.yml --allow 10.0.0.0/8,192.168.1.5 --deny 10.0.0.66
  dockward run --routes r.yml --access-log /var/log/dockward/access.log --access-log-format json
  dockward run --docker-host local=unix:///var/run/docker.sock,nas=tcp://10.0.0.5:2376 \\
               --docker-tls nas=/etc/dockward/nas     # ca.pem, cert.pem, key.pem

Routes files are watched: edits apply within ~100 ms; a file with errors keeps its previous
routes running and shows its errors in `dockward routes`.

A browser at the admin address (http://127.0.0.1:7031/ by default) shows the status page: every
route with live throughput and connection sparklines.";

const ROUTES_EXAMPLES: &str = "\
Examples:
  dockward routes
  dockward routes --json | jq '.[] | {alias, listen, bytes_in, bytes_out}'
  DOCKWARD_ADMIN=unix:/run/dockward.sock dockward routes";

const CHECK_EXAMPLES: &str = "\
Examples:
  dockward check --routes examples/routes.yml
  dockward check --routes a.yml --routes b.yml   # also finds routes of both that share a port
  dockward check --labels proxy.aliases=ssh proxy.ssh.port=2222:22 --name gitea
  dockward check --container gitea               # its labels, against its real networks
  dockward check --container gitea --docker-host tcp://10.0.0.5:2375
  dockward check --container nas/gitea --docker-host nas=tcp://10.0.0.5:2376 --docker-tls nas=/etc/dockward/nas

--labels is checked offline, as the labels of a host-network container (targets show as
127.0.0.1; proxy.network is checked by --container, which asks the engine).";

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
    /// Required with --no-docker: without either there is nothing to serve (a usage error).
    #[arg(long = "routes", value_name = "FILE", required_if_eq("no_docker", "true"))]
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
    /// Docker (or Podman) engine to watch: URL, or NAME=URL to watch several (repeat the
    /// flag, or separate with commas); sources then read NAME/container. Default:
    /// DOCKER_HOST, else CONTAINER_HOST, else the local Docker or Podman socket.
    #[arg(long, value_name = "[NAME=]URL", env = "DOCKER_HOST", value_delimiter = ',', value_parser = EngineAddress::parse)]
    pub docker_host: Vec<EngineAddress>,
    /// TLS to an engine: DIR holds ca.pem (the CA that signed the engine's certificate),
    /// cert.pem and key.pem (dockward's client certificate), as DOCKER_CERT_PATH does for the
    /// docker CLI. NAME=DIR for one of several engines; repeat the flag or separate with
    /// commas. Without it, DOCKER_TLS_VERIFY=1 turns TLS on for tcp:// engines with the
    /// certificates in DOCKER_CERT_PATH (else ~/.docker), and https:// engines always use TLS.
    #[arg(long, value_name = "[NAME=]DIR", env = "DOCKWARD_DOCKER_TLS", value_delimiter = ',',
          value_parser = EngineTls::parse)]
    pub docker_tls: Vec<EngineTls>,
    /// Watch only the containers (and swarm services) carrying every one of these labels:
    /// `key` or `key=value`, comma-separated or with the flag repeated. Lets several
    /// dockward instances share one engine, each serving its own project.
    #[arg(long, value_name = "KEY[=VALUE],...", env = "DOCKWARD_DOCKER_LABEL_FILTER", value_delimiter = ',',
          value_parser = parse_label_filter)]
    pub docker_label_filter: Vec<String>,
    /// Let dockward start, stop, pause, unpause and kill containers: idle sleep
    /// (`proxy.idle_timeout`) needs it. Without it dockward only reads the Docker API, and
    /// idle labels are an error row naming this flag.
    #[arg(long, env = "DOCKWARD_ALLOW_CONTAINER_CONTROL")]
    pub allow_container_control: bool,
    /// Global ACL: clients every route lets in, besides its own `allow`. IPs and CIDR
    /// networks, comma-separated or with the flag repeated; once set, every other client of
    /// every route is refused. `deny` wins over it.
    #[arg(long, value_name = "CIDR,...", env = "DOCKWARD_ALLOW", value_parser = NetList::parse_allow)]
    pub allow: Vec<NetList>,
    /// Global ACL: clients every route refuses, whatever any `allow` says. IPs and CIDR
    /// networks, comma-separated or with the flag repeated.
    #[arg(long, value_name = "CIDR,...", env = "DOCKWARD_DENY", value_parser = NetList::parse)]
    pub deny: Vec<NetList>,
    /// Access log: one line per TCP connection and UDP session as it ends (and per client
    /// refused), to stdout, stderr or a file (appended to; reopened on SIGHUP, for
    /// logrotate). Off unless given; a route with `access_log: false` is left out.
    #[arg(long, value_name = "stdout|stderr|PATH")]
    pub access_log: Option<crate::access_log::Destination>,
    /// Access-log line format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = crate::access_log::Format::Text)]
    pub access_log_format: crate::access_log::Format,
    /// How logs are written.
    #[command(flatten)]
    pub log: LogArgs,
    /// Hidden tuning, mostly for tests: how often a routes file whose last read failed is
    /// read again without any event, and how long a deleted file stays before its routes go.
    #[arg(long, hide = true, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reread_interval: std::time::Duration,
    /// Hidden tuning: how long an admin client may take to send a request's headers.
    #[arg(long, hide = true, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub admin_header_timeout: std::time::Duration,
    /// Hidden tuning: how long an admin connection may sit idle between requests.
    #[arg(long, hide = true, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub admin_idle_timeout: std::time::Duration,
    /// Hidden tuning: the most admin connections open at once (default: from the open-file
    /// limit).
    #[arg(long, hide = true, value_name = "N")]
    pub admin_max_connections: Option<usize>,
}

impl RunArgs {
    /// The global ACL that `--allow` and `--deny` (or DOCKWARD_ALLOW and DOCKWARD_DENY) set;
    /// open when neither is given.
    pub fn global_acl(&self) -> Acl {
        let flatten = |lists: &[NetList]| lists.iter().flat_map(|l| l.0.iter().copied()).collect();
        Acl::new(flatten(&self.allow), flatten(&self.deny))
    }
}

/// One `--docker-label-filter` entry: `key` or `key=value`, trimmed; the key may not be empty.
fn parse_label_filter(text: &str) -> Result<String, String> {
    let entry = text.trim();
    match entry.split_once('=').map_or(entry, |(key, _)| key).trim() {
        "" => Err(format!("{entry:?} has no label key; expected key or key=value")),
        _ => Ok(entry.to_string()),
    }
}

/// One `--allow` or `--deny` value: IPs and CIDR networks separated by commas or spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

impl NetList {
    /// Parses `10.0.0.0/8,192.168.1.5 fd00::/8`; the error names the entry at fault.
    pub fn parse(text: &str) -> Result<NetList, String> {
        nets::parse_nets(text).map(NetList).map_err(|e| e.to_string())
    }

    /// As [`NetList::parse`], but an empty list is an error: `--allow ""` would otherwise
    /// let every client in, the opposite of what whoever wrote it meant.
    pub fn parse_allow(text: &str) -> Result<NetList, String> {
        match NetList::parse(text)? {
            NetList(nets) if nets.is_empty() => Err("an empty allow list would let every client in: list IPs or \
                                                     CIDR networks, or drop the flag"
                .to_string()),
            list => Ok(list),
        }
    }
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
    /// Container labels to validate offline, as KEY=VALUE: several after one flag, or the
    /// flag repeated.
    #[arg(long = "labels", value_name = "KEY=VALUE", num_args = 1.., value_parser = label_arg)]
    pub labels: Vec<(String, String)>,
    /// The container name for --labels: its alias when proxy.aliases is absent, and the
    /// routes' SOURCE.
    #[arg(long, value_name = "NAME", default_value = "container", requires = "labels")]
    pub name: String,
    /// A container (name or id) whose labels to validate against its networks, asking the
    /// Docker engine; may be given several times.
    #[arg(long = "container", value_name = "NAME")]
    pub containers: Vec<String>,
    /// Docker (or Podman) engine for --container: URL, or NAME=URL, repeatable; with
    /// several, --container takes ENGINE/NAME. Default: DOCKER_HOST, else the local socket.
    #[arg(long, value_name = "[NAME=]URL", env = "DOCKER_HOST", value_delimiter = ',', value_parser = EngineAddress::parse)]
    pub docker_host: Vec<EngineAddress>,
    /// TLS to an engine for --container: DIR with ca.pem, cert.pem and key.pem, or NAME=DIR
    /// for one of several (as `dockward run --docker-tls`). Default: DOCKER_TLS_VERIFY with
    /// DOCKER_CERT_PATH, as the docker CLI.
    #[arg(long, value_name = "[NAME=]DIR", env = "DOCKWARD_DOCKER_TLS", value_delimiter = ',',
          value_parser = EngineTls::parse)]
    pub docker_tls: Vec<EngineTls>,
    /// Print the routes, notes and errors as one JSON object on stdout (the exit status is
    /// the same).
    #[arg(long)]
    pub json: bool,
}

/// Parses one `--labels` value: `KEY=VALUE`, split at the first `=`.
fn label_arg(arg: &str) -> Result<(String, String), String> {
    docker_watcher::split_label_arg(arg)
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. proxy.ssh.port=2222:22 (got {arg:?})"))
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
    fn docker_host_takes_several_named_engines_by_flag_or_comma_list() {
        let cli = Cli::try_parse_from([
            "dockward",
            "run",
            "--docker-host",
            "nas=tcp://10.0.0.5:2375,pi=tcp://127.0.0.1:2375",
            "--docker-host",
            "local=unix:///var/run/docker.sock",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        let hosts: Vec<(Option<&str>, &str)> =
            run.docker_host.iter().map(|e| (e.name.as_deref(), e.url.as_str())).collect();
        assert_eq!(
            hosts,
            [
                (Some("nas"), "tcp://10.0.0.5:2375"),
                (Some("pi"), "tcp://127.0.0.1:2375"),
                (Some("local"), "unix:///var/run/docker.sock")
            ]
        );
        let e = Cli::try_parse_from(["dockward", "run", "--docker-host", "n a=tcp://x:1"]).unwrap_err().to_string();
        assert!(e.contains("engine name \"n a\""), "{e}");
    }

    #[test]
    fn the_docker_label_filter_takes_comma_lists_and_repeated_flags_and_refuses_a_missing_key() {
        let cli = Cli::try_parse_from([
            "dockward",
            "run",
            "--docker-label-filter",
            "com.docker.compose.project=shop, tier",
            "--docker-label-filter",
            "team=games",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.docker_label_filter, ["com.docker.compose.project=shop", "tier", "team=games"]);
        let e = Cli::try_parse_from(["dockward", "run", "--docker-label-filter", "a,=b"]).unwrap_err().to_string();
        assert!(e.contains("\"=b\" has no label key"), "{e}");
    }

    #[test]
    fn the_global_acl_takes_comma_lists_and_repeated_flags() {
        let cli = Cli::try_parse_from([
            "dockward",
            "run",
            "--allow",
            "10.0.0.0/8,192.168.1.5",
            "--allow",
            "::1",
            "--deny",
            "10.0.0.66",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        let acl = run.global_acl();
        let nets = |list: &[&str]| list.iter().map(|n| n.parse::<IpNet>().unwrap()).collect::<Vec<_>>();
        assert_eq!(acl.allow(), nets(&["10.0.0.0/8", "192.168.1.5/32", "::1/128"]));
        assert_eq!(acl.deny(), nets(&["10.0.0.66/32"]));
        assert!(acl.allows("10.1.2.3".parse().unwrap()));
        assert!(!acl.allows("10.0.0.66".parse().unwrap()));
        assert!(!acl.allows("172.16.0.1".parse().unwrap()));

        let Command::Run(run) = Cli::try_parse_from(["dockward", "run"]).unwrap().command else { panic!("not run") };
        assert!(run.global_acl().is_open(), "no flag: everyone is let in");
    }

    #[test]
    fn a_bad_network_in_the_global_acl_is_a_usage_error_naming_it() {
        let err = Cli::try_parse_from(["dockward", "run", "--deny", "10.0.0.1,10.0.0.0/33"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--deny") && text.contains(r#""10.0.0.0/33" is not an IP address or CIDR network"#),
            "{text}"
        );
    }

    #[test]
    fn check_takes_labels_after_one_flag_or_repeated_and_containers() {
        let cli = Cli::try_parse_from([
            "dockward",
            "check",
            "--labels",
            "proxy.aliases=a b",
            "proxy.a.port=1:2",
            "--labels",
            "x==y",
            "--container",
            "web",
            "--routes",
            "r.yml",
        ])
        .unwrap();
        let Command::Check(check) = cli.command else { panic!("not check") };
        let pairs: Vec<(&str, &str)> = check.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("proxy.aliases", "a b"), ("proxy.a.port", "1:2"), ("x", "=y")]);
        assert_eq!(check.name, "container");
        assert_eq!(check.containers, ["web"]);
        assert_eq!(check.routes, [PathBuf::from("r.yml")]);

        let err = Cli::try_parse_from(["dockward", "check", "--labels", "novalue"]).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
        assert!(Cli::try_parse_from(["dockward", "check", "--name", "x", "--routes", "r.yml"]).is_err());
    }

    #[test]
    fn no_docker_without_routes_is_a_usage_error() {
        let err = Cli::try_parse_from(["dockward", "run", "--no-docker"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--routes <FILE>"), "{err}");
        assert!(Cli::try_parse_from(["dockward", "run", "--no-docker", "--routes", "r.yml"]).is_ok());
        assert!(Cli::try_parse_from(["dockward", "run"]).is_ok(), "Docker alone is something to serve");
    }

    #[test]
    fn a_bad_admin_address_is_a_usage_error() {
        let err = Cli::try_parse_from(["dockward", "routes", "--admin", "localhost"]).unwrap_err();
        assert!(err.to_string().contains("HOST:PORT or unix:/path"), "{err}");
    }
}
