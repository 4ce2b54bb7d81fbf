//! TLS to an engine, as the docker CLI speaks it with `--tlsverify`: the engine's certificate
//! must be signed by the CA in `ca.pem`, and dockward presents `cert.pem` with `key.pem` (both,
//! or neither for an engine that asks for no client certificate).
//!
//! Only that CA is trusted, not the system's: an engine is identified by the CA its operator
//! chose, and an image with no CA bundle works as well as one with. The files are read at
//! every connect, so renewed certificates are picked up at the next reconnect, and a missing
//! or unreadable file is an error naming it (the watcher retries).
//!
//! bollard talks through [`TlsEngine::docker`], a custom transport: one TCP connection and
//! TLS session per request (as bollard's own clients keep no idle connection), so the same
//! [`TlsEngine::dial`] serves bollard and the bare `GET`s of [`crate::io::http`]. Handshake
//! failures are told in words ([`TlsEngine::explain`]): which certificate was refused, by
//! whom, and what to check.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::{BollardRequest, Docker};
use hyper::body::{Body, Incoming};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The port of a `tcp://HOST` engine given without one: the Docker daemon's TLS port.
pub(crate) const DEFAULT_TLS_PORT: u16 = 2376;

/// The certificate authority file in a certificate directory.
pub const CA_FILE: &str = "ca.pem";
/// dockward's client certificate (chain) in a certificate directory.
pub const CERT_FILE: &str = "cert.pem";
/// The client certificate's private key in a certificate directory.
pub const KEY_FILE: &str = "key.pem";

/// One engine reached over TLS: where it is, the name its certificate must carry, and the
/// client configuration read from its certificate directory.
#[derive(Clone)]
pub(crate) struct TlsEngine {
    /// `HOST:PORT`, as connected to and sent as `Host`.
    authority: String,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    dir: PathBuf,
    /// Whether `cert.pem` and `key.pem` were found and are presented.
    client_cert: bool,
}

