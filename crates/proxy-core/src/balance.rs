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
//! # Provider verdicts
//!
//! A target may carry its provider's [`Verdict`] (Docker's `HEALTHCHECK`: healthy,
//! starting, unhealthy). It is the primary signal and ranks targets in tiers:
//!
//! 1. targets without a verdict or called healthy, by the strategy;
//! 2. targets called *starting*, by the strategy: used only once no tier-1 target is left
//!    (all down, or none there);
//! 3. the fallback: targets marked down by dials or checks, and targets called
//!    *unhealthy* whatever dials and checks say; tried least recently failed first, and
//!    only after everything else.
//!
//! Passive and active health still apply within tiers 1 and 2. A verdict changes with the
//! route's spec, so a new one arrives as an update in place; routes without verdicts (the
//! usual case) skip the tiers.
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

use route_spec::{Balance, ProviderHealth, Verdict};

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

    /// Its status for the admin API, with its provider's `verdict`.
    fn status(&self, verdict: Option<&Verdict>) -> TargetStatus {
        let called_unhealthy = verdict.is_some_and(|v| v.health == ProviderHealth::Unhealthy);
        TargetStatus {
            target: self.target.clone(),
            healthy: self.down_until.load(Relaxed) == 0 && !called_unhealthy,
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            failures: self.failures.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            verdict: verdict.cloned(),
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
    /// The targets, deduplicated by address, in the order given; without their verdicts.
    members: Box<[Arc<Member>]>,
    /// Each member's provider verdict, in member order; `None` when no target has one, so
    /// that such routes pick as if verdicts did not exist.
    verdicts: Option<Box<[Option<Verdict>]>>,
    /// Round-robin position; shared with the route's next sets.
    cursor: Arc<AtomicUsize>,
    /// How long a failed target is skipped.
    backoff: Backoff,
}

impl TargetSet {
    /// The set of `targets`, reusing the members (and cursor) of `previous` for targets it had.
    ///
    /// Targets are told apart by address: a target whose verdict changed keeps its member
    /// (its connections, failures and backoff), and of two targets at one address the first
    /// one's verdict counts.
    pub(crate) fn new(
        alias: &str,
        protocol: Protocol,
        targets: &[Target],
        strategy: Balance,
        previous: Option<&TargetSet>,
        backoff: Backoff,
    ) -> Self {
        let mut members: Vec<Arc<Member>> = Vec::with_capacity(targets.len());
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(targets.len());
        for target in targets {
            if members.iter().any(|m| m.target.same_address(target)) {
                continue;
            }
            let kept = previous.and_then(|p| p.members.iter().find(|m| m.target.same_address(target)));
            let bare = || Arc::new(Member::new(Target { verdict: None, ..target.clone() }));
            members.push(kept.cloned().unwrap_or_else(bare));
            verdicts.push(target.verdict.clone());
        }
        let set = TargetSet {
            alias: Arc::from(alias),
            protocol,
            strategy,
            members: members.into_boxed_slice(),
            verdicts: verdicts.iter().any(Option::is_some).then(|| verdicts.into_boxed_slice()),
            cursor: previous.map(|p| p.cursor.clone()).unwrap_or_default(),
            backoff,
        };
        set.log_verdict_changes(previous);
        set
    }

    /// The verdict on member `i`, if its provider gave one.
    fn verdict(&self, i: usize) -> Option<&Verdict> {
        self.verdicts.as_deref()?.get(i)?.as_ref()
    }

    /// Logs each target whose provider's verdict took it out of rotation or gave it back,
    /// compared with `previous` (a target new to the set had no verdict).
    fn log_verdict_changes(&self, previous: Option<&TargetSet>) {
        if self.verdicts.is_none() && previous.is_none_or(|p| p.verdicts.is_none()) {
            return;
        }
        let unhealthy = |v: Option<&Verdict>| v.is_some_and(|v| v.health == ProviderHealth::Unhealthy);
        for (i, member) in self.members.iter().enumerate() {
            let now = self.verdict(i);
            let before = previous.and_then(|p| {
                let j = p.members.iter().position(|m| Arc::ptr_eq(m, member))?;
                p.verdict(j)
            });
            if now == before {
                continue;
            }
            let (alias, dst) = (&*self.alias, &member.target);
            let verdict = now.map(ToString::to_string).unwrap_or_else(|| "none".into());
            match (unhealthy(before), unhealthy(now)) {
                (false, true) => {
                    warn!(protocol = %self.protocol, alias, dst = %dst, action = "target_down", verdict, "target down: its provider calls it unhealthy")
                }
                (true, false) => {
                    info!(protocol = %self.protocol, alias, dst = %dst, action = "target_up", verdict, "target back: its provider no longer calls it unhealthy")
                }
                _ => {
                    debug!(protocol = %self.protocol, alias, dst = %dst, action = "verdict", verdict, "target's verdict changed")
                }
            }
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

    /// The order in which a new client from `client` tries the targets, as of `now`: the
    /// tiers of the module documentation, each in the strategy's order.
    ///
    /// With `probes` (TCP), a target whose backoff has passed is a [`Try::Probe`]; without
    /// (UDP, which cannot tell a live target from a dial), it is simply healthy again.
    pub(crate) fn plan(&self, client: IpAddr, now: Instant, probes: bool) -> Plan {
        match self.verdicts.as_deref() {
            None => self.plan_by_health(client, now, probes),
            Some(verdicts) => self.plan_in_tiers(verdicts, client, now, probes),
        }
    }

    /// [`TargetSet::plan`] of a set without verdicts: healthy targets, then the fallback.
    #[inline(always)]
    fn plan_by_health(&self, client: IpAddr, now: Instant, probes: bool) -> Plan {
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
        self.order(&mut eligible, client, &mut None);
        with_fallback(eligible, down)
    }

    /// [`TargetSet::plan`] of a set with `verdicts`: the three tiers.
    fn plan_in_tiers(&self, verdicts: &[Option<Verdict>], client: IpAddr, now: Instant, probes: bool) -> Plan {
        let mut eligible: Vec<(usize, Try)> = Vec::with_capacity(self.members.len());
        let mut starting: Vec<(usize, Try)> = Vec::new();
        let mut down: Vec<(u64, usize)> = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            let how = match m.health(now) {
                Health::Up => Try::Healthy,
                Health::Due if probes => Try::Probe,
                Health::Due => Try::Healthy,
                Health::Down => {
                    down.push((m.failed_at.load(Relaxed), i));
                    continue;
                }
            };
            match verdicts.get(i).and_then(Option::as_ref).map(|v| v.health) {
                None | Some(ProviderHealth::Healthy) => eligible.push((i, how)),
                Some(ProviderHealth::Starting) => starting.push((i, how)),
                Some(ProviderHealth::Unhealthy) => down.push((m.failed_at.load(Relaxed), i)),
            }
        }
        // One turn of the round robin for both tiers, so each tier goes round in step.
        let mut turn = None;
        self.order(&mut eligible, client, &mut turn);
        self.order(&mut starting, client, &mut turn);
        eligible.append(&mut starting);
        with_fallback(eligible, down)
    }

    /// Puts one tier in the strategy's order. The round robin's `turn` is taken from the
    /// cursor (advancing it) when first needed, and shared by the tiers of one plan.
    #[inline(always)]
    fn order(&self, tier: &mut [(usize, Try)], client: IpAddr, turn: &mut Option<usize>) {
        if tier.is_empty() {
            return;
        }
        let mut start = || *turn.get_or_insert_with(|| self.cursor.fetch_add(1, Relaxed)) % tier.len();
        match self.strategy {
            Balance::RoundRobin => {
                let start = start();
                tier.rotate_left(start);
            }
            Balance::LeastConn => {
                // Rotated first so that ties go round robin; the sort is stable.
                let start = start();
                tier.rotate_left(start);
                tier.sort_by_key(|(i, _)| self.members[*i].active.load(Relaxed));
            }
            Balance::IpHash => {
                tier.sort_by_cached_key(|(i, _)| Reverse(rendezvous(client, &self.members[*i].target)));
            }
        }
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
        self.members.iter().enumerate().map(|(i, m)| m.status(self.verdict(i))).collect()
    }
}

/// `eligible` followed by the fallback: the targets of `down`, least recently failed first.
#[inline(always)]
fn with_fallback(mut eligible: Plan, mut down: Vec<(u64, usize)>) -> Plan {
    down.sort_unstable();
    eligible.extend(down.into_iter().map(|(_, i)| (i, Try::Fallback)));
    eligible
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
        assert_eq!(dead.status(None).failures, 0);
        assert_eq!(dead.status(None).last_error.as_deref(), Some("still refused"));
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
        assert!(!s.members[0].status(None).healthy, "still shown down until it answers");
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

    /// `targets(n)` with the given verdicts, by index.
    fn judged(n: u16, verdicts: &[(usize, ProviderHealth)]) -> Vec<Target> {
        let mut t = targets(n);
        for (i, health) in verdicts {
            t[*i].verdict = Some(Verdict::new("docker", *health));
        }
        t
    }

    fn judged_set(strategy: Balance, n: u16, verdicts: &[(usize, ProviderHealth)]) -> TargetSet {
        TargetSet::new("app", Protocol::Tcp, &judged(n, verdicts), strategy, None, Backoff::default())
    }

    #[test]
    fn without_verdicts_the_set_keeps_none() {
        assert!(set(Balance::RoundRobin, 3).verdicts.is_none());
        assert!(judged_set(Balance::RoundRobin, 3, &[(1, ProviderHealth::Healthy)]).verdicts.is_some());
    }

    #[test]
    fn a_target_called_unhealthy_is_down_whatever_its_dials_say() {
        for strategy in [Balance::RoundRobin, Balance::LeastConn, Balance::IpHash] {
            let s = judged_set(strategy, 3, &[(1, ProviderHealth::Unhealthy), (2, ProviderHealth::Healthy)]);
            for c in 0..20 {
                let plan = s.plan(client(c), Instant::now(), true);
                assert_eq!(plan.len(), 3);
                assert_eq!(plan[2], (1, Try::Fallback), "{strategy:?}: the unhealthy target comes last: {plan:?}");
                assert!(plan[..2].iter().all(|(i, how)| *i != 1 && *how == Try::Healthy), "{plan:?}");
            }
            // A dial to it that succeeds (a fallback) does not bring it back.
            s.succeeded(&s.members[1]);
            assert_eq!(s.plan(client(1), Instant::now(), true)[2], (1, Try::Fallback));
            let status = s.status();
            assert!(!status[1].healthy, "shown down");
            assert_eq!(status[1].verdict.as_ref().map(ToString::to_string).as_deref(), Some("docker: unhealthy"));
            assert!(status[2].healthy && status[0].healthy && status[0].verdict.is_none());
        }
    }

    #[test]
    fn a_starting_target_is_used_only_while_no_healthy_one_is_left() {
        let s = judged_set(Balance::RoundRobin, 3, &[(0, ProviderHealth::Starting), (1, ProviderHealth::Healthy)]);
        for _ in 0..6 {
            let plan = s.plan(client(1), Instant::now(), true);
            let order: Vec<usize> = plan.iter().map(|(i, _)| *i).collect();
            assert!(order == [1, 2, 0] || order == [2, 1, 0], "starting comes after the healthy ones: {plan:?}");
            assert_eq!(plan[2], (0, Try::Healthy), "tried before any fallback, as a healthy target");
        }
        // The healthy ones still take turns.
        let s4 = judged_set(Balance::RoundRobin, 3, &[(0, ProviderHealth::Starting)]);
        let picks: Vec<usize> = (0..6).map(|_| first(&s4, client(1))).collect();
        assert_eq!(picks, vec![1, 2, 1, 2, 1, 2]);
        // Both others fail: the starting one is first, the failed ones fall back.
        s.failed(&s.members[1], "refused", false);
        s.failed(&s.members[2], "refused", false);
        let plan = s.plan(client(1), Instant::now(), true);
        assert_eq!(plan[0], (0, Try::Healthy), "{plan:?}");
        assert!(plan[1..].iter().all(|(_, how)| *how == Try::Fallback), "{plan:?}");
    }

    #[test]
    fn when_every_target_is_starting_they_share_the_load() {
        let all = [(0, ProviderHealth::Starting), (1, ProviderHealth::Starting)];
        let s = judged_set(Balance::RoundRobin, 2, &all);
        let picks: Vec<usize> = (0..4).map(|_| first(&s, client(1))).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        let hashed = judged_set(Balance::IpHash, 2, &all);
        let used: std::collections::HashSet<usize> = (0..50).map(|c| first(&hashed, client(c))).collect();
        assert_eq!(used.len(), 2, "ip_hash spreads clients over starting targets too");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_target_is_down_or_unhealthy_all_are_still_tried() {
        let s = judged_set(Balance::RoundRobin, 3, &[(0, ProviderHealth::Unhealthy), (2, ProviderHealth::Unhealthy)]);
        tokio::time::advance(Duration::from_millis(10)).await;
        s.failed(&s.members[1], "refused", false);
        let plan = s.plan(client(1), Instant::now(), true);
        assert_eq!(plan.len(), 3, "nobody is refused: {plan:?}");
        assert!(plan.iter().all(|(_, how)| *how == Try::Fallback), "{plan:?}");
        assert_eq!(plan[2], (1, Try::Fallback), "the one whose dial failed comes last");
    }

    #[test]
    fn a_changed_verdict_keeps_the_targets_state() {
        let old = judged_set(Balance::RoundRobin, 2, &[(1, ProviderHealth::Healthy)]);
        old.failed(&old.members[0], "refused", false);
        let lease = Lease::new(old.members[1].clone());
        let now_sick = judged(2, &[(1, ProviderHealth::Unhealthy)]);
        let new = TargetSet::new("app", Protocol::Tcp, &now_sick, Balance::RoundRobin, Some(&old), old.backoff);
        assert!(Arc::ptr_eq(&new.members[0], &old.members[0]) && Arc::ptr_eq(&new.members[1], &old.members[1]));
        assert_eq!(new.members[1].active(), 1, "its open connection still counts");
        assert_eq!(new.members[1].target().verdict, None, "members hold the address only");
        assert!(!new.status()[1].healthy);
        // Healthy again: back in rotation, without a verdict left over.
        let well = TargetSet::new("app", Protocol::Tcp, &targets(2), Balance::RoundRobin, Some(&new), new.backoff);
        assert!(well.verdicts.is_none());
        assert!(well.status()[1].healthy);
        assert_eq!(well.plan(client(1), Instant::now(), true)[0], (1, Try::Healthy));
        drop(lease);
    }

    #[test]
    fn one_address_with_two_verdicts_is_one_target_with_the_first_verdict() {
        let mut t = judged(1, &[(0, ProviderHealth::Healthy)]);
        t.push(t[0].clone().with_verdict(Some(Verdict::new("docker", ProviderHealth::Unhealthy))));
        let s = TargetSet::new("app", Protocol::Tcp, &t, Balance::RoundRobin, None, Backoff::default());
        assert_eq!(s.members.len(), 1);
        assert!(s.status()[0].healthy);
    }
}
