//! The route vocabulary users write: one field grammar for Docker labels and the routes file.
//!
//! Both providers feed `field = value` pairs (label values are strings; YAML scalars are
//! turned into their text) into a [`RouteDraft`], which checks each value as it is set and
//! then builds [`RouteSpec`]s. One table, [`FIELDS`], names every field with its default,
//! so labels and files can never drift apart and the README is generated from the same list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::balance::{Balance, HealthCheck};
use crate::nets as acl;
use crate::protocol::{Family, Protocol, Scheme};
use crate::proxy_protocol::{Accept as AcceptProxy, Version as ProxyVersion};
use crate::route::{RouteOptions, RouteSpec};
use crate::target::Target;

/// The documentation of one field.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    /// Its name in labels (`proxy.<alias>.<name>`) and in the routes file.
    pub name: &'static str,
    /// Its default, in words.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// Every field a route accepts, in the order the README lists them.
pub const FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "port",
        default: "required",
        help: "`LISTEN:TARGET` (`2222:22`), `TARGET` alone to let the OS pick the listen port, or two ranges \
               of equal length (`27015-27020:27015-27020`, at most 1000 ports) to forward each port of the \
               first to the same position in the second",
    },
    FieldDoc {
        name: "scheme",
        default: "tcp",
        help: "`tcp`, `udp`, or `tcp4`/`tcp6`/`udp4`/`udp6` to force the IP family; `tcp+udp` \
               (`tcp4+udp4`, `tcp6+udp6`) forwards both on the same listen port, which must then be explicit",
    },
    FieldDoc { name: "bind", default: "0.0.0.0 (:: for tcp6/udp6)", help: "IP address to listen on" },
    FieldDoc {
        name: "host",
        default: "container address (labels), 127.0.0.1 (file)",
        help: "target host name or IP, or several separated by commas (balanced like replicas); names are \
               resolved at every dial",
    },
    FieldDoc {
        name: "balance",
        default: "round_robin",
        help: "how new connections (UDP: sessions) spread over several targets, from replicas sharing the alias \
               and listen port or from a `host` list: `round_robin`, `least_conn` (fewest open), or `ip_hash` \
               (a client IP stays on one target while it is healthy). A target that refuses or times out is \
               skipped for 1s, doubling up to 30s, then one connection retries it",
    },
    FieldDoc {
        name: "health_check",
        default: "off",
        help: "`tcp`: connect to every target each `health_interval` and skip those that fail until they pass \
               (TCP routes; with `tcp+udp` the TCP route is checked)",
    },
    FieldDoc { name: "health_interval", default: "10s", help: "time between two active health checks" },
    FieldDoc { name: "health_timeout", default: "2s", help: "how long one active health check may take" },
    FieldDoc { name: "connect_timeout", default: "5s", help: "how long dialling a target may take" },
    FieldDoc {
        name: "tcp_idle_timeout",
        default: "off",
        help: "close a TCP connection after this long without a byte either way (`off` disables)",
    },
    FieldDoc {
        name: "udp_idle_timeout",
        default: "5m",
        help: "end a UDP session after this long without a datagram in either direction",
    },
    FieldDoc {
        name: "max_connections",
        default: "0 (unlimited)",
        help: "TCP connections open at once; excess clients are closed at once",
    },
    FieldDoc {
        name: "max_udp_sessions",
        default: "16384",
        help: "UDP sessions at once; at the cap the least recently used is evicted",
    },
    FieldDoc {
        name: "drain_grace",
        default: "0s",
        help: "when the route is removed, open connections may finish for this long",
    },
    FieldDoc {
        name: "allow",
        default: "everyone",
        help: "IPs and CIDR networks let in, comma- or space-separated (`10.0.0.0/8, 192.168.1.7`); \
               once set, every other client is refused; `deny` wins over it; an empty list is an error, not \
               \"everyone\"",
    },
    FieldDoc {
        name: "deny",
        default: "nobody",
        help: "IPs and CIDR networks refused whatever `allow` says; IPv4-mapped IPv6 clients are matched as IPv4. \
               A refused TCP client is closed before anything is dialled; a refused UDP datagram is dropped",
    },
    FieldDoc {
        name: "proxy_protocol",
        default: "off",
        help: "send a PROXY protocol header to the target: `v1` or `v2` (TCP, once after connecting); \
               UDP routes take `v2`, sent in front of every datagram (replies are expected without header)",
    },
    FieldDoc {
        name: "relay_proxy_protocol_header",
        default: "false",
        help: "GoDoxy's name for it: `true` is `proxy_protocol: v2`",
    },
    FieldDoc {
        name: "accept_proxy_protocol",
        default: "off",
        help: "read a PROXY header (v1 or v2) from `trusted` peers, TCP only: `required` closes a connection \
               without a valid one (and every untrusted peer), `optional` treats anything else as data",
    },
    FieldDoc {
        name: "trusted",
        default: "none",
        help: "IPs and CIDR networks of the proxies whose PROXY header is believed; required with \
               `accept_proxy_protocol`. The client it names is what the ACL, logs and any header sent on use",
    },
    FieldDoc {
        name: "proxy_protocol_timeout",
        default: "5s",
        help: "how long a trusted peer has to send its whole PROXY header",
    },
];

/// A field name or value that is wrong; the text names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as written.
    pub field: String,
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", Clipped::bare(&self.field), Clipped::quoted(&self.value), self.reason)
    }
}

