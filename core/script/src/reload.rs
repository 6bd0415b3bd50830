//! [`Reloader<T>`]: the one hot-reload mechanism of Proxlab, for script sets, theme environments
//! and plugins alike.
//!
//! - Watches **directories**, recursively, never single files (an editor's atomic save replaces the
//!   file's inode and a watch on the file itself would go silent after the first save).
//! - Ignores editor temp/backup names (`*.swp`, `*.swx`, `*~`, `4913`, `.#*`, `*.tmp`, dot files).
//! - Debounces: after the last relevant event, waits until the tree has been quiet for
//!   [`ReloadConfig::debounce`] (default 150 ms), then calls the builder once. A burst of saves or
//!   a file written in several `write()` calls gives one rebuild that sees the final content.
//! - On success, swaps the new value in atomically ([`arc_swap`]) and bumps the generation; on
//!   failure keeps the last good value and records the errors. Readers holding an `Arc<T>` from
//!   [`Reloader::current`] keep what they have (jobs in flight keep their snapshot).
//! - Mode `inotify` (the platform's native watcher) or `poll` (stat every interval, for NFS and
//!   other file systems that send no events).
//! - Every rebuild is announced on a [`tokio::sync::broadcast`] channel ([`Reloader::subscribe`]),
//!   so tests and the browser live-reload wait on the event instead of sleeping.
//!
//! ```no_run
//! # use script::{Reloader, ReloadConfig, LoadError};
//! # fn build() -> Result<String, Vec<LoadError>> { Ok(String::new()) }
//! let reloader = Reloader::start(ReloadConfig::new(vec!["themes/site".into()]), build).unwrap();
//! let env = reloader.current();          // Arc<String>, cheap
//! let mut events = reloader.subscribe(); // ReloadEvent per rebuild
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
use notify::{PollWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, NoCache, RecommendedCache, new_debouncer_opt};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::error::{LoadError, ScriptError};
use crate::set::is_ignored_name;

/// How the reloader learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// The platform's native notifications (inotify on Linux).
    Native,
    /// Stat every file every `interval` (for NFS/CIFS mounts, which send no events).
    Poll(Duration),
}

/// Configuration of a [`Reloader`].
#[derive(Clone, Debug)]
pub struct ReloadConfig {
    /// Directories to watch recursively. Missing ones are skipped with a warning.
    pub dirs: Vec<PathBuf>,
    /// Quiet time after the last change before rebuilding. Default 150 ms.
    pub debounce: Duration,
    /// Native or polling.
    pub mode: WatchMode,
}

impl ReloadConfig {
    /// Native mode, 150 ms debounce.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        ReloadConfig {
            dirs,
            debounce: Duration::from_millis(150),
            mode: WatchMode::Native,
        }
    }

    /// Polling mode with `interval` (e.g. 2 s), 150 ms debounce.
    pub fn poll(dirs: Vec<PathBuf>, interval: Duration) -> Self {
        ReloadConfig {
            dirs,
            debounce: Duration::from_millis(150),
            mode: WatchMode::Poll(interval),
        }
    }
}

/// State of a reloader, for `GET /api/reload/status` and the `/admin/reload` page.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadStatus {
    /// Number of successful builds so far (the first build is generation 1).
    pub generation: u64,
    /// When the serving value was built (unix seconds).
    pub last_ok_at: u64,
    /// When the last build was attempted (unix seconds).
    pub last_attempt_at: u64,
    /// Errors of the last build if it failed (the previous good value is still serving);
    /// `None` after a successful build.
    pub last_error: Option<Vec<LoadError>>,
    /// `"inotify"` (native) or `"poll"`.
    pub mode: &'static str,
    /// Poll interval in milliseconds, in poll mode.
    pub poll_interval_ms: Option<u64>,
    /// The watched directories.
    pub dirs: Vec<PathBuf>,
}

/// One rebuild attempt, as broadcast to subscribers.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadEvent {
    /// Generation serving after this attempt (unchanged if it failed).
    pub generation: u64,
    /// Whether the build succeeded and was swapped in.
    pub ok: bool,
    /// The build's errors when it failed.
    pub errors: Vec<LoadError>,
    /// Changed paths that triggered it (empty for [`Reloader::reload_now`]).
    pub changed: Vec<PathBuf>,
}

