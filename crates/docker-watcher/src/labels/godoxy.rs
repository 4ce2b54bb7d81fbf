//! GoDoxy's label conventions, applied to a label map before [`crate::labels`]' grammar reads it.
//!
//! A container labelled for GoDoxy must work unchanged, and dockward beside GoDoxy must leave
//! GoDoxy's HTTP routes alone. GoDoxy reads more than dockward's plain grammar; this module
//! restates what its code does (`internal/docker/label.go`, `internal/route/provider/docker.go`,
//! `internal/route/route.go`, `internal/routevalidate/finalize.go`,
//! `internal/serialization`) as rewrites of the label map, and as what becomes of each
//! alias afterwards. Pure: no I/O.
//!
//! Before parsing ([`prepass`]):
//! - a bare `proxy=…` label is an error, as in GoDoxy;
//! - keys are read case-insensitively, and field names ignore `_` too (`proxy.ssh.Port`,
//!   `proxy.*.MaxConnsPerHost`), as GoDoxy's deserializer matches them; aliases are trimmed
//!   and lower-cased, as GoDoxy's finalize does;
//! - `proxy.$N.<field>` is `proxy.#N.<field>`;
//! - inline YAML: `proxy.<alias>`, `proxy.*`, `proxy.#N` (or `proxy.<alias>.healthcheck`)
//!   holding a YAML mapping of fields is flattened into one label per field; a label that
//!   sets the same field wins over the mapping. A value that is not a mapping is an error for
//!   that alias only (`proxy.*`: a warning; GoDoxy ignores it);
//! - shortcut labels (`proxy.ports`, `proxy.schemes`, … [`SHORTCUTS`]) fill `proxy.#1.<field>`,
//!   `proxy.#2.<field>`, … by position; a shortcut whose field is also set by a full label
//!   is an error, and the shortcut is dropped;
//! - `port: :1234` is `0:1234` (the OS picks the listen port);
//! - an alias without `port` gets the container's preferred exposed port, and one without
//!   `scheme` is UDP when its target port is exposed over UDP only (`labels::ports`);
//! - every rewritten label remembers how it was written (`labels::origin`), so an error
//!   names the label, field and value the user wrote;
//! - GoDoxy's `healthcheck.interval` and `healthcheck.timeout` are `health_interval` and
//!   `health_timeout`; GoDoxy's other fields ([`GODOXY_ONLY_FIELDS`]) are dropped with a DEBUG
//!   note; `agent` and `tls_termination: true` are errors naming what is unsupported.
//!
//! After parsing ([`Prepassed::finish`]):
//! - an alias without `scheme` whose port has no listen side (`8080`, `:8080`) is an HTTP
//!   route in GoDoxy: no dockward route ([`HTTP_ROUTE`]);
//! - aliases ending in `-old` or starting with `x-`, and every alias of a container whose name
//!   starts with `buildx_`, are excluded, as GoDoxy excludes them.

use std::collections::{BTreeMap, BTreeSet};

use route_spec::fields;
use tracing::debug;

use super::keys::{IDLE_LABELS, IGNORED_CONTAINER_LABELS, LABEL_PREFIX};
use super::model::{ContainerRoutes, LabelError, SkippedAlias, Subject, has_proxy_labels};
use super::origin::{Origin, restore};
use super::ports::{DefaultScheme, ExposedPort, default_port, preferred_port, udp_only};