/// User input shown in an error, cut short when long: a 100 KB label value must not turn one
/// error line into 100 KB of log. The error keeps the whole text; only its display is clipped.
///
/// ```
/// use route_spec::fields::Clipped;
/// assert_eq!(Clipped::quoted("22:22:22").to_string(), r#""22:22:22""#);
/// let long = "x".repeat(500);
/// assert_eq!(Clipped::quoted(&long).to_string(), format!("{:?}… (500 bytes)", "x".repeat(Clipped::MAX_CHARS)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a> {
    text: &'a str,
    quoted: bool,
}

impl<'a> Clipped<'a> {
    /// How many characters are shown before the text is cut.
    pub const MAX_CHARS: usize = 80;

    /// Shown as a quoted, escaped string (`{:?}`).
    pub fn quoted(text: &'a str) -> Self {
        Clipped { text, quoted: true }
    }

    /// Shown as written (for names: a field, a label key, an alias).
    pub fn bare(text: &'a str) -> Self {
        Clipped { text, quoted: false }
    }
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.text.char_indices().nth(Self::MAX_CHARS).map(|(i, _)| i);
        let shown = &self.text[..cut.unwrap_or(self.text.len())];
        if self.quoted {
            write!(f, "{shown:?}")?;
        } else {
            f.write_str(shown)?;
        }
        if cut.is_some() {
            write!(f, "… ({} bytes)", self.text.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

fn err(field: &str, value: &str, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), value: value.to_string(), reason: reason.into() }
}

/// The closest known name to `input`, when one is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(&input, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Whether `name` is a route field.
pub fn is_field(name: &str) -> bool {
    FIELDS.iter().any(|f| f.name == name)
}

/// `unknown field "prot" (did you mean "port"?)`, for providers that meet an unknown name.
pub fn unknown_field(field: &str, value: &str) -> FieldError {
    let mut reason = "unknown field".to_string();
    if let Some(hint) = did_you_mean(field, FIELDS.iter().map(|f| f.name)) {
        reason.push_str(&format!(" (did you mean {hint:?}?)"));
    } else {
        let names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        reason.push_str(&format!(" (known fields: {})", names.join(", ")));
    }
    err(field, value, reason)
}

/// Listen and target ports as written in `port`: one pair, or two ranges of equal length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// The (first) listen port; 0 lets the OS pick.
    pub listen: u16,
    /// The (first) target port.
    pub target: u16,
    /// How many consecutive ports from `listen` forward to as many from `target`: 1 for a
    /// single port, at most [`PortSpec::MAX_RANGE`].
    pub count: u16,
}

impl PortSpec {
    /// Most ports one `port` range may forward, so a typo cannot open 60,000 sockets.
    pub const MAX_RANGE: u16 = 1000;

    /// One listen port forwarding to one target port (listen 0: OS-picked).
    pub fn single(listen: u16, target: u16) -> Self {
        PortSpec { listen, target, count: 1 }
    }

    /// Each `(listen, target)` pair: listen port N forwards to target port N - listen + target.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        let PortSpec { listen, target, count } = *self;
        (0..count).map(move |i| (listen.saturating_add(i), target.saturating_add(i)))
    }

    /// Parses `LISTEN:TARGET`, `TARGET`, or `FIRST-LAST:FIRST-LAST`.
    pub fn parse(value: &str) -> Result<PortSpec, FieldError> {
        let v = value.trim();
        let parts: Vec<&str> = v.split(':').collect();
        let number = |s: &str, what: &str, zero_ok: bool| -> Result<u16, FieldError> {
            let s = s.trim();
            if s.is_empty() {
                return Err(err("port", value, format!("the {what} port is empty; expected LISTEN:TARGET or TARGET")));
            }
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    "port",
                    value,
                    format!("{s:?} is not a port number; expected LISTEN:TARGET or TARGET"),
                ));
            }
            match s.parse::<u32>() {
                Ok(n) if n <= 65535 && (zero_ok || n > 0) => Ok(n as u16),
                _ if !zero_ok && s.parse::<u32>() == Ok(0) => {
                    Err(err("port", value, format!("the {what} port cannot be 0")))
                }
                _ => Err(err("port", value, format!("{s} is not a port (1-65535)"))),
            }
        };
        // One side of `port`: a number, or `FIRST-LAST` when both ends are digits (anything
        // else, such as `-1`, is read as one number and rejected as such).
        let side = |s: &str, what: &str, zero_ok: bool| -> Result<Side, FieldError> {
            let s = s.trim();
            let digits = |x: &str| !x.trim().is_empty() && x.trim().bytes().all(|b| b.is_ascii_digit());
            let Some((a, b)) = s.split_once('-').filter(|(a, b)| digits(a) && digits(b)) else {
                return Ok(Side::One(number(s, what, zero_ok)?));
            };
            let (first, last) = (number(a, what, false)?, number(b, what, false)?);
            if first > last {
                return Err(err("port", value, format!("port range {s} is reversed; write {last}-{first}")));
            }
            let len = last - first + 1;
            if len > Self::MAX_RANGE {
                return Err(err("port", value, format!("port range {s} has {len} ports; at most {}", Self::MAX_RANGE)));
            }
            Ok(Side::Range { first, len })
        };
        let mismatch = |reason: String| Err(err("port", value, reason));
        match parts.as_slice() {
            [target] => match side(target, "target", false)? {
                Side::One(target) => Ok(PortSpec::single(0, target)),
                Side::Range { .. } => {
                    let t = target.trim();
                    mismatch(format!(
                        "a port range needs its listen side too, e.g. {t}:{t} (the OS picks single ports only)"
                    ))
                }
            },
            [l, t] => match (side(l, "listen", true)?, side(t, "target", false)?) {
                (Side::One(listen), Side::One(target)) => Ok(PortSpec::single(listen, target)),
                (Side::Range { first: listen, len }, Side::Range { first: target, len: target_len })
                    if len == target_len =>
                {
                    Ok(PortSpec { listen, target, count: len })
                }
                (Side::Range { len, .. }, Side::Range { len: target_len, .. }) => mismatch(format!(
                    "the listen range {} has {len} ports but the target range {} has {target_len}; they must be the same length",
                    l.trim(),
                    t.trim()
                )),
                (Side::Range { len, .. }, Side::One(_)) => mismatch(format!(
                    "the listen range {} has {len} ports but the target is one port; give a target range of {len} ports",
                    l.trim()
                )),
                (Side::One(_), Side::Range { len, .. }) => mismatch(format!(
                    "the target range {} has {len} ports but the listen side is one port; give a listen range of {len} ports",
                    t.trim()
                )),
            },
            _ => Err(err("port", value, "too many ':'; expected LISTEN:TARGET or TARGET")),
        }
    }
}

