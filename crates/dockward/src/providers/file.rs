//! The routes-file provider: loads a file, publishes its routes, and reloads it on change.
//!
//! The file's parent directory is watched rather than the file, so editors that save by
//! writing a new file and renaming it over the old one (and Kubernetes ConfigMap symlink
//! swaps) are seen. Bursts of events are debounced: the file is re-read once it has been
//! quiet for [`DEBOUNCE`].
//!
//! A file is applied whole or not at all: when a reload finds any error, the routes of the
//! last good load keep running and the errors are published next to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Provider, ProviderState};
use crate::routes_file::{self, Loaded};

/// How long the directory must be quiet before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a stream of events can delay a reload.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Starts watching `path`, loads it once, and returns the provider publishing its routes.
///
/// Fails only when the file's directory cannot be watched (it does not exist, say); a
/// missing or broken file is published as an error and picked up once it is fixed.
pub fn spawn(path: PathBuf, shutdown: CancellationToken) -> anyhow::Result<Provider> {
    let dir = watch_dir(&path);
    if !dir.is_dir() {
        anyhow::bail!("cannot watch routes file {}: directory {} does not exist", path.display(), dir.display());
    }
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // The receiver is gone only once the provider has stopped.
        let _ = events_tx.send(event);
    })
    .context("cannot start the file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch directory {} for routes file {}", dir.display(), path.display()))?;

    // Watch first, then load: an edit in between is seen as an event.
    let mut state = ProviderState::default();
    let loaded = routes_file::load(&path);
    update(&path, &mut state, loaded);
    let (tx, rx) = watch::channel(state);
    let name = format!("file {}", path.display());
    tokio::spawn(async move {
        // Moved in so the watcher lives as long as the task.
        let _watcher = watcher;
        watch_loop(path, events, tx, shutdown).await;
    });
    Ok(Provider { name, state: rx })
}

/// The directory to watch for `path`: its parent, or `.` for a bare file name.
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event may mean the file at `path` changed: a write, create, rename or removal
/// of that name, or of a `..name` entry (Kubernetes swaps ConfigMap files through a
/// `..data` symlink). Reads, our own included, and other files of the directory are ignored.
fn concerns(event: &Event, path: &Path) -> bool {
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| match p.file_name() {
        Some(name) => Some(name) == path.file_name() || name.as_encoded_bytes().starts_with(b".."),
        None => true,
    })
}

async fn watch_loop(
    path: PathBuf,
    mut events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    tx: watch::Sender<ProviderState>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match first {
            None => return,
            Some(Err(e)) => {
                warn!(file = %path.display(), error = %e, "file watcher error");
                continue;
            }
            Some(Ok(event)) if !concerns(&event, &path) => continue,
            Some(Ok(event)) => debug!(file = %path.display(), kind = ?event.kind, "change seen"),
        }
        // Debounce: wait until the file has been quiet for DEBOUNCE, but never longer than
        // MAX_DEBOUNCE in all.
        let give_up = Instant::now() + MAX_DEBOUNCE;
        let mut quiet = Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(quiet.min(give_up)) => break,
                event = events.recv() => match event {
                    None => return,
                    Some(Ok(event)) if concerns(&event, &path) => quiet = Instant::now() + DEBOUNCE,
                    Some(_) => {}
                },
            }
        }
        let reload_path = path.clone();
        let loaded = match tokio::task::spawn_blocking(move || routes_file::load(&reload_path)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(file = %path.display(), error = %e, "reading the routes file failed");
                continue;
            }
        };
        tx.send_if_modified(|state| update(&path, state, loaded));
    }
}

