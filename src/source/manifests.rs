//! The files source (`--manifests DIR`): Kubernetes YAML/JSON on disk, watched live.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in the directory (not in subdirectories, not hidden)
//! is read as multi-document YAML. After a short debounce, a change (a file created, written,
//! deleted or renamed in) re-reads the files it names, or the whole directory when the watcher
//! cannot say which; the model is updated object by object and a new snapshot is published.
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
use crate::model::{Kind, Model, Object, ObjectKey};
use crate::routing::FastMap;
use crate::translate::{parse_documents, Document, TranslateError};

/// How long to wait for more file events before rescanning; editors and `kubectl`-style atomic
/// writes produce bursts of events.
const DEBOUNCE: Duration = Duration::from_millis(15);
const SOURCE: &str = "manifests";

/// Why the manifest directory could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest directory {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot watch {path}: {error}")]
    Watch { path: PathBuf, error: notify::Error },
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

/// The rejections already logged, so that a recompile does not log them again.
pub type Reported = HashSet<(String, String, &'static str, String)>;

/// Which object: its kind and key.
type ObjectId = (Kind, ObjectKey);

/// The objects read from one directory, file by file, with the last good version of each file,
/// and the model they make.
///
/// The model is kept and changed object by object as files change, so that one edit in a large
/// directory costs what the edited files hold, not what the directory holds.
#[derive(Default)]
pub struct ManifestDir {
    files: BTreeMap<PathBuf, FileState>,
    /// The files that hold each object, in path order; the first one's version is in `model`.
    holders: FastMap<ObjectId, Vec<PathBuf>>,
    model: Model,
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
    pub fn scan(&mut self, dir: &Path, shared: &Shared) -> &Model {
        let paths: BTreeSet<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| is_manifest(p) && p.is_file())
                .collect(),
            Err(e) => {
                // The directory itself is gone or unreadable: keep serving what we had.
                tracing::error!(dir = %dir.display(), error = %e, "cannot read manifest directory; keeping the last good objects");
                shared.metrics.source_error(SOURCE, "read_dir");
                return &self.model;
            }
        };
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !paths.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            self.replace_file(&path, None);
        }
        for path in paths {
            let state = self.read_file(&path, shared);
            self.replace_file(&path, Some(state));
        }
        &self.model
    }

    /// The model of every object read so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The file whose version of the object is in the model.
    pub fn file_of(&self, kind: Kind, key: &ObjectKey) -> Option<&Path> {
        let paths = self.holders.get(&(kind, key.clone()))?;
        paths.first().map(PathBuf::as_path)
    }

    /// Compiles and publishes the model, and logs the rejections not logged before (`reported`),
    /// each with the file that holds the object.
    pub fn publish(&self, shared: &Shared, reported: &mut Reported) {
        let rejected = shared.publish_model(&self.model, true);
        super::report_rejections(reported, &rejected, |r| {
            self.file_of(r.kind, &r.key)
                .map(|p| p.display().to_string())
        });
    }

    /// Re-reads only `changed` (files created, written, removed or renamed in) and returns the
    /// model. Much cheaper than [`ManifestDir::scan`] for one edit in a large directory.
    pub fn update(&mut self, dir: &Path, changed: &BTreeSet<PathBuf>, shared: &Shared) -> &Model {
        for path in changed {
            if path.parent() != Some(dir) || !is_manifest(path) {
                continue;
            }
            let state = path.is_file().then(|| self.read_file(path, shared));
            self.replace_file(path, state);
        }
        &self.model
    }

    /// Replaces what `path` holds (`None`: the file is gone) and brings the model up to date for
    /// exactly the objects the file held before or holds now.
    fn replace_file(&mut self, path: &Path, state: Option<FileState>) {
        let old = match state {
            Some(state) => self.files.insert(path.to_path_buf(), state),
            None => self.files.remove(path),
        };
        let mut touched: Vec<ObjectId> = Vec::new();
        for o in old.iter().flat_map(|f| &f.objects) {
            let id = (o.kind(), o.key());
            if let Some(paths) = self.holders.get_mut(&id) {
                paths.retain(|p| p != path);
            }
            touched.push(id);
        }
        for o in self.files.get(path).iter().flat_map(|f| &f.objects) {
            let id = (o.kind(), o.key());
            let paths = self.holders.entry(id.clone()).or_default();
            match paths.binary_search_by(|p| p.as_path().cmp(path)) {
                Ok(_) => tracing::warn!(
                    "{} {} ({}): defined twice in the file; the first one is used, remove the \
                     other",
                    id.0,
                    id.1,
                    path.display()
                ),
                Err(at) => paths.insert(at, path.to_path_buf()),
            }
            touched.push(id);
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            self.settle(id);
        }
    }

    /// Puts the version of `id` from the first file that holds it into the model, or removes it
    /// when no file does.
    fn settle(&mut self, id: ObjectId) {
        let paths = self.holders.get(&id).map(Vec::as_slice).unwrap_or_default();
        let Some(first) = paths.first() else {
            self.holders.remove(&id);
            self.model.remove(id.0, &id.1);
            return;
        };
        if let Some(other) = paths.get(1) {
            tracing::warn!(
                "{} {} ({}): also defined in {}, which sorts first and wins; remove one",
                id.0,
                id.1,
                other.display(),
                first.display()
            );
        }
        let object = self
            .files
            .get(first)
            .and_then(|f| f.objects.iter().find(|o| o.is(id.0, &id.1)));
        if let Some(o) = object {
            self.model.insert(o.clone());
        }
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
                    match &error {
                        TranslateError::Invalid { kind, key, reason } => tracing::error!(
                            reason = %error.reason(),
                            "{kind} {key} ({}) rejected (a last good version keeps serving): \
                             {reason}",
                            path.display()
                        ),
                        _ => tracing::error!(
                            reason = %error.reason(),
                            "{} rejected (its last good objects keep serving): {error}",
                            path.display()
                        ),
                    }
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
        std::fs::read_dir(&dir).map_err(|error| ManifestError::Dir {
            path: dir.clone(),
            error,
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
        let mut publish = |dir: &ManifestDir| dir.publish(&self.shared, &mut reported);
        dir.scan(&self.dir, &self.shared);
        publish(&dir);
        ready();
        let _watcher = watcher.map_err(|error| ManifestError::Watch {
            path: self.dir.clone(),
            error,
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
                    dir.update(&self.dir, &set, &self.shared);
                    publish(&dir);
                }
                None => {
                    self.shared.metrics.source_event(SOURCE, "rescan");
                    dir.scan(&self.dir, &self.shared);
                    publish(&dir);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: default }}\n\
             spec: {{ ports: [{{ port: {port} }}] }}\n---\n"
        )
    }

    fn port_of(model: &Model, name: &str) -> Option<u16> {
        let svc = model.services.get(&ObjectKey::new("default", name))?;
        svc.ports.first().map(|p| p.port)
    }

    #[test]
    fn gateway_api_objects_and_namespace_labels_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Default::default(), Metrics::new().unwrap());
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
                    metadata: { name: portico }\nspec: { controllerName: portico.dev/gateway-controller }\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                    metadata: { name: gw, namespace: infra }\n\
                    spec: { gatewayClassName: portico, listeners: [{ name: http, port: 80, protocol: HTTP }] }\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: { name: r }\nspec: { parentRefs: [{ name: gw, namespace: infra }] }\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                    metadata: { name: g, namespace: infra }\n\
                    spec: { from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default }], to: [{ group: '', kind: Service }] }\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: { name: infra, labels: { team: a } }\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: { name: broken }\nspec: { rules: 3 }\n";
        std::fs::write(dir.path().join("gw.yaml"), yaml).unwrap();
        let mut manifests = ManifestDir::default();
        let g = &manifests.scan(dir.path(), &shared).gateway_api;
        assert!(g.classes.contains_key(&ObjectKey::new("", "portico")));
        assert!(g.gateways.contains_key(&ObjectKey::new("infra", "gw")));
        assert!(g.routes.contains_key(&ObjectKey::new("default", "r")));
        assert!(!g.routes.contains_key(&ObjectKey::new("default", "broken")));
        assert!(g.grants.contains_key(&ObjectKey::new("infra", "g")));
        assert_eq!(g.namespaces["infra"].labels["team"], "a");
        // As the API server adds it.
        assert_eq!(
            g.namespaces["infra"].labels["kubernetes.io/metadata.name"],
            "infra"
        );
        // Removing the file removes them.
        std::fs::remove_file(dir.path().join("gw.yaml")).unwrap();
        let g = &manifests.scan(dir.path(), &shared).gateway_api;
        assert!(g.classes.is_empty() && g.routes.is_empty() && g.namespaces.is_empty());
    }

    #[test]
    fn edits_change_only_their_objects_and_the_first_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::new(Default::default(), Metrics::new().unwrap());
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, service("web", 80) + &service("api", 81)).unwrap();
        std::fs::write(&b, service("web", 90)).unwrap();
        let mut manifests = ManifestDir::default();
        let model = manifests.scan(dir.path(), &shared);
        assert_eq!(port_of(model, "web"), Some(80), "a.yaml sorts first");
        assert_eq!(port_of(model, "api"), Some(81));

        // Removing the winner's copy lets the next file's copy serve.
        std::fs::write(&a, service("api", 82)).unwrap();
        let model = manifests.update(dir.path(), &BTreeSet::from([a.clone()]), &shared);
        assert_eq!(port_of(model, "web"), Some(90));
        assert_eq!(port_of(model, "api"), Some(82));

        std::fs::remove_file(&b).unwrap();
        let model = manifests.update(dir.path(), &BTreeSet::from([b.clone()]), &shared);
        assert_eq!(port_of(model, "web"), None);
        assert_eq!(port_of(model, "api"), Some(82));

        // A rescan after files changed behind our back agrees with a fresh read.
        std::fs::write(&b, service("web", 91)).unwrap();
        std::fs::remove_file(&a).unwrap();
        let model = manifests.scan(dir.path(), &shared);
        assert_eq!(port_of(model, "web"), Some(91));
        assert_eq!(port_of(model, "api"), None);
        assert_eq!(model.services.len(), 1);
    }
}
