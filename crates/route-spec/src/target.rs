//! Where a route forwards to.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// Where a route forwards to: a host name or IP literal, and a port.
///
/// Host names are resolved each time a connection or session is dialled, never once at
/// creation, so a container that comes back with a new address is found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// A DNS name or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The destination port (1..=65535).
    pub port: u16,
}

impl Target {
    /// A target from a host and port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Target { host: host.into(), port }
    }

    /// The socket address when the host is an IP literal, without any lookup.
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Target {
    type Err = SpecError;

    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SpecError::BadTarget(s.to_string());
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
            (host, rest.strip_prefix(':').ok_or_else(bad)?)
        } else {
            s.rsplit_once(':').ok_or_else(bad)?
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Target::new(host, port))
    }
}
