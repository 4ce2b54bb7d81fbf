//! The routes file: YAML in, [`RouteSpec`]s or errors out.
//!
//! ```yaml
//! routes:
//!   ssh:
//!     port: 2222:22      # LISTEN:TARGET, or TARGET alone (with a scheme) for an OS-picked listen port
//!     host: 127.0.0.1    # optional; the default target host
//! ```
//!
//! A route with neither `scheme` nor a listen port (`port: 22`) is what GoDoxy serves as an
//! HTTP route, as with Docker labels: it makes no route, and [`Loaded::skipped`] says why, so
//! `dockward check` and the log can tell the user.
//!
//! This module only reads the document's shape (a `routes:` map of alias → map of field →
//! scalar, or a list of scalars for the [`LIST_FIELDS`]). Every field, its name and its
//! value, goes through proxy-core's [`fields`] grammar, the same one Docker labels use, so
//! the two can never drift apart. Errors name the file, the alias and the field; YAML syntax
//! errors carry serde_norway's line and column.

use std::path::Path;

use proxy_core::RouteSpec;
use route_spec::RouteDraft;
use route_spec::fields::{self, PortSpec};
use serde_norway::Value;

use crate::provider_error::ProviderError;

/// The target host of routes that do not set `host`.
pub const DEFAULT_TARGET_HOST: &str = "127.0.0.1";

/// Fields whose value is a list (comma-separated in labels); the routes file also takes a
/// YAML list for them: `allow: [10.0.0.0/8, 192.168.1.5]`.
pub const LIST_FIELDS: &[&str] = &["allow", "deny", "trusted", "host"];

/// The only key allowed at the top of a routes file.
const ROUTES_KEY: &str = "routes";

/// The largest routes file read, in bytes: 2,000 routes take about 100 KB. A larger file
/// (a log or a disk image moved over it, say) is refused before it is parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The deepest nesting of lists and maps a routes file may have. A routes file needs four
/// (`routes` → alias → field → list); YAML parsers take time quadratic in the depth, so a
/// 400 KB file of `[[[[...` would otherwise hold a CPU for minutes.
pub const MAX_DEPTH: usize = 64;

/// The most characters of a file's content quoted in an error about a file that is not a
/// routes file: it may be a secret (an `.env` file or a private key moved over it), and
/// errors are shown by the unauthenticated admin API and logged.
const FRAGMENT_CHARS: usize = 8;

/// What one routes file defines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The routes of every alias without error, in file order.
    pub routes: Vec<RouteSpec>,
    /// Every error found; a file with any error is not applied.
    pub errors: Vec<ProviderError>,
    /// Aliases that make no route although they are valid, with why (GoDoxy's HTTP routes).
    pub skipped: Vec<SkippedRoute>,
}

/// A valid entry of a routes file that makes no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRoute {
    /// The file.
    pub source: String,
    /// The entry's alias.
    pub alias: String,
    /// Why it makes no route, and what to write instead.
    pub reason: String,
}

impl std::fmt::Display for SkippedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: route {:?} makes no route: {}", self.source, self.alias, self.reason)
    }
}

/// Why an entry without `scheme` and without a listen port makes no route: GoDoxy's rule
/// (its `finalize.go`: no scheme, no listen port → HTTP), the same as for Docker labels.
fn http_route_reason(port: PortSpec) -> String {
    let target = port.target;
    format!(
        "no scheme and no listen port (port: {target}) is an HTTP route, as in GoDoxy; for a stream route set \
         scheme: tcp (or udp), or a listen port (port: LISTEN:{target})"
    )
}

impl Loaded {
    fn error(&mut self, source: &str, message: impl Into<String>) {
        self.errors.push(ProviderError::whole(source, message));
    }

    fn route_error(&mut self, source: &str, alias: &str, message: impl Into<String>) {
        self.errors.push(ProviderError::route(source, alias, message));
    }
}

/// Reads and parses the routes file at `path`; the path as given is the routes' source.
pub fn load(path: &Path) -> Loaded {
    let source = path.display().to_string();
    match read(path) {
        Ok(text) => parse(&source, &text),
        Err(message) => {
            let mut loaded = Loaded::default();
            loaded.error(&source, message);
            loaded
        }
    }
}

