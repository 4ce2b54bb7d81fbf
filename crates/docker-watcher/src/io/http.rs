//! A bare `GET` to the engine, for the one answer bollard's models leave incomplete.
//!
//! bollard 0.21 models a swarm task without its `NetworksAttachments` (the Engine API's
//! specification does not list them, the engine sends them), and a task's address on its
//! networks is exactly what a route to it needs. So `/tasks` is read here, over a connection
//! of its own to the same engine, with the API version bollard negotiated: over `unix://` (or
//! a bare socket path), `tcp://` and `http://`, or over TLS as bollard's requests are
//! ([`crate::io::tls`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::error::WatchError;
use crate::io::tls::TlsEngine;

/// Where and how to send raw requests: the engine address, the negotiated API version, a
/// timeout per request.
#[derive(Debug, Clone)]
pub(crate) struct RawClient {
    host: String,
    version: String,
    timeout: Duration,
    tls: Option<Arc<TlsEngine>>,
}

impl RawClient {
    /// A client for `host` (as given to [`connect`](crate::io::engine::connect)) speaking API
    /// `version` (`1.41`), over TLS when `tls` is given (as [`Connected`](crate::io::engine::Connected) has it).
    pub(crate) fn new(host: &str, version: String, timeout: Duration, tls: Option<Arc<TlsEngine>>) -> Self {
        RawClient { host: host.to_string(), version, timeout, tls }
    }

    /// `GET /v<version><path>` with `query` pairs, the answer read as JSON `T`.
    ///
    /// An answer with an error status is [`WatchError::Answer`] with that status.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        request: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, WatchError> {
        let mut uri = format!("/v{}{path}", self.version);
        for (i, (k, v)) in query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&percent_encode(k));
            uri.push('=');
            uri.push_str(&percent_encode(v));
        }
        let fail = |status: Option<u16>, message: String| WatchError::Answer {
            host: self.host.clone(),
            request,
            status,
            message,
        };
        let answer = match tokio::time::timeout(self.timeout, self.send(&uri)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(message)) => return Err(fail(None, message)),
            Err(_) => return Err(fail(None, format!("no answer within {:?}", self.timeout))),
        };
        let (status, body) = answer;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            // The engine's errors are `{"message": "..."}`.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            return Err(fail(Some(status), message));
        }
        serde_json::from_slice(&body).map_err(|e| fail(Some(status), format!("unreadable answer: {e}")))
    }

    async fn send(&self, uri: &str) -> Result<(u16, Bytes), String> {
        let host = self.host.as_str();
        if let Some(tls) = &self.tls {
            let stream = tls.dial().await.map_err(|e| e.to_string())?;
            return exchange(stream, tls.authority(), uri, &|e| tls.explain(e)).await;
        }
        if let Some(path) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host)) {
            let stream = UnixStream::connect(path).await.map_err(|e| format!("connecting to {path}: {e}"))?;
            return exchange(stream, "localhost", uri, &|_| None).await;
        }
        if let Some(addr) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
            let addr = addr.trim_end_matches('/');
            let stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
            return exchange(stream, addr, uri, &|_| None).await;
        }
        Err(format!("engine address {host:?} is not supported for swarm task listing (unix://, tcp://, http://)"))
    }
}

/// What a failure means in words, when the transport knows better than hyper's message
/// (a TLS alert, say).
type Explain<'a> = &'a (dyn Fn(&(dyn std::error::Error + 'static)) -> Option<String> + Sync);

async fn exchange<S>(stream: S, authority: &str, uri: &str, explain: Explain<'_>) -> Result<(u16, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| explain(&e).unwrap_or_else(|| format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        // Its errors surface through send_request below.
        let _ = conn.await;
    });
    let req = Request::get(uri)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| explain(&e).unwrap_or_else(|| format!("the request failed: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| explain(&e).unwrap_or_else(|| format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode(r#"{"service":["a b"]}"#), "%7B%22service%22%3A%5B%22a%20b%22%5D%7D");
        assert_eq!(percent_encode("plain-1.2_~"), "plain-1.2_~");
    }

    #[tokio::test]
    async fn an_unreachable_socket_is_an_answer_error_naming_the_request() {
        let client = RawClient::new("unix:///nonexistent/docker.sock", "1.41".into(), Duration::from_secs(1), None);
        let err = client.get_json::<serde_json::Value>("tasks", "/tasks", &[]).await.unwrap_err();
        assert!(
            err.to_string().starts_with("Docker engine at unix:///nonexistent/docker.sock: tasks failed: connecting"),
            "{err}"
        );
    }
}
