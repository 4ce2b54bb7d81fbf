//! The reload hook: SIGHUP (and anything else that wants one) asks every part that holds
//! outside state to refresh it: routes files are read again; a log file, once dockward writes
//! one, would be reopened (the logrotate convention).
//!
//! A [`Reload`] is a cheap handle to clone; each part that reacts calls
//! [`Reload::subscribe`] once and awaits [`ReloadListener::next`] in its loop.

use tokio::sync::broadcast;

/// Sends reload requests to every listener.
#[derive(Debug, Clone)]
pub struct Reload {
    tx: broadcast::Sender<()>,
}

impl Default for Reload {
    fn default() -> Self {
        Self::new()
    }
}

impl Reload {
    /// A hook with no listener yet.
    pub fn new() -> Self {
        // Requests carry nothing: a listener that lags behind reloads once for all of them.
        let (tx, _) = broadcast::channel(1);
        Reload { tx }
    }

    /// Asks every listener to reload; returns how many listen.
    pub fn trigger(&self) -> usize {
        self.tx.send(()).unwrap_or(0)
    }

    /// A listener for the requests sent from now on.
    pub fn subscribe(&self) -> ReloadListener {
        ReloadListener { rx: self.tx.subscribe() }
    }
}

/// Receives reload requests.
#[derive(Debug)]
pub struct ReloadListener {
    rx: broadcast::Receiver<()>,
}

impl ReloadListener {
    /// Waits for the next request; never returns once every [`Reload`] handle is gone.
    pub async fn next(&mut self) {
        loop {
            match self.rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_listener_hears_each_request_and_a_late_one_hears_only_later_ones() {
        let reload = Reload::new();
        let mut a = reload.subscribe();
        let mut b = reload.subscribe();
        assert_eq!(reload.trigger(), 2);
        let limit = Duration::from_secs(5);
        tokio::time::timeout(limit, a.next()).await.expect("a hears it");
        tokio::time::timeout(limit, b.next()).await.expect("b hears it");
        let mut late = reload.subscribe();
        assert!(tokio::time::timeout(Duration::from_millis(20), late.next()).await.is_err());
        drop(reload);
        assert!(tokio::time::timeout(Duration::from_millis(20), a.next()).await.is_err(), "closed: pending");
    }
}