/// The text of the file at `path`, read up to [`MAX_FILE_BYTES`]; `Err` says why not.
fn read(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("the file is larger than {} MiB; is it a routes file?", MAX_FILE_BYTES / (1024 * 1024)));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {}); is it a routes file?",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parses the text of a routes file named `source`.
pub fn parse(source: &str, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    if text.len() as u64 > MAX_FILE_BYTES {
        loaded.error(
            source,
            format!("the file is larger than {} MiB; is it a routes file?", MAX_FILE_BYTES / (1024 * 1024)),
        );
        return loaded;
    }
    if let Some(line) = too_deep(text, MAX_DEPTH) {
        loaded.error(
            source,
            format!("lists and maps nested more than {MAX_DEPTH} deep (line {line}); a routes file needs 4"),
        );
        return loaded;
    }
    let mut doc: Value = match serde_norway::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            loaded.error(source, format!("invalid YAML: {e}"));
            return loaded;
        }
    };
    if let Err(e) = doc.apply_merge() {
        loaded.error(source, format!("invalid YAML merge (<<): {e}"));
        return loaded;
    }
    let top = match doc {
        Value::Mapping(top) => top,
        // An empty file is more often a file being rewritten than a wish to drop every route.
        Value::Null => {
            loaded.error(source, "the file is empty; write `routes: {}` for a file with no routes");
            return loaded;
        }
        // Never quoted: a file that is one text (an `.env` file, a private key) may be a secret.
        other => {
            let found = match scalar_text(&other) {
                Some(text) => format!("a text of {} bytes, not YAML of routes; is it a routes file?", text.len()),
                None => describe(&other),
            };
            loaded.error(source, format!("expected a `routes:` map at the top, found {found}"));
            return loaded;
        }
    };

    let mut routes = None;
    for (key, value) in top {
        let Some(key) = scalar_text(&key) else {
            loaded.error(source, format!("a top-level key must be a name, found {}", describe(&key)));
            continue;
        };
        if key == ROUTES_KEY {
            routes = Some(value);
        } else {
            let hint = match fields::did_you_mean(&key, [ROUTES_KEY]) {
                Some(hint) => format!(" (did you mean {hint:?}?)"),
                None => format!(" (the only top-level key is {ROUTES_KEY:?})"),
            };
            loaded.error(source, format!("unknown top-level key {}{hint}", fragment(&key)));
        }
    }
    let entries = match routes {
        Some(Value::Mapping(entries)) => entries,
        // `routes:` with nothing under it: a file that defines no routes.
        Some(Value::Null) => return loaded,
        Some(other) => {
            loaded.error(source, format!("`routes` must map each alias to its fields, found {}", describe(&other)));
            return loaded;
        }
        None => {
            if loaded.errors.is_empty() {
                loaded.error(source, "no `routes:` key; write `routes: {}` for a file with no routes");
            }
            return loaded;
        }
    };

    for (alias, body) in entries {
        let Some(alias) = scalar_text(&alias).filter(|a| !a.trim().is_empty()) else {
            loaded.error(source, format!("an alias must be a non-empty name, found {}", describe(&alias)));
            continue;
        };
        let body = match body {
            Value::Mapping(body) => body,
            Value::Null => {
                loaded.route_error(source, &alias, "no fields; every route needs a port");
                continue;
            }
            other => {
                let hint = match scalar_text(&other) {
                    Some(text) => format!("; did you mean `{alias}: {{scheme: tcp, port: {text}}}`?"),
                    None => String::new(),
                };
                loaded.route_error(
                    source,
                    &alias,
                    format!("expected a map of fields (port, scheme, ...), found {}{hint}", describe(&other)),
                );
                continue;
            }
        };
        let errors_before = loaded.errors.len();
        let mut draft = RouteDraft::new(alias.clone());
        for (field, value) in body {
            let field = scalar_text(&field).unwrap_or_else(|| format!("{field:?}"));
            let text = match &value {
                Value::Null => {
                    loaded.route_error(source, &alias, format!("{field}: no value"));
                    continue;
                }
                Value::Sequence(items) if LIST_FIELDS.contains(&field.as_str()) => match list_text(items) {
                    Ok(text) => text,
                    Err(found) => {
                        loaded.route_error(
                            source,
                            &alias,
                            format!("{field}: expected a list of single values, found {found} in the list"),
                        );
                        continue;
                    }
                },
                other => match scalar_text(other) {
                    Some(text) => text,
                    None => {
                        let message = if fields::is_field(&field) {
                            format!("{field}: expected a single value, found {}", describe(other))
                        } else {
                            format!("{field}: {}", fields::unknown_field(&field, "").reason)
                        };
                        loaded.route_error(source, &alias, message);
                        continue;
                    }
                },
            };
            if let Err(e) = draft.set(&field, &text) {
                loaded.route_error(source, &alias, e.to_string());
            }
        }
        if loaded.errors.len() > errors_before {
            continue;
        }
        if !draft.has_port() {
            loaded.route_error(source, &alias, "port: missing; every route needs a port (LISTEN:TARGET or TARGET)");
            continue;
        }
        if let Some(port) = draft.port.filter(|p| draft.scheme.is_none() && p.listen == 0) {
            let reason = http_route_reason(port);
            loaded.skipped.push(SkippedRoute { source: source.to_string(), alias, reason });
            continue;
        }
        match draft.build(source, DEFAULT_TARGET_HOST) {
            Ok(specs) => loaded.routes.extend(specs),
            Err(mut e) => {
                // The core's validation text starts with `route "ALIAS": `, which our
                // message already says.
                if let Some(reason) = e.reason.strip_prefix(&format!("route {alias:?}: ")) {
                    e.reason = reason.to_string();
                }
                loaded.route_error(source, &alias, e.to_string());
            }
        }
    }
    loaded
}

