//! Talking to the Docker engine: connecting, listing and inspecting containers (the answers
//! are read into views by [`crate::views`]).
//!
//! Only read endpoints are used (ping, version, list, inspect, events), so dockward works
//! behind a read-only socket proxy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::ListContainersOptions;

use crate::config::OwnContainer;
use crate::error::WatchError;
use crate::idle::config::LABEL_IDLE_TIMEOUT;
use crate::io::tls::TlsEngine;
use crate::labels::LABEL_PREFIX;
use crate::targets::EngineSite;
use crate::views::{
    ContainerFacts, facts_from_inspect, facts_from_summary, gateway_of, id_from_cgroup, id_from_mountinfo,
    summary_is_complete,
};

/// A connected engine: the bollard client, and for a TLS engine what bare requests
/// ([`crate::io::http`]) dial it with.
#[derive(Debug)]
pub(crate) struct Connected {
    /// The client, its API version negotiated.
    pub(crate) docker: Docker,
    /// The engine's TLS set-up, when it is reached over TLS.
    pub(crate) tls: Option<Arc<TlsEngine>>,
}

/// A client for `host` (`unix:///path`, `tcp://host:port`, `http://host:port`,
/// `https://host:port`, or a bare socket path), over TLS with the certificate directory `tls`
/// when given, with `timeout` on every request, its API version negotiated down to the
/// engine's (the engine here speaks 1.41; bollard starts from a newer one).
///
/// Every connection to an engine is made here: the watcher's sessions and `dockward check
/// --container` alike. The certificate files are read at each call, so renewed ones are
/// used from the next reconnect on.
pub(crate) async fn connect(host: &str, tls: Option<&Path>, timeout: Duration) -> Result<Connected, WatchError> {
    let connect_error = |source| WatchError::Connect { host: host.to_string(), source };
    let (docker, tls) = match tls {
        Some(dir) => {
            let engine = Arc::new(
                TlsEngine::load(host, dir).map_err(|message| WatchError::Tls { host: host.to_string(), message })?,
            );
            (engine.docker(timeout).map_err(connect_error)?, Some(engine))
        }
        None => {
            let url = if host.starts_with('/') { format!("unix://{host}") } else { host.to_string() };
            (Docker::connect_with_host(&url).map_err(connect_error)?.with_timeout(timeout), None)
        }
    };
    let docker = match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Err(_) => return Err(connect_error(BollardError::RequestTimeoutError)),
        Ok(Err(BollardError::DockerResponseServerError { status_code: 400, message }))
            if tls.is_none() && message.contains("HTTPS server") =>
        {
            return Err(WatchError::Tls {
                host: host.to_string(),
                message: "the engine speaks TLS: give its certificate directory (--docker-tls [NAME=]DIR, or \
                          DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH)"
                    .to_string(),
            });
        }
        Ok(Err(source)) => return Err(connect_error(source)),
        Ok(Ok(docker)) => docker,
    };
    Ok(Connected { docker, tls })
}

/// `"20.10.24 (API 1.41)"`: the engine's version, for logs.
pub async fn engine_version(docker: &Docker, host: &str) -> Result<String, WatchError> {
    let v = docker.version().await.map_err(|source| WatchError::engine(host, "version", source))?;
    Ok(format!("{} (API {})", v.version.as_deref().unwrap_or("unknown"), v.api_version.as_deref().unwrap_or("unknown")))
}

/// Every running or paused container carrying all of `label_filters`, with its published
/// ports; with `sleepers`, stopped ones labelled `proxy.idle_timeout` too (idle sleep keeps
/// their ports bound).
///
/// Podman's list omits `HostConfig`, so a list entry does not say that its container uses
/// the host's network: such entries (with `proxy.*` labels) are inspected instead.
pub(crate) async fn list_views(
    docker: &Docker,
    host: &str,
    label_filters: &[String],
    sleepers: bool,
) -> Result<Vec<ContainerFacts>, WatchError> {
    let filters =
        (!label_filters.is_empty()).then(|| [("label".to_string(), label_filters.to_vec())].into_iter().collect());
    let options = ListContainersOptions { all: sleepers, filters, ..Default::default() };
    let list =
        docker.list_containers(Some(options)).await.map_err(|source| WatchError::engine(host, "list", source))?;
    let mut views = Vec::with_capacity(list.len());
    for summary in list {
        // Listing stopped containers too (idle sleep): only those that may sleep matter.
        let stopped = summary.state.is_some_and(|s| !matches!(s.to_string().as_str(), "running" | "paused"));
        if sleepers && stopped && !summary.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_IDLE_TIMEOUT)) {
            continue;
        }
        if summary_is_complete(&summary) {
            views.extend(facts_from_summary(summary));
            continue;
        }
        let labelled = summary.labels.as_ref().is_some_and(|l| l.keys().any(|k| k.starts_with(LABEL_PREFIX)));
        if let (true, Some(id)) = (labelled, summary.id.as_deref()) {
            // Gone since the list (404): nothing to add.
            views.extend(inspect_view(docker, host, id).await?);
        }
    }
    Ok(views)
}

