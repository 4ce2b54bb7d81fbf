//! Reading one event stream of the engine into the session's channel.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::mpsc;

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
    let options = EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
    let mut stream = std::pin::pin!(docker.events(Some(options)));
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(ev) => Incoming::Event(ev, stream_kind),
            Err(e) => {
                let _ = tx.send(Incoming::Failed(e));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Ended);
}