/// The text of a YAML list for a field of [`LIST_FIELDS`]: its items joined with commas,
/// as a label would write them (`[10.0.0.0/8, 192.168.1.5]` → `10.0.0.0/8,192.168.1.5`).
/// An empty list is the empty text, the same as leaving the field out. `Err` describes the
/// first item that is not a single value.
fn list_text(items: &[Value]) -> Result<String, String> {
    let mut texts = Vec::with_capacity(items.len());
    for item in items {
        texts.push(scalar_text(item).ok_or_else(|| describe(item))?);
    }
    Ok(texts.join(","))
}

/// The text of a scalar as the field grammar reads it; `None` for lists, maps and tags.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// `text` quoted whole when it looks like a key someone typed (a short name), else only its
/// first few characters: a long or odd key may be a line of a secret file (`root:$6$...`).
fn fragment(text: &str) -> String {
    let name_like = text.len() <= 32 && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if name_like {
        return format!("{text:?}");
    }
    let shown: String = text.chars().take(FRAGMENT_CHARS).collect();
    format!("{shown:?}… ({} bytes)", text.len())
}

/// The line (from 1) where `text`'s lists and maps nest deeper than `max`, or `None`.
///
/// A quick over-estimate made before parsing, so that a hostile file costs a linear scan:
/// each `[`/`{` opens a level, each indentation deeper than the line above and each leading
/// `- `/`? ` (compact nesting, `- - - x`) opens one. Quoted text and comments are skipped.
fn too_deep(text: &str, max: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut flow, mut line) = (0usize, 1usize);
    let mut indents: Vec<usize> = Vec::new();
    let mut i = 0;
    // Whether the previous byte lets a quote or a bracket start a token.
    let mut token_start = true;
    let mut line_start = true;
    while i < bytes.len() {
        if std::mem::take(&mut line_start) && flow == 0 {
            let indent = bytes[i..].iter().take_while(|&&b| b == b' ').count();
            let rest = &bytes[i + indent..];
            if !(rest.is_empty() || rest[0] == b'\n' || rest[0] == b'#' || rest.starts_with(b"\r\n")) {
                while indents.last().is_some_and(|&top| top > indent) {
                    indents.pop();
                }
                if indents.last().is_none_or(|&top| top < indent) {
                    indents.push(indent);
                }
                let mut compact = 0;
                let mut j = 0;
                while j + 1 < rest.len() && matches!(rest[j], b'-' | b'?') && matches!(rest[j + 1], b' ' | b'\t') {
                    compact += 1;
                    j += 2;
                    while j < rest.len() && rest[j] == b' ' {
                        j += 1;
                    }
                }
                if indents.len() + compact > max {
                    return Some(line);
                }
            }
        }
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                line_start = true;
            }
            b'#' if token_start => {
                // A comment runs to the end of the line.
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' if token_start => {
                // Quoted text, possibly over several lines: `\` escapes in "..", `''` in '..'.
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\n' => line += 1,
                        b'\\' if b == b'"' => i += 1,
                        q if q == b && b == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == b => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' if token_start => {
                flow += 1;
                if indents.len() + flow > max {
                    return Some(line);
                }
            }
            b']' | b'}' if flow > 0 => flow -= 1,
            _ => {}
        }
        token_start = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':' | b'-' | b'?');
        i += 1;
    }
    None
}