/// Runs `parse` (the label grammar) with GoDoxy's conventions: the labels go through
/// [`prepass`] first, and the result through [`Prepassed::finish`].
pub(crate) fn with_conventions(
    subject: &Subject<'_>,
    parse: impl FnOnce(&Subject<'_>) -> ContainerRoutes,
) -> ContainerRoutes {
    if !has_proxy_labels(subject.labels) {
        return parse(subject);
    }
    let pre = prepass(subject.name, subject.labels, subject.exposed, subject.image);
    let out = {
        let rewritten = Subject { labels: &pre.labels, ..*subject };
        parse(&rewritten)
    };
    pre.finish(out)
}

/// Why an alias without `scheme` and without listen port makes no route.
pub const HTTP_ROUTE: &str = "HTTP route (GoDoxy serves it); no stream route";

/// GoDoxy's shortcut labels: `proxy.<label>=A,B,C` sets `<field>` of the 1st, 2nd, 3rd alias
/// (GoDoxy's `labelScalarShortcuts`, `internal/docker/label.go`).
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("ports", "port"),
    ("protos", "scheme"),
    ("protocols", "scheme"),
    ("schemes", "scheme"),
    ("hosts", "host"),
    ("binds", "bind"),
    ("roots", "root"),
    ("spas", "spa"),
    ("indexes", "index"),
    ("no_tls_verifies", "no_tls_verify"),
    ("response_header_timeouts", "response_header_timeout"),
    ("max_conns_per_hosts", "max_conns_per_host"),
    ("disable_compressions", "disable_compression"),
    ("ssl_server_names", "ssl_server_name"),
    ("ssl_trusted_certificates", "ssl_trusted_certificate"),
    ("ssl_certificates", "ssl_certificate"),
    ("ssl_certificate_keys", "ssl_certificate_key"),
    ("agents", "agent"),
    ("inbound_mtls_profiles", "inbound_mtls_profile"),
    ("rule_files", "rule_file"),
    ("tls_terminations", "tls_termination"),
    ("proxy_protocol_headers", "relay_proxy_protocol_header"),
];

/// Fields of GoDoxy's route type (`internal/route/route.go` `Route`, with its embedded
/// `types.HTTPConfig`) that have no meaning for dockward: labels setting them, or their
/// sub-keys, are dropped with a DEBUG note. The fields both know (`scheme`, `host`, `port`,
/// `bind`, `relay_proxy_protocol_header`) are dockward fields; `healthcheck`, `agent` and
/// `tls_termination` are handled on their own.
pub const GODOXY_ONLY_FIELDS: &[&str] = &[
    "alias",
    "root",
    "spa",
    "index",
    "no_tls_verify",
    "response_header_timeout",
    "max_conns_per_host",
    "disable_compression",
    "ssl_server_name",
    "ssl_trusted_certificate",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "inbound_mtls_profile",
    "rules",
    "rule_file",
    "load_balance",
    "middlewares",
    "homepage",
    "access_log",
    "proxmox",
    "idlewatcher",
];

/// GoDoxy's route fields handled here rather than dropped.
const GODOXY_SPECIAL_FIELDS: &[&str] = &["healthcheck", "agent", "tls_termination"];

/// Sub-fields of GoDoxy's `healthcheck` (`internal/health/config.go`), `disabled` being an
/// alias of `disable`.
const HEALTHCHECK_FIELDS: &[&str] = &["disable", "disabled", "use_get", "path", "interval", "timeout", "retries"];

/// `proxy.<name>` labels that are the container's, not an alias's: dockward's own and
/// GoDoxy's idle-watcher ones ([`IGNORED_CONTAINER_LABELS`]).
fn container_wide(name: &str) -> bool {
    ["aliases", "exclude", "network", "swarm_target"].contains(&name)
        || IGNORED_CONTAINER_LABELS.contains(&name)
        || IDLE_LABELS.contains(&name)
}

/// The label map rewritten into dockward's grammar, and what to do with the parse result.
#[derive(Debug, Default)]
pub(crate) struct Prepassed {
    /// The labels to parse.
    pub(crate) labels: BTreeMap<String, String>,
    errors: Vec<LabelError>,
    /// Aliases whose route an error above breaks; `*` for all.
    broken: BTreeSet<String>,
    /// Excluded aliases, with why.
    excluded: BTreeMap<String, String>,
    /// Aliases GoDoxy serves as HTTP routes.
    http: BTreeSet<String>,
    /// Set when the whole container is excluded, with why.
    container_excluded: Option<String>,
    /// Rewritten key → the label as written, so errors name the label the user wrote.
    origins: BTreeMap<String, Origin>,
}

/// Lower-case and without `_`: how GoDoxy's deserializer compares field names.
fn squash(name: &str) -> String {
    name.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect()
}

