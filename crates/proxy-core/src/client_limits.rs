//! Per-client limits: open TCP connections per client, and a rate of new connections or
//! UDP sessions per client (a token bucket).
//!
//! A client is its IP address; IPv6 clients are grouped by a prefix (default /64), since
//! one host usually holds a whole /64. IPv4-mapped IPv6 addresses count as IPv4.
//!
//! The per-route [`ClientTable`] holds state only for clients that need it: one with
//! connections open, or whose bucket is not full. Its size is capped ([`TABLE_CAP`]): when
//! full, entries holding nothing are pruned first, then (under a flood of distinct
//! sources) idle clients' buckets are forgotten, which only ever lets a forgotten client in
//! sooner. Pruning runs when the table is full and frees a quarter of it, so its cost per
//! new client is constant.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

pub use route_spec::Rate;

/// Clients a route tracks at most.
pub const TABLE_CAP: usize = 65_536;

/// A route's per-client limits; the default limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientLimits {
    /// TCP connections one client may have open at once; 0: no limit.
    pub max_connections_per_ip: u32,
    /// New TCP connections or UDP sessions per client; `None`: no limit.
    pub rate_limit: Option<Rate>,
    /// How many new ones a client may open at once before the rate applies; 0: the rate's
    /// count.
    pub rate_limit_burst: u32,
    /// IPv6 clients in one network of this prefix length count as one client (default 64).
    pub ipv6_prefix: u8,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits { max_connections_per_ip: 0, rate_limit: None, rate_limit_burst: 0, ipv6_prefix: 64 }
    }
}

impl ClientLimits {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.max_connections_per_ip > 0 || self.rate_limit.is_some()
    }

    /// The bucket's size.
    fn burst(&self) -> f64 {
        match (self.rate_limit, self.rate_limit_burst) {
            (Some(rate), 0) => f64::from(rate.count),
            (_, burst) => f64::from(burst.max(1)),
        }
    }

    /// The client `ip` counts as: itself, or its IPv6 network.
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u32::from(self.ipv6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
        }
    }
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has `max_connections_per_ip` connections open.
    Connections(u32),
    /// It opened connections or sessions faster than the rate.
    Rate(Rate),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Connections(max) => write!(f, "max_connections_per_ip {max} reached"),
            Refusal::Rate(rate) => write!(f, "rate_limit {rate} exceeded"),
        }
    }
}

/// What the table knows of one client.
#[derive(Debug)]
struct Slot {
    /// TCP connections open now.
    open: u32,
    /// Tokens left in the bucket at `stamp`.
    tokens: f64,
    /// When `tokens` was computed.
    stamp: Instant,
}

/// One route's per-client state; see the module doc.
#[derive(Debug)]
pub struct ClientTable {
    clients: Mutex<HashMap<IpAddr, Slot>>,
    cap: usize,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable::with_cap(TABLE_CAP)
    }
}

impl ClientTable {
    /// An empty table that tracks at most `cap` clients.
    pub fn with_cap(cap: usize) -> Self {
        ClientTable { clients: Mutex::new(HashMap::new()), cap: cap.max(4) }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Slot>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection (`connection`: counted as open until the guard drops) or UDP
    /// session from `ip` under `limits`, or says which limit it is over. `Ok(None)` when
    /// nothing needs tracking.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &ClientLimits,
        connection: bool,
    ) -> Result<Option<ClientGuard>, Refusal> {
        let count_open = connection && limits.max_connections_per_ip > 0;
        if !count_open && limits.rate_limit.is_none() {
            return Ok(None);
        }
        let key = limits.client_key(ip);
        let now = Instant::now();
        let burst = limits.burst();
        let mut clients = self.lock();
        if clients.len() >= self.cap && !clients.contains_key(&key) {
            prune(&mut clients, self.cap, limits, now);
            if clients.len() >= self.cap {
                // Every tracked client has connections open: admit untracked rather than grow.
                return Ok(None);
            }
        }
        let slot = clients.entry(key).or_insert(Slot { open: 0, tokens: burst, stamp: now });
        if count_open && slot.open >= limits.max_connections_per_ip {
            return Err(Refusal::Connections(limits.max_connections_per_ip));
        }
        if let Some(rate) = limits.rate_limit {
            let tokens = refilled(slot, rate, burst, now);
            slot.stamp = now;
            if tokens < 1.0 {
                slot.tokens = tokens;
                return Err(Refusal::Rate(rate));
            }
            slot.tokens = tokens - 1.0;
        }
        if !count_open {
            return Ok(None);
        }
        slot.open += 1;
        Ok(Some(ClientGuard { table: self.clone(), key, rate: limits.rate_limit.is_some() }))
    }
}