impl std::fmt::Debug for TlsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsEngine").field("authority", &self.authority).field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl TlsEngine {
    /// Reads the certificate directory `dir` for the engine at `url` (`tcp://HOST[:PORT]` or
    /// `https://HOST[:PORT]`). The error names the file at fault and what is wrong with it.
    pub(crate) fn load(url: &str, dir: &Path) -> Result<TlsEngine, String> {
        let (authority, host) = authority(url)?;
        let server_name = ServerName::try_from(host.as_str())
            .map_err(|_| format!("{host:?} is neither a host name nor an IP address"))?
            .to_owned();
        let ca = dir.join(CA_FILE);
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&ca)? {
            roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots);
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (config, client_cert) = match (exists(&cert)?, exists(&key)?) {
            // As the docker CLI: without both files, no client certificate is offered.
            (false, false) => (builder.with_no_client_auth(), false),
            (true, false) => return Err(format!("{}: missing, while {CERT_FILE} is there (give both)", key.display())),
            (false, true) => return Err(format!("{}: missing, while {KEY_FILE} is there (give both)", cert.display())),
            (true, true) => {
                let chain = read_certs(&cert)?;
                let key_der = read_key(&key)?;
                let config = builder.with_client_auth_cert(chain, key_der).map_err(|e| match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        format!("{}: not the key of {}", key.display(), cert.display())
                    }
                    e => format!("{} with {}: not a usable certificate and key: {e}", cert.display(), key.display()),
                })?;
                (config, true)
            }
        };
        Ok(TlsEngine { authority, server_name, config: Arc::new(config), dir: dir.to_path_buf(), client_cert })
    }

    /// A bollard client for this engine, with `timeout` on every request.
    pub(crate) fn docker(self: &Arc<Self>, timeout: Duration) -> Result<Docker, BollardError> {
        let engine = Arc::clone(self);
        let transport = move |req: BollardRequest| {
            let engine = Arc::clone(&engine);
            async move { engine.send(req).await }
        };
        let docker = Docker::connect_with_custom_transport(
            transport,
            Some(format!("https://{}", self.authority)),
            timeout.as_secs().max(1),
            bollard::API_DEFAULT_VERSION,
        )?;
        Ok(docker.with_timeout(timeout))
    }

    /// `HOST:PORT`, for the `Host` header of bare requests.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// A TLS connection to the engine, handshake done. The error says in words what failed.
    pub(crate) async fn dial(&self) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| io::Error::other(self.explain(&e).unwrap_or_else(|| format!("TLS handshake: {e}"))))
    }

    /// Sends one request over a connection of its own; the answer's body streams from it.
    async fn send<B>(&self, req: Request<B>) -> Result<Response<Incoming>, BollardError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let stream = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Its errors reach the request below.
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        // bollard writes absolute URIs (https://HOST:PORT/v1.41/...); a server expects the
        // path alone, with the authority in Host.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = path.parse::<Uri>().map_err(|e| io::Error::other(format!("request path {path:?}: {e}")))?;
        let host = HeaderValue::from_str(&self.authority).map_err(|e| io::Error::other(e.to_string()))?;
        parts.headers.insert(HOST, host);
        sender.send_request(Request::from_parts(parts, body)).await.map_err(|e| match self.explain(&e) {
            Some(text) => BollardError::from(io::Error::other(text)),
            None => BollardError::from(e),
        })
    }

    /// What a failure whose causes include a TLS error means, in words; `None` when none of
    /// its causes is one.
    pub(crate) fn explain(&self, err: &(dyn StdError + 'static)) -> Option<String> {
        let tls = find_tls_error(err)?;
        let ca = self.dir.join(CA_FILE);
        let text = match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                format!("the engine's certificate is not signed by the CA in {}", ca.display())
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the engine's certificate is not issued for {:?} (it must name it as a subject alternative name): {tls}",
                self.server_name.to_str()
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => format!("the engine's certificate is out of its validity period (or this clock is wrong): {tls}"),
            rustls::Error::AlertReceived(alert) => match (alert, self.client_cert) {
                (AlertDescription::CertificateRequired, _)
                | (AlertDescription::BadCertificate | AlertDescription::HandshakeFailure, false) => format!(
                    "the engine requires a client certificate, and {} has no {CERT_FILE} and {KEY_FILE}",
                    self.dir.display()
                ),
                (
                    AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::CertificateExpired
                    | AlertDescription::UnsupportedCertificate,
                    true,
                ) => format!(
                    "the engine refused dockward's client certificate {} ({alert:?}): it must be signed by the CA the \
                     engine trusts (its --tlscacert) and be valid now",
                    self.dir.join(CERT_FILE).display()
                ),
                _ => format!("the engine ended the TLS handshake: {tls}"),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::PeerSentOversizedRecord => format!(
                "{} does not speak TLS (a plain-HTTP engine or socket proxy is reached with http://HOST:PORT and \
                 no certificates)",
                self.authority
            ),
            other => format!("TLS: {other}"),
        };
        Some(format!("TLS: {text}"))
    }
}

/// The first [`rustls::Error`] among `err` and its causes. An [`io::Error`] hides the error
/// it wraps from `source()`, so each one is opened too.
fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) =
            e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref())
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

