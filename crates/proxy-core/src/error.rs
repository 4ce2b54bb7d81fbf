//! Errors of the core, each naming the input at fault.

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

use route_spec::Target;

/// A route that cannot be built or run.
#[derive(Debug, Error)]
pub enum RouteError {
    /// A spec that fails [`RouteSpec::validate`](crate::RouteSpec::validate).
    #[error(transparent)]
    Invalid(#[from] route_spec::SpecError),
    /// The listener could not be bound.
    #[error("cannot bind {protocol} {addr}: {source}")]
    Bind {
        /// tcp or udp.
        protocol: crate::Protocol,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a connection or session could not reach any target.
///
/// Kept apart from client-side failures so that logs and stats can tell "target refused"
/// from "client reset".
#[derive(Debug, Error)]
pub enum DialError {
    /// The host name did not resolve.
    #[error("resolving {target}: {source}")]
    Resolve {
        /// The target being resolved.
        target: Target,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host resolved to no address of a usable family.
    #[error("{target} resolved to no address")]
    NoAddress {
        /// The target.
        target: Target,
    },
    /// Connecting (TCP) or creating the upstream socket (UDP) failed.
    #[error("connecting to {target} ({addr}): {source}")]
    Connect {
        /// The target.
        target: Target,
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The connect timeout fired.
    #[error("connecting to {target}: timed out after {timeout:?}")]
    Timeout {
        /// The target.
        target: Target,
        /// The timeout that fired.
        timeout: std::time::Duration,
    },
    /// A pre-dial hook refused the client.
    #[error("refused by pre-dial hook: {0}")]
    Refused(String),
    /// The sleeping target did not wake (the wake failed or timed out).
    #[error("wake: {0}")]
    Wake(String),
}
