//! Everything that talks to the engine. The modules outside `io` are pure: they turn the
//! engine's answers into routes and decide what to ask next, and are tested without one.
//!
//! - [`engine`]: connecting, listing, inspecting (bollard).
//! - [`http`]: a bare `GET` for the one answer bollard models incompletely (swarm tasks).
//! - [`tls`]: TLS to an engine (`--docker-tls`, `DOCKER_TLS_VERIFY`), for both of them.
//! - [`services`]: swarm services and their tasks.
//! - [`event_stream`]: reading one event stream into the session's channel.
//! - [`session`]: one connection, from connect to a lost stream.
//! - [`watcher`]: [`DockerWatcher`](watcher::DockerWatcher): sessions one after another,
//!   with backoff, forever.

pub(crate) mod control;
pub(crate) mod engine;
pub(crate) mod event_stream;
pub(crate) mod http;
pub(crate) mod services;
pub(crate) mod session;
pub(crate) mod tls;
pub(crate) mod watcher;
