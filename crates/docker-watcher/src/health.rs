//! A container's own health check (`HEALTHCHECK`, `--health-cmd`) read from the engine's
//! answers, and laid on its routes' targets as their provider's [`Verdict`]. Pure: no I/O.
//!
//! - A list entry says it in `Health.Status` (API 1.52 and later) or, before that, only in
//!   its `Status` text: `Up 5 minutes (healthy)`, `Up 5 minutes (unhealthy)`,
//!   `Up 2 seconds (health: starting)`.
//! - An inspect answer says it in `State.Health.Status`.
//! - A container without a health check says `none`, an empty status, or nothing at all
//!   (the field missing, as in some Podman answers): no verdict, and only dockward's own
//!   checks (passive, and `health_check: tcp`) judge its targets.
//!
//! The engine sends a `health_status` event at each change, which makes the watcher inspect
//! the container again: no polling of its own. The verdict is laid on every target of every
//! route the container's labels make (a `host` override included: the container declared
//! the route). Swarm services carry none.

use bollard::models::{ContainerState, ContainerSummary, ContainerSummaryHealthStatusEnum, HealthStatusEnum};
use route_spec::{ProviderHealth, Verdict};

use crate::labels::ContainerRoutes;

/// Who gives the verdict, as `dockward routes` shows it: `docker: unhealthy`.
const PROVIDER: &str = "docker";

/// A list entry's health: its `Health` field when the engine sends one, else its `Status`
/// text.
pub(crate) fn from_summary(c: &ContainerSummary) -> Option<ProviderHealth> {
    let field = c.health.as_ref().and_then(|h| h.status).and_then(|s| match s {
        ContainerSummaryHealthStatusEnum::HEALTHY => Some(Some(ProviderHealth::Healthy)),
        ContainerSummaryHealthStatusEnum::STARTING => Some(Some(ProviderHealth::Starting)),
        ContainerSummaryHealthStatusEnum::UNHEALTHY => Some(Some(ProviderHealth::Unhealthy)),
        // `none` is a clear "no health check"; an empty status says nothing either way.
        ContainerSummaryHealthStatusEnum::NONE => Some(None),
        ContainerSummaryHealthStatusEnum::EMPTY => None,
    });
    match field {
        Some(health) => health,
        None => c.status.as_deref().and_then(from_status_text),
    }
}

/// The health in a list entry's `Status` text: the last parenthesised part, when it is
/// `(healthy)`, `(unhealthy)` or `(health: starting)`; else none (`Up 3 hours`,
/// `Up 3 hours (Paused)`).
pub(crate) fn from_status_text(status: &str) -> Option<ProviderHealth> {
    let inner = status.trim_end().strip_suffix(')')?;
    let (_, word) = inner.rsplit_once('(')?;
    match word.trim().to_ascii_lowercase().as_str() {
        "healthy" => Some(ProviderHealth::Healthy),
        "unhealthy" => Some(ProviderHealth::Unhealthy),
        "health: starting" | "starting" => Some(ProviderHealth::Starting),
        _ => None,
    }
}

