//! The process-wide descriptor budget that UDP sessions draw from.
//!
//! Each UDP session holds a socket, and a session opens on a client's first datagram, whose
//! source address can be spoofed. Capped per route only (`max_udp_sessions`, 16,384 by
//! default), one sender spraying two routes could take every descriptor the process may
//! open: the admin API, the routes files and TCP accepts would then fail with EMFILE until
//! the sessions went idle. So all routes share one budget.
//!
//! **Its size** is the soft `RLIMIT_NOFILE` read at first use (the binary raises the limit
//! before any route starts), minus a **reserve** UDP sessions never take: a tenth of the
//! limit, and at least 256 (half the limit when that is below 512). A limit of 1,024 leaves
//! 768 sessions, 20,000 leaves 18,000, 1,048,576 leaves 943,719. The reserve is what the
//! listening sockets, each route's epoll descriptor, the admin API and its clients, the
//! routes files, the logs and TCP connections keep when UDP has taken all it may. TCP
//! connections are bounded by each route's `max_connections`, not by this budget
//! ([`FdPermit`] is public should they draw from it too).
//!
//! **Use.** A session takes an [`FdPermit`] before its socket is made and gives it back when
//! it leaves the route's table, as its socket closes. A route's effective session cap is
//! `min(max_udp_sessions, budget)`, so one route alone at the budget evicts its own least
//! recently used session rather than refuse. When the budget is spent by other routes, the
//! datagram that would have opened a session is dropped, counted (`rejected` and `dropped`)
//! and logged at most once a second for the whole process ([`FdBudget::refused`]).
//!
//! **Oversubscription.** Each running UDP route registers its `max_udp_sessions`
//! ([`FdBudget::register_cap`]); when the caps come to more than the budget, a warning says
//! so as the route that tips it over starts (and again whenever it tips over anew).
//! [`FdBudget::oversubscribed`] answers the same question for the binary.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::warn;

/// Descriptors kept from UDP sessions whatever the limit (unless the limit is below twice
/// this; then half of it).
pub const MIN_RESERVE: u64 = 256;
/// The share of the limit kept from UDP sessions when that is more than [`MIN_RESERVE`]:
/// one in this many.
pub const RESERVE_DIVISOR: u64 = 10;

/// The budget of one process; see the module doc.
#[derive(Debug)]
pub struct FdBudget {
    /// The soft limit it was derived from.
    limit: u64,
    /// How many permits there are.
    capacity: usize,
    /// How many are out.
    used: AtomicUsize,
    /// The sum of the registered session caps.
    caps: AtomicU64,
    /// Refusals, reported at most once a second.
    refusals: Throttle,
}

/// The process's budget, made from the soft `RLIMIT_NOFILE` on first use (1,024 if it cannot
/// be read).
static GLOBAL: OnceLock<FdBudget> = OnceLock::new();

