//! The admin API: `GET /routes`, `GET /healthz` and `GET /metrics` over HTTP/1.1, on a
//! loopback TCP address or a unix socket.
//!
//! It binds loopback by default ([`DEFAULT_ADMIN_ADDR`]) and logs a warning when told to
//! listen on any other address: it has no authentication. A unix socket is created with
//! mode 0600 (only dockward's own user may connect).
//!
//! Any local user can connect, so the API must not be a way to starve the forwarders:
//! - it runs on its own OS thread and single-threaded runtime ([`spawn_thread`]), so that
//!   building a 1.5 MB `/routes` for 2,000 routes never holds a forwarder's worker thread;
//! - a client has [`AdminLimits::header_timeout`] to send a request's headers, and a
//!   connection that moves no byte either way for [`AdminLimits::idle_timeout`] is closed;
//! - at most [`AdminLimits::max_connections`] connections are open: beyond it, the least
//!   recently active connection is closed to make room, so a flood of silent connections
//!   neither takes the descriptors the routes need nor locks `/healthz` out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::controller::View;
use crate::history::History;
use crate::metrics::Metrics;
use crate::routes_view;
use crate::status_page;

/// The admin API's address when neither `--admin` nor `DOCKWARD_ADMIN` is given.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7031";

/// How long a client may take to send a request's headers, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may move no byte before it is closed, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits that keep admin clients from holding resources the forwarders need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// How long a client may take to send a request's headers, counted from when the
    /// connection is ready for the request (so it also bounds a keep-alive wait).
    pub header_timeout: Duration,
    /// How long a connection may move no byte either way (a client that stopped reading a
    /// response, say) before it is closed.
    pub idle_timeout: Duration,
    /// The most connections open at once; beyond it the least recently active one is closed.
    pub max_connections: usize,
}

impl AdminLimits {
    /// The default limits for a process allowed `nofile` open descriptors: one sixteenth of
    /// them for admin connections, between 16 and 1,024.
    pub fn for_nofile(nofile: u64) -> Self {
        let max_connections = usize::try_from(nofile / 16).unwrap_or(usize::MAX).clamp(16, 1024);
        AdminLimits { header_timeout: DEFAULT_HEADER_TIMEOUT, idle_timeout: DEFAULT_IDLE_TIMEOUT, max_connections }
    }
}

/// Where the admin API listens: `HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// A TCP address; `localhost` is read as 127.0.0.1.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/dockward.sock".into());
            }
            return Ok(AdminAddr::Unix(PathBuf::from(path)));
        }
        let tcp = match s.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => s.to_string(),
        };
        tcp.parse::<SocketAddr>()
            .map(AdminAddr::Tcp)
            .map_err(|_| format!("{s:?} is not an admin address: expected HOST:PORT or unix:/path"))
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddr::Tcp(addr) => write!(f, "{addr}"),
            AdminAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound admin listener.
pub enum AdminListener {
    /// On TCP.
    Tcp(TcpListener),
    /// On a unix socket; the path is removed when the listener stops.
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    /// Binds `addr`. Warns when a TCP address is not loopback; replaces a stale unix
    /// socket, but refuses one another process still answers on.
    pub async fn bind(addr: &AdminAddr) -> anyhow::Result<AdminListener> {
        match addr {
            AdminAddr::Tcp(tcp) => {
                if !is_loopback(tcp.ip()) {
                    warn!(admin = %addr, "the admin API listens on a non-loopback address; it has no authentication");
                }
                let listener = TcpListener::bind(tcp).await.with_context(|| format!("cannot listen on {addr}"))?;
                Ok(AdminListener::Tcp(listener))
            }
            AdminAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {addr}"))?;
                set_owner_only(path).with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
                Ok(AdminListener::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound (with the OS-picked port).
    pub fn local_addr(&self) -> anyhow::Result<AdminAddr> {
        match self {
            AdminListener::Tcp(l) => Ok(AdminAddr::Tcp(l.local_addr().context("admin listener address")?)),
            AdminListener::Unix(_, path) => Ok(AdminAddr::Unix(path.clone())),
        }
    }

    /// Detaches the listener from this runtime, to move it to another one.
    fn into_std(self) -> anyhow::Result<StdListener> {
        match self {
            AdminListener::Tcp(l) => Ok(StdListener::Tcp(l.into_std().context("detaching the admin listener")?)),
            AdminListener::Unix(l, path) => {
                Ok(StdListener::Unix(l.into_std().context("detaching the admin listener")?, path))
            }
        }
    }
}

/// An admin listener between two runtimes (still non-blocking).
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl StdListener {
    /// Registers the listener with the current runtime.
    fn into_tokio(self) -> std::io::Result<AdminListener> {
        match self {
            StdListener::Tcp(l) => Ok(AdminListener::Tcp(TcpListener::from_std(l)?)),
            StdListener::Unix(l, path) => Ok(AdminListener::Unix(UnixListener::from_std(l)?, path)),
        }
    }
}

/// Serves the admin API on its own OS thread (`dockward-admin`) with a single-threaded
/// runtime until `shutdown` fires; join the handle to wait for it to stop.
///
/// Admin requests then never run on the forwarders' worker threads: however many clients
/// ask for `/routes` or `/metrics`, the data plane keeps its threads.
pub fn spawn_thread(
    listener: AdminListener,
    view: View,
    limits: AdminLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = listener.into_std()?;
    std::thread::Builder::new()
        .name("dockward-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(error = %e, "cannot start the admin API's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match listener.into_tokio() {
                    Ok(listener) => serve(listener, view, limits, shutdown).await,
                    Err(e) => error!(error = %e, "cannot move the admin listener to its thread"),
                }
            });
        })
        .context("cannot start the admin API's thread")
}

