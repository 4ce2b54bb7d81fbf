//! The engine's answers (a list entry, an inspect answer, /proc text) read into
//! [`ContainerView`]s (labels, networks, ports, state) and ids. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, ContainerSummary, EndpointSettings, PortMap, PortSummary};
use route_spec::{Protocol, ProviderHealth};

use crate::health;
use crate::labels::{ContainerPorts, ContainerState, ContainerView, ExposedPort, PublishedPort};

/// What the engine said about one container: its view (with its ports), and what its health
/// check says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerFacts {
    /// Labels, networks, ports, state.
    pub(crate) view: ContainerView,
    /// Its health check's verdict; `None` without a health check (see [`crate::health`]).
    pub(crate) health: Option<ProviderHealth>,
}

/// Facts from a list entry; `None` without an id.
pub(crate) fn facts_from_summary(c: ContainerSummary) -> Option<ContainerFacts> {
    let health = health::from_summary(&c);
    Some(ContainerFacts { view: view_from_summary(c)?, health })
}

/// Facts from an inspect answer; `None` without an id.
pub(crate) fn facts_from_inspect(c: ContainerInspectResponse) -> Option<ContainerFacts> {
    let health = health::from_inspect(c.state.as_ref());
    Some(ContainerFacts { view: view_from_inspect(c)?, health })
}

fn protocol_of(name: &str) -> Option<Protocol> {
    match name {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None, // sctp
    }
}

/// A list entry's ports: every one it exposes, and those it publishes.
fn ports_from_summary(ports: &[PortSummary]) -> ContainerPorts {
    let exposed = ports
        .iter()
        .filter_map(|p| {
            let protocol = protocol_of(p.typ.map(|t| t.to_string()).as_deref().unwrap_or("tcp"))?;
            Some(ExposedPort { port: p.private_port, protocol })
        })
        .collect();
    ContainerPorts { exposed: sorted_unique(exposed), published: published_from_summary(ports) }
}

/// An inspect answer's ports: `Config.ExposedPorts` (`["53/udp"]`), with the ports of
/// `NetworkSettings.Ports` (published or not), and those published.
fn ports_from_inspect(exposed: Option<&[String]>, ports: Option<&PortMap>) -> ContainerPorts {
    let keys = exposed.unwrap_or_default().iter().chain(ports.into_iter().flat_map(|p| p.keys()));
    let exposed = keys.filter_map(|key| port_key(key)).map(|(port, protocol)| ExposedPort { port, protocol }).collect();
    ContainerPorts { exposed: sorted_unique(exposed), published: ports.map(published_from_inspect).unwrap_or_default() }
}

/// `80/tcp` → (80, TCP); a port without protocol is TCP; SCTP and non-ports are `None`.
fn port_key(key: &str) -> Option<(u16, Protocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    Some((port.parse::<u16>().ok().filter(|p| *p != 0)?, protocol_of(proto)?))
}

fn sorted_unique(mut ports: Vec<ExposedPort>) -> Vec<ExposedPort> {
    ports.sort();
    ports.dedup();
    ports
}

fn published_from_summary(ports: &[PortSummary]) -> Vec<PublishedPort> {
    ports
        .iter()
        .filter_map(|p| {
            Some(PublishedPort {
                container_port: p.private_port,
                protocol: protocol_of(p.typ.map(|t| t.to_string()).as_deref().unwrap_or("tcp"))?,
                host_ip: p.ip.clone().unwrap_or_default(),
                host_port: p.public_port.filter(|p| *p != 0)?,
            })
        })
        .collect()
}

/// `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}` → published ports, sorted.
fn published_from_inspect(ports: &PortMap) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = ports
        .iter()
        .filter_map(|(key, bindings)| {
            let (port, protocol) = port_key(key)?;
            Some((port, protocol, bindings.as_ref()?))
        })
        .flat_map(|(container_port, protocol, bindings)| {
            bindings.iter().filter_map(move |b| {
                Some(PublishedPort {
                    container_port,
                    protocol,
                    host_ip: b.host_ip.clone().unwrap_or_default(),
                    host_port: b.host_port.as_deref()?.parse().ok().filter(|p| *p != 0)?,
                })
            })
        })
        .collect();
    out.sort_by(|a, b| (a.container_port, a.host_port, &a.host_ip).cmp(&(b.container_port, b.host_port, &b.host_ip)));
    out
}

