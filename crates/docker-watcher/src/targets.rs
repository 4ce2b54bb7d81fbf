//! Targets for routes without `host`, once the labels are parsed: where a container's
//! routes forward to, as GoDoxy's `finalize.go` decides it. Pure: facts in, routes out.
//!
//! - A container on the host network is reached on `127.0.0.1` (its engine's machine when
//!   the engine is remote), on the route's own target port.
//! - A container with an address dockward can use (see [`crate::labels`]: `proxy.network`,
//!   a network dockward shares, else its first) is reached there. When the label names a
//!   port the container publishes rather than one of its own (`-p 8080:80` and
//!   `port: 2222:8080`), the container port is the target (80), as in GoDoxy.
//! - Every other container is reached on its engine's machine instead (the address from the
//!   engine's URL; 127.0.0.1 for a local engine) on the port it publishes for the target
//!   port and protocol, as GoDoxy does with its public hostname: containers of a remote
//!   engine, rootless Podman containers on `pasta` or `slirp4netns` networking, and local
//!   containers with no address at all. A port published on one address only is reached
//!   there, unless that is a loopback address of a remote machine. A port it does not
//!   publish leaves the alias an error row saying why and what to do.
//! - When dockward itself runs in a container on networks of its own
//!   ([`EngineSite::LocalFromContainer`]), the engine's machine is its network's gateway, and
//!   a container on none of those networks (without `proxy.network`), whose address bridge
//!   isolation hides from dockward, is reached there on the port it publishes (not on one
//!   published on the machine's loopback only); a port it does not publish is tried on its
//!   address, as before. GoDoxy has no such case: it takes a container's address whenever
//!   it has one, as dockward on the host does.
//!
//! `proxy.<alias>.host` overrides all of this, as everywhere.
//!
//! The labels are parsed once, with a placeholder address standing for "the container"
//! (given as the container's only network), and each route whose target is the placeholder
//! then has it replaced; a route with its own `host` never carries the placeholder.

use std::net::IpAddr;

use route_spec::{Protocol, RouteSpec};

use crate::labels::target::resolve_target;
use crate::labels::{
    ContainerPorts, ContainerRoutes, ContainerView, LABEL_NETWORK, LabelError, PublishedPort, parse_labels,
};
use crate::views::ContainerFacts;

/// The placeholder target host: an address no label would name as a target.
const PLACEHOLDER: &str = "0.0.0.1";
/// The placeholder's network, when `proxy.network` does not name one.
const PLACEHOLDER_NETWORK: &str = "dockward-published";

/// Where an engine runs, as far as reaching its containers goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EngineSite {
    /// On this machine: containers are reached on their own addresses.
    #[default]
    Local,
    /// On the machine with this address (from the engine's URL): containers are reached
    /// there, on the host network or a published port.
    Remote(String),
    /// On this machine, with dockward in a container on networks of its own: the machine is
    /// reached from there at this address (the gateway of dockward's network), so a container
    /// that shares none of dockward's networks, whose address dockward's container cannot
    /// reach, is reached there on the port it publishes.
    LocalFromContainer(String),
}

