//! One sleeping container's state: who is connected, whether it is awake, and the gate held
//! clients wait at. No engine call: [`crate::io::control`] drives it (stops it when
//! [`Sleeper::next`] says so, wakes it, and reports back).
//!
//! **Idle means nobody is connected**: the container is put to sleep once no TCP connection
//! and no UDP session has been open on any of its routes for `idle_timeout`. Every client
//! holds a presence ([`route_spec::Arrival::presence`]) for as long as its connection or
//! session lives, so a connected but quiet SSH or game client keeps the container up (GoDoxy
//! instead resets its timer on every read, and stops a container under a quiet client).
//!
//! **One wake per container**: the first client to find it asleep starts the wake; every
//! client meanwhile waits at the same gate, which opens once the container is ready or
//! fails (with the reason) past `wake_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use route_spec::{Arrival, ConnInfo, Protocol, Target, WAKE_BUCKETS, WakeHook, WakePhase, WakeStatus};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::IdleConfig;
use crate::labels::ContainerState;

/// What held clients wait on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    /// Awake: pass.
    Open,
    /// Asleep or waking: wait.
    Closed,
    /// The last wake failed: give up with this reason.
    Failed(String),
}

/// What the driver should do next; see [`Sleeper::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Start (or unpause) the container and wait until it is ready.
    Wake {
        /// The client that asked, for the log.
        client: Option<SocketAddr>,
    },
    /// Put it to sleep: nobody has been connected for `idle`.
    Sleep {
        /// How long it has been idle.
        idle: Duration,
    },
    /// Nothing until this instant (or a notification).
    WaitUntil(Instant),
    /// Nothing until notified.
    Wait,
}

/// The mutable part, behind one lock held only for bookkeeping.
#[derive(Debug)]
struct Inner {
    config: IdleConfig,
    phase: WakePhase,
    /// Clients connected now (connections, sessions, held ones).
    present: usize,
    /// Since when nobody has been connected (meaningful while `present` is 0).
    idle_since: Instant,
    /// The first client that found it asleep, for the wake's log line.
    waker: Option<SocketAddr>,
    /// A client arrived while it was being put to sleep: wake it once stopped.
    wake_after_stop: bool,
    /// What the engine last said.
    observed: ContainerState,
    /// The targets that must answer before it counts as ready (TCP: accept; UDP: be bound).
    targets: Vec<(Protocol, Target)>,
    last_error: Option<String>,
}

/// One container that sleeps when idle.
pub struct Sleeper {
    /// The container's id.
    pub(crate) id: String,
    /// Its name, for logs and status.
    pub(crate) name: String,
    inner: Mutex<Inner>,
    gate: watch::Sender<Gate>,
    /// Wakes the driver: a client arrived or left, the engine said something, or retired.
    pub(crate) notify: Notify,
    /// Cancelled when the container leaves the engine: the driver ends.
    pub(crate) retired: CancellationToken,
    wakes: AtomicU64,
    sleeps: AtomicU64,
    wake_failures: AtomicU64,
    wake_micros: AtomicU64,
    buckets: [AtomicU64; WAKE_BUCKETS.len() + 1],
}

impl std::fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeper").field("name", &self.name).field("phase", &self.phase()).finish()
    }
}

