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
//! `--docker-host` may be given several times (or DOCKER_HOST may list several,
//! comma-separated), each `NAME=URL`: one watcher per engine, each reconnecting and
//! resyncing on its own, so losing one engine touches only its routes. Sources then read
//! `NAME/container` (with one engine they stay plain container names), and replicas of one
//! alias on different engines are one balanced route, as on one engine. A named engine on
//! another machine (`nas=tcp://10.0.0.5:2375`) has its containers reached on that machine's
//! address: the host network's ports, or the published ports of the others.
//!
//! TLS (`--docker-tls [NAME=]DIR`, `DOCKER_TLS_VERIFY` with `DOCKER_CERT_PATH`, `https://`)
//! is settled per engine by [`docker_watcher::resolve_engines`]; its certificate files are
//! read at each connect. An engine that was never reached is an error row when it was named
//! (one of several) or given certificates: someone asked for it, so a wrong certificate or
//! a missing file must show. The default engine alone, never reached, is only logged, as
//! file-only users need no row.
//!
//! `--docker-label-filter` (or `DOCKWARD_DOCKER_LABEL_FILTER`: comma-separated `key` or
//! `key=value`, all must match) restricts the provider to the containers (and services) carrying those labels, so
//! several dockward instances can share one engine (the end-to-end tests run one per test
//! case this way).

use std::sync::Arc;

use anyhow::Context as _;
use docker_watcher::{DockerConfig, DockerSnapshot, DockerWatcher, EngineAddress, EngineTls, resolve_engines};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Provider, ProviderError, ProviderState};

/// How `dockward run` was asked to reach Docker.
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// `--no-docker`: the provider is off.
    pub disabled: bool,
    /// `--docker-host` (or DOCKER_HOST), each `URL` or `NAME=URL`; none means DOCKER_HOST's
    /// or the local socket's one engine.
    pub hosts: Vec<EngineAddress>,
    /// `--docker-label-filter`: only containers carrying all of these (`key` or `key=value`).
    pub label_filters: Vec<String>,
    /// `--allow-container-control`: idle sleep may start and stop containers.
    pub container_control: bool,
    /// `--docker-tls` (or DOCKWARD_DOCKER_TLS): certificate directories, `DIR` or `NAME=DIR`.
    pub tls: Vec<EngineTls>,
}

/// One watched engine, as the provider reads it.
struct Engine {
    /// Its name when several engines are watched: the prefix of its sources (`nas/web`).
    prefix: Option<String>,
    /// Whether failing to reach it before it was ever reached is an error row (it was named
    /// or given certificates), not only a log line.
    asked_for: bool,
    snapshots: watch::Receiver<Arc<DockerSnapshot>>,
}

/// One engine's latest snapshot, as [`engines_state`] reads it.
struct EngineSnap<'a> {
    /// See [`Engine::prefix`].
    prefix: Option<&'a str>,
    /// See [`Engine::asked_for`].
    asked_for: bool,
    snap: Arc<DockerSnapshot>,
}

/// Starts the Docker provider, or returns `None` when it is off.
///
/// One watcher per engine, each with its own connection, reconnects and resyncs, so losing
/// one engine touches only its routes. Never fails for want of an engine: the watchers
/// connect (and reconnect) in the background. Fails when several engines are given and one
/// of them has no name, or two share one, or a `--docker-tls` names no engine that can use it.
pub fn spawn(options: &DockerOptions, shutdown: CancellationToken) -> anyhow::Result<Option<Provider>> {
    if options.disabled {
        debug!("docker provider off (--no-docker)");
        return Ok(None);
    }
    let addresses: Vec<EngineAddress> =
        resolve_engines(&options.hosts, &options.tls).map_err(anyhow::Error::msg).context("Docker engines")?;
    if options.container_control {
        info!("container control granted: idle sleep may start, stop, pause, unpause and kill labelled containers");
    }
    if !options.label_filters.is_empty() {
        info!(labels = ?options.label_filters, "docker provider limited to containers with these labels");
    }
    let several = addresses.len() > 1;
    let (wake_tx, mut wake) = mpsc::channel::<()>(1);
    let mut engines = Vec::with_capacity(addresses.len());
    let mut hosts = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let config = DockerConfig {
            label_filters: options.label_filters.clone(),
            container_control: options.container_control,
            ..address.config()
        };
        let watcher = DockerWatcher::new(config);
        let tls = address.tls.as_ref().map(|dir| dir.display().to_string());
        info!(docker_host = watcher.host(), engine = address.name.as_deref().unwrap_or(""), site = ?address.site(), tls, "docker provider starting");
        hosts.push(match &address.name {
            Some(name) => format!("{name}={}", watcher.host()),
            None => watcher.host().to_string(),
        });
        let mut snapshots = watcher.subscribe();
        engines.push(Engine {
            prefix: address.name.clone().filter(|_| several),
            asked_for: address.name.is_some() || address.tls.is_some(),
            snapshots: snapshots.clone(),
        });
        tokio::spawn(watcher.run(shutdown.clone()));
        let wake_tx = wake_tx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = snapshots.changed() => if changed.is_err() { return },
                }
                snapshots.borrow_and_update();
                // Full: a wake-up is pending already, and it reads every engine's latest.
                let _ = wake_tx.try_send(());
            }
        });
    }
    drop(wake_tx);
    let name = format!("docker {}", hosts.join(", "));
    let (tx, rx) = watch::channel(ProviderState::default());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                woken = wake.recv() => if woken.is_none() { return },
            }
            let snaps: Vec<EngineSnap<'_>> = engines
                .iter()
                .map(|e| EngineSnap {
                    prefix: e.prefix.as_deref(),
                    asked_for: e.asked_for,
                    snap: e.snapshots.borrow().clone(),
                })
                .collect();
            let state = engines_state(&snaps);
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
    engines_state(&[EngineSnap { prefix: None, asked_for: false, snap: snap.clone() }])
}

