//! The process's open-file limit.
//!
//! A forwarder holds two descriptors per TCP connection and one per UDP session, and the
//! soft `RLIMIT_NOFILE` most shells and many service managers start a process with is
//! 1,024: about 500 connections before `accept` fails with EMFILE. The hard limit is
//! usually far higher (524,288 under systemd), and any process may raise its soft limit
//! up to it, as HAProxy and every Go program do at start-up.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now.
    pub after: u64,
    /// The hard limit: the most the soft limit can be raised to without privileges.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (or, when that is unlimited, to the
/// kernel's `fs.nr_open`); a no-op when it is there already.
///
/// Call it before any route starts: the UDP sessions' descriptor budget
/// ([`crate::fd_budget`]) reads the limit once, when the first UDP route starts.
///
/// ```
/// let limit = proxy_core::limits::raise_nofile_limit().expect("getrlimit works");
/// assert!(limit.after >= limit.before && limit.after <= limit.hard);
/// // Asking again finds nothing left to raise.
/// let again = proxy_core::limits::raise_nofile_limit().expect("getrlimit works");
/// assert_eq!((again.before, again.after), (limit.after, limit.after));
/// ```
#[cfg(unix)]
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `current` is a valid rlimit for getrlimit to write.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (before, hard) = (current.rlim_cur, current.rlim_max);
    // An unlimited hard limit still stops at the kernel's fs.nr_open (setrlimit refuses more).
    let target = if hard == libc::RLIM_INFINITY { nr_open().unwrap_or(hard) } else { hard };
    let mut after = before;
    if before < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: hard };
        // SAFETY: `raised` is a valid rlimit for setrlimit to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        after = target;
    }
    // rlim_t is u64 on Linux, but not on every unix.
    #[allow(clippy::useless_conversion)]
    let clamp = |v: libc::rlim_t| u64::try_from(v).unwrap_or(u64::MAX);
    Ok(NofileLimit { before: clamp(before), after: clamp(after), hard: clamp(hard) })
}

/// The soft `RLIMIT_NOFILE` now: how many descriptors this process may have open
/// ([`u64::MAX`] when unlimited).
#[cfg(unix)]
pub fn nofile_soft_limit() -> io::Result<u64> {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `current` is a valid rlimit for getrlimit to write.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if current.rlim_cur == libc::RLIM_INFINITY {
        return Ok(u64::MAX);
    }
    // rlim_t is u64 on Linux, but not on every unix.
    #[allow(clippy::useless_conversion)]
    Ok(u64::try_from(current.rlim_cur).unwrap_or(u64::MAX))
}

/// The kernel's ceiling on any process's descriptors (`/proc/sys/fs/nr_open`), on Linux.
#[cfg(unix)]
fn nr_open() -> Option<libc::rlim_t> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}
