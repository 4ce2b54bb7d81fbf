//! Programmatic hooks on a route's data path, as in GoDoxy's stream package.
//!
//! Every hook is optional and costs nothing when absent (an `Option` checked per
//! connection, session or read). They are compared by identity when a route is diffed, so
//! handing the same `Arc` to the next `apply` keeps the route unchanged.
//!
//! The [`WakeHook`] is how a provider puts a sleeping target behind a route (idle sleep):
//! it is told of every client that arrives and leaves, and may hold a client until the
//! target is ready.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// What a held client waits on: resolves `Ok` once the target may be dialled, `Err(reason)`
/// when it will not be (the wake failed or timed out).
pub type Ready = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a [`WakeHook`] answers for one arriving client.
#[derive(Default)]
pub struct Arrival {
    /// `None`: dial now. `Some`: hold the client (accept the TCP connection, buffer the UDP
    /// session's datagrams) until it resolves.
    pub ready: Option<Ready>,
    /// Kept for as long as the connection or session lives; dropping it tells the hook the
    /// client left.
    pub presence: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arrival").field("held", &self.ready.is_some()).finish()
    }
}

/// Where a sleeping target stands, as a [`WakeHook`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakePhase {
    /// Running and ready: clients pass straight through.
    Awake,
    /// Stopped (or paused) while idle: the next client wakes it.
    Sleeping,
    /// Starting, or waiting to be ready: clients are held.
    Waking,
    /// Being stopped for idleness; a client arriving now wakes it again once stopped.
    Stopping,
}

impl WakePhase {
    /// `awake`, `sleeping`, `waking` or `stopping`.
    pub fn as_str(self) -> &'static str {
        match self {
            WakePhase::Awake => "awake",
            WakePhase::Sleeping => "sleeping",
            WakePhase::Waking => "waking",
            WakePhase::Stopping => "stopping",
        }
    }
}

impl fmt::Display for WakePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bounds (seconds) of the wake-duration histogram's buckets; [`WakeStatus::wake_buckets`]
/// counts per bucket, plus one for everything slower.
pub const WAKE_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0];

/// What a [`WakeHook`] reports about its target, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WakeStatus {
    /// What it is sleeping (the container's name), shared by every route of it.
    pub name: String,
    /// Where it stands; `None` before the provider has seen it.
    pub phase: Option<WakePhase>,
    /// Wakes that completed (target ready).
    pub wakes: u64,
    /// Times it was put to sleep for idleness.
    pub sleeps: u64,
    /// Wakes that failed or timed out.
    pub wake_failures: u64,
    /// Completed wakes by duration: one count per [`WAKE_BUCKETS`] bound (not cumulative),
    /// then one for slower ones.
    pub wake_buckets: Vec<u64>,
    /// Sum of completed wakes' durations, in seconds.
    pub wake_seconds: f64,
    /// The latest wake or sleep failure.
    pub last_error: Option<String>,
}

/// Puts a target that sleeps behind a route: told of every client, it may hold one until
/// the target is awake.
pub trait WakeHook: Send + Sync + 'static {
    /// Called once per TCP connection and once per new UDP session, after the ACL, limits
    /// and pre-dial hook let it pass and before anything is dialled.
    fn arrive(&self, info: &ConnInfo<'_>) -> Arrival;
    /// Where the target stands, for status and metrics.
    fn status(&self) -> WakeStatus;
}

/// The hooks of one route; `Default` is none.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called before dialling.
    pub pre_dial: Option<Arc<dyn PreDialHook>>,
    /// Called on each read.
    pub on_read: Option<Arc<dyn OnReadHook>>,
    /// Told of every client; may hold it while the target wakes.
    pub wake: Option<Arc<dyn WakeHook>>,
}

impl Hooks {
    /// Hooks with only a pre-dial hook.
    pub fn pre_dial(hook: impl PreDialHook) -> Self {
        Hooks { pre_dial: Some(Arc::new(hook)), ..Hooks::default() }
    }

    /// The same hooks with an on-read hook.
    pub fn with_on_read(mut self, hook: impl OnReadHook) -> Self {
        self.on_read = Some(Arc::new(hook));
        self
    }

    /// The same hooks with a wake hook.
    pub fn with_wake(mut self, hook: Arc<dyn WakeHook>) -> Self {
        self.wake = Some(hook);
        self
    }

    /// True when no hook is set.
    pub fn is_empty(&self) -> bool {
        self.pre_dial.is_none() && self.on_read.is_none() && self.wake.is_none()
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
        same(&self.pre_dial, &other.pre_dial) && same(&self.on_read, &other.on_read) && same(&self.wake, &other.wake)
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("pre_dial", &self.pre_dial.is_some())
            .field("on_read", &self.on_read.is_some())
            .field("wake", &self.wake.is_some())
            .finish()
    }
}