/// One container by id or name; `Ok(None)` when the engine says it does not exist.
pub(crate) async fn inspect_view(
    docker: &Docker,
    host: &str,
    id_or_name: &str,
) -> Result<Option<ContainerFacts>, WatchError> {
    match docker.inspect_container(id_or_name, None).await {
        Ok(c) => Ok(facts_from_inspect(c)),
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(source) => Err(WatchError::engine(host, "inspect", source)),
    }
}

/// The id of the container this process runs in, when it looks like it runs in one.
///
/// Docker bind-mounts `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` from
/// `/var/lib/docker/containers/<id>/`, which `/proc/self/mountinfo` shows; cgroup v1 paths
/// (`/docker/<id>`, `docker-<id>.scope`) name it too. As a last resort `HOSTNAME` (Docker's
/// default hostname is the short id) is tried when `/.dockerenv` exists. The engine is asked
/// about the candidate before it is trusted.
pub fn detect_own_container_id() -> Option<String> {
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo")
        && let Some(id) = id_from_mountinfo(&mountinfo)
    {
        return Some(id);
    }
    if let Ok(cgroup) = std::fs::read_to_string("/proc/self/cgroup")
        && let Some(id) = id_from_cgroup(&cgroup)
    {
        return Some(id);
    }
    if std::path::Path::new("/.dockerenv").exists() {
        return std::env::var("HOSTNAME").ok().filter(|h| h.len() >= 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    None
}

/// The networks of dockward's own container, found as `own` says (see [`own_networks`]).
pub(crate) async fn own_networks_of(
    docker: &Docker,
    host: &str,
    own: &OwnContainer,
) -> Result<Vec<String>, WatchError> {
    match own {
        OwnContainer::Disabled => Ok(Vec::new()),
        OwnContainer::Id(id) => own_networks(docker, host, id).await,
        OwnContainer::Detect => match detect_own_container_id() {
            Some(id) => own_networks(docker, host, &id).await,
            None => Ok(Vec::new()),
        },
    }
}

/// Where dockward reaches the containers of an engine configured at `site` from: a local
/// engine's machine is [`EngineSite::LocalFromContainer`] (its gateway) when dockward runs
/// in a container of it on networks of its own, found as `own` says; else `site` itself.
pub(crate) async fn site_from_inside(
    docker: &Docker,
    host: &str,
    own: &OwnContainer,
    site: &EngineSite,
) -> Result<EngineSite, WatchError> {
    let id = match (site, own) {
        (EngineSite::Local, OwnContainer::Id(id)) => id.clone(),
        (EngineSite::Local, OwnContainer::Detect) => match detect_own_container_id() {
            Some(id) => id,
            None => return Ok(site.clone()),
        },
        _ => return Ok(site.clone()),
    };
    match docker.inspect_container(&id, None).await {
        Ok(c) => Ok(gateway_of(&c).map(EngineSite::LocalFromContainer).unwrap_or_else(|| site.clone())),
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(site.clone()),
        Err(source) => Err(WatchError::engine(host, "inspect", source)),
    }
}

/// The networks of dockward's own container that another container can share, given its id:
/// empty when it runs in host mode, on no network, or the engine does not know the id.
pub async fn own_networks(docker: &Docker, host: &str, own_id: &str) -> Result<Vec<String>, WatchError> {
    let Some(ContainerFacts { view, .. }) = inspect_view(docker, host, own_id).await? else {
        return Ok(Vec::new());
    };
    if view.network_mode == "host" {
        return Ok(Vec::new());
    }
    Ok(view
        .networks
        .into_iter()
        .filter(|(name, ip)| ip.is_some() && name != "host" && name != "none")
        .map(|(n, _)| n)
        .collect())
}
