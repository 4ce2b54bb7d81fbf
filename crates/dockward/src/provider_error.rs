//! The error of an input that did not become a route, kept apart from the providers so that
//! the pure parsers (`routes_file`) need not depend on the provider machinery that calls them.

use std::fmt;

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
