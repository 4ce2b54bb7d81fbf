//! The active TCP health check of one route (`health_check: tcp`).
//!
//! One task per TCP route, spawned on the route's tracker and ended when the route stops
//! accepting. It follows the route's live settings: while the check is off it only waits
//! for the next update; while on, it connects to every target at once each
//! `health_interval`, each attempt bounded by `health_timeout`, and marks each target up
//! or down in the route's shared target state (so a target that fails is skipped by new
//! connections at once, and comes back at the first check it passes). A connection that
//! succeeds is closed again right away. An update in place (a replica joining) triggers a
//! check at once, so new targets are checked without waiting out the interval.

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use route_spec::HealthCheck;

use crate::balance::{Member, TargetSet};
use crate::error::DialError;

use super::{RouteCtx, dial};

/// Runs the route's active checks until it stops accepting.
pub(crate) async fn run(ctx: RouteCtx) {
    let mut live = ctx.live.clone();
    loop {
        let current = live.borrow_and_update().clone();
        if current.options.health_check == HealthCheck::Tcp {
            let timeout = current.options.health_timeout;
            let checks = current.targets.members().iter().map(|m| check(&current.targets, m, timeout));
            tokio::select! {
                _ = ctx.stop_accepting.cancelled() => return,
                _ = futures::future::join_all(checks) => {}
            }
            tokio::select! {
                _ = ctx.stop_accepting.cancelled() => return,
                _ = tokio::time::sleep(current.options.health_interval) => {}
                changed = live.changed() => if changed.is_err() { return },
            }
        } else {
            tokio::select! {
                _ = ctx.stop_accepting.cancelled() => return,
                changed = live.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Checks one target: resolves and connects within `timeout`, and records the outcome.
async fn check(set: &TargetSet, member: &Arc<Member>, timeout: Duration) {
    let target = member.target();
    let checked = match tokio::time::timeout(timeout, dial::tcp_target(target, timeout)).await {
        Ok(checked) => checked,
        Err(_) => Err(DialError::Timeout { target: target.clone(), timeout }),
    };
    match checked {
        Ok((stream, _)) => {
            drop(stream);
            set.succeeded(member);
        }
        // Out of descriptors here says nothing about the target.
        Err(e) if dial::is_local(&e) => {
            debug!(dst = %target, action = "health_check", error = %e, "health check skipped: local failure");
        }
        Err(e) => set.failed(member, &format!("health check: {e}"), true),
    }
}