type Builder<T> = dyn Fn() -> Result<T, Vec<LoadError>> + Send + Sync;

struct Inner<T> {
    current: ArcSwap<T>,
    status: Mutex<ReloadStatus>,
    events: broadcast::Sender<ReloadEvent>,
    builder: Box<Builder<T>>,
    /// Serializes builds (watcher thread and `reload_now`).
    build_lock: Mutex<()>,
}

// Held only to keep the watcher alive: dropping it stops watching.
#[allow(dead_code)]
enum AnyDebouncer {
    Native(Debouncer<notify::RecommendedWatcher, RecommendedCache>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

/// A value of type `T` rebuilt from files whenever they change. See the module docs.
///
/// Dropping the reloader stops the watcher; the last value stays valid for holders of its `Arc`.
pub struct Reloader<T> {
    inner: Arc<Inner<T>>,
    _watcher: Option<AnyDebouncer>,
    _tx: mpsc::Sender<Vec<PathBuf>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `true` for event kinds that change content: create, modify, remove, close-after-write.
/// Opens, reads and close-after-read are not changes (the builder's own reads produce them;
/// counting them would reload forever).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// `true` if a change of `path` should trigger a rebuild (not an editor temp/backup name).
pub fn is_relevant_path(path: &Path) -> bool {
    path.file_name()
        .map(|n| !is_ignored_name(&n.to_string_lossy()))
        .unwrap_or(false)
}

impl<T: Send + Sync + 'static> Reloader<T> {
    /// Builds the first value (which must succeed: errors are returned as
    /// [`ScriptError::Load`]), then starts watching.
    ///
    /// Errors: [`ScriptError::Load`] (first build failed), [`ScriptError::Watch`] (the watcher
    /// could not start, e.g. inotify watch limit reached — use poll mode).
    pub fn start(
        config: ReloadConfig,
        builder: impl Fn() -> Result<T, Vec<LoadError>> + Send + Sync + 'static,
    ) -> Result<Self, ScriptError> {
        let first = builder().map_err(ScriptError::Load)?;
        Self::start_with(config, first, builder)
    }

    /// Starts with an `initial` value already built (generation 1), then watches.
    pub fn start_with(
        config: ReloadConfig,
        initial: T,
        builder: impl Fn() -> Result<T, Vec<LoadError>> + Send + Sync + 'static,
    ) -> Result<Self, ScriptError> {
        let now = unix_now();
        let dirs: Vec<PathBuf> = config
            .dirs
            .iter()
            .filter(|d| {
                let ok = d.is_dir();
                if !ok {
                    tracing::warn!(dir = %d.display(), "reload: not a directory, not watched");
                }
                ok
            })
            .cloned()
            .collect();
        let (mode, poll_interval_ms) = match config.mode {
            WatchMode::Native => ("inotify", None),
            WatchMode::Poll(d) => ("poll", Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        };
        let (events, _) = broadcast::channel(64);
        let inner = Arc::new(Inner {
            current: ArcSwap::from_pointee(initial),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                last_ok_at: now,
                last_attempt_at: now,
                last_error: None,
                mode,
                poll_interval_ms,
                dirs: dirs.clone(),
            }),
            events,
            builder: Box::new(builder),
            build_lock: Mutex::new(()),
        });

        // Watcher → (filter) → channel → reload thread (trailing-edge debounce) → rebuild.
        let (tx, rx) = mpsc::channel::<Vec<PathBuf>>();
        let handler_tx = tx.clone();
        let handler = move |res: DebounceEventResult| match res {
            Ok(events) => {
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| is_change(&e.event.kind))
                    .flat_map(|e| e.event.paths)
                    .filter(|p| is_relevant_path(p))
                    .collect();
                if !paths.is_empty() {
                    let _ = handler_tx.send(paths);
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "reload: watcher error");
                }
            }
        };
        // The debouncer merges rename pairs and duplicate events; the quiet-period debounce is ours.
        let notify_window = Duration::from_millis(50).min(config.debounce);
        let watcher = if dirs.is_empty() {
            None
        } else {
            Some(match config.mode {
                WatchMode::Native => {
                    let mut d = new_debouncer_opt::<_, notify::RecommendedWatcher, _>(
                        notify_window,
                        None,
                        handler,
                        RecommendedCache::new(),
                        notify::Config::default(),
                    )
                    .map_err(|e| ScriptError::Watch(e.to_string()))?;
                    for dir in &dirs {
                        d.watch(dir, RecursiveMode::Recursive)
                            .map_err(|e| ScriptError::Watch(format!("{}: {e}", dir.display())))?;
                    }
                    AnyDebouncer::Native(d)
                }
                WatchMode::Poll(interval) => {
                    let mut d = new_debouncer_opt::<_, PollWatcher, _>(
                        notify_window,
                        None,
                        handler,
                        NoCache,
                        // PollWatcher compares mtimes in whole seconds; hashing contents also catches
                        // two saves within one second.
                        notify::Config::default()
                            .with_poll_interval(interval)
                            .with_compare_contents(true),
                    )
                    .map_err(|e| ScriptError::Watch(e.to_string()))?;
                    for dir in &dirs {
                        d.watch(dir, RecursiveMode::Recursive)
                            .map_err(|e| ScriptError::Watch(format!("{}: {e}", dir.display())))?;
                    }
                    AnyDebouncer::Poll(d)
                }
            })
        };