/// An inspect answer's health: `State.Health.Status`.
pub(crate) fn from_inspect(state: Option<&ContainerState>) -> Option<ProviderHealth> {
    match state?.health.as_ref()?.status? {
        HealthStatusEnum::HEALTHY => Some(ProviderHealth::Healthy),
        HealthStatusEnum::STARTING => Some(ProviderHealth::Starting),
        HealthStatusEnum::UNHEALTHY => Some(ProviderHealth::Unhealthy),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

/// `routes` with `health` as the verdict on every target (unchanged without one).
pub(crate) fn judged(mut routes: ContainerRoutes, health: Option<ProviderHealth>) -> ContainerRoutes {
    if let Some(health) = health {
        let verdict = Verdict::new(PROVIDER, health);
        for target in routes.routes.iter_mut().flat_map(|r| r.targets.iter_mut()) {
            target.verdict = Some(verdict.clone());
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerSummaryHealth, Health};
    use route_spec::{Protocol, RouteSpec, Target};

    use super::*;

    #[test]
    fn the_list_status_text_says_the_health() {
        use ProviderHealth::*;
        let cases = [
            ("Up 5 minutes (healthy)", Some(Healthy)),
            ("Up 5 minutes (unhealthy)", Some(Unhealthy)),
            ("Up 2 seconds (health: starting)", Some(Starting)),
            ("Up About a minute (Healthy) ", Some(Healthy)),
            ("Up 3 hours", None),
            ("Up 3 hours (Paused)", None),
            ("Exited (0) 5 seconds ago", None),
            ("Restarting (1) 2 seconds ago", None),
            ("", None),
            ("(", None),
            (")", None),
        ];
        for (text, want) in cases {
            assert_eq!(from_status_text(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_list_entry_prefers_its_health_field_and_falls_back_to_the_text() {
        let entry = |field: Option<ContainerSummaryHealthStatusEnum>, text: Option<&str>| ContainerSummary {
            health: field.map(|s| ContainerSummaryHealth { status: Some(s), failing_streak: None }),
            status: text.map(String::from),
            ..Default::default()
        };
        use ContainerSummaryHealthStatusEnum as S;
        assert_eq!(
            from_summary(&entry(Some(S::UNHEALTHY), Some("Up 1 minute (healthy)"))),
            Some(ProviderHealth::Unhealthy)
        );
        assert_eq!(from_summary(&entry(Some(S::STARTING), None)), Some(ProviderHealth::Starting));
        assert_eq!(from_summary(&entry(Some(S::NONE), Some("Up 1 minute (healthy)"))), None, "none is no check");
        assert_eq!(from_summary(&entry(Some(S::EMPTY), Some("Up 1 minute (healthy)"))), Some(ProviderHealth::Healthy));
        assert_eq!(from_summary(&entry(None, Some("Up 1 minute (unhealthy)"))), Some(ProviderHealth::Unhealthy));
        assert_eq!(from_summary(&entry(None, None)), None, "a Podman entry without either: no check");
    }

    #[test]
    fn an_inspect_answer_says_it_in_state_health_status() {
        let state = |status: Option<HealthStatusEnum>| ContainerState {
            health: Some(Health { status, ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(from_inspect(Some(&state(Some(HealthStatusEnum::HEALTHY)))), Some(ProviderHealth::Healthy));
        assert_eq!(from_inspect(Some(&state(Some(HealthStatusEnum::STARTING)))), Some(ProviderHealth::Starting));
        assert_eq!(from_inspect(Some(&state(Some(HealthStatusEnum::UNHEALTHY)))), Some(ProviderHealth::Unhealthy));
        assert_eq!(from_inspect(Some(&state(Some(HealthStatusEnum::NONE)))), None);
        assert_eq!(from_inspect(Some(&state(None))), None);
        assert_eq!(from_inspect(Some(&ContainerState::default())), None, "no Health at all");
        assert_eq!(from_inspect(None), None);
    }

    #[test]
    fn an_inspect_answer_as_the_engine_sends_it() {
        let json = serde_json::json!({
            "Status": "running", "Running": true,
            "Health": {"Status": "unhealthy", "FailingStreak": 3, "Log": []}
        });
        let state: ContainerState = serde_json::from_value(json).unwrap();
        assert_eq!(from_inspect(Some(&state)), Some(ProviderHealth::Unhealthy));
        let summary: ContainerSummary =
            serde_json::from_value(serde_json::json!({"Id": "x", "Status": "Up 4 seconds (health: starting)"}))
                .unwrap();
        assert_eq!(from_summary(&summary), Some(ProviderHealth::Starting));
    }

    #[test]
    fn the_verdict_goes_on_every_target_of_every_route() {
        let route = |alias: &str, hosts: &[&str]| {
            let targets = hosts.iter().map(|h| Target::new(*h, 80)).collect();
            RouteSpec::new(alias, Protocol::Tcp, "0.0.0.0:8080".parse().unwrap(), targets)
        };
        let routes = ContainerRoutes {
            routes: vec![route("web", &["172.17.0.2"]), route("api", &["a.lan", "b.lan"])],
            ..Default::default()
        };
        assert_eq!(judged(routes.clone(), None), routes, "no check, no verdict");
        let sick = judged(routes, Some(ProviderHealth::Unhealthy));
        let shown: Vec<String> = sick
            .routes
            .iter()
            .flat_map(|r| &r.targets)
            .map(|t| format!("{t} {}", t.verdict.as_ref().unwrap()))
            .collect();
        assert_eq!(
            shown,
            ["172.17.0.2:80 docker: unhealthy", "a.lan:80 docker: unhealthy", "b.lan:80 docker: unhealthy"]
        );
    }

    #[test]
    fn an_inspect_after_a_health_status_event_changes_the_containers_routes_in_the_snapshot() {
        use std::sync::Arc;

        use crate::memory::State;
        use crate::snapshot::DockerSnapshot;
        use crate::views::facts_from_inspect;

        let inspect = |health: &str| {
            let json = serde_json::json!({
                "Id": "c1", "Name": "/web",
                "State": {"Status": "running", "Health": {"Status": health}},
                "Config": {"Labels": {"proxy.web.port": "8080:80"}},
                "HostConfig": {"NetworkMode": "host"},
            });
            facts_from_inspect(serde_json::from_value(json).unwrap()).unwrap()
        };
        let (tx, _rx) = tokio::sync::watch::channel(Arc::new(DockerSnapshot::default()));
        let mut state = State::new(tx);
        let mut apply = |health: &str| {
            let facts = inspect(health);
            let entry = state.routes_of(&facts);
            let changed = state.set("c1", entry, "health_status");
            let target = state.snap.containers["c1"].routes[0].targets[0].clone();
            (changed, target.to_string(), target.verdict.map(|v| v.to_string()))
        };
        let verdict = |v: &str| Some(v.to_string());
        assert_eq!(apply("starting"), (true, "127.0.0.1:80".into(), verdict("docker: starting")));
        assert_eq!(apply("healthy"), (true, "127.0.0.1:80".into(), verdict("docker: healthy")));
        assert_eq!(apply("healthy"), (false, "127.0.0.1:80".into(), verdict("docker: healthy")), "no change");
        assert_eq!(apply("unhealthy"), (true, "127.0.0.1:80".into(), verdict("docker: unhealthy")));
        assert_eq!(apply("none"), (true, "127.0.0.1:80".into(), None), "the check removed: no verdict");
    }
}
