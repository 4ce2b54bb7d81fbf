//! When to look again at a swarm service whose tasks are still starting or stopping: a
//! delay that doubles per look, and a limit after which the periodic resync takes over.
//! Pure: times in, times out.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::debug;

/// First delay before looking again at a service that is settling; it doubles up to
/// [`RECHECK_MAX`], and after [`RECHECK_ATTEMPTS`] looks the periodic resync takes over.
pub(crate) const RECHECK_MIN: Duration = Duration::from_millis(100);
pub(crate) const RECHECK_MAX: Duration = Duration::from_secs(5);
pub(crate) const RECHECK_ATTEMPTS: u32 = 12;

/// When to look again at one settling service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recheck {
    pub(crate) due: tokio::time::Instant,
    pub(crate) delay: Duration,
    pub(crate) attempts: u32,
}

/// Schedules (or pushes back) a look at a settling service; gives up after
/// [`RECHECK_ATTEMPTS`] looks without a fresh event.
pub(crate) fn schedule_recheck(rechecks: &mut BTreeMap<String, Recheck>, id: &str, fresh: bool) {
    let now = tokio::time::Instant::now();
    let next = match rechecks.get(id) {
        Some(r) if !fresh => {
            if r.attempts >= RECHECK_ATTEMPTS {
                debug!(service = id, "still settling; left to the periodic resync");
                rechecks.remove(id);
                return;
            }
            let delay = (r.delay * 2).min(RECHECK_MAX);
            Recheck { due: now + delay, delay, attempts: r.attempts + 1 }
        }
        _ => Recheck { due: now + RECHECK_MIN, delay: RECHECK_MIN, attempts: 1 },
    };
    rechecks.insert(id.to_string(), next);
}

/// The services whose recheck is due at `now`.
pub(crate) fn due_rechecks(
    rechecks: &BTreeMap<String, Recheck>,
    now: tokio::time::Instant,
) -> BTreeMap<String, &'static str> {
    rechecks.iter().filter(|(_, r)| r.due <= now).map(|(id, _)| (id.clone(), "settling")).collect()
}
