//! A container's ports as its engine reports them (exposed, published), and GoDoxy's rules
//! that read them (pure): the port an alias without `port` targets, and when an alias
//! without `scheme` is UDP (GoDoxy's `internal/routevalidate/finalize.go` and
//! `port_selection.go`).

use route_spec::Protocol;

/// One port a container exposes: `EXPOSE 53/udp` in its image, `--expose`, or implied by
/// publishing it (`-p 5353:53/udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExposedPort {
    /// The port inside the container.
    pub port: u16,
    /// TCP or UDP (SCTP ports are left out).
    pub protocol: Protocol,
}

/// One port a container publishes on its engine's machine (`-p 8080:80`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    /// The port inside the container (80).
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address it is published on (`0.0.0.0`, `::`, `127.0.0.1`, or empty for all).
    pub host_ip: String,
    /// The port on the engine's machine (8080).
    pub host_port: u16,
}

/// A container's ports, as the engine's list or inspect answer gives them.
///
/// A container on the host network has exposed ports only (the engine ignores `-p` there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerPorts {
    /// Every port it exposes or publishes, once per protocol, sorted.
    pub exposed: Vec<ExposedPort>,
    /// Where its ports are published, sorted by container port.
    pub published: Vec<PublishedPort>,
}

/// GoDoxy's order of preference for the port of an alias that sets none.
const PREFERRED_PORTS: &[u16] = &[80, 8080, 3000, 8000, 443, 8443];

/// What an image's (or alias's) name says a route is, in GoDoxy's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultScheme {
    /// A stream route (`postgres`, `redis`, `minecraft-server`).
    Tcp,
    /// An HTTP or HTTPS route, which GoDoxy serves (`nginx`, `grafana`, `portainer-ce`).
    Http,
}

/// GoDoxy's `ImageNamePortMapTCP` (internal/routevalidate/port_selection.go).
const IMAGE_TCP: &[(&str, u16)] = &[
    ("mssql", 1433),
    ("mysql", 3306),
    ("mariadb", 3306),
    ("postgres", 5432),
    ("pgvecto-rs", 5432),
    ("pgvector", 5432),
    ("rabbitmq", 5672),
    ("redis", 6379),
    ("memcached", 11211),
    ("mongo", 27017),
    ("minecraft-server", 25565),
];

/// GoDoxy's `ImageNamePortMapHTTP` and `ImageNamePortMapHTTPS`, then `AliasPortMapHTTPS`
/// (by alias): HTTP(S) routes, which make no dockward route unless a scheme says otherwise.
const IMAGE_HTTP: &[(&str, u16)] = &[
    ("adguardhome", 3000),
    ("bazarr", 6767),
    ("calibre-web", 8083),
    ("changedetection.io", 3000),
    ("dockge", 5001),
    ("gitea", 3000),
    ("gogs", 3000),
    ("grafana", 3000),
    ("home-assistant", 8123),
    ("homebridge", 8581),
    ("httpd", 80),
    ("immich", 3001),
    ("jellyfin", 8096),
    ("lidarr", 8686),
    ("microbin", 8080),
    ("nginx", 80),
    ("nginx-proxy-manager", 81),
    ("open-webui", 8080),
    ("plex", 32400),
    ("prometheus", 9090),
    ("prowlarr", 9696),
    ("radarr", 7878),
    ("radarr-sma", 7878),
    ("rsshub", 1200),
    ("rss-bridge", 80),
    ("sonarr", 8989),
    ("sonarr-sma", 8989),
    ("uptime-kuma", 3001),
    ("whisparr", 6969),
    ("portainer-be", 9443),
    ("portainer-ce", 9443),
];

/// GoDoxy's `AliasPortMapHTTPS`: aliases that are HTTP(S) routes on a known port.
const ALIAS_HTTP: &[(&str, u16)] = &[("portainer", 9443), ("crafty", 8080)];

/// The name part of an image reference, as GoDoxy's `parseImage` takes it: without registry,
/// path, tag or digest (`ghcr.io/tensorchord/pgvecto-rs:pg16` → `pgvecto-rs`). Unlike
/// GoDoxy's, a registry with a port (`localhost:5000/redis`) does not confuse it.
pub(crate) fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

/// The scheme and port GoDoxy gives an alias that sets neither, by its container's image name
/// (HTTP tables first, as GoDoxy looks), else by the alias itself; `None` when neither is known.
pub(crate) fn default_port(image: &str, alias: &str) -> Option<(DefaultScheme, u16)> {
    let name = image_name(image);
    let find = |table: &[(&str, u16)], key: &str| table.iter().find(|(n, _)| *n == key).map(|(_, p)| *p);
    if let Some(port) = find(IMAGE_HTTP, name) {
        return Some((DefaultScheme::Http, port));
    }
    if let Some(port) = find(IMAGE_TCP, name) {
        return Some((DefaultScheme::Tcp, port));
    }
    find(ALIAS_HTTP, alias).map(|port| (DefaultScheme::Http, port))
}