/// Every field name known to dockward or GoDoxy, in canonical spelling; GoDoxy's first, so
/// `HealthCheck` is GoDoxy's `healthcheck`, not dockward's `health_check`.
fn known_fields() -> impl Iterator<Item = &'static str> {
    GODOXY_SPECIAL_FIELDS
        .iter()
        .copied()
        .chain(GODOXY_ONLY_FIELDS.iter().copied())
        .chain(fields::FIELDS.iter().map(|f| f.name))
}

/// The canonical spelling of a field path: its first segment (and a `healthcheck`
/// sub-field) matched the way GoDoxy matches them; unknown names are only lower-cased.
fn canonical_field(path: &str) -> String {
    let path = path.trim().to_ascii_lowercase();
    let (head, tail) = match path.split_once('.') {
        Some((h, t)) => (h.to_string(), Some(t.to_string())),
        None => (path.clone(), None),
    };
    let head = if known_fields().any(|k| k == head) {
        head
    } else {
        known_fields().find(|k| squash(k) == squash(&head)).map(str::to_string).unwrap_or(head)
    };
    match tail {
        None => head,
        Some(tail) if head == "healthcheck" => {
            let (sub, rest) = tail.split_once('.').map_or((tail.as_str(), None), |(s, r)| (s, Some(r)));
            let sub = HEALTHCHECK_FIELDS.iter().find(|k| squash(k) == squash(sub)).copied().unwrap_or(sub);
            match rest {
                Some(rest) => format!("{head}.{sub}.{rest}"),
                None => format!("{head}.{sub}"),
            }
        }
        Some(tail) => format!("{head}.{tail}"),
    }
}

/// The aliases a `proxy.<selector>` key part stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sel {
    All,
    One(String),
}

/// Splits `rest` (after `proxy.`) into its selector and field, as [`crate::labels`] does:
/// `*.`, `#N.`, the longest listed alias, else the first segment.
fn split_key(rest: &str, listed: &[String]) -> Option<(Sel, String)> {
    if let Some(field) = rest.strip_prefix("*.") {
        return Some((Sel::All, field.to_string()));
    }
    if let Some(indexed) = rest.strip_prefix('#') {
        let (n, field) = indexed.split_once('.')?;
        let alias = n.parse::<usize>().ok().and_then(|i| i.checked_sub(1)).and_then(|i| listed.get(i))?;
        return Some((Sel::One(alias.clone()), field.to_string()));
    }
    let by_listed = listed
        .iter()
        .filter(|a| rest.len() > a.len() + 1 && rest.starts_with(a.as_str()) && rest[a.len()..].starts_with('.'))
        .max_by_key(|a| a.len());
    if let Some(alias) = by_listed {
        return Some((Sel::One(alias.clone()), rest[alias.len() + 1..].to_string()));
    }
    let (alias, field) = rest.split_once('.')?;
    Some((Sel::One(alias.to_string()), field.to_string()))
}

/// The selector part of `rest` when it has no field: `app`, `*`, `#1`.
fn is_bare_selector(rest: &str, listed: &[String]) -> bool {
    !rest.is_empty()
        && !container_wide(rest)
        && !SHORTCUTS.iter().any(|(s, _)| *s == rest)
        && !fields::is_field(rest)
        && (!rest.contains('.') || listed.iter().any(|a| a == rest))
}

/// Flattens a YAML mapping into `prefix.key = scalar` pairs; `None` when `text` is not one.
fn flatten_yaml(text: &str) -> Option<Vec<(String, String)>> {
    let value: serde_norway::Value = serde_norway::from_str(&text.replace('\t', "  ")).ok()?;
    let serde_norway::Value::Mapping(map) = value else { return None };
    let mut out = Vec::new();
    flatten_into("", &serde_norway::Value::Mapping(map), &mut out);
    Some(out)
}

fn scalar_text(value: &serde_norway::Value) -> String {
    use serde_norway::Value;
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(", "),
        Value::Mapping(_) => String::new(),
        Value::Tagged(t) => scalar_text(&t.value),
    }
}

