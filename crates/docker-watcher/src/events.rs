//! Which engine events matter and what each one asks the session to look at again: the
//! event filters, and the sorting of arriving events into a [`Batch`]. Pure: the stream
//! itself is read in [`crate::io::event_stream`].
//!
//! Podman's Docker-compatible API filters events by Podman's own names, not Docker's: a
//! container's death is `died` there (answered as `die`) and its removal `remove` (Docker:
//! `destroy`). A filter on Docker's names alone drops both, and `podman stop` would go
//! unnoticed; so the filter names both spellings ([`PODMAN_EVENT_NAMES`]; Docker accepts
//! and ignores names it does not know) and [`normalise`] reads Podman's as Docker's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use tracing::debug;

use crate::swarm::SWARM_SERVICE_ID_LABEL;
use crate::views::short_id;

/// The container events that can change a container's routes.
pub const WATCHED_EVENTS: &[&str] =
    &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "health_status"];

/// Podman's names of watched container events, with the Docker name each stands for.
pub(crate) const PODMAN_EVENT_NAMES: &[(&str, &str)] = &[("died", "die"), ("remove", "destroy")];

/// The watched event `action` names (`died` reads as `die`, `exec_start: sh` as
/// `exec_start`), or `None` for an event that is not watched.
pub(crate) fn normalise(action: &str) -> Option<&'static str> {
    let action = action.split(':').next().unwrap_or("").trim();
    let action = PODMAN_EVENT_NAMES.iter().find(|(podman, _)| *podman == action).map_or(action, |(_, docker)| docker);
    WATCHED_EVENTS.iter().find(|w| **w == action).copied()
}

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
            let action = normalise(&action).unwrap_or("event");
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
        (
            "event".to_string(),
            WATCHED_EVENTS
                .iter()
                .chain(PODMAN_EVENT_NAMES.iter().map(|(podman, _)| podman))
                .map(|e| e.to_string())
                .collect(),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn container_event(id: &str, action: &str) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_string()),
            actor: Some(EventActor { id: Some(id.to_string()), attributes: None }),
            ..Default::default()
        }
    }

    #[test]
    fn podman_event_names_read_as_dockers() {
        assert_eq!(normalise("died"), Some("die"));
        assert_eq!(normalise("remove"), Some("destroy"));
        assert_eq!(normalise("health_status: healthy"), Some("health_status"));
        assert_eq!(normalise("cleanup"), None);
        let mut batch = Batch::default();
        note_event(&mut batch, None, container_event("c1", "died"), Stream::Containers);
        note_event(&mut batch, None, container_event("c2", "remove"), Stream::Containers);
        assert_eq!(batch.containers.get("c1"), Some(&"die"));
        assert_eq!(batch.containers.get("c2"), Some(&"destroy"));
    }

    #[test]
    fn the_container_filter_names_both_spellings_and_the_label_filters() {
        let filters = container_event_filters(&["a=b".to_string()]);
        let events = &filters["event"];
        for name in ["die", "died", "destroy", "remove", "stop", "start"] {
            assert!(events.iter().any(|e| e == name), "{name} missing from {events:?}");
        }
        assert_eq!(filters["type"], ["container"]);
        assert_eq!(filters["label"], ["a=b"]);
        assert!(!container_event_filters(&[]).contains_key("label"));
    }
}
