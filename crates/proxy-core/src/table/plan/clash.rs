//! The port-clash rule: which listen addresses of one protocol fight over a port.
//!
//! Written once, here, for the route table (whose [plan](super::plan) hands a contested
//! address to the older route and puts the other in conflict) and for `dockward check`
//! (which reports every clashing pair through [`clashes`]).
//!
//! Two routes of one protocol clash when they listen on the same port (never port 0: the OS
//! picks a free one) and their addresses overlap: the same address, or one of them the
//! wildcard of the other's family (`0.0.0.0` takes every IPv4 address, `[::]` every IPv6
//! one), or an IPv6 wildcard that is not IPv6-only, which takes the IPv4 port too.
//!
//! [`ClashIndex`] files listen addresses by protocol, port and address, so finding a route's
//! rivals costs about what it finds, not a comparison with every other route.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use route_spec::{Family, Protocol, RouteId, RouteSpec};

/// Where a route listens, as far as clashes go: its protocol, requested address and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listen {
    /// TCP and UDP ports never clash with each other.
    pub(crate) protocol: Protocol,
    /// The requested listen address; port 0 never clashes.
    pub(crate) addr: SocketAddr,
    /// An IPv6 wildcard takes the IPv4 port too unless the family is [`Family::V6`].
    pub(crate) family: Family,
}

impl From<&RouteSpec> for Listen {
    fn from(spec: &RouteSpec) -> Self {
        Listen { protocol: spec.protocol, addr: spec.listen, family: spec.family }
    }
}

impl From<&RouteId> for Listen {
    fn from(id: &RouteId) -> Self {
        Listen { protocol: id.protocol, addr: id.listen, family: id.family }
    }
}

/// One clash found by [`clashes`]: route `route` listens where the earlier route `with`
/// does (both indices into the slice given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clash {
    /// The later route, which would sit in conflict at run time.
    pub route: usize,
    /// The earlier route it clashes with.
    pub with: usize,
}

/// Every pair of `routes` that would fight over a listen address, as the route table
/// judges them: for each route in order, each earlier route it clashes with, in order.
///
/// Specs with the same [`RouteId`] are one route (replicas, merged and load-balanced at run
/// time) and never clash with each other. Takes time in proportion to the routes and the
/// clashes found, not to every pair.
pub fn clashes(routes: &[RouteSpec]) -> Vec<Clash> {
    // The replicas of each route id, by index; the index files each id once.
    let mut ids: HashMap<RouteId, usize> = HashMap::new();
    let mut replicas: Vec<Vec<usize>> = Vec::new();
    let mut index: ClashIndex<usize> = ClashIndex::default();
    let mut found = Vec::new();
    for (i, spec) in routes.iter().enumerate() {
        let listen = Listen::from(spec);
        if listen.addr.port() == 0 {
            continue;
        }
        let group = match ids.entry(spec.id()) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                replicas.push(Vec::new());
                *e.insert(replicas.len() - 1)
            }
        };
        let start = found.len();
        for &rival in index.rivals(listen) {
            if rival != group {
                found.extend(replicas[rival].iter().map(|&with| Clash { route: i, with }));
            }
        }
        found[start..].sort_unstable_by_key(|c| c.with);
        if replicas[group].is_empty() {
            index.insert(listen, group);
        }
        replicas[group].push(i);
    }
    found
}

/// Listen addresses filed by protocol, port and address, each with a key (a route id, an
/// index), answering which keys clash with a listen address.
#[derive(Debug)]
pub(crate) struct ClashIndex<K> {
    ports: HashMap<(Protocol, u16), Port<K>>,
}

impl<K> Default for ClashIndex<K> {
    fn default() -> Self {
        ClashIndex { ports: HashMap::new() }
    }
}

/// The keys listening on one protocol and port, by address.
#[derive(Debug)]
struct Port<K> {
    /// On one IPv4 address each.
    v4: HashMap<Ipv4Addr, Vec<K>>,
    /// On `0.0.0.0`.
    v4_any: Vec<K>,
    /// On one IPv6 address each.
    v6: HashMap<Ipv6Addr, Vec<K>>,
    /// On `[::]`, dual-stack: they take the IPv4 port too.
    v6_any_dual: Vec<K>,
    /// On `[::]`, IPv6 only.
    v6_any_only: Vec<K>,
}

impl<K> Default for Port<K> {
    fn default() -> Self {
        Port {
            v4: HashMap::new(),
            v4_any: Vec::new(),
            v6: HashMap::new(),
            v6_any_dual: Vec::new(),
            v6_any_only: Vec::new(),
        }
    }
}

