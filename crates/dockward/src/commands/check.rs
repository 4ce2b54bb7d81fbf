//! `dockward check`: validates route files and container labels.
//!
//! Prints the routes they define (stdout), or every error with file (or container), alias,
//! field or label, and value (stderr), and fails when there is any error. The table comes
//! from [`crate::table`], and notes and errors are escaped the same way; `--json` prints the
//! same as one [`CheckJson`] object instead. Two routes that
//! would fight over one listen address are an error too: at run time the younger one would
//! sit in conflict.
//!
//! Inputs: routes files (`--routes`), labels given on the command line (`--labels k=v ...`,
//! checked offline as a host-network container's), and containers of a Docker engine
//! (`--container NAME`, checked against their real networks). Labels go through the very
//! function the Docker provider uses, so what passes here is what `run` serves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use docker_watcher::swarm::SWARM_SERVICE_ID_LABEL;
use docker_watcher::{ContainerRoutes, DockerConfig};
use proxy_core::{Protocol, RouteSpec};
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::routes_file;
use crate::table::{self, escape};

/// How long `--container` waits for the engine.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes and errors found in every input of one `check`.
#[derive(Debug, Default)]
pub struct Report {
    /// Routes of inputs without error (for labels: the aliases without error).
    pub routes: Vec<RouteSpec>,
    /// Every error, as printed: `FILE: route "ALIAS": FIELD "VALUE": reason`, or
    /// `NAME: label KEY="VALUE": reason` for labels.
    pub errors: Vec<String>,
    /// What is worth knowing but not wrong: aliases and routes-file entries that make no
    /// route, an excluded or stopped container.
    pub notes: Vec<String>,
    /// How many routes files were read.
    pub files: usize,
    /// How many labels were given with `--labels`.
    pub labels: usize,
    /// The containers asked for with `--container`.
    pub containers: Vec<String>,
}

impl Report {
    /// Adds the routes files; a file with any error contributes errors only, as at run time.
    pub fn add_route_files(&mut self, files: &[PathBuf]) {
        for path in files {
            self.files += 1;
            let loaded = routes_file::load(path);
            self.notes.extend(loaded.skipped.iter().map(ToString::to_string));
            if loaded.errors.is_empty() {
                self.routes.extend(loaded.routes);
            } else {
                self.errors.extend(loaded.errors.iter().map(|e| e.to_string()));
            }
        }
    }

    /// Adds labels given as `key=value` pairs, checked offline as the labels of the
    /// host-network container `name`; their valid aliases contribute routes, as at run time.
    pub fn add_labels(&mut self, pairs: &[(String, String)], name: &str) {
        self.labels += pairs.len();
        let parsed = docker_watcher::check_labels(pairs, name);
        self.add_parsed(&parsed);
    }

    /// Adds a container of the engine `config` names (called `engine` when it has a name),
    /// checked against its real networks. An engine's failure is an error naming the engine.
    pub async fn add_container(&mut self, config: &DockerConfig, engine: Option<&str>, name: &str) {
        self.containers.push(name.to_string());
        let (view, parsed) = match docker_watcher::check_container(config, name).await {
            Ok(found) => found,
            Err(e) => {
                self.errors.push(match engine {
                    Some(engine) => format!("engine {engine:?}: {}", e.chain()),
                    None => e.chain(),
                });
                return;
            }
        };
        if let Some(service) = view.labels.get(SWARM_SERVICE_ID_LABEL) {
            self.notes.push(format!(
                "{}: a task of swarm service {service}: on a swarm manager the service's labels make the \
                 routes, not the container's",
                view.name
            ));
        }
        if !view.state.is_running() {
            self.notes.push(format!(
                "{}: the container is {}; its routes are served only while it runs",
                view.name, view.state
            ));
        }
        self.add_parsed(&parsed);
    }

    /// Adds what one container's labels ask for.
    fn add_parsed(&mut self, parsed: &ContainerRoutes) {
        let name = &parsed.name;
        if parsed.excluded {
            self.notes.push(format!("{name}: proxy.exclude=true: no routes"));
            return;
        }
        if parsed.routes.is_empty() && parsed.errors.is_empty() && parsed.skipped.is_empty() {
            self.notes.push(format!("{name}: no proxy.* label: dockward ignores it"));
        }
        self.routes.extend(parsed.routes.iter().cloned());
        self.errors.extend(parsed.errors.iter().map(|e| format!("{name}: {e}")));
        self.notes
            .extend(parsed.skipped.iter().map(|s| format!("{name}: alias {:?} makes no route: {}", s.alias, s.reason)));
    }

