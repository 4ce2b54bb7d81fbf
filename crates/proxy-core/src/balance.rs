//! Load balancing: which of a route's targets a new TCP connection or UDP session goes to,
//! and what the route knows about each target's health.
//!
//! # Strategies
//!
//! - [`Balance::RoundRobin`] (default): each new connection or session takes the next
//!   healthy target in turn.
//! - [`Balance::LeastConn`]: the healthy target with the fewest open connections or
//!   sessions; ties go round robin.
//! - [`Balance::IpHash`]: rendezvous hashing of the client IP over the targets, so a client
//!   stays on one target while that target is healthy, and a replica coming or going only
//!   moves the clients it gains or loses (not everyone, as `hash % n` would). A UDP session
//!   has one upstream for its life whatever the strategy.
//!
//! # Passive health
//!
//! A TCP dial that fails (refused, timed out, unresolved) marks its target *down* for a
//! backoff period: 1 s, doubling with each failure in a row up to 30 s. A down target is
//! skipped, so a dead replica costs at most the client that found it one failed attempt
//! (that client moves on to the next target). Once the backoff has passed, exactly one
//! connection *probes* the target: success brings it back, failure doubles the backoff.
//! When every target is down, they are all still tried (least recently failed first)
//! rather than refusing the client: the backoff is a guess, the client's attempt is fact.
//!
//! UDP has no handshake, so UDP targets are marked down only by an ICMP port-unreachable
//! report on a session's socket, and come back with their next reply; after the backoff a
//! down UDP target is simply eligible again.
//!
//! An optional active check ([`HealthCheck::Tcp`]) connects to every target of a TCP route
//! at an interval and marks it up or down the same way; see `forward::health`.
//!
//! # Sharing across updates
//!
//! A route's [`TargetSet`] lives in its `Live` settings. When the route is updated in place
//! (a replica comes or goes), the new set reuses the per-target state ([`Member`]) of every
//! target that stays, so health, open-connection counts and the round-robin cursor carry
//! over; new targets start healthy. Open connections hold a [`Lease`] on their member,
//! which keeps `active` exact even for a target that has left the set.
//!
//! The data path takes no lock: selection reads atomics and advances one `AtomicUsize`.

use std::cmp::Reverse;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use route_spec::Balance;

use crate::stats::TargetStatus;
use route_spec::{Protocol, Target};

/// First backoff of a target marked down; doubled with each failure in a row.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest backoff of a target marked down.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a target marked down is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// After the first failure.
    pub base: Duration,
    /// The most it grows to.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: BACKOFF_MIN, max: BACKOFF_MAX }
    }
}