impl Sleeper {
    /// A sleeper for a container the engine says is in `state`.
    pub(crate) fn new(id: &str, name: &str, config: IdleConfig, state: ContainerState) -> Arc<Self> {
        let awake = state.is_running();
        let inner = Inner {
            config,
            phase: if awake { WakePhase::Awake } else { WakePhase::Sleeping },
            present: 0,
            idle_since: Instant::now(),
            waker: None,
            wake_after_stop: false,
            observed: state,
            targets: Vec::new(),
            last_error: None,
        };
        Arc::new(Sleeper {
            id: id.to_string(),
            name: name.to_string(),
            inner: Mutex::new(inner),
            gate: watch::Sender::new(if awake { Gate::Open } else { Gate::Closed }),
            notify: Notify::new(),
            retired: CancellationToken::new(),
            wakes: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            wake_failures: AtomicU64::new(0),
            wake_micros: AtomicU64::new(0),
            buckets: Default::default(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where it stands.
    pub fn phase(&self) -> WakePhase {
        self.inner().phase
    }

    /// Its settings now.
    pub(crate) fn config(&self) -> IdleConfig {
        self.inner().config.clone()
    }

    /// The targets that must answer before it counts as ready (without a healthcheck).
    pub(crate) fn readiness(&self) -> Vec<(Protocol, Target)> {
        self.inner().targets.clone()
    }

    /// What the engine said (a list, an event's inspect): the settings, state and targets.
    ///
    /// A container started by someone else wakes it (clients pass); one stopped by someone
    /// else (or that exited) puts it to sleep (the next client wakes it). While a wake or a
    /// stop of dockward's own is under way, the driver decides.
    pub(crate) fn observe(&self, config: IdleConfig, state: ContainerState, routes: &[route_spec::RouteSpec]) {
        let mut inner = self.inner();
        inner.config = config;
        inner.observed = state;
        inner.targets = routes.iter().flat_map(|r| r.targets.iter().map(|t| (r.protocol, t.clone()))).fold(
            Vec::new(),
            |mut v, t| {
                if !v.contains(&t) {
                    v.push(t);
                }
                v
            },
        );
        match (inner.phase, state.is_running()) {
            (WakePhase::Sleeping, true) => {
                inner.phase = WakePhase::Awake;
                inner.idle_since = Instant::now();
                self.gate.send_replace(Gate::Open);
            }
            (WakePhase::Awake, false) => {
                inner.phase = WakePhase::Sleeping;
                self.gate.send_replace(Gate::Closed);
            }
            _ => {}
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// A client arrived: counts it, and holds it unless the container is awake.
    fn arrive(self: &Arc<Self>, peer: SocketAddr) -> Arrival {
        let mut inner = self.inner();
        inner.present += 1;
        let held = match inner.phase {
            WakePhase::Awake => false,
            WakePhase::Sleeping => {
                inner.phase = WakePhase::Waking;
                inner.waker = Some(peer);
                self.gate.send_replace(Gate::Closed);
                true
            }
            WakePhase::Waking => true,
            WakePhase::Stopping => {
                inner.wake_after_stop = true;
                inner.waker.get_or_insert(peer);
                true
            }
        };
        drop(inner);
        self.notify.notify_one();
        let presence: Box<dyn Send + Sync> = Box::new(Presence(self.clone()));
        if !held {
            return Arrival { ready: None, presence: Some(presence) };
        }
        let mut gate = self.gate.subscribe();
        let ready = async move {
            loop {
                match &*gate.borrow_and_update() {
                    Gate::Open => return Ok(()),
                    Gate::Failed(reason) => return Err(reason.clone()),
                    Gate::Closed => {}
                }
                if gate.changed().await.is_err() {
                    return Err("the container's watcher stopped".to_string());
                }
            }
        };
        Arrival { ready: Some(Box::pin(ready)), presence: Some(presence) }
    }

    /// A client left.
    fn leave(&self) {
        let mut inner = self.inner();
        inner.present = inner.present.saturating_sub(1);
        if inner.present == 0 {
            inner.idle_since = Instant::now();
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// What the driver should do now, marking the phase it starts (`Waking`, `Stopping`).
    pub(crate) fn next(&self, now: Instant) -> Next {
        let mut inner = self.inner();
        match inner.phase {
            WakePhase::Waking => Next::Wake { client: inner.waker.take() },
            WakePhase::Awake if inner.present == 0 && inner.observed.is_running() => {
                let idle = now.saturating_duration_since(inner.idle_since);
                if idle >= inner.config.idle_timeout {
                    inner.phase = WakePhase::Stopping;
                    self.gate.send_replace(Gate::Closed);
                    Next::Sleep { idle }
                } else {
                    Next::WaitUntil(inner.idle_since + inner.config.idle_timeout)
                }
            }
            WakePhase::Awake | WakePhase::Sleeping | WakePhase::Stopping => Next::Wait,
        }
    }

    /// The wake ended: open the gate, or fail every held client with the reason.
    pub(crate) fn woke(&self, result: Result<Duration, String>) {
        let mut inner = self.inner();
        match result {
            Ok(took) => {
                inner.phase = WakePhase::Awake;
                inner.idle_since = Instant::now();
                inner.observed = ContainerState::Running;
                self.wakes.fetch_add(1, Relaxed);
                self.wake_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
                let secs = took.as_secs_f64();
                let bucket = WAKE_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(WAKE_BUCKETS.len());
                self.buckets[bucket].fetch_add(1, Relaxed);
                self.gate.send_replace(Gate::Open);
            }
            Err(reason) => {
                // The next client tries again.
                inner.phase = WakePhase::Sleeping;
                self.wake_failures.fetch_add(1, Relaxed);
                inner.last_error = Some(reason.clone());
                self.gate.send_replace(Gate::Failed(reason));
            }
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// The sleep ended: asleep, or awake again when it could not be stopped. A client that
    /// arrived meanwhile starts a wake at once.
    pub(crate) fn slept(&self, result: Result<(), String>) {
        let mut inner = self.inner();
        match result {
            Ok(()) => {
                self.sleeps.fetch_add(1, Relaxed);
                inner.observed = ContainerState::Exited;
                if inner.wake_after_stop || inner.present > 0 {
                    inner.phase = WakePhase::Waking;
                } else {
                    inner.phase = WakePhase::Sleeping;
                }
            }
            Err(reason) => {
                inner.last_error = Some(reason);
                inner.phase = WakePhase::Awake;
                inner.idle_since = Instant::now();
                self.gate.send_replace(Gate::Open);
            }
        }
        inner.wake_after_stop = false;
        drop(inner);
        self.notify.notify_one();
    }

    /// The container left the engine: held clients are given up, the driver ends.
    pub(crate) fn retire(&self) {
        self.retired.cancel();
        self.gate.send_replace(Gate::Failed("the container was removed".to_string()));
    }

    /// Status and counters, for `dockward routes` and /metrics.
    pub fn status(&self) -> WakeStatus {
        let inner = self.inner();
        WakeStatus {
            name: self.name.clone(),
            phase: Some(inner.phase),
            wakes: self.wakes.load(Relaxed),
            sleeps: self.sleeps.load(Relaxed),
            wake_failures: self.wake_failures.load(Relaxed),
            wake_buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            wake_seconds: self.wake_micros.load(Relaxed) as f64 / 1e6,
            last_error: inner.last_error.clone(),
        }
    }
}

/// Held by one connection or session; dropping it tells the sleeper the client left.
struct Presence(Arc<Sleeper>);

impl Drop for Presence {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The [`WakeHook`] that every route of a sleeping container carries (the same `Arc`, so
/// updates in place keep the route unchanged).
#[derive(Debug, Clone)]
pub struct SleeperHook(pub(crate) Arc<Sleeper>);

impl WakeHook for SleeperHook {
    fn arrive(&self, info: &ConnInfo<'_>) -> Arrival {
        self.0.arrive(info.peer)
    }

    fn status(&self) -> WakeStatus {
        self.0.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::config::StopMethod;

    fn config(idle: u64) -> IdleConfig {
        IdleConfig {
            idle_timeout: Duration::from_secs(idle),
            wake_timeout: Duration::from_secs(10),
            stop_method: StopMethod::Stop,
            stop_timeout: Duration::from_secs(1),
            stop_signal: None,
            depends_on: Vec::new(),
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_only_when_nobody_is_connected_for_idle_timeout() {
        let s = Sleeper::new("id", "mc", config(30), ContainerState::Running);
        let start = Instant::now();
        assert_eq!(s.next(start), Next::WaitUntil(start + Duration::from_secs(30)));
        // A connected client, however quiet, keeps it up.
        let held = s.arrive(peer());
        assert!(held.ready.is_none(), "awake: not held");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(s.next(Instant::now()), Next::Wait);
        drop(held);
        let left = Instant::now();
        assert_eq!(s.next(left), Next::WaitUntil(left + Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.next(Instant::now()), Next::Sleep { idle: Duration::from_secs(30) });
        assert_eq!(s.phase(), WakePhase::Stopping);
        s.slept(Ok(()));
        assert_eq!(s.phase(), WakePhase::Sleeping);
        assert_eq!(s.status().sleeps, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_wake_for_many_clients_and_all_pass_when_ready() {
        let s = Sleeper::new("id", "mc", config(30), ContainerState::Exited);
        let arrivals: Vec<Arrival> = (0..50).map(|_| s.arrive(peer())).collect();
        assert_eq!(s.phase(), WakePhase::Waking);
        assert_eq!(s.next(Instant::now()), Next::Wake { client: Some(peer()) });
        let waits: Vec<_> = arrivals.into_iter().map(|a| tokio::spawn(a.ready.expect("held"))).collect();
        s.woke(Ok(Duration::from_millis(70)));
        for w in waits {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(s.phase(), WakePhase::Awake);
        let st = s.status();
        assert_eq!((st.wakes, st.wake_failures), (1, 0));
        assert_eq!(st.wake_buckets[1], 1, "70 ms falls in the 0.1 s bucket");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_wake_fails_held_clients_and_the_next_client_tries_again() {
        let s = Sleeper::new("id", "mc", config(30), ContainerState::Exited);
        let a = s.arrive(peer());
        assert!(matches!(s.next(Instant::now()), Next::Wake { .. }));
        s.woke(Err("not ready within 10s".into()));
        assert_eq!(a.ready.expect("held").await, Err("not ready within 10s".to_string()));
        assert_eq!(s.phase(), WakePhase::Sleeping);
        let b = s.arrive(peer());
        assert_eq!(s.phase(), WakePhase::Waking);
        let wait = tokio::spawn(b.ready.expect("held"));
        s.woke(Ok(Duration::from_secs(1)));
        assert_eq!(wait.await.unwrap(), Ok(()));
        assert_eq!(s.status().last_error.as_deref(), Some("not ready within 10s"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_during_the_stop_wakes_it_right_after() {
        let s = Sleeper::new("id", "mc", config(1), ContainerState::Running);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(s.next(Instant::now()), Next::Sleep { .. }));
        let a = s.arrive(peer());
        assert!(a.ready.is_some(), "held while stopping");
        s.slept(Ok(()));
        assert_eq!(s.phase(), WakePhase::Waking);
        assert!(matches!(s.next(Instant::now()), Next::Wake { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn someone_else_starting_or_stopping_it_is_followed() {
        let s = Sleeper::new("id", "mc", config(30), ContainerState::Exited);
        s.observe(config(30), ContainerState::Running, &[]);
        assert_eq!(s.phase(), WakePhase::Awake);
        assert!(s.arrive(peer()).ready.is_none());
        s.observe(config(30), ContainerState::Exited, &[]);
        assert_eq!(s.phase(), WakePhase::Sleeping);
        // Removed while a client waits: it is given up.
        let a = s.arrive(peer());
        s.retire();
        assert_eq!(a.ready.expect("held").await, Err("the container was removed".to_string()));
    }
}