    /// What was read, for the summary line: `2 files`, `4 labels and container web`.
    fn inputs(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.files > 0 || (self.labels == 0 && self.containers.is_empty()) {
            parts.push(plural(self.files, "file"));
        }
        if self.labels > 0 {
            parts.push(plural(self.labels, "label"));
        }
        parts.extend(self.containers.iter().map(|c| format!("container {c}")));
        match parts.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => parts.concat(),
        }
    }

    /// Adds an error for every pair of routes that would claim the same listen address, by
    /// the route table's own rule ([`proxy_core::clashes`]): the same alias, protocol and
    /// listen address from two places is one route with both targets (replicas,
    /// load-balanced), as `run` applies it.
    pub fn add_conflicts(&mut self) {
        for clash in proxy_core::clashes(&self.routes) {
            let (a, b) = (&self.routes[clash.route], &self.routes[clash.with]);
            self.errors.push(format!(
                "{}: route {:?}: listens on {} {}, as route {:?} of {} does",
                a.source, a.alias, a.protocol, a.listen, b.alias, b.source
            ));
        }
    }
}

/// Runs the check and prints its report; exit 1 on any error, 2 when given nothing.
pub fn check(args: &CheckArgs) -> ExitCode {
    if args.routes.is_empty() && args.labels.is_empty() && args.containers.is_empty() {
        eprintln!(
            "error: nothing to check: give --routes FILE, --labels KEY=VALUE... or --container NAME (several allowed)"
        );
        return ExitCode::from(2);
    }
    let mut report = Report::default();
    report.add_route_files(&args.routes);
    if !args.labels.is_empty() {
        report.add_labels(&args.labels, &args.name);
    }
    if !args.containers.is_empty() {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match docker_watcher::resolve_engines(&args.docker_host, &args.docker_tls) {
            Err(e) => {
                report.containers.extend(args.containers.iter().cloned());
                report.errors.push(e);
            }
            Ok(engines) => runtime.block_on(async {
                for arg in &args.containers {
                    // `ENGINE/NAME` picks one of several engines.
                    match docker_watcher::pick_engine(&engines, arg) {
                        Ok((engine, name)) => {
                            let config = DockerConfig { request_timeout: ENGINE_TIMEOUT, ..engine.config() };
                            report.add_container(&config, engine.name.as_deref(), name).await;
                        }
                        Err(e) => report.errors.push(e),
                    }
                }
            }),
        }
    }
    report.add_conflicts();

    if args.json {
        return print_json(&report);
    }
    if !report.routes.is_empty() {
        print!("{}", render(&report.routes));
    }
    // Notes, errors and input names quote labels, hosts and file contents: escaped, so that
    // none of them can forge a line or drive the terminal.
    for note in &report.notes {
        println!("note: {}", escape(note));
    }
    if report.errors.is_empty() {
        println!("ok: {} in {}", plural(report.routes.len(), "route"), escape(&report.inputs()));
        return ExitCode::SUCCESS;
    }
    for e in &report.errors {
        eprintln!("error: {}", escape(e));
    }
    eprintln!("check failed: {} in {}", plural(report.errors.len(), "error"), escape(&report.inputs()));
    ExitCode::FAILURE
}

/// The JSON form of a check (`dockward check --json`): its shape is documented in the README
/// and only ever gains fields.
#[derive(Debug, Serialize)]
pub struct CheckJson<'a> {
    /// True when there is no error (exit status 0).
    pub ok: bool,
    /// The routes the inputs define, as the table lists them.
    pub routes: Vec<RouteJson<'a>>,
    /// Every error, as `check` prints it after `error: `.
    pub errors: &'a [String],
    /// What is worth knowing but not wrong, as `check` prints it after `note: `.
    pub notes: &'a [String],
    /// What was read.
    pub inputs: InputsJson<'a>,
}

/// One route of [`CheckJson`].
#[derive(Debug, Serialize)]
pub struct RouteJson<'a> {
    /// The alias.
    pub alias: &'a str,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The scheme: `tcp`, `udp4`, ...
    pub scheme: String,
    /// The listen address asked for (port 0: the OS picks one).
    pub listen: String,
    /// The targets, as `host:port`.
    pub targets: Vec<String>,
    /// The file path or container name it comes from.
    pub source: &'a str,
    /// The options that differ from their defaults, by name, as a user would write them.
    pub options: BTreeMap<String, String>,
}

/// The inputs of [`CheckJson`].
#[derive(Debug, Serialize)]
pub struct InputsJson<'a> {
    /// How many routes files were read.
    pub files: usize,
    /// How many labels were given with `--labels`.
    pub labels: usize,
    /// The containers asked for with `--container`.
    pub containers: &'a [String],
}

impl Report {
    /// The report as data, for `--json`.
    pub fn to_json(&self) -> CheckJson<'_> {
        CheckJson {
            ok: self.errors.is_empty(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteJson {
                    alias: &r.alias,
                    protocol: r.protocol,
                    scheme: r.scheme().to_string(),
                    listen: r.listen.to_string(),
                    targets: r.targets.iter().map(|t| t.to_string()).collect(),
                    source: &r.source,
                    options: route_spec::fields::changed_options(&r.options)
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                })
                .collect(),
            errors: &self.errors,
            notes: &self.notes,
            inputs: InputsJson { files: self.files, labels: self.labels, containers: &self.containers },
        }
    }
}

