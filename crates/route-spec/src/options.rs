//! A route's tunables, each with its default. Their names, parsing and range rules are
//! declared once, in [`FIELDS`](crate::fields::FIELDS); [`RouteOptions::check`] is in
//! `fields` too.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::balance::{Balance, HealthCheck};
use crate::proxy_protocol::{Accept as AcceptProxy, DEFAULT_TIMEOUT as DEFAULT_PROXY_TIMEOUT, Version as ProxyVersion};
use crate::rate::Rate;

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
    /// Whether the route's connections and sessions go to the access log, when dockward
    /// writes one (`dockward run --access-log`). Default true.
    pub access_log: bool,
    /// Most TCP connections one client may have open at once; further ones are closed at
    /// accept and counted as limited. Default 0: unlimited.
    pub max_connections_per_ip: u32,
    /// New TCP connections or UDP sessions per client. Default `None`: unlimited.
    pub rate_limit: Option<Rate>,
    /// How many new connections or sessions a client may open at once before the rate
    /// applies. Default 0: the rate's count.
    pub rate_limit_burst: u32,
    /// IPv6 clients in one network of this prefix length count as one client for the
    /// per-client limits. Default 64.
    pub client_ipv6_prefix: u8,
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
    pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = DEFAULT_PROXY_TIMEOUT;
    /// Default for [`RouteOptions::health_interval`].
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
    /// Default for [`RouteOptions::client_ipv6_prefix`].
    pub const DEFAULT_CLIENT_IPV6_PREFIX: u8 = 64;
    /// Default for [`RouteOptions::health_timeout`].
    pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
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
            access_log: true,
            max_connections_per_ip: 0,
            rate_limit: None,
            rate_limit_burst: 0,
            client_ipv6_prefix: Self::DEFAULT_CLIENT_IPV6_PREFIX,
        }
    }
}