impl FdBudget {
    /// The process's budget; the first call reads the soft `RLIMIT_NOFILE`.
    pub fn global() -> &'static FdBudget {
        GLOBAL.get_or_init(|| FdBudget::for_limit(crate::limits::nofile_soft_limit().unwrap_or(1024)))
    }

    /// A budget for a process that may open `limit` descriptors.
    pub fn for_limit(limit: u64) -> Self {
        let capacity = limit.saturating_sub(Self::reserve_for(limit));
        FdBudget {
            limit,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
            caps: AtomicU64::new(0),
            refusals: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// The descriptors kept from UDP sessions under `limit`: a tenth, at least 256, at most
    /// half.
    ///
    /// ```
    /// use proxy_core::fd_budget::FdBudget;
    /// assert_eq!(FdBudget::reserve_for(1024), 256);
    /// assert_eq!(FdBudget::reserve_for(20_000), 2_000);
    /// assert_eq!(FdBudget::reserve_for(300), 150);
    /// ```
    pub fn reserve_for(limit: u64) -> u64 {
        (limit / RESERVE_DIVISOR).max(MIN_RESERVE.min(limit / 2))
    }

    /// The soft limit the budget was derived from.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// How many descriptors UDP sessions may hold at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many they hold now.
    pub fn in_use(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Takes one descriptor from the budget; false when it is spent. Each `true` must be
    /// matched by one [`FdBudget::give_back`]; [`FdPermit`] does it for the process's budget.
    pub fn try_take(&self) -> bool {
        self.used.fetch_update(Relaxed, Relaxed, |used| (used < self.capacity).then_some(used + 1)).is_ok()
    }

    /// Returns a descriptor taken by [`FdBudget::try_take`].
    pub fn give_back(&self) {
        // Never below zero, even if given back more often than taken.
        let _ = self.used.fetch_update(Relaxed, Relaxed, |used| used.checked_sub(1));
    }

    /// Counts one refusal for want of a permit; `Some(refusals since the last report)` when
    /// a report is due (at most once a second), `None` to stay quiet.
    pub fn refused(&self) -> Option<u64> {
        self.refusals.hit()
    }

    /// Registers a running route's session cap until the returned registration is dropped,
    /// and warns if the caps now come to more than the budget and did not before.
    pub fn register_cap(&'static self, cap: u32) -> CapRegistration {
        let mut registration = CapRegistration { budget: self, cap: 0 };
        registration.set(cap);
        registration
    }

    /// The sum of the registered caps and the budget, when the sum is larger.
    pub fn oversubscribed(&self) -> Option<Oversubscribed> {
        let caps = self.caps.load(Relaxed);
        (caps > self.capacity as u64).then_some(Oversubscribed { caps, capacity: self.capacity, limit: self.limit })
    }
}

/// More session caps than descriptors: see [`FdBudget::oversubscribed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversubscribed {
    /// The sum of the running UDP routes' `max_udp_sessions`.
    pub caps: u64,
    /// The budget they share.
    pub capacity: usize,
    /// The soft `RLIMIT_NOFILE` the budget comes from.
    pub limit: u64,
}

/// One descriptor of the process's budget ([`FdBudget::global`]), given back on drop.
///
/// Zero-sized: a UDP session holds one for its life at no cost in memory.
#[derive(Debug)]
pub struct FdPermit {
    /// Made only by [`FdPermit::try_new`].
    _private: (),
}

impl FdPermit {
    /// A descriptor from the process's budget, or `None` when it is spent.
    pub fn try_new() -> Option<FdPermit> {
        // Not `then_some`: that would make (and drop, giving back) a permit when none is left.
        if FdBudget::global().try_take() { Some(FdPermit { _private: () }) } else { None }
    }
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        FdBudget::global().give_back();
    }
}

/// A route's session cap counted in the budget's sum until dropped.
#[derive(Debug)]
pub struct CapRegistration {
    /// Where it is counted.
    budget: &'static FdBudget,
    /// What is counted.
    cap: u32,
}

impl CapRegistration {
    /// The cap counted now.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Counts `cap` instead (after an update in place); warns if the caps now come to more
    /// than the budget and did not before.
    pub fn set(&mut self, cap: u32) {
        if cap == self.cap {
            return;
        }
        let (old, new) = (u64::from(self.cap), u64::from(cap));
        let budget = self.budget;
        // One step, so that no other route sees a sum with both caps in it.
        let before = if new > old {
            budget.caps.fetch_add(new - old, Relaxed)
        } else {
            budget.caps.fetch_sub(old - new, Relaxed)
        };
        self.cap = cap;
        let after = before + new - old;
        let capacity = budget.capacity as u64;
        if after > capacity && before <= capacity {
            warn!(
                udp_session_caps = after,
                budget = budget.capacity,
                nofile_limit = budget.limit,
                "the UDP routes' max_udp_sessions add up to more than the descriptors they may hold: once the \
                 budget is spent, new sessions are refused; raise the open-file limit or lower max_udp_sessions"
            );
        }
    }
}

impl Drop for CapRegistration {
    fn drop(&mut self) {
        self.budget.caps.fetch_sub(u64::from(self.cap), Relaxed);
    }
}

/// Lets an event through at most once per period and counts the ones held back; shared
/// between threads.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// The time origin of `next`.
    epoch: Instant,
    /// The period.
    period: Duration,
    /// Milliseconds since `epoch` before which events stay quiet.
    next: AtomicU64,
    /// Events since the last one let through, this one included.
    pending: AtomicU64,
}

