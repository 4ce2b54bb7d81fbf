//! Merge and precedence (pure): a container's (or service's) labels become routes, per
//! alias, with specific fields over wildcards and one error per bad label.

use std::collections::BTreeMap;

use route_spec::RouteDraft;
use route_spec::Target;
use route_spec::fields::{self, Clipped};
use tracing::debug;

use super::keys::{
    Classified, HTTP_SCHEMES, LABEL_ALIASES, LABEL_EXCLUDE, LABEL_PREFIX, LABEL_SWARM_TARGET, Selector, check_value,
    classify, field_problem, unknown_container_label,
};
use super::model::{ContainerRoutes, ContainerView, LabelError, SkippedAlias, Subject, SwarmTarget, has_proxy_labels};
use super::target::resolve_target;

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
    parse_subject(&view.subject(), || resolve_target(view, self_networks).map(|host| vec![host]))
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
        match fields::parse_bool(value) {
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
        && let Err(e) = SwarmTarget::from_label(value)
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
                    && let Err(reason) = fields::check_printable(a)
                {
                    out.push_error(LabelError::label(None, key, value, format!("the alias {reason}")));
                    continue;
                }
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
        if let Err(reason) = fields::check_printable(a) {
            out.push_error(LabelError::label(
                None,
                LABEL_ALIASES,
                value,
                format!("alias {} {reason}", Clipped::quoted(a)),
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
