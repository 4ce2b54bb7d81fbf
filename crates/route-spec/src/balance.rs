//! How a route spreads its clients over its targets, and whether it checks them actively.
//!
//! The strategies themselves run in proxy-core; these are the values a route names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a route spreads new connections (TCP) or sessions (UDP) over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each new connection or session takes the next healthy target in turn.
    #[default]
    RoundRobin,
    /// The healthy target with the fewest open connections or sessions.
    LeastConn,
    /// A client IP always goes to the same target while that target is healthy.
    IpHash,
}

impl Balance {
    /// Every strategy name, as written in the `balance` field.
    pub const NAMES: [&'static str; 3] = ["round_robin", "least_conn", "ip_hash"];

    /// The name used in labels, the routes file and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Balance {
    type Err = String;

    /// Parses a strategy name (case-insensitive; `-` may stand for `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_conn" => Ok(Balance::LeastConn),
            "ip_hash" => Ok(Balance::IpHash),
            _ => Err(format!("expected one of {}", Balance::NAMES.join(", "))),
        }
    }
}

/// Whether a route checks its targets actively, besides the passive health every route has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// Only passive health: failed dials mark a target down.
    #[default]
    Off,
    /// Connect to every target each `health_interval` (TCP routes only).
    Tcp,
}

impl HealthCheck {
    /// The name used in labels, the routes file and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheck::Off => "off",
            HealthCheck::Tcp => "tcp",
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthCheck {
    type Err = String;

    /// Parses `tcp`, or `off` and its usual spellings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(HealthCheck::Tcp),
            "off" | "none" | "false" | "no" => Ok(HealthCheck::Off),
            _ => Err("expected tcp or off".to_string()),
        }
    }
}