/// One side of a `port` value.
enum Side {
    /// A single port.
    One(u16),
    /// `first-last`: `len` ports from `first`.
    Range {
        /// The first port.
        first: u16,
        /// How many ports.
        len: u16,
    },
}

impl fmt::Display for PortSpec {
    /// As it would be written: `2222:22`, `22` (OS-picked listen port), `100-104:200-204`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |first: u16| first.saturating_add(self.count.saturating_sub(1));
        match (self.listen, self.count) {
            (0, _) => write!(f, "{}", self.target),
            (_, 0 | 1) => write!(f, "{}:{}", self.listen, self.target),
            _ => write!(f, "{}-{}:{}-{}", self.listen, end(self.listen), self.target, end(self.target)),
        }
    }
}

/// A `scheme` as written: one transport, or TCP and UDP on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemeSpec {
    /// `tcp`, `udp`, `tcp4`, `tcp6`, `udp4`, `udp6`: one route per port.
    One(Scheme),
    /// `tcp+udp`, `tcp4+udp4`, `tcp6+udp6`: a TCP and a UDP route per port.
    TcpAndUdp(Family),
}

impl SchemeSpec {
    /// Every scheme name the `scheme` field accepts.
    pub const NAMES: [&'static str; 9] =
        ["tcp", "udp", "tcp4", "tcp6", "udp4", "udp6", "tcp+udp", "tcp4+udp4", "tcp6+udp6"];

    /// The family constraint.
    pub fn family(self) -> Family {
        match self {
            SchemeSpec::One(s) => s.family,
            SchemeSpec::TcpAndUdp(family) => family,
        }
    }

    /// The protocols it forwards, TCP first.
    pub fn protocols(self) -> &'static [Protocol] {
        match self {
            SchemeSpec::One(Scheme { protocol: Protocol::Tcp, .. }) => &[Protocol::Tcp],
            SchemeSpec::One(Scheme { protocol: Protocol::Udp, .. }) => &[Protocol::Udp],
            SchemeSpec::TcpAndUdp(_) => &[Protocol::Tcp, Protocol::Udp],
        }
    }

    /// Parses a scheme name (lowercase).
    fn parse(name: &str) -> Option<SchemeSpec> {
        match name {
            "tcp+udp" => Some(SchemeSpec::TcpAndUdp(Family::Any)),
            "tcp4+udp4" => Some(SchemeSpec::TcpAndUdp(Family::V4)),
            "tcp6+udp6" => Some(SchemeSpec::TcpAndUdp(Family::V6)),
            other => other.parse::<Scheme>().ok().map(SchemeSpec::One),
        }
    }
}

impl fmt::Display for SchemeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemeSpec::One(s) => s.fmt(f),
            SchemeSpec::TcpAndUdp(Family::Any) => f.write_str("tcp+udp"),
            SchemeSpec::TcpAndUdp(Family::V4) => f.write_str("tcp4+udp4"),
            SchemeSpec::TcpAndUdp(Family::V6) => f.write_str("tcp6+udp6"),
        }
    }
}

/// Parses `host`: one host name or IP, or several separated by commas and/or spaces
/// (IPv6 addresses may be bracketed). Duplicates are dropped.
fn parse_hosts(field: &str, value: &str) -> Result<Vec<String>, FieldError> {
    let mut hosts: Vec<String> = Vec::new();
    for entry in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
        let host = entry.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(err(field, value, format!("{entry:?} is not a host name or IP address")));
        }
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
    }
    if hosts.is_empty() {
        return Err(err(field, value, "expected a host name or IP address"));
    }
    Ok(hosts)
}

/// Parses a duration such as `5s`, `250ms`, `5m` or `1h30m`.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, FieldError> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(field, value, format!("a duration needs a unit, e.g. {v}s or {v}ms")));
    }
    humantime::parse_duration(v).map_err(|e| err(field, value, format!("not a duration ({e}); e.g. 5s, 250ms, 5m")))
}