/// Whether `ip` is loopback, an IPv4-mapped one (`::ffff:127.0.0.1`) included.
fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        bail!("cannot listen on unix:{}: the path exists and is not a socket", path.display());
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        bail!("cannot listen on unix:{}: another process answers on it", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))
}

fn set_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Serves the admin API on `listener` until `shutdown` fires, in the current runtime.
pub async fn serve(listener: AdminListener, view: View, limits: AdminLimits, shutdown: CancellationToken) {
    let history = History::new();
    tokio::spawn(history.clone().run(view.clone(), shutdown.child_token()));
    let state = Arc::new(State { metrics: Metrics::new(view.clone()), view, history });
    let mut conns = Conns::new(limits);
    let mut accept_errors = AcceptErrors::default();
    match &listener {
        AdminListener::Tcp(l) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => {
                        accept_errors.backoff = Duration::ZERO;
                        conns.admit(stream, &state, &shutdown);
                    }
                    Err(e) => accept_errors.back_off(e).await,
                },
            }
        },
        AdminListener::Unix(l, _) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => {
                        accept_errors.backoff = Duration::ZERO;
                        conns.admit(stream, &state, &shutdown);
                    }
                    Err(e) => accept_errors.back_off(e).await,
                },
            }
        },
    }
    if let AdminListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    debug!("admin API stopped");
}

/// Failed accepts (out of descriptors, say): back off instead of spinning, from 10 ms up to
/// a second, and warn at most once a second.
#[derive(Default)]
struct AcceptErrors {
    backoff: Duration,
    last_warning: Option<Instant>,
    since_warning: u64,
}

impl AcceptErrors {
    async fn back_off(&mut self, e: std::io::Error) {
        self.since_warning += 1;
        if self.last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            warn!(error = %e, failures = self.since_warning, "admin API accept failed");
            self.last_warning = Some(Instant::now());
            self.since_warning = 0;
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(self.backoff).await;
    }
}

/// What every request handler reads.
struct State {
    view: View,
    metrics: Metrics,
    /// The status page's samples (`GET /history`).
    history: History,
}

/// The open connections, to enforce [`AdminLimits::max_connections`].
struct Conns {
    limits: AdminLimits,
    /// The clock connections' activity is measured on.
    epoch: Instant,
    next_id: u64,
    /// Connection id → when it last moved a byte and how to close it.
    open: Arc<Mutex<BTreeMap<u64, ConnHandle>>>,
    last_eviction_warning: Option<Instant>,
}

struct ConnHandle {
    /// Milliseconds since [`Conns::epoch`] of the last byte read or written.
    active: Arc<AtomicU64>,
    close: CancellationToken,
}

impl Conns {
    fn new(limits: AdminLimits) -> Self {
        Conns {
            limits,
            epoch: Instant::now(),
            next_id: 0,
            open: Arc::new(Mutex::new(BTreeMap::new())),
            last_eviction_warning: None,
        }
    }

