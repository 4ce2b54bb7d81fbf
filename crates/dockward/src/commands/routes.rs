//! `dockward routes`: asks a running controller's admin API for its routes.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::admin::AdminAddr;
use crate::cli::RoutesArgs;
use crate::routes_view::{RouteRow, render_table};
use crate::table;

/// How long the admin API may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read from the admin API. `GET /routes` is about 750 bytes a route
/// (1.5 MB for 2,000), so 64 MiB is some 80,000 routes; a port that streams without end
/// (not an admin API at all) is cut off here instead of filling memory until the timeout.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Prints the routes as a table, or as the admin API's JSON with `--json`.
pub async fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let addr = &args.admin.admin;
    let body = get(addr, "/routes").await?;
    let rows: Vec<RouteRow> = serde_json::from_slice(&body)
        .with_context(|| format!("{addr} answered, but not with a routes list; is it a dockward admin API?"))?;
    if args.json {
        // As the controller sent it: a newer controller's extra fields are kept.
        std::io::stdout().write_all(&body).context("writing to stdout")?;
    } else {
        print!("{}", render_table(&rows));
    }
    Ok(())
}

/// GETs `path` from the admin API at `addr`; any status but 2xx is an error.
pub async fn get(addr: &AdminAddr, path: &str) -> anyhow::Result<Bytes> {
    let answer = async {
        let unreachable = || {
            format!(
                "no dockward controller answers at {addr} (is `dockward run` running? \
                 its admin address is set with --admin or DOCKWARD_ADMIN)"
            )
        };
        match addr {
            AdminAddr::Tcp(tcp) => {
                let stream = TcpStream::connect(tcp).await.with_context(unreachable)?;
                request(stream, &tcp.to_string(), path).await.with_context(|| format!("asking {addr} for {path}"))
            }
            AdminAddr::Unix(socket) => {
                let stream = match UnixStream::connect(socket).await {
                    Ok(stream) => stream,
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "permission denied opening {addr}: the socket is mode 0600; run as the user \
                             dockward runs as (or root)"
                        )));
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(unreachable())),
                };
                request(stream, "localhost", path).await.with_context(|| format!("asking {addr} for {path}"))
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, answer).await {
        Ok(result) => result,
        Err(_) => bail!("no answer from {addr} within {}s", TIMEOUT.as_secs()),
    }
}

async fn request<S>(stream: S, host: &str, path: &str) -> anyhow::Result<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake failed")?;
    tokio::spawn(async move {
        // Errors surface through send_request below.
        let _ = conn.await;
    });
    let req = Request::get(path).header(HOST, host).body(Empty::<Bytes>::new()).context("building the request")?;
    let resp = sender.send_request(req).await.context("the request failed")?;
    let status = resp.status();
    let body = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            bail!("the answer is larger than {} MiB: is this a dockward admin API?", MAX_ANSWER >> 20)
        }
        Err(e) => return Err(anyhow::anyhow!(e).context("reading the answer")),
    };
    if !status.is_success() {
        // Whatever answered chose this text: escaped and clipped before it reaches a terminal.
        bail!("answered {status}: {}", table::cell(String::from_utf8_lossy(&body).trim()));
    }
    Ok(body)
}