fn flatten_into(prefix: &str, value: &serde_norway::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_norway::Value::Mapping(map) => {
            for (k, v) in map {
                let k = scalar_text(k);
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten_into(&key, v, out);
            }
        }
        serde_norway::Value::Tagged(t) => flatten_into(prefix, &t.value, out),
        other => out.push((prefix.to_string(), scalar_text(other))),
    }
}

/// `:1234` (GoDoxy: the OS picks the listen port) in dockward's spelling, `0:1234`.
fn port_value(value: &str) -> String {
    match value.trim().strip_prefix(':') {
        Some(target) if !target.trim().is_empty() && target.trim().bytes().all(|b| b.is_ascii_digit()) => {
            format!("0:{}", target.trim())
        }
        _ => value.to_string(),
    }
}

/// True when `port` names a target port only (`8080`, `:8080`, `0:8080`).
fn has_no_listen_port(port: &str) -> bool {
    let digits = |s: &str| !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit());
    match port.trim().split(':').collect::<Vec<_>>().as_slice() {
        [target] => digits(target),
        [listen, target] => (listen.trim().is_empty() || listen.trim() == "0") && digits(target),
        _ => false,
    }
}

/// Rewrites `labels` (of the container or service `name`) into dockward's grammar; see the
/// module documentation.
///
/// `exposed` are the container's ports: an alias without `port` takes the one GoDoxy would
/// pick, and one without `scheme` is UDP when its target port is exposed over UDP only.
pub(crate) fn prepass(
    name: &str,
    labels: &BTreeMap<String, String>,
    exposed: &[ExposedPort],
    image: &str,
) -> Prepassed {
    let mut pre = Prepassed::default();
    if name.starts_with("buildx_") {
        pre.container_excluded = Some("the container is a Docker buildx builder (buildx_…); GoDoxy skips it".into());
    }
    // Pass 1: keys lower-cased, $N as #N, container-wide labels as they are.
    let mut flat: Vec<(String, String, Origin)> = Vec::new(); // (rest, value, as written)
    let mut shortcuts: Vec<(String, &str, String)> = Vec::new(); // (key, field, value)
    let mut listed: Vec<String> = Vec::new();
    for (key, value) in labels {
        if key == "proxy" {
            pre.errors.push(LabelError::label(
                None,
                key,
                value,
                "a bare proxy label means nothing (GoDoxy rejects it too); expected proxy.<alias>.<field>",
            ));
            continue;
        }
        let Some(rest) = key.strip_prefix(LABEL_PREFIX) else {
            pre.labels.insert(key.clone(), value.clone());
            continue;
        };
        let mut rest = rest.to_ascii_lowercase();
        if let Some(r) = rest.strip_prefix('$') {
            rest = format!("#{r}");
        }
        if rest == "aliases" {
            let aliases: Vec<String> = value
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|a| !a.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            listed = aliases;
            // Lower-cased in place: the grammar splits and trims it, and errors show it as written.
            pre.labels.insert(format!("{LABEL_PREFIX}aliases"), value.to_ascii_lowercase());
            pre.origins.insert(format!("{LABEL_PREFIX}aliases"), Origin::whole(key, value));
            continue;
        }
        if container_wide(&rest) {
            pre.labels.insert(format!("{LABEL_PREFIX}{rest}"), value.clone());
            pre.origins.insert(format!("{LABEL_PREFIX}{rest}"), Origin::whole(key, value));
            continue;
        }
        if let Some((_, field)) = SHORTCUTS.iter().find(|(s, _)| *s == rest) {
            shortcuts.push((key.clone(), field, value.clone()));
            continue;
        }
        flat.push((rest, value.clone(), Origin::whole(key, value)));
    }
    if listed.is_empty() && !labels.contains_key(&format!("{LABEL_PREFIX}aliases")) {
        let lower = name.trim().to_ascii_lowercase();
        if lower != name {
            pre.labels.insert(format!("{LABEL_PREFIX}aliases"), lower.clone());
        }
        listed.push(lower);
    }

    // Pass 2: inline YAML mappings flattened; flat labels win over them.
    let mut entries: BTreeMap<String, (String, Origin)> = BTreeMap::new(); // rest → (value, as written)
    let mut inline: Vec<(String, String, Origin)> = Vec::new();
    for (rest, value, origin) in flat {
        let selector_only = is_bare_selector(&rest, &listed);
        let object_field =
            split_key(&rest, &listed).is_some_and(|(_, f)| canonical_field(&f) == "healthcheck" && value.contains(':'));
        if selector_only || object_field {
            match flatten_yaml(&value) {
                Some(pairs) => {
                    for (k, v) in pairs {
                        let field = origin.field(&k, &v);
                        inline.push((format!("{rest}.{k}"), v, field));
                    }
                }
                // A plain word (`proxy.alias=c`) is left to the label grammar and its hints.
                None if !value.contains(':') && !value.contains('\n') => {
                    insert_entry(&mut pre, &mut entries, &listed, rest, value, origin, false)
                }
                None if rest == "*" => pre
                    .errors
                    .push(origin.error(None, "warning: not a YAML mapping of fields; ignored (GoDoxy ignores it too)")),
                None => {
                    let alias = split_key(&format!("{rest}.x"), &listed).map(|(s, _)| s);
                    let alias = match alias {
                        Some(Sel::One(a)) => a,
                        _ => rest.clone(),
                    };
                    pre.errors.push(origin.error(
                        Some(&alias),
                        "not a YAML mapping of fields (inline YAML route); this alias makes no route",
                    ));
                    pre.broken.insert(alias);
                }
            }
            continue;
        }
        insert_entry(&mut pre, &mut entries, &listed, rest, value, origin, false);
    }
    for (rest, value, origin) in inline {
        insert_entry(&mut pre, &mut entries, &listed, rest, value, origin, true);
    }

    // Pass 3: shortcuts fill #1, #2, … unless a full label sets the field.
    for (key, field, value) in shortcuts {
        let conflicts: Vec<&str> = entries
            .iter()
            .filter(|(rest, _)| split_key(rest, &listed).is_some_and(|(_, f)| f == field))
            .map(|(_, (_, o))| o.key.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !conflicts.is_empty() {
            pre.errors.push(LabelError::label(
                None,
                &key,
                &value,
                format!("shortcut for {field} conflicts with {}; set {field} one way", conflicts.join(", ")),
            ));
            continue;
        }
        let whole = Origin::whole(&key, &value);
        for (i, item) in value.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
            entries.insert(format!("#{}.{field}", i + 1), (item.to_string(), whole.item(i + 1, item)));
        }
    }

    // Pass 4: GoDoxy's fields mapped, dropped or refused.
    for (rest, (value, origin)) in entries {
        let rewritten = format!("{LABEL_PREFIX}{rest}");
        let Some((sel, field)) = split_key(&rest, &listed) else {
            pre.labels.insert(rewritten.clone(), value);
            pre.origins.insert(rewritten, origin);
            continue;
        };
        let head = field.split('.').next().unwrap_or(&field);
        let prefix = &rest[..rest.len() - field.len()];
        let refuse = |pre: &mut Prepassed, reason: &str| {
            let alias = match &sel {
                Sel::All => {
                    pre.broken.insert("*".into());
                    None
                }
                Sel::One(a) => {
                    pre.broken.insert(a.clone());
                    Some(a.clone())
                }
            };
            pre.errors.push(origin.error(alias.as_deref(), reason));
        };
        let key = &origin.key;
        match head {
            "agent" => refuse(
                &mut pre,
                "agent (GoDoxy's remote agent) is not supported: dockward forwards from its own host only \
                 (GoDoxy refuses agent on Docker routes too)",
            ),
            "tls_termination" if field == head => match value.trim().to_ascii_lowercase().as_str() {
                "false" | "f" | "0" | "" => debug!(label = %key, "label ignored: tls_termination false"),
                _ => refuse(
                    &mut pre,
                    "tls_termination (TLS termination and SNI routing on GoDoxy's shared HTTPS port) is not \
                     supported by dockward; leave this alias to GoDoxy",
                ),
            },
            "healthcheck" => {
                let mapped = match field.as_str() {
                    "healthcheck.interval" => Some("health_interval"),
                    "healthcheck.timeout" => Some("health_timeout"),
                    _ => None,
                };
                match mapped {
                    Some(ours) => {
                        let ours = format!("{LABEL_PREFIX}{prefix}{ours}");
                        if !pre.labels.contains_key(&ours) {
                            pre.labels.insert(ours.clone(), value);
                            pre.origins.insert(ours, origin.clone());
                        }
                    }
                    None => debug!(label = %key, "label ignored: GoDoxy health check setting dockward has no use for"),
                }
            }
            // A GoDoxy field dockward lacks, or one dockward shares the name of but GoDoxy
            // gives sub-fields (`access_log.path`: its HTTP request log), is GoDoxy's alone.
            _ if GODOXY_ONLY_FIELDS.contains(&head) && (!fields::is_field(head) || field != head) => {
                debug!(label = %key, "label ignored: GoDoxy field with no meaning for dockward")
            }
            "port" if field == "port" => {
                pre.labels.insert(rewritten.clone(), port_value(&value));
                pre.origins.insert(rewritten, origin.clone());
            }
            _ => {
                pre.labels.insert(rewritten.clone(), value);
                pre.origins.insert(rewritten, origin.clone());
            }
        }
    }

    // Which aliases GoDoxy serves over HTTP, and which it excludes.
    let mut aliases: Vec<String> = listed.clone();
    let mut scheme: BTreeMap<String, String> = BTreeMap::new();
    let mut port: BTreeMap<String, String> = BTreeMap::new();
    let (mut any_scheme, mut any_port) = (None, None);
    for (key, value) in &pre.labels {
        let Some(rest) = key.strip_prefix(LABEL_PREFIX) else { continue };
        if container_wide(rest) {
            continue;
        }
        let Some((sel, field)) = split_key(rest, &listed) else { continue };
        let slot = match (&sel, field.as_str()) {
            (Sel::All, "scheme") => &mut any_scheme,
            (Sel::All, "port") => &mut any_port,
            (Sel::One(a), "scheme") => {
                scheme.insert(a.clone(), value.clone());
                continue;
            }
            (Sel::One(a), "port") => {
                port.insert(a.clone(), value.clone());
                continue;
            }
            _ => continue,
        };
        *slot = Some(value.clone());
    }
    for (key, _) in pre.labels.iter() {
        if let Some(rest) = key.strip_prefix(LABEL_PREFIX)
            && !container_wide(rest)
            && let Some((Sel::One(a), _)) = split_key(rest, &listed)
            && !aliases.contains(&a)
        {
            aliases.push(a);
        }
    }
    for alias in aliases {
        if alias.starts_with("x-") {
            pre.excluded.insert(alias.clone(), "alias starts with x- (a YAML anchor); GoDoxy excludes it".into());
        } else if alias.ends_with("-old") {
            pre.excluded
                .insert(alias.clone(), "alias ends in -old (a container mid-rename); GoDoxy excludes it".into());
        }
        let mut s = scheme.get(&alias).or(any_scheme.as_ref()).cloned();
        let mut p = port.get(&alias).or(any_port.as_ref()).cloned();
        let addressable = !alias.starts_with(['#', '*']) && fields::check_printable(&alias).is_ok();
        // GoDoxy's finalize: the image's name (then the alias) gives a missing scheme and
        // port (`postgres` is TCP on 5432, `nginx` HTTP on 80)…
        if let (true, Some((by_scheme, by_port))) = (addressable, default_port(image, &alias)) {
            if s.is_none() {
                match by_scheme {
                    DefaultScheme::Tcp => {
                        debug!(alias = %alias, image, "alias without scheme: tcp, by its image");
                        pre.labels.insert(format!("{LABEL_PREFIX}{alias}.scheme"), "tcp".to_string());
                        s = Some("tcp".to_string());
                    }
                    DefaultScheme::Http => {
                        debug!(alias = %alias, image, "alias without scheme: HTTP, by its image or name");
                        pre.http.insert(alias.clone());
                        continue;
                    }
                }
            }
            if p.is_none() {
                debug!(alias = %alias, port = by_port, "alias without port: its image's or name's port");
                pre.labels.insert(format!("{LABEL_PREFIX}{alias}.port"), by_port.to_string());
                p = Some(by_port.to_string());
            }
        }
        // …an alias without port targets the container's preferred port…
        if let (None, true, Some(filled)) = (&p, addressable, preferred_port(exposed)) {
            debug!(alias = %alias, port = filled, "alias without port: the container's preferred port");
            pre.labels.insert(format!("{LABEL_PREFIX}{alias}.port"), filled.to_string());
            p = Some(filled.to_string());
        }
        // …and one without scheme is UDP when its target port is a UDP port of the container.
        if s.is_none() && addressable && p.as_deref().and_then(target_port).is_some_and(|t| udp_only(exposed, t)) {
            debug!(alias = %alias, "alias without scheme: udp, the container exposes its port over UDP only");
            pre.labels.insert(format!("{LABEL_PREFIX}{alias}.scheme"), "udp".to_string());
            continue;
        }
        if s.is_none() && p.is_some_and(|p| has_no_listen_port(&p)) {
            pre.http.insert(alias);
        }
    }
    pre
}

