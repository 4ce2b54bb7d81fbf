//! The access log's event: one value per TCP connection or UDP session, when it ends.
//!
//! The forwarders only build an [`AccessEvent`] and offer it to the table's [`AccessLog`]
//! sink, a bounded queue: no formatting and no I/O happen on the data path. When the queue
//! is full the event is dropped and counted ([`AccessLog::dropped`]); a forwarder never
//! waits for the writer. Whoever holds the receiving end (the `dockward` binary) formats
//! and writes the lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use route_spec::Protocol;

/// How a connection or session ended, or why it never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Both sides finished (TCP), or the session ended for a reason not listed below.
    Closed,
    /// A side reset the connection, or a read or write failed.
    Reset,
    /// Nothing moved either way for the route's idle timeout.
    IdleTimeout,
    /// Refused by an ACL, a pre-dial hook, or for a bad PROXY header.
    Denied,
    /// Refused by a per-client limit (`max_connections_per_ip`, `rate_limit`) or the
    /// route's `max_connections`.
    Limited,
    /// No target answered.
    DialError,
    /// Closed because the route was removed or dockward stopped.
    Drained,
    /// A UDP session evicted at the `max_udp_sessions` cap.
    Evicted,
}

impl Outcome {
    /// The name written in the log: `closed`, `reset`, `idle_timeout`, `denied`, `limited`,
    /// `dial_error`, `drained` or `evicted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Denied => "denied",
            Outcome::Limited => "limited",
            Outcome::DialError => "dial_error",
            Outcome::Drained => "drained",
            Outcome::Evicted => "evicted",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ended TCP connection or UDP session (or a client refused before either began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEvent {
    /// When it ended.
    pub time: SystemTime,
    /// The route's alias.
    pub alias: Arc<str>,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The route's bound address.
    pub listen: SocketAddr,
    /// The client: the one a trusted PROXY header named, else the socket's peer.
    pub client: SocketAddr,
    /// The target it was forwarded to; `None` when none was reached.
    pub target: Option<SocketAddr>,
    /// From accept (or the first datagram) to the end.
    pub duration: Duration,
    /// Bytes from the client to the target.
    pub bytes_in: u64,
    /// Bytes from the target to the client.
    pub bytes_out: u64,
    /// Datagrams from the client to the target (UDP; 0 for TCP).
    pub datagrams_in: u64,
    /// Datagrams from the target to the client (UDP; 0 for TCP).
    pub datagrams_out: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error or reason, if any.
    pub error: Option<String>,
}

/// The sending end of the access log: a bounded queue and a count of events it dropped.
/// Cheap to clone; every route of a table shares one.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessEvent>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A sink that queues at most `capacity` events (at least 1), and its receiving end.
    pub fn channel(capacity: usize) -> (AccessLog, mpsc::Receiver<AccessEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (AccessLog { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }

    /// Queues `event`, or drops and counts it when the queue is full or nobody reads it.
    /// Never waits.
    pub fn send(&self, event: AccessEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Events dropped so far because the queue was full (or its reader gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AccessEvent {
        AccessEvent {
            time: SystemTime::UNIX_EPOCH,
            alias: Arc::from("ssh"),
            protocol: Protocol::Tcp,
            listen: "127.0.0.1:2222".parse().unwrap(),
            client: "127.0.0.2:40000".parse().unwrap(),
            target: None,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            datagrams_in: 0,
            datagrams_out: 0,
            outcome: Outcome::Denied,
            error: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (log, mut rx) = AccessLog::channel(2);
        for _ in 0..5 {
            log.send(event());
        }
        assert_eq!(log.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap(), event());
        assert_eq!(rx.try_recv().unwrap(), event());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn outcomes_have_their_documented_names() {
        let names: Vec<_> = [
            Outcome::Closed,
            Outcome::Reset,
            Outcome::IdleTimeout,
            Outcome::Denied,
            Outcome::Limited,
            Outcome::DialError,
            Outcome::Drained,
            Outcome::Evicted,
        ]
        .iter()
        .map(|o| o.as_str())
        .collect();
        assert_eq!(names, ["closed", "reset", "idle_timeout", "denied", "limited", "dial_error", "drained", "evicted"]);
    }
}