impl<K> Port<K> {
    /// The list `at` is filed in.
    fn slot(&mut self, at: Listen) -> &mut Vec<K> {
        match at.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => &mut self.v4_any,
            IpAddr::V4(ip) => self.v4.entry(ip).or_default(),
            IpAddr::V6(ip) if !ip.is_unspecified() => self.v6.entry(ip).or_default(),
            IpAddr::V6(_) if at.family == Family::V6 => &mut self.v6_any_only,
            IpAddr::V6(_) => &mut self.v6_any_dual,
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty()
            && self.v4_any.is_empty()
            && self.v6.is_empty()
            && self.v6_any_dual.is_empty()
            && self.v6_any_only.is_empty()
    }

    /// The keys that clash with `at` on this port: the rule of this module, by address.
    fn rivals(&self, at: Listen) -> Vec<&[K]> {
        let all_v4 = || self.v4.values().map(Vec::as_slice).chain([self.v4_any.as_slice()]);
        let all_v6 =
            || self.v6.values().map(Vec::as_slice).chain([self.v6_any_dual.as_slice(), self.v6_any_only.as_slice()]);
        let v6_any = [self.v6_any_dual.as_slice(), self.v6_any_only.as_slice()];
        let mut found: Vec<&[K]> = match at.addr.ip() {
            // A wildcard takes every address of its family.
            IpAddr::V4(ip) if ip.is_unspecified() => all_v4().collect(),
            IpAddr::V4(ip) => vec![self.v4.get(&ip).map_or(&[][..], Vec::as_slice), self.v4_any.as_slice()],
            IpAddr::V6(ip) if ip.is_unspecified() => all_v6().collect(),
            IpAddr::V6(ip) => vec![self.v6.get(&ip).map_or(&[][..], Vec::as_slice), v6_any[0], v6_any[1]],
        };
        match at.addr.ip() {
            // A dual-stack IPv6 wildcard takes the IPv4 port too...
            IpAddr::V6(ip) if ip.is_unspecified() && at.family != Family::V6 => found.extend(all_v4()),
            // ...so every IPv4 address clashes with one.
            IpAddr::V4(_) => found.push(self.v6_any_dual.as_slice()),
            IpAddr::V6(_) => {}
        }
        found.retain(|keys| !keys.is_empty());
        found
    }
}

impl<K: PartialEq> ClashIndex<K> {
    /// Files `key` as listening on `at`; a listen on port 0 is not filed (it clashes with nothing).
    pub(crate) fn insert(&mut self, at: Listen, key: K) {
        if at.addr.port() != 0 {
            self.ports.entry((at.protocol, at.addr.port())).or_default().slot(at).push(key);
        }
    }

    /// Forgets `key` as listening on `at`.
    pub(crate) fn remove(&mut self, at: Listen, key: &K) {
        let port = (at.protocol, at.addr.port());
        let Some(filed) = self.ports.get_mut(&port) else { return };
        let slot = filed.slot(at);
        slot.retain(|k| k != key);
        if slot.is_empty() {
            match at.addr.ip() {
                IpAddr::V4(ip) => filed.v4.remove(&ip),
                IpAddr::V6(ip) => filed.v6.remove(&ip),
            };
        }
        if filed.is_empty() {
            self.ports.remove(&port);
        }
    }

    /// Every key filed on an address that clashes with `at`, in no particular order.
    pub(crate) fn rivals(&self, at: Listen) -> impl Iterator<Item = &K> {
        let filed = if at.addr.port() == 0 { None } else { self.ports.get(&(at.protocol, at.addr.port())) };
        filed.map(|p| p.rivals(at)).unwrap_or_default().into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use route_spec::Target;

    /// The rule as a plain pairwise comparison, which the index must agree with.
    fn clash(a: Listen, b: Listen) -> bool {
        let (x, y) = (a.addr, b.addr);
        if a.protocol != b.protocol || x.port() == 0 || x.port() != y.port() {
            return false;
        }
        match (x.ip(), y.ip()) {
            (IpAddr::V4(p), IpAddr::V4(q)) => p == q || p.is_unspecified() || q.is_unspecified(),
            (IpAddr::V6(p), IpAddr::V6(q)) => p == q || p.is_unspecified() || q.is_unspecified(),
            (IpAddr::V6(p), IpAddr::V4(_)) => p.is_unspecified() && a.family != Family::V6,
            (IpAddr::V4(_), IpAddr::V6(q)) => q.is_unspecified() && b.family != Family::V6,
        }
    }

    fn route(alias: &str, scheme_listen: (&str, &str)) -> RouteSpec {
        let (scheme, listen) = scheme_listen;
        let scheme: route_spec::Scheme = scheme.parse().expect("scheme");
        let mut spec =
            RouteSpec::new(alias, scheme.protocol, listen.parse().expect("listen"), vec![Target::new("t", 1)]);
        spec.family = scheme.family;
        spec
    }

    /// Every combination of protocol, family and a few addresses on two ports.
    fn every_kind_of_listen() -> Vec<Listen> {
        let mut all = Vec::new();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for family in [Family::Any, Family::V4, Family::V6] {
                for addr in [
                    "0.0.0.0:80",
                    "127.0.0.1:80",
                    "127.0.0.2:80",
                    "[::]:80",
                    "[::1]:80",
                    "[::2]:80",
                    "0.0.0.0:81",
                    "127.0.0.1:81",
                    "[::]:81",
                    "[::1]:81",
                    "0.0.0.0:0",
                    "127.0.0.1:0",
                    "[::]:0",
                ] {
                    all.push(Listen { protocol, addr: addr.parse().expect("addr"), family });
                }
            }
        }
        all
    }