/// A view from a list entry; `None` without an id.
pub fn view_from_summary(c: ContainerSummary) -> Option<ContainerView> {
    let id = c.id?;
    let name = c
        .names
        .as_deref()
        .and_then(|names| names.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| short_id(&id).to_string());
    Some(ContainerView {
        name,
        labels: c.labels.map(sorted).unwrap_or_default(),
        network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
        networks: c.network_settings.and_then(|n| n.networks).map(addresses).unwrap_or_default(),
        ports: c.ports.as_deref().map(ports_from_summary).unwrap_or_default(),
        image: c.image.clone().unwrap_or_default(),
        state: c.state.map(|s| ContainerState::parse(s.as_ref())).unwrap_or_default(),
        id,
    })
}

/// Whether a list entry says all a view needs: Podman's lacks `HostConfig` (the network
/// mode), and a host-network container's lists no port (its exposed ports are in its
/// inspect answer only; GoDoxy inspects such containers for them too).
pub(crate) fn summary_is_complete(c: &ContainerSummary) -> bool {
    c.host_config.as_ref().and_then(|h| h.network_mode.as_deref()).is_some_and(|mode| mode != "host")
}

/// A view from an inspect answer; `None` without an id.
pub fn view_from_inspect(c: ContainerInspectResponse) -> Option<ContainerView> {
    let id = c.id?;
    let name = c.name.map(|n| n.trim_start_matches('/').to_string()).unwrap_or_else(|| short_id(&id).to_string());
    let ports = ports_from_inspect(
        c.config.as_ref().and_then(|cfg| cfg.exposed_ports.as_deref()),
        c.network_settings.as_ref().and_then(|n| n.ports.as_ref()),
    );
    let image = c.config.as_ref().and_then(|cfg| cfg.image.clone()).unwrap_or_default();
    Some(ContainerView {
        name,
        image,
        labels: c.config.and_then(|cfg| cfg.labels).map(sorted).unwrap_or_default(),
        network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
        networks: c.network_settings.and_then(|n| n.networks).map(addresses).unwrap_or_default(),
        ports,
        state: c.state.and_then(|s| s.status).map(|s| ContainerState::parse(s.as_ref())).unwrap_or_default(),
        id,
    })
}

