//! The controller's own security.
//!
//! - The Docker API is used read-only: dockward runs against a filtering proxy (on a unix
//!   socket, in front of the engine's) that lets through only `GET` on the endpoints dockward
//!   needs, answers 403 to anything else and records every request. A labelled container
//!   must still become a working route, and nothing may have been refused.
//! - The admin API warns when it listens beyond loopback.
//!
//! The Docker test prints SKIP without an engine (fails with DOCKWARD_REQUIRE_DOCKER=1).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, engine_socket, free_tcp_port, tcp_echo_eventually,
};
use dockward_tests::dockward::Dockward;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

/// Whether `GET path` is one of the read-only requests dockward may make: engine identity,
/// container list and inspect, events, and for swarm managers info, services, tasks and the
/// node of a task. Versioned paths (`/v1.41/containers/json`) are judged without the version.
fn read_only_endpoint(path: &str) -> bool {
    let path = match path.strip_prefix("/v").and_then(|rest| rest.split_once('/')) {
        Some((version, rest)) if version.chars().all(|c| c.is_ascii_digit() || c == '.') => format!("/{rest}"),
        _ => path.to_string(),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["_ping"]
            | ["version"]
            | ["info"]
            | ["events"]
            | ["containers", "json"]
            | ["containers", _, "json"]
            | ["services"]
            | ["services", _]
            | ["tasks"]
            | ["tasks", _]
            | ["nodes", _]
    ) && !segments.iter().any(|s| s.is_empty() || *s == "..")
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    allowed: bool,
}

/// A filtering Docker API proxy on a unix socket, forwarding allowed requests to `upstream`.
struct FilterProxy {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

type Body = BoxBody<Bytes, hyper::Error>;

impl FilterProxy {
    fn start(upstream: PathBuf) -> FilterProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the proxy socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (upstream, record) = (upstream.clone(), record.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (upstream, record) = (upstream.clone(), record.clone());
                        async move { Ok::<_, Infallible>(filter(req, &upstream, &record).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FilterProxy { socket, seen, task, _dir: dir }
    }

    /// The address for `--docker-host`.
    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FilterProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

async fn filter(req: Request<Incoming>, upstream: &Path, record: &Mutex<Vec<Seen>>) -> Response<Body> {
    let allowed = req.method() == Method::GET && read_only_endpoint(req.uri().path());
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    record.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        method: req.method().clone(),
        path: path.clone(),
        allowed,
    });
    if !allowed {
        return plain(
            StatusCode::FORBIDDEN,
            format!("{} {path} is not allowed by the read-only proxy\n", req.method()),
        );
    }
    let forwarded = async {
        let stream = UnixStream::connect(upstream).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())
    };
    match forwarded.await {
        Ok(resp) => resp.map(|body| body.boxed()),
        Err(e) => plain(StatusCode::BAD_GATEWAY, format!("engine: {e}\n")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dockward_needs_only_read_only_docker_api_calls() {
    let case = "security_read_only_docker";
    let Some(engine) = TestEngine::connect(case).await else { return };
    let Some(upstream) = engine_socket() else {
        dockward_tests::skip::skip(
            "docker",
            case,
            "DOCKER_HOST is not a unix socket; the filtering proxy forwards to one",
        );
        return;
    };
    let proxy = FilterProxy::start(upstream);
    let host = proxy.host();
    let controller = tokio::task::spawn_blocking(move || DockwardWithDocker::start_at(Some(&host), case, None))
        .await
        .expect("start dockward");

    let (target, listen) = (free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let c = engine
        .run(&ContainerSpec::tcp_echo("ro", target, &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")]))
        .await;
    let name = c.name.clone();
    let controller = tokio::task::spawn_blocking(move || {
        controller.wait_row(&name, "svc", "listening", Duration::from_secs(15), |r| r["state"] == "listening");
        let addr = SocketAddr::from(([127, 0, 0, 1], listen));
        assert_eq!(tcp_echo_eventually(addr, b"read-only", Duration::from_secs(15)), b"read-only");
        controller
    })
    .await
    .expect("the route works");

    let seen = proxy.seen();
    let refused: Vec<&Seen> = seen.iter().filter(|s| !s.allowed).collect();
    assert!(
        refused.is_empty(),
        "dockward made calls a read-only proxy refuses: {refused:?}\nlog:\n{}",
        controller.log()
    );
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    for wanted in ["/containers/json", "/events"] {
        assert!(paths.iter().any(|p| p.contains(wanted)), "dockward went through the proxy for {wanted}: {paths:?}");
    }

    // The proxy does refuse writes: the check above is not vacuous.
    let sock = proxy.socket.clone();
    let status = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the proxy");
        s.write_all(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .expect("write");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("ask the proxy");
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let refused: Vec<Seen> = proxy.seen().into_iter().filter(|s| !s.allowed).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].method.as_str(), refused[0].path.as_str()), ("POST", "/v1.41/containers/create"));
    drop(c);
}

#[test]
fn the_read_only_filter_knows_versioned_paths_and_refuses_the_rest() {
    for ok in
        ["/_ping", "/v1.41/version", "/v1.41/containers/json", "/v1.41/containers/abc123/json", "/events", "/info"]
    {
        assert!(read_only_endpoint(ok), "{ok}");
    }
    for bad in [
        "/v1.41/containers/create",
        "/containers/abc/start",
        "/containers/abc/exec",
        "/exec/abc/start",
        "/images/json",
        "/v1.41/containers//json",
        "/containers/../json",
        "/volumes",
    ] {
        assert!(!read_only_endpoint(bad), "{bad}");
    }
}

#[test]
fn the_admin_api_warns_when_it_listens_beyond_loopback() {
    let open = Dockward::start_with("routes: {}\n", "0.0.0.0:0");
    assert!(open.admin.starts_with("0.0.0.0:"), "{}", open.admin);
    let log = open.log();
    let warning =
        log.lines().find(|l| l.contains("non-loopback address")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN") && warning.contains("it has no authentication"), "{warning}");

    let local = Dockward::start("routes: {}\n");
    assert!(!local.log().contains("non-loopback address"), "no warning on loopback:\n{}", local.log());
}
