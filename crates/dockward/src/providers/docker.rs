//! The Docker provider: container labels become routes.
//!
//! [`docker_watcher::DockerWatcher`] keeps a snapshot of every labelled running container
//! from the engine's events; this module turns each snapshot into a [`ProviderState`]:
//! the routes, and one [`ProviderError`] per bad label (source = container name, alias when
//! the label belongs to one). On a swarm manager the snapshot holds services too: their
//! routes and errors come out the same way, with the service name as source. While the
//! engine is unreachable the watcher retries in the background (a WARN at most once a
//! minute) and the last known routes keep running.
//!
//! `--docker-label-filter` (or `DOCKWARD_DOCKER_LABEL_FILTER`: comma-separated `key` or
//! `key=value`, all must match) restricts the provider to the containers (and services) carrying those labels, so
//! several dockward instances can share one engine (the end-to-end tests run one per test
//! case this way).

use std::sync::Arc;

use docker_watcher::{DockerConfig, DockerSnapshot, DockerWatcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Provider, ProviderError, ProviderState};

/// How `dockward run` was asked to reach Docker.
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// `--no-docker`: the provider is off.
    pub disabled: bool,
    /// `--docker-host` (or DOCKER_HOST); `None` means the local socket.
    pub host: Option<String>,
    /// `--docker-label-filter`: only containers carrying all of these (`key` or `key=value`).
    pub label_filters: Vec<String>,
}

/// Starts the Docker provider, or returns `None` when it is off.
///
/// Never fails for want of an engine: the watcher connects (and reconnects) in the
/// background.
pub fn spawn(options: &DockerOptions, shutdown: CancellationToken) -> anyhow::Result<Option<Provider>> {
    if options.disabled {
        debug!("docker provider off (--no-docker)");
        return Ok(None);
    }
    let config =
        DockerConfig { label_filters: options.label_filters.clone(), ..DockerConfig::with_host(options.host.clone()) };
    if !config.label_filters.is_empty() {
        info!(labels = ?config.label_filters, "docker provider limited to containers with these labels");
    }
    let watcher = DockerWatcher::new(config);
    let name = format!("docker {}", watcher.host());
    info!(docker_host = watcher.host(), "docker provider starting");
    let mut snapshots = watcher.subscribe();
    let (tx, rx) = watch::channel(ProviderState::default());
    tokio::spawn(watcher.run(shutdown.clone()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
            }
            let state = provider_state(&snapshots.borrow_and_update().clone());
            // Unchanged states (a reconnect that found the same containers) wake nobody.
            tx.send_if_modified(|current| {
                if *current == state {
                    return false;
                }
                *current = state;
                true
            });
        }
    });
    Ok(Some(Provider { name, state: rx }))
}

/// The routes and errors of one snapshot.
///
/// An engine that was reached once and is now lost is an error too (source `docker`), so
/// `dockward routes` tells why container changes are not followed; an engine never reached
/// is only logged, as file-only users need no error row.
pub fn provider_state(snap: &Arc<DockerSnapshot>) -> ProviderState {
    let mut errors: Vec<ProviderError> = snap
        .errors()
        .map(|(container, e)| ProviderError {
            source: container.name.clone(),
            alias: e.alias().map(str::to_string),
            message: e.to_string(),
        })
        .collect();
    if snap.synced && !snap.connected {
        let why = snap.last_error.as_deref().unwrap_or("connection lost");
        errors
            .push(ProviderError::whole("docker", format!("{why}; keeping the last known container routes, retrying")));
    }
    ProviderState { routes: snap.routes().cloned().collect(), errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docker_watcher::check_labels;

    #[test]
    fn snapshot_routes_and_label_errors_become_provider_state() {
        let pairs: Vec<(String, String)> =
            [("proxy.aliases", "ssh,bad"), ("proxy.ssh.port", "2222:22"), ("proxy.bad.port", "22:22:22")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let mut entry = check_labels(&pairs, "box");
        entry.id = "abc".into();
        let mut snap = DockerSnapshot::default();
        snap.containers.insert("abc".into(), entry);
        let mut snap = Arc::new(snap);
        let state = provider_state(&snap);
        assert_eq!(state.routes.len(), 1);
        assert_eq!(state.routes[0].source, "box");
        assert_eq!(
            state.errors,
            vec![ProviderError {
                source: "box".into(),
                alias: Some("bad".into()),
                message: "label proxy.bad.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET".into(),
            }]
        );

        // Lost after it was reached: the routes stay, and the loss is an error row.
        let lost = Arc::make_mut(&mut snap);
        lost.synced = true;
        lost.connected = false;
        lost.last_error = Some("cannot reach the Docker engine at unix:///x".into());
        let state = provider_state(&snap);
        assert_eq!(state.routes.len(), 1);
        assert_eq!(
            state.errors.last().map(|e| e.to_string()).as_deref(),
            Some(
                "docker: cannot reach the Docker engine at unix:///x; keeping the last known container routes, retrying"
            )
        );
    }
}
