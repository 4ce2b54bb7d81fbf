//! Which engine events matter and what each one asks the session to look at again: the
//! event filters, and the sorting of arriving events into a [`Batch`]. Pure: the stream
//! itself is read in [`crate::io::event_stream`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use tracing::debug;

use crate::swarm::SWARM_SERVICE_ID_LABEL;
use crate::views::short_id;

/// The container events that can change a container's routes.
pub const WATCHED_EVENTS: &[&str] =
    &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "health_status"];

/// Which event stream an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Container events, with the configured label filters.
    Containers,
    /// Service events and swarm tasks' container events (swarm managers only).
    Swarm,
}

/// What the event readers hand the session.
pub(crate) enum Incoming {
    Event(EventMessage, Stream),
    Failed(bollard::errors::Error),
    Ended,
}

/// What changed in the events of one batch.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) containers: BTreeMap<String, &'static str>,
    pub(crate) services: BTreeMap<String, &'static str>,
}

/// Records an event in the batch; the last action wins for the log line.
pub(crate) fn note_event(batch: &mut Batch, dead: Option<&mut HashSet<String>>, ev: EventMessage, stream: Stream) {
    let typ = ev.typ;
    let Some(actor) = ev.actor else { return };
    let Some(id) = actor.id else { return };
    let action = ev.action.unwrap_or_default();
    let action = action.split(':').next().unwrap_or("").trim().to_string();
    match stream {
        Stream::Containers => {
            let action: &'static str = WATCHED_EVENTS.iter().find(|w| **w == action).copied().unwrap_or("event");
            debug!(id = short_id(&id), action, "container event");
            batch.containers.insert(id, action);
        }
        Stream::Swarm if typ == Some(EventMessageTypeEnum::SERVICE) => {
            let action: &'static str = SERVICE_EVENTS.iter().find(|w| **w == action).copied().unwrap_or("event");
            debug!(service = short_id(&id), action, "service event");
            batch.services.insert(id, action);
        }
        Stream::Swarm => {
            // A task's container started or stopped: the swarm sends no event for the task
            // itself, so its service is listed again.
            let Some(service) = actor.attributes.as_ref().and_then(|a| a.get(SWARM_SERVICE_ID_LABEL)) else { return };
            let Some(dead) = dead else { return };
            match action.as_str() {
                "start" => {
                    dead.remove(&id);
                }
                "die" | "stop" | "kill" | "destroy" => {
                    dead.insert(id.clone());
                }
                _ => return,
            }
            debug!(service = short_id(service), container = short_id(&id), action = %action, "task container event");
            batch.services.insert(service.clone(), "task");
        }
    }
}

/// The service events that can change a service's routes.
pub const SERVICE_EVENTS: &[&str] = &["create", "update", "remove"];

/// The container events of a swarm task that make the watcher list its service again.
pub(crate) const TASK_CONTAINER_EVENTS: &[&str] = &["start", "die", "stop", "kill", "destroy"];

/// The filters of the container event stream.
pub(crate) fn container_event_filters(label_filters: &[String]) -> HashMap<String, Vec<String>> {
    let mut filters: HashMap<String, Vec<String>> = [
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), WATCHED_EVENTS.iter().map(|e| e.to_string()).collect()),
    ]
    .into_iter()
    .collect();
    if !label_filters.is_empty() {
        filters.insert("label".to_string(), label_filters.to_vec());
    }
    filters
}

/// The filters of the swarm event stream: service events, and container events (a task's
/// container carries [`SWARM_SERVICE_ID_LABEL`]; others are dropped on arrival). No label
/// filter: service events carry no labels, so the service's are checked when it is listed.
pub(crate) fn swarm_event_filters() -> HashMap<String, Vec<String>> {
    let events: BTreeSet<&str> = SERVICE_EVENTS.iter().chain(TASK_CONTAINER_EVENTS).copied().collect();
    [
        ("type".to_string(), vec!["service".to_string(), "container".to_string()]),
        ("event".to_string(), events.into_iter().map(str::to_string).collect()),
    ]
    .into_iter()
    .collect()
}
