//! Providers: the sources of desired routes (route files, Docker).
//!
//! Each provider runs on its own and publishes its whole current state through a
//! [`tokio::sync::watch`] channel: the routes it wants and the errors of inputs that did not
//! become routes. The [controller](crate::controller) merges every provider's latest state
//! and applies it; a provider never touches sockets.

pub mod docker;
pub mod file;

use proxy_core::RouteSpec;
use tokio::sync::watch;

pub use crate::provider_error::ProviderError;

/// What one provider wants right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderState {
    /// The routes it wants served.
    pub routes: Vec<RouteSpec>,
    /// Inputs that did not become routes (a broken file, a container with bad labels).
    pub errors: Vec<ProviderError>,
}

/// A running provider, as the controller sees it.
#[derive(Debug, Clone)]
pub struct Provider {
    /// A name for logs: `file examples/routes.yml`, `docker`.
    pub name: String,
    /// Its latest state; changes wake the controller.
    pub state: watch::Receiver<ProviderState>,
}
