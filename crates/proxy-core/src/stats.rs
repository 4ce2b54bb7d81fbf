//! Per-route counters and the status snapshot read by the admin API.
//!
//! Counters are atomics bumped on the data path with `Relaxed` ordering: no lock, no
//! pause of traffic to read them. Only the rare "last error" text sits behind a mutex.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::route::{RouteId, RouteSpec, Target};

/// Live counters of one route; shared by its listener and every connection or session.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// TCP connections or UDP sessions open now.
    pub active: AtomicU64,
    /// TCP connections or UDP sessions opened since the route started.
    pub total: AtomicU64,
    /// Bytes from clients to targets.
    pub bytes_in: AtomicU64,
    /// Bytes from targets to clients.
    pub bytes_out: AtomicU64,
    /// Datagrams from clients to targets (UDP only).
    pub datagrams_in: AtomicU64,
    /// Datagrams from targets to clients (UDP only).
    pub datagrams_out: AtomicU64,
    /// Dials that reached no target (refused, timed out, unresolved).
    pub dial_errors: AtomicU64,
    /// Clients turned away by `max_connections` or a pre-dial hook.
    pub rejected: AtomicU64,
    /// UDP sessions evicted at the `max_udp_sessions` cap.
    pub evicted: AtomicU64,
    /// Datagrams dropped (ACL or hook refusal, dial failure, send failure).
    pub dropped: AtomicU64,
    /// Clients refused by the route's or the global ACL (TCP connections closed at accept,
    /// UDP datagrams that would have opened a session).
    pub denied: AtomicU64,
    /// TCP connections closed for a missing, invalid or late PROXY header, or for coming
    /// from an untrusted peer when a header is required.
    pub proxy_header_errors: AtomicU64,
    /// Clients over a per-client limit (`max_connections_per_ip`, `rate_limit`): TCP
    /// connections closed at accept, UDP datagrams that would have opened a session.
    pub limited: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RouteStats {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Records the latest error seen on this route (a dial failure, an accept error).
    pub fn set_last_error(&self, message: impl Into<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(message.into());
        }
    }

    /// The latest error seen on this route, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|slot| slot.clone())
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            active: self.active.load(Relaxed),
            total: self.total.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_out: self.datagrams_out.load(Relaxed),
            dial_errors: self.dial_errors.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            denied: self.denied.load(Relaxed),
            proxy_header_errors: self.proxy_header_errors.load(Relaxed),
            limited: self.limited.load(Relaxed),
            last_error: self.last_error(),
        }
    }
}

/// A plain copy of [`RouteStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// TCP connections or UDP sessions open now.
    pub active: u64,
    /// TCP connections or UDP sessions opened since the route started.
    pub total: u64,
    /// Bytes from clients to targets.
    pub bytes_in: u64,
    /// Bytes from targets to clients.
    pub bytes_out: u64,
    /// Datagrams from clients to targets (UDP only).
    pub datagrams_in: u64,
    /// Datagrams from targets to clients (UDP only).
    pub datagrams_out: u64,
    /// Dials that reached no target.
    pub dial_errors: u64,
    /// Clients turned away by a limit or a hook.
    pub rejected: u64,
    /// UDP sessions evicted at the cap.
    pub evicted: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Clients refused by an ACL.
    #[serde(default)]
    pub denied: u64,
    /// TCP connections closed for a missing, invalid, late or untrusted PROXY header.
    #[serde(default)]
    pub proxy_header_errors: u64,
    /// Clients over a per-client limit.
    #[serde(default)]
    pub limited: u64,
    /// The latest error text.
    pub last_error: Option<String>,
}

/// Whether a route is serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RouteState {
    /// Bound and forwarding.
    Listening,
    /// Invalid or failed to bind; retried on the next apply. The message is the OS's or the validator's.
    Error {
        /// What went wrong.
        message: String,
    },
    /// Another route holds the same protocol and listen address; retried on the next apply.
    Conflict {
        /// The route holding the address.
        with: RouteId,
    },
}

impl RouteState {
    /// `listening`, `error` or `conflict`.
    pub fn name(&self) -> &'static str {
        match self {
            RouteState::Listening => "listening",
            RouteState::Error { .. } => "error",
            RouteState::Conflict { .. } => "conflict",
        }
    }

    /// The error text for `error` and `conflict`, `None` while listening.
    pub fn message(&self) -> Option<String> {
        match self {
            RouteState::Listening => None,
            RouteState::Error { message } => Some(message.clone()),
            RouteState::Conflict { with } => Some(format!("listen address held by {with}")),
        }
    }
}

/// What the table reports about one route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The route as last applied.
    pub spec: RouteSpec,
    /// The address actually bound (with the OS-picked port), while listening.
    pub bound: Option<SocketAddr>,
    /// Serving, failed, or in conflict.
    pub state: RouteState,
    /// When this route entered the table.
    pub since: SystemTime,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Every target with its health and connections, in the spec's order, while the
    /// route is listening; empty otherwise.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
}

/// What a listening route knows about one of its targets; see [`RouteStatus::targets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target.
    pub target: Target,
    /// False while the target is marked down (a failed dial or health check), until it
    /// answers again.
    pub healthy: bool,
    /// TCP connections or UDP sessions open on it now.
    pub active: u64,
    /// TCP connections or UDP sessions opened on it since it joined the route.
    pub total: u64,
    /// Failures in a row (dials, health checks, ICMP reports); 0 once it answers again.
    pub failures: u64,
    /// The latest failure, kept after it recovers.
    pub last_error: Option<String>,
}

impl RouteStatus {
    /// The route's identity.
    pub fn id(&self) -> RouteId {
        self.spec.id()
    }

    /// The route's targets as specified; the `targets` field has their health.
    pub fn spec_targets(&self) -> &[Target] {
        &self.spec.targets
    }
}
