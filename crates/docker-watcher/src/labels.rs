//! Container labels → routes: a pure function, no Docker connection.
//!
//! The grammar is GoDoxy's, restricted to stream (TCP/UDP) routes:
//!
//! | label | meaning |
//! | --- | --- |
//! | `proxy.aliases=ssh,dns` | the container's aliases, separated by commas or spaces; default: the container name |
//! | `proxy.<alias>.<field>=V` | a field of one alias; an alias seen only here (not in `proxy.aliases`) is a route too |
//! | `proxy.#N.<field>=V` | a field of the N-th alias of `proxy.aliases` (1-based) |
//! | `proxy.*.<field>=V` | a field of every alias |
//! | `proxy.exclude=true` | ignore the container |
//! | `proxy.network=NAME` | take the target address from this network (`<compose project>_NAME` is found too) |
//! | `proxy.swarm_target=tasks\|vip` | swarm services only ([`crate::swarm`]); checked, otherwise ignored, on a container |
//!
//! Fields are proxy-core's ([`proxy_core::fields::FIELDS`]): the same names as the routes
//! file, checked by the same code.
//!
//! **Wildcard precedence.** A field set for one alias, by name or by `#N`, overrides the same
//! field set with `proxy.*`. GoDoxy's README promises this, but its code applies the wildcard
//! last so the wildcard wins there; dockward follows the README, because "`*` is the default,
//! the specific label is the exception" is what the labels read like. Setting the same field
//! of the same alias both by name and by `#N` is an error for that alias.
//!
//! **Errors are per label.** A bad value, a misspelt field or an out-of-range `#N` yields a
//! [`LabelError`] naming the label and value (with a did-you-mean when one fits), and only the
//! alias it belongs to is dropped; the container's other aliases still become routes.
//! GoDoxy's fields for HTTP routes (homepage, healthcheck, middlewares, …; see
//! [`IGNORED_FIELDS`]) are ignored, so a container labelled for GoDoxy works unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use proxy_core::fields::{self, Clipped, RouteDraft};
use proxy_core::{RouteSpec, Target};
use tracing::debug;

/// Every label this crate reads starts with this.
pub const LABEL_PREFIX: &str = "proxy.";

/// `proxy.aliases`: the container's aliases.
pub const LABEL_ALIASES: &str = "proxy.aliases";

/// `proxy.exclude`: `true` ignores the container.
pub const LABEL_EXCLUDE: &str = "proxy.exclude";

/// `proxy.network`: the network whose address is the target.
pub const LABEL_NETWORK: &str = "proxy.network";

/// `proxy.swarm_target`: what a swarm service's routes forward to, its running `tasks`
/// (the default) or its virtual IP (`vip`); see [`SwarmTarget`](crate::SwarmTarget).
/// Read on services only; on a container the value is checked and otherwise ignored.
pub const LABEL_SWARM_TARGET: &str = "proxy.swarm_target";

/// The label Docker Compose puts on every container of a project; `proxy.network=NAME` also
/// finds the network `<project>_NAME` that Compose creates for a network named NAME.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// GoDoxy route fields that have no meaning for a stream route; labels setting them (and
/// their sub-keys, such as `proxy.app.homepage.name`) are ignored, not errors.
pub const IGNORED_FIELDS: &[&str] = &[
    "access_log",
    "agent",
    "disable_compression",
    "healthcheck",
    "hide_headers",
    "homepage",
    "idlewatcher",
    "inbound_mtls_profile",
    "index",
    "load_balance",
    "middlewares",
    "no_tls_verify",
    "path_patterns",
    "response_header_timeout",
    "root",
    "rule_file",
    "rules",
    "set_headers",
    "spa",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_server_name",
    "ssl_trusted_certificate",
];

/// GoDoxy container-wide labels (`proxy.<name>`) of its idle watcher; ignored.
pub const IGNORED_CONTAINER_LABELS: &[&str] = &[
    "depends_on",
    "idle_notify",
    "idle_notify_to",
    "idle_timeout",
    "no_loading_page",
    "start_endpoint",
    "stop_method",
    "stop_signal",
    "stop_timeout",
    "wake_timeout",
];

/// GoDoxy schemes of HTTP routes: an alias with one of them is not a stream route and is
/// skipped, like an alias without a port.
pub const HTTP_SCHEMES: &[&str] = &["http", "https", "h2c", "fileserver"];

/// Container-wide labels, for did-you-mean hints on `proxy.<name>` labels.
const CONTAINER_LABELS: &[&str] = &["aliases", "exclude", "network", "swarm_target"];

/// The lifecycle state of a container, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running: the only state whose routes are live.
    Running,
    /// Paused (frozen): its routes are removed until it is unpaused.
    Paused,
    /// Restarting.
    Restarting,
    /// Being removed.
    Removing,
    /// Stopped.
    Exited,
    /// Dead.
    Dead,
    /// Anything else the engine may say.
    #[default]
    Unknown,
}