    /// Serves a new connection, first closing the least recently active one when the cap
    /// is reached.
    fn admit<S>(&mut self, stream: S, state: &Arc<State>, shutdown: &CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let now = millis_since(self.epoch);
        let active = Arc::new(AtomicU64::new(now));
        let close = shutdown.child_token();
        let id = self.next_id;
        self.next_id += 1;
        {
            let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if open.len() >= self.limits.max_connections.max(1) {
                let stalest = open.iter().min_by_key(|(_, c)| c.active.load(Ordering::Relaxed)).map(|(id, _)| *id);
                if let Some(conn) = stalest.and_then(|id| open.remove(&id)) {
                    conn.close.cancel();
                }
                if self.last_eviction_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    warn!(
                        max_connections = self.limits.max_connections,
                        "admin API connection cap reached: closing the least recently active connection"
                    );
                    self.last_eviction_warning = Some(Instant::now());
                }
            }
            open.insert(id, ConnHandle { active: active.clone(), close: close.clone() });
        }
        let io = Activity { inner: stream, active: active.clone(), epoch: self.epoch };
        let (state, open, limits, epoch) = (state.clone(), self.open.clone(), self.limits, self.epoch);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::select! {
                _ = close.cancelled() => {}
                _ = idle(&active, epoch, limits.idle_timeout) => debug!("admin connection idle: closed"),
                result = conn => if let Err(e) = result { debug!(error = %e, "admin connection ended") },
            }
            open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id);
        });
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Returns once the connection has moved no byte for `limit`.
async fn idle(active: &AtomicU64, epoch: Instant, limit: Duration) {
    loop {
        let last = epoch + Duration::from_millis(active.load(Ordering::Relaxed));
        let deadline = last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A connection that records when it last moved a byte.
struct Activity<S> {
    inner: S,
    active: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.active.store(millis_since(self.epoch), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(resp) = status_page::respond(req.method(), path, &state.history) {
        return resp;
    }
    if !matches!(path, "/routes" | "/healthz" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the admin API serves /, /history, /routes, /healthz and /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/routes" => {
            let rows =
                routes_view::rows(&state.view.table().status(), &state.view.provider_errors(), SystemTime::now());
            match serde_json::to_vec_pretty(&rows) {
                Ok(mut body) => {
                    body.push(b'\n');
                    with_type(StatusCode::OK, body, "application/json")
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding routes: {e}\n")),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => {
            let openmetrics = req
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            match state.metrics.encode(openmetrics) {
                Ok((body, content_type)) => with_type(StatusCode::OK, body.into_bytes(), content_type),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics: {e}\n")),
            }
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, body.as_bytes().to_vec(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Writes the bound admin address to `file` (atomically, by rename) for scripts and tests
/// that asked for port 0.
pub fn write_addr_file(file: &Path, addr: &AdminAddr) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    info!(admin = %addr, file = %file.display(), "admin address written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_parse_and_print_back() {
        for s in ["127.0.0.1:7031", "[::1]:9000", "unix:/run/dockward.sock", "0.0.0.0:0"] {
            assert_eq!(s.parse::<AdminAddr>().unwrap().to_string(), s);
        }
        assert_eq!("localhost:80".parse::<AdminAddr>().unwrap(), AdminAddr::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!(DEFAULT_ADMIN_ADDR.parse::<AdminAddr>().unwrap().to_string(), DEFAULT_ADMIN_ADDR);
        for bad in ["", "7031", "example.com:80", "unix:", "127.0.0.1"] {
            let e = bad.parse::<AdminAddr>().unwrap_err();
            assert!(e.contains("admin address") || e.contains("socket path"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_connection_cap_is_a_sixteenth_of_the_descriptors_within_bounds() {
        assert_eq!(AdminLimits::for_nofile(1024).max_connections, 64);
        assert_eq!(AdminLimits::for_nofile(64).max_connections, 16);
        assert_eq!(AdminLimits::for_nofile(1 << 20).max_connections, 1024);
        let limits = AdminLimits::for_nofile(4096);
        assert_eq!((limits.header_timeout, limits.idle_timeout), (DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_no_byte_moved_for_the_limit() {
        let epoch = Instant::now();
        let active = Arc::new(AtomicU64::new(0));
        let limit = Duration::from_secs(60);
        let watch = tokio::spawn({
            let active = active.clone();
            async move { idle(&active, epoch, limit).await }
        });
        // Activity at 50 s postpones the end to 110 s.
        tokio::time::sleep(Duration::from_secs(50)).await;
        active.store(millis_since(epoch), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!watch.is_finished(), "closed 59 s after the last byte");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(watch.is_finished(), "still open 61 s after the last byte");
    }

    #[test]
    fn a_v4_mapped_loopback_address_is_loopback() {
        for ip in ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_unix_socket_is_owner_only_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let addr = AdminAddr::Unix(path.clone());
        let first = AdminListener::bind(&addr).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = AdminListener::bind(&addr).await.err().expect("a live socket must not be taken over");
        assert!(err.to_string().contains("another process answers on it"), "{err}");
        drop(first);
        let _second = AdminListener::bind(&addr).await.unwrap();

        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = AdminListener::bind(&AdminAddr::Unix(file)).await.err().unwrap();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }
}
