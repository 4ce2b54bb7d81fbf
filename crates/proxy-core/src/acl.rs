//! Access control: which client addresses a route lets in.
//!
//! An [`Acl`] is an `allow` and a `deny` list of networks (the `allow` and `deny` route
//! fields, and the table-wide ACL set with
//! [`RouteTable::set_global_acl`](crate::RouteTable::set_global_acl)). A client is judged as:
//!
//! 1. in a `deny` network: refused (deny wins);
//! 2. else in an `allow` network: admitted;
//! 3. else admitted unless an `allow` list is set.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack `[::]` listener reports
//! for an IPv4 client) are judged as the IPv4 address they carry, and a rule written as a
//! mapped network (`::ffff:10.0.0.0/104`) is the IPv4 network it maps (`10.0.0.0/8`), so
//! one rule covers a client however the socket saw it.
//!
//! The lists are compiled once, when a route is started or updated, into masked integer
//! pairs per family; judging a client is a scan of those pairs with no allocation.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of networks compiled for matching: `(network, mask)` pairs per family, IPv4-mapped
/// IPv6 networks folded into IPv4, overlapping networks merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetSet {
    /// IPv4 networks as `(address & mask, mask)`.
    v4: Box<[(u32, u32)]>,
    /// IPv6 networks as `(address & mask, mask)`.
    v6: Box<[(u128, u128)]>,
}

impl NetSet {
    /// Compiles `nets`.
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        let mut v4: Vec<Ipv4Net> = Vec::new();
        let mut v6: Vec<Ipv6Net> = Vec::new();
        for net in nets {
            match fold_mapped(*net) {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => v6.push(n),
            }
        }
        let v4 = Ipv4Net::aggregate(&v4)
            .into_iter()
            .map(|n| (u32::from(n.network()), u32::from(n.netmask())))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let v6 = Ipv6Net::aggregate(&v6)
            .into_iter()
            .map(|n| (u128::from(n.network()), u128::from(n.netmask())))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        NetSet { v4, v6 }
    }

    /// Whether `ip` (IPv4-mapped IPv6 judged as IPv4) is in one of the networks.
    #[inline]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4.iter().any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6.iter().any(|&(net, mask)| ip & mask == net)
            }
        }
    }
}

/// An IPv6 network inside `::ffff:0:0/96` (IPv4-mapped) as the IPv4 network it maps; any
/// other network unchanged.
fn fold_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.network().to_ipv4_mapped()
        && let Ok(folded) = Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(folded.trunc());
    }
    net
}

/// Why an [`Acl`] refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in a `deny` network.
    Denied,
    /// An `allow` list is set and the address is in none of its networks.
    NotAllowed,
}

impl Refusal {
    /// `deny list` or `not in allow list`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "in deny list",
            Refusal::NotAllowed => "not in allow list",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An allow and a deny list, compiled for matching; see the module doc for the rules.
///
/// Two ACLs are equal when their lists are equal as written.
#[derive(Clone, Default)]
pub struct Acl {
    /// The allow list as given.
    allow: Vec<IpNet>,
    /// The deny list as given.
    deny: Vec<IpNet>,
    /// `allow`, compiled.
    allow_set: NetSet,
    /// `deny`, compiled.
    deny_set: NetSet,
}

impl Acl {
    /// An ACL from its lists.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        let allow_set = NetSet::new(&allow);
        let deny_set = NetSet::new(&deny);
        Acl { allow, deny, allow_set, deny_set }
    }

    /// An ACL that lets everyone in (the default).
    pub fn open() -> Self {
        Acl::default()
    }

    /// The allow list as given.
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The deny list as given.
    pub fn deny(&self) -> &[IpNet] {
        &self.deny
    }

    /// True when neither list has an entry: everyone is let in.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Judges a client address: deny wins, then allow, then the default (admit, unless an
    /// allow list is set).
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.deny_set.contains(ip) {
            return Err(Refusal::Denied);
        }
        // An allow list whose entries all failed to compile cannot exist: NetSet keeps every
        // network, so "a list is set" is the written list being non-empty.
        if !self.allow.is_empty() && !self.allow_set.contains(ip) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// True when [`Acl::check`] admits `ip`.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

impl PartialEq for Acl {
    fn eq(&self, other: &Self) -> bool {
        self.allow == other.allow && self.deny == other.deny
    }
}

impl Eq for Acl {}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("allow", &route_spec::nets::display_nets(&self.allow))
            .field("deny", &route_spec::nets::display_nets(&self.deny))
            .finish()
    }
}

/// Which ACL refused a client: the route's own or the table-wide one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The route's `allow`/`deny`.
    Route,
    /// [`RouteTable::set_global_acl`](crate::RouteTable::set_global_acl).
    Global,
}