/// How the inspected container reaches its engine's machine: the gateway of the first
/// network (by name) on which it has an address; `None` on the host's network or none.
pub(crate) fn gateway_of(c: &ContainerInspectResponse) -> Option<String> {
    if c.host_config.as_ref().and_then(|h| h.network_mode.as_deref()) == Some("host") {
        return None;
    }
    let networks: BTreeMap<&String, &EndpointSettings> =
        c.network_settings.as_ref().and_then(|n| n.networks.as_ref())?.iter().collect();
    networks
        .values()
        .filter(|ep| ep.ip_address.as_deref().is_some_and(|ip| !ip.is_empty()))
        .find_map(|ep| ep.gateway.as_deref()?.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
}

/// The first 12 characters of an id, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

/// Network name → the container's address on it: IPv4 when it has one, else global IPv6.
fn addresses(networks: HashMap<String, EndpointSettings>) -> BTreeMap<String, Option<IpAddr>> {
    networks
        .into_iter()
        .map(|(name, ep)| {
            let parse = |s: Option<String>| s.and_then(|s| s.parse::<IpAddr>().ok());
            let ip = parse(ep.ip_address).or_else(|| parse(ep.global_ipv6_address));
            (name, ip)
        })
        .collect()
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finds `/containers/<64 hex>/` in mountinfo text.
pub(crate) fn id_from_mountinfo(text: &str) -> Option<String> {
    for line in text.lines() {
        for field in line.split_whitespace() {
            let mut parts = field.split('/');
            while let Some(p) = parts.next() {
                if p == "containers"
                    && let Some(id) = parts.next()
                    && is_full_id(id)
                {
                    return Some(id.to_string());
                }
            }
        }
    }
    None
}

/// Finds a 64-hex container id in cgroup paths (`/docker/<id>`, `docker-<id>.scope`).
pub(crate) fn id_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for seg in path.split('/') {
            let seg = seg.strip_prefix("docker-").unwrap_or(seg);
            let seg = seg.strip_suffix(".scope").unwrap_or(seg);
            if is_full_id(seg) {
                return Some(seg.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2d9a8b7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

    #[test]
    fn own_id_from_mountinfo_and_cgroup() {
        let mountinfo = format!(
            "1 0 0:1 / / rw - overlay overlay rw\n\
             612 600 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n"
        );
        assert_eq!(id_from_mountinfo(&mountinfo).as_deref(), Some(ID));
        assert_eq!(id_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);

        assert_eq!(id_from_cgroup(&format!("12:memory:/docker/{ID}\n")).as_deref(), Some(ID));
        assert_eq!(id_from_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(), Some(ID));
        assert_eq!(id_from_cgroup("0::/\n4:memory:/process_api/fc0c7b28\n"), None);
    }

    #[test]
    fn published_ports_are_read_from_inspect_and_list_answers() {
        use bollard::models::{PortBinding, PortSummaryTypeEnum};
        let map: PortMap = [
            (
                "80/tcp".to_string(),
                Some(vec![PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some("8080".into()) }]),
            ),
            ("53/udp".to_string(), Some(vec![PortBinding { host_ip: None, host_port: Some("5353".into()) }])),
            ("443/tcp".to_string(), None),
            ("9/sctp".to_string(), Some(vec![PortBinding { host_ip: None, host_port: Some("9".into()) }])),
        ]
        .into_iter()
        .collect();
        let got = published_from_inspect(&map);
        assert_eq!(
            got,
            vec![
                PublishedPort { container_port: 53, protocol: Protocol::Udp, host_ip: String::new(), host_port: 5353 },
                PublishedPort {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                    host_port: 8080
                },
            ]
        );
        let summary = [
            PortSummary {
                ip: Some("::".into()),
                private_port: 80,
                public_port: Some(8080),
                typ: Some(PortSummaryTypeEnum::TCP),
            },
            PortSummary { ip: None, private_port: 81, public_port: None, typ: Some(PortSummaryTypeEnum::TCP) },
        ];
        assert_eq!(
            published_from_summary(&summary),
            vec![PublishedPort { container_port: 80, protocol: Protocol::Tcp, host_ip: "::".into(), host_port: 8080 }]
        );
    }

    #[test]
    fn exposed_ports_are_read_from_inspect_and_list_answers() {
        use bollard::models::{ContainerConfig, NetworkSettings, PortBinding, PortSummaryTypeEnum};
        let port = |port, protocol| ExposedPort { port, protocol };
        let inspect = ContainerInspectResponse {
            id: Some(ID.into()),
            config: Some(ContainerConfig {
                exposed_ports: Some(vec!["53/udp".into(), "80/tcp".into(), "9/sctp".into(), "x/tcp".into()]),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(
                    [
                        ("8080/tcp".to_string(), None),
                        (
                            "80/tcp".to_string(),
                            Some(vec![PortBinding { host_ip: None, host_port: Some("32768".into()) }]),
                        ),
                    ]
                    .into_iter()
                    .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = view_from_inspect(inspect).unwrap();
        assert_eq!(
            v.ports.exposed,
            [port(53, Protocol::Udp), port(80, Protocol::Tcp), port(8080, Protocol::Tcp)],
            "ExposedPorts and NetworkSettings.Ports together, sorted, without SCTP"
        );
        assert_eq!(v.ports.published.len(), 1);

        let mut summary = serde_json_like();
        summary.ports = Some(vec![
            PortSummary {
                ip: Some("0.0.0.0".into()),
                private_port: 53,
                public_port: Some(53),
                typ: Some(PortSummaryTypeEnum::UDP),
            },
            PortSummary {
                ip: Some("::".into()),
                private_port: 53,
                public_port: Some(53),
                typ: Some(PortSummaryTypeEnum::UDP),
            },
            PortSummary { ip: None, private_port: 8080, public_port: None, typ: Some(PortSummaryTypeEnum::TCP) },
        ]);
        let v = view_from_summary(summary).unwrap();
        assert_eq!(v.ports.exposed, [port(53, Protocol::Udp), port(8080, Protocol::Tcp)]);
        assert_eq!(v.ports.published.len(), 2);
    }

    #[test]
    fn a_container_reaches_the_machine_through_its_first_networks_gateway() {
        use bollard::models::{ContainerInspectResponse, HostConfig, NetworkSettings};
        let endpoint = |ip: &str, gateway: &str| EndpointSettings {
            ip_address: Some(ip.into()),
            gateway: Some(gateway.into()),
            ..Default::default()
        };
        let inspect = |mode: &str, networks: Vec<(&str, EndpointSettings)>| ContainerInspectResponse {
            host_config: Some(HostConfig { network_mode: Some(mode.into()), ..Default::default() }),
            network_settings: Some(NetworkSettings {
                networks: Some(networks.into_iter().map(|(n, ep)| (n.to_string(), ep)).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let two = vec![("zeta", endpoint("172.20.0.2", "172.20.0.1")), ("proxy", endpoint("172.19.0.5", "172.19.0.1"))];
        assert_eq!(gateway_of(&inspect("proxy", two)).as_deref(), Some("172.19.0.1"));
        let no_address = vec![("proxy", endpoint("", "172.19.0.1"))];
        assert_eq!(gateway_of(&inspect("proxy", no_address)), None);
        assert_eq!(gateway_of(&inspect("host", vec![("host", endpoint("", ""))])), None);
    }

    #[test]
    fn a_host_network_list_entry_is_inspected_for_its_exposed_ports() {
        use bollard::models::ContainerSummaryHostConfig;
        let mut summary = serde_json_like();
        assert!(summary_is_complete(&summary));
        summary.host_config =
            Some(ContainerSummaryHostConfig { network_mode: Some("host".into()), ..Default::default() });
        assert!(!summary_is_complete(&summary), "the list shows no port of a host-network container");
        summary.host_config = None;
        assert!(!summary_is_complete(&summary), "Podman's list: no network mode");
    }

    #[test]
    fn summary_becomes_a_view() {
        let json = serde_json_like();
        let summary: ContainerSummary = json;
        let v = view_from_summary(summary).unwrap();
        assert_eq!(v.name, "web");
        assert_eq!(v.state, ContainerState::Running);
        assert_eq!(v.network_mode, "bridge");
        assert_eq!(v.networks.get("bridge"), Some(&Some("172.17.0.2".parse().unwrap())));
        assert_eq!(v.networks.get("empty"), Some(&None));
        assert_eq!(v.labels.get("proxy.web.port").map(String::as_str), Some("80"));
    }

    fn serde_json_like() -> ContainerSummary {
        use bollard::models::{ContainerSummaryHostConfig, ContainerSummaryNetworkSettings, ContainerSummaryStateEnum};
        ContainerSummary {
            id: Some(ID.into()),
            names: Some(vec!["/web".into()]),
            labels: Some([("proxy.web.port".to_string(), "80".to_string())].into_iter().collect()),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            host_config: Some(ContainerSummaryHostConfig { network_mode: Some("bridge".into()), ..Default::default() }),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(
                    [
                        (
                            "bridge".to_string(),
                            EndpointSettings { ip_address: Some("172.17.0.2".into()), ..Default::default() },
                        ),
                        (
                            "empty".to_string(),
                            EndpointSettings { ip_address: Some(String::new()), ..Default::default() },
                        ),
                    ]
                    .into_iter()
                    .collect(),
                ),
            }),
            ..Default::default()
        }
    }
}