impl Backoff {
    /// The backoff after `failures` failures in a row (at least 1).
    fn after(&self, failures: u64) -> Duration {
        let doublings = u32::try_from(failures.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// One target of a route and what the route knows about it; shared by the route's
/// successive target sets while the target stays, and by the connections leased on it.
#[derive(Debug)]
pub(crate) struct Member {
    /// The target.
    target: Target,
    /// Origin of the stamps below (Tokio's clock, so tests can move it).
    epoch: Instant,
    /// Connections or sessions open on it now.
    active: AtomicU64,
    /// Connections or sessions opened on it since it joined the route.
    total: AtomicU64,
    /// Failures in a row; 0 while it answers.
    failures: AtomicU64,
    /// 0 while up; else the stamp until which it is skipped.
    down_until: AtomicU64,
    /// Stamp of its last failure, 0 if none: the all-down fallback tries the oldest first.
    failed_at: AtomicU64,
    /// Set while one connection probes it after its backoff.
    probing: AtomicBool,
    /// The latest failure, in words.
    last_error: Mutex<Option<String>>,
}

/// Where a member stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not marked down.
    Up,
    /// Marked down, backoff over: due for a probe.
    Due,
    /// Marked down and still backing off.
    Down,
}

impl Member {
    /// A new, healthy member.
    fn new(target: Target) -> Self {
        Member {
            target,
            epoch: Instant::now(),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The target.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// `at` as a stamp: nanoseconds since the epoch, plus one so that no stamp is 0.
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    /// Its health at `now`.
    pub(crate) fn health(&self, now: Instant) -> Health {
        match self.down_until.load(Relaxed) {
            0 => Health::Up,
            until if until <= self.stamp(now) => Health::Due,
            _ => Health::Down,
        }
    }

    /// Claims the one probe of a target due for one; `None` if another connection has it.
    pub(crate) fn claim_probe(&self) -> Option<ProbeClaim<'_>> {
        self.probing.compare_exchange(false, true, Relaxed, Relaxed).ok().map(|_| ProbeClaim(self))
    }

    /// Connections or sessions open on it now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Its status for the admin API.
    fn status(&self) -> TargetStatus {
        TargetStatus {
            target: self.target.clone(),
            healthy: self.down_until.load(Relaxed) == 0,
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            failures: self.failures.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// The right to probe a target after its backoff; released when dropped, whatever the outcome.
pub(crate) struct ProbeClaim<'a>(&'a Member);

impl Drop for ProbeClaim<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Relaxed);
    }
}

/// One open connection or session on a member: counted in its `active` while held.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Member>);

impl Lease {
    /// Counts a new connection or session on `member`.
    pub(crate) fn new(member: Arc<Member>) -> Self {
        member.active.fetch_add(1, Relaxed);
        member.total.fetch_add(1, Relaxed);
        Lease(member)
    }

    /// The member leased.
    pub(crate) fn member(&self) -> &Arc<Member> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// How one target of a [`Plan`] is to be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Try {
    /// Healthy (or, for UDP, back from its backoff): try it.
    Healthy,
    /// Due for a probe: try it if no other connection is probing it.
    Probe,
    /// Down: tried only after everything else failed, least recently failed first.
    Fallback,
}

/// The order in which one client tries a route's targets: indices into the set's members.
pub(crate) type Plan = Vec<(usize, Try)>;

/// A route's targets with their shared state, and how to choose among them.
#[derive(Debug)]
pub(crate) struct TargetSet {
    /// The route's alias, for logs.
    alias: Arc<str>,
    /// The route's protocol, for logs.
    protocol: Protocol,
    /// The strategy.
    strategy: Balance,
    /// The targets, deduplicated, in the order given.
    members: Box<[Arc<Member>]>,
    /// Round-robin position; shared with the route's next sets.
    cursor: Arc<AtomicUsize>,
    /// How long a failed target is skipped.
    backoff: Backoff,
}

impl TargetSet {
    /// The set of `targets`, reusing the members (and cursor) of `previous` for targets it had.
    pub(crate) fn new(
        alias: &str,
        protocol: Protocol,
        targets: &[Target],
        strategy: Balance,
        previous: Option<&TargetSet>,
        backoff: Backoff,
    ) -> Self {
        let mut members: Vec<Arc<Member>> = Vec::with_capacity(targets.len());
        for target in targets {
            if members.iter().any(|m| m.target == *target) {
                continue;
            }
            let kept = previous.and_then(|p| p.members.iter().find(|m| m.target == *target));
            members.push(kept.cloned().unwrap_or_else(|| Arc::new(Member::new(target.clone()))));
        }
        TargetSet {
            alias: Arc::from(alias),
            protocol,
            strategy,
            members: members.into_boxed_slice(),
            cursor: previous.map(|p| p.cursor.clone()).unwrap_or_default(),
            backoff,
        }
    }

    /// The members, in the order given.
    pub(crate) fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Targets as written, for the `dst` log field: `db:5432,10.0.0.2:5432`.
    pub(crate) fn display(&self) -> String {
        self.members.iter().map(|m| m.target.to_string()).collect::<Vec<_>>().join(",")
    }

    /// The order in which a new client from `client` tries the targets, as of `now`.
    ///
    /// With `probes` (TCP), a target whose backoff has passed is a [`Try::Probe`]; without
    /// (UDP, which cannot tell a live target from a dial), it is simply healthy again.
    pub(crate) fn plan(&self, client: IpAddr, now: Instant, probes: bool) -> Plan {
        let mut eligible: Vec<(usize, Try)> = Vec::with_capacity(self.members.len());
        let mut down: Vec<(u64, usize)> = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            match m.health(now) {
                Health::Up => eligible.push((i, Try::Healthy)),
                Health::Due if probes => eligible.push((i, Try::Probe)),
                Health::Due => eligible.push((i, Try::Healthy)),
                Health::Down => down.push((m.failed_at.load(Relaxed), i)),
            }
        }
        if !eligible.is_empty() {
            match self.strategy {
                Balance::RoundRobin => {
                    let start = self.cursor.fetch_add(1, Relaxed) % eligible.len();
                    eligible.rotate_left(start);
                }
                Balance::LeastConn => {
                    // Rotated first so that ties go round robin; the sort is stable.
                    let start = self.cursor.fetch_add(1, Relaxed) % eligible.len();
                    eligible.rotate_left(start);
                    eligible.sort_by_key(|(i, _)| self.members[*i].active.load(Relaxed));
                }
                Balance::IpHash => {
                    eligible.sort_by_cached_key(|(i, _)| Reverse(rendezvous(client, &self.members[*i].target)));
                }
            }
        }
        down.sort_unstable();
        eligible.extend(down.into_iter().map(|(_, i)| (i, Try::Fallback)));
        eligible
    }

    /// Records that `member` answered: a down target is up again.
    pub(crate) fn succeeded(&self, member: &Member) {
        if member.failures.load(Relaxed) != 0 {
            member.failures.store(0, Relaxed);
        }
        if member.down_until.load(Relaxed) != 0 && member.down_until.swap(0, Relaxed) != 0 {
            info!(protocol = %self.protocol, alias = %self.alias, dst = %member.target, action = "target_up", "target answers again");
        }
    }

    /// Records that `member` failed with `error`; `decisive` for a probe or an active check,
    /// whose failure always counts. A failure of a target already backing off (clients that
    /// dialled it before it was marked) does not lengthen its backoff.
    pub(crate) fn failed(&self, member: &Member, error: &str, decisive: bool) {
        if let Ok(mut last) = member.last_error.lock() {
            *last = Some(error.to_string());
        }
        let now = Instant::now();
        let health = member.health(now);
        if health == Health::Down && !decisive {
            return;
        }
        let failures = member.failures.fetch_add(1, Relaxed).saturating_add(1);
        let backoff = self.backoff.after(failures);
        member.failed_at.store(member.stamp(now), Relaxed);
        member.down_until.store(member.stamp(now + backoff), Relaxed);
        if health == Health::Up {
            warn!(protocol = %self.protocol, alias = %self.alias, dst = %member.target, action = "target_down", error, retry_in = ?backoff, "target down; skipped until it answers again");
        } else {
            debug!(protocol = %self.protocol, alias = %self.alias, dst = %member.target, action = "target_down", error, failures, retry_in = ?backoff, "target still down");
        }
    }

    /// The status of every target, in the order given.
    pub(crate) fn status(&self) -> Vec<TargetStatus> {
        self.members.iter().map(|m| m.status()).collect()
    }
}

/// The rendezvous (highest random weight) score of `target` for `client`.
fn rendezvous(client: IpAddr, target: &Target) -> u64 {
    // IPv4-mapped clients of a dual-stack listener hash as the IPv4 address they are.
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    let mut h = DefaultHasher::new();
    client.hash(&mut h);
    target.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use route_spec::HealthCheck;

    use std::collections::HashMap;

    use super::*;

    fn targets(n: u16) -> Vec<Target> {
        (1..=n).map(|i| Target::new(format!("10.0.0.{i}"), 80)).collect()
    }

    fn set(strategy: Balance, n: u16) -> TargetSet {
        TargetSet::new("app", Protocol::Tcp, &targets(n), strategy, None, Backoff::default())
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    /// The first target the plan would try.
    fn first(set: &TargetSet, client: IpAddr) -> usize {
        set.plan(client, Instant::now(), true)[0].0
    }

    #[test]
    fn names_parse_and_print() {
        for name in Balance::NAMES {
            assert_eq!(name.parse::<Balance>().unwrap().as_str(), name);
        }
        assert_eq!("Least-Conn".parse::<Balance>(), Ok(Balance::LeastConn));
        assert!("random".parse::<Balance>().unwrap_err().contains("round_robin, least_conn, ip_hash"));
        assert_eq!("tcp".parse::<HealthCheck>(), Ok(HealthCheck::Tcp));
        assert_eq!("off".parse::<HealthCheck>(), Ok(HealthCheck::Off));
        assert!("http".parse::<HealthCheck>().is_err());
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=7).map(|f| b.after(f).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after(u64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn round_robin_takes_each_target_in_turn() {
        let s = set(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6).map(|_| first(&s, client(1))).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_conn_prefers_fewer_open_connections_and_rotates_ties() {
        let s = set(Balance::LeastConn, 3);
        let busy =
            [Lease::new(s.members[0].clone()), Lease::new(s.members[0].clone()), Lease::new(s.members[2].clone())];
        assert_eq!(first(&s, client(1)), 1);
        let also_1 = Lease::new(s.members[1].clone());
        // Now 1 and 2 tie at one open connection each; 0 has two.
        let picks: Vec<usize> = (0..4).map(|_| first(&s, client(1))).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 2), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "ties are spread: {picks:?}");
        drop((busy, also_1));
        assert_eq!(s.members.iter().map(|m| m.active()).sum::<u64>(), 0, "leases give their count back");
    }

    #[test]
    fn ip_hash_keeps_a_client_on_one_target_and_moves_only_the_clients_of_a_removed_one() {
        let s = set(Balance::IpHash, 4);
        let before: HashMap<u8, usize> = (0..200).map(|c| (c, first(&s, client(c)))).collect();
        for c in 0..200 {
            assert_eq!(first(&s, client(c)), before[&c], "the same client, the same target");
        }
        let used: std::collections::HashSet<usize> = before.values().copied().collect();
        assert_eq!(used.len(), 4, "200 clients reach every target");

        // Target 3 (10.0.0.4) leaves: only its clients move.
        let smaller = TargetSet::new("app", Protocol::Tcp, &targets(3), Balance::IpHash, Some(&s), s.backoff);
        for c in 0..200 {
            let now = first(&smaller, client(c));
            if before[&c] != 3 {
                assert_eq!(now, before[&c], "client {c} moved although its target stayed");
            }
        }
    }

    #[test]
    fn ip_hash_treats_an_ipv4_mapped_client_as_ipv4() {
        let s = set(Balance::IpHash, 8);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(first(&s, v4), first(&s, mapped));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_target_is_skipped_then_probed_once_its_backoff_passed() {
        let s = set(Balance::RoundRobin, 2);
        let dead = &s.members[0];
        s.failed(dead, "refused", false);
        assert_eq!(dead.health(Instant::now()), Health::Down);
        for _ in 0..4 {
            let plan = s.plan(client(1), Instant::now(), true);
            assert_eq!(plan, vec![(1, Try::Healthy), (0, Try::Fallback)], "the down target comes last");
        }
        // A second failure while it backs off (a client that dialled it before) does not
        // lengthen the backoff.
        s.failed(dead, "refused", false);
        assert_eq!(dead.failures.load(Relaxed), 1);

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(dead.health(Instant::now()), Health::Due);
        let plan = s.plan(client(1), Instant::now(), true);
        assert!(plan.contains(&(0, Try::Probe)), "{plan:?}");
        let claim = dead.claim_probe().expect("the first claim wins");
        assert!(dead.claim_probe().is_none(), "one probe at a time");
        s.failed(dead, "still refused", true);
        drop(claim);
        assert_eq!(dead.health(Instant::now()), Health::Down, "a failed probe doubles the backoff");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(dead.health(Instant::now()), Health::Down, "2 s this time");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(dead.claim_probe().is_some(), "the claim was released");
        s.succeeded(dead);
        assert_eq!(dead.health(Instant::now()), Health::Up);
        assert_eq!(dead.status().failures, 0);
        assert_eq!(dead.status().last_error.as_deref(), Some("still refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_target_is_down_the_least_recently_failed_is_tried_first() {
        let backoff = Backoff { base: Duration::from_secs(5), max: BACKOFF_MAX };
        let s = TargetSet::new("app", Protocol::Tcp, &targets(3), Balance::RoundRobin, None, backoff);
        s.failed(&s.members[2], "refused", false);
        tokio::time::advance(Duration::from_millis(10)).await;
        s.failed(&s.members[0], "refused", false);
        tokio::time::advance(Duration::from_millis(10)).await;
        s.failed(&s.members[1], "refused", false);
        let plan = s.plan(client(1), Instant::now(), true);
        assert_eq!(plan, vec![(2, Try::Fallback), (0, Try::Fallback), (1, Try::Fallback)]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_probes_a_target_past_its_backoff_is_simply_eligible() {
        let s = set(Balance::RoundRobin, 1);
        s.failed(&s.members[0], "port unreachable", false);
        tokio::time::advance(BACKOFF_MIN).await;
        assert_eq!(s.plan(client(1), Instant::now(), false), vec![(0, Try::Healthy)]);
        assert!(!s.members[0].status().healthy, "still shown down until it answers");
    }

    #[test]
    fn an_update_keeps_the_state_of_targets_that_stay_and_starts_new_ones_healthy() {
        let old = set(Balance::RoundRobin, 2);
        old.failed(&old.members[1], "refused", false);
        let lease = Lease::new(old.members[0].clone());
        let new_targets = vec![targets(2)[1].clone(), Target::new("10.0.0.9", 80), targets(2)[1].clone()];
        let new = TargetSet::new("app", Protocol::Tcp, &new_targets, Balance::LeastConn, Some(&old), old.backoff);
        assert_eq!(new.members.len(), 2, "duplicates are dropped");
        assert!(Arc::ptr_eq(&new.members[0], &old.members[1]), "the staying target keeps its state");
        assert!(!new.status()[0].healthy);
        assert!(new.status()[1].healthy, "a new target starts healthy");
        assert!(Arc::ptr_eq(&new.cursor, &old.cursor));
        assert_eq!(lease.member().active(), 1, "a removed target's open connection still counts on it");
    }
}
