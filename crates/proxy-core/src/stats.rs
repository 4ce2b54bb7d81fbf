//! Per-route counters and the status snapshot read by the admin API.
//!
//! Counters are atomics bumped on the data path with `Relaxed` ordering: no lock, no
//! pause of traffic to read them. Only the rare "last error" text sits behind a mutex.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use route_spec::{RouteId, RouteSpec, Target, Verdict};

/// Declares the counters once: each becomes an atomic field of [`RouteStats`], a field of
/// [`StatsSnapshot`] (0 when missing from its JSON) and a line of [`RouteStats::snapshot`].
/// dockward's `counters.rs` says how each is shown (JSON, table, /metrics).
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Live counters of one route; shared by its listener and every connection or session.
        #[derive(Debug, Default)]
        pub struct RouteStats {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)+
            last_error: Mutex<Option<String>>,
        }

        /// A plain copy of [`RouteStats`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])+ #[serde(default)] pub $name: u64,)+
            /// The latest error text.
            pub last_error: Option<String>,
        }

        impl RouteStats {
            /// A consistent-enough copy of every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)+ last_error: self.last_error() }
            }
        }
    };
}

counters! {
    /// TCP connections or UDP sessions open now.
    active,
    /// TCP connections or UDP sessions opened since the route started.
    total,
    /// Bytes from clients to targets.
    bytes_in,
    /// Bytes from targets to clients.
    bytes_out,
    /// Datagrams from clients to targets (UDP only).
    datagrams_in,
    /// Datagrams from targets to clients (UDP only).
    datagrams_out,
    /// Dials that reached no target (refused, timed out, unresolved).
    dial_errors,
    /// Clients turned away by `max_connections` or a pre-dial hook.
    rejected,
    /// UDP sessions evicted at the `max_udp_sessions` cap.
    evicted,
    /// Datagrams dropped (ACL or hook refusal, dial failure, send failure).
    dropped,
    /// Clients refused by the route's or the global ACL (TCP connections closed at accept,
    /// UDP datagrams that would have opened a session).
    denied,
    /// TCP connections closed for a missing, invalid or late PROXY header, or for coming
    /// from an untrusted peer when a header is required.
    proxy_header_errors,
    /// Clients over a per-client limit (`max_connections_per_ip`, `rate_limit`): TCP
    /// connections closed at accept, UDP datagrams that would have opened a session.
    limited,
    /// Clients held while their sleeping target woke: TCP connections accepted and held,
    /// UDP sessions whose first datagrams were buffered.
    held,
    /// Held clients given up because the wake failed or timed out: TCP connections closed,
    /// UDP sessions dropped with their buffered datagrams.
    wake_failed,
    /// Datagrams buffered while a UDP session's target woke (those beyond the buffer are
    /// dropped and counted in `dropped`).
    buffered,
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
    /// answers again; and while its provider calls it unhealthy, whatever dials say.
    pub healthy: bool,
    /// TCP connections or UDP sessions open on it now.
    pub active: u64,
    /// TCP connections or UDP sessions opened on it since it joined the route.
    pub total: u64,
    /// Failures in a row (dials, health checks, ICMP reports); 0 once it answers again.
    pub failures: u64,
    /// The latest failure, kept after it recovers.
    pub last_error: Option<String>,
    /// Its provider's verdict (`docker: unhealthy`), when the provider gives one.
    #[serde(default)]
    pub verdict: Option<Verdict>,
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