impl ContainerState {
    /// Parses the engine's state word (`running`, `paused`, …); anything else is `Unknown`.
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => ContainerState::Unknown,
        }
    }

    /// The engine's word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Unknown => "unknown",
        }
    }

    /// True for the one state whose routes are live.
    pub fn is_running(self) -> bool {
        self == ContainerState::Running
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`parse_labels`] needs to know about a container: a plain value, built from the
/// engine's list or inspect answers, or by hand in tests and `dockward check --labels`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerView {
    /// The full container id.
    pub id: String,
    /// The container name, without Docker's leading `/`.
    pub name: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.NetworkMode`: `host`, `bridge`, `none`, `container:<id>`, a network name, or empty.
    pub network_mode: String,
    /// Its networks, by name, with its address on each (`None` while it has none).
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Its lifecycle state.
    pub state: ContainerState,
}

impl ContainerView {
    /// True when the container carries at least one `proxy.*` label: containers without one
    /// are none of dockward's business.
    pub fn has_proxy_labels(&self) -> bool {
        has_proxy_labels(&self.labels)
    }

    fn subject(&self) -> Subject<'_> {
        Subject { kind: "container", id: &self.id, name: &self.name, labels: &self.labels }
    }
}

/// True when `labels` hold at least one `proxy.*` label.
pub fn has_proxy_labels(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| k.starts_with(LABEL_PREFIX))
}

/// What a set of labels belongs to: a container, or a swarm service
/// ([`parse_service_labels`](crate::parse_service_labels)).
pub(crate) struct Subject<'a> {
    /// `container` or `service`, for messages.
    pub(crate) kind: &'static str,
    /// Its id.
    pub(crate) id: &'a str,
    /// Its name: the default alias and every route's source.
    pub(crate) name: &'a str,
    /// Its labels.
    pub(crate) labels: &'a BTreeMap<String, String>,
}

/// A label problem: which label, its value, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// One label is wrong: a bad value, an unknown field, an out-of-range `#N`.
    ///
    /// Displays as `label proxy.ssh.port="22:22:22": too many ':'; expected LISTEN:TARGET or TARGET`.
    #[error("label {}={}: {reason}", Clipped::bare(key), Clipped::quoted(value))]
    Label {
        /// The alias whose route the label breaks; `None` for a wildcard or container-wide label.
        alias: Option<String>,
        /// The label key as written.
        key: String,
        /// The label value as written.
        value: String,
        /// What is wrong, with a did-you-mean where one fits.
        reason: String,
    },
    /// The container has no address dockward can reach and an alias set no `host`.
    #[error("no target address: {reason}")]
    NoTarget {
        /// What was tried.
        reason: String,
    },
}

impl LabelError {
    pub(crate) fn label(alias: Option<&str>, key: &str, value: &str, reason: impl Into<String>) -> Self {
        LabelError::Label {
            alias: alias.map(str::to_string),
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The alias the error belongs to, when it belongs to one.
    pub fn alias(&self) -> Option<&str> {
        match self {
            LabelError::Label { alias, .. } => alias.as_deref(),
            LabelError::NoTarget { .. } => None,
        }
    }

    /// The label key at fault, when one is.
    pub fn key(&self) -> Option<&str> {
        match self {
            LabelError::Label { key, .. } => Some(key),
            LabelError::NoTarget { .. } => None,
        }
    }
}

/// An alias that is not a stream route, and why; shown by `dockward check`, logged at DEBUG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedAlias {
    /// The alias.
    pub alias: String,
    /// Why it makes no route (`no port`, `scheme http is an HTTP route`).
    pub reason: String,
}

/// What one container's labels ask for; also what one swarm service's labels ask for (then
/// `id` and `name` are the service's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerRoutes {
    /// The container (or service) id.
    pub id: String,
    /// The container (or service) name; also the [`RouteSpec::source`] of every route.
    pub name: String,
    /// The routes, in alias order.
    pub routes: Vec<RouteSpec>,
    /// Every label problem; the routes above are what remained valid.
    pub errors: Vec<LabelError>,
    /// Aliases that are not stream routes.
    pub skipped: Vec<SkippedAlias>,
    /// True when `proxy.exclude=true`: no route, no error.
    pub excluded: bool,
}

impl ContainerRoutes {
    fn empty(subject: &Subject<'_>) -> Self {
        ContainerRoutes { id: subject.id.to_string(), name: subject.name.to_string(), ..Default::default() }
    }

    fn push_error(&mut self, e: LabelError) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
}

/// Which aliases a `proxy.<selector>.<field>` label addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Selector {
    /// `proxy.*.<field>`.
    Wildcard,
    /// `proxy.#N.<field>`, resolved to the alias it names.
    Index(String),
    /// `proxy.<alias>.<field>`.
    Name(String),
}

/// One field setting, with the label it came from.
#[derive(Debug, Clone)]
struct Setting {
    key: String,
    value: String,
    selector: Selector,
}

/// Turns one container's labels into routes (and errors), pure and total.
///
/// `self_networks` are the networks of dockward's own container when it runs in one (empty
/// otherwise): a container sharing one of them is reached through it. Every route's
/// [`RouteSpec::source`] is the container name.
///
/// The container's state is not looked at: the watcher only asks about running containers,
/// and `dockward check --container` wants the labels checked whatever the state.
pub fn parse_labels(view: &ContainerView, self_networks: &[String]) -> ContainerRoutes {
    crate::godoxy::parse_subject(&view.subject(), || resolve_target(view, self_networks).map(|host| vec![host]))
}

