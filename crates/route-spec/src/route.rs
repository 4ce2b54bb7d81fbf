//! The route model: what a provider asks the core to forward.
//!
//! A [`RouteSpec`] is a plain value. Providers (the Docker watcher, the routes file, a
//! program) build it; proxy-core's `RouteTable` consumes it
//! and never learns where it came from beyond the display-only [`RouteSpec::source`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::hooks::Hooks;
use crate::options::RouteOptions;
use crate::protocol::{Family, Protocol, Scheme};
use crate::target::Target;
use crate::text::{Escaped, check_printable};

/// One route as a provider wants it.
///
/// Its identity in the table is [`RouteSpec::id`]: alias, protocol, family and the requested
/// listen address (and the source too when the listen port is 0). Two specs with the same id
/// and different targets, options or hooks are the same route, updated in place; a
/// different id is another route. Specs with the same id given to one
/// proxy-core's `RouteTable::apply` (replicas of one service) are merged
/// into one route over all their targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The route's name, as users wrote it (`ssh`, `dns`).
    pub alias: String,
    /// Where the route came from, for display only (a file path, a container name).
    #[serde(default)]
    pub source: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The family constraint from the scheme.
    #[serde(default)]
    pub family: Family,
    /// The address to bind; port 0 lets the OS pick, and the bound address is reported.
    pub listen: SocketAddr,
    /// Where to forward to. Each new connection or session picks one by
    /// [`RouteOptions::balance`]; a TCP connection whose pick does not answer tries the next
    /// healthy one.
    pub targets: Vec<Target>,
    /// Tunables.
    #[serde(default)]
    pub options: RouteOptions,
    /// Programmatic hooks; never serialized.
    #[serde(skip)]
    pub hooks: Hooks,
}

impl RouteSpec {
    /// A route with default options and no hooks.
    pub fn new(alias: impl Into<String>, protocol: Protocol, listen: SocketAddr, targets: Vec<Target>) -> Self {
        RouteSpec {
            alias: alias.into(),
            source: String::new(),
            protocol,
            family: Family::Any,
            listen,
            targets,
            options: RouteOptions::default(),
            hooks: Hooks::default(),
        }
    }

    /// The same route with `source` set.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The same route with `family` set.
    pub fn with_family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// The same route with `options` set.
    pub fn with_options(mut self, options: RouteOptions) -> Self {
        self.options = options;
        self
    }

    /// The same route with `hooks` set.
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// The scheme this route was written with.
    pub fn scheme(&self) -> Scheme {
        Scheme { protocol: self.protocol, family: self.family }
    }

    /// The route's identity in the table; see [`RouteId`].
    pub fn id(&self) -> RouteId {
        RouteId {
            source: if self.listen.port() == 0 { self.source.clone() } else { String::new() },
            alias: self.alias.clone(),
            protocol: self.protocol,
            family: self.family,
            listen: self.listen,
        }
    }

    /// Checks what can be checked without touching the network.
    ///
    /// Errors name the route: `route "dns": scheme udp6 but bind address 0.0.0.0 is IPv4`.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |reason: String| SpecError::Invalid { alias: self.alias.clone(), reason };
        if self.alias.trim().is_empty() {
            return Err(invalid("the alias is empty".into()));
        }
        if let Err(reason) = check_printable(&self.alias) {
            return Err(invalid(format!("the alias {reason}")));
        }
        let ip = self.listen.ip();
        match (self.family, ip) {
            (Family::V4, IpAddr::V6(_)) => {
                return Err(invalid(format!("scheme {} but bind address {ip} is IPv6", self.scheme())));
            }
            (Family::V6, IpAddr::V4(_)) => {
                return Err(invalid(format!("scheme {} but bind address {ip} is IPv4", self.scheme())));
            }
            _ => {}
        }
        if self.targets.is_empty() {
            return Err(invalid("no target".into()));
        }
        for t in &self.targets {
            if t.port == 0 {
                return Err(invalid(format!("target {t} has port 0")));
            }
            if t.host.trim().is_empty() {
                return Err(invalid(format!("target {t} has an empty host")));
            }
            if let Err(reason) = check_printable(&t.host) {
                return Err(invalid(format!("target host {:?} {reason}", t.host)));
            }
        }
        self.options.check(self.protocol).map_err(|e| invalid(e.reason))?;
        Ok(())
    }
}

