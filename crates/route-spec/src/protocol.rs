//! Transports, IP families and the scheme names that combine them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// The transport a route forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A stream: every accepted connection is dialled through to a target.
    Tcp,
    /// Datagrams: every client address gets a session with its own upstream socket.
    Udp,
}

impl Protocol {
    /// The lowercase name used in logs, labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which IP family a route's listener may use.
///
/// The `tcp4`/`tcp6`/`udp4`/`udp6` schemes force a family; plain `tcp`/`udp` take the
/// bind address's family ([`Family::Any`]). With [`Family::V6`] an IPv6 listener is bound
/// with `IPV6_V6ONLY`, so it never receives IPv4-mapped clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The bind address decides.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// A scheme as written in labels and route files: `tcp`, `udp`, `tcp4`, `tcp6`, `udp4`, `udp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scheme {
    /// The transport.
    pub protocol: Protocol,
    /// The family constraint.
    pub family: Family,
}

impl Scheme {
    /// Every scheme name this crate accepts, for error messages and did-you-mean hints.
    pub const NAMES: [&'static str; 6] = ["tcp", "udp", "tcp4", "tcp6", "udp4", "udp6"];
}

impl FromStr for Scheme {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (protocol, family) = match s {
            "tcp" => (Protocol::Tcp, Family::Any),
            "tcp4" => (Protocol::Tcp, Family::V4),
            "tcp6" => (Protocol::Tcp, Family::V6),
            "udp" => (Protocol::Udp, Family::Any),
            "udp4" => (Protocol::Udp, Family::V4),
            "udp6" => (Protocol::Udp, Family::V6),
            other => return Err(SpecError::UnknownScheme(other.to_string())),
        };
        Ok(Scheme { protocol, family })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match self.family {
            Family::Any => "",
            Family::V4 => "4",
            Family::V6 => "6",
        };
        write!(f, "{}{}", self.protocol, suffix)
    }
}
