//! PROXY protocol settings of a route: which version to send, whether to accept one.
//!
//! Reading and writing the headers is proxy-core's (`proxy_core::proxy_protocol`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default of the `proxy_protocol_timeout` route option.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PROXY protocol version, as the `proxy_protocol` option names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The text header (`PROXY TCP4 ...\r\n`); TCP only.
    V1,
    /// The binary header; TCP and UDP.
    V2,
}

impl Version {
    /// `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = String;

    /// `v1`/`1` or `v2`/`2`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            _ => Err("expected v1 or v2 (or off)".to_string()),
        }
    }
}

/// Whether a route insists on a PROXY header from its trusted peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// A trusted peer must send a header; an untrusted peer is refused.
    Required,
    /// A trusted peer may send a header; anything else is the client's data.
    Optional,
}

impl Accept {
    /// `required` or `optional`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accept::Required => "required",
            Accept::Optional => "optional",
        }
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accept {
    type Err = String;

    /// `required` or `optional`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "required" => Ok(Accept::Required),
            "optional" => Ok(Accept::Optional),
            _ => Err("expected required or optional (or off)".to_string()),
        }
    }
}
