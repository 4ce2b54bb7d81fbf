//! Idle sleep: a container labelled `proxy.idle_timeout` is stopped once nobody has been
//! connected to any of its routes for that long, its ports stay bound, and the first
//! connection or datagram wakes it.
//!
//! - [`config`]: the labels (GoDoxy's names and defaults), pure.
//! - [`sleeper`]: one container's state (who is connected, awake or not, the gate held
//!   clients wait at) and the [`route_spec::WakeHook`] its routes carry.
//! - [`Sleepers`]: every sleeper of one engine, kept across snapshots so each container's
//!   routes carry the same hook (an update in place, never a rebind).
//! - The engine calls live in [`crate::io::control`], made only with write access granted
//!   (`DockerConfig::container_control`).

pub mod config;
pub mod sleeper;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use route_spec::WakeHook;

use crate::io::control::{Control, spawn_driver};
use crate::labels::{ContainerRoutes, ContainerState, LabelError};
use crate::targets::{EngineSite, container_routes};
use crate::views::ContainerFacts;
use config::{IdleLabels, LABEL_IDLE_TIMEOUT};
use sleeper::{Sleeper, SleeperHook};

/// The flag that grants write access, named in errors.
pub const CONTROL_FLAG: &str = "--allow-container-control";

/// True for the states a sleeping container may be in: stopped, never started, paused.
pub(crate) fn can_sleep(state: ContainerState) -> bool {
    matches!(state, ContainerState::Exited | ContainerState::Created | ContainerState::Paused)
}

/// Every sleeper of one engine, by container id.
pub(crate) struct Sleepers {
    /// Write access: `None` when not granted (idle labels are then an error row).
    control: Option<Arc<Control>>,
    by_id: Mutex<HashMap<String, Entry>>,
}

/// A container's sleeper, and the hook its routes carry (one `Arc`, so routes stay unchanged).
type Entry = (Arc<Sleeper>, Arc<dyn WakeHook>);

impl Sleepers {
    /// Sleepers that may start and stop containers through `control`, or none may.
    pub(crate) fn new(control: Option<Arc<Control>>) -> Self {
        Sleepers { control, by_id: Mutex::new(HashMap::new()) }
    }

    /// True when containers may be put to sleep.
    pub(crate) fn enabled(&self) -> bool {
        self.control.is_some()
    }

    /// Whether a container in this state with these labels has routes while not running.
    pub(crate) fn keeps_asleep(&self, facts: &ContainerFacts) -> bool {
        self.enabled() && can_sleep(facts.view.state) && matches!(config::read(&facts.view.labels), IdleLabels::On(_))
    }

    /// Reads the container's idle labels into `routes`: errors, or its sleeper's hook on
    /// every route (made, with its driver, the first time).
    pub(crate) fn attach(&self, facts: &ContainerFacts, routes: &mut ContainerRoutes) {
        let view = &facts.view;
        match config::read(&view.labels) {
            IdleLabels::Off => self.forget(&view.id),
            IdleLabels::Invalid(errors) => {
                self.forget(&view.id);
                for e in errors {
                    routes.push_error(e);
                }
            }
            IdleLabels::On(config) => {
                let Some(control) = &self.control else {
                    let value = view.labels.get(LABEL_IDLE_TIMEOUT).map(String::as_str).unwrap_or("");
                    routes.push_error(LabelError::label(
                        None,
                        LABEL_IDLE_TIMEOUT,
                        value,
                        format!(
                            "idle sleep starts and stops containers, and dockward only reads the Docker API \
                             unless run with {CONTROL_FLAG}; the routes are served without idle sleep"
                        ),
                    ));
                    return;
                };
                let hook = {
                    let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
                    let (sleeper, hook) = by_id.entry(view.id.clone()).or_insert_with(|| {
                        let sleeper = Sleeper::new(&view.id, &view.name, config.clone(), view.state);
                        spawn_driver(sleeper.clone(), control.clone());
                        let hook: Arc<dyn WakeHook> = Arc::new(SleeperHook(sleeper.clone()));
                        (sleeper, hook)
                    });
                    sleeper.observe(config, view.state, &routes.routes);
                    hook.clone()
                };
                for route in &mut routes.routes {
                    route.hooks = route.hooks.clone().with_wake(hook.clone());
                }
            }
        }
    }

    /// The container is gone (or no longer sleeps): its sleeper is retired.
    pub(crate) fn forget(&self, id: &str) {
        let gone = self.by_id.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Some((sleeper, _)) = gone {
            sleeper.retire();
        }
    }

    /// Retires every sleeper whose container is not in `keep`.
    pub(crate) fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        by_id.retain(|id, (sleeper, _)| {
            let kept = keep(id);
            if !kept {
                sleeper.retire();
            }
            kept
        });
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for (sleeper, _) in self.by_id.get_mut().unwrap_or_else(|p| p.into_inner()).values() {
            sleeper.retire();
        }
    }
}

/// The errors of a container's idle labels, for `dockward check` (which has no write access
/// to judge by): pushed onto `routes`.
pub(crate) fn check(labels: &std::collections::BTreeMap<String, String>, routes: &mut ContainerRoutes) {
    if let IdleLabels::Invalid(errors) = config::read(labels) {
        for e in errors {
            routes.push_error(e);
        }
    }
}

/// The routes of a container that is asleep. With no address on any network (a stopped
/// container on a bridge network has none), targets name the container instead, which the
/// engine's DNS answers once it runs on a network dockward shares: each dial resolves anew.
pub(crate) fn asleep_routes(facts: &ContainerFacts, site: &EngineSite, own_networks: &[String]) -> ContainerRoutes {
    let view = &facts.view;
    let has_address = view.network_mode == "host" || view.networks.values().any(Option::is_some);
    if has_address || !matches!(site, EngineSite::Local) {
        return container_routes(facts, site, own_networks);
    }
    const PLACEHOLDER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(0, 0, 0, 2));
    let mut probe = facts.clone();
    let network = own_networks
        .iter()
        .find(|n| view.networks.contains_key(*n))
        .or_else(|| view.networks.keys().next())
        .cloned()
        .unwrap_or_else(|| "default".to_string());
    probe.view.networks = [(network, Some(PLACEHOLDER))].into_iter().collect();
    let mut routes = container_routes(&probe, site, own_networks);
    let placeholder = PLACEHOLDER.to_string();
    for route in &mut routes.routes {
        for target in route.targets.iter_mut().filter(|t| t.host == placeholder) {
            target.host = view.name.clone();
        }
    }
    routes
}