/// Folds a load into the provider's state; true when the state changed.
///
/// Good loads replace the routes and clear the errors; a load with errors keeps the
/// previous routes and publishes the errors. Logs what changed.
fn update(path: &Path, state: &mut ProviderState, loaded: Loaded) -> bool {
    let next = if loaded.errors.is_empty() {
        ProviderState { routes: loaded.routes, errors: Vec::new() }
    } else {
        ProviderState { routes: state.routes.clone(), errors: loaded.errors }
    };
    if next == *state {
        debug!(file = %path.display(), "routes file unchanged");
        return false;
    }
    if next.errors.is_empty() {
        info!(file = %path.display(), routes = next.routes.len(), "routes file loaded");
    } else {
        for e in &next.errors {
            error!(file = %path.display(), alias = e.alias.as_deref().unwrap_or(""), error = %e.message, "routes file error");
        }
        warn!(file = %path.display(), errors = next.errors.len(), kept_routes = next.routes.len(), "routes file not applied; its previous routes keep running");
    }
    *state = next;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    async fn next_state(rx: &mut watch::Receiver<ProviderState>) -> ProviderState {
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.expect("no change published").unwrap();
        rx.borrow_and_update().clone()
    }

    #[test]
    fn only_changes_to_the_file_itself_count() {
        use notify::event::{CreateKind, ModifyKind};
        let file = Path::new("/etc/dockward/routes.yml");
        let event = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(concerns(&event(write, "/etc/dockward/routes.yml"), file));
        assert!(concerns(&event(EventKind::Create(CreateKind::File), "/etc/dockward/routes.yml"), file));
        assert!(concerns(
            &event(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/etc/dockward/routes.yml"),
            file
        ));
        assert!(concerns(&event(EventKind::Create(CreateKind::Any), "/etc/dockward/..data"), file));
        assert!(!concerns(&event(write, "/etc/dockward/dockward.log"), file));
        assert!(!concerns(
            &event(EventKind::Access(AccessKind::Open(AccessMode::Read)), "/etc/dockward/routes.yml"),
            file
        ));
        assert!(concerns(&Event::new(write), file), "an event without paths may be ours");
    }

    #[test]
    fn a_bare_file_name_is_watched_in_the_current_directory() {
        assert_eq!(watch_dir(Path::new("routes.yml")), PathBuf::from("."));
        assert_eq!(watch_dir(Path::new("conf/routes.yml")), PathBuf::from("conf"));
    }

    #[tokio::test]
    async fn edits_are_published_and_a_broken_file_keeps_the_last_good_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yml");
        write(&path, "routes:\n  a: {port: 1}\n");
        let shutdown = CancellationToken::new();
        let mut rx = spawn(path.clone(), shutdown.clone()).unwrap().state;
        assert_eq!(rx.borrow_and_update().routes.len(), 1);

        write(&path, "routes:\n  a: {port: 1}\n  b: {port: 2}\n");
        let state = next_state(&mut rx).await;
        assert_eq!(state.routes.iter().map(|r| r.alias.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(state.errors.is_empty());

        write(&path, "routes:\n  a: {port: 1}\n  b: {prot: 2}\n");
        let state = next_state(&mut rx).await;
        assert_eq!(state.routes.len(), 2, "the last good routes are kept");
        assert_eq!(state.errors.len(), 1);
        assert_eq!(state.errors[0].alias.as_deref(), Some("b"));

        // Replaced by rename, as editors do.
        let tmp = dir.path().join(".routes.yml.tmp");
        write(&tmp, "routes:\n  c: {port: 3}\n");
        std::fs::rename(&tmp, &path).unwrap();
        let state = next_state(&mut rx).await;
        assert_eq!(state.routes.iter().map(|r| r.alias.as_str()).collect::<Vec<_>>(), ["c"]);
        assert!(state.errors.is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_until_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.yml");
        let shutdown = CancellationToken::new();
        let mut rx = spawn(path.clone(), shutdown.clone()).unwrap().state;
        assert_eq!(rx.borrow_and_update().errors.len(), 1);
        write(&path, "routes:\n  a: {port: 1}\n");
        let state = next_state(&mut rx).await;
        assert_eq!((state.routes.len(), state.errors.len()), (1, 0));
        shutdown.cancel();
    }

    #[test]
    fn a_missing_directory_cannot_be_watched() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async { spawn("/nonexistent-dir/r.yml".into(), CancellationToken::new()).unwrap_err() });
        assert_eq!(
            format!("{err:#}"),
            "cannot watch routes file /nonexistent-dir/r.yml: directory /nonexistent-dir does not exist"
        );
    }
}
