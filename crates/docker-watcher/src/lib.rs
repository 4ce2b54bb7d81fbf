//! docker-watcher: Docker container labels become proxy-core routes, kept live from the
//! engine's events.
//!
//! - [`labels`]: the pure function [`parse_labels`] from a [`ContainerView`] (labels,
//!   networks, state) to a [`ContainerRoutes`] (routes and per-label errors). No I/O.
//! - [`DockerWatcher`]: bollard, read-only endpoints; publishes a [`DockerSnapshot`] of every
//!   labelled running container through a `tokio::sync::watch` channel.
//! - [`swarm`]: on a swarm manager, services' labels become routes too, through the same
//!   parser: [`parse_service_labels`] from a [`ServiceView`] (labels, virtual IPs, running
//!   tasks' addresses).
//! - [`check_labels`] and [`check_container`]: what `dockward check --labels` and
//!   `dockward check --container` need.
//!
//! The crate opens no socket of its own besides the engine connection: the binary hands the
//! routes to proxy-core's `RouteTable::apply`.
//!
//! Layout: everything that talks to the engine lives under `io/` (connect, TLS, list, inspect,
//! event streams, the session and the watcher loop); every other module is pure and is
//! tested without an engine: `labels` and `swarm` (labels to routes), `views` (engine
//! answers to views), `health` (a container's health check as its targets' verdict),
//! `events` (which events matter), `memory` (the snapshot's entries and
//! how answers change them), `recheck` (when to look at a settling service again), `config`,
//! `snapshot` and `error`, and `targets` (where routes without `host` forward to: the
//! container's address, or its engine's machine on the host network or a published port,
//! [`parse_container_labels`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod events;
mod health;
pub mod idle;
mod io;
pub mod labels;
mod memory;
#[cfg(test)]
mod mock_engine;
mod recheck;
mod snapshot;
pub mod swarm;
mod targets;
mod views;

pub use config::{
    DEFAULT_DOCKER_HOST, DockerConfig, EngineAddress, EngineTls, OwnContainer, PODMAN_ROOTFUL_SOCKET, check_engines,
    effective_host, pick_engine, resolve_engines,
};
pub use error::WatchError;
pub use events::{SERVICE_EVENTS, WATCHED_EVENTS};
pub use io::engine::detect_own_container_id;
pub use io::tls::{CA_FILE, CERT_FILE, KEY_FILE};
pub use io::watcher::DockerWatcher;
pub use labels::{ContainerPorts, ExposedPort, PublishedPort};
pub use labels::{ContainerRoutes, ContainerState, ContainerView, LabelError, SkippedAlias, SwarmTarget, parse_labels};
pub use snapshot::DockerSnapshot;
pub use swarm::{ServiceView, TaskView, parse_service_labels};
pub use targets::{EngineSite, parse_container_labels};

/// Checks labels given as `key=value` pairs, offline, for `dockward check --labels`.
///
/// There is no engine to ask for the container's networks, so the container is taken to run
/// with network mode `host`: targets without a `host` field show as `127.0.0.1`.
/// `proxy.network` is therefore not checked here; [`check_container`] checks it.
pub fn check_labels(pairs: &[(String, String)], name: &str) -> ContainerRoutes {
    let view = ContainerView {
        id: String::new(),
        name: name.to_string(),
        labels: pairs.iter().cloned().collect(),
        network_mode: "host".to_string(),
        networks: Default::default(),
        ports: Default::default(),
        image: String::new(),
        state: ContainerState::Running,
    };
    let mut routes = parse_labels(&view, &[]);
    idle::check(&view.labels, &mut routes);
    routes
}

/// Splits `key=value` (as given to `--labels`) at the first `=`; `None` without one.
pub fn split_label_arg(arg: &str) -> Option<(String, String)> {
    let (k, v) = arg.split_once('=')?;
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), v.to_string()))
}

/// Checks one container's labels against its real networks, whatever its state.
///
/// Dockward's own container's networks are taken into account as the watcher would.
pub async fn check_container(
    config: &DockerConfig,
    name: &str,
) -> Result<(ContainerView, ContainerRoutes), WatchError> {
    let host = config.effective_host();
    let docker = io::engine::connect(&host, config.tls.as_deref(), config.request_timeout).await?.docker;
    let facts = io::engine::inspect_view(&docker, &host, name)
        .await?
        .ok_or_else(|| WatchError::NoSuchContainer { host: host.clone(), name: name.to_string() })?;
    let own = io::engine::own_networks_of(&docker, &host, &config.own_container).await?;
    let site = io::engine::site_from_inside(&docker, &host, &config.own_container, &config.site).await?;
    let mut routes = targets::container_routes(&facts, &site, &own);
    idle::check(&facts.view.labels, &mut routes);
    Ok((facts.view, routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_labels_reads_pairs_as_a_host_network_container() {
        let pairs: Vec<(String, String)> = ["proxy.aliases=ssh", "proxy.ssh.port=2222:22", "proxy.web.port=x"]
            .iter()
            .filter_map(|a| split_label_arg(a))
            .collect();
        let r = check_labels(&pairs, "box");
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].targets[0].to_string(), "127.0.0.1:22");
        assert_eq!(r.routes[0].source, "box");
        assert_eq!(r.errors.len(), 1);
        assert_eq!(split_label_arg("a=b=c"), Some(("a".into(), "b=c".into())));
        assert_eq!(split_label_arg("novalue"), None);
        assert_eq!(split_label_arg("=x"), None);
    }
}
