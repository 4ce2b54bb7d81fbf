//! The UDP forwarder's sizes and periods, in one place: queues while a target resolves,
//! batch and burst sizes, socket buffers, back-off and log throttling.

use std::time::Duration;

/// Datagrams a client may have waiting while its session's target is being resolved.
pub(super) const PENDING_MAX_DATAGRAMS: usize = 8;
/// Bytes all of a route's dialling sessions may have waiting at once.
pub(super) const PENDING_MAX_BYTES: usize = 1 << 20;
/// Replies read from one session's socket per round, so that one flooding target yields
/// to the other sessions, the client direction and the timer.
pub(super) const REPLY_BURST: usize = 64;
/// Ready sessions collected per round of replies (one epoll_wait).
pub(super) const READY_MAX: usize = 64;
/// First and longest pause after an error on the listening socket.
pub(super) const RECV_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// See [`RECV_BACKOFF_MIN`].
pub(super) const RECV_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often at most a route logs datagrams too large for a session's socket.
pub(super) const OVERSIZE_LOG_PERIOD: Duration = Duration::from_secs(1);
/// Stale heap entries tolerated beyond the number of live sessions before a rebuild.
pub(super) const LRU_SLACK: usize = 1024;
/// Receive buffer asked for the listening socket (the kernel caps it at `net.core.rmem_max`).
/// The default (about 200 KiB, a few hundred datagrams) overflows whenever the loop is kept
/// off its CPU for a few milliseconds at tens of thousands of datagrams per second. Kernel
/// memory, charged only while datagrams wait.
pub(super) const LISTEN_RCVBUF: usize = 4 << 20;
/// Receive buffer asked for each session's upstream socket (its replies); as above.
pub(super) const UPSTREAM_RCVBUF: usize = 1 << 20;