/// The labels → routes function behind [`parse_labels`] and
/// [`parse_service_labels`](crate::parse_service_labels).
///
/// `targets` resolves the hosts of routes that set no `host` field; it is asked only when
/// the labels hold routes. An empty list means "nothing to forward to right now" (a service
/// without a running task): each such alias is skipped, not an error.
pub(crate) fn parse_subject(
    subject: &Subject<'_>,
    targets: impl FnOnce() -> Result<Vec<String>, LabelError>,
) -> ContainerRoutes {
    let mut out = ContainerRoutes::empty(subject);
    if !has_proxy_labels(subject.labels) {
        return out;
    }

    if let Some(value) = subject.labels.get(LABEL_EXCLUDE) {
        match parse_bool(value) {
            Some(true) => {
                out.excluded = true;
                return out;
            }
            Some(false) => {}
            None => {
                // Fail closed: a garbled exclude most likely meant "exclude", so open nothing.
                out.push_error(LabelError::label(
                    None,
                    LABEL_EXCLUDE,
                    value,
                    format!("expected true or false; no route of this {} is opened until it is fixed", subject.kind),
                ));
                return out;
            }
        }
    }
    if let Some(value) = subject.labels.get(LABEL_SWARM_TARGET)
        && let Err(e) = crate::swarm::SwarmTarget::from_label(value)
    {
        out.push_error(e);
    }

    let listed = listed_aliases(subject, &mut out);
    let mut settings: Vec<(String, Setting)> = Vec::new(); // (field, setting)
    let mut seen: Vec<String> = Vec::new(); // aliases named in keys, in key order

    for (key, value) in subject.labels.range(LABEL_PREFIX.to_string()..) {
        let Some(rest) = key.strip_prefix(LABEL_PREFIX) else { break };
        match classify(rest, &listed) {
            Classified::ContainerWide => {}
            Classified::Ignored => debug!(source = %subject.name, label = %key, "label ignored: not for stream routes"),
            Classified::UnknownContainerLabel(name) => {
                out.push_error(LabelError::label(None, key, value, unknown_container_label(name)))
            }
            Classified::Error { alias, reason } => {
                out.push_error(LabelError::label(alias.as_deref(), key, value, reason))
            }
            Classified::Field { selector, field } => {
                let alias = match &selector {
                    Selector::Wildcard => None,
                    Selector::Index(a) | Selector::Name(a) => Some(a.as_str()),
                };
                if let Some(a) = alias
                    && !listed.iter().any(|l| l == a)
                    && !seen.iter().any(|s| s == a)
                {
                    seen.push(a.to_string());
                }
                if let Some(reason) = field_problem(field) {
                    out.push_error(LabelError::label(alias, key, value, reason));
                    // Still a setting, so the alias is known to be broken below.
                }
                settings.push((
                    field.to_string(),
                    Setting { key: key.clone(), value: value.clone(), selector: selector.clone() },
                ));
            }
        }
    }

    // Wildcard settings are checked once on their own, so a bad one is reported once (and
    // even when every alias overrides it).
    let mut bad_wildcards: Vec<&str> = Vec::new();
    for (field, s) in settings.iter().filter(|(_, s)| s.selector == Selector::Wildcard) {
        if field_problem(field).is_some() {
            bad_wildcards.push(&s.key);
            continue;
        }
        if let Err(reason) = check_value(field, &s.value) {
            out.push_error(LabelError::label(None, &s.key, &s.value, reason));
            bad_wildcards.push(&s.key);
        }
    }

    let target = targets();
    let aliases: Vec<String> = listed.iter().chain(seen.iter()).cloned().collect();
    for alias in &aliases {
        build_alias(subject, alias, &settings, &bad_wildcards, &target, &mut out);
    }
    out
}

/// Builds one alias's route into `out`, or records why it has none.
fn build_alias(
    subject: &Subject<'_>,
    alias: &str,
    settings: &[(String, Setting)],
    bad_wildcards: &[&str],
    target: &Result<Vec<String>, LabelError>,
    out: &mut ContainerRoutes,
) {
    // field → the setting that wins for this alias: specific over wildcard.
    let mut chosen: BTreeMap<&str, &Setting> = BTreeMap::new();
    let mut broken = false;
    for (field, s) in settings.iter().filter(|(_, s)| s.selector == Selector::Wildcard) {
        chosen.insert(field, s);
    }
    let mut specific: BTreeMap<&str, &Setting> = BTreeMap::new();
    for (field, s) in settings {
        let applies = match &s.selector {
            Selector::Wildcard => false,
            Selector::Index(a) | Selector::Name(a) => a == alias,
        };
        if !applies {
            continue;
        }
        if let Some(prev) = specific.insert(field, s) {
            out.push_error(LabelError::label(
                Some(alias),
                &s.key,
                &s.value,
                format!("{field} of alias {alias:?} is also set by {}; set it once", prev.key),
            ));
            broken = true;
        }
        chosen.insert(field, s);
    }

    let mut draft = RouteDraft::new(alias);
    let mut http_scheme = None;
    for (field, s) in &chosen {
        if s.selector == Selector::Wildcard && bad_wildcards.contains(&s.key.as_str()) {
            broken = true; // already reported once
            continue;
        }
        if field_problem(field).is_some() {
            broken = true; // reported while classifying
            continue;
        }
        if *field == "scheme" && HTTP_SCHEMES.contains(&s.value.trim().to_ascii_lowercase().as_str()) {
            http_scheme = Some(s.value.trim().to_ascii_lowercase());
            continue;
        }
        if let Err(e) = draft.set(field, &s.value) {
            out.push_error(LabelError::label(Some(alias), &s.key, &s.value, e.reason));
            broken = true;
        }
    }
    if broken {
        return;
    }
    if let Some(scheme) = http_scheme {
        skip(subject, out, alias, format!("scheme {scheme} is an HTTP route, not a stream route"));
        return;
    }
    if !draft.has_port() {
        skip(subject, out, alias, "no port".to_string());
        return;
    }
    let hosts: &[String] = match (&draft.host, target) {
        (Some(_), _) => &[], // build() uses the alias's own host
        (None, Ok(hosts)) if hosts.is_empty() => {
            skip(subject, out, alias, "no running task to forward to".to_string());
            return;
        }
        (None, Ok(hosts)) => hosts,
        (None, Err(e)) => {
            out.push_error(e.clone());
            return;
        }
    };
    let first = hosts.first().map(String::as_str).unwrap_or("");
    match draft.build(subject.name, first) {
        Ok(mut routes) => {
            // Several default hosts (a service's tasks): every one is a target of each route,
            // on the route's own target port.
            if hosts.len() > 1 {
                for spec in &mut routes {
                    if let Some(port) = spec.targets.first().map(|t| t.port) {
                        spec.targets = hosts.iter().map(|h| Target::new(h.as_str(), port)).collect();
                    }
                }
            }
            out.routes.extend(routes)
        }
        Err(e) => {
            let (key, value) = match chosen.get(e.field.as_str()) {
                Some(s) => (s.key.clone(), s.value.clone()),
                None => (format!("{LABEL_PREFIX}{alias}.{}", e.field), e.value.clone()),
            };
            out.push_error(LabelError::label(Some(alias), &key, &value, e.reason));
        }
    }
}

