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
        EngineSite::Local => match user_mode_network(&view.network_mode) {
            Some(mode) => Via::UserMode(mode),
            None => match resolve_target(view, own_networks) {
                Ok(_) if view.network_mode == "host" => return parse_labels(view, own_networks),
                Ok(address) => Via::Address(address),
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
        match resolve(&mut route, view, &via) {
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

/// Replaces the placeholder in `route`'s targets; the error when a target cannot be reached.
fn resolve(route: &mut RouteSpec, view: &ContainerView, via: &Via<'_>) -> Result<(), LabelError> {
    let ports: &ContainerPorts = &view.ports;
    let (machine, remote) = match via {
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
        Via::UserMode(_) | Via::NoAddress(_) => ("127.0.0.1", false),
    };
    let protocol = route.protocol;
    for target in route.targets.iter_mut().filter(|t| t.host == PLACEHOLDER) {
        if remote && view.network_mode == "host" {
            target.host = machine.to_string();
            continue;
        }
        let reachable = |p: &&PublishedPort| {
            p.container_port == target.port
                && p.protocol == protocol
                && !(remote && p.host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
        };
        match ports.published.iter().find(reachable) {
            Some(p) => {
                let specific = p.host_ip.parse::<IpAddr>().ok().filter(|ip| !ip.is_unspecified());
                target.host = specific.map(|ip| ip.to_string()).unwrap_or_else(|| machine.to_string());
                target.port = p.host_port;
            }
            None => return Err(unreachable(&route.alias, protocol, target.port, view, via)),
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
        Via::Address(_) => String::new(), // never unreachable
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
