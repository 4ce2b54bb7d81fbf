//! The routes-file provider: loads a file, publishes its routes, and reloads it on change.
//!
//! The file's parent directory is watched rather than the file, so editors that save by
//! writing a new file and renaming it over the old one (and Kubernetes ConfigMap symlink
//! swaps) are seen. Bursts of events are debounced: the file is re-read once it has been
//! quiet for [`DEBOUNCE`].
//!
//! A file is applied whole or not at all: when a reload finds any error, the routes of the
//! last good load keep running and the errors are published next to them.
//!
//! Events can be missed or never come: a read that failed for want of descriptors, a file
//! behind a symlink into another directory, a watched directory deleted and made again. So a
//! file whose last read failed is read again every [`FileOptions::reread`] interval, a lost
//! directory watch is made again as soon as the directory is back (checked every
//! [`WATCH_RETRY`]), and a [reload request](crate::reload) (SIGHUP) reads the file whatever
//! the watch says. A file that stays missing for a whole `reread` interval is taken as
//! deleted: its routes are removed and an error row says so.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Provider, ProviderError, ProviderState};
use crate::reload::{Reload, ReloadListener};
use crate::routes_file::{self, Loaded};

/// How long the directory must be quiet before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a stream of events can delay a reload.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// How often a lost directory watch is tried again.
pub const WATCH_RETRY: Duration = Duration::from_secs(1);

/// How often a file whose last read failed (or that vanished) is read again by default: the
/// controller's re-apply period, so an outage's edit is applied on the next tick.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(30);

/// How a routes-file provider reads its file besides following the directory watch.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// How often a file whose last read failed is read again without any event, and how long
    /// a deleted file must stay missing before its routes are removed.
    pub reread: Duration,
    /// Reload requests (SIGHUP): each reads the file again.
    pub reload: Reload,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { reread: REREAD_INTERVAL, reload: Reload::new() }
    }
}

type Events = mpsc::UnboundedReceiver<notify::Result<Event>>;

