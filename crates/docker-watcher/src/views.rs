//! The engine's answers (a list entry, an inspect answer, /proc text) read into
//! [`ContainerView`]s and ids. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, ContainerSummary, EndpointSettings};

use crate::labels::{ContainerState, ContainerView};

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
        state: c.state.map(|s| ContainerState::parse(s.as_ref())).unwrap_or_default(),
        id,
    })
}

/// Whether a list entry says all a view needs: Podman's lacks `HostConfig` (the network mode).
pub(crate) fn summary_is_complete(c: &ContainerSummary) -> bool {
    c.host_config.as_ref().is_some_and(|h| h.network_mode.is_some())
}

/// A view from an inspect answer; `None` without an id.
pub fn view_from_inspect(c: ContainerInspectResponse) -> Option<ContainerView> {
    let id = c.id?;
    let name = c.name.map(|n| n.trim_start_matches('/').to_string()).unwrap_or_else(|| short_id(&id).to_string());
    Some(ContainerView {
        name,
        labels: c.config.and_then(|cfg| cfg.labels).map(sorted).unwrap_or_default(),
        network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
        networks: c.network_settings.and_then(|n| n.networks).map(addresses).unwrap_or_default(),
        state: c.state.and_then(|s| s.status).map(|s| ContainerState::parse(s.as_ref())).unwrap_or_default(),
        id,
    })
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