/// `HOST:PORT` and `HOST` of `tcp://HOST[:PORT][/]` or `https://...`; the port defaults to
/// [`DEFAULT_TLS_PORT`].
pub(crate) fn authority(url: &str) -> Result<(String, String), String> {
    let rest = ["tcp://", "https://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| format!("{url}: TLS needs tcp://HOST:PORT or https://HOST:PORT"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
            None => return Err(format!("{url}: unclosed '[' in the address")),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let port = match port {
        None => DEFAULT_TLS_PORT,
        Some(p) => p.parse::<u16>().map_err(|_| format!("{url}: port {p:?} is not a port number"))?,
    };
    let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    Ok((format!("{bracketed}:{port}"), host.to_string()))
}

/// Whether `path` exists; an error (naming it) when that cannot be told.
fn exists(path: &Path) -> Result<bool, String> {
    path.try_exists().map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `path`, the error naming it.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The PEM certificates in `path`: at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate (expected -----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// The PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: holds no private key (expected -----BEGIN PRIVATE KEY----- or similar)", path.display())
        }
        e => format!("{}: not a PEM private key: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_defaults_to_the_tls_port_and_keeps_ipv6_brackets() {
        let a = |url: &str| authority(url);
        assert_eq!(a("tcp://10.0.0.5:2376"), Ok(("10.0.0.5:2376".into(), "10.0.0.5".into())));
        assert_eq!(a("https://nas.lan/"), Ok(("nas.lan:2376".into(), "nas.lan".into())));
        assert_eq!(a("tcp://[fd00::5]:3000"), Ok(("[fd00::5]:3000".into(), "fd00::5".into())));
        assert_eq!(a("tcp://[::1]"), Ok(("[::1]:2376".into(), "::1".into())));
        assert!(a("unix:///var/run/docker.sock").unwrap_err().contains("TLS needs tcp://"));
        assert!(a("tcp://:2376").unwrap_err().contains("no host"));
        assert!(a("tcp://h:x").unwrap_err().contains("\"x\" is not a port"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = TlsEngine::load("tcp://127.0.0.1:2376", Path::new("/nonexistent/certs")).unwrap_err();
        assert!(err.starts_with("/nonexistent/certs/ca.pem: No such file or directory"), "{err}");
    }

    /// A CA, an engine certificate for 127.0.0.1 (PEM, with its key) and client sets (docker
    /// CLI layout) under `dir`: `good/` signed by the CA, `foreign/` by another CA.
    fn certificates(dir: &Path) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'static, KeyPair>, names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            (CertificateParams::new(names).unwrap().signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
        };
        let (ours, other) = (ca("ours"), ca("other"));
        let (server_cert, server_key) = leaf(&ours, vec!["127.0.0.1".into()]);
        for (set, issuer) in [("good", &ours), ("foreign", &other)] {
            let (cert, key) = leaf(issuer, Vec::new());
            std::fs::create_dir_all(dir.join(set)).unwrap();
            std::fs::write(dir.join(set).join(CA_FILE), ours.pem()).unwrap();
            std::fs::write(dir.join(set).join(CERT_FILE), cert).unwrap();
            std::fs::write(dir.join(set).join(KEY_FILE), key).unwrap();
        }
        (ours.pem(), server_cert, server_key)
    }

    /// A TLS front on 127.0.0.1 for the mock engine's unix socket, requiring a client
    /// certificate of the CA `ca_pem`, as `dockerd --tlsverify` does. Returns its URL.
    async fn tls_front(engine: &crate::mock_engine::MockEngine, ca_pem: &str, cert: &str, key: &str) -> String {
        use rustls::server::WebPkiClientVerifier;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = engine.host.strip_prefix("unix://").unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, socket) = (acceptor.clone(), socket.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut unix).await;
                });
            }
        });
        format!("tcp://{addr}")
    }

    #[tokio::test]
    async fn bollard_and_bare_requests_go_over_tls_and_a_refused_client_certificate_is_told() {
        use crate::io::http::RawClient;
        let engine = crate::mock_engine::MockEngine::start(&[
            ("/containers/json", 200, serde_json::json!([])),
            ("/tasks", 200, serde_json::json!([{"ID": "t1"}])),
        ]);
        let dir = std::env::temp_dir().join(format!("dockward-tls-unit-{}", std::process::id()));
        let (ca, cert, key) = certificates(&dir);
        let url = tls_front(&engine, &ca, &cert, &key).await;
        let timeout = Duration::from_secs(5);

        // The right certificates: bollard negotiates and lists; the bare GET reads /tasks.
        let connected = crate::io::engine::connect(&url, Some(&dir.join("good")), timeout).await.unwrap();
        assert_eq!(connected.docker.client_version().to_string(), "1.41");
        assert!(connected.docker.list_containers(None).await.unwrap().is_empty());
        let raw = RawClient::new(&url, "1.41".into(), timeout, connected.tls.clone());
        let tasks: serde_json::Value = raw.get_json("tasks", "/tasks", &[("filters", "{}")]).await.unwrap();
        assert_eq!(tasks, serde_json::json!([{"ID": "t1"}]));
        assert!(engine.asked("/tasks?filters=%7B%7D"), "{:?}", engine.requests);

        // A client certificate of another CA: the engine's refusal, in words.
        let err = crate::io::engine::connect(&url, Some(&dir.join("foreign")), timeout).await.unwrap_err().chain();
        let cert = dir.join("foreign").join(CERT_FILE);
        let says = format!("TLS: the engine refused dockward's client certificate {}", cert.display());
        assert!(err.starts_with(&format!("cannot reach the Docker engine at {url}: {says}")), "{err}");
        let foreign = Arc::new(TlsEngine::load(&url, &dir.join("foreign")).unwrap());
        let raw = RawClient::new(&url, "1.41".into(), timeout, Some(foreign));
        let err = raw.get_json::<serde_json::Value>("tasks", "/tasks", &[]).await.unwrap_err().to_string();
        assert!(err.contains(&says), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
