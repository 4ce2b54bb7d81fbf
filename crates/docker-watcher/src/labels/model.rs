//! The values labels are read from and turned into: a container's view, the routes and
//! errors its labels give, and the value grammar of `proxy.swarm_target`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use route_spec::RouteSpec;
use route_spec::fields::{self, Clipped};

use super::keys::{LABEL_PREFIX, LABEL_SWARM_TARGET};
use super::ports::{ContainerPorts, ExposedPort};

/// The lifecycle state of a container, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running: the only state whose routes are live.
    Running,
    /// Paused (frozen): its routes are removed until it is unpaused.
    Paused,
    /// Restarting.
    Restarting,
    /// Being removed.
    Removing,
    /// Stopped.
    Exited,
    /// Dead.
    Dead,
    /// Anything else the engine may say.
    #[default]
    Unknown,
}

impl ContainerState {
    /// Parses the engine's state word (`running`, `paused`, …); anything else is `Unknown`.
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => ContainerState::Unknown,
        }
    }

    /// The engine's word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Unknown => "unknown",
        }
    }

    /// True for the one state whose routes are live.
    pub fn is_running(self) -> bool {
        self == ContainerState::Running
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`parse_labels`] needs to know about a container: a plain value, built from the
/// engine's list or inspect answers, or by hand in tests and `dockward check --labels`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerView {
    /// The full container id.
    pub id: String,
    /// The container name, without Docker's leading `/`.
    pub name: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.NetworkMode`: `host`, `bridge`, `none`, `container:<id>`, a network name, or empty.
    pub network_mode: String,
    /// Its networks, by name, with its address on each (`None` while it has none).
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Its exposed and published ports: GoDoxy takes a missing `port` and a UDP `scheme`
    /// from them, and targets through them what its address cannot serve.
    pub ports: ContainerPorts,
    /// Its image as the engine names it (`postgres:16`, `ghcr.io/org/app:1.2`): GoDoxy picks a
    /// missing scheme and port by the image's name (`postgres` is TCP on 5432).
    pub image: String,
    /// Its lifecycle state.
    pub state: ContainerState,
}

impl ContainerView {
    /// True when the container carries at least one `proxy.*` label: containers without one
    /// are none of dockward's business.
    pub fn has_proxy_labels(&self) -> bool {
        has_proxy_labels(&self.labels)
    }

    pub(crate) fn subject(&self) -> Subject<'_> {
        Subject {
            kind: "container",
            id: &self.id,
            name: &self.name,
            labels: &self.labels,
            exposed: &self.ports.exposed,
            image: &self.image,
        }
    }
}

/// True when `labels` hold at least one `proxy.*` label.
pub fn has_proxy_labels(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| k.starts_with(LABEL_PREFIX))
}

/// What a set of labels belongs to: a container, or a swarm service
/// ([`parse_service_labels`](crate::parse_service_labels)).
pub(crate) struct Subject<'a> {
    /// `container` or `service`, for messages.
    pub(crate) kind: &'static str,
    /// Its id.
    pub(crate) id: &'a str,
    /// Its name: the default alias and every route's source.
    pub(crate) name: &'a str,
    /// Its labels.
    pub(crate) labels: &'a BTreeMap<String, String>,
    /// The ports it exposes (none for a swarm service).
    pub(crate) exposed: &'a [ExposedPort],
    /// Its image reference (empty for a swarm service).
    pub(crate) image: &'a str,
}

/// A label problem: which label, its value, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// One label is wrong: a bad value, an unknown field, an out-of-range `#N`.
    ///
    /// Displays as `label proxy.ssh.port="22:22:22": too many ':'; expected LISTEN:TARGET or TARGET`,
    /// or, for a field of an inline YAML label or an item of a shortcut label,
    /// `label proxy.ssh (field port)="22:22:22": …` and `label proxy.ports (item 2)="x": …`.
    #[error("label {}{}={}: {reason}", Clipped::bare(key), PartText(part), Clipped::quoted(value))]
    Label {
        /// The alias whose route the label breaks; `None` for a wildcard or container-wide label.
        alias: Option<String>,
        /// The label key as written.
        key: String,
        /// Where in the label's value the fault is: `field port` of an inline YAML mapping,
        /// `item 2` of a shortcut list; `None` for the whole label.
        part: Option<String>,
        /// The label value as written (of that field or item).
        value: String,
        /// What is wrong, with a did-you-mean where one fits.
        reason: String,
    },
    /// The container has no address dockward can reach and an alias set no `host`.
    #[error("no target address: {reason}")]
    NoTarget {
        /// What was tried.
        reason: String,
    },
}