/// The target port of a `port` value of one port (`22`, `2222:22`, `0:22`); `None` for a
/// range or anything that is not a port.
fn target_port(port: &str) -> Option<u16> {
    port.rsplit(':').next()?.trim().parse().ok()
}

/// Adds one `rest = value` entry, its field name in canonical spelling; two labels that
/// differ only in case (or `_`) are an error for their alias.
fn insert_entry(
    pre: &mut Prepassed,
    entries: &mut BTreeMap<String, (String, Origin)>,
    listed: &[String],
    rest: String,
    value: String,
    origin: Origin,
    from_inline: bool,
) {
    let rest = match split_key(&rest, listed) {
        Some((_, field)) => format!("{}{}", &rest[..rest.len() - field.len()], canonical_field(&field)),
        None => rest,
    };
    match entries.get(&rest) {
        None => {
            entries.insert(rest, (value, origin));
        }
        Some(_) if from_inline => {} // a label setting the field wins over inline YAML
        Some((_, first)) => {
            let alias = match split_key(&rest, listed) {
                Some((Sel::One(a), _)) => Some(a),
                _ => None,
            };
            pre.errors.push(origin.error(
                alias.as_deref(),
                format!("sets the same field as {first} (GoDoxy reads field names case-insensitively); set it once"),
            ));
            pre.broken.insert(alias.unwrap_or_else(|| "*".into()));
        }
    }
}