/// The port GoDoxy targets for an alias without `port`: the first of 80, 8080, 3000, 8000,
/// 443, 8443 the container exposes, else its lowest; `None` when it exposes none. The
/// protocol does not matter here, as in GoDoxy.
pub(crate) fn preferred_port(exposed: &[ExposedPort]) -> Option<u16> {
    let has = |port: u16| exposed.iter().any(|e| e.port == port);
    PREFERRED_PORTS.iter().copied().find(|p| has(*p)).or_else(|| exposed.iter().map(|e| e.port).min())
}

/// True when the container exposes `port` over UDP and not over TCP: GoDoxy's reason to make
/// an alias without `scheme` a UDP route. (A port exposed over both stays TCP; in GoDoxy the
/// answer then depends on the order of a Go map.)
pub(crate) fn udp_only(exposed: &[ExposedPort], port: u16) -> bool {
    let has = |protocol| exposed.contains(&ExposedPort { port, protocol });
    has(Protocol::Udp) && !has(Protocol::Tcp)
}

impl ContainerPorts {
    /// The container port published on the engine's machine as `host_port`, when the label
    /// names that rather than a port of the container: GoDoxy targets the container port
    /// when it forwards to the container's own address (`-p 8080:80` and `port: 2222:8080`
    /// forward to port 80). `None` when `host_port` is itself a port the container exposes.
    pub fn container_port_published_as(&self, host_port: u16, protocol: Protocol) -> Option<u16> {
        if self.exposed.contains(&ExposedPort { port: host_port, protocol }) {
            return None;
        }
        self.published.iter().find(|p| p.host_port == host_port && p.protocol == protocol).map(|p| p.container_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(exposed: &[(u16, Protocol)], published: &[(u16, Protocol, u16)]) -> ContainerPorts {
        ContainerPorts {
            exposed: exposed.iter().map(|&(port, protocol)| ExposedPort { port, protocol }).collect(),
            published: published
                .iter()
                .map(|&(container_port, protocol, host_port)| PublishedPort {
                    container_port,
                    protocol,
                    host_ip: String::new(),
                    host_port,
                })
                .collect(),
        }
    }

    use Protocol::{Tcp, Udp};

    #[test]
    fn image_names_are_read_as_godoxy_reads_them() {
        assert_eq!(image_name("ghcr.io/tensorchord/pgvecto-rs"), "pgvecto-rs");
        assert_eq!(image_name("redis:latest"), "redis");
        assert_eq!(image_name("redis:7.4.0-alpine"), "redis");
        assert_eq!(image_name("itzg/minecraft-server"), "minecraft-server");
        assert_eq!(image_name("localhost:5000/postgres:16@sha256:abc"), "postgres");
        assert_eq!(image_name(""), "");
    }

    #[test]
    fn image_and_alias_names_give_godoxys_scheme_and_port() {
        assert_eq!(default_port("postgres:16", "db"), Some((DefaultScheme::Tcp, 5432)));
        assert_eq!(default_port("itzg/minecraft-server:latest", "mc"), Some((DefaultScheme::Tcp, 25565)));
        assert_eq!(default_port("nginx", "web"), Some((DefaultScheme::Http, 80)));
        assert_eq!(default_port("portainer/portainer-ce:2.21", "x"), Some((DefaultScheme::Http, 9443)));
        assert_eq!(default_port("busybox", "portainer"), Some((DefaultScheme::Http, 9443)));
        assert_eq!(default_port("busybox", "app"), None);
    }

    #[test]
    fn the_preferred_port_follows_godoxys_order_then_the_lowest() {
        let preferred = |exposed: &[(u16, Protocol)]| preferred_port(&ports(exposed, &[]).exposed);
        assert_eq!(preferred(&[(9000, Tcp), (8443, Tcp), (3000, Tcp)]), Some(3000));
        assert_eq!(preferred(&[(443, Tcp), (8080, Udp)]), Some(8080), "any protocol");
        assert_eq!(preferred(&[(9000, Tcp), (53, Udp), (22, Tcp)]), Some(22));
        assert_eq!(preferred(&[]), None);
    }

    #[test]
    fn udp_only_ports_make_udp_routes() {
        let p = ports(&[(53, Udp), (27015, Tcp), (27015, Udp)], &[]);
        assert!(udp_only(&p.exposed, 53));
        assert!(!udp_only(&p.exposed, 27015), "both protocols: TCP, the default");
        assert!(!udp_only(&p.exposed, 80));
    }

    #[test]
    fn a_published_port_named_by_the_label_becomes_the_container_port() {
        let p = ports(&[(80, Tcp), (8080, Tcp)], &[(80, Tcp, 8080), (80, Tcp, 9090), (53, Udp, 5353)]);
        assert_eq!(p.container_port_published_as(9090, Tcp), Some(80));
        assert_eq!(p.container_port_published_as(8080, Tcp), None, "8080 is a port of the container too");
        assert_eq!(p.container_port_published_as(5353, Tcp), None, "published over UDP only");
        assert_eq!(p.container_port_published_as(5353, Udp), Some(53));
    }
}
