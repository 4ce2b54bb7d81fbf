//! Target resolution (pure): which address a route without `host` forwards to, and the one
//! rule that picks a network for containers and swarm services alike ([`choose_network`]).

use route_spec::fields;

use super::keys::{COMPOSE_PROJECT_LABEL, LABEL_NETWORK};
use super::model::{ContainerState, ContainerView, LabelError};

/// The outcome of [`choose_network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick<'a> {
    /// Take the address on this network.
    Network(&'a str),
    /// `proxy.network` names no network there, not even as `<project>_NAME`.
    NoSuchNetwork,
    /// No network to take an address from.
    Nothing,
}

/// The network a container's or a service's routes take their target address from:
///
/// 1. the network `proxy.network` (`wanted`) names, or `<project>_NAME` (`project`: the
///    compose project or the stack), as `named` finds it;
/// 2. else a network of dockward's own container (`self_networks`), in name order;
/// 3. else the first of `with_address` (in name order) that is not a `last_resort` (the
///    swarm routing mesh), else the first.
///
/// `with_address` holds the names with an address, sorted. `named` finds a name among the
/// networks `proxy.network` may name (a container's: all of them, so that a network without
/// an address is reported as such; a service's: those with an address).
pub(crate) fn choose_network<'a>(
    wanted: Option<&str>,
    project: Option<&str>,
    named: impl Fn(&str) -> Option<&'a str>,
    with_address: &[&'a str],
    self_networks: &[String],
    last_resort: impl Fn(&str) -> bool,
) -> Pick<'a> {
    if let Some(wanted) = wanted {
        let trimmed = wanted.trim();
        let prefixed = project.map(|p| format!("{p}_{trimmed}"));
        return match named(trimmed).or_else(|| prefixed.as_deref().and_then(&named)) {
            Some(found) => Pick::Network(found),
            None => Pick::NoSuchNetwork,
        };
    }
    let mut shared: Vec<&String> = self_networks.iter().collect();
    shared.sort();
    if let Some(found) = shared.iter().find_map(|n| with_address.iter().find(|a| **a == n.as_str())) {
        return Pick::Network(found);
    }
    match with_address.iter().find(|n| !last_resort(n)).or_else(|| with_address.first()) {
        Some(found) => Pick::Network(found),
        None => Pick::Nothing,
    }
}

/// The address of the container that routes without `host` forward to.
pub(crate) fn resolve_target(view: &ContainerView, self_networks: &[String]) -> Result<String, LabelError> {
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
    let wanted = view.labels.get(LABEL_NETWORK);
    let with_address: Vec<&str> =
        view.networks.iter().filter(|(_, ip)| ip.is_some()).map(|(n, _)| n.as_str()).collect();
    let named = |name: &str| view.networks.get_key_value(name).map(|(k, _)| k.as_str());
    let project = view.labels.get(COMPOSE_PROJECT_LABEL).map(String::as_str);
    match choose_network(wanted.map(String::as_str), project, named, &with_address, self_networks, |_| false) {
        Pick::Network(name) => match view.networks.get(name) {
            Some(Some(ip)) => Ok(ip.to_string()),
            _ => Err(LabelError::label(
                None,
                LABEL_NETWORK,
                wanted.map_or("", String::as_str),
                format!("the container has no address on network {name} (is it running?)"),
            )),
        },
        Pick::NoSuchNetwork => {
            let trimmed = wanted.map_or("", |w| w.trim());
            let mut reason = "no such network on this container".to_string();
            if let Some(hint) = fields::did_you_mean(trimmed, view.networks.keys().map(String::as_str)) {
                reason.push_str(&format!(" (did you mean {hint:?}?)"));
            }
            reason.push_str(&format!("; its networks: {}", network_names()));
            Err(LabelError::label(None, LABEL_NETWORK, wanted.map_or("", String::as_str), reason))
        }
        Pick::Nothing => {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick<'a>(wanted: Option<&str>, names: &[&'a str], own: &[&str], mesh: &[&str]) -> Pick<'a> {
        let own: Vec<String> = own.iter().map(|s| s.to_string()).collect();
        let named = |n: &str| names.iter().find(|x| **x == n).copied();
        choose_network(wanted, Some("proj"), named, names, &own, |n| mesh.contains(&n))
    }

    #[test]
    fn one_rule_picks_named_then_shared_then_first_outside_the_mesh() {
        let names = ["a", "ingress", "proj_db", "z"];
        assert_eq!(pick(Some(" z "), &names, &[], &[]), Pick::Network("z"));
        assert_eq!(pick(Some("db"), &names, &[], &[]), Pick::Network("proj_db"), "<project>_NAME");
        assert_eq!(pick(Some("nope"), &names, &[], &[]), Pick::NoSuchNetwork);
        assert_eq!(pick(None, &names, &["z", "proj_db"], &[]), Pick::Network("proj_db"), "shared, by name");
        assert_eq!(pick(None, &names, &["other"], &[]), Pick::Network("a"));
        assert_eq!(pick(None, &["ingress", "x"], &[], &["ingress"]), Pick::Network("x"));
        assert_eq!(pick(None, &["ingress"], &[], &["ingress"]), Pick::Network("ingress"), "the mesh last");
        assert_eq!(pick(None, &[], &[], &[]), Pick::Nothing);
    }
}
