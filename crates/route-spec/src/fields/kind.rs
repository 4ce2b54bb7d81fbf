//! Value kinds: how a field's text becomes a value, how the value is written back, and which
//! values are out of range. A field of [`FIELDS`](super::FIELDS) names its kind; the kind is
//! the only place its parsing, display and range rules are written.
//!
//! Parsing returns only the reason; the caller names the field and the value
//! ([`FieldError`](super::FieldError)).

use std::fmt::Display;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::nets;
use crate::options::RouteOptions;
use crate::text::{check_printable, did_you_mean};

/// Parses a field's text and writes a value back as a user would write it.
pub trait Kind: Sync {
    /// The value it parses to.
    type Value: PartialEq;
    /// Parses `text` (as written: kinds trim it), or says why it cannot.
    fn parse(&self, text: &str) -> Result<Self::Value, String>;
    /// The value as a user would write it (`5s`, `off`, `10.0.0.0/8,::1/128`).
    fn show(&self, value: &Self::Value) -> String;
    /// Whether a value (however it was made: a spec built in code skips [`Kind::parse`]) is
    /// in range; the reason names the field `name`.
    fn check(&self, _name: &str, _value: &Self::Value) -> Result<(), String> {
        Ok(())
    }
}

/// A whole number of things from `min` to `u32::MAX`.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    /// The least value accepted (0 or 1).
    pub min: u32,
}

impl Kind for Count {
    type Value = u32;

    fn parse(&self, text: &str) -> Result<u32, String> {
        let n = text.trim().parse::<u32>().map_err(|_| "expected a whole number from 0 to 4294967295".to_string())?;
        if n < self.min {
            return Err(format!("must be at least {}", self.min));
        }
        Ok(n)
    }

    fn show(&self, value: &u32) -> String {
        value.to_string()
    }

    fn check(&self, name: &str, value: &u32) -> Result<(), String> {
        if *value < self.min {
            return Err(format!("{name} must be at least {}", self.min));
        }
        Ok(())
    }
}

/// A duration with a unit (`5s`, `250ms`, `1h30m`), at most [`RouteOptions::MAX_DURATION`]; zero only
/// when `zero_ok`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Whether 0 is a meaningful value (`drain_grace: 0s`: close at once).
    pub zero_ok: bool,
}

impl Span {
    /// A duration that must be more than 0.
    pub const POSITIVE: Span = Span { zero_ok: false };
    /// A duration that may be 0.
    pub const ANY: Span = Span { zero_ok: true };
}

/// Parses a duration such as `5s`, `250ms`, `5m` or `1h30m`; a bare number is refused, since
/// its unit would be a guess.
pub fn duration(text: &str) -> Result<Duration, String> {
    let v = text.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("a duration needs a unit, e.g. {v}s or {v}ms"));
    }
    humantime::parse_duration(v).map_err(|e| format!("not a duration ({e}); e.g. 5s, 250ms, 5m"))
}

fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check_max(name: &str, d: Duration) -> Result<(), String> {
    if d > RouteOptions::MAX_DURATION {
        return Err(format!("{name} must be at most 365 days"));
    }
    Ok(())
}

impl Kind for Span {
    type Value = Duration;

    fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = duration(text)?;
        if d.is_zero() && !self.zero_ok {
            return Err("must be more than 0".into());
        }
        Ok(d)
    }

    fn show(&self, value: &Duration) -> String {
        show_duration(*value)
    }

    fn check(&self, name: &str, value: &Duration) -> Result<(), String> {
        if value.is_zero() && !self.zero_ok {
            return Err(format!("{name} must be more than 0"));
        }
        check_max(name, *value)
    }
}

/// A duration that can be turned off (`off`, `none`, `0`, `0s`): `None`.
#[derive(Debug, Clone, Copy)]
pub struct OptionalSpan;

impl Kind for OptionalSpan {
    type Value = Option<Duration>;

    fn parse(&self, text: &str) -> Result<Option<Duration>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "0" | "0s" => Ok(None),
            _ => duration(text).map(Some),
        }
    }

    fn show(&self, value: &Option<Duration>) -> String {
        value.map_or_else(|| "off".to_string(), show_duration)
    }

    fn check(&self, name: &str, value: &Option<Duration>) -> Result<(), String> {
        match value {
            Some(d) if d.is_zero() => Err(format!("{name} must be more than 0 (leave it out to disable it)")),
            Some(d) => check_max(name, *d),
            None => Ok(()),
        }
    }
}

