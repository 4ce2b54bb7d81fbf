//! The controller: merges what every provider wants and applies it to the route table.
//!
//! It is the only caller of [`RouteTable::apply`]. It applies once at start, again whenever
//! any provider publishes a new state, and every [`RETRY_INTERVAL`] so that routes that
//! failed to bind (a port held by another program) are retried without any change.

use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use proxy_core::{RouteSpec, RouteTable};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::providers::{Provider, ProviderError};

/// How often the desired routes are re-applied even when nothing changed.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Owns the route table and drives it from the providers.
pub struct Controller {
    table: Arc<RouteTable>,
    providers: Vec<Provider>,
}

/// A read-only view of the controller for the admin API: the table and every provider's
/// latest state.
#[derive(Clone)]
pub struct View {
    table: Arc<RouteTable>,
    providers: Vec<Provider>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("routes", &self.table.status().len())
            .field("providers", &self.providers.len())
            .finish()
    }
}

impl View {
    /// The route table.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The errors every provider currently reports, in provider order.
    pub fn provider_errors(&self) -> Vec<ProviderError> {
        self.providers.iter().flat_map(|p| p.state.borrow().errors.clone()).collect()
    }
}

impl Controller {
    /// A controller over a new, empty route table. Must be created inside a Tokio runtime.
    pub fn new(providers: Vec<Provider>) -> Self {
        Controller { table: Arc::new(RouteTable::new()), providers }
    }

    /// A view for readers (the admin API).
    pub fn view(&self) -> View {
        View { table: self.table.clone(), providers: self.providers.clone() }
    }

    /// Every provider's routes, in provider order.
    fn desired(&mut self) -> Vec<RouteSpec> {
        self.providers.iter_mut().flat_map(|p| p.state.borrow_and_update().routes.clone()).collect()
    }

    async fn apply(&mut self, why: &str) {
        let desired = self.desired();
        let report = self.table.apply(desired).await;
        debug!(
            why,
            started = report.started.len(),
            updated = report.updated.len(),
            removed = report.removed.len(),
            unchanged = report.unchanged.len(),
            failed = report.failed.len(),
            "routes applied"
        );
    }

    /// Applies until `shutdown` fires, then stops every route, letting open connections
    /// finish for at most the largest drain grace of the routes, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.apply("start").await;
        let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + RETRY_INTERVAL, RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Providers whose channel closed still count with their last state, but are no
        // longer waited on.
        let mut open: Vec<usize> = (0..self.providers.len()).collect();
        loop {
            // Receivers cloned after the last apply have seen what it applied.
            let waits: Vec<_> = open
                .iter()
                .map(|&i| {
                    let mut rx = self.providers[i].state.clone();
                    Box::pin(async move { (i, rx.changed().await.is_ok()) })
                })
                .collect();
            let changed = async move {
                if waits.is_empty() {
                    return futures::future::pending().await;
                }
                select_all(waits).await.0
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                (i, alive) = changed => {
                    if !alive {
                        debug!(provider = %self.providers[i].name, "provider stopped publishing");
                        open.retain(|&j| j != i);
                    }
                    self.apply("provider changed").await;
                }
                _ = retry.tick() => self.apply("periodic").await,
            }
        }
        let grace = self.table.status().iter().map(|r| r.spec.options.drain_grace).max().unwrap_or_default();
        if grace.is_zero() {
            info!("stopping: closing every route");
        } else {
            info!(drain_grace = ?grace, "stopping: listeners closed, open connections may finish");
        }
        self.table.shutdown_with_grace(grace).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use proxy_core::RouteState;
    use tokio::sync::watch;

    use super::*;
    use crate::providers::ProviderState;
    use crate::routes_file;

    fn provider(text: &str) -> (watch::Sender<ProviderState>, Provider) {
        let loaded = routes_file::parse("t.yml", text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let (tx, rx) = watch::channel(ProviderState { routes: loaded.routes, errors: vec![] });
        (tx, Provider { name: "test".into(), state: rx })
    }

    async fn wait_for(view: &View, what: impl Fn(&View) -> bool) {
        wait_up_to(Duration::from_secs(10), view, what).await
    }

    async fn wait_up_to(limit: Duration, view: &View, what: impl Fn(&View) -> bool) {
        tokio::time::timeout(limit, async {
            while !what(view) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition not reached");
    }

    #[tokio::test]
    async fn routes_of_every_provider_are_applied_and_follow_changes() {
        let (_a_tx, a) = provider("routes:\n  a: {scheme: tcp, port: 1, bind: 127.0.0.1}\n");
        let (b_tx, b) = provider("routes:\n  b: {scheme: tcp, port: 2, bind: 127.0.0.1}\n");
        let controller = Controller::new(vec![a, b]);
        let view = controller.view();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controller.run(shutdown.clone()));
        wait_for(&view, |v| v.table().status().len() == 2).await;

        b_tx.send_replace(ProviderState::default());
        wait_for(&view, |v| v.table().status().iter().map(|r| r.spec.alias.clone()).collect::<Vec<_>>() == ["a"]).await;

        shutdown.cancel();
        task.await.unwrap();
        assert!(view.table().status().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_that_could_not_bind_is_retried_periodically() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let (_tx, p) = provider(&format!("routes:\n  a: {{port: '{port}:9', bind: 127.0.0.1}}\n"));
        let controller = Controller::new(vec![p]);
        let view = controller.view();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controller.run(shutdown.clone()));
        wait_for(&view, |v| v.table().status().first().is_some_and(|r| r.state.name() == "error")).await;

        // Time is paused: it jumps ahead whenever every task waits, so the retry comes at once.
        drop(holder);
        let listening = |v: &View| v.table().status().first().is_some_and(|r| r.state == RouteState::Listening);
        wait_up_to(RETRY_INTERVAL * 2, &view, listening).await;
        shutdown.cancel();
        task.await.unwrap();
    }
}
