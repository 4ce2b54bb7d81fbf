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

use crate::acl::{Access, Acl, NetSet};
use crate::balance::{Backoff, TargetSet};
use crate::hooks::{ConnInfo, Hooks};
use crate::route::{Protocol, RouteOptions, RouteSpec};
use crate::stats::RouteStats;

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
}

impl RouteCtx {
    /// The hook view of a client of this route.
    pub fn conn_info(&self, peer: SocketAddr) -> ConnInfo<'_> {
        ConnInfo { alias: &self.alias, protocol: self.protocol, peer, listen: self.listen }
    }

    /// The current live settings.
    pub fn current(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }
}
