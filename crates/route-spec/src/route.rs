//! The route model: what a provider asks the core to forward.
//!
//! A [`RouteSpec`] is a plain value. Providers (the Docker watcher, the routes file, a
//! program) build it; proxy-core's `RouteTable` consumes it
//! and never learns where it came from beyond the display-only [`RouteSpec::source`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::balance::{Balance, HealthCheck};
use crate::error::SpecError;
use crate::hooks::Hooks;
use crate::protocol::{Family, Protocol, Scheme};
use crate::proxy_protocol::{Accept as AcceptProxy, Version as ProxyVersion};
use crate::target::Target;

/// Tunables of one route, each with a documented default.
///
/// The same names are used in Docker labels and in the routes file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteOptions {
    /// How long dialling a target may take before the client is closed. Default 5 s.
    pub connect_timeout: Duration,
    /// A TCP connection with no byte in either direction for this long is closed.
    /// Default `None`: never (SSH sessions and database pools sit idle for hours).
    pub tcp_idle_timeout: Option<Duration>,
    /// A UDP session with no datagram in either direction for this long ends. Default 5 min.
    pub udp_idle_timeout: Duration,
    /// Most TCP connections open at once; further clients are closed at once and counted.
    /// Default 0: unlimited.
    pub max_connections: u32,
    /// Most UDP sessions at once; at the cap the least recently used session is evicted.
    /// Default 16384.
    pub max_udp_sessions: u32,
    /// When the route is removed, open connections may finish for this long before they are
    /// closed. Default 0: closed at once.
    pub drain_grace: Duration,
    /// Clients admitted: when not empty, only addresses in these networks (after `deny`).
    /// Default empty: everyone not denied. See proxy-core's `Acl` for the rules.
    pub allow: Vec<IpNet>,
    /// Clients refused, whatever `allow` says. Default empty.
    pub deny: Vec<IpNet>,
    /// Send a PROXY protocol header of this version to the target (TCP: once after
    /// connecting; UDP: v2 in front of every datagram). Default `None`: no header.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Read a PROXY protocol header from clients in `trusted` (TCP only). Default `None`.
    pub accept_proxy_protocol: Option<AcceptProxy>,
    /// The proxies allowed to send a PROXY header; required with `accept_proxy_protocol`.
    pub trusted: Vec<IpNet>,
    /// How long a trusted peer has to send its whole PROXY header. Default 5 s.
    pub proxy_protocol_timeout: Duration,
    /// How new connections and sessions are spread over the targets. Default round robin.
    pub balance: Balance,
    /// Whether the targets are checked actively (TCP routes only). Default off: only
    /// failed dials mark a target down.
    pub health_check: HealthCheck,
    /// Time between two active checks of a target. Default 10 s.
    pub health_interval: Duration,
    /// How long one active check may take to connect. Default 2 s.
    pub health_timeout: Duration,
}

impl RouteOptions {
    /// Default for [`RouteOptions::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`RouteOptions::udp_idle_timeout`].
    pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// The longest duration any option accepts, so no deadline can overflow a clock.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Default for [`RouteOptions::max_udp_sessions`].
    pub const DEFAULT_MAX_UDP_SESSIONS: u32 = 16384;
    /// Default for [`RouteOptions::proxy_protocol_timeout`].
    pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = crate::proxy_protocol::DEFAULT_TIMEOUT;
    /// Default for [`RouteOptions::health_interval`].
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
    /// Default for [`RouteOptions::health_timeout`].
    pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

