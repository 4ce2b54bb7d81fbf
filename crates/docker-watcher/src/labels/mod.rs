//! Container labels → routes: a pure function, no Docker connection.
//!
//! The grammar is GoDoxy's, restricted to stream (TCP/UDP) routes:
//!
//! | label | meaning |
//! | --- | --- |
//! | `proxy.aliases=ssh,dns` | the container's aliases, separated by commas or spaces; default: the container name |
//! | `proxy.<alias>.<field>=V` | a field of one alias; an alias seen only here (not in `proxy.aliases`) is a route too |
//! | `proxy.#N.<field>=V` | a field of the N-th alias of `proxy.aliases` (1-based) |
//! | `proxy.*.<field>=V` | a field of every alias |
//! | `proxy.exclude=true` | ignore the container |
//! | `proxy.network=NAME` | take the target address from this network (`<compose project>_NAME` is found too) |
//! | `proxy.swarm_target=tasks\|vip` | swarm services only ([`crate::swarm`]); checked, otherwise ignored, on a container |
//!
//! Fields are route-spec's ([`route_spec::fields::FIELDS`]): the same names as the routes
//! file, checked by the same code.
//!
//! **Wildcard precedence.** A field set for one alias, by name or by `#N`, overrides the same
//! field set with `proxy.*`. GoDoxy's README promises this, but its code applies the wildcard
//! last so the wildcard wins there; dockward follows the README, because "`*` is the default,
//! the specific label is the exception" is what the labels read like. Setting the same field
//! of the same alias both by name and by `#N` is an error for that alias.
//!
//! **Errors are per label.** A bad value, a misspelt field or an out-of-range `#N` yields a
//! [`LabelError`] naming the label and value (with a did-you-mean when one fits), and only the
//! alias it belongs to is dropped; the container's other aliases still become routes.
//! GoDoxy's fields for HTTP routes (homepage, healthcheck, middlewares, …; see
//! [`IGNORED_FIELDS`]) are ignored, so a container labelled for GoDoxy works unchanged.
//!
//! The parts, each pure: [`keys`] (the key grammar), [`merge`] (merge and precedence:
//! labels to routes), [`target`] (target resolution and the network choice shared with
//! swarm services), `ports` (a container's ports and GoDoxy's rules on them), and the
//! values they work on ([`model`]).

pub mod godoxy;
mod keys;
mod merge;
mod model;
mod origin;
mod ports;
pub(crate) mod target;

pub use keys::{
    COMPOSE_PROJECT_LABEL, HTTP_SCHEMES, IDLE_LABELS, IGNORED_CONTAINER_LABELS, IGNORED_FIELDS, LABEL_ALIASES,
    LABEL_EXCLUDE, LABEL_NETWORK, LABEL_PREFIX, LABEL_SWARM_TARGET,
};
pub use merge::parse_labels;
pub(crate) use merge::parse_subject;
pub(crate) use model::Subject;
pub use model::{
    ContainerRoutes, ContainerState, ContainerView, LabelError, SkippedAlias, SwarmTarget, has_proxy_labels,
};
pub use ports::{ContainerPorts, ExposedPort, PublishedPort};

#[cfg(test)]
mod tests;