fn parse_u32(field: &str, value: &str) -> Result<u32, FieldError> {
    value.trim().parse::<u32>().map_err(|_| err(field, value, "expected a whole number from 0 to 4294967295"))
}

/// Parses a list of IPs and CIDR networks (`allow`, `deny`, `trusted`).
fn parse_net_list(field: &str, value: &str) -> Result<Vec<IpNet>, FieldError> {
    acl::parse_nets(value).map_err(|e| err(field, value, e.to_string()))
}

/// Parses `true`/`false` and their usual spellings.
fn parse_bool(field: &str, value: &str) -> Result<bool, FieldError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(err(field, value, "expected true or false")),
    }
}

/// Whether a value turns an optional feature off.
fn is_off(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "off" | "none" | "false" | "no")
}

/// The value of option `field` as a user would write it, for errors found after parsing.
fn option_text(options: &RouteOptions, field: &str) -> String {
    let duration = |d: Duration| humantime::format_duration(d).to_string();
    match field {
        "allow" => acl::display_nets(&options.allow),
        "deny" => acl::display_nets(&options.deny),
        "trusted" => acl::display_nets(&options.trusted),
        "proxy_protocol" => options.proxy_protocol.map_or("off", |v| v.as_str()).to_string(),
        "accept_proxy_protocol" => options.accept_proxy_protocol.map_or("off", |a| a.as_str()).to_string(),
        "connect_timeout" => duration(options.connect_timeout),
        "tcp_idle_timeout" => options.tcp_idle_timeout.map_or_else(|| "off".to_string(), duration),
        "udp_idle_timeout" => duration(options.udp_idle_timeout),
        "drain_grace" => duration(options.drain_grace),
        "proxy_protocol_timeout" => duration(options.proxy_protocol_timeout),
        "max_connections" => options.max_connections.to_string(),
        "max_udp_sessions" => options.max_udp_sessions.to_string(),
        "balance" => options.balance.as_str().to_string(),
        "health_check" => options.health_check.as_str().to_string(),
        "health_interval" => duration(options.health_interval),
        "health_timeout" => duration(options.health_timeout),
        _ => String::new(),
    }
}

/// One route being assembled from fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDraft {
    /// The route's alias.
    pub alias: String,
    /// `scheme`, if set.
    pub scheme: Option<SchemeSpec>,
    /// `bind`, if set.
    pub bind: Option<IpAddr>,
    /// `host`, if set: one host, or several to balance over.
    pub host: Option<Vec<String>>,
    /// `port`, if set.
    pub port: Option<PortSpec>,
    /// Options, defaults unless set.
    pub options: RouteOptions,
    /// GoDoxy's `relay_proxy_protocol_header`, if set; resolved against `proxy_protocol` by
    /// [`RouteDraft::build`], so the order fields are set in does not matter.
    pub relay_proxy_protocol_header: Option<bool>,
}

impl RouteDraft {
    /// An empty draft for `alias`.
    pub fn new(alias: impl Into<String>) -> Self {
        RouteDraft { alias: alias.into(), ..Default::default() }
    }