/// How a container's routes without `host` reach it.
enum Via<'a> {
    /// On its own address.
    Address(String),
    /// A remote engine at this address.
    Remote(&'a str),
    /// A local container on user-mode networking (`pasta`, `slirp4netns`).
    UserMode(&'a str),
    /// A local container without an address: why it has none.
    NoAddress(String),
    /// A local container on none of the networks of dockward's container: on its published
    /// port at `gateway` (the machine, from dockward's container), else on its `address`.
    Unshared { address: String, gateway: &'a str },
}

/// The routes and errors of one container of an engine at `site`, as the watcher sees them.
pub(crate) fn container_routes(facts: &ContainerFacts, site: &EngineSite, own_networks: &[String]) -> ContainerRoutes {
    parse_container_labels(&facts.view, site, own_networks)
}

/// The routes and errors of the container `view` of an engine at `site`, with targets as
/// GoDoxy picks them (see the module documentation): what the Docker provider serves.
///
/// `own_networks` are the networks of dockward's own container when it runs in one (empty
/// otherwise), as for [`parse_labels`], which this is plus the container's published ports.
pub fn parse_container_labels(view: &ContainerView, site: &EngineSite, own_networks: &[String]) -> ContainerRoutes {
    let via = match site {
        EngineSite::Remote(host) => Via::Remote(host),
        EngineSite::Local | EngineSite::LocalFromContainer(_) => match user_mode_network(&view.network_mode) {
            Some(mode) => Via::UserMode(mode),
            None => match resolve_target(view, own_networks) {
                Ok(_) if view.network_mode == "host" => return parse_labels(view, own_networks),
                Ok(address) => match site {
                    EngineSite::LocalFromContainer(gateway) if shares_no_network(view, own_networks) => {
                        Via::Unshared { address, gateway }
                    }
                    _ => Via::Address(address),
                },
                Err(LabelError::NoTarget { reason }) => Via::NoAddress(reason),
                // A `proxy.network` problem: the labels say it themselves.
                Err(_) => return parse_labels(view, own_networks),
            },
        },
    };
    let network = view.labels.get(LABEL_NETWORK).map(|n| n.trim().to_string()).unwrap_or(PLACEHOLDER_NETWORK.into());
    let placeholder: IpAddr = PLACEHOLDER.parse().unwrap_or(IpAddr::from([0, 0, 0, 1]));
    let probe = ContainerView {
        network_mode: String::new(),
        networks: [(network, Some(placeholder))].into_iter().collect(),
        ..view.clone()
    };
    let mut out = parse_labels(&probe, &[]);
    let routes = std::mem::take(&mut out.routes);
    for mut route in routes {
        match resolve(&mut route, view, &via, site) {
            Ok(()) => out.routes.push(route),
            Err(e) => out.push_error(e),
        }
    }
    out
}

/// `pasta` or `slirp4netns` when `mode` is one of them (with or without options).
fn user_mode_network(mode: &str) -> Option<&str> {
    let name = mode.split(':').next().unwrap_or("");
    ["pasta", "slirp4netns"].into_iter().find(|m| *m == name)
}

/// True when dockward runs in a container and `view` is on none of its networks (and
/// `proxy.network` does not name one, which is the user's word that it is reachable).
fn shares_no_network(view: &ContainerView, own_networks: &[String]) -> bool {
    !own_networks.is_empty()
        && !view.labels.contains_key(LABEL_NETWORK)
        && !view.networks.keys().any(|n| own_networks.contains(n))
}

/// Replaces the placeholder in `route`'s targets; the error when a target cannot be reached.
fn resolve(route: &mut RouteSpec, view: &ContainerView, via: &Via<'_>, site: &EngineSite) -> Result<(), LabelError> {
    let ports: &ContainerPorts = &view.ports;
    // The engine's machine as dockward reaches it, and whether dockward is outside it (so a
    // port published on the machine's loopback only is out of reach).
    let (machine, outside) = match via {
        Via::Address(address) => {
            for target in route.targets.iter_mut().filter(|t| t.host == PLACEHOLDER) {
                target.host = address.clone();
                if let Some(port) = ports.container_port_published_as(target.port, route.protocol) {
                    target.port = port;
                }
            }
            return Ok(());
        }
        Via::Remote(host) => (*host, true),
        Via::Unshared { gateway, .. } => (*gateway, true),
        Via::UserMode(_) | Via::NoAddress(_) => match site {
            EngineSite::LocalFromContainer(gateway) => (gateway.as_str(), true),
            _ => ("127.0.0.1", false),
        },
    };
    let protocol = route.protocol;
    for target in route.targets.iter_mut().filter(|t| t.host == PLACEHOLDER) {
        if matches!(via, Via::Remote(_)) && view.network_mode == "host" {
            target.host = machine.to_string();
            continue;
        }
        let reachable = |p: &&PublishedPort| {
            p.container_port == target.port
                && p.protocol == protocol
                && !(outside && p.host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
        };
        match ports.published.iter().find(reachable) {
            Some(p) => {
                let specific = p.host_ip.parse::<IpAddr>().ok().filter(|ip| !ip.is_unspecified());
                target.host = specific.map(|ip| ip.to_string()).unwrap_or_else(|| machine.to_string());
                target.port = p.host_port;
            }
            None => match via {
                // Not published: its own address, as before dockward knew better.
                Via::Unshared { address, .. } => {
                    target.host = address.clone();
                    if let Some(port) = ports.container_port_published_as(target.port, protocol) {
                        target.port = port;
                    }
                }
                _ => return Err(unreachable(&route.alias, protocol, target.port, view, via)),
            },
        }
    }
    Ok(())
}

fn unreachable(alias: &str, protocol: Protocol, port: u16, view: &ContainerView, via: &Via<'_>) -> LabelError {
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let reason = match via {
        Via::Remote(host) => {
            let networks = if view.networks.is_empty() {
                "none".to_string()
            } else {
                view.networks.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            };
            format!(
                "route {alias:?}: the container is reachable only on networks of the engine at {host} ({networks}), \
                 which dockward cannot reach, and does not publish port {port}/{proto}; publish it, use the host \
                 network, or set proxy.{alias}.host"
            )
        }
        Via::UserMode(mode) => format!(
            "route {alias:?}: network mode {mode} gives the container no address dockward can reach, and it does \
             not publish port {port}/{proto}; publish it (-p), use the host network, or set proxy.{alias}.host"
        ),
        // As without published ports: what the container's networks lack, and the way out.
        Via::NoAddress(reason) => reason.clone(),
        Via::Address(_) | Via::Unshared { .. } => String::new(), // never unreachable
    };
    LabelError::NoTarget { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{ContainerState, ExposedPort};

    fn facts(
        mode: &str,
        networks: &[(&str, &str)],
        labels: &[(&str, &str)],
        published: &[(u16, Protocol, &str, u16)],
    ) -> ContainerFacts {
        let published: Vec<PublishedPort> = published
            .iter()
            .map(|&(container_port, protocol, ip, host_port)| PublishedPort {
                container_port,
                protocol,
                host_ip: ip.into(),
                host_port,
            })
            .collect();
        let mut exposed: Vec<ExposedPort> =
            published.iter().map(|p| ExposedPort { port: p.container_port, protocol: p.protocol }).collect();
        exposed.sort();
        exposed.dedup();
        ContainerFacts {
            view: ContainerView {
                id: "c1".into(),
                name: "web".into(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                network_mode: mode.into(),
                networks: networks.iter().map(|(n, ip)| (n.to_string(), ip.parse().ok())).collect(),
                ports: ContainerPorts { exposed, published },
                image: String::new(),
                state: ContainerState::Running,
            },
            health: None,
        }
    }

    fn targets(r: &ContainerRoutes) -> Vec<String> {
        r.routes.iter().map(|r| format!("{} {}", r.alias, r.targets[0])).collect()
    }

    fn errors(r: &ContainerRoutes) -> Vec<String> {
        r.errors.iter().map(ToString::to_string).collect()
    }

    const NAS: &str = "10.0.0.5";

    #[test]
    fn a_local_container_with_an_address_is_reached_there() {
        let f = facts(
            "bridge",
            &[("bridge", "172.17.0.2")],
            &[("proxy.web.port", "8080:80")],
            &[(80, Protocol::Tcp, "0.0.0.0", 8080)],
        );
        assert_eq!(container_routes(&f, &EngineSite::Local, &[]), parse_labels(&f.view, &[]));
        assert_eq!(targets(&container_routes(&f, &EngineSite::Local, &[])), ["web 172.17.0.2:80"]);
    }

    #[test]
    fn a_published_port_named_by_the_label_targets_the_container_port_on_its_address() {
        // GoDoxy's finalize: "replace public port with private port if using private IP".
        let f = facts(
            "bridge",
            &[("bridge", "172.17.0.2")],
            &[("proxy.aliases", "web,app"), ("proxy.web.port", "2222:8080"), ("proxy.app.port", "3000:3000")],
            &[(80, Protocol::Tcp, "0.0.0.0", 8080), (3000, Protocol::Tcp, "", 3000)],
        );
        let r = container_routes(&f, &EngineSite::Local, &[]);
        assert_eq!(targets(&r), ["web 172.17.0.2:80", "app 172.17.0.2:3000"]);
    }

    #[test]
    fn a_local_container_without_an_address_is_reached_on_its_published_port() {
        // GoDoxy's public hostname: 127.0.0.1 for a local engine.
        let f = facts(
            "bridge",
            &[("bridge", "")],
            &[("proxy.aliases", "web,db"), ("proxy.web.port", "8080:80"), ("proxy.db.port", "5432:5432")],
            &[(80, Protocol::Tcp, "", 32768)],
        );
        let r = container_routes(&f, &EngineSite::Local, &[]);
        assert_eq!(targets(&r), ["web 127.0.0.1:32768"]);
        assert_eq!(
            errors(&r),
            ["no target address: no network of the container has an IP address (networks: bridge); set \
              proxy.<alias>.host, or use a network dockward can reach"]
        );
        let host = facts("host", &[("host", "")], &[("proxy.web.port", "8080:80")], &[]);
        assert_eq!(targets(&container_routes(&host, &EngineSite::Local, &[])), ["web 127.0.0.1:80"]);
    }

    #[test]
    fn from_dockwards_own_container_an_unshared_container_is_reached_through_the_gateway() {
        let gateway = EngineSite::LocalFromContainer("172.19.0.1".into());
        let own = ["proxy".to_string()];
        let f = facts(
            "bridge",
            &[("shop_default", "172.20.0.4")],
            &[
                ("proxy.aliases", "web,db,cache"),
                ("proxy.web.port", "8080:80"),
                ("proxy.db.port", "5432:5432"),
                ("proxy.cache.port", "6379:6379"),
            ],
            &[(80, Protocol::Tcp, "0.0.0.0", 32768), (5432, Protocol::Tcp, "127.0.0.1", 5432)],
        );
        let r = container_routes(&f, &gateway, &own);
        assert_eq!(
            targets(&r),
            ["web 172.19.0.1:32768", "db 172.20.0.4:5432", "cache 172.20.0.4:6379"],
            "published: through the gateway; on the machine's loopback only, or not published: its own address"
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);

        let shared = facts(
            "bridge",
            &[("proxy", "172.19.0.7")],
            &[("proxy.web.port", "8080:80")],
            &[(80, Protocol::Tcp, "", 32768)],
        );
        assert_eq!(targets(&container_routes(&shared, &gateway, &own)), ["web 172.19.0.7:80"], "a shared network");
        let named = facts(
            "bridge",
            &[("shop_default", "172.20.0.4")],
            &[("proxy.web.port", "8080:80"), ("proxy.network", "shop_default")],
            &[(80, Protocol::Tcp, "", 32768)],
        );
        assert_eq!(
            targets(&container_routes(&named, &gateway, &own)),
            ["web 172.20.0.4:80"],
            "proxy.network is the user's word"
        );
        let bare =
            facts("bridge", &[("bridge", "")], &[("proxy.web.port", "8080:80")], &[(80, Protocol::Tcp, "", 32768)]);
        assert_eq!(targets(&container_routes(&bare, &gateway, &own)), ["web 172.19.0.1:32768"], "no address at all");
    }

    #[test]
    fn a_remote_host_network_container_is_reached_on_the_engines_machine() {
        let f = facts("host", &[("host", "")], &[("proxy.web.port", "8080:80")], &[]);
        let r = container_routes(&f, &EngineSite::Remote(NAS.into()), &[]);
        assert_eq!(targets(&r), ["web 10.0.0.5:80"]);
        assert!(r.errors.is_empty());
    }

    #[test]
    fn a_remote_container_is_reached_on_its_published_port() {
        let f = facts(
            "bridge",
            &[("bridge", "172.17.0.2")],
            &[
                ("proxy.aliases", "web,dns"),
                ("proxy.web.port", "8080:80"),
                ("proxy.dns.port", "53"),
                ("proxy.dns.scheme", "udp"),
            ],
            &[
                (80, Protocol::Tcp, "0.0.0.0", 32768),
                (53, Protocol::Tcp, "", 1053),
                (53, Protocol::Udp, "192.168.1.9", 5353),
            ],
        );
        let r = container_routes(&f, &EngineSite::Remote(NAS.into()), &[]);
        assert_eq!(targets(&r), ["web 10.0.0.5:32768", "dns 192.168.1.9:5353"]);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn an_unpublished_port_of_a_remote_container_is_an_error_row_and_host_overrides() {
        let f = facts(
            "bridge",
            &[("backend", "10.1.0.4")],
            &[
                ("proxy.aliases", "web,db"),
                ("proxy.web.port", "8080:80"),
                ("proxy.db.port", "5432"),
                ("proxy.db.scheme", "tcp"),
                ("proxy.db.host", "db.lan"),
            ],
            &[(80, Protocol::Tcp, "127.0.0.1", 8080)],
        );
        let r = container_routes(&f, &EngineSite::Remote(NAS.into()), &[]);
        assert_eq!(targets(&r), ["db db.lan:5432"]);
        assert_eq!(
            errors(&r),
            [
                "no target address: route \"web\": the container is reachable only on networks of the engine at 10.0.0.5 \
              (backend), which dockward cannot reach, and does not publish port 80/tcp; publish it, use the host \
              network, or set proxy.web.host"
            ]
        );
    }

    #[test]
    fn proxy_network_is_no_error_on_a_remote_engine() {
        let f = facts(
            "bridge",
            &[("backend", "10.1.0.4")],
            &[("proxy.web.port", "80"), ("proxy.web.scheme", "tcp"), ("proxy.network", "backend")],
            &[(80, Protocol::Tcp, "", 8081)],
        );
        let r = container_routes(&f, &EngineSite::Remote(NAS.into()), &[]);
        assert_eq!(targets(&r), ["web 10.0.0.5:8081"]);
    }

    #[test]
    fn a_pasta_container_is_reached_on_its_published_port_or_is_a_clear_error() {
        let published = facts("pasta", &[], &[("proxy.web.port", "8080:80")], &[(80, Protocol::Tcp, "", 18080)]);
        assert_eq!(targets(&container_routes(&published, &EngineSite::Local, &[])), ["web 127.0.0.1:18080"]);
        let bare = facts("slirp4netns:port_handler=slirp4netns", &[], &[("proxy.web.port", "8080:80")], &[]);
        let r = container_routes(&bare, &EngineSite::Local, &[]);
        assert!(r.routes.is_empty());
        assert_eq!(
            errors(&r),
            ["no target address: route \"web\": network mode slirp4netns gives the container no address dockward can \
              reach, and it does not publish port 80/tcp; publish it (-p), use the host network, or set proxy.web.host"]
        );
    }
}
