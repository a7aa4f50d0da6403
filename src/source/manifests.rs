//! The files source (`--manifests DIR`): Kubernetes YAML/JSON on disk, watched live.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in the directory (not in subdirectories, not hidden)
//! is read as multi-document YAML. A change of any file (created, written, deleted, renamed in)
//! rescans the directory after a short debounce and publishes a new snapshot.
//!
//! Nothing is lost to a bad edit: a file that does not parse, or an object that is invalid, is
//! logged with the file, the object and the reason, and the last good version of what it held
//! keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use tokio::sync::mpsc;

use crate::dataplane::Shared;
use crate::model::{Model, Object};
use crate::translate::{parse_documents, Document};

/// How long to wait for more file events before rescanning; editors and `kubectl`-style atomic
/// writes produce bursts of events.
const DEBOUNCE: Duration = Duration::from_millis(15);
const SOURCE: &str = "manifests";

/// Why the manifest directory could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Clone)]
struct FileState {
    /// Hash of the content last parsed, so that an unchanged file is not parsed again.
    content: Option<u64>,
    objects: Vec<Object>,
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The objects read from one directory, file by file, with the last good version of each file.
#[derive(Default)]
pub struct ManifestDir {
    files: BTreeMap<PathBuf, FileState>,
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

impl ManifestDir {
    /// Rescans `dir` and returns the model of every object it now holds. Errors are logged and
    /// counted; they never fail the scan.
    pub fn scan(&mut self, dir: &Path, shared: &Shared) -> Model {
        let mut seen = BTreeMap::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| is_manifest(p) && p.is_file())
                    .collect();
                paths.sort();
                for path in paths {
                    let state = self.read_file(&path, shared);
                    seen.insert(path, state);
                }
            }
            Err(e) => {
                // The directory itself is gone or unreadable: keep serving what we had.
                tracing::error!(dir = %dir.display(), error = %e, "cannot read manifest directory; keeping the last good objects");
                shared.metrics.source_error(SOURCE, "read_dir");
                return self.model(shared);
            }
        }
        self.files = seen;
        self.model(shared)
    }

    /// Re-reads only `changed` (files created, written, removed or renamed in) and returns the
    /// model. Much cheaper than [`ManifestDir::scan`] for one edit in a large directory.
    pub fn update(&mut self, dir: &Path, changed: &BTreeSet<PathBuf>, shared: &Shared) -> Model {
        for path in changed {
            if path.parent() != Some(dir) || !is_manifest(path) {
                continue;
            }
            if path.is_file() {
                let state = self.read_file(path, shared);
                self.files.insert(path.clone(), state);
            } else {
                self.files.remove(path);
            }
        }
        self.model(shared)
    }

    fn read_file(&self, path: &Path, shared: &Shared) -> FileState {
        let previous = self.files.get(path);
        let keep_previous = || FileState {
            content: None,
            objects: previous.map(|p| p.objects.clone()).unwrap_or_default(),
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read file; keeping its last good objects");
                shared.metrics.source_error(SOURCE, "read");
                return keep_previous();
            }
        };
        let content = Some(content_hash(&bytes));
        if let Some(prev) = previous.filter(|p| p.content == content) {
            return prev.clone();
        }
        let Ok(text) = String::from_utf8(bytes) else {
            tracing::error!(file = %path.display(), "file is not UTF-8; keeping its last good objects");
            shared.metrics.source_error(SOURCE, "encoding");
            return keep_previous();
        };
        let mut objects = Vec::new();
        let mut keep_previous_unmentioned = false;
        let mut mentioned = HashSet::new();
        for doc in parse_documents(&text) {
            match doc {
                Document::Object(o) => {
                    shared.metrics.source_event(SOURCE, o.kind().as_str());
                    mentioned.insert((o.kind(), o.key()));
                    objects.push(o);
                }
                Document::Ignored => {}
                Document::Rejected { identity, error } => {
                    shared.metrics.source_error(SOURCE, error.reason());
                    let object = identity
                        .as_ref()
                        .map(|(_, k)| k.to_string())
                        .unwrap_or_default();
                    tracing::error!(
                        file = %path.display(),
                        kind = error.kind(),
                        object = %object,
                        reason = %error,
                        "rejected; the last good version keeps serving"
                    );
                    match identity {
                        // Keep the last good version of exactly this object.
                        Some((kind, key)) => {
                            if let Some(old) = previous.and_then(|p| {
                                p.objects
                                    .iter()
                                    .find(|o| o.kind().as_str() == kind && o.key() == key)
                            }) {
                                mentioned.insert((old.kind(), old.key()));
                                objects.push(old.clone());
                            }
                        }
                        // A syntax error hides the rest of the file: keep what it held before.
                        None => keep_previous_unmentioned = true,
                    }
                }
            }
        }
        if keep_previous_unmentioned {
            if let Some(prev) = previous {
                for o in &prev.objects {
                    if !mentioned.contains(&(o.kind(), o.key())) {
                        objects.push(o.clone());
                    }
                }
            }
        }
        FileState { content, objects }
    }

    fn model(&self, _shared: &Shared) -> Model {
        let mut model = Model::default();
        let mut origin: BTreeMap<(crate::model::Kind, crate::model::ObjectKey), &Path> =
            BTreeMap::new();
        for (path, state) in &self.files {
            for o in &state.objects {
                let id = (o.kind(), o.key());
                if let Some(first) = origin.get(&id) {
                    tracing::warn!(
                        file = %path.display(),
                        kind = %id.0,
                        object = %id.1,
                        first = %first.display(),
                        "duplicate object; the one in the first file wins"
                    );
                    continue;
                }
                origin.insert(id, path);
                model.insert(o.clone());
            }
        }
        model
    }
}

