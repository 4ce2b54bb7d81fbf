//! The `port` and `scheme` values: which ports a route listens on and forwards to, and over
//! which transports.

use std::fmt;

use crate::protocol::{Family, Protocol, Scheme};
use crate::text::{FieldError, err};

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
    pub(crate) fn parse(name: &str) -> Option<SchemeSpec> {
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