/// Prints the report as JSON on stdout; exit 1 on any error.
fn print_json(report: &Report) -> ExitCode {
    match serde_json::to_string_pretty(&report.to_json()) {
        Ok(text) => println!("{text}"),
        Err(e) => {
            eprintln!("error: encoding the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `1 route`, `2 routes`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The table of valid routes: ALIAS, PROTO, LISTEN, TARGETS, SOURCE, OPTIONS (non-defaults).
fn render(routes: &[RouteSpec]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let targets: Vec<String> = r.targets.iter().map(|t| t.to_string()).collect();
            let options = route_spec::fields::options_text(&r.options);
            vec![
                r.alias.clone(),
                r.scheme().to_string(),
                r.listen.to_string(),
                targets.join(","),
                r.source.clone(),
                if options.is_empty() { "-".into() } else { options },
            ]
        })
        .collect();
    table::render(&["ALIAS", "PROTO", "LISTEN", "TARGETS", "SOURCE", "OPTIONS"], &rows)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proxy_core::{Protocol, Target};

    use super::*;

    fn report(text: &str) -> Report {
        let loaded = routes_file::parse("r.yml", text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut report = Report { routes: loaded.routes, ..Default::default() };
        report.add_conflicts();
        report
    }

    #[test]
    fn two_routes_on_one_port_are_a_conflict() {
        let r = report("routes:\n  a: {port: '2222:22'}\n  b: {port: '2222:23', bind: 127.0.0.1}\n");
        assert_eq!(r.errors, [r#"r.yml: route "b": listens on tcp 127.0.0.1:2222, as route "a" of r.yml does"#]);
    }

    #[test]
    fn different_protocols_addresses_or_os_picked_ports_do_not_conflict() {
        for text in [
            "routes:\n  a: {port: '53:53'}\n  b: {port: '53:53', scheme: udp}\n",
            "routes:\n  a: {port: '80:1', bind: 127.0.0.1}\n  b: {port: '80:1', bind: 127.0.0.2}\n",
            "routes:\n  a: {port: 22, scheme: tcp}\n  b: {port: 22, scheme: tcp}\n",
            "routes:\n  a: {port: '80:1', scheme: tcp6}\n  b: {port: '80:1', scheme: tcp4}\n",
        ] {
            assert_eq!(report(text).errors, Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn twenty_thousand_routes_are_checked_for_clashes_in_one_pass() {
        // 10,000 ports on 127.0.0.1 and 127.0.0.2 each (no clash), then one wildcard that
        // clashes with both routes on its port.
        let route = |alias: String, listen: SocketAddr| {
            RouteSpec::new(alias, Protocol::Tcp, listen, vec![Target::new("127.0.0.1", 80)]).with_source("r.yml")
        };
        let mut routes: Vec<RouteSpec> = (10_000..20_000u16)
            .flat_map(|port| {
                [[127, 0, 0, 1], [127, 0, 0, 2]].map(|ip| route(format!("r{port}-{}", ip[3]), (ip, port).into()))
            })
            .collect();
        routes.push(route("any".into(), ([0, 0, 0, 0], 15_000).into()));
        let mut r = Report { routes, ..Default::default() };
        r.add_conflicts();
        assert_eq!(
            r.errors,
            [
                r#"r.yml: route "any": listens on tcp 0.0.0.0:15000, as route "r15000-1" of r.yml does"#,
                r#"r.yml: route "any": listens on tcp 0.0.0.0:15000, as route "r15000-2" of r.yml does"#,
            ]
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_give_routes_errors_and_notes_named_after_the_container() {
        let mut r = Report::default();
        r.add_labels(
            &labels(&[("proxy.aliases", "ssh,web,bad"), ("proxy.ssh.port", "2222:22"), ("proxy.bad.prot", "1")]),
            "gitea",
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].source, "gitea");
        assert_eq!(r.errors, [r#"gitea: label proxy.bad.prot="1": unknown field (did you mean "port"?)"#]);
        assert_eq!(r.notes, [r#"gitea: alias "web" makes no route: no port"#]);
        assert_eq!(r.inputs(), "3 labels");

        let mut r = Report::default();
        r.add_labels(&labels(&[("proxy.exclude", "true"), ("proxy.a.port", "1:2")]), "x");
        r.add_labels(&labels(&[("com.example", "1")]), "y");
        assert_eq!(r.notes, ["x: proxy.exclude=true: no routes", "y: no proxy.* label: dockward ignores it"]);
    }

    #[test]
    fn the_summary_names_every_kind_of_input() {
        let r = Report { files: 2, labels: 1, containers: vec!["web".into(), "db".into()], ..Default::default() };
        assert_eq!(r.inputs(), "2 files, 1 label, container web and container db");
        assert_eq!(Report::default().inputs(), "0 files");
        assert_eq!(Report { files: 1, ..Default::default() }.inputs(), "1 file");
    }

    #[test]
    fn the_table_lists_non_default_options() {
        let r = report("routes:\n  ssh: {port: '2222:22', connect_timeout: 2s, tcp_idle_timeout: 1h}\n");
        assert_eq!(
            render(&r.routes),
            "\
ALIAS  PROTO  LISTEN        TARGETS       SOURCE  OPTIONS
ssh    tcp    0.0.0.0:2222  127.0.0.1:22  r.yml   connect_timeout=2s tcp_idle_timeout=1h
"
        );
    }
}