/// The tokens `slot` holds at `now`.
fn refilled(slot: &Slot, rate: Rate, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(slot.stamp).as_secs_f64();
    (slot.tokens + elapsed * f64::from(rate.count) / rate.per.as_secs_f64()).min(burst)
}

/// Frees a quarter of a full table: first the clients that hold nothing (no connection,
/// a full bucket), then idle clients' buckets.
fn prune(clients: &mut HashMap<IpAddr, Slot>, cap: usize, limits: &ClientLimits, now: Instant) {
    let target = cap - cap / 4;
    let burst = limits.burst();
    clients.retain(|_, slot| {
        slot.open > 0 || limits.rate_limit.is_some_and(|rate| refilled(slot, rate, burst, now) < burst)
    });
    let mut excess = clients.len().saturating_sub(target);
    if excess > 0 {
        clients.retain(|_, slot| {
            if excess > 0 && slot.open == 0 {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// One open TCP connection of a client, given back when dropped.
#[derive(Debug)]
pub struct ClientGuard {
    table: Arc<ClientTable>,
    key: IpAddr,
    /// Whether the client's bucket matters once it has no connection.
    rate: bool,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut clients = self.table.lock();
        if let Some(slot) = clients.get_mut(&self.key) {
            slot.open = slot.open.saturating_sub(1);
            if slot.open == 0 && !self.rate {
                clients.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: u32, rate: Option<&str>, burst: u32) -> ClientLimits {
        ClientLimits {
            max_connections_per_ip: max,
            rate_limit: rate.map(|r| r.parse().unwrap()),
            rate_limit_burst: burst,
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_mapped_ipv4_is_ipv4() {
        let l = limits(1, None, 0);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(l.client_key(a), l.client_key(b));
        assert_eq!(l.client_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let l128 = ClientLimits { ipv6_prefix: 128, ..l };
        assert_ne!(l128.client_key(a), l128.client_key(b));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(l.client_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn open_connections_are_capped_per_client_and_given_back() {
        let table = Arc::new(ClientTable::default());
        let l = limits(2, None, 0);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let first = table.admit(ip, &l, true).unwrap();
        let second = table.admit(ip, &l, true).unwrap();
        assert_eq!(table.admit(ip, &l, true).unwrap_err(), Refusal::Connections(2));
        assert!(table.admit("127.0.0.3".parse().unwrap(), &l, true).unwrap().is_some());
        drop(first);
        let third = table.admit(ip, &l, true).unwrap();
        drop((second, third));
        assert!(table.is_empty(), "a client without connections and without a rate holds nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_a_burst_then_refills() {
        let table = Arc::new(ClientTable::default());
        let l = limits(0, Some("2/s"), 3);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            table.admit(ip, &l, false).unwrap();
        }
        assert!(matches!(table.admit(ip, &l, false), Err(Refusal::Rate(_))));
        tokio::time::advance(Duration::from_millis(500)).await;
        table.admit(ip, &l, false).unwrap();
        assert!(table.admit(ip, &l, false).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_clients_keeps_the_table_under_its_cap() {
        let table = Arc::new(ClientTable::with_cap(1000));
        let l = limits(0, Some("1/m"), 1);
        let mut max = 0;
        for i in 0..100_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 | i));
            table.admit(ip, &l, false).unwrap();
            max = max.max(table.len());
        }
        assert!(max <= 1000, "{max}");
    }
}
