//! The route vocabulary users write: one field grammar for Docker labels and the routes file.
//!
//! Both providers feed `field = value` pairs (label values are strings; YAML scalars are
//! turned into their text) into a [`RouteDraft`](crate::RouteDraft), which checks each value
//! as it is set and then builds [`RouteSpec`](crate::RouteSpec)s.
//!
//! **Each field is declared once**, as one entry of [`FIELDS`]: its name, help text, value
//! kind ([`kind`]: parsing, display, range) and, for an option, where it lives in
//! [`RouteOptions`] (whose `Default` is the default; its text is the default displayed). The
//! labels, the routes file, `dockward check` ([`options_text`]), did-you-mean
//! ([`unknown_field`]) and the README's field table all read that table. A new route option
//! is: its entry here, its field and `Default` in [`RouteOptions`], and its use.

pub mod kind;
mod port;

use std::fmt;

pub use crate::text::{Clipped, Escaped, FieldError, check_printable, did_you_mean, is_forbidden};
pub use kind::parse_bool;
use kind::{Bool, Count, Kind, Networks, OptionalRate, OptionalSpan, PrefixLen, Span, Switch, Word};
pub use port::{PortSpec, SchemeSpec};

use crate::HealthCheck;
use crate::balance::Balance;
use crate::options::{OptionError, RouteOptions};
use crate::protocol::Protocol;
use crate::proxy_protocol::Version as ProxyVersion;
use crate::text::err;

/// One route field: everything about it but its use.
pub struct Field {
    /// Its name in labels (`proxy.<alias>.<name>`) and in the routes file.
    pub name: &'static str,
    /// What it does (the README's text).
    pub help: &'static str,
    /// Words shown as the default where the displayed default would mislead (`0` for "0
    /// (unlimited)").
    note: Option<&'static str>,
    /// Where its value goes.
    value: Value,
}

/// Where a field's value goes.
enum Value {
    /// A part of the route itself (`port`, `scheme`, `bind`, `host`, and GoDoxy's
    /// `relay_proxy_protocol_header`): [`RouteDraft::set`](crate::RouteDraft::set) parses
    /// and keeps it; the default is in words.
    Draft {
        /// The default, in words.
        default: &'static str,
    },
    /// A field of [`RouteOptions`].
    Option {
        /// Its kind and place.
        slot: &'static dyn Slot,
    },
}

/// A route option's kind and its place in [`RouteOptions`], with the kind's type erased so
/// that one table holds every field.
trait Slot: Sync {
    /// Parses `text` into the option.
    fn set(&self, options: &mut RouteOptions, text: &str) -> Result<(), String>;
    /// The option's value as a user would write it.
    fn show(&self, options: &RouteOptions) -> String;
    /// Whether the option's value is in its kind's range.
    fn check(&self, name: &str, options: &RouteOptions) -> Result<(), String>;
    /// Whether two options hold the same value of this field.
    fn same(&self, a: &RouteOptions, b: &RouteOptions) -> bool;
}

/// A value kind at a place in [`RouteOptions`].
struct Opt<K: Kind> {
    kind: K,
    get: fn(&RouteOptions) -> &K::Value,
    get_mut: fn(&mut RouteOptions) -> &mut K::Value,
}

impl<K: Kind> Slot for Opt<K> {
    fn set(&self, options: &mut RouteOptions, text: &str) -> Result<(), String> {
        *(self.get_mut)(options) = self.kind.parse(text)?;
        Ok(())
    }

    fn show(&self, options: &RouteOptions) -> String {
        self.kind.show((self.get)(options))
    }

    fn check(&self, name: &str, options: &RouteOptions) -> Result<(), String> {
        self.kind.check(name, (self.get)(options))
    }

    fn same(&self, a: &RouteOptions, b: &RouteOptions) -> bool {
        (self.get)(a) == (self.get)(b)
    }
}

/// An entry for the [`RouteOptions`] field `$name`, of kind `$kind`.
macro_rules! option {
    ($name:ident, $kind:expr, note = $note:expr, $help:expr $(,)?) => {
        Field {
            name: stringify!($name),
            help: $help,
            note: Some($note),
            value: Value::Option { slot: &Opt { kind: $kind, get: |o| &o.$name, get_mut: |o| &mut o.$name } },
        }
    };
    ($name:ident, $kind:expr, $help:expr $(,)?) => {
        Field {
            name: stringify!($name),
            help: $help,
            note: None,
            value: Value::Option { slot: &Opt { kind: $kind, get: |o| &o.$name, get_mut: |o| &mut o.$name } },
        }
    };
}