/// The routes and errors of every engine's snapshot. With an engine name, the engine's
/// sources read `NAME/container` and its loss is an error row of source `NAME`; without
/// (one engine) they read as they always did. An engine never reached is a row too when it
/// was asked for (named, or given certificates).
fn engines_state(snaps: &[EngineSnap<'_>]) -> ProviderState {
    let mut state = ProviderState::default();
    for EngineSnap { prefix, asked_for, snap } in snaps {
        let source = |name: &str| match prefix {
            Some(engine) => format!("{engine}/{name}"),
            None => name.to_string(),
        };
        state.routes.extend(snap.routes().map(|r| {
            let mut r = r.clone();
            if prefix.is_some() {
                r.source = source(&r.source);
            }
            r
        }));
        state.errors.extend(snap.errors().map(|(container, e)| ProviderError {
            source: source(&container.name),
            alias: e.alias().map(str::to_string),
            message: e.to_string(),
        }));
        if snap.synced && !snap.connected {
            let why = snap.last_error.as_deref().unwrap_or("connection lost");
            state.errors.push(ProviderError::whole(
                prefix.unwrap_or("docker"),
                format!("{why}; keeping the last known container routes, retrying"),
            ));
        } else if let (false, true, Some(why)) = (snap.synced, *asked_for, snap.last_error.as_deref()) {
            state.errors.push(ProviderError::whole(prefix.unwrap_or("docker"), format!("{why}; retrying")));
        }
    }
    state
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

        // Several engines: sources name the engine, and the lost one is named too.
        let mut other = (*snap).clone();
        other.connected = true;
        let state = engines_state(&[
            EngineSnap { prefix: Some("nas"), asked_for: true, snap: snap.clone() },
            EngineSnap { prefix: Some("local"), asked_for: true, snap: Arc::new(other) },
        ]);
        let sources: Vec<&str> = state.routes.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(sources, ["nas/box", "local/box"]);
        let errors: Vec<String> = state.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "nas/box: route \"bad\": label proxy.bad.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET",
                "nas: cannot reach the Docker engine at unix:///x; keeping the last known container routes, retrying",
                "local/box: route \"bad\": label proxy.bad.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET",
            ]
        );
    }

    #[test]
    fn an_engine_never_reached_is_a_row_only_when_it_was_asked_for() {
        let never = Arc::new(DockerSnapshot {
            last_error: Some(
                "cannot reach the Docker engine at tcp://h:2376: TLS: the engine's certificate is not \
                              signed by the CA in /c/ca.pem"
                    .into(),
            ),
            ..Default::default()
        });
        let row = |prefix, asked_for| {
            engines_state(&[EngineSnap { prefix, asked_for, snap: never.clone() }])
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(row(None, false), Vec::<String>::new(), "the default socket, never reached: a log line only");
        assert_eq!(
            row(Some("nas"), true),
            ["nas: cannot reach the Docker engine at tcp://h:2376: TLS: the engine's certificate is not signed by \
              the CA in /c/ca.pem; retrying"]
        );
        assert_eq!(row(None, true).len(), 1, "one engine given certificates: its failure shows as source docker");
        // Before the first attempt has failed there is nothing to say.
        let fresh = Arc::new(DockerSnapshot::default());
        assert!(engines_state(&[EngineSnap { prefix: Some("nas"), asked_for: true, snap: fresh }]).errors.is_empty());
    }
}
