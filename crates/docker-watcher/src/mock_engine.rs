//! A fake Docker engine on a unix socket, for the watcher's unit tests: fixed JSON answers by
//! path, an event stream that stays open and silent, and every request recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// The status that, given for a path, makes the engine answer nothing at all (no headers),
/// as Podman does on `/events` until the first event.
pub(crate) const WITHHOLD: u16 = 599;

/// One fake engine; stops when dropped.
pub(crate) struct MockEngine {
    /// `unix:///…/docker.sock`.
    pub(crate) host: String,
    /// Every request's path (without the `/vX.Y` prefix) and query, in order.
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
    task: JoinHandle<()>,
}

impl Drop for MockEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A directory removed when dropped (the crate has no tempfile dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl MockEngine {
    /// Serves `answers` (path without the version prefix → status and JSON body); `/_ping`,
    /// `/version` and `/events` are answered unless given; anything else is a 404.
    pub(crate) fn start(answers: &[(&str, u16, serde_json::Value)]) -> MockEngine {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dockward-mock-engine-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the mock engine's socket");
        let mut table: HashMap<String, (u16, String)> = HashMap::new();
        table.insert("/_ping".into(), (200, "OK".into()));
        table.insert(
            "/version".into(),
            (200, r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#.into()),
        );
        for (path, status, body) in answers {
            table.insert(path.to_string(), (*status, body.to_string()));
        }
        let table = Arc::new(table);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let table = table.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let table = table.clone();
                        let seen = seen.clone();
                        async move {
                            let resp = answer(&table, &seen, &req);
                            if resp.status().as_u16() == WITHHOLD {
                                // No headers, ever: Podman's quiet event stream.
                                futures::future::pending::<()>().await;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockEngine { host: format!("unix://{}", socket.display()), requests, _dir: TempDir(dir), task }
    }

    /// How many requests' paths start with `prefix`.
    pub(crate) fn count(&self, prefix: &str) -> usize {
        self.requests.lock().map(|r| r.iter().filter(|p| p.starts_with(prefix)).count()).unwrap_or(0)
    }

    /// Whether some request's path starts with `prefix`.
    pub(crate) fn asked(&self, prefix: &str) -> bool {
        self.requests.lock().map(|r| r.iter().any(|p| p.starts_with(prefix))).unwrap_or(false)
    }
}

fn answer(
    table: &HashMap<String, (u16, String)>,
    seen: &Mutex<Vec<String>>,
    req: &Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path();
    // `/v1.41/containers/json` → `/containers/json`.
    let path = match path.strip_prefix("/v").and_then(|rest| rest.split_once('/')) {
        Some((version, rest)) if version.contains('.') => format!("/{rest}"),
        _ => path.to_string(),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Ok(mut seen) = seen.lock() {
        seen.push(format!("{path}{query}"));
    }
    let (status, body) = match table.get(&path) {
        Some((status, body)) => (*status, BoxBody::new(Full::new(Bytes::from(body.clone())))),
        None if path == "/events" => {
            // Open and silent: a stream that never yields.
            let silent = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            (200, StreamBody::new(silent).boxed())
        }
        None => (404, BoxBody::new(Full::new(Bytes::from(r#"{"message":"page not found"}"#)))),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}