impl LabelError {
    pub(crate) fn label(alias: Option<&str>, key: &str, value: &str, reason: impl Into<String>) -> Self {
        LabelError::Label {
            alias: alias.map(str::to_string),
            key: key.to_string(),
            part: None,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The alias the error belongs to, when it belongs to one.
    pub fn alias(&self) -> Option<&str> {
        match self {
            LabelError::Label { alias, .. } => alias.as_deref(),
            LabelError::NoTarget { .. } => None,
        }
    }

    /// The label key at fault, when one is.
    pub fn key(&self) -> Option<&str> {
        match self {
            LabelError::Label { key, .. } => Some(key),
            LabelError::NoTarget { .. } => None,
        }
    }
}

/// ` (field port)` after a label key, or nothing.
pub(super) struct PartText<'a>(pub(super) &'a Option<String>);

impl fmt::Display for PartText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(part) => write!(f, " ({})", Clipped::bare(part)),
            None => Ok(()),
        }
    }
}

/// An alias that is not a stream route, and why; shown by `dockward check`, logged at DEBUG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedAlias {
    /// The alias.
    pub alias: String,
    /// Why it makes no route (`no port`, `scheme http is an HTTP route`).
    pub reason: String,
}

/// What one container's labels ask for; also what one swarm service's labels ask for (then
/// `id` and `name` are the service's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerRoutes {
    /// The container (or service) id.
    pub id: String,
    /// The container (or service) name; also the [`RouteSpec::source`] of every route.
    pub name: String,
    /// The routes, in alias order.
    pub routes: Vec<RouteSpec>,
    /// Every label problem; the routes above are what remained valid.
    pub errors: Vec<LabelError>,
    /// Aliases that are not stream routes.
    pub skipped: Vec<SkippedAlias>,
    /// True when `proxy.exclude=true`: no route, no error.
    pub excluded: bool,
}

impl ContainerRoutes {
    pub(crate) fn empty(subject: &Subject<'_>) -> Self {
        ContainerRoutes { id: subject.id.to_string(), name: subject.name.to_string(), ..Default::default() }
    }

    pub(crate) fn push_error(&mut self, e: LabelError) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
}

/// What a swarm service's routes forward to: `proxy.swarm_target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SwarmTarget {
    /// `tasks`: each running task's address, one target per task (the default).
    #[default]
    Tasks,
    /// `vip`: the service's virtual IP, one target; the swarm's own balancing picks the task.
    Vip,
}

impl SwarmTarget {
    /// The values `proxy.swarm_target` accepts.
    pub const NAMES: &'static [&'static str] = &["tasks", "vip"];

    /// Reads a `proxy.swarm_target` value; the error names the label and value.
    pub fn from_label(value: &str) -> Result<Self, LabelError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "tasks" | "task" => Ok(SwarmTarget::Tasks),
            "vip" => Ok(SwarmTarget::Vip),
            other => {
                let reason = match fields::did_you_mean(other, Self::NAMES.iter().copied()) {
                    Some(hint) => format!("expected tasks or vip (did you mean {hint:?}?)"),
                    None => "expected tasks or vip".to_string(),
                };
                Err(LabelError::label(None, LABEL_SWARM_TARGET, value, reason))
            }
        }
    }
}