fn skip(subject: &Subject<'_>, out: &mut ContainerRoutes, alias: &str, reason: String) {
    debug!(source = %subject.name, alias, reason = %reason, "alias skipped: no route");
    out.skipped.push(SkippedAlias { alias: alias.to_string(), reason });
}

/// The aliases of `proxy.aliases`, or the name; errors for entries that cannot be aliases.
fn listed_aliases(subject: &Subject<'_>, out: &mut ContainerRoutes) -> Vec<String> {
    let Some(value) = subject.labels.get(LABEL_ALIASES) else {
        return vec![subject.name.to_string()];
    };
    let mut aliases: Vec<String> = Vec::new();
    for a in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|a| !a.is_empty()) {
        if a.starts_with('#') || a.starts_with('*') {
            out.push_error(LabelError::label(
                None,
                LABEL_ALIASES,
                value,
                format!("{} cannot be an alias: '#' and '*' start alias selectors", Clipped::quoted(a)),
            ));
            continue;
        }
        if !aliases.iter().any(|x| x == a) {
            aliases.push(a.to_string());
        }
    }
    if aliases.is_empty() && out.errors.is_empty() {
        aliases.push(subject.name.to_string());
    }
    aliases
}

/// What a `proxy.<rest>` label is.
enum Classified<'a> {
    /// `proxy.aliases`, `proxy.exclude`, `proxy.network`, `proxy.swarm_target`: read elsewhere.
    ContainerWide,
    /// A GoDoxy label with no meaning for stream routes.
    Ignored,
    /// `proxy.<name>` that is none of the above.
    UnknownContainerLabel(&'a str),
    /// A selector that cannot be used.
    Error { alias: Option<String>, reason: String },
    /// `proxy.<selector>.<field>`.
    Field { selector: Selector, field: &'a str },
}

fn classify<'a>(rest: &'a str, listed: &[String]) -> Classified<'a> {
    if CONTAINER_LABELS.contains(&rest) {
        return Classified::ContainerWide;
    }
    if IGNORED_CONTAINER_LABELS.contains(&rest) {
        return Classified::Ignored;
    }
    let (selector, field) = if let Some(field) = rest.strip_prefix("*.") {
        (Selector::Wildcard, field)
    } else if let Some(indexed) = rest.strip_prefix('#') {
        let (n, field) = indexed.split_once('.').unwrap_or((indexed, ""));
        let index = match n.parse::<usize>() {
            Ok(i) => i,
            Err(_) => {
                return Classified::Error {
                    alias: None,
                    reason: format!("#{n} is not an alias number; expected proxy.#N.<field> with N from 1"),
                };
            }
        };
        match index.checked_sub(1).and_then(|i| listed.get(i)) {
            Some(alias) => (Selector::Index(alias.clone()), field),
            None if index == 0 => {
                return Classified::Error { alias: None, reason: "aliases are numbered from #1".into() };
            }
            None => {
                return Classified::Error {
                    alias: None,
                    reason: format!("#{index} is beyond the aliases ({} listed: {})", listed.len(), listed.join(", ")),
                };
            }
        }
    } else {
        // The longest listed alias that prefixes the key wins, so an alias holding a dot
        // (`app.example.com`) can still be addressed by name.
        let by_listed = listed
            .iter()
            .filter(|a| rest.len() > a.len() + 1 && rest.starts_with(a.as_str()) && rest[a.len()..].starts_with('.'))
            .max_by_key(|a| a.len());
        match by_listed {
            Some(alias) => (Selector::Name(alias.clone()), &rest[alias.len() + 1..]),
            None => match rest.split_once('.') {
                Some((alias, field)) => (Selector::Name(alias.to_string()), field),
                None => return Classified::UnknownContainerLabel(rest),
            },
        }
    };
    if let Selector::Name(alias) = &selector
        && alias.trim().is_empty()
    {
        return Classified::Error { alias: None, reason: "the alias is empty".into() };
    }
    if field.is_empty() {
        let alias = match &selector {
            Selector::Wildcard => None,
            Selector::Index(a) | Selector::Name(a) => Some(a.clone()),
        };
        return Classified::Error { alias, reason: "no field after the alias; expected proxy.<alias>.<field>".into() };
    }
    let head = field.split('.').next().unwrap_or(field);
    // A proxy-core field is never ignored, even if GoDoxy also has it for HTTP routes.
    if IGNORED_FIELDS.contains(&head) && !fields::is_field(head) {
        return Classified::Ignored;
    }
    Classified::Field { selector, field }
}

