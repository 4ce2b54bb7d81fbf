//! The key grammar (pure): which labels dockward reads, and what a `proxy.<rest>` key means
//! (a container-wide label, an ignored GoDoxy label, or `proxy.<selector>.<field>`).

use route_spec::RouteDraft;
use route_spec::fields;

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

/// GoDoxy container-wide labels (`proxy.<name>`) of its idle watcher that mean nothing for
/// streams (its loading page, its notifications); ignored.
pub const IGNORED_CONTAINER_LABELS: &[&str] = &["idle_notify", "idle_notify_to", "no_loading_page", "start_endpoint"];

/// Container-wide labels (`proxy.<name>`) of idle sleep, GoDoxy's names; read by
/// [`crate::idle`].
pub const IDLE_LABELS: &[&str] =
    &["idle_timeout", "wake_timeout", "stop_method", "stop_timeout", "stop_signal", "depends_on"];

/// GoDoxy schemes of HTTP routes: an alias with one of them is not a stream route and is
/// skipped, like an alias without a port.
pub const HTTP_SCHEMES: &[&str] = &["http", "https", "h2c", "fileserver"];

/// Container-wide labels, for did-you-mean hints on `proxy.<name>` labels.
pub(super) const CONTAINER_LABELS: &[&str] = &["aliases", "exclude", "network", "swarm_target"];

/// Which aliases a `proxy.<selector>.<field>` label addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Selector {
    /// `proxy.*.<field>`.
    Wildcard,
    /// `proxy.#N.<field>`, resolved to the alias it names.
    Index(String),
    /// `proxy.<alias>.<field>`.
    Name(String),
}

/// What a `proxy.<rest>` label is.
pub(super) enum Classified<'a> {
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

pub(super) fn classify<'a>(rest: &'a str, listed: &[String]) -> Classified<'a> {
    if CONTAINER_LABELS.contains(&rest) || IDLE_LABELS.contains(&rest) {
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
    // A route-spec field is never ignored, even if GoDoxy also has it for HTTP routes.
    if IGNORED_FIELDS.contains(&head) && !fields::is_field(head) {
        return Classified::Ignored;
    }
    Classified::Field { selector, field }
}

/// Why `field` cannot be set at all (unknown to route-spec), before looking at its value.
///
/// Stream fields GoDoxy has are route-spec fields (`relay_proxy_protocol_header` among
/// them), so nothing GoDoxy does for streams is silently dropped here.
pub(super) fn field_problem(field: &str) -> Option<String> {
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
pub(super) fn check_value(field: &str, value: &str) -> Result<(), String> {
    if field == "scheme" && HTTP_SCHEMES.contains(&value.trim().to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    RouteDraft::new("*").set(field, value).map_err(|e| e.reason)
}

pub(super) fn unknown_container_label(name: &str) -> String {
    let mut known: Vec<&str> = CONTAINER_LABELS.to_vec();
    known.extend(IGNORED_CONTAINER_LABELS);
    known.extend(IDLE_LABELS);
    match fields::did_you_mean(name, known.iter().copied()) {
        Some(hint) => format!("unknown label (did you mean {LABEL_PREFIX}{hint}?)"),
        None if fields::is_field(name) => {
            format!("{name} needs an alias: proxy.<alias>.{name}, proxy.#1.{name} or proxy.*.{name}")
        }
        None => "unknown label; expected proxy.aliases, proxy.exclude, proxy.network or proxy.<alias>.<field> \
                 (or proxy.<alias> holding a YAML mapping of fields)"
            .to_string(),
    }
}