    #[test]
    fn the_index_finds_exactly_the_rivals_the_rule_names() {
        let all = every_kind_of_listen();
        let mut index = ClashIndex::default();
        for (i, &at) in all.iter().enumerate() {
            index.insert(at, i);
        }
        for &at in &all {
            let mut found: Vec<usize> = index.rivals(at).copied().collect();
            found.sort_unstable();
            let expected: Vec<usize> = (0..all.len()).filter(|&j| clash(at, all[j])).collect();
            assert_eq!(found, expected, "rivals of {at:?}");
        }
    }

    #[test]
    fn the_rule_is_symmetric() {
        let all = every_kind_of_listen();
        for &a in &all {
            for &b in &all {
                assert_eq!(clash(a, b), clash(b, a), "{a:?} / {b:?}");
            }
        }
    }

    #[test]
    fn a_removed_listen_is_no_rival_and_leaves_nothing_behind() {
        let at = Listen { protocol: Protocol::Tcp, addr: "127.0.0.1:80".parse().expect("addr"), family: Family::Any };
        let any = Listen { addr: "0.0.0.0:80".parse().expect("addr"), ..at };
        let mut index = ClashIndex::default();
        index.insert(at, "a");
        index.insert(at, "b");
        index.remove(at, &"a");
        assert_eq!(index.rivals(any).collect::<Vec<_>>(), [&"b"]);
        index.remove(at, &"b");
        assert_eq!(index.rivals(any).count(), 0);
        assert!(index.ports.is_empty(), "no empty port kept");
    }

    #[test]
    fn clashes_pair_each_route_with_every_earlier_rival_in_order() {
        let routes = [
            route("a", ("tcp", "127.0.0.1:80")),
            route("b", ("tcp", "127.0.0.2:80")),
            route("c", ("udp", "0.0.0.0:80")),
            route("d", ("tcp", "0.0.0.0:80")),
            route("e", ("tcp6", "[::]:80")),
            route("f", ("tcp", "[::]:80")),
            route("g", ("tcp", "0.0.0.0:0")),
            route("h", ("tcp", "0.0.0.0:0")),
        ];
        let pairs: Vec<(usize, usize)> = clashes(&routes).iter().map(|c| (c.route, c.with)).collect();
        assert_eq!(pairs, [(3, 0), (3, 1), (5, 0), (5, 1), (5, 3), (5, 4)]);
    }

    #[test]
    fn replicas_of_one_route_do_not_clash_with_each_other_but_each_clashes_with_a_rival() {
        let replica = |source: &str| route("web", ("tcp", "0.0.0.0:80")).with_source(source);
        let routes = [replica("web-1"), route("other", ("tcp", "127.0.0.1:80")), replica("web-2"), replica("web-3")];
        let pairs: Vec<(usize, usize)> = clashes(&routes).iter().map(|c| (c.route, c.with)).collect();
        assert_eq!(pairs, [(1, 0), (2, 1), (3, 1)]);
    }

    #[test]
    fn twenty_thousand_routes_are_checked_in_one_pass() {
        // 10,000 ports, each with 127.0.0.1 and 127.0.0.2 (no clash), UDP twins (no clash),
        // and every hundredth port also on 0.0.0.0 (a clash with both).
        let mut routes = Vec::with_capacity(20_100);
        for port in 10_000..20_000u16 {
            for ip in ["127.0.0.1", "127.0.0.2"] {
                let listen = SocketAddr::new(ip.parse().expect("ip"), port);
                routes.push(RouteSpec::new(format!("r{port}-{ip}"), Protocol::Tcp, listen, vec![Target::new("t", 1)]));
            }
        }
        let tcp = routes.len();
        for port in (10_000..20_000u16).step_by(100) {
            let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            routes.push(RouteSpec::new(format!("any{port}"), Protocol::Tcp, listen, vec![Target::new("t", 1)]));
            routes.push(RouteSpec::new(format!("udp{port}"), Protocol::Udp, listen, vec![Target::new("t", 1)]));
        }
        let found = clashes(&routes);
        assert_eq!(found.len(), 200, "two per wildcard");
        for (k, pair) in found.chunks(2).enumerate() {
            let first = 2 * 100 * k;
            assert_eq!(
                pair,
                [Clash { route: tcp + 2 * k, with: first }, Clash { route: tcp + 2 * k, with: first + 1 }]
            );
        }
    }
}