/// Why `field` cannot be set at all (unknown to proxy-core), before looking at its value.
///
/// Stream fields GoDoxy has are proxy-core fields (`relay_proxy_protocol_header` among
/// them), so nothing GoDoxy does for streams is silently dropped here.
fn field_problem(field: &str) -> Option<String> {
    if fields::is_field(field) {
        return None;
    }
    if let Some((head, _)) = field.split_once('.')
        && fields::is_field(head)
    {
        return Some(format!("{head} has no sub-fields; expected proxy.<alias>.{head}"));
    }
    Some(fields::unknown_field(field, "").reason)
}

/// Checks one field's value on a scratch draft.
fn check_value(field: &str, value: &str) -> Result<(), String> {
    if field == "scheme" && HTTP_SCHEMES.contains(&value.trim().to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    RouteDraft::new("*").set(field, value).map_err(|e| e.reason)
}

fn unknown_container_label(name: &str) -> String {
    let mut known: Vec<&str> = CONTAINER_LABELS.to_vec();
    known.extend(IGNORED_CONTAINER_LABELS);
    match fields::did_you_mean(name, known.iter().copied()) {
        Some(hint) => format!("unknown label (did you mean {LABEL_PREFIX}{hint}?)"),
        None if fields::is_field(name) => {
            format!("{name} needs an alias: proxy.<alias>.{name}, proxy.#1.{name} or proxy.*.{name}")
        }
        None => "unknown label; expected proxy.aliases, proxy.exclude, proxy.network or proxy.<alias>.<field> \
                 (whole routes as inline YAML are not supported)"
            .to_string(),
    }
}

/// `true`/`false` and the usual spellings; `None` for anything else.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" | "" => Some(false),
        _ => None,
    }
}