    /// Sets one field from its text, checking the value.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), FieldError> {
        let v = value.trim();
        match field {
            "port" => self.port = Some(PortSpec::parse(v)?),
            "scheme" => {
                let scheme = SchemeSpec::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                    let mut reason = format!("unknown scheme; expected one of {}", SchemeSpec::NAMES.join(", "));
                    if let Some(hint) = did_you_mean(v, SchemeSpec::NAMES) {
                        reason = format!("unknown scheme (did you mean {hint:?}?)");
                    }
                    err(field, value, reason)
                })?;
                self.scheme = Some(scheme);
            }
            "bind" => {
                let ip = v.trim_start_matches('[').trim_end_matches(']');
                self.bind = Some(ip.parse().map_err(|_| err(field, value, "not an IP address"))?);
            }
            "host" => self.host = Some(parse_hosts(field, value)?),
            "connect_timeout" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(err(field, value, "must be more than 0"));
                }
                self.options.connect_timeout = d;
            }
            "tcp_idle_timeout" => {
                self.options.tcp_idle_timeout = match v.to_ascii_lowercase().as_str() {
                    "off" | "none" | "0" | "0s" => None,
                    _ => Some(parse_duration(field, value)?),
                }
            }
            "udp_idle_timeout" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(err(field, value, "must be more than 0"));
                }
                self.options.udp_idle_timeout = d;
            }
            "max_connections" => self.options.max_connections = parse_u32(field, value)?,
            "max_udp_sessions" => {
                let n = parse_u32(field, value)?;
                if n == 0 {
                    return Err(err(field, value, "must be at least 1"));
                }
                self.options.max_udp_sessions = n;
            }
            "drain_grace" => self.options.drain_grace = parse_duration(field, value)?,
            "allow" => {
                let nets = parse_net_list(field, value)?;
                if nets.is_empty() {
                    // Fail closed on a mistake, not open: an empty allow list would admit everyone.
                    return Err(err(
                        field,
                        value,
                        "an empty allow list would let every client in: list IPs or CIDR networks (e.g. \
                         10.0.0.0/8), or drop the field; to refuse everyone, deny 0.0.0.0/0 ::/0",
                    ));
                }
                self.options.allow = nets;
            }
            "deny" => self.options.deny = parse_net_list(field, value)?,
            "trusted" => self.options.trusted = parse_net_list(field, value)?,
            "proxy_protocol" => {
                self.options.proxy_protocol = if is_off(v) {
                    None
                } else {
                    Some(v.parse::<ProxyVersion>().map_err(|reason| err(field, value, reason))?)
                }
            }
            "relay_proxy_protocol_header" => self.relay_proxy_protocol_header = Some(parse_bool(field, value)?),
            "accept_proxy_protocol" => {
                self.options.accept_proxy_protocol = if is_off(v) {
                    None
                } else {
                    Some(v.parse::<AcceptProxy>().map_err(|reason| err(field, value, reason))?)
                }
            }
            "proxy_protocol_timeout" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(err(field, value, "must be more than 0"));
                }
                self.options.proxy_protocol_timeout = d;
            }
            "balance" => {
                self.options.balance = v.parse::<Balance>().map_err(|reason| {
                    let names = Balance::NAMES;
                    match did_you_mean(v, names) {
                        Some(hint) => err(field, value, format!("unknown strategy (did you mean {hint:?}?)")),
                        None => err(field, value, format!("unknown strategy; {reason}")),
                    }
                })?
            }
            "health_check" => {
                self.options.health_check = v.parse::<HealthCheck>().map_err(|reason| err(field, value, reason))?
            }
            "health_interval" | "health_timeout" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(err(field, value, "must be more than 0"));
                }
                if field == "health_interval" {
                    self.options.health_interval = d;
                } else {
                    self.options.health_timeout = d;
                }
            }
            _ => return Err(unknown_field(field, value)),
        }
        Ok(())
    }

    /// True once `port` is set: a draft without one is not a stream route.
    pub fn has_port(&self) -> bool {
        self.port.is_some()
    }

    /// Builds the routes this draft describes; `default_host` is used when `host` is unset.
    ///
    /// One spec per listen port and protocol: `tcp+udp` gives a TCP and a UDP spec on the
    /// same port, a port range one spec per port, all with the same alias. Every host of a
    /// `host` list is a target of each.
    pub fn build(&self, source: &str, default_host: &str) -> Result<Vec<RouteSpec>, FieldError> {
        let port = self.port.ok_or_else(|| err("port", "", "missing; every route needs a port"))?;
        let scheme = self.scheme.unwrap_or(SchemeSpec::One(Scheme { protocol: Protocol::Tcp, family: Family::Any }));
        if matches!(scheme, SchemeSpec::TcpAndUdp(_)) && port.listen == 0 {
            return Err(err(
                "port",
                &port.to_string(),
                format!(
                    "{scheme} needs an explicit listen port (LISTEN:TARGET, e.g. {t}:{t}): with an OS-picked \
                     port TCP and UDP would each get a different one",
                    t = port.target
                ),
            ));
        }
        let family = scheme.family();
        let bind = match (self.bind, family) {
            (Some(ip), _) => ip,
            (None, Family::V6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let hosts: Vec<&str> = match &self.host {
            Some(hosts) => hosts.iter().map(String::as_str).collect(),
            None => vec![default_host],
        };
        let mut options = self.options.clone();
        if self.relay_proxy_protocol_header == Some(true) {
            if options.proxy_protocol == Some(ProxyVersion::V1) {
                return Err(err(
                    "relay_proxy_protocol_header",
                    "true",
                    "means proxy_protocol v2, but proxy_protocol is v1; keep one of them",
                ));
            }
            options.proxy_protocol = Some(ProxyVersion::V2);
        }
        // Each protocol's options: with tcp+udp, the active check is the TCP route's.
        let mut per_protocol = Vec::with_capacity(2);
        for &protocol in scheme.protocols() {
            let mut options = options.clone();
            if protocol == Protocol::Udp && matches!(scheme, SchemeSpec::TcpAndUdp(_)) {
                options.health_check = HealthCheck::Off;
            }
            options.check(protocol).map_err(|e| err(e.field, &option_text(&options, e.field), e.reason))?;
            per_protocol.push((protocol, options));
        }
        let mut specs = Vec::with_capacity(usize::from(port.count) * per_protocol.len());
        for (listen, target) in port.pairs() {
            for (protocol, options) in &per_protocol {
                let targets = hosts.iter().map(|h| Target::new(*h, target)).collect();
                let spec = RouteSpec::new(self.alias.clone(), *protocol, SocketAddr::new(bind, listen), targets)
                    .with_source(source)
                    .with_family(family)
                    .with_options(options.clone());
                spec.validate().map_err(|e| {
                    let value = self.bind.map(|b| b.to_string()).unwrap_or_default();
                    err("bind", &value, e.to_string())
                })?;
                specs.push(spec);
            }
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(pairs: &[(&str, &str)]) -> Result<RouteDraft, FieldError> {
        let mut d = RouteDraft::new("ssh");
        for (k, v) in pairs {
            d.set(k, v)?;
        }
        Ok(d)
    }

    #[test]
    fn port_forms() {
        assert_eq!(PortSpec::parse("2222:22").unwrap(), PortSpec::single(2222, 22));
        assert_eq!(PortSpec::parse("22").unwrap(), PortSpec::single(0, 22));
        assert_eq!(PortSpec::parse("0:22").unwrap(), PortSpec::single(0, 22));
        let cases = [
            ("22:22:22", "too many ':'"),
            ("abc", "\"abc\" is not a port number"),
            ("70000", "70000 is not a port (1-65535)"),
            ("2222:0", "the target port cannot be 0"),
            (":22", "the listen port is empty"),
            ("-1", "is not a port number"),
        ];
        for (input, want) in cases {
            let e = PortSpec::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.starts_with(&format!("port {input:?}")), "{e}");
        }
    }

    #[test]
    fn port_ranges_pair_each_listen_port_with_the_target_port_at_the_same_position() {
        let p = PortSpec::parse("27015-27020:27015-27020").unwrap();
        assert_eq!(p, PortSpec { listen: 27015, target: 27015, count: 6 });
        let p = PortSpec::parse(" 8000-8002 : 9000-9002 ").unwrap();
        assert_eq!(p.pairs().collect::<Vec<_>>(), vec![(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert_eq!(p.to_string(), "8000-8002:9000-9002");
        assert_eq!(PortSpec::parse("5-5:6-6").unwrap(), PortSpec::single(5, 6), "a range of one is one port");
        let p = PortSpec::parse("1-1000:1-1000").unwrap();
        assert_eq!(p.count, PortSpec::MAX_RANGE, "the cap itself is allowed");
        let cases = [
            (
                "27015-27020:27015-27019",
                "the listen range 27015-27020 has 6 ports but the target range 27015-27019 has 5; \
                 they must be the same length",
            ),
            ("1-60000:1-60000", "port range 1-60000 has 60000 ports; at most 1000"),
            ("20-10:20-10", "port range 20-10 is reversed; write 10-20"),
            ("27015-27020", "a port range needs its listen side too, e.g. 27015-27020:27015-27020"),
            (
                "100-104:80",
                "the listen range 100-104 has 5 ports but the target is one port; give a target range of 5 ports",
            ),
            ("80:100-104", "the target range 100-104 has 5 ports but the listen side is one port"),
            ("0-4:100-104", "the listen port cannot be 0"),
            ("1-70000:1-70000", "70000 is not a port (1-65535)"),
            ("1-2-3:1-2", "\"1-2-3\" is not a port number"),
        ];
        for (input, want) in cases {
            let e = PortSpec::parse(input).unwrap_err().to_string();
            assert!(e.starts_with(&format!("port {input:?}: ")), "{e}");
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn a_port_range_builds_one_route_per_port_and_tcp_udp_two_per_port() {
        let d = draft(&[("port", "7000-7002:8000-8002"), ("scheme", "tcp+udp"), ("host", "a, b")]).unwrap();
        let specs = d.build("f.yml", "x").unwrap();
        let got: Vec<(Protocol, u16, Vec<String>)> = specs
            .iter()
            .map(|s| (s.protocol, s.listen.port(), s.targets.iter().map(|t| t.to_string()).collect()))
            .collect();
        let t = |port: u16| vec![format!("a:{port}"), format!("b:{port}")];
        assert_eq!(
            got,
            vec![
                (Protocol::Tcp, 7000, t(8000)),
                (Protocol::Udp, 7000, t(8000)),
                (Protocol::Tcp, 7001, t(8001)),
                (Protocol::Udp, 7001, t(8001)),
                (Protocol::Tcp, 7002, t(8002)),
                (Protocol::Udp, 7002, t(8002)),
            ]
        );
        assert!(specs.iter().all(|s| s.alias == "ssh" && s.source == "f.yml"));
    }

    #[test]
    fn tcp_udp_schemes_force_the_family_and_need_an_explicit_listen_port() {
        let specs = draft(&[("port", "53:53"), ("scheme", "tcp6+udp6")]).unwrap().build("x", "::1").unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.family == Family::V6 && s.listen == "[::]:53".parse().unwrap()));
        assert_eq!(specs[0].scheme().to_string(), "tcp6");
        assert_eq!(specs[1].scheme().to_string(), "udp6");
        let e = draft(&[("port", "53"), ("scheme", "tcp+udp")]).unwrap().build("x", "db").unwrap_err();
        assert_eq!(
            e.to_string(),
            "port \"53\": tcp+udp needs an explicit listen port (LISTEN:TARGET, e.g. 53:53): with an OS-picked \
             port TCP and UDP would each get a different one"
        );
        let e = draft(&[("scheme", "tcp+udpp")]).unwrap_err().to_string();
        assert_eq!(e, "scheme \"tcp+udpp\": unknown scheme (did you mean \"tcp+udp\"?)");
        assert_eq!(SchemeSpec::parse("tcp4+udp4").map(|s| s.to_string()).as_deref(), Some("tcp4+udp4"));
    }

    #[test]
    fn balance_and_health_fields_parse_and_are_checked() {
        let d = draft(&[
            ("port", "1:2"),
            ("balance", "least_conn"),
            ("health_check", "tcp"),
            ("health_interval", "3s"),
            ("health_timeout", "500ms"),
        ])
        .unwrap();
        assert_eq!(d.options.balance, Balance::LeastConn);
        assert_eq!(d.options.health_check, HealthCheck::Tcp);
        assert_eq!(d.options.health_interval, Duration::from_secs(3));
        assert_eq!(d.options.health_timeout, Duration::from_millis(500));
        assert!(d.build("x", "db").is_ok());

        let e = draft(&[("balance", "least_con")]).unwrap_err().to_string();
        assert_eq!(e, "balance \"least_con\": unknown strategy (did you mean \"least_conn\"?)");
        let e = draft(&[("balance", "random")]).unwrap_err().to_string();
        assert_eq!(e, "balance \"random\": unknown strategy; expected one of round_robin, least_conn, ip_hash");
        let e = draft(&[("health_check", "http")]).unwrap_err().to_string();
        assert_eq!(e, "health_check \"http\": expected tcp or off");
        assert!(draft(&[("health_interval", "0s")]).is_err());
        assert!(draft(&[("health_timeout", "2")]).unwrap_err().to_string().contains("needs a unit"));

        // UDP has no generic check; tcp+udp checks its TCP route only.
        let e = draft(&[("port", "53:53"), ("scheme", "udp"), ("health_check", "tcp")])
            .unwrap()
            .build("x", "db")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("health_check \"tcp\": health_check tcp is for TCP routes"), "{e}");
        let specs = draft(&[("port", "53:53"), ("scheme", "tcp+udp"), ("health_check", "tcp")])
            .unwrap()
            .build("x", "db")
            .unwrap();
        assert_eq!(
            (specs[0].options.health_check, specs[1].options.health_check),
            (HealthCheck::Tcp, HealthCheck::Off)
        );
    }

    #[test]
    fn host_takes_a_list_of_targets() {
        let d = draft(&[("port", "5432:5432"), ("host", "db-1, db-2 [::1],db-1")]).unwrap();
        let spec = &d.build("x", "unused").unwrap()[0];
        let want = vec![Target::new("db-1", 5432), Target::new("db-2", 5432), Target::new("::1", 5432)];
        assert_eq!(spec.targets, want, "in order, without duplicates");
        assert!(draft(&[("host", " , ")]).is_err());
        let e = draft(&[("host", "a, 10.0.0.0/8")]).unwrap_err().to_string();
        assert_eq!(e, "host \"a, 10.0.0.0/8\": \"10.0.0.0/8\" is not a host name or IP address");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("connect_timeout", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("udp_idle_timeout", "5m").unwrap(), Duration::from_secs(300));
        let e = parse_duration("connect_timeout", "30").unwrap_err().to_string();
        assert_eq!(e, "connect_timeout \"30\": a duration needs a unit, e.g. 30s or 30ms");
    }

    #[test]
    fn misspelt_field_and_scheme_suggest_the_right_one() {
        let e = draft(&[("prot", "22")]).unwrap_err().to_string();
        assert_eq!(e, "prot \"22\": unknown field (did you mean \"port\"?)");
        let e = draft(&[("scheme", "tcpp")]).unwrap_err().to_string();
        assert_eq!(e, "scheme \"tcpp\": unknown scheme (did you mean \"tcp\"?)");
        let e = draft(&[("conect_timeout", "5s")]).unwrap_err().to_string();
        assert!(e.contains("did you mean \"connect_timeout\""), "{e}");
    }

    #[test]
    fn build_applies_defaults_and_family() {
        let d = draft(&[("port", "2222:22")]).unwrap();
        let spec = &d.build("file.yml", "127.0.0.1").unwrap()[0];
        assert_eq!(spec.listen, "0.0.0.0:2222".parse().unwrap());
        assert_eq!(spec.targets, vec![Target::new("127.0.0.1", 22)]);
        assert_eq!(spec.protocol, Protocol::Tcp);
        assert_eq!(spec.source, "file.yml");

        let d = draft(&[("port", "53"), ("scheme", "udp6")]).unwrap();
        let spec = &d.build("x", "db").unwrap()[0];
        assert_eq!(spec.listen, "[::]:0".parse().unwrap());
        assert_eq!(spec.family, Family::V6);

        let d = draft(&[("port", "53:53"), ("scheme", "udp6"), ("bind", "0.0.0.0")]).unwrap();
        let e = d.build("x", "db").unwrap_err().to_string();
        assert!(e.contains("scheme udp6 but bind address 0.0.0.0 is IPv4"), "{e}");
    }

    #[test]
    fn an_empty_allow_list_is_an_error_not_an_open_door() {
        for empty in ["", " ", ",", " , "] {
            let e = draft(&[("port", "1:2"), ("allow", empty)]).unwrap_err();
            assert_eq!(e.field, "allow");
            assert!(e.reason.starts_with("an empty allow list would let every client in"), "{e}");
        }
        // An empty deny list refuses no one, which is what it says: not an error.
        assert!(draft(&[("port", "1:2"), ("deny", "")]).unwrap().options.deny.is_empty());
    }

    #[test]
    fn long_values_are_clipped_in_errors_but_kept_whole() {
        let value = "é".repeat(10_000);
        let e = draft(&[("scheme", &value)]).unwrap_err();
        assert_eq!(e.value, value);
        let shown = e.to_string();
        assert!(shown.len() < 400, "{} bytes shown", shown.len());
        assert!(shown.contains("… (20000 bytes)"), "{shown}");
        let field = "f".repeat(1_000);
        let shown = unknown_field(&field, "v").to_string();
        assert!(shown.starts_with(&format!("{}… (1000 bytes) \"v\": unknown field", "f".repeat(80))), "{shown}");
    }

    #[test]
    fn options_parse() {
        let d = draft(&[
            ("port", "1:2"),
            ("connect_timeout", "2s"),
            ("tcp_idle_timeout", "1h"),
            ("udp_idle_timeout", "30s"),
            ("max_connections", "10"),
            ("max_udp_sessions", "5"),
            ("drain_grace", "3s"),
        ])
        .unwrap();
        let o = &d.options;
        assert_eq!(o.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.tcp_idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!((o.max_connections, o.max_udp_sessions), (10, 5));
        assert_eq!(o.drain_grace, Duration::from_secs(3));
        assert!(draft(&[("max_udp_sessions", "0")]).is_err());
        assert!(draft(&[("max_connections", "-1")]).is_err());
        assert_eq!(draft(&[("tcp_idle_timeout", "off")]).unwrap().options.tcp_idle_timeout, None);
    }

    #[test]
    fn acl_lists_parse_and_bad_entries_are_named() {
        let d =
            draft(&[("port", "1:2"), ("allow", "10.0.0.0/8, 192.168.1.7"), ("deny", "10.0.0.66 fd00::/8")]).unwrap();
        let nets = |s: &[&str]| s.iter().map(|n| n.parse::<IpNet>().unwrap()).collect::<Vec<_>>();
        assert_eq!(d.options.allow, nets(&["10.0.0.0/8", "192.168.1.7/32"]));
        assert_eq!(d.options.deny, nets(&["10.0.0.66/32", "fd00::/8"]));
        let e = draft(&[("deny", "10.0.0.1, 10.0.0.300")]).unwrap_err().to_string();
        assert_eq!(
            e,
            "deny \"10.0.0.1, 10.0.0.300\": \"10.0.0.300\" is not an IP address or CIDR network \
             (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)"
        );
    }

    #[test]
    fn proxy_protocol_fields_and_the_godoxy_alias() {
        let build =
            |pairs: &[(&str, &str)]| draft(pairs).and_then(|d| d.build("x", "db")).map(|s| s[0].options.clone());
        let o = build(&[("port", "1:2"), ("proxy_protocol", "V1")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V1));
        let o = build(&[("port", "1:2"), ("relay_proxy_protocol_header", "true")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V2));
        let o = build(&[("port", "1:2"), ("relay_proxy_protocol_header", "false")]).unwrap();
        assert_eq!(o.proxy_protocol, None);
        // The alias and the field agree whatever order labels come in; a clash is an error.
        let o = build(&[("relay_proxy_protocol_header", "true"), ("port", "1:2"), ("proxy_protocol", "v2")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V2));
        let e = build(&[("port", "1:2"), ("proxy_protocol", "v1"), ("relay_proxy_protocol_header", "yes")]);
        assert!(
            e.unwrap_err().to_string().starts_with("relay_proxy_protocol_header \"true\": means proxy_protocol v2")
        );
        assert!(draft(&[("proxy_protocol", "v3")]).unwrap_err().to_string().contains("expected v1 or v2"));
        assert!(draft(&[("relay_proxy_protocol_header", "maybe")]).is_err());

        let o = build(&[
            ("port", "1:2"),
            ("accept_proxy_protocol", "optional"),
            ("trusted", "10.0.0.1"),
            ("proxy_protocol_timeout", "250ms"),
        ])
        .unwrap();
        assert_eq!(o.accept_proxy_protocol, Some(AcceptProxy::Optional));
        assert_eq!(o.proxy_protocol_timeout, Duration::from_millis(250));
        assert!(draft(&[("accept_proxy_protocol", "sometimes")]).is_err());
        assert!(draft(&[("proxy_protocol_timeout", "0s")]).is_err());
        assert_eq!(draft(&[("accept_proxy_protocol", "off")]).unwrap().options.accept_proxy_protocol, None);
    }

    #[test]
    fn proxy_protocol_combinations_are_checked_with_the_field_at_fault() {
        let build = |pairs: &[(&str, &str)]| draft(pairs).unwrap().build("x", "db").unwrap_err().to_string();
        let e = build(&[("port", "1:2"), ("accept_proxy_protocol", "required")]);
        assert!(e.starts_with("accept_proxy_protocol \"required\": accept_proxy_protocol needs trusted"), "{e}");
        let e = build(&[("port", "1:2"), ("trusted", "10.0.0.0/8")]);
        assert!(e.starts_with("trusted \"10.0.0.0/8\": trusted is only used with accept_proxy_protocol"), "{e}");
        let e = build(&[("port", "1:2"), ("scheme", "udp"), ("accept_proxy_protocol", "required"), ("trusted", "::1")]);
        assert!(
            e.starts_with("accept_proxy_protocol \"required\": accept_proxy_protocol is for TCP routes only"),
            "{e}"
        );
        let e = build(&[("port", "1:2"), ("scheme", "udp"), ("proxy_protocol", "v1")]);
        assert!(e.starts_with("proxy_protocol \"v1\": proxy_protocol v1 is a text header for TCP streams"), "{e}");
        let ok = draft(&[("port", "1:2"), ("scheme", "udp"), ("proxy_protocol", "v2")]).unwrap().build("x", "db");
        assert!(ok.is_ok());
    }

    #[test]
    fn every_documented_field_is_accepted() {
        for f in FIELDS {
            let mut d = RouteDraft::new("a");
            let e = d.set(f.name, "@@");
            if let Err(e) = e {
                assert!(!e.reason.starts_with("unknown field"), "{} is documented but unknown", f.name);
            }
        }
    }
}