    /// Checks the options of a route of `protocol`, naming the field at fault.
    ///
    /// [`RouteSpec::validate`] reports the same problems, prefixed with the route's name.
    pub fn check(&self, protocol: Protocol) -> Result<(), OptionError> {
        let fail = |field: &'static str, reason: &str| Err(OptionError { field, reason: reason.to_string() });
        if self.connect_timeout.is_zero() {
            return fail("connect_timeout", "connect_timeout must be more than 0");
        }
        if self.udp_idle_timeout.is_zero() {
            return fail("udp_idle_timeout", "udp_idle_timeout must be more than 0");
        }
        if self.tcp_idle_timeout.is_some_and(|d| d.is_zero()) {
            return fail("tcp_idle_timeout", "tcp_idle_timeout must be more than 0 (leave it out to disable it)");
        }
        if self.proxy_protocol_timeout.is_zero() {
            return fail("proxy_protocol_timeout", "proxy_protocol_timeout must be more than 0");
        }
        if self.health_interval.is_zero() {
            return fail("health_interval", "health_interval must be more than 0");
        }
        if self.health_timeout.is_zero() {
            return fail("health_timeout", "health_timeout must be more than 0");
        }
        let durations = [
            ("connect_timeout", Some(self.connect_timeout)),
            ("tcp_idle_timeout", self.tcp_idle_timeout),
            ("udp_idle_timeout", Some(self.udp_idle_timeout)),
            ("drain_grace", Some(self.drain_grace)),
            ("proxy_protocol_timeout", Some(self.proxy_protocol_timeout)),
            ("health_interval", Some(self.health_interval)),
            ("health_timeout", Some(self.health_timeout)),
        ];
        for (name, d) in durations {
            if d.is_some_and(|d| d > RouteOptions::MAX_DURATION) {
                return Err(OptionError { field: name, reason: format!("{name} must be at most 365 days") });
            }
        }
        if self.max_udp_sessions == 0 {
            return fail("max_udp_sessions", "max_udp_sessions must be at least 1");
        }
        if protocol == Protocol::Udp && self.proxy_protocol == Some(ProxyVersion::V1) {
            return fail(
                "proxy_protocol",
                "proxy_protocol v1 is a text header for TCP streams; UDP routes send v2 (in front of every datagram)",
            );
        }
        if protocol == Protocol::Udp && self.health_check == HealthCheck::Tcp {
            return fail(
                "health_check",
                "health_check tcp is for TCP routes: a UDP service need not answer an arbitrary datagram, so \
                 there is no generic UDP check (UDP targets are still marked down by ICMP port-unreachable \
                 reports); remove health_check, or use scheme tcp+udp, whose TCP route is checked",
            );
        }
        match (self.accept_proxy_protocol, self.trusted.is_empty()) {
            (Some(_), _) if protocol == Protocol::Udp => {
                return fail(
                    "accept_proxy_protocol",
                    "accept_proxy_protocol is for TCP routes only: a UDP route cannot tell a header from a datagram's data",
                );
            }
            (Some(_), true) => {
                // Blamed on the field that was set: `trusted` was not.
                return fail(
                    "accept_proxy_protocol",
                    "accept_proxy_protocol needs trusted: the addresses or networks (CIDR) of the proxies allowed to send a PROXY header",
                );
            }
            (None, false) => {
                return fail("trusted", "trusted is only used with accept_proxy_protocol; set that or remove trusted");
            }
            _ => {}
        }
        Ok(())
    }
}

/// An option that is wrong; see [`RouteOptions::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The field at fault, as labels and the routes file name it.
    pub field: &'static str,
    /// What is wrong, in words (it names the field too).
    pub reason: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for OptionError {}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            tcp_idle_timeout: None,
            udp_idle_timeout: Self::DEFAULT_UDP_IDLE_TIMEOUT,
            max_connections: 0,
            max_udp_sessions: Self::DEFAULT_MAX_UDP_SESSIONS,
            drain_grace: Duration::ZERO,
            allow: Vec::new(),
            deny: Vec::new(),
            proxy_protocol: None,
            accept_proxy_protocol: None,
            trusted: Vec::new(),
            proxy_protocol_timeout: Self::DEFAULT_PROXY_PROTOCOL_TIMEOUT,
            balance: Balance::default(),
            health_check: HealthCheck::default(),
            health_interval: Self::DEFAULT_HEALTH_INTERVAL,
            health_timeout: Self::DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

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
        write!(f, "route \"{}\" ({} {}", self.alias, self.protocol, self.listen)?;
        if !self.source.is_empty() {
            write!(f, " from {}", self.source)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