/// Every field a route accepts, in the order the README lists them.
pub static FIELDS: &[Field] = &[
    Field {
        name: "port",
        help: "`LISTEN:TARGET` (`2222:22`), `TARGET` alone (with a `scheme`) to let the OS pick the listen port, or two ranges \
            of equal length (`27015-27020:27015-27020`, at most 1000 ports) to forward each port of the \
            first to the same position in the second",
        note: None,
        value: Value::Draft { default: "required" },
    },
    Field {
        name: "scheme",
        help: "`tcp`, `udp`, or `tcp4`/`tcp6`/`udp4`/`udp6` to force the IP family; `tcp+udp` \
            (`tcp4+udp4`, `tcp6+udp6`) forwards both on the same listen port, which must then be explicit. \
            With neither `scheme` nor a listen port, a route is what GoDoxy serves over HTTP: no route",
        note: None,
        value: Value::Draft { default: "tcp (with a listen port)" },
    },
    Field {
        name: "bind",
        help: "IP address to listen on",
        note: None,
        value: Value::Draft { default: "0.0.0.0 (:: for tcp6/udp6)" },
    },
    Field {
        name: "host",
        help: "target host name or IP, or several separated by commas (balanced like replicas); names are \
            resolved at every dial",
        note: None,
        value: Value::Draft { default: "container address (labels), 127.0.0.1 (file)" },
    },
    option!(
        balance,
        Word::hinted("strategy", &Balance::NAMES),
        "how new connections (UDP: sessions) spread over several targets, from replicas sharing the alias \
            and listen port or from a `host` list: `round_robin`, `least_conn` (fewest open), or `ip_hash` \
            (a client IP stays on one target while it is healthy). A target that refuses or times out is \
            skipped for 1s, doubling up to 30s, then one connection retries it"
    ),
    option!(
        health_check,
        Word::plain(),
        "`tcp`: connect to every target each `health_interval` and skip those that fail until they pass \
            (TCP routes; with `tcp+udp` the TCP route is checked)"
    ),
    option!(health_interval, Span::POSITIVE, "time between two active health checks"),
    option!(health_timeout, Span::POSITIVE, "how long one active health check may take"),
    option!(connect_timeout, Span::POSITIVE, "how long dialling a target may take"),
    option!(
        tcp_idle_timeout,
        OptionalSpan,
        "close a TCP connection after this long without a byte either way (`off` disables)"
    ),
    option!(
        udp_idle_timeout,
        Span::POSITIVE,
        "end a UDP session after this long without a datagram in either direction"
    ),
    option!(
        max_connections,
        Count { min: 0 },
        note = "0 (unlimited)",
        "TCP connections open at once; excess clients are closed at once"
    ),
    option!(max_udp_sessions, Count { min: 1 }, "UDP sessions at once; at the cap the least recently used is evicted"),
    option!(drain_grace, Span::ANY, "when the route is removed, open connections may finish for this long"),
    option!(
        allow,
        Networks { empty_ok: false },
        note = "everyone",
        "IPs and CIDR networks let in, comma- or space-separated (`10.0.0.0/8, 192.168.1.7`); \
            once set, every other client is refused; `deny` wins over it; an empty list is an error, not \
            \"everyone\""
    ),
    option!(
        deny,
        Networks { empty_ok: true },
        note = "nobody",
        "IPs and CIDR networks refused whatever `allow` says; IPv4-mapped IPv6 clients are matched as IPv4. \
            A refused TCP client is closed before anything is dialled; a refused UDP datagram is dropped"
    ),
    option!(
        proxy_protocol,
        Switch(Word::plain()),
        "send a PROXY protocol header to the target: `v1` or `v2` (TCP, once after connecting); \
            UDP routes take `v2`, sent in front of every datagram (replies are expected without header)"
    ),
    Field {
        name: "relay_proxy_protocol_header",
        help: "GoDoxy's name for it: `true` is `proxy_protocol: v2`",
        note: None,
        value: Value::Draft { default: "false" },
    },
    option!(
        accept_proxy_protocol,
        Switch(Word::plain()),
        "read a PROXY header (v1 or v2) from `trusted` peers, TCP only: `required` closes a connection \
            without a valid one (and every untrusted peer), `optional` treats anything else as data"
    ),
    option!(
        trusted,
        Networks { empty_ok: true },
        note = "none",
        "IPs and CIDR networks of the proxies whose PROXY header is believed; required with \
            `accept_proxy_protocol`. The client it names is what the ACL, logs and any header sent on use"
    ),
    option!(proxy_protocol_timeout, Span::POSITIVE, "how long a trusted peer has to send its whole PROXY header"),
    option!(
        access_log,
        Bool,
        "`false` leaves this route's connections and sessions out of the access log (`dockward run --access-log`)"
    ),
    option!(
        max_connections_per_ip,
        Count { min: 0 },
        note = "0 (unlimited)",
        "TCP connections one client may have open at once; over it, the client is closed at accept, before any \
            dial, and counted as `limited`"
    ),
    option!(
        rate_limit,
        OptionalRate,
        "new TCP connections or UDP sessions per client (`10/s`, `100/m`, `5/h`); over it a TCP client is closed \
            at accept and a UDP datagram dropped without a session, counted as `limited`"
    ),
    option!(
        rate_limit_burst,
        Count { min: 0 },
        note = "the rate's count",
        "how many new connections or sessions a client may open at once before `rate_limit` applies"
    ),
    option!(
        client_ipv6_prefix,
        PrefixLen,
        "IPv6 clients in one network of this prefix length count as one client for the per-client limits"
    ),
];