/// A list of IP addresses and CIDR networks, comma- or space-separated; an empty list is an
/// error unless `empty_ok` (an empty allow list would admit everyone: fail closed).
#[derive(Debug, Clone, Copy)]
pub struct Networks {
    /// Whether an empty list is a value (deny nobody) rather than a mistake.
    pub empty_ok: bool,
}

impl Kind for Networks {
    type Value = Vec<IpNet>;

    fn parse(&self, text: &str) -> Result<Vec<IpNet>, String> {
        let list = nets::parse_nets(text).map_err(|e| e.to_string())?;
        if list.is_empty() && !self.empty_ok {
            return Err("an empty allow list would let every client in: list IPs or CIDR networks (e.g. \
                        10.0.0.0/8), or drop the field; to refuse everyone, deny 0.0.0.0/0 ::/0"
                .into());
        }
        Ok(list)
    }

    fn show(&self, value: &Vec<IpNet>) -> String {
        nets::display_nets(value)
    }
}

/// A word naming one value of an enum (`round_robin`, `tcp`), parsed by its [`FromStr`].
///
/// With `noun`, an unknown word gets a did-you-mean among `names`: `unknown strategy (did
/// you mean "least_conn"?)`; without, the enum's own reason is the error.
pub struct Word<T> {
    /// What one value is called in errors (`strategy`), for did-you-mean hints.
    pub noun: Option<&'static str>,
    /// Every name, for did-you-mean hints.
    pub names: &'static [&'static str],
    /// The enum.
    pub of: PhantomData<fn() -> T>,
}

impl<T> Word<T> {
    /// A word parsed by `T`'s [`FromStr`] alone.
    pub const fn plain() -> Self {
        Word { noun: None, names: &[], of: PhantomData }
    }

    /// A word with did-you-mean hints among `names`.
    pub const fn hinted(noun: &'static str, names: &'static [&'static str]) -> Self {
        Word { noun: Some(noun), names, of: PhantomData }
    }
}

impl<T> Kind for Word<T>
where
    T: FromStr<Err = String> + Display + PartialEq,
{
    type Value = T;

    fn parse(&self, text: &str) -> Result<T, String> {
        let v = text.trim();
        v.parse::<T>().map_err(|reason| match self.noun {
            None => reason,
            Some(noun) => match did_you_mean(v, self.names.iter().copied()) {
                Some(hint) => format!("unknown {noun} (did you mean {hint:?}?)"),
                None => format!("unknown {noun}; {reason}"),
            },
        })
    }

    fn show(&self, value: &T) -> String {
        value.to_string()
    }
}

/// A feature that is off (`off`, `none`, `false`, `no`: `None`) or one value of an enum.
pub struct Switch<T>(pub Word<T>);

impl<T> Kind for Switch<T>
where
    T: FromStr<Err = String> + Display + PartialEq,
{
    type Value = Option<T>;

    fn parse(&self, text: &str) -> Result<Option<T>, String> {
        if is_off(text) { Ok(None) } else { self.0.parse(text).map(Some) }
    }

    fn show(&self, value: &Option<T>) -> String {
        value.as_ref().map_or_else(|| "off".to_string(), |v| self.0.show(v))
    }
}

/// Whether a value turns an optional feature off.
pub fn is_off(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "off" | "none" | "false" | "no")
}

/// `true` or `false`, read as Go's `strconv.ParseBool` reads it (GoDoxy's rule), so a label
/// means the same to both: `1 t T TRUE true True` and `0 f F FALSE false False`. Anything
/// else (`yes`, `on`, an empty value) is an error.
#[derive(Debug, Clone, Copy)]
pub struct Bool;

impl Kind for Bool {
    type Value = bool;

    fn parse(&self, text: &str) -> Result<bool, String> {
        parse_bool(text).ok_or_else(|| "expected true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False)".into())
    }

    fn show(&self, value: &bool) -> String {
        value.to_string()
    }
}