impl Scope {
    /// `route` or `global`, for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Route => "route",
            Scope::Global => "global",
        }
    }
}

/// The two ACLs a route's clients must both pass: its own and the table-wide one.
///
/// A deny in either refuses; an allow list in either must admit the client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    /// The route's own ACL.
    pub(crate) route: Acl,
    /// The table-wide ACL when the route's settings were last pushed.
    pub(crate) global: std::sync::Arc<Acl>,
}

impl Access {
    /// Judges `ip` against both ACLs; the global one first.
    #[inline]
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), (Scope, Refusal)> {
        self.global.check(ip).map_err(|r| (Scope::Global, r))?;
        self.route.check(ip).map_err(|r| (Scope::Route, r))
    }
}

#[cfg(test)]
mod tests {
    use route_spec::nets::parse_nets;

    use super::*;

    fn acl(allow: &str, deny: &str) -> Acl {
        Acl::new(parse_nets(allow).unwrap(), parse_nets(deny).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_then_allow_then_the_default() {
        let open = acl("", "");
        assert!(open.is_open() && open.allows(ip("203.0.113.9")) && open.allows(ip("::1")));

        let deny_only = acl("", "10.0.0.0/8");
        assert_eq!(deny_only.check(ip("10.1.2.3")), Err(Refusal::Denied));
        assert!(deny_only.allows(ip("11.0.0.1")), "no allow list: admitted by default");

        let allow_only = acl("10.0.0.0/8", "");
        assert!(allow_only.allows(ip("10.255.0.1")));
        assert_eq!(allow_only.check(ip("11.0.0.1")), Err(Refusal::NotAllowed));
        assert_eq!(allow_only.check(ip("::1")), Err(Refusal::NotAllowed), "an IPv4 allow list refuses IPv6");

        let both = acl("10.0.0.0/8", "10.0.0.0/24");
        assert_eq!(both.check(ip("10.0.0.7")), Err(Refusal::Denied), "deny wins over a wider allow");
        assert!(both.allows(ip("10.0.1.7")));
    }

    #[test]
    fn mapped_ipv6_peers_and_rules_are_ipv4() {
        let deny = acl("", "127.0.0.1");
        assert_eq!(deny.check(ip("::ffff:127.0.0.1")), Err(Refusal::Denied));
        let allow = acl("10.0.0.0/8", "");
        assert!(allow.allows(ip("::ffff:10.9.8.7")));
        assert!(!allow.allows(ip("::ffff:11.9.8.7")));
        // A rule written as a mapped network matches the plain IPv4 client too.
        let mapped_rule = acl("", "::ffff:192.168.0.0/112");
        assert_eq!(mapped_rule.check(ip("192.168.3.4")), Err(Refusal::Denied));
        assert!(mapped_rule.allows(ip("192.169.0.1")));
        // Not every IPv6 address with IPv4 bits is mapped: ::1 stays IPv6.
        assert!(acl("", "0.0.0.1").allows(ip("::1")));
    }

    #[test]
    fn host_bits_in_a_network_are_ignored_and_overlaps_merge() {
        // The field grammar refuses `10.1.2.3/8`; a network built in code may still carry them.
        let mut allow = parse_nets("10.0.0.0/9, 10.128.0.0/9").unwrap();
        allow.push("10.1.2.3/8".parse().unwrap());
        let a = Acl::new(allow, vec![]);
        assert!(a.allows(ip("10.200.0.1")));
        assert_eq!(a.allow_set.v4.len(), 1, "adjacent and nested networks merge into one");
        assert!(acl("", "0.0.0.0/0").check(ip("1.1.1.1")).is_err());
        assert!(acl("", "::/0").check(ip("2001:db8::1")).is_err());
        assert!(acl("", "::/0").allows(ip("1.1.1.1")), "::/0 is IPv6 only");
    }

    #[test]
    fn access_needs_both_acls() {
        let access = Access { route: acl("10.0.0.0/8", ""), global: std::sync::Arc::new(acl("", "10.0.0.5")) };
        assert_eq!(access.check(ip("10.0.0.5")), Err((Scope::Global, Refusal::Denied)));
        assert_eq!(access.check(ip("11.0.0.5")), Err((Scope::Route, Refusal::NotAllowed)));
        assert_eq!(access.check(ip("10.0.0.6")), Ok(()));
        let access = Access { route: acl("", ""), global: std::sync::Arc::new(acl("192.168.0.0/16", "")) };
        assert_eq!(access.check(ip("10.0.0.6")), Err((Scope::Global, Refusal::NotAllowed)));
    }

    #[test]
    fn equality_is_on_the_lists_as_written() {
        assert_eq!(acl("10.0.0.0/8", ""), acl("10.0.0.0/8", ""));
        assert_ne!(acl("10.0.0.0/8", ""), acl("", "10.0.0.0/8"));
    }
}
