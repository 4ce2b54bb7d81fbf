//! Providers: the sources of desired routes (route files, Docker).
//!
//! Each provider runs on its own and publishes its whole current state through a
//! [`tokio::sync::watch`] channel: the routes it wants and the errors of inputs that did not
//! become routes. The [controller](crate::controller) merges every provider's latest state
//! and applies it; a provider never touches sockets.

pub mod docker;
pub mod file;

use std::fmt;

use proxy_core::RouteSpec;
use tokio::sync::watch;

/// What one provider wants right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderState {
    /// The routes it wants served.
    pub routes: Vec<RouteSpec>,
    /// Inputs that did not become routes (a broken file, a container with bad labels).
    pub errors: Vec<ProviderError>,
}

/// An input that did not become a route, shown by `dockward routes` and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// Where it came from: a file path or a container name.
    pub source: String,
    /// The route it concerns, when the error is about one route rather than the whole input.
    pub alias: Option<String>,
    /// What is wrong, naming the field and value at fault.
    pub message: String,
}

impl ProviderError {
    /// An error about the whole input (`source`).
    pub fn whole(source: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError { source: source.into(), alias: None, message: message.into() }
    }

    /// An error about one route of `source`.
    pub fn route(source: impl Into<String>, alias: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError { source: source.into(), alias: Some(alias.into()), message: message.into() }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.alias {
            Some(alias) => write!(f, "{}: route {:?}: {}", self.source, alias, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// A running provider, as the controller sees it.
#[derive(Debug, Clone)]
pub struct Provider {
    /// A name for logs: `file examples/routes.yml`, `docker`.
    pub name: String,
    /// Its latest state; changes wake the controller.
    pub state: watch::Receiver<ProviderState>,
}
