//! `dockward check`: validates route files offline.
//!
//! Prints the routes they define (stdout), or every error with file, alias and field
//! (stderr), and fails when there is any error. Two routes that would fight over one
//! listen address are an error too: at run time the younger one would sit in conflict.

use std::path::PathBuf;
use std::process::ExitCode;

use proxy_core::{Family, RouteOptions, RouteSpec};
use serde_json::Value;

use crate::cli::CheckArgs;
use crate::routes_file;

/// The routes and errors found in every input of one `check`.
#[derive(Debug, Default)]
pub struct Report {
    /// Routes of inputs without error.
    pub routes: Vec<RouteSpec>,
    /// Every error, as printed: `FILE: route "ALIAS": FIELD "VALUE": reason`.
    pub errors: Vec<String>,
    /// How many inputs were read.
    pub inputs: usize,
}

impl Report {
    /// Adds the routes files; a file with any error contributes errors only, as at run time.
    pub fn add_route_files(&mut self, files: &[PathBuf]) {
        for path in files {
            self.inputs += 1;
            let loaded = routes_file::load(path);
            if loaded.errors.is_empty() {
                self.routes.extend(loaded.routes);
            } else {
                self.errors.extend(loaded.errors.iter().map(|e| e.to_string()));
            }
        }
    }

    /// Adds an error for every pair of routes that would claim the same listen address.
    pub fn add_conflicts(&mut self) {
        for (i, a) in self.routes.iter().enumerate() {
            for b in &self.routes[..i] {
                if a.protocol == b.protocol && overlaps(a, b) {
                    self.errors.push(format!(
                        "{}: route {:?}: listens on {} {}, as route {:?} of {} does",
                        a.source, a.alias, a.protocol, a.listen, b.alias, b.source
                    ));
                }
            }
        }
    }
}

/// Runs the check and prints its report; exit 1 on any error, 2 when given nothing.
pub fn check(args: &CheckArgs) -> ExitCode {
    if args.routes.is_empty() {
        eprintln!("error: nothing to check: give --routes FILE (several allowed)");
        return ExitCode::from(2);
    }
    let mut report = Report::default();
    report.add_route_files(&args.routes);
    report.add_conflicts();

    if !report.routes.is_empty() {
        print!("{}", render(&report.routes));
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if report.errors.is_empty() {
        println!("ok: {} in {}", plural(report.routes.len(), "route"), plural(report.inputs, "file"));
        return ExitCode::SUCCESS;
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    eprintln!("check failed: {} in {}", plural(report.errors.len(), "error"), plural(report.inputs, "file"));
    ExitCode::FAILURE
}

/// Whether two routes of one protocol would claim the same port, as the route table judges.
fn overlaps(a: &RouteSpec, b: &RouteSpec) -> bool {
    let (x, y) = (a.listen, b.listen);
    if x.port() == 0 || x.port() != y.port() {
        return false;
    }
    match (x.ip().is_ipv6(), y.ip().is_ipv6()) {
        (false, false) | (true, true) => x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified(),
        // A dual-stack [::] listener takes the IPv4 port too.
        (true, false) => x.ip().is_unspecified() && a.family != Family::V6,
        (false, true) => y.ip().is_unspecified() && b.family != Family::V6,
    }
}

/// The table of valid routes: ALIAS, PROTO, LISTEN, TARGETS, SOURCE, OPTIONS (non-defaults).
fn render(routes: &[RouteSpec]) -> String {
    let header = ["ALIAS", "PROTO", "LISTEN", "TARGETS", "SOURCE", "OPTIONS"].map(String::from).to_vec();
    let mut lines = vec![header];
    for r in routes {
        let targets: Vec<String> = r.targets.iter().map(|t| t.to_string()).collect();
        let options = options_text(&r.options);
        lines.push(vec![
            r.alias.clone(),
            r.scheme().to_string(),
            r.listen.to_string(),
            targets.join(","),
            r.source.clone(),
            if options.is_empty() { "-".into() } else { options },
        ]);
    }
    let mut widths = vec![0; lines[0].len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `connect_timeout=2s drain_grace=5s`: the options that differ from their defaults, by
/// name, read through the options' serde form so that every option the core gains shows.
fn options_text(options: &RouteOptions) -> String {
    let (Ok(Value::Object(set)), Ok(Value::Object(default))) =
        (serde_json::to_value(options), serde_json::to_value(RouteOptions::default()))
    else {
        return String::new();
    };
    let parts: Vec<String> =
        set.iter().filter(|(k, v)| default.get(*k) != Some(*v)).map(|(k, v)| format!("{k}={}", show(v))).collect();
    parts.join(" ")
}

/// An option's value as a user would write it: `5s` for durations, `off` for none.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "off".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.len() == 2 && o.contains_key("secs") && o.contains_key("nanos") => {
            let secs = o["secs"].as_u64().unwrap_or_default();
            let nanos = o["nanos"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_default();
            humantime::format_duration(std::time::Duration::new(secs, nanos)).to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
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
            "routes:\n  a: {port: 22}\n  b: {port: 22}\n",
            "routes:\n  a: {port: '80:1', scheme: tcp6}\n  b: {port: '80:1', scheme: tcp4}\n",
        ] {
            assert_eq!(report(text).errors, Vec::<String>::new(), "{text}");
        }
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