/// The identity of a route in the table; see [`RouteSpec::id`].
///
/// A route with an explicit listen port is identified by alias, protocol, family and
/// listen address, *not* by its source: the replicas of one service (containers of
/// `docker compose up --scale app=3`, each declaring the same alias and port) are one
/// route whose targets are all of theirs, and replicas coming and going update it in
/// place. A route on port 0 also has its source in its id, since each such route gets
/// its own OS-picked port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteId {
    /// Where it came from, for a route on port 0; empty for a route with a listen port.
    pub source: String,
    /// Its name.
    pub alias: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The family constraint.
    pub family: Family,
    /// The requested listen address (port 0 stays 0 here even once bound).
    pub listen: SocketAddr,
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route \"{}\" ({} {}", Escaped(&self.alias), self.protocol, self.listen)?;
        if !self.source.is_empty() {
            write!(f, " from {}", self.source)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::Accept as AcceptProxy;

    #[test]
    fn scheme_names_round_trip() {
        for name in Scheme::NAMES {
            let scheme: Scheme = name.parse().unwrap();
            assert_eq!(scheme.to_string(), name);
        }
        assert!("tcpp".parse::<Scheme>().is_err());
    }

    #[test]
    fn target_parses_names_v4_and_bracketed_v6() {
        assert_eq!("db:5432".parse::<Target>().unwrap(), Target::new("db", 5432));
        assert_eq!("10.0.0.1:53".parse::<Target>().unwrap(), Target::new("10.0.0.1", 53));
        let v6: Target = "[::1]:22".parse().unwrap();
        assert_eq!(v6, Target::new("::1", 22));
        assert_eq!(v6.to_string(), "[::1]:22");
        for bad in ["", "db", "db:", ":22", "db:0", "db:70000", "[::1]22", "a b:1"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn an_acl_change_is_a_change_of_the_spec() {
        let spec = RouteSpec::new("ssh", Protocol::Tcp, "127.0.0.1:0".parse().unwrap(), vec![Target::new("h", 22)]);
        let mut options = RouteOptions::default();
        options.deny.push("10.0.0.0/8".parse().unwrap());
        let denied = spec.clone().with_options(options);
        assert_eq!(spec.id(), denied.id(), "same route");
        assert_ne!(spec, denied, "so apply updates it in place");
    }

    #[test]
    fn the_source_is_part_of_the_id_only_on_an_os_picked_port() {
        let at = |listen: &str, source: &str| {
            RouteSpec::new("app", Protocol::Tcp, listen.parse().unwrap(), vec![Target::new("h", 80)])
                .with_source(source)
        };
        assert_eq!(at("0.0.0.0:8080", "app-1").id(), at("0.0.0.0:8080", "app-2").id(), "replicas share a route");
        assert_eq!(at("0.0.0.0:8080", "app-1").id().source, "");
        assert_ne!(at("0.0.0.0:0", "app-1").id(), at("0.0.0.0:0", "app-2").id(), "each gets its own port");
    }

    #[test]
    fn option_problems_name_the_route() {
        let mut options = RouteOptions { accept_proxy_protocol: Some(AcceptProxy::Required), ..Default::default() };
        let spec = RouteSpec::new("web", Protocol::Tcp, "127.0.0.1:0".parse().unwrap(), vec![Target::new("h", 80)]);
        let e = spec.clone().with_options(options.clone()).validate().unwrap_err().to_string();
        assert!(e.starts_with("route \"web\": accept_proxy_protocol needs trusted"), "{e}");
        options.trusted.push("127.0.0.1/32".parse().unwrap());
        assert!(spec.with_options(options).validate().is_ok());
    }

    #[test]
    fn family_mismatch_names_the_route_scheme_and_address() {
        let spec =
            RouteSpec::new("dns", Protocol::Udp, "0.0.0.0:53".parse().unwrap(), vec![Target::new("127.0.0.1", 53)])
                .with_family(Family::V6);
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(err, "route \"dns\": scheme udp6 but bind address 0.0.0.0 is IPv4");
    }
}
