//! Recency of a route's sessions: a lazy min-heap that serves both idle expiry and eviction
//! at the session cap, and the route's clock.
//!
//! Each session keeps the stamp of its last datagram; the heap holds `(stamp, session)`
//! entries kept *lazily*: the hot path only writes the session's stamp, and each session has
//! one entry, pushed when it opens. The route has **one timer**, set to the oldest entry's
//! stamp plus the idle timeout ([`Lru::next_deadline`]). When it fires, due entries are
//! popped ([`Lru::pop_expired`]) and each session's real stamp re-read by the caller: one
//! used since is pushed back with its fresh stamp, one that was not has expired. So an
//! entry is re-pushed at most once per timeout per busy session, not per datagram, and a
//! quiet route costs nothing (a periodic sweep would wake every route forever). Eviction
//! pops the oldest entry the same way ([`Lru::pop_oldest`]), so it is O(log n) amortised
//! and no datagram scans the table.
//!
//! Sessions opened under different idle timeouts (after an update in place) sit in separate
//! heaps, one per timeout, so each heap's order is also its deadline order. Entries of
//! sessions that ended otherwise are skipped by the caller when popped; it rebuilds the
//! heaps from its table once stale entries outnumber live ones. Everything reads Tokio's
//! clock, so it works unchanged under its paused clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::slab::Key;

/// The route's clock in nanoseconds since the forwarder started, on Tokio's (pausable) time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    /// When the forwarder started.
    pub(super) epoch: Instant,
}

impl Clock {
    /// Nanoseconds since the epoch.
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When a session last used at `stamp` goes idle; a timeout too long to add means never
    /// in practice (a century on), rather than a panic.
    pub(super) fn idle_deadline(&self, stamp: u64, idle: Duration) -> Instant {
        let last = self.epoch + Duration::from_nanos(stamp);
        last.checked_add(idle).unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
    }
}

/// The recency heaps: `(stamp, session)` entries, oldest first, possibly stale (see the
/// module doc); one heap per idle timeout in use, almost always one.
#[derive(Default)]
pub(super) struct Lru {
    /// The heaps, none empty.
    groups: Vec<Group>,
    /// Entries in all heaps.
    pub(super) len: usize,
}

/// The recency heap of the sessions with one idle timeout.
struct Group {
    /// Their idle timeout.
    idle: Duration,
    /// Oldest stamp first.
    heap: BinaryHeap<Reverse<(u64, Key)>>,
}

impl Lru {
    /// Adds an entry for a session with idle timeout `idle` last used at `stamp`.
    pub(super) fn push(&mut self, idle: Duration, stamp: u64, key: Key) {
        let entry = Reverse((stamp, key));
        match self.groups.iter_mut().find(|g| g.idle == idle) {
            Some(group) => group.heap.push(entry),
            None => self.groups.push(Group { idle, heap: BinaryHeap::from(vec![entry]) }),
        }
        self.len += 1;
    }

    /// The earliest deadline of any entry.
    pub(super) fn next_deadline(&self, clock: &Clock) -> Option<Instant> {
        self.groups
            .iter()
            .filter_map(|g| g.heap.peek().map(|Reverse((stamp, _))| clock.idle_deadline(*stamp, g.idle)))
            .min()
    }