        let weak = Arc::downgrade(&inner);
        let quiet = config.debounce;
        std::thread::Builder::new()
            .name("proxlab-reload".into())
            .spawn(move || {
                // Ends when every sender is gone (the Reloader was dropped).
                while let Ok(mut changed) = rx.recv() {
                    loop {
                        match rx.recv_timeout(quiet) {
                            Ok(more) => changed.extend(more),
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    changed.sort();
                    changed.dedup();
                    let Some(inner) = weak.upgrade() else { return };
                    rebuild(&inner, changed);
                }
            })
            .map_err(|e| ScriptError::Watch(e.to_string()))?;

        Ok(Reloader {
            inner,
            _watcher: watcher,
            _tx: tx,
        })
    }

    /// The value serving now. Hold the `Arc` for the duration of a request or job.
    pub fn current(&self) -> Arc<T> {
        self.inner.current.load_full()
    }

    /// Generation, last success, last errors, mode.
    pub fn status(&self) -> ReloadStatus {
        self.inner
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A receiver of [`ReloadEvent`]s (one per rebuild attempt).
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.inner.events.subscribe()
    }

    /// Rebuilds now, synchronously (an admin's "reload" button). Returns the new generation, or
    /// the errors (the previous value keeps serving). Blocking: call from a blocking context.
    pub fn reload_now(&self) -> Result<u64, Vec<LoadError>> {
        let ev = rebuild(&self.inner, Vec::new());
        if ev.ok { Ok(ev.generation) } else { Err(ev.errors) }
    }
}

fn rebuild<T>(inner: &Inner<T>, changed: Vec<PathBuf>) -> ReloadEvent {
    let _guard = inner.build_lock.lock().unwrap_or_else(|p| p.into_inner());
    let result = (inner.builder)();
    let now = unix_now();
    let mut status = inner.status.lock().unwrap_or_else(|p| p.into_inner());
    status.last_attempt_at = now;
    let event = match result {
        Ok(value) => {
            inner.current.store(Arc::new(value));
            status.generation += 1;
            status.last_ok_at = now;
            status.last_error = None;
            tracing::info!(generation = status.generation, changed = ?changed, "reloaded");
            ReloadEvent {
                generation: status.generation,
                ok: true,
                errors: Vec::new(),
                changed,
            }
        }
        Err(errors) => {
            for e in &errors {
                tracing::warn!(file = %e.file.display(), line = e.line.unwrap_or(0), "reload failed, keeping the last good version: {}", e.message);
            }
            status.last_error = Some(errors.clone());
            ReloadEvent {
                generation: status.generation,
                ok: false,
                errors,
                changed,
            }
        }
    };
    drop(status);
    let _ = inner.events.send(event.clone());
    event
}