impl Field {
    /// The default as the README shows it: the default value displayed by the field's kind,
    /// or the entry's words where they say it better.
    pub fn default_text(&self) -> String {
        match (self.note, &self.value) {
            (Some(note), _) => note.to_string(),
            (None, Value::Draft { default }) => default.to_string(),
            (None, Value::Option { slot }) => slot.show(&RouteOptions::default()),
        }
    }

    /// Whether the field is a [`RouteOptions`] field (not a part of the route itself).
    pub fn is_option(&self) -> bool {
        matches!(self.value, Value::Option { .. })
    }

    /// Sets this option in `options` from its text; `Ok(false)` when the field is not an
    /// option (the draft sets it).
    pub(crate) fn set_option(&self, options: &mut RouteOptions, text: &str) -> Result<bool, FieldError> {
        match self.value {
            Value::Option { slot } => {
                slot.set(options, text).map_err(|reason| err(self.name, text, reason))?;
                Ok(true)
            }
            Value::Draft { .. } => Ok(false),
        }
    }
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field").field("name", &self.name).field("default", &self.default_text()).finish()
    }
}

/// The field called `name`.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// Whether `name` is a route field.
pub fn is_field(name: &str) -> bool {
    field(name).is_some()
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

/// The value of option `field` as a user would write it (empty for a field that is not an
/// option), for errors found after parsing.
pub fn option_text(options: &RouteOptions, field_name: &str) -> String {
    match field(field_name).map(|f| &f.value) {
        Some(Value::Option { slot }) => slot.show(options),
        _ => String::new(),
    }
}

/// The options that differ from their defaults, as `(name, value)` in alphabetical order,
/// each value as a user would write it (`dockward check`'s OPTIONS column and `--json`).
pub fn changed_options(options: &RouteOptions) -> Vec<(&'static str, String)> {
    let default = RouteOptions::default();
    let mut set: Vec<(&'static str, String)> = FIELDS
        .iter()
        .filter_map(|f| match f.value {
            Value::Option { slot } if !slot.same(options, &default) => Some((f.name, slot.show(options))),
            _ => None,
        })
        .collect();
    set.sort_unstable_by_key(|(name, _)| *name);
    set
}

/// `connect_timeout=2s drain_grace=5s`: [`changed_options`] as one line.
pub fn options_text(options: &RouteOptions) -> String {
    changed_options(options).iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ")
}

impl RouteOptions {
    /// Checks the options of a route of `protocol`, naming the field at fault: first each
    /// field's range (its kind's rule, from [`FIELDS`]), then the rules between fields. This
    /// is the one place either is checked; labels and files meet it through
    /// [`RouteDraft::build`](crate::RouteDraft::build), code through
    /// [`RouteSpec::validate`](crate::RouteSpec::validate).
    pub fn check(&self, protocol: Protocol) -> Result<(), OptionError> {
        let fail = |field: &'static str, reason: &str| Err(OptionError { field, reason: reason.to_string() });
        for field in FIELDS {
            if let Value::Option { slot } = field.value {
                slot.check(field.name, self).map_err(|reason| OptionError { field: field.name, reason })?;
            }
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
