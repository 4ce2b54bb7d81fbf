//! The admin API: `GET /routes`, `GET /healthz` and `GET /metrics` over HTTP/1.1, on a
//! loopback TCP address or a unix socket.
//!
//! It binds loopback by default ([`DEFAULT_ADMIN_ADDR`]) and logs a warning when told to
//! listen on any other address: it has no authentication. A unix socket is created with
//! mode 0600 (only dockward's own user may connect).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::View;
use crate::history::History;
use crate::metrics::Metrics;
use crate::routes_view;
use crate::status_page;

/// The admin API's address when neither `--admin` nor `DOCKWARD_ADMIN` is given.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7031";

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
                if !tcp.ip().is_loopback() {
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

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(listener: AdminListener, view: View, shutdown: CancellationToken) {
    let history = History::new();
    tokio::spawn(history.clone().run(view.clone(), shutdown.child_token()));
    let state = Arc::new(State { metrics: Metrics::new(view.clone()), view, history });
    match &listener {
        AdminListener::Tcp(l) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => spawn_conn(stream, state.clone(), shutdown.clone()),
                    Err(e) => accept_error(e).await,
                },
            }
        },
        AdminListener::Unix(l, _) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => spawn_conn(stream, state.clone(), shutdown.clone()),
                    Err(e) => accept_error(e).await,
                },
            }
        },
    }
    if let AdminListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    debug!("admin API stopped");
}

async fn accept_error(e: std::io::Error) {
    // Out of file descriptors and the like: back off instead of spinning.
    warn!(error = %e, "admin API accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// What every request handler reads.
struct State {
    view: View,
    metrics: Metrics,
    /// The status page's samples (`GET /history`).
    history: History,
}

fn spawn_conn<S>(stream: S, state: Arc<State>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = conn => if let Err(e) = result { debug!(error = %e, "admin connection ended") },
        }
    });
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(resp) = status_page::respond(req.method(), path, &state.history) {
        return resp;
    }
    if !matches!(path, "/routes" | "/healthz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found; the admin API serves /routes, /healthz and /metrics\n");
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