/// "a list", "a map", "\"22\"": what a value is, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a map".into(),
        Value::Tagged(t) => format!("a tagged value ({})", t.tag),
        scalar => format!("{:?}", scalar_text(scalar).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proxy_core::{Family, Protocol, Target};

    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let loaded = parse("r.yml", text);
        assert!(loaded.routes.is_empty() || !loaded.errors.is_empty(), "expected errors: {loaded:?}");
        loaded.errors.iter().map(|e| e.to_string()).collect()
    }

    fn routes(text: &str) -> Vec<RouteSpec> {
        let loaded = parse("r.yml", text);
        assert_eq!(loaded.errors, vec![], "unexpected errors");
        loaded.routes
    }

    #[test]
    fn a_listen_target_pair_becomes_a_tcp_route_to_localhost() {
        let r = routes("routes:\n  ssh:\n    port: 2222:22\n");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].alias, "ssh");
        assert_eq!(r[0].source, "r.yml");
        assert_eq!(r[0].protocol, Protocol::Tcp);
        assert_eq!(r[0].listen, "0.0.0.0:2222".parse().unwrap());
        assert_eq!(r[0].targets, vec![Target::new("127.0.0.1", 22)]);
    }

    #[test]
    fn a_single_port_with_a_scheme_is_the_target_and_the_os_picks_the_listen_port() {
        let r = routes("routes:\n  ssh:\n    scheme: tcp\n    port: 22\n    bind: 127.0.0.1\n");
        assert_eq!(r[0].listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(r[0].targets, vec![Target::new("127.0.0.1", 22)]);
        let r = routes("routes:\n  dns: {scheme: udp, port: '0:53'}\n");
        assert_eq!((r[0].protocol, r[0].listen), (Protocol::Udp, "0.0.0.0:0".parse().unwrap()));
    }

    #[test]
    fn no_scheme_and_no_listen_port_is_godoxys_http_route_and_makes_no_route() {
        let loaded = parse("r.yml", "routes:\n  web: {port: 8080}\n  zero: {port: '0:80'}\n  ssh: {port: '2222:22'}\n");
        assert_eq!(loaded.errors, vec![]);
        let aliases: Vec<&str> = loaded.routes.iter().map(|r| r.alias.as_str()).collect();
        assert_eq!(aliases, ["ssh"], "a listen port without scheme still means TCP");
        let skipped: Vec<String> = loaded.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "r.yml: route \"web\" makes no route: no scheme and no listen port (port: 8080) is an HTTP route, as in \
                 GoDoxy; for a stream route set scheme: tcp (or udp), or a listen port (port: LISTEN:8080)",
                "r.yml: route \"zero\" makes no route: no scheme and no listen port (port: 80) is an HTTP route, as in \
                 GoDoxy; for a stream route set scheme: tcp (or udp), or a listen port (port: LISTEN:80)",
            ]
        );
        // A bad field is still an error, whatever the scheme rule would say.
        assert_eq!(errors("routes:\n  web: {port: 8080, bnd: x}\n").len(), 1);
    }

    #[test]
    fn every_field_of_the_grammar_is_read_with_yaml_scalars_as_text() {
        let r = routes(
            "routes:
  dns:
    scheme: udp6
    bind: '::1'
    host: resolver.internal
    port: 5353:53
    connect_timeout: 2s
    tcp_idle_timeout: 1h
    udp_idle_timeout: 30s
    max_connections: 10
    max_udp_sessions: 100
    drain_grace: 5s
",
        );
        let spec = &r[0];
        assert_eq!((spec.protocol, spec.family), (Protocol::Udp, Family::V6));
        assert_eq!(spec.listen, "[::1]:5353".parse().unwrap());
        assert_eq!(spec.targets, vec![Target::new("resolver.internal", 53)]);
        assert_eq!(spec.options.connect_timeout, Duration::from_secs(2));
        assert_eq!(spec.options.tcp_idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(spec.options.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!(spec.options.max_connections, 10);
        assert_eq!(spec.options.max_udp_sessions, 100);
        assert_eq!(spec.options.drain_grace, Duration::from_secs(5));
    }

    #[test]
    fn routes_keep_file_order() {
        let r = routes("routes:\n  zeta: {port: '1:1'}\n  alpha: {port: '2:2'}\n  mid: {port: '3:3'}\n");
        let aliases: Vec<&str> = r.iter().map(|s| s.alias.as_str()).collect();
        assert_eq!(aliases, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn an_explicitly_empty_routes_map_defines_no_routes() {
        assert_eq!(routes("routes: {}\n"), vec![]);
        assert_eq!(routes("routes:\n"), vec![]);
    }

    #[test]
    fn merge_keys_share_fields_between_routes() {
        let r = routes(
            "routes:\n  a: &common {scheme: tcp, port: 1, bind: 127.0.0.1}\n  b:\n    <<: *common\n    port: 2\n",
        );
        assert_eq!(r[1].listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(r[1].targets[0].port, 2);
    }

    #[test]
    fn errors_name_the_file_the_alias_the_field_and_the_value() {
        assert_eq!(
            errors("routes:\n  ssh:\n    port: 22:22:22\n"),
            [r#"r.yml: route "ssh": port "22:22:22": too many ':'; expected LISTEN:TARGET or TARGET"#]
        );
        assert_eq!(
            errors("routes:\n  ssh:\n    prot: 22\n"),
            [r#"r.yml: route "ssh": prot "22": unknown field (did you mean "port"?)"#]
        );
        assert_eq!(
            errors("routes:\n  ssh:\n    port: 22\n    scheme: tcpp\n"),
            [r#"r.yml: route "ssh": scheme "tcpp": unknown scheme (did you mean "tcp"?)"#]
        );
    }

    #[test]
    fn every_error_of_the_file_is_reported_and_none_of_its_routes_is_kept_apart() {
        let loaded = parse("r.yml", "routes:\n  good: {port: '1:1'}\n  bad: {port: abc, max_connections: -1}\n");
        assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
        assert!(loaded.errors.iter().all(|e| e.alias.as_deref() == Some("bad")));
        // The good alias parses; whether the file is applied is the provider's decision.
        assert_eq!(loaded.routes.len(), 1);
    }

    #[test]
    fn unknown_top_level_keys_are_errors_with_a_hint() {
        assert_eq!(
            errors("rutes:\n  ssh: {port: 22}\n"),
            [r#"r.yml: unknown top-level key "rutes" (did you mean "routes"?)"#]
        );
        assert_eq!(
            errors("routes: {}\nversion: 2\n"),
            [r#"r.yml: unknown top-level key "version" (the only top-level key is "routes")"#]
        );
    }

    #[test]
    fn shape_errors_say_what_was_found() {
        assert_eq!(
            errors("routes:\n  ssh: 22\n"),
            [
                r#"r.yml: route "ssh": expected a map of fields (port, scheme, ...), found "22"; did you mean `ssh: {scheme: tcp, port: 22}`?"#
            ]
        );
        assert_eq!(
            errors("routes:\n  ssh: {port: [22]}\n"),
            [r#"r.yml: route "ssh": port: expected a single value, found a list"#]
        );
        assert_eq!(errors("routes:\n  ssh: {port: 22, host: }\n"), [r#"r.yml: route "ssh": host: no value"#]);
        assert_eq!(errors("routes:\n  ssh:\n"), [r#"r.yml: route "ssh": no fields; every route needs a port"#]);
        assert_eq!(
            errors("routes:\n  ssh: {host: db}\n"),
            [r#"r.yml: route "ssh": port: missing; every route needs a port (LISTEN:TARGET or TARGET)"#]
        );
        assert_eq!(errors("- a\n- b\n"), [r#"r.yml: expected a `routes:` map at the top, found a list"#]);
        assert_eq!(errors("routes: [ssh]\n"), [r#"r.yml: `routes` must map each alias to its fields, found a list"#]);
    }

    #[test]
    fn address_lists_may_be_yaml_lists_or_comma_separated_text() {
        let listed = routes(
            "routes:
  web:
    port: 8080:80
    host: [10.0.0.2, 10.0.0.3]
    allow: [10.0.0.0/8, 192.168.1.5]
    deny: ['10.0.0.9']
    trusted: []
",
        );
        let text = routes(
            "routes:
  web:
    port: 8080:80
    host: 10.0.0.2, 10.0.0.3
    allow: 10.0.0.0/8, 192.168.1.5
    deny: 10.0.0.9
",
        );
        assert_eq!(listed, text);
        let options = &listed[0].options;
        assert_eq!(options.allow, ["10.0.0.0/8".parse().unwrap(), "192.168.1.5/32".parse().unwrap()]);
        assert_eq!(options.deny, ["10.0.0.9/32".parse().unwrap()]);
        assert!(options.trusted.is_empty(), "an empty list is the field left out");
        assert_eq!(listed.iter().flat_map(|r| r.targets.iter()).count(), 2);
    }

    #[test]
    fn list_items_must_be_single_values_and_addresses() {
        assert_eq!(
            errors("routes:\n  web: {port: 80, allow: [10.0.0.0/8, [192.168.1.5]]}\n"),
            [r#"r.yml: route "web": allow: expected a list of single values, found a list in the list"#]
        );
        assert_eq!(
            errors("routes:\n  web: {port: 80, deny: [10.0.0.0/33]}\n"),
            [
                r#"r.yml: route "web": deny "10.0.0.0/33": "10.0.0.0/33" is not an IP address or CIDR network (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)"#
            ]
        );
        assert_eq!(
            errors("routes:\n  web: {port: [80, 81]}\n"),
            [r#"r.yml: route "web": port: expected a single value, found a list"#]
        );
    }

    #[test]
    fn list_fields_are_fields() {
        for f in LIST_FIELDS {
            assert!(fields::is_field(f), "{f}");
        }
    }

    #[test]
    fn whole_route_checks_name_the_route_once() {
        assert_eq!(
            errors("routes:\n  dns: {scheme: udp6, bind: 0.0.0.0, port: 53}\n"),
            [r#"r.yml: route "dns": bind "0.0.0.0": scheme udp6 but bind address 0.0.0.0 is IPv4"#]
        );
    }

    #[test]
    fn an_empty_file_is_an_error_not_an_empty_route_set() {
        for text in ["", "\n", "# only a comment\n"] {
            assert_eq!(
                errors(text),
                ["r.yml: the file is empty; write `routes: {}` for a file with no routes"],
                "{text:?}"
            );
        }
    }

    #[test]
    fn yaml_syntax_errors_carry_the_line() {
        let e = errors("routes:\n  ssh:\n    port: 22\n   host: x\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("r.yml: invalid YAML: "), "{}", e[0]);
        assert!(e[0].contains("line 4"), "{}", e[0]);
    }

    #[test]
    fn duplicate_aliases_are_an_error() {
        let e = errors("routes:\n  ssh: {port: 1}\n  ssh: {port: 2}\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("duplicate"), "{}", e[0]);
    }

    #[test]
    fn the_readme_field_table_is_generated_from_the_grammar() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let (start, end) = ("<!-- fields:start -->\n", "<!-- fields:end -->");
        let from = readme.find(start).expect("README has the fields:start marker") + start.len();
        let to = readme.find(end).expect("README has the fields:end marker");
        let mut want = String::from("| Field | Default | What it does |\n| --- | --- | --- |\n");
        for f in fields::FIELDS {
            want.push_str(&format!("| `{}` | {} | {} |\n", f.name, f.default_text(), f.help));
        }
        if std::env::var_os("UPDATE_README").is_some() {
            let updated = format!("{}{want}{}", &readme[..from], &readme[to..]);
            std::fs::write(path, updated).expect("write README.md");
            return;
        }
        assert_eq!(
            &readme[from..to],
            want,
            "README.md's field table is out of date; rerun with UPDATE_README=1 to rewrite it as:\n{want}"
        );
    }

    #[test]
    fn a_file_that_is_not_yaml_of_routes_is_never_quoted() {
        let secrets = [
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nDB_PASS=hunter2\n",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXQAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "root:$6$Zx8ke3Rq$ShadowHashShadowHashShadowHash/abcdefgh:19000:0:99999:7:::\n",
            "root: $6$Zx8ke3Rq$ShadowHashShadowHashShadowHash/abcdefgh\n",
            "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nroot: $6$Zx8ke3Rq$ShadowHash\n",
        ];
        for text in secrets {
            let errors = errors(text);
            assert_eq!(errors.len(), 1, "{errors:?}");
            for word in ["hunter2", "wJalrXUtnFEMI", "c2VjcmV0", "ShadowHash", "Zx8ke3Rq", "AKIAIOSFODNN7"] {
                assert!(!errors[0].contains(word), "{word} leaked: {}", errors[0]);
            }
        }
        assert_eq!(
            errors("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\n"),
            [
                "r.yml: expected a `routes:` map at the top, found a text of 43 bytes, not YAML of routes; is it a routes file?"
            ]
        );
        assert_eq!(
            errors("root:$6$Zx8ke3Rq$ShadowHash: x\n"),
            [r#"r.yml: unknown top-level key "root:$6$"… (27 bytes) (the only top-level key is "routes")"#]
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing_and_quickly() {
        let started = std::time::Instant::now();
        for text in [
            format!("routes: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)),
            format!("routes: {}\n", "{a: ".repeat(200_000)),
            format!("routes:\n{}x\n", "- ".repeat(200_000)),
            format!("{}x\n", "? ".repeat(200_000)),
            (0..100).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect(),
        ] {
            let e = errors(&text);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with("r.yml: lists and maps nested more than 64 deep (line "), "{}", e[0]);
        }
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        // Brackets in quotes and comments are text.
        let e = errors(&format!(
            "routes: # {open}\n  a: {{port: 1, host: \"{open}\"}}\n  b: {{port: 2, host: '{open}'}}\n",
            open = "[".repeat(100)
        ));
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.contains("is not a host name")), "{e:?}");
        let depth_60 = format!("routes: {{}}\nx: {}{}\n", "[".repeat(60), "]".repeat(60));
        assert_eq!(errors(&depth_60), [r#"r.yml: unknown top-level key "x" (the only top-level key is "routes")"#]);
    }

    #[test]
    fn a_file_too_large_or_not_text_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yml");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = load(&big).errors[0].to_string();
        assert_eq!(e, format!("{}: the file is larger than 8 MiB; is it a routes file?", big.display()));
        let binary = dir.path().join("bin.yml");
        std::fs::write(&binary, b"routes: {}\n\xff\xfe").unwrap();
        let e = load(&binary).errors[0].to_string();
        assert_eq!(
            e,
            format!(
                "{}: the file is not UTF-8 text (invalid byte at offset 11); is it a routes file?",
                binary.display()
            )
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let loaded = load(Path::new("/nonexistent/routes.yml"));
        assert_eq!(loaded.errors.len(), 1);
        let e = loaded.errors[0].to_string();
        assert!(e.starts_with("/nonexistent/routes.yml: cannot read the file: "), "{e}");
    }
}