/// The address of the container that routes without `host` forward to.
fn resolve_target(view: &ContainerView, self_networks: &[String]) -> Result<String, LabelError> {
    if view.network_mode == "host" {
        return Ok("127.0.0.1".to_string());
    }
    let network_names = || {
        if view.networks.is_empty() {
            "none".to_string()
        } else {
            view.networks.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
        }
    };
    if let Some(wanted) = view.labels.get(LABEL_NETWORK) {
        let wanted_trim = wanted.trim();
        let mut candidates = vec![wanted_trim.to_string()];
        if let Some(project) = view.labels.get(COMPOSE_PROJECT_LABEL) {
            candidates.push(format!("{project}_{wanted_trim}"));
        }
        for name in &candidates {
            match view.networks.get(name) {
                Some(Some(ip)) => return Ok(ip.to_string()),
                Some(None) => {
                    return Err(LabelError::label(
                        None,
                        LABEL_NETWORK,
                        wanted,
                        format!("the container has no address on network {name} (is it running?)"),
                    ));
                }
                None => {}
            }
        }
        let mut reason = "no such network on this container".to_string();
        if let Some(hint) = fields::did_you_mean(wanted_trim, view.networks.keys().map(String::as_str)) {
            reason.push_str(&format!(" (did you mean {hint:?}?)"));
        }
        reason.push_str(&format!("; its networks: {}", network_names()));
        return Err(LabelError::label(None, LABEL_NETWORK, wanted, reason));
    }
    let mut shared: Vec<&String> = self_networks.iter().collect();
    shared.sort();
    for name in shared {
        if let Some(Some(ip)) = view.networks.get(name) {
            return Ok(ip.to_string());
        }
    }
    if let Some(ip) = view.networks.values().flatten().next() {
        return Ok(ip.to_string());
    }
    let hint = "set proxy.<alias>.host, or use a network dockward can reach";
    let reason = if view.network_mode == "none" {
        format!("network mode none gives the container no address; {hint}")
    } else if let Some(other) = view.network_mode.strip_prefix("container:") {
        format!("the container shares the network of container {other}, which dockward does not follow; {hint}")
    } else if !view.state.is_running() && view.state != ContainerState::Unknown {
        format!("the container is {} and has no address", view.state)
    } else {
        format!("no network of the container has an IP address (networks: {}); {hint}", network_names())
    };
    Err(LabelError::NoTarget { reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::{Family, Protocol, Target};
    use std::net::SocketAddr;

    fn view(labels: &[(&str, &str)]) -> ContainerView {
        ContainerView {
            id: "0123456789ab".into(),
            name: "app".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            network_mode: "bridge".into(),
            networks: [("bridge".to_string(), Some("172.17.0.5".parse().unwrap()))].into_iter().collect(),
            state: ContainerState::Running,
        }
    }

    fn host_view(labels: &[(&str, &str)]) -> ContainerView {
        ContainerView { network_mode: "host".into(), networks: BTreeMap::new(), ..view(labels) }
    }

    fn parse(v: &ContainerView) -> ContainerRoutes {
        parse_labels(v, &[])
    }

    /// (alias, protocol, listen, target) of every route, for compact assertions.
    fn summary(r: &ContainerRoutes) -> Vec<(String, Protocol, SocketAddr, String)> {
        r.routes.iter().map(|s| (s.alias.clone(), s.protocol, s.listen, s.targets[0].to_string())).collect()
    }

    fn errors(r: &ContainerRoutes) -> Vec<String> {
        r.errors.iter().map(ToString::to_string).collect()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn aliases_by_name_with_listen_and_target_ports() {
        let r = parse(&view(&[
            ("proxy.aliases", "ssh, dns"),
            ("proxy.ssh.port", "2222:22"),
            ("proxy.dns.port", "53:53"),
            ("proxy.dns.scheme", "udp"),
        ]));
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(
            summary(&r),
            vec![
                ("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "172.17.0.5:22".into()),
                ("dns".into(), Protocol::Udp, sa("0.0.0.0:53"), "172.17.0.5:53".into()),
            ]
        );
        assert!(r.routes.iter().all(|s| s.source == "app"));
    }

    #[test]
    fn aliases_may_be_separated_by_spaces_or_commas() {
        let r =
            parse(&host_view(&[("proxy.aliases", "a b,c ,, d"), ("proxy.*.port", "80"), ("proxy.*.scheme", "tcp")]));
        let names: Vec<&str> = r.routes.iter().map(|s| s.alias.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn without_aliases_the_container_name_is_the_alias() {
        let r = parse(&host_view(&[("proxy.#1.port", "8080:80")]));
        assert_eq!(summary(&r), vec![("app".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into())]);
    }

    #[test]
    fn index_selects_the_nth_listed_alias() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "web,metrics"),
            ("proxy.#1.port", "8080:80"),
            ("proxy.#2.port", "9090:9100"),
        ]));
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(
            summary(&r),
            vec![
                ("web".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into()),
                ("metrics".into(), Protocol::Tcp, sa("0.0.0.0:9090"), "127.0.0.1:9100".into()),
            ]
        );
    }

    #[test]
    fn index_zero_and_beyond_the_list_are_errors_and_other_aliases_survive() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "web,metrics"),
            ("proxy.#0.port", "1:2"),
            ("proxy.#3.port", "3:4"),
            ("proxy.#x.port", "5:6"),
            ("proxy.#1.port", "8080:80"),
        ]));
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.#0.port=\"1:2\": aliases are numbered from #1",
                "label proxy.#3.port=\"3:4\": #3 is beyond the aliases (2 listed: web, metrics)",
                "label proxy.#x.port=\"5:6\": #x is not an alias number; expected proxy.#N.<field> with N from 1",
            ]
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].alias, "web");
        assert_eq!(r.skipped, vec![SkippedAlias { alias: "metrics".into(), reason: "no port".into() }]);
    }

    #[test]
    fn specific_fields_override_the_wildcard() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "a,b,c"),
            ("proxy.*.scheme", "udp"),
            ("proxy.*.port", "5353:53"),
            ("proxy.b.scheme", "tcp"),
            ("proxy.#3.port", "6000:60"),
        ]));
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(
            summary(&r),
            vec![
                ("a".into(), Protocol::Udp, sa("0.0.0.0:5353"), "127.0.0.1:53".into()),
                ("b".into(), Protocol::Tcp, sa("0.0.0.0:5353"), "127.0.0.1:53".into()),
                ("c".into(), Protocol::Udp, sa("0.0.0.0:6000"), "127.0.0.1:60".into()),
            ]
        );
    }

    #[test]
    fn same_field_by_name_and_by_index_is_an_error_for_that_alias() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "a,b"),
            ("proxy.#1.port", "1000:10"),
            ("proxy.a.port", "2000:20"),
            ("proxy.b.port", "3000:30"),
        ]));
        assert_eq!(
            errors(&r),
            vec!["label proxy.a.port=\"2000:20\": port of alias \"a\" is also set by proxy.#1.port; set it once"]
        );
        assert_eq!(summary(&r), vec![("b".into(), Protocol::Tcp, sa("0.0.0.0:3000"), "127.0.0.1:30".into())]);
    }

    #[test]
    fn an_alias_seen_only_in_a_field_label_is_a_route() {
        let r = parse(&host_view(&[("proxy.aliases", "web"), ("proxy.ssh.port", "2222:22")]));
        assert_eq!(summary(&r), vec![("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "127.0.0.1:22".into())]);
        assert_eq!(r.skipped, vec![SkippedAlias { alias: "web".into(), reason: "no port".into() }]);
    }

    #[test]
    fn aliases_with_dots_are_addressed_by_name() {
        let r =
            parse(&host_view(&[("proxy.aliases", "app, app.example.com"), ("proxy.app.example.com.port", "81:80")]));
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(
            summary(&r),
            vec![("app.example.com".into(), Protocol::Tcp, sa("0.0.0.0:81"), "127.0.0.1:80".into())]
        );
    }

    #[test]
    fn exclude_true_ignores_the_container_and_a_garbled_one_opens_nothing() {
        let r = parse(&host_view(&[("proxy.exclude", "true"), ("proxy.a.port", "1:2"), ("proxy.b.prot", "x")]));
        assert!(r.excluded);
        assert!(r.routes.is_empty() && r.errors.is_empty());

        let r = parse(&host_view(&[("proxy.exclude", "false"), ("proxy.a.port", "1:2")]));
        assert_eq!(r.routes.len(), 1);

        let r = parse(&host_view(&[("proxy.exclude", "ture"), ("proxy.a.port", "1:2")]));
        assert!(r.routes.is_empty());
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.exclude=\"ture\": expected true or false; no route of this container is opened until it is fixed"
            ]
        );
    }

    #[test]
    fn bad_port_values_name_label_and_value() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "ssh,a,b,web"),
            ("proxy.ssh.port", "22:22:22"),
            ("proxy.a.port", "abc"),
            ("proxy.b.port", "70000"),
            ("proxy.web.port", "8080:80"),
        ]));
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.ssh.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET",
                "label proxy.a.port=\"abc\": \"abc\" is not a port number; expected LISTEN:TARGET or TARGET",
                "label proxy.b.port=\"70000\": 70000 is not a port (1-65535)",
            ]
        );
        assert_eq!(r.errors[0].alias(), Some("ssh"));
        assert_eq!(r.errors[0].key(), Some("proxy.ssh.port"));
        assert_eq!(summary(&r), vec![("web".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into())]);
    }

    #[test]
    fn typos_get_a_did_you_mean() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "a,b,c"),
            ("proxy.a.port", "1:2"),
            ("proxy.a.scheme", "tcpp"),
            ("proxy.b.prot", "22"),
            ("proxy.c.port", "3:4"),
            ("proxy.alias", "c"),
        ]));
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.alias=\"c\": unknown label (did you mean proxy.aliases?)",
                "label proxy.b.prot=\"22\": unknown field (did you mean \"port\"?)",
                "label proxy.a.scheme=\"tcpp\": unknown scheme (did you mean \"tcp\"?)",
            ]
        );
        assert_eq!(summary(&r), vec![("c".into(), Protocol::Tcp, sa("0.0.0.0:3"), "127.0.0.1:4".into())]);
    }

    #[test]
    fn a_bad_wildcard_is_reported_once_and_breaks_the_aliases_using_it() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "a,b,c"),
            ("proxy.*.port", "nope"),
            ("proxy.*.conect_timeout", "5s"),
            ("proxy.c.port", "1:2"),
        ]));
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.*.conect_timeout=\"5s\": unknown field (did you mean \"connect_timeout\"?)",
                "label proxy.*.port=\"nope\": \"nope\" is not a port number; expected LISTEN:TARGET or TARGET",
            ]
        );
        assert!(r.routes.is_empty(), "{:?}", summary(&r));
    }

    #[test]
    fn godoxy_http_fields_and_schemes_are_ignored() {
        let r = parse(&host_view(&[
            ("proxy.aliases", "web,ssh"),
            ("proxy.web.scheme", "http"),
            ("proxy.web.port", "80"),
            ("proxy.web.homepage.name", "Web"),
            ("proxy.*.healthcheck.path", "/ping"),
            ("proxy.#1.middlewares.cidr_whitelist.allow", "10.0.0.0/8"),
            ("proxy.ssh.port", "2222:22"),
            ("proxy.ssh.load_balance.link", "x"),
            ("proxy.idle_timeout", "1h"),
            ("proxy.stop_method", "stop"),
        ]));
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(summary(&r), vec![("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "127.0.0.1:22".into())]);
        assert_eq!(
            r.skipped,
            vec![SkippedAlias {
                alias: "web".into(),
                reason: "scheme http is an HTTP route, not a stream route".into()
            }]
        );
    }

    #[test]
    fn sub_keys_of_our_fields_are_errors() {
        let r = parse(&host_view(&[("proxy.a.port", "1:2"), ("proxy.b.port.listen", "1")]));
        assert_eq!(
            errors(&r),
            vec!["label proxy.b.port.listen=\"1\": port has no sub-fields; expected proxy.<alias>.port"]
        );
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn every_proxy_core_field_is_a_label_field() {
        for f in fields::FIELDS {
            assert!(field_problem(f.name).is_none(), "{} is a proxy-core field but not a label field", f.name);
        }
    }

    #[test]
    fn options_and_family_come_through() {
        let r = parse(&host_view(&[
            ("proxy.dns.port", "5353:53"),
            ("proxy.dns.scheme", "udp6"),
            ("proxy.dns.udp_idle_timeout", "30s"),
            ("proxy.dns.bind", "::1"),
        ]));
        assert_eq!(errors(&r), Vec::<String>::new());
        let s = &r.routes[0];
        assert_eq!((s.protocol, s.family, s.listen), (Protocol::Udp, Family::V6, sa("[::1]:5353")));
        assert_eq!(s.options.udp_idle_timeout, std::time::Duration::from_secs(30));
    }

    #[test]
    fn host_overrides_the_resolved_address() {
        let r = parse(&view(&[("proxy.a.port", "1:2"), ("proxy.a.host", "db.internal")]));
        assert_eq!(r.routes[0].targets, vec![Target::new("db.internal", 2)]);
    }

    #[test]
    fn target_prefers_proxy_network_then_shared_then_first_sorted() {
        let mut v = view(&[("proxy.a.port", "1:2")]);
        v.networks = [
            ("zeta".to_string(), Some("10.9.0.2".parse().unwrap())),
            ("beta".to_string(), Some("10.2.0.2".parse().unwrap())),
            ("alpha".to_string(), None),
            ("myproj_front".to_string(), Some("10.3.0.2".parse().unwrap())),
        ]
        .into_iter()
        .collect();
        assert_eq!(parse_labels(&v, &[]).routes[0].targets[0].host, "10.2.0.2", "first with an IP, sorted");
        assert_eq!(parse_labels(&v, &["zeta".into(), "other".into()]).routes[0].targets[0].host, "10.9.0.2");

        v.labels.insert("proxy.network".into(), "zeta".into());
        assert_eq!(parse_labels(&v, &["beta".into()]).routes[0].targets[0].host, "10.9.0.2");

        v.labels.insert("proxy.network".into(), "front".into());
        v.labels.insert(COMPOSE_PROJECT_LABEL.into(), "myproj".into());
        assert_eq!(parse(&v).routes[0].targets[0].host, "10.3.0.2");

        v.labels.insert("proxy.network".into(), "myproj_frnt".into());
        let r = parse(&v);
        assert!(r.routes.is_empty());
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.network=\"myproj_frnt\": no such network on this container (did you mean \"myproj_front\"?); \
                 its networks: alpha, beta, myproj_front, zeta"
            ]
        );

        v.labels.insert("proxy.network".into(), "alpha".into());
        assert_eq!(
            errors(&parse(&v)),
            vec!["label proxy.network=\"alpha\": the container has no address on network alpha (is it running?)"]
        );
    }

    #[test]
    fn host_network_mode_targets_loopback_even_with_proxy_network() {
        let mut v = host_view(&[("proxy.a.port", "1:2"), ("proxy.network", "whatever")]);
        v.networks.insert("host".into(), None);
        assert_eq!(parse(&v).routes[0].targets[0].host, "127.0.0.1");
    }

    #[test]
    fn no_reachable_address_is_one_error_unless_host_is_set() {
        let mut v = view(&[("proxy.aliases", "a,b,c"), ("proxy.*.port", "1:2"), ("proxy.c.host", "10.0.0.1")]);
        v.network_mode = "none".into();
        v.networks.clear();
        let r = parse(&v);
        assert_eq!(
            errors(&r),
            vec![
                "no target address: network mode none gives the container no address; \
                 set proxy.<alias>.host, or use a network dockward can reach"
            ]
        );
        assert_eq!(summary(&r), vec![("c".into(), Protocol::Tcp, sa("0.0.0.0:1"), "10.0.0.1:2".into())]);

        v.network_mode = "container:abc".into();
        assert!(errors(&parse(&v))[0].contains("shares the network of container abc"));
        v.network_mode = "bridge".into();
        v.state = ContainerState::Exited;
        assert_eq!(errors(&parse(&v)), vec!["no target address: the container is exited and has no address"]);
    }

    #[test]
    fn containers_without_proxy_labels_give_nothing() {
        let r = parse(&view(&[("com.docker.compose.project", "x"), ("proxyish", "1")]));
        assert_eq!(r, ContainerRoutes { id: "0123456789ab".into(), name: "app".into(), ..Default::default() });
    }

    #[test]
    fn odd_keys_are_errors_not_panics() {
        let r = parse(&host_view(&[
            ("proxy.", "x"),
            ("proxy..port", "1"),
            ("proxy.a.", "x"),
            ("proxy.*.", "x"),
            ("proxy.#", "x"),
            ("proxy.port", "80"),
            ("proxy.myapp", "scheme: tcp"),
        ]));
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.=\"x\": unknown label; expected proxy.aliases, proxy.exclude, proxy.network or \
                 proxy.<alias>.<field> (whole routes as inline YAML are not supported)",
                "label proxy.#=\"x\": # is not an alias number; expected proxy.#N.<field> with N from 1",
                "label proxy.*.=\"x\": no field after the alias; expected proxy.<alias>.<field>",
                "label proxy..port=\"1\": the alias is empty",
                "label proxy.a.=\"x\": no field after the alias; expected proxy.<alias>.<field>",
                "label proxy.port=\"80\": port needs an alias: proxy.<alias>.port, proxy.#1.port or proxy.*.port",
            ]
        );
    }

    #[test]
    fn bad_aliases_entries_are_errors() {
        let r = parse(&host_view(&[("proxy.aliases", "ok,#2,*"), ("proxy.*.port", "80"), ("proxy.*.scheme", "tcp")]));
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn container_state_words() {
        for s in ["created", "running", "paused", "restarting", "removing", "exited", "dead"] {
            assert_eq!(ContainerState::parse(s).as_str(), s);
        }
        assert_eq!(ContainerState::parse("zombie"), ContainerState::Unknown);
    }

    mod fuzz {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::{
            Just, ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
        };

        fn key() -> impl Strategy<Value = String> {
            let segment = prop_oneof![
                Just("*".to_string()),
                Just("#1".to_string()),
                Just("#0".to_string()),
                Just("#99999999999999999999".to_string()),
                Just("port".to_string()),
                Just("scheme".to_string()),
                Just("host".to_string()),
                Just("bind".to_string()),
                Just("aliases".to_string()),
                Just("network".to_string()),
                Just("exclude".to_string()),
                Just("homepage".to_string()),
                Just("".to_string()),
                "[a-z#*.]{0,6}",
                any::<String>(),
            ];
            (proptest::bool::weighted(0.9), vec(segment, 0..4)).prop_map(|(prefixed, segs)| {
                let body = segs.join(".");
                if prefixed { format!("proxy.{body}") } else { body }
            })
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9:]{0,12}",
                Just("udp".to_string()),
                Just("tcp6".to_string()),
                Just("true".to_string()),
                Just("::1".to_string()),
                Just("a, b c".to_string()),
                "[a-z0-9 ,.:#*]{0,16}",
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn never_panics_and_every_route_is_from_the_container(
                labels in btree_map(key(), value(), 0..12),
                host_mode in any::<bool>(),
                self_nets in vec("[a-z]{0,3}", 0..3),
            ) {
                let v = ContainerView {
                    id: "id".into(),
                    name: "c".into(),
                    labels,
                    network_mode: if host_mode { "host".into() } else { "bridge".into() },
                    networks: [("bridge".to_string(), Some("172.17.0.2".parse().unwrap()))].into_iter().collect(),
                    state: ContainerState::Running,
                };
                let r = parse_labels(&v, &self_nets);
                for s in &r.routes {
                    prop_assert_eq!(&s.source, "c");
                    prop_assert!(s.validate().is_ok());
                }
                for e in &r.errors {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