impl Prepassed {
    /// Applies what the pre-pass decided to the parse result of its labels.
    pub(crate) fn finish(self, mut out: ContainerRoutes) -> ContainerRoutes {
        if let Some(reason) = self.container_excluded {
            let mut aliases: Vec<String> = out.routes.iter().map(|r| r.alias.clone()).collect();
            aliases.extend(out.skipped.iter().map(|s| s.alias.clone()));
            aliases.extend(out.errors.iter().filter_map(|e| e.alias().map(str::to_string)));
            aliases.dedup();
            out.routes.clear();
            out.errors.clear();
            out.skipped.clear();
            let mut seen = BTreeSet::new();
            for alias in aliases {
                if seen.insert(alias.clone()) {
                    out.skipped.push(SkippedAlias { alias, reason: reason.clone() });
                }
            }
            return out;
        }
        let all_broken = self.broken.contains("*");
        restore(&mut out.errors, &self.origins);
        let mut errors = self.errors;
        errors.append(&mut out.errors);
        out.errors = errors;
        out.routes.retain(|r| !all_broken && !self.broken.contains(&r.alias));
        out.skipped.retain(|s| !all_broken && !self.broken.contains(&s.alias));
        for (alias, reason) in &self.excluded {
            out.routes.retain(|r| &r.alias != alias);
            out.errors.retain(|e| e.alias() != Some(alias.as_str()));
            out.skipped.retain(|s| &s.alias != alias);
            out.skipped.push(SkippedAlias { alias: alias.clone(), reason: reason.clone() });
        }
        for alias in &self.http {
            if self.excluded.contains_key(alias) || self.broken.contains(alias) {
                continue;
            }
            let had_error = out.errors.iter().any(|e| e.alias() == Some(alias.as_str()));
            out.routes.retain(|r| &r.alias != alias);
            out.skipped.retain(|s| &s.alias != alias);
            if !had_error {
                debug!(alias = %alias, "alias skipped: {HTTP_ROUTE}");
                out.skipped.push(SkippedAlias { alias: alias.clone(), reason: HTTP_ROUTE.to_string() });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn field_names_match_like_godoxys_deserializer() {
        assert_eq!(canonical_field("Port"), "port");
        assert_eq!(canonical_field("MaxConnsPerHost"), "max_conns_per_host");
        assert_eq!(canonical_field("HealthCheck.Interval"), "healthcheck.interval");
        assert_eq!(canonical_field("health_check"), "health_check", "dockward's own spelling stays dockward's");
        assert_eq!(canonical_field("healthcheck.Disabled"), "healthcheck.disabled");
        assert_eq!(canonical_field("prot"), "prot", "an unknown name is only lower-cased");
    }

    #[test]
    fn port_forms() {
        assert_eq!(port_value(":1234"), "0:1234");
        assert_eq!(port_value(" : 22"), "0:22");
        assert_eq!(port_value(":"), ":", "left for the grammar to reject as written");
        assert_eq!(port_value(":x"), ":x");
        assert_eq!(port_value("2222:22"), "2222:22");
        for p in ["8080", ":8080", "0:8080", " 0 : 80 "] {
            assert!(has_no_listen_port(p), "{p}");
        }
        for p in ["2222:22", "1-2:3-4", "27015-27020", "abc", "", "1:2:3"] {
            assert!(!has_no_listen_port(p), "{p}");
        }
    }

    #[test]
    fn inline_yaml_is_flattened_and_flat_labels_win() {
        let pre = prepass(
            "app",
            &labels(&[
                ("proxy.ssh", "port: 2222:22\nscheme: tcp\nallow: [10.0.0.0/8, 192.168.0.0/16]"),
                ("proxy.ssh.scheme", "udp"),
            ]),
            &[],
            "",
        );
        assert_eq!(pre.labels.get("proxy.ssh.port").map(String::as_str), Some("2222:22"));
        assert_eq!(pre.labels.get("proxy.ssh.scheme").map(String::as_str), Some("udp"));
        assert_eq!(pre.labels.get("proxy.ssh.allow").map(String::as_str), Some("10.0.0.0/8, 192.168.0.0/16"));
        assert!(pre.errors.is_empty());
    }

    #[test]
    fn shortcuts_fill_by_position_and_refs_resolve() {
        let pre = prepass(
            "app",
            &labels(&[("proxy.aliases", "A, b"), ("proxy.ports", "1:2, 3:4"), ("proxy.$2.Scheme", "udp")]),
            &[],
            "",
        );
        assert_eq!(pre.labels.get("proxy.aliases").map(String::as_str), Some("a, b"));
        assert_eq!(pre.labels.get("proxy.#1.port").map(String::as_str), Some("1:2"));
        assert_eq!(pre.labels.get("proxy.#2.port").map(String::as_str), Some("3:4"));
        assert_eq!(pre.labels.get("proxy.#2.scheme").map(String::as_str), Some("udp"));
    }

    #[test]
    fn no_proxy_labels_means_no_rewrite() {
        let l = labels(&[("com.docker.compose.project", "x")]);
        let subject = Subject { kind: "container", id: "id", name: "Upper", labels: &l, exposed: &[], image: "" };
        let out = crate::labels::parse_subject(&subject, || Ok(vec!["127.0.0.1".into()]));
        assert!(out.routes.is_empty() && out.errors.is_empty() && out.skipped.is_empty());
    }
}