impl Throttle {
    /// A throttle letting the first event through at once.
    pub(crate) fn new(period: Duration) -> Self {
        Throttle { epoch: Instant::now(), period, next: AtomicU64::new(0), pending: AtomicU64::new(0) }
    }

    /// Counts an event; `Some(events since the last report, this one included)` when it
    /// should be reported.
    pub(crate) fn hit(&self) -> Option<u64> {
        self.pending.fetch_add(1, Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next.load(Relaxed);
        if now < next {
            return None;
        }
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        self.next.compare_exchange(next, now.saturating_add(period), Relaxed, Relaxed).ok()?;
        Some(self.pending.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget that lives as long as the permits it hands out.
    fn budget(limit: u64) -> &'static FdBudget {
        Box::leak(Box::new(FdBudget::for_limit(limit)))
    }

    #[test]
    fn the_reserve_is_a_tenth_at_least_256_at_most_half() {
        let capacity = |limit| FdBudget::for_limit(limit).capacity();
        assert_eq!(capacity(1024), 768);
        assert_eq!(capacity(2560), 2304);
        assert_eq!(capacity(20_000), 18_000);
        assert_eq!(capacity(1_048_576), 943_719);
        assert_eq!(capacity(400), 200);
        assert_eq!(capacity(0), 0);
        assert_eq!(capacity(u64::MAX), usize::try_from(u64::MAX - u64::MAX / 10).unwrap_or(usize::MAX));
    }

    #[test]
    fn descriptors_run_out_at_the_capacity_and_come_back_when_given_back() {
        let budget = FdBudget::for_limit(300);
        assert_eq!(budget.capacity(), 150);
        assert_eq!((0..200).filter(|_| budget.try_take()).count(), 150);
        assert_eq!(budget.in_use(), 150);
        assert!(!budget.try_take(), "spent");
        budget.give_back();
        assert_eq!(budget.in_use(), 149);
        assert!(budget.try_take(), "a descriptor given back can be taken again");
        (0..200).for_each(|_| budget.give_back());
        assert_eq!(budget.in_use(), 0, "never below zero");
    }

    #[test]
    fn racing_threads_never_take_more_than_the_capacity() {
        let budget = FdBudget::for_limit(2_000);
        let taken: usize = std::thread::scope(|scope| {
            let takers: Vec<_> =
                (0..4).map(|_| scope.spawn(|| (0..1_000).filter(|_| budget.try_take()).count())).collect();
            takers.into_iter().map(|t| t.join().expect("no panic")).sum()
        });
        assert_eq!(taken, budget.capacity());
        assert_eq!(budget.in_use(), budget.capacity());
    }

    #[test]
    fn a_permit_takes_no_memory() {
        assert_eq!(std::mem::size_of::<FdPermit>(), 0);
    }

    #[test]
    fn caps_are_summed_while_registered_and_oversubscription_is_reported() {
        let budget = budget(1024);
        let a = budget.register_cap(500);
        let mut b = budget.register_cap(200);
        assert_eq!(budget.oversubscribed(), None, "700 of 768");
        b.set(300);
        assert_eq!(b.cap(), 300);
        assert_eq!(budget.oversubscribed(), Some(Oversubscribed { caps: 800, capacity: 768, limit: 1024 }));
        drop(a);
        assert_eq!(budget.oversubscribed(), None);
        drop(b);
        assert_eq!(budget.caps.load(Relaxed), 0);
    }

    #[test]
    fn the_throttle_reports_the_first_event_then_counts_the_rest_for_a_period() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.hit(), Some(1));
        assert_eq!((throttle.hit(), throttle.hit()), (None, None));
        // A period of zero lets everything through, with what was held back.
        let open = Throttle::new(Duration::ZERO);
        assert_eq!((open.hit(), open.hit()), (Some(1), Some(1)));
        let deadline = Instant::now() + Duration::from_secs(5);
        let quick = Throttle::new(Duration::from_millis(20));
        assert_eq!(quick.hit(), Some(1));
        quick.hit();
        let reported = loop {
            if let Some(n) = quick.hit() {
                break n;
            }
            assert!(Instant::now() < deadline, "the throttle never reopened");
            std::thread::yield_now();
        };
        assert!(reported >= 3, "the held-back events are counted in the next report: {reported}");
    }
}
