//! The forwarders: what runs behind one route's socket.
//!
//! The table binds a socket, builds a [`RouteCtx`] and spawns [`tcp::serve`] or
//! [`udp::serve`] (and, for TCP, [`health::run`]). A forwarder reads the route's live
//! settings from a `watch` channel once per connection or session, so an update in place
//! reaches new clients while open ones carry on with what they started with. The targets'
//! health and connection counts are not part of that snapshot's copy: they live in shared
//! per-target state that successive settings hand on (see [`crate::balance`]).

pub(crate) mod bind;
pub(crate) mod dial;
pub(crate) mod epoll;
pub(crate) mod health;
pub(crate) mod mmsg;
#[cfg(target_os = "linux")]
pub(crate) mod splice;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessEvent, AccessLog, Outcome};
use crate::acl::{Access, Acl, NetSet};
use crate::balance::{Backoff, TargetSet};
use crate::client_limits::{ClientLimits, ClientTable};
use crate::stats::RouteStats;
use route_spec::{ConnInfo, Hooks};
use route_spec::{Protocol, RouteOptions, RouteSpec};

/// The part of a route that may change without rebinding.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// The targets with their health and connection counts, and the balancing strategy.
    pub targets: Arc<TargetSet>,
    pub options: RouteOptions,
    pub hooks: Hooks,
    /// The route's `allow`/`deny` and the table-wide ACL, compiled.
    pub access: Access,
    /// The route's `trusted` networks, compiled.
    pub trusted: NetSet,
    /// The route's per-client limits.
    pub limits: ClientLimits,
    /// Whether the route's connections and sessions go to the access log (when the table
    /// has one).
    pub access_log: bool,
}

impl Live {
    /// The settings of `spec`, with `global` as the table-wide ACL; the state of targets
    /// that `previous` (the route's settings so far) already had carries over, and a target
    /// that fails is skipped for `backoff`.
    pub fn from_spec(spec: &RouteSpec, global: Arc<Acl>, previous: Option<&Live>, backoff: Backoff) -> Self {
        let options = &spec.options;
        let previous = previous.map(|p| &*p.targets);
        let targets = TargetSet::new(&spec.alias, spec.protocol, &spec.targets, options.balance, previous, backoff);
        Live {
            targets: Arc::new(targets),
            options: options.clone(),
            hooks: spec.hooks.clone(),
            access: Access { route: Acl::new(options.allow.clone(), options.deny.clone()), global },
            trusted: NetSet::new(&options.trusted),
            limits: client_limits(options),
            access_log: options.access_log,
        }
    }
}

/// Everything a running forwarder needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct RouteCtx {
    pub alias: Arc<str>,
    pub protocol: Protocol,
    /// The bound address.
    pub listen: SocketAddr,
    pub live: watch::Receiver<Arc<Live>>,
    pub stats: Arc<RouteStats>,
    /// Cancelled when the route is removed: stop accepting and drop the listener at once.
    pub stop_accepting: CancellationToken,
    /// Cancelled when open connections and sessions must close (after the drain grace).
    pub close_conns: CancellationToken,
    /// Tracks the listener task and every connection or session task of this route.
    pub tracker: TaskTracker,
    /// The table's access log, if it has one.
    pub access_log: Option<AccessLog>,
    /// Per-client state for the route's limits; kept across updates in place.
    pub clients: Arc<ClientTable>,
}

impl RouteCtx {
    /// The hook view of a client of this route.
    pub fn conn_info(&self, peer: SocketAddr) -> ConnInfo<'_> {
        ConnInfo { alias: &self.alias, protocol: self.protocol, peer, listen: self.listen }
    }

    /// The access log's sink when `live` logs, with an event's route fields filled in by
    /// [`RouteCtx::event`].
    pub fn access_log(&self, live: &Live) -> Option<&AccessLog> {
        self.access_log.as_ref().filter(|_| live.access_log)
    }

    /// An event for `client` ending with `outcome`, at this instant: the counts and target
    /// are zero and `None`, for the caller to fill in.
    pub fn event(&self, client: SocketAddr, outcome: Outcome, error: Option<String>) -> AccessEvent {
        AccessEvent {
            time: std::time::SystemTime::now(),
            alias: self.alias.clone(),
            protocol: self.protocol,
            listen: self.listen,
            client,
            target: None,
            duration: std::time::Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            datagrams_in: 0,
            datagrams_out: 0,
            outcome,
            error,
        }
    }

    /// Logs a client refused before any connection or session began.
    pub fn log_refused(&self, live: &Live, client: SocketAddr, outcome: Outcome, error: impl FnOnce() -> String) {
        if let Some(log) = self.access_log(live) {
            log.send(self.event(client, outcome, Some(error())));
        }
    }

    /// The current live settings.
    pub fn current(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }
}

/// The per-client limits `options` set.
fn client_limits(options: &RouteOptions) -> ClientLimits {
    ClientLimits {
        max_connections_per_ip: options.max_connections_per_ip,
        rate_limit: options.rate_limit,
        rate_limit_burst: options.rate_limit_burst,
        ipv6_prefix: options.client_ipv6_prefix,
    }
}