/// Starts watching `path`, loads it once, and returns the provider publishing its routes.
///
/// Fails only when the file's directory cannot be watched (it does not exist, say); a
/// missing or broken file is published as an error and picked up once it is fixed.
pub fn spawn(path: PathBuf, options: FileOptions, shutdown: CancellationToken) -> anyhow::Result<Provider> {
    let dir = watch_dir(&path);
    if !dir.is_dir() {
        anyhow::bail!("cannot watch routes file {}: directory {} does not exist", path.display(), dir.display());
    }
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut dir_watch = DirWatch { dir, events_tx, watcher: None, identity: None };
    dir_watch.start().with_context(|| {
        format!("cannot watch directory {} for routes file {}", dir_watch.dir.display(), path.display())
    })?;

    // Watch first, then load: an edit in between is seen as an event.
    let mut state = ProviderState::default();
    let mut file = FileState::default();
    let loaded = routes_file::load(&path);
    file.fold(&path, &mut state, loaded, missing(&path), options.reread);
    let (tx, rx) = watch::channel(state);
    let name = format!("file {}", path.display());
    let reload = options.reload.subscribe();
    tokio::spawn(async move {
        let mut provider = FileProvider { path, dir_watch, events, tx, file, reread: options.reread, reload };
        provider.run(shutdown).await;
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

/// Whether `path` does not exist (as opposed to existing but unreadable).
fn missing(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
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

/// The watch on the file's directory, which is lost when the directory is deleted or moved.
struct DirWatch {
    dir: PathBuf,
    events_tx: mpsc::UnboundedSender<notify::Result<Event>>,
    watcher: Option<RecommendedWatcher>,
    /// The watched directory's device and inode, to notice that it was replaced.
    identity: Option<(u64, u64)>,
}

impl DirWatch {
    fn identity(&self) -> Option<(u64, u64)> {
        std::fs::metadata(&self.dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
    }

    /// Watches the directory (again).
    fn start(&mut self) -> notify::Result<()> {
        self.watcher = None;
        let identity = self.identity();
        let events_tx = self.events_tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // The receiver is gone only once the provider has stopped.
            let _ = events_tx.send(event);
        })?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        self.watcher = Some(watcher);
        self.identity = identity;
        Ok(())
    }

    fn active(&self) -> bool {
        self.watcher.is_some()
    }

    /// Drops the watch when the watched directory is gone or was replaced.
    fn check(&mut self) {
        if self.watcher.is_some() && self.identity() != self.identity {
            self.lost();
        }
    }

    /// Drops the watch, which no longer sees the directory (the directory was deleted or
    /// moved: its inode may already be reused by a new directory of the same name).
    fn lost(&mut self) {
        if self.watcher.take().is_some() {
            warn!(
                dir = %self.dir.display(),
                "the watched directory was deleted or replaced; watching for it to come back"
            );
        }
    }
}

/// What the provider remembers about its file between reads.
#[derive(Debug, Default)]
struct FileState {
    /// The last read had errors: read again on the next periodic tick.
    failed: bool,
    /// Since when the file has been found missing, if it is.
    missing_since: Option<Instant>,
    /// Its routes were removed because it stayed missing.
    removed: bool,
}

impl FileState {
    /// Folds a load into the provider's state; true when the state changed.
    ///
    /// Good loads replace the routes and clear the errors; a load with errors keeps the
    /// previous routes and publishes the errors, except that a file missing for `reread` or
    /// longer has its routes removed. Logs what changed.
    fn fold(
        &mut self,
        path: &Path,
        state: &mut ProviderState,
        mut loaded: Loaded,
        missing: bool,
        reread: Duration,
    ) -> bool {
        self.failed = !loaded.errors.is_empty();
        let skipped = std::mem::take(&mut loaded.skipped);
        let now = Instant::now();
        self.missing_since = if missing && self.failed { Some(self.missing_since.unwrap_or(now)) } else { None };
        let next = if loaded.errors.is_empty() {
            self.removed = false;
            ProviderState { routes: loaded.routes, errors: Vec::new() }
        } else if self.missing_since.is_some_and(|since| now - since >= reread)
            && (self.removed || !state.routes.is_empty())
        {
            if !self.removed {
                warn!(file = %path.display(), removed_routes = state.routes.len(), missing_for = ?reread, "routes file deleted: its routes are removed");
            }
            self.removed = true;
            let message = format!(
                "the file is gone (missing for {} or more); its routes were removed",
                humantime::format_duration(reread)
            );
            ProviderState {
                routes: Vec::new(),
                errors: vec![ProviderError::whole(path.display().to_string(), message)],
            }
        } else if missing && !state.routes.is_empty() {
            let mut errors = loaded.errors;
            for e in &mut errors {
                e.message = format!(
                    "{}; its {} routes keep running until it has been missing for {}",
                    e.message,
                    state.routes.len(),
                    humantime::format_duration(reread)
                );
            }
            ProviderState { routes: state.routes.clone(), errors }
        } else {
            ProviderState { routes: state.routes.clone(), errors: loaded.errors }
        };
        if next == *state {
            debug!(file = %path.display(), "routes file unchanged");
            return false;
        }
        for s in &skipped {
            warn!(file = %path.display(), alias = %s.alias, reason = %s.reason, "routes file entry makes no route");
        }
        if next.errors.is_empty() {
            info!(file = %path.display(), routes = next.routes.len(), "routes file loaded");
        } else {
            for e in &next.errors {
                error!(file = %path.display(), alias = e.alias.as_deref().unwrap_or(""), error = %e.message, "routes file error");
            }
            if next.routes.is_empty() {
                warn!(file = %path.display(), errors = next.errors.len(), "routes file not applied; it serves no routes until it loads");
            } else {
                warn!(file = %path.display(), errors = next.errors.len(), kept_routes = next.routes.len(), "routes file not applied; its previous routes keep running");
            }
        }
        *state = next;
        true
    }
}

/// The provider's task: follows events, ticks and reload requests.
struct FileProvider {
    path: PathBuf,
    dir_watch: DirWatch,
    events: Events,
    tx: watch::Sender<ProviderState>,
    file: FileState,
    reread: Duration,
    reload: ReloadListener,
}

impl FileProvider {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut reread = tokio::time::interval_at(Instant::now() + self.reread, self.reread);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rewatch = tokio::time::interval(WATCH_RETRY);
        rewatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = self.events.recv() => match event {
                    // The sender lives in `dir_watch`: never.
                    None => return,
                    Some(Err(e)) => {
                        warn!(file = %self.path.display(), error = %e, "file watcher error");
                        continue;
                    }
                    Some(Ok(event)) => {
                        self.check_watch(&event);
                        if !concerns(&event, &self.path) {
                            continue;
                        }
                        debug!(file = %self.path.display(), kind = ?event.kind, "change seen");
                        if !self.debounce(&shutdown).await {
                            return;
                        }
                        "change"
                    }
                },
                _ = self.reload.next() => {
                    info!(file = %self.path.display(), "reload requested: reading the routes file");
                    self.dir_watch.check();
                    "reload"
                }
                _ = reread.tick() => {
                    self.dir_watch.check();
                    if !self.file.failed && self.dir_watch.active() {
                        continue;
                    }
                    "periodic"
                }
                _ = rewatch.tick(), if !self.dir_watch.active() => {
                    if self.dir_watch.identity().is_none() || self.dir_watch.start().is_err() {
                        continue;
                    }
                    info!(dir = %self.dir_watch.dir.display(), "watching the directory again");
                    "directory back"
                }
            };
            debug!(file = %self.path.display(), why, "reading the routes file");
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || {
                let loaded = routes_file::load(&path);
                let missing = !loaded.errors.is_empty() && missing(&path);
                (loaded, missing)
            });
            let (loaded, missing) = match read.await {
                Ok(read) => read,
                Err(e) => {
                    error!(file = %self.path.display(), error = %e, "reading the routes file failed");
                    continue;
                }
            };
            if missing {
                self.dir_watch.check();
            }
            let (path, file, reread) = (&self.path, &mut self.file, self.reread);
            self.tx.send_if_modified(|state| file.fold(path, state, loaded, missing, reread));
        }
    }

    /// Notices an event that may mean the watched directory itself went away.
    fn check_watch(&mut self, event: &Event) {
        if !matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) {
            return;
        }
        if event.paths.contains(&self.dir_watch.dir) {
            // The directory itself was deleted or moved away: the watch is dead.
            self.dir_watch.lost();
        } else if event.paths.iter().any(|p| p.file_name() != self.path.file_name()) {
            self.dir_watch.check();
        }
    }

    /// Waits until the directory has been quiet for DEBOUNCE, but never longer than
    /// MAX_DEBOUNCE in all; false on shutdown.
    async fn debounce(&mut self, shutdown: &CancellationToken) -> bool {
        let give_up = Instant::now() + MAX_DEBOUNCE;
        let mut quiet = Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(quiet.min(give_up)) => return true,
                event = self.events.recv() => match event {
                    None => return false,
                    Some(Ok(event)) => {
                        self.check_watch(&event);
                        if concerns(&event, &self.path) {
                            quiet = Instant::now() + DEBOUNCE;
                        }
                    }
                    Some(Err(_)) => {}
                },
            }
        }
    }
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
        write(&path, "routes:\n  a: {port: '1:1'}\n");
        let shutdown = CancellationToken::new();
        let mut rx = spawn(path.clone(), FileOptions::default(), shutdown.clone()).unwrap().state;
        assert_eq!(rx.borrow_and_update().routes.len(), 1);

        write(&path, "routes:\n  a: {port: '1:1'}\n  b: {port: '2:2'}\n");
        let state = next_state(&mut rx).await;
        assert_eq!(state.routes.iter().map(|r| r.alias.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(state.errors.is_empty());

        write(&path, "routes:\n  a: {port: '1:1'}\n  b: {prot: 2}\n");
        let state = next_state(&mut rx).await;
        assert_eq!(state.routes.len(), 2, "the last good routes are kept");
        assert_eq!(state.errors.len(), 1);
        assert_eq!(state.errors[0].alias.as_deref(), Some("b"));

        // Replaced by rename, as editors do.
        let tmp = dir.path().join(".routes.yml.tmp");
        write(&tmp, "routes:\n  c: {port: '3:3'}\n");
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
        let mut rx = spawn(path.clone(), FileOptions::default(), shutdown.clone()).unwrap().state;
        assert_eq!(rx.borrow_and_update().errors.len(), 1);
        write(&path, "routes:\n  a: {port: '1:1'}\n");
        let state = next_state(&mut rx).await;
        assert_eq!((state.routes.len(), state.errors.len()), (1, 0));
        shutdown.cancel();
    }

    #[test]
    fn a_missing_directory_cannot_be_watched() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async {
            spawn("/nonexistent-dir/r.yml".into(), FileOptions::default(), CancellationToken::new()).unwrap_err()
        });
        assert_eq!(
            format!("{err:#}"),
            "cannot watch routes file /nonexistent-dir/r.yml: directory /nonexistent-dir does not exist"
        );
    }
}
