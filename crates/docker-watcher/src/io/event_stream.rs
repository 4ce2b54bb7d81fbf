//! Reading one event stream of the engine into the session's channel.
//!
//! Podman sends no response headers on `GET /events` until its first event, so on a quiet
//! engine the request times out (bollard's timeout covers the headers only). Such a timeout
//! before the first event is no failure: the stream is opened again with the same `since`,
//! so an event that came between the two requests is still delivered.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;

use crate::events::{Incoming, Stream};

/// Streams events matching `filters` into `tx` until the stream ends or its owner drops the
/// reader.
pub(crate) async fn read_events(
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
    stream_kind: Stream,
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs().saturating_sub(1)).unwrap_or(0);
    loop {
        let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters.clone()) };
        let mut stream = std::pin::pin!(docker.events(Some(options)));
        let mut answered = false;
        let mut quiet = false;
        while let Some(item) = stream.next().await {
            let msg = match item {
                Ok(ev) => Incoming::Event(ev, stream_kind),
                Err(BollardError::RequestTimeoutError) if !answered => {
                    debug!("no answer on the event stream before its first event (Podman); opening it again");
                    quiet = true;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Failed(e));
                    return;
                }
            };
            answered = true;
            if tx.send(msg).is_err() {
                return;
            }
        }
        if !quiet {
            let _ = tx.send(Incoming::Ended);
            return;
        }
        if tx.is_closed() {
            return;
        }
    }
}
