//! The error of a route value that is wrong, naming the input at fault.

use thiserror::Error;

use crate::text::Escaped;

/// A route value that cannot be right, whatever the network says.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// A spec that fails [`RouteSpec::validate`](crate::RouteSpec::validate).
    #[error("route \"{}\": {reason}", Escaped(alias))]
    Invalid {
        /// The route's alias.
        alias: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// A scheme name that is not one of [`Scheme::NAMES`](crate::Scheme::NAMES).
    #[error("unknown scheme {0:?} (expected one of tcp, udp, tcp4, tcp6, udp4, udp6)")]
    UnknownScheme(String),
    /// A target that is not `host:port`.
    #[error("bad target {0:?}: expected host:port, IP:port or [IPv6]:port with a port from 1 to 65535")]
    BadTarget(String),
}