/// The one true/false parser of labels and files: Go's `strconv.ParseBool`, after trimming.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An IP address (IPv6 may be bracketed).
#[derive(Debug, Clone, Copy)]
pub struct Address;

impl Kind for Address {
    type Value = IpAddr;

    fn parse(&self, text: &str) -> Result<IpAddr, String> {
        let ip = text.trim().trim_start_matches('[').trim_end_matches(']');
        ip.parse().map_err(|_| "not an IP address".to_string())
    }

    fn show(&self, value: &IpAddr) -> String {
        value.to_string()
    }
}

/// One host name or IP, or several separated by commas and/or spaces (IPv6 may be
/// bracketed); duplicates are dropped. Control and bidi characters are refused.
#[derive(Debug, Clone, Copy)]
pub struct Hosts;

impl Kind for Hosts {
    type Value = Vec<String>;

    fn parse(&self, text: &str) -> Result<Vec<String>, String> {
        let mut hosts: Vec<String> = Vec::new();
        for entry in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
            let host = entry.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') {
                return Err(format!("{entry:?} is not a host name or IP address"));
            }
            check_printable(host).map_err(|reason| format!("host {host:?} {reason}"))?;
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_string());
            }
        }
        if hosts.is_empty() {
            return Err("expected a host name or IP address".into());
        }
        Ok(hosts)
    }

    fn show(&self, value: &Vec<String>) -> String {
        value.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_is_go_parse_bool_and_nothing_else() {
        for t in ["1", "t", "T", "TRUE", "true", "True", " true "] {
            assert_eq!(parse_bool(t), Some(true), "{t:?}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f:?}");
        }
        for bad in ["", "y", "yes", "on", "off", "no", "tRUE", "TrUe", "2", "truee"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
            assert!(Bool.parse(bad).unwrap_err().starts_with("expected true or false"), "{bad:?}");
        }
        assert_eq!(Bool.show(&true), "true");
    }

    #[test]
    fn counts_have_a_floor() {
        assert_eq!(Count { min: 0 }.parse(" 0 "), Ok(0));
        assert_eq!(Count { min: 1 }.parse("0").unwrap_err(), "must be at least 1");
        assert_eq!(Count { min: 0 }.parse("-1").unwrap_err(), "expected a whole number from 0 to 4294967295");
        assert_eq!(Count { min: 0 }.parse("4294967296").unwrap_err(), "expected a whole number from 0 to 4294967295");
        assert_eq!(Count { min: 1 }.check("max_udp_sessions", &0).unwrap_err(), "max_udp_sessions must be at least 1");
        assert_eq!(Count { min: 0 }.show(&16384), "16384");
    }

    #[test]
    fn spans_need_units_and_stay_in_range() {
        assert_eq!(Span::POSITIVE.parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Span::POSITIVE.parse("30").unwrap_err(), "a duration needs a unit, e.g. 30s or 30ms");
        assert_eq!(Span::POSITIVE.parse("0s").unwrap_err(), "must be more than 0");
        assert_eq!(Span::ANY.parse("0s"), Ok(Duration::ZERO));
        assert_eq!(Span::ANY.show(&Duration::from_secs(300)), "5m");
        assert_eq!(Span::ANY.show(&Duration::ZERO), "0s");
        let long = RouteOptions::MAX_DURATION + Duration::from_secs(1);
        assert_eq!(Span::ANY.check("drain_grace", &long).unwrap_err(), "drain_grace must be at most 365 days");
        assert_eq!(Span::POSITIVE.check("x", &Duration::ZERO).unwrap_err(), "x must be more than 0");
        assert!(Span::POSITIVE.check("x", &RouteOptions::MAX_DURATION).is_ok());
    }

    #[test]
    fn optional_spans_turn_off() {
        for off in ["off", "none", "OFF", "0", "0s"] {
            assert_eq!(OptionalSpan.parse(off), Ok(None), "{off}");
        }
        assert_eq!(OptionalSpan.parse("1h"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(OptionalSpan.show(&None), "off");
        assert_eq!(OptionalSpan.show(&Some(Duration::from_secs(90))), "1m 30s");
        let e = OptionalSpan.check("tcp_idle_timeout", &Some(Duration::ZERO)).unwrap_err();
        assert_eq!(e, "tcp_idle_timeout must be more than 0 (leave it out to disable it)");
    }

    #[test]
    fn network_lists_refuse_an_empty_allow_list_only() {
        let allow = Networks { empty_ok: false };
        assert!(allow.parse(" , ").unwrap_err().starts_with("an empty allow list would let every client in"));
        assert_eq!(Networks { empty_ok: true }.parse(""), Ok(vec![]));
        let list = allow.parse("10.0.0.0/8 ::1").unwrap();
        assert_eq!(allow.show(&list), "10.0.0.0/8,::1/128");
    }

    #[test]
    fn words_and_switches() {
        use crate::{Balance, HealthCheck, ProxyVersion};
        let balance: Word<Balance> = Word::hinted("strategy", &Balance::NAMES);
        assert_eq!(balance.parse("Least-Conn"), Ok(Balance::LeastConn));
        assert_eq!(balance.parse("least_con").unwrap_err(), "unknown strategy (did you mean \"least_conn\"?)");
        assert_eq!(
            balance.parse("random").unwrap_err(),
            "unknown strategy; expected one of round_robin, least_conn, ip_hash"
        );
        assert_eq!(Word::<HealthCheck>::plain().parse("http").unwrap_err(), "expected tcp or off");
        let pp = Switch(Word::<ProxyVersion>::plain());
        assert_eq!(pp.parse("no"), Ok(None));
        assert_eq!(pp.parse("V2"), Ok(Some(ProxyVersion::V2)));
        assert_eq!(pp.show(&None), "off");
        assert_eq!(pp.show(&Some(ProxyVersion::V1)), "v1");
    }

    #[test]
    fn addresses_and_hosts() {
        assert_eq!(Address.parse("[::1]"), Ok("::1".parse().unwrap()));
        assert_eq!(Address.parse("localhost").unwrap_err(), "not an IP address");
        assert_eq!(Hosts.parse("a, b a"), Ok(vec!["a".to_string(), "b".to_string()]));
        let e = Hosts.parse("127.0.0.1\u{202e}").unwrap_err();
        assert!(e.starts_with("host \"127.0.0.1\\u{202e}\" contains the control or bidirectional character"), "{e}");
        assert!(Hosts.parse("db\u{1b}[31m").is_err());
    }
}

/// A rate such as `10/s`, `100/m` or `5/h`, or `off`: `None`.
#[derive(Debug, Clone, Copy)]
pub struct OptionalRate;

impl Kind for OptionalRate {
    type Value = Option<crate::Rate>;

    fn parse(&self, text: &str) -> Result<Option<crate::Rate>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(None),
            _ => text.parse().map(Some).map_err(|_| {
                "expected COUNT/UNIT with COUNT at least 1 and UNIT s, m or h (10/s, 100/m), or off".to_string()
            }),
        }
    }

    fn show(&self, value: &Option<crate::Rate>) -> String {
        value.map_or_else(|| "off".to_string(), |rate| rate.to_string())
    }

    fn check(&self, name: &str, value: &Option<crate::Rate>) -> Result<(), String> {
        match value {
            Some(rate) if rate.count == 0 || rate.per.is_zero() => {
                Err(format!("{name} must allow at least 1 per unit"))
            }
            _ => Ok(()),
        }
    }
}

/// An IPv6 prefix length, 1 to 128 (`64` or `/64`).
#[derive(Debug, Clone, Copy)]
pub struct PrefixLen;

impl Kind for PrefixLen {
    type Value = u8;

    fn parse(&self, text: &str) -> Result<u8, String> {
        let text = text.trim();
        match text.strip_prefix('/').unwrap_or(text).parse::<u8>() {
            Ok(n) if (1..=128).contains(&n) => Ok(n),
            _ => Err("expected an IPv6 prefix length from 1 to 128".into()),
        }
    }

    fn show(&self, value: &u8) -> String {
        value.to_string()
    }

    fn check(&self, name: &str, value: &u8) -> Result<(), String> {
        if (1..=128).contains(value) { Ok(()) } else { Err(format!("{name} must be from 1 to 128")) }
    }
}
