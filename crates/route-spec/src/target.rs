//! Where a route forwards to, and what its provider says of its health.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// Where a route forwards to: a host name or IP literal, and a port, with its provider's
/// verdict on its health when it has one.
///
/// Host names are resolved each time a connection or session is dialled, never once at
/// creation, so a container that comes back with a new address is found.
///
/// Two targets with the same host and port and different [`verdict`](Target::verdict)s are
/// the same place: [`Target::same_address`] says so. Equality compares the verdict too, so
/// a changed verdict is a changed route (updated in place).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// A DNS name or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The destination port (1..=65535).
    pub port: u16,
    /// What the target's provider says of its health (Docker's `HEALTHCHECK`), if it says
    /// anything. Set by providers only: no label or routes-file field writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl Target {
    /// A target from a host and port, without a verdict.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Target { host: host.into(), port, verdict: None }
    }

    /// The same target with `verdict` set.
    pub fn with_verdict(mut self, verdict: Option<Verdict>) -> Self {
        self.verdict = verdict;
        self
    }

    /// Whether `other` is the same host and port, whatever either's verdict.
    pub fn same_address(&self, other: &Target) -> bool {
        self.port == other.port && self.host == other.host
    }

    /// The socket address when the host is an IP literal, without any lookup.
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// How a target's provider rates its health; see [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderHealth {
    /// Its check passes: picked like a target without a verdict.
    Healthy,
    /// Its check has not passed yet: picked only while no healthy target is left.
    Starting,
    /// Its check fails: down, whatever dockward's own checks say; tried only when every
    /// target of the route is down.
    Unhealthy,
}

impl ProviderHealth {
    /// `healthy`, `starting` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderHealth::Healthy => "healthy",
            ProviderHealth::Starting => "starting",
            ProviderHealth::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for ProviderHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's verdict on a target's health, from a check the provider runs itself (the
/// container engine's `HEALTHCHECK`), as opposed to what dockward sees when it dials.
///
/// It is the primary signal: proxy-core takes a target that its provider calls unhealthy
/// out of rotation even while dials to it succeed. Displays as `docker: unhealthy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Verdict {
    /// Who says so, for display only (`docker`).
    pub by: Cow<'static, str>,
    /// What it says.
    pub health: ProviderHealth,
}

impl Verdict {
    /// `health`, as said by `by`.
    pub fn new(by: impl Into<Cow<'static, str>>, health: ProviderHealth) -> Self {
        Verdict { by: by.into(), health }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.by, self.health)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_changes_the_target_but_not_its_address_or_display() {
        let plain = Target::new("10.0.0.5", 80);
        let sick = plain.clone().with_verdict(Some(Verdict::new("docker", ProviderHealth::Unhealthy)));
        assert_ne!(plain, sick, "a changed verdict is a changed route");
        assert!(plain.same_address(&sick));
        assert!(!plain.same_address(&Target::new("10.0.0.5", 81)));
        assert_eq!(sick.to_string(), "10.0.0.5:80");
        assert_eq!(sick.verdict.as_ref().map(ToString::to_string).as_deref(), Some("docker: unhealthy"));
    }

    #[test]
    fn a_target_without_verdict_serializes_as_before() {
        let plain = Target::new("db", 5432);
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"host":"db","port":5432}"#);
        let back: Target = serde_json::from_str(r#"{"host":"db","port":5432}"#).unwrap();
        assert_eq!(back, plain);
        let starting = plain.with_verdict(Some(Verdict::new("docker", ProviderHealth::Starting)));
        let json = serde_json::to_string(&starting).unwrap();
        assert_eq!(json, r#"{"host":"db","port":5432,"verdict":{"by":"docker","health":"starting"}}"#);
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), starting);
    }
}
