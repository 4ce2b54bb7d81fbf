//! `dockward run`: providers → controller → route table, plus the admin API, until a signal.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access_log;
use crate::admin::{self, AdminListener};
use crate::cli::RunArgs;
use crate::controller::Controller;
use crate::providers::file::FileOptions;
use crate::providers::{self, docker::DockerOptions};
use crate::reload::Reload;

/// Runs until SIGINT or SIGTERM, then stops cleanly: listeners close at once, open
/// connections may finish for up to the largest `drain_grace` of the routes. A second
/// signal stops waiting for them. SIGHUP reloads: every routes file is read again.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // First, so that a signal arriving during start-up is handled, not fatal.
    let mut signals = Signals::new()?;
    if args.routes.is_empty() && args.no_docker {
        anyhow::bail!("nothing to serve: give --routes FILE, or leave out --no-docker to serve Docker labels");
    }

    let nofile = raise_nofile_limit();
    let mut admin_limits = admin::AdminLimits::for_nofile(nofile.unwrap_or(1024));
    admin_limits.header_timeout = args.admin_header_timeout;
    admin_limits.idle_timeout = args.admin_idle_timeout;
    if let Some(max) = args.admin_max_connections {
        admin_limits.max_connections = max.max(1);
    }

    // The admin API binds before any route, so a taken admin port stops us before we serve.
    let listener = AdminListener::bind(&args.admin.admin).await?;
    let bound = listener.local_addr()?;

    let global_acl = args.global_acl();
    let shutdown = CancellationToken::new();
    let reload = Reload::new();
    let file_options = FileOptions { reread: args.reread_interval, reload: reload.clone() };
    let mut providers = Vec::new();
    let mut seen = HashSet::new();
    for path in args.routes {
        if !seen.insert(path.clone()) {
            warn!(file = %path.display(), "routes file given twice; reading it once");
            continue;
        }
        providers.push(providers::file::spawn(path, file_options.clone(), shutdown.child_token())?);
    }
    let docker = DockerOptions {
        disabled: args.no_docker,
        hosts: args.docker_host,
        label_filters: args.docker_label_filter,
        container_control: args.allow_container_control,
        tls: args.docker_tls,
    };
    if let Some(provider) = providers::docker::spawn(&docker, shutdown.child_token())? {
        providers.push(provider);
    }

    let controller = Controller::new(providers);
    // Before the first apply, so no route ever serves without the global ACL.
    controller.view().table().set_global_acl(global_acl);
    let access_log = match args.access_log {
        Some(destination) => {
            let (sink, writer) = access_log::Writer::start(destination, args.access_log_format)?;
            controller.view().table().set_access_log(Some(sink));
            Some(writer)
        }
        None => None,
    };
    let admin_stop = CancellationToken::new();
    let admin_thread = admin::spawn_thread(listener, controller.view(), admin_limits, admin_stop.clone())?;
    info!(admin = %bound, max_connections = admin_limits.max_connections, "admin API listening");
    if let Some(file) = &args.admin_addr_file {
        admin::write_addr_file(file, &bound)?;
    }
    let view = controller.view();
    let mut controller_task = tokio::spawn(controller.run(shutdown.clone()));

    let first = loop {
        tokio::select! {
            name = signals.next() => match name {
                "SIGHUP" => {
                    let listeners = reload.trigger();
                    info!(signal = name, listeners, "reloading: reading the routes files again");
                }
                name => break name,
            },
            finished = &mut controller_task => {
                finished.context("the controller stopped unexpectedly")?;
                anyhow::bail!("the controller stopped unexpectedly");
            }
        }
    };
    info!(signal = first, "stopping");
    shutdown.cancel();
    tokio::select! {
        finished = &mut controller_task => finished.context("the controller failed while stopping")?,
        second = signals.next_stop() => {
            warn!(signal = second, "second signal: exiting without waiting for open connections");
            anyhow::bail!("stopped by a second {second} before open connections finished");
        }
    }
    admin_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
    if let Some(writer) = access_log {
        // The routes are stopped: with the table's sink gone, the writer ends once it has
        // written what is queued.
        view.table().set_access_log(None);
        writer.finish(ACCESS_LOG_FINISH).await;
    }
    info!("stopped");
    Ok(())
}

/// SIGINT and SIGTERM (stop), SIGHUP (reload).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    /// The name of the next stop signal; SIGHUP while stopping is logged and ignored.
    async fn next_stop(&mut self) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => info!(signal = "SIGHUP", "stopping: no reload"),
                name => return name,
            }
        }
    }
}

/// Lifts the soft open-file limit to the hard one, so the usual 1,024 does not cap the
/// forwarder at ~500 TCP connections; says so, and warns when even the hard limit is low.
/// Returns the limit now in force, when it could be read.
fn raise_nofile_limit() -> Option<u64> {
    match proxy_core::limits::raise_nofile_limit() {
        Ok(limit) => {
            if limit.after > limit.before {
                info!(from = limit.before, to = limit.after, "raised the open-file limit to the hard limit");
            }
            if limit.after < LOW_NOFILE {
                warn!(
                    limit = limit.after,
                    "the open-file limit is low: each TCP connection takes two descriptors and each UDP \
                     session one; raise it (ulimit -Hn, LimitNOFILE= in systemd, ulimits: in compose)"
                );
            }
            Some(limit.after)
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit");
            None
        }
    }
}

/// How long the access-log writer may take, at exit, to write what is queued.
const ACCESS_LOG_FINISH: Duration = Duration::from_secs(5);

/// Below this many descriptors, `dockward run` warns at start.
const LOW_NOFILE: u64 = 4096;