/// The background service that loads and watches the directory.
pub struct ManifestSource {
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
}

impl ManifestSource {
    /// Checks that the directory exists; called before the server starts so that a typo fails
    /// fast instead of serving nothing.
    pub fn new(dir: PathBuf, shared: Arc<Shared>) -> Result<Self, ManifestError> {
        std::fs::read_dir(&dir).map_err(|source| ManifestError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, shared })
    }

    /// Loads the directory and publishes the first snapshot, then signals `ready` (the proxy
    /// listeners start only after that); then applies every change until shutdown.
    pub async fn run(
        &self,
        mut shutdown: ShutdownWatch,
        ready: impl FnOnce(),
    ) -> Result<(), ManifestError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Watch before the first scan, so that no change between the two is missed.
        let watcher = notify::recommended_watcher(move |event| {
            // The receiver only goes away at shutdown.
            let _ = tx.send(event);
        })
        .and_then(|mut w| w.watch(&self.dir, RecursiveMode::NonRecursive).map(|_| w));

        let mut dir = ManifestDir::default();
        let mut reported = HashSet::new();
        let mut publish = |model: Model| {
            let rejected = self.shared.publish_model(&model, true);
            super::report_rejections(&mut reported, &rejected);
        };
        publish(dir.scan(&self.dir, &self.shared));
        ready();
        let _watcher = watcher.map_err(|source| ManifestError::Watch {
            path: self.dir.clone(),
            source,
        })?;
        tracing::info!(dir = %self.dir.display(), "manifests loaded; watching for changes");

        loop {
            // The paths that changed in this burst; `None` means rescan everything (an event
            // without paths, a queue overflow, the directory itself).
            let mut changed = Some(BTreeSet::new());
            let mut note = |event: Option<notify::Result<notify::Event>>| -> bool {
                match event {
                    None => return false,
                    Some(Err(e)) => {
                        tracing::error!(dir = %self.dir.display(), error = %e, "file watch error");
                        self.shared.metrics.source_error(SOURCE, "watch");
                        changed = None;
                    }
                    // Our own reads show up as access events; only changes count.
                    Some(Ok(e)) if matches!(e.kind, notify::EventKind::Access(_)) => {}
                    Some(Ok(e)) => {
                        let whole_dir =
                            e.need_rescan() || e.paths.is_empty() || e.paths.contains(&self.dir);
                        match (&mut changed, whole_dir) {
                            (Some(set), false) => set.extend(e.paths),
                            _ => changed = None,
                        }
                    }
                }
                true
            };
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                event = rx.recv() => {
                    if !note(event) {
                        return Ok(());
                    }
                }
            }
            // Coalesce the burst, then apply it once.
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(event) = rx.try_recv() {
                note(Some(event));
            }
            match changed {
                Some(set) if set.is_empty() => {}
                Some(set) => {
                    self.shared.metrics.source_event(SOURCE, "update");
                    publish(dir.update(&self.dir, &set, &self.shared));
                }
                None => {
                    self.shared.metrics.source_event(SOURCE, "rescan");
                    publish(dir.scan(&self.dir, &self.shared));
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ManifestSource {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut ready = Some(ready);
        let result = self
            .run(shutdown, || {
                if let Some(r) = ready.take() {
                    r.notify_ready()
                }
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "manifest source stopped; the last snapshot keeps serving");
            self.shared.metrics.source_error(SOURCE, "watch");
        }
    }
}
