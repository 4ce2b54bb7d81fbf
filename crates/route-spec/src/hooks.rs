//! Programmatic hooks on a route's data path, as in GoDoxy's stream package.
//!
//! Both hooks are optional and cost nothing when absent (an `Option` checked per
//! connection, session or read). They are compared by identity when a route is diffed, so
//! handing the same `Arc` to the next `apply` keeps the route unchanged.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::protocol::Protocol;

/// What a hook is told about the connection or UDP session at hand.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo<'a> {
    /// The route's alias.
    pub alias: &'a str,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The client's address.
    pub peer: SocketAddr,
    /// The route's bound address.
    pub listen: SocketAddr,
}

/// Which way bytes are flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client toward the target ("in").
    ClientToTarget,
    /// From the target back to the client ("out").
    TargetToClient,
}

/// Decides, before anything is dialled, whether a client may pass.
///
/// Returning `Err(reason)` closes the TCP client or drops the UDP datagram; nothing is dialled.
pub trait PreDialHook: Send + Sync + 'static {
    /// Called once per TCP connection and once per new UDP session.
    fn pre_dial(&self, info: &ConnInfo<'_>) -> Result<(), String>;
}

/// Sees every read on the data path (metrics, throttling, inspection).
///
/// A route with an on-read hook uses the buffered copy path, since the hook must see the bytes.
pub trait OnReadHook: Send + Sync + 'static {
    /// Called with the bytes of each read (TCP) or each datagram (UDP), before they are forwarded.
    fn on_read(&self, info: &ConnInfo<'_>, direction: Direction, data: &[u8]);
}

impl<F> PreDialHook for F
where
    F: Fn(&ConnInfo<'_>) -> Result<(), String> + Send + Sync + 'static,
{
    fn pre_dial(&self, info: &ConnInfo<'_>) -> Result<(), String> {
        self(info)
    }
}

impl<F> OnReadHook for F
where
    F: Fn(&ConnInfo<'_>, Direction, &[u8]) + Send + Sync + 'static,
{
    fn on_read(&self, info: &ConnInfo<'_>, direction: Direction, data: &[u8]) {
        self(info, direction, data)
    }
}

/// The hooks of one route; `Default` is none.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called before dialling.
    pub pre_dial: Option<Arc<dyn PreDialHook>>,
    /// Called on each read.
    pub on_read: Option<Arc<dyn OnReadHook>>,
}

impl Hooks {
    /// Hooks with only a pre-dial hook.
    pub fn pre_dial(hook: impl PreDialHook) -> Self {
        Hooks { pre_dial: Some(Arc::new(hook)), on_read: None }
    }

    /// The same hooks with an on-read hook.
    pub fn with_on_read(mut self, hook: impl OnReadHook) -> Self {
        self.on_read = Some(Arc::new(hook));
        self
    }

    /// True when neither hook is set.
    pub fn is_empty(&self) -> bool {
        self.pre_dial.is_none() && self.on_read.is_none()
    }
}

fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl PartialEq for Hooks {
    fn eq(&self, other: &Self) -> bool {
        same(&self.pre_dial, &other.pre_dial) && same(&self.on_read, &other.on_read)
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("pre_dial", &self.pre_dial.is_some())
            .field("on_read", &self.on_read.is_some())
            .finish()
    }
}