    /// Takes the oldest entry of all: `(idle, stamp, key)`.
    pub(super) fn pop_oldest(&mut self) -> Option<(Duration, u64, Key)> {
        let (group, _) = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.heap.peek().map(|Reverse((stamp, _))| (i, *stamp)))
            .min_by_key(|&(_, stamp)| stamp)?;
        self.pop(group)
    }

    /// Takes an entry whose deadline is at or before `now`.
    pub(super) fn pop_expired(&mut self, now: Instant, clock: &Clock) -> Option<(Duration, u64, Key)> {
        let group = self.groups.iter().position(|g| {
            g.heap.peek().is_some_and(|Reverse((stamp, _))| clock.idle_deadline(*stamp, g.idle) <= now)
        })?;
        self.pop(group)
    }

    /// Takes the oldest entry of heap `group`.
    fn pop(&mut self, group: usize) -> Option<(Duration, u64, Key)> {
        let g = self.groups.get_mut(group)?;
        let Reverse((stamp, key)) = g.heap.pop()?;
        let idle = g.idle;
        if g.heap.is_empty() {
            self.groups.swap_remove(group);
        }
        self.len -= 1;
        Some((idle, stamp, key))
    }

    /// Forgets every entry.
    pub(super) fn clear(&mut self) {
        self.groups.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const SHORT: Duration = Duration::from_secs(10);
    const LONG: Duration = Duration::from_secs(60);

    fn key(i: u32) -> Key {
        Key::new(i, 0)
    }

    #[test]
    fn the_oldest_entry_comes_first_across_heaps() {
        let mut lru = Lru::default();
        lru.push(LONG, 5 * SECOND, key(1));
        lru.push(SHORT, 3 * SECOND, key(2));
        lru.push(LONG, SECOND, key(3));
        lru.push(SHORT, 9 * SECOND, key(4));
        assert_eq!(lru.len, 4);
        let order: Vec<(Duration, u64, Key)> = std::iter::from_fn(|| lru.pop_oldest()).collect();
        assert_eq!(
            order,
            [
                (LONG, SECOND, key(3)),
                (SHORT, 3 * SECOND, key(2)),
                (LONG, 5 * SECOND, key(1)),
                (SHORT, 9 * SECOND, key(4))
            ]
        );
        assert_eq!(lru.len, 0);
        assert_eq!(lru.pop_oldest(), None);
    }

    #[test]
    fn the_next_deadline_is_the_earliest_stamp_plus_its_own_timeout() {
        let clock = Clock { epoch: Instant::now() };
        let mut lru = Lru::default();
        assert_eq!(lru.next_deadline(&clock), None, "nothing to wait for");
        // Older, but with the longer timeout: due at 61 s.
        lru.push(LONG, SECOND, key(1));
        // Newer, with the shorter timeout: due at 30 s, first.
        lru.push(SHORT, 20 * SECOND, key(2));
        assert_eq!(lru.next_deadline(&clock), Some(clock.epoch + Duration::from_secs(30)));
    }

    #[test]
    fn only_entries_past_their_deadline_expire() {
        let clock = Clock { epoch: Instant::now() };
        let mut lru = Lru::default();
        lru.push(SHORT, 0, key(1));
        lru.push(SHORT, 5 * SECOND, key(2));
        lru.push(LONG, 0, key(3));
        let at = |secs| clock.epoch + Duration::from_secs(secs);
        assert_eq!(lru.pop_expired(at(9), &clock), None);
        assert_eq!(lru.pop_expired(at(10), &clock), Some((SHORT, 0, key(1))), "due exactly at its deadline");
        assert_eq!(lru.pop_expired(at(14), &clock), None);
        assert_eq!(lru.pop_expired(at(60), &clock).map(|(_, _, k)| k), Some(key(2)));
        assert_eq!(lru.pop_expired(at(60), &clock).map(|(_, _, k)| k), Some(key(3)));
        assert_eq!((lru.pop_expired(at(1000), &clock), lru.len), (None, 0));
    }

    #[test]
    fn a_re_pushed_entry_waits_for_its_fresh_stamp() {
        let clock = Clock { epoch: Instant::now() };
        let mut lru = Lru::default();
        lru.push(SHORT, 0, key(1));
        // The caller found the session used at 8 s since: pushed back with that stamp.
        let (idle, _, k) = lru.pop_expired(clock.epoch + SHORT, &clock).expect("due");
        lru.push(idle, 8 * SECOND, k);
        assert_eq!(lru.next_deadline(&clock), Some(clock.epoch + Duration::from_secs(18)));
        assert_eq!(lru.len, 1);
    }

    #[test]
    fn clear_forgets_every_entry() {
        let clock = Clock { epoch: Instant::now() };
        let mut lru = Lru::default();
        lru.push(SHORT, 0, key(1));
        lru.push(LONG, 0, key(2));
        lru.clear();
        assert_eq!((lru.len, lru.pop_oldest(), lru.next_deadline(&clock)), (0, None, None));
    }

    #[test]
    fn an_idle_timeout_too_long_to_add_means_a_century_not_a_panic() {
        let clock = Clock { epoch: Instant::now() };
        let deadline = clock.idle_deadline(u64::MAX, Duration::MAX);
        assert!(deadline > clock.epoch + Duration::from_secs(50 * 365 * 24 * 3600));
    }
}
