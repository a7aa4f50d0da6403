//! The Kubernetes source: reflectors on the API server feed the same compile step as the files.
//!
//! One reflector per kind (Ingress, IngressClass, Service, EndpointSlice and `kubernetes.io/tls`
//! Secrets), each `watcher().default_backoff().reflect(writer)`, translates what it sees into
//! [`Change`]s for one controller task. The controller keeps the [`Model`] and publishes at
//! most once per [`DEBOUNCE`] (an isolated change at once, a burst together):
//! - nothing until every reflector has finished its first list (`InitDone`); then one complete
//!   snapshot, which turns `/readyz` to 200;
//! - a full recompile when an Ingress, IngressClass, Service or Secret really changed;
//! - only the affected pools ([`Shared::publish_endpoints`]) when only EndpointSlices changed, so
//!   an endpoint change costs the same with 10 or 10,000 Ingresses.
//!
//! When the API server goes away the reflectors retry with backoff and the last snapshot keeps
//! serving untouched; a `410 Gone` makes the watcher relist, which replaces that kind's objects
//! in the model at once. Beside the controller run the Ingress status writer ([`super::status`],
//! behind the Lease of [`super::leader`]) and the Event recorder ([`super::events`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap as K8sConfigMap, Namespace as K8sNamespace, Secret, Service as K8sService,
};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use k8s_openapi::api::networking::v1::{Ingress as K8sIngress, IngressClass as K8sClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::KubeOptions;
use crate::dataplane::Shared;
use crate::model::{Kind, Model, Object, ObjectKey};
use crate::routing::{owned_ingresses, Rejected};
use crate::source::gateway_api;
use crate::translate;

/// The shortest time between the end of one publish and the next. A change after a quiet spell
/// is published at once; the changes of a burst (a rollout) that arrive meanwhile wait and go
/// out together, so a burst costs at most one publish per 10 ms.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// The `source` label of this source's metrics.
pub const SOURCE: &str = "kubernetes";
/// The field selector that keeps every Secret but TLS ones out of memory.
pub const TLS_SECRET_SELECTOR: &str = "type=kubernetes.io/tls";
/// In ingress-nginx compatibility mode: TLS and Opaque Secrets (a `proxy-ssl-secret` may be
/// either); the bulky and sensitive kinds Portico never reads stay out of memory.
pub const COMPAT_SECRET_SELECTOR: &str = "type!=helm.sh/release.v1,\
type!=kubernetes.io/service-account-token,type!=kubernetes.io/dockerconfigjson,\
type!=kubernetes.io/dockercfg,type!=kubernetes.io/basic-auth,type!=kubernetes.io/ssh-auth,\
type!=bootstrap.kubernetes.io/token";

/// Why the Kubernetes client could not be built. Both are retried: a mounted service account
/// token can appear late, and a kubeconfig can be fixed in place.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {error}")]
    Kubeconfig {
        path: std::path::PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration: {0}")]
    Infer(kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(kube::Error),
}

/// Builds the client: `--kubeconfig` when given, else in-cluster or `$KUBECONFIG`
/// (`Client::try_default`). Does not contact the API server.
pub async fn client(options: &KubeOptions) -> Result<Client, KubeError> {
    match &options.kubeconfig {
        Some(path) => {
            let wrap = |error| KubeError::Kubeconfig {
                path: path.clone(),
                error,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(wrap)?;
            Client::try_from(config).map_err(KubeError::Client)
        }
        // `Client::try_default`, without kube's "Failed to infer configuration" in front of
        // `InferConfigError`'s own "failed to infer config".
        None => {
            let config = kube::Config::infer().await.map_err(KubeError::Infer)?;
            Client::try_from(config).map_err(KubeError::Client)
        }
    }
}

/// Where the Kubernetes client will take its configuration from, as far as can be told before
/// building it: the order of `Client::try_default` (`$KUBECONFIG`, then `~/.kube/config`, then
/// the in-cluster service account), or `--kubeconfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientConfig {
    /// `--kubeconfig FILE`.
    Flag(std::path::PathBuf),
    /// `$KUBECONFIG`, as given (one path or several, colon-separated).
    Env(String),
    /// `~/.kube/config`.
    Home(std::path::PathBuf),
    /// The service account of the pod Portico runs in.
    InCluster,
    /// Nothing: the client cannot be built until one of the above appears.
    Missing {
        /// `~/.kube/config`, when the home directory is known.
        home: Option<std::path::PathBuf>,
    },
}

/// The account token a pod's service account mounts.
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl ClientConfig {
    /// Looks at the flag, the environment and the files, as the client will.
    pub fn detect(options: &KubeOptions) -> ClientConfig {
        if let Some(path) = &options.kubeconfig {
            return ClientConfig::Flag(path.clone());
        }
        if let Some(env) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return ClientConfig::Env(env.to_string_lossy().into_owned());
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| std::path::PathBuf::from(h).join(".kube").join("config"));
        if let Some(path) = home.as_ref().filter(|p| p.is_file()) {
            return ClientConfig::Home(path.clone());
        }
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::path::Path::new(IN_CLUSTER_TOKEN).is_file();
        if in_cluster {
            return ClientConfig::InCluster;
        }
        ClientConfig::Missing { home }
    }

    /// The one start-up line that says where Portico reads its objects from.
    pub fn describe(&self) -> String {
        const WITHOUT: &str =
            "to run without a cluster: `portico --manifests DIR` (Kubernetes YAML files) or `portico demo`";
        match self {
            ClientConfig::Flag(p) => {
                format!(
                    "source: the Kubernetes API, through --kubeconfig {}; {WITHOUT}",
                    p.display()
                )
            }
            ClientConfig::Env(v) => {
                format!("source: the Kubernetes API, through $KUBECONFIG={v}; {WITHOUT}")
            }
            ClientConfig::Home(p) => {
                format!(
                    "source: the Kubernetes API, through {}; {WITHOUT}",
                    p.display()
                )
            }
            ClientConfig::InCluster => {
                "source: the Kubernetes API, through the pod's service account".into()
            }
            ClientConfig::Missing { home } => {
                let home = home
                    .as_ref()
                    .map(|p| format!("no {}", p.display()))
                    .unwrap_or_else(|| "no $HOME".into());
                format!(
                    "source: the Kubernetes API, but there is no kubeconfig ($KUBECONFIG unset, {home}, \
                     no --kubeconfig) and no in-cluster service account; Portico retries and \
                     stays not ready until one appears; {WITHOUT}"
                )
            }
        }
    }
}

/// One change seen by a reflector, already translated into the model's terms.
#[derive(Debug)]
pub enum Change {
    /// An object was added or modified.
    Upsert(Object),
    /// An object was deleted, or changed into something Portico does not read.
    Remove(Kind, ObjectKey),
    /// A (re)list finished: these are now all the objects of the kind.
    Relisted(Kind, Vec<Object>),
    /// A (re)list of one namespace's objects of the kind finished (a second watch of a kind,
    /// in a namespace the first does not cover): these are now all of that namespace.
    RelistedIn(Kind, String, Vec<Object>),
}

/// A kind the source watches: how to key it and translate it.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;

    /// `Ok(None)` for an object Portico does not read (a Secret of another type).
    fn translate(&self) -> Result<Option<Object>, String>;

    fn object_key(&self) -> ObjectKey {
        let name = self.meta().name.clone().unwrap_or_default();
        if matches!(
            Self::KIND,
            Kind::IngressClass | Kind::GatewayClass | Kind::Namespace
        ) {
            return ObjectKey::new("", name);
        }
        let ns = self.meta().namespace.as_deref().unwrap_or("default");
        ObjectKey::new(ns, name)
    }
}

impl Watched for K8sIngress {
    const KIND: Kind = Kind::Ingress;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::ingress_from_k8s(self).map(|o| Some(Object::Ingress(Arc::new(o))))
    }
}

impl Watched for K8sClass {
    const KIND: Kind = Kind::IngressClass;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::class_from_k8s(self).map(|o| Some(Object::IngressClass(Arc::new(o))))
    }
}

impl Watched for K8sService {
    const KIND: Kind = Kind::Service;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::service_from_k8s(self).map(|o| Some(Object::Service(Arc::new(o))))
    }
}

impl Watched for K8sSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::slice_from_k8s(self).map(|o| Some(Object::EndpointSlice(Arc::new(o))))
    }
}

impl Watched for K8sConfigMap {
    const KIND: Kind = Kind::ConfigMap;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::config_map_from_k8s(self).map(|c| Some(Object::ConfigMap(Arc::new(c))))
    }
}

impl Watched for Secret {
    const KIND: Kind = Kind::Secret;
    fn translate(&self) -> Result<Option<Object>, String> {
        translate::secret_from_k8s(self).map(|o| o.map(|s| Object::Secret(Arc::new(s))))
    }
}

impl Watched for gateway_api::GatewayClass {
    const KIND: Kind = Kind::GatewayClass;
    fn translate(&self) -> Result<Option<Object>, String> {
        Ok(Some(Object::GatewayClass(Arc::new(self.clone()))))
    }
}

impl Watched for gateway_api::Gateway {
    const KIND: Kind = Kind::Gateway;
    fn translate(&self) -> Result<Option<Object>, String> {
        Ok(Some(Object::Gateway(Arc::new(self.clone()))))
    }
}

impl Watched for gateway_api::HTTPRoute {
    const KIND: Kind = Kind::HTTPRoute;
    fn translate(&self) -> Result<Option<Object>, String> {
        Ok(Some(Object::HTTPRoute(Arc::new(self.clone()))))
    }
}

impl Watched for gateway_api::ReferenceGrant {
    const KIND: Kind = Kind::ReferenceGrant;
    fn translate(&self) -> Result<Option<Object>, String> {
        Ok(Some(Object::ReferenceGrant(Arc::new(self.clone()))))
    }
}

impl Watched for K8sNamespace {
    const KIND: Kind = Kind::Namespace;
    fn translate(&self) -> Result<Option<Object>, String> {
        Ok(Some(Object::Namespace(Arc::new(crate::model::Namespace {
            name: self.metadata.name.clone().unwrap_or_default(),
            labels: self.metadata.labels.clone().unwrap_or_default(),
        }))))
    }
}

/// Translates one object; an invalid one is logged, counted and treated as absent.
fn translated<K: Watched>(obj: &K, shared: &Shared) -> Change {
    let key = obj.object_key();
    match obj.translate() {
        Ok(Some(object)) => Change::Upsert(object),
        Ok(None) => Change::Remove(K::KIND, key),
        Err(reason) => {
            // The reason names fields, never values: safe for Secrets too.
            tracing::warn!("{} {key}: {reason}; left out", K::KIND);
            shared.metrics.source_error(SOURCE, "invalid");
            Change::Remove(K::KIND, key)
        }
    }
}

/// A short, low-cardinality reason for a watcher error.
fn error_reason(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(s) if s.code == 410 => "gone",
        watcher::Error::WatchError(_) => "watch_error",
        watcher::Error::WatchFailed(_) => "watch_failed",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

/// Traces the receipt of a watch event (see [`crate::dataplane::PROPAGATION`]).
fn received<K: Watched>(o: &K, event: &'static str) {
    tracing::debug!(
        target: crate::dataplane::PROPAGATION,
        stage = "watch",
        event,
        kind = %K::KIND,
        object = %o.object_key(),
        rv = o.meta().resource_version.as_deref().unwrap_or(""),
        unix_us = crate::dataplane::unix_us(),
    );
}

/// Runs one reflector until its channel closes. Never returns on errors: the watcher retries
/// them itself, with the default (client-go) backoff.
async fn reflect<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    tx: mpsc::UnboundedSender<Change>,
    shared: Arc<Shared>,
    namespace: Option<String>,
) {
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(watcher::Event::Apply(o)) => {
                shared.metrics.source_event(SOURCE, K::KIND.as_str());
                received(&o, "apply");
                translated(&o, &shared)
            }
            Ok(watcher::Event::Delete(o)) => {
                shared.metrics.source_event(SOURCE, K::KIND.as_str());
                received(&o, "delete");
                Change::Remove(K::KIND, o.object_key())
            }
            Ok(watcher::Event::Init) => {
                // A (re)list starts: the first one, or a restart after 410 Gone.
                shared.metrics.source_event(SOURCE, "relist");
                tracing::debug!(kind = %K::KIND, "listing");
                continue;
            }
            Ok(watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone) => {
                // `reflect` has swapped the complete list into the store before yielding this.
                let objects = store
                    .state()
                    .iter()
                    .filter_map(|o| match translated(o.as_ref(), &shared) {
                        Change::Upsert(object) => Some(object),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                tracing::debug!(kind = %K::KIND, objects = objects.len(), "listed");
                match &namespace {
                    None => Change::Relisted(K::KIND, objects),
                    Some(ns) => Change::RelistedIn(K::KIND, ns.clone(), objects),
                }
            }
            Err(e) => {
                shared.metrics.source_error(SOURCE, error_reason(&e));
                tracing::warn!(kind = %K::KIND, error = %e, "watch failed; retrying with backoff; the last snapshot keeps serving");
                continue;
            }
        };
        if tx.send(change).is_err() {
            return; // the controller stopped: shutdown
        }
    }
}

/// Starts the reflector of one kind and returns its store.
fn spawn_reflector<K: Watched>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    tx: &mpsc::UnboundedSender<Change>,
    shared: &Arc<Shared>,
) -> Store<K> {
    spawn_reflector_in(tasks, api, config, tx, shared, None)
}

/// Starts a reflector; with `namespace`, one of two of its kind, which lists that namespace only
/// ([`Change::RelistedIn`]).
fn spawn_reflector_in<K: Watched>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    tx: &mpsc::UnboundedSender<Change>,
    shared: &Arc<Shared>,
    namespace: Option<String>,
) -> Store<K> {
    let writer = reflector::store::Writer::<K>::default();
    let store = writer.as_reader();
    tasks.spawn(reflect(
        api,
        config,
        writer,
        store.clone(),
        tx.clone(),
        shared.clone(),
        namespace,
    ));
    store
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Ingresses whose status Portico owns, as of the last compile.
pub type Owned = Arc<Vec<ObjectKey>>;

/// Sets `map[key] = value` unless an equal value is there; returns the replaced value when the
/// map changed (`Some(None)` for a new key).
fn upsert<K: Ord, V: PartialEq>(
    map: &mut BTreeMap<K, Arc<V>>,
    key: K,
    value: Arc<V>,
) -> Option<Option<Arc<V>>> {
    match map.get(&key) {
        Some(old) if **old == *value => None,
        _ => Some(map.insert(key, value)),
    }
}

/// The controller: the model, the debounce, and what to publish.
pub struct Controller {
    shared: Arc<Shared>,
    model: Model,
    /// The lists done: a kind, or a kind in one namespace (a second watch of the kind).
    synced: BTreeSet<(Kind, Option<String>)>,
    /// How many lists must be done before the first publish.
    lists: usize,
    published: bool,
    routes_dirty: bool,
    /// Services whose EndpointSlices changed since the last publish.
    endpoints_dirty: BTreeSet<ObjectKey>,
    /// An Ingress or IngressClass event arrived (maybe status only): re-check status.
    status_dirty: bool,
    reported: HashSet<(String, String, &'static str, String)>,
    owned: watch::Sender<Option<Owned>>,
    rejections: mpsc::UnboundedSender<Vec<Rejected>>,
}

const KINDS: usize = 5;

impl Controller {
    /// An empty controller: publishes to `shared`, sends the owned Ingresses after each compile on
    /// `owned` and new rejections on `rejections`. Nothing is published before every kind is
    /// listed ([`Change::Relisted`]).
    pub fn new(
        shared: Arc<Shared>,
        owned: watch::Sender<Option<Owned>>,
        rejections: mpsc::UnboundedSender<Vec<Rejected>>,
    ) -> Self {
        Self {
            lists: KINDS + usize::from(shared.options.nginx.is_some()),
            shared,
            model: Model::default(),
            synced: BTreeSet::new(),
            published: false,
            routes_dirty: false,
            endpoints_dirty: BTreeSet::new(),
            status_dirty: false,
            reported: HashSet::new(),
            owned,
            rejections,
        }
    }

    /// One more list (a second watch of a kind) must be done before the first publish.
    pub fn expect_list(&mut self) {
        self.lists += 1;
    }

    /// Whether a ConfigMap changes routes: ingress-nginx's own, or one an Ingress's
    /// `custom-headers` names. Every other ConfigMap of the cluster is kept (an Ingress may name
    /// it later) but costs no recompile.
    fn config_map_matters(&self, key: &ObjectKey) -> bool {
        self.shared
            .options
            .nginx
            .as_ref()
            .is_some_and(|n| n.configmap == *key)
            || self.model.ingresses.values().any(|i| {
                i.nginx
                    .as_ref()
                    .is_some_and(|n| n.custom_headers.as_ref() == Some(key))
            })
    }

    /// Whether an Opaque Secret changes routes: one an Ingress's `proxy-ssl-secret` or
    /// `auth-secret` names. Every other one costs no recompile.
    fn secret_matters(&self, key: &ObjectKey) -> bool {
        self.model.ingresses.values().any(|i| {
            i.nginx.as_ref().is_some_and(|n| {
                n.proxy_ssl.as_ref().is_some_and(|s| s.secret == *key)
                    || n.basic_auth.as_ref().is_some_and(|a| {
                        a.secret == *key
                            || (a.secret.namespace.is_empty()
                                && a.secret.name == key.name
                                && i.key.namespace == key.namespace)
                    })
            })
        })
    }

    /// True once the first complete snapshot is published.
    pub fn is_synced(&self) -> bool {
        self.published
    }

    fn slice_service(slice: &crate::model::EndpointSlice) -> Option<ObjectKey> {
        slice
            .service_name
            .as_ref()
            .map(|s| ObjectKey::new(slice.key.namespace.clone(), s.clone()))
    }

    fn touch_slice(&mut self, slice: Option<&Arc<crate::model::EndpointSlice>>) {
        if let Some(svc) = slice.and_then(|s| Self::slice_service(s)) {
            self.endpoints_dirty.insert(svc);
        }
    }

    /// Applies one change to the model and records what it makes stale.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Upsert(object) => self.upsert(object),
            Change::Remove(kind, key) => self.remove(kind, &key),
            Change::Relisted(kind, objects) => self.relisted(kind, None, objects),
            Change::RelistedIn(kind, ns, objects) => self.relisted(kind, Some(ns), objects),
        }
    }

    /// A list is done: `objects` replace every object of the kind (in `namespace`, if given).
    fn relisted(&mut self, kind: Kind, namespace: Option<String>, objects: Vec<Object>) {
        {
            {
                let mut keep = BTreeSet::new();
                for object in objects {
                    keep.insert(object.key());
                    self.upsert(object);
                }
                let gone: Vec<ObjectKey> = match kind {
                    Kind::Ingress => self.model.ingresses.keys().cloned().collect(),
                    Kind::IngressClass => self
                        .model
                        .classes
                        .keys()
                        .map(|n| ObjectKey::new("", n.clone()))
                        .collect(),
                    Kind::Service => self.model.services.keys().cloned().collect(),
                    Kind::EndpointSlice => self.model.slices.keys().cloned().collect(),
                    Kind::Secret => self.model.secrets.keys().cloned().collect(),
                    Kind::ConfigMap => self.model.config_maps.keys().cloned().collect(),
                    Kind::GatewayClass => self.model.gateway_api.classes.keys().cloned().collect(),
                    Kind::Gateway => self.model.gateway_api.gateways.keys().cloned().collect(),
                    Kind::HTTPRoute => self.model.gateway_api.routes.keys().cloned().collect(),
                    Kind::ReferenceGrant => self.model.gateway_api.grants.keys().cloned().collect(),
                    Kind::Namespace => self
                        .model
                        .gateway_api
                        .namespaces
                        .keys()
                        .map(|n| ObjectKey::new("", n.clone()))
                        .collect(),
                };
                let scope = |k: &ObjectKey| namespace.as_ref().is_none_or(|ns| k.namespace == *ns);
                for key in gone.into_iter().filter(|k| !keep.contains(k) && scope(k)) {
                    self.remove(kind, &key);
                }
                if matches!(
                    kind,
                    Kind::Ingress
                        | Kind::IngressClass
                        | Kind::GatewayClass
                        | Kind::Gateway
                        | Kind::HTTPRoute
                ) {
                    self.status_dirty = true;
                }
                if self.synced.insert((kind, namespace.clone())) {
                    tracing::info!(kind = %kind, namespace = namespace.as_deref().unwrap_or(""), "initial list done");
                }
            }
        }
    }

    fn upsert(&mut self, object: Object) {
        let m = &mut self.model;
        match object {
            Object::Ingress(o) => {
                self.status_dirty = true;
                self.routes_dirty |= upsert(&mut m.ingresses, o.key.clone(), o).is_some();
            }
            Object::IngressClass(o) => {
                self.status_dirty = true;
                self.routes_dirty |= upsert(&mut m.classes, o.name.clone(), o).is_some();
            }
            Object::Service(o) => {
                self.routes_dirty |= upsert(&mut m.services, o.key.clone(), o).is_some();
            }
            Object::Secret(o) => {
                let (key, tls) = (o.key.clone(), o.tls);
                let changed = upsert(&mut m.secrets, o.key.clone(), o).is_some();
                self.routes_dirty |= changed && (tls || self.secret_matters(&key));
            }
            Object::ConfigMap(o) => {
                let key = o.key.clone();
                let changed = upsert(&mut m.config_maps, o.key.clone(), o).is_some();
                self.routes_dirty |= changed && self.config_map_matters(&key);
            }
            Object::EndpointSlice(o) => {
                let new = o.clone();
                if let Some(old) = upsert(&mut m.slices, o.key.clone(), o) {
                    self.touch_slice(old.as_ref());
                    self.touch_slice(Some(&new));
                }
            }
            // What a Gateway API object means depends on the others: any change recompiles, and
            // their status is checked again (the writer patches only what differs).
            o @ (Object::GatewayClass(_)
            | Object::Gateway(_)
            | Object::HTTPRoute(_)
            | Object::ReferenceGrant(_)
            | Object::Namespace(_)) => {
                m.insert(o);
                self.routes_dirty = true;
                self.status_dirty = true;
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) {
        let m = &mut self.model;
        match kind {
            Kind::Ingress => {
                self.status_dirty = true;
                self.routes_dirty |= m.ingresses.remove(key).is_some();
            }
            Kind::IngressClass => {
                self.status_dirty = true;
                self.routes_dirty |= m.classes.remove(&key.name).is_some();
            }
            Kind::Service => self.routes_dirty |= m.services.remove(key).is_some(),
            Kind::Secret => {
                let removed = m.secrets.remove(key);
                self.routes_dirty |= removed.is_some_and(|s| s.tls) || self.secret_matters(key);
            }
            Kind::ConfigMap => {
                let changed = m.config_maps.remove(key).is_some();
                self.routes_dirty |= changed && self.config_map_matters(key);
            }
            Kind::EndpointSlice => {
                let old = m.slices.remove(key);
                self.touch_slice(old.as_ref());
            }
            Kind::GatewayClass
            | Kind::Gateway
            | Kind::HTTPRoute
            | Kind::ReferenceGrant
            | Kind::Namespace => {
                m.remove(kind, key);
                self.routes_dirty = true;
                self.status_dirty = true;
            }
        }
    }

    /// Publishes what the applied changes made stale. Before every kind is listed, publishes
    /// nothing: a half-listed cluster would drop routes and turn ready too early.
    pub fn flush(&mut self) {
        if !self.published {
            if self.synced.len() < self.lists {
                return;
            }
            self.published = true;
            self.routes_dirty = true;
            tracing::info!(
                ingresses = self.model.ingresses.len(),
                services = self.model.services.len(),
                slices = self.model.slices.len(),
                "every kind listed: publishing the first snapshot"
            );
        }
        if self.routes_dirty {
            let rejected = self.shared.publish_model(&self.model, true);
            let mut fresh = super::report_rejections(&mut self.reported, &rejected, |_| None);
            // An Ingress whose class is not Portico's may be another controller's business: it
            // is told in the log, never with an Event on the object.
            // ingress-nginx's ConfigMap holds many keys for nginx itself: those Portico does not
            // read are told in the log and the metric, not as one Event each.
            fresh.retain(|r| !r.is_about_class() && r.kind != Kind::ConfigMap);
            if !fresh.is_empty() {
                // The receiver only goes away at shutdown.
                let _ = self.rejections.send(fresh);
            }
            self.status_dirty = true;
        } else if !self.endpoints_dirty.is_empty() {
            let services: Vec<ObjectKey> = self.endpoints_dirty.iter().cloned().collect();
            self.shared.publish_endpoints(&self.model, &services);
        }
        self.routes_dirty = false;
        self.endpoints_dirty.clear();
        if self.status_dirty {
            self.status_dirty = false;
            let owned: Vec<ObjectKey> = owned_ingresses(&self.model, &self.shared.options)
                .into_iter()
                .map(|i| i.key.clone())
                .collect();
            self.owned.send_replace(Some(Arc::new(owned)));
        }
    }

    /// Applies changes until `changes` closes or `shutdown` fires, and publishes them.
    ///
    /// A change that arrives after a quiet spell is published at once, with whatever is already
    /// queued behind it (a watch chunk or a relist arrives as one batch). Changes that arrive
    /// within [`DEBOUNCE`] of the end of the last publish wait until then and go out together. So
    /// an isolated change pays no debounce at all, and a burst costs at most one publish per
    /// [`DEBOUNCE`] plus the publish itself: a rollout, or Ingress changes at 10,000 Ingresses
    /// (where a publish is a full compile), never makes the controller compile back to back.
    pub async fn run(
        &mut self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut shutdown: ShutdownWatch,
    ) {
        let mut last_publish: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                change = changes.recv() => match change {
                    Some(change) => self.apply(change),
                    None => return,
                },
            }
            let quiet_until = last_publish.map(|t| t + DEBOUNCE);
            if let Some(deadline) = quiet_until.filter(|d| *d > tokio::time::Instant::now()) {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        change = changes.recv() => match change {
                            Some(change) => self.apply(change),
                            None => break,
                        },
                    }
                }
            }
            while let Ok(change) = changes.try_recv() {
                self.apply(change);
            }
            tracing::debug!(
                target: crate::dataplane::PROPAGATION,
                stage = "debounced",
                unix_us = crate::dataplane::unix_us(),
            );
            self.flush();
            last_publish = Some(tokio::time::Instant::now());
        }
    }
}

/// The background service that watches the cluster.
pub struct KubeSource {
    pub options: KubeOptions,
    pub shared: Arc<Shared>,
}

impl KubeSource {
    /// Called by [`crate::server::build`] when `--manifests` is absent. Does nothing until the
    /// server starts the service.
    pub fn new(options: KubeOptions, shared: Arc<Shared>) -> Self {
        Self { options, shared }
    }

    /// Builds the client, retrying with backoff until it works or shutdown fires.
    async fn connect(&self, shutdown: &mut ShutdownWatch) -> Option<Client> {
        let mut delay = Duration::from_millis(500);
        let mut last = String::new();
        loop {
            match client(&self.options).await {
                Ok(client) => return Some(client),
                Err(e) => {
                    // The whole error once; while it stays the same, a short reminder.
                    let error = e.to_string();
                    if error == last {
                        tracing::error!(retry_in = ?delay, "still no Kubernetes client (the same error); not ready");
                    } else {
                        tracing::error!(%error, retry_in = ?delay, "no Kubernetes client; not ready");
                        last = error;
                    }
                    self.shared.metrics.source_error(SOURCE, "client");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Watches the cluster through `client` until shutdown: the five reflectors, the controller,
    /// the Event recorder and, when there is an address to publish, the elected status writer.
    pub async fn run_with_client(&self, client: Client, shutdown: ShutdownWatch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let ns = self.options.watch_namespace.as_deref();
        let shared = &self.shared;
        let ingresses = spawn_reflector::<K8sIngress>(
            &mut tasks,
            scoped(&client, ns),
            watcher::Config::default(),
            &tx,
            shared,
        );
        spawn_reflector::<K8sClass>(
            &mut tasks,
            Api::all(client.clone()),
            watcher::Config::default(),
            &tx,
            shared,
        );
        spawn_reflector::<K8sService>(
            &mut tasks,
            scoped(&client, ns),
            watcher::Config::default(),
            &tx,
            shared,
        );
        spawn_reflector::<K8sSlice>(
            &mut tasks,
            scoped(&client, ns),
            watcher::Config::default(),
            &tx,
            shared,
        );
        spawn_reflector::<Secret>(
            &mut tasks,
            scoped(&client, ns),
            // In compatibility mode Opaque Secrets are read too (proxy-ssl-secret's ca.crt).
            watcher::Config::default().fields(match shared.options.nginx {
                Some(_) => COMPAT_SECRET_SELECTOR,
                None => TLS_SECRET_SELECTOR,
            }),
            &tx,
            shared,
        );
        let mut extra_lists = 0;
        if let Some(nginx) = &shared.options.nginx {
            // ConfigMaps where Ingresses are watched (custom-headers names one in the Ingress's
            // namespace), and ingress-nginx's own, in its namespace: one watch when that is
            // covered, else a second one for it alone.
            spawn_reflector::<K8sConfigMap>(
                &mut tasks,
                scoped(&client, ns),
                watcher::Config::default(),
                &tx,
                shared,
            );
            let key = &nginx.configmap;
            if ns.is_some_and(|ns| ns != key.namespace) {
                spawn_reflector_in::<K8sConfigMap>(
                    &mut tasks,
                    Api::namespaced(client.clone(), &key.namespace),
                    watcher::Config::default().fields(&format!("metadata.name={}", key.name)),
                    &tx,
                    shared,
                    Some(key.namespace.clone()),
                );
                extra_lists += 1;
            }
        }
        // Gateway API (with --gateway-listen): its four kinds everywhere (a route in a watched
        // namespace may attach to a Gateway elsewhere, and grants live in the target's
        // namespace), and the namespaces' labels for allowedRoutes selectors.
        let gateway_stores = shared.options.gateway.as_ref().map(|_| {
            let classes = spawn_reflector::<gateway_api::GatewayClass>(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &tx,
                shared,
            );
            let gateways = spawn_reflector::<gateway_api::Gateway>(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &tx,
                shared,
            );
            let routes = spawn_reflector::<gateway_api::HTTPRoute>(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &tx,
                shared,
            );
            spawn_reflector::<gateway_api::ReferenceGrant>(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &tx,
                shared,
            );
            spawn_reflector::<K8sNamespace>(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &tx,
                shared,
            );
            extra_lists += 5;
            (classes, gateways, routes)
        });
        drop(tx);

        let (owned_tx, owned_rx) = watch::channel(None);
        let (rejections_tx, rejections_rx) = mpsc::unbounded_channel();
        let identity = self.options.election.identity.clone();
        tasks.spawn(
            super::events::EventRecorder {
                client: client.clone(),
                ingresses: ingresses.clone(),
                controller: shared.options.controller_name.clone(),
                instance: identity,
                shared: shared.clone(),
            }
            .run(rejections_rx),
        );
        let mut elector_task = None;
        if self.options.publish_addresses.is_empty() && gateway_stores.is_none() {
            tracing::info!("no --publish-address and no $NODE_IP: Ingress status is not written");
        } else {
            let (leader_tx, leader_rx) = watch::channel(false);
            let elector = super::leader::LeaderElector::new(
                Api::namespaced(client.clone(), &self.options.election.namespace),
                self.options.election.clone(),
                shared.clone(),
            );
            let mut synced = owned_rx.clone();
            let stop = shutdown.clone();
            elector_task = Some(tokio::spawn(async move {
                // Campaign only with a complete view: a replica that cannot list the cluster
                // must not hold the Lease and leave status unwritten.
                if synced.wait_for(Option::is_some).await.is_ok() {
                    elector.run(leader_tx, stop).await;
                }
            }));
            if let Some((classes, gateways, routes)) = gateway_stores {
                tasks.spawn(
                    super::gateway_status::GatewayStatusWriter {
                        client: client.clone(),
                        classes,
                        gateways,
                        routes,
                        shared: shared.clone(),
                    }
                    .run(owned_rx.clone(), leader_rx.clone()),
                );
            }
            if self.options.publish_addresses.is_empty() {
                tracing::info!(
                    "no --publish-address and no $NODE_IP: Ingress status is not written"
                );
            } else {
                tasks.spawn(
                    super::status::StatusWriter {
                        client: client.clone(),
                        ingresses,
                        addresses: self.options.publish_addresses.clone(),
                        shared: shared.clone(),
                    }
                    .run(owned_rx, leader_rx),
                );
            }
        }

        let mut controller = Controller::new(shared.clone(), owned_tx, rejections_tx);
        for _ in 0..extra_lists {
            controller.expect_list();
        }
        controller.run(rx, shutdown).await;
        // Shutdown: give the elector a moment to release the Lease, then stop everything.
        if let Some(mut elector) = elector_task {
            if tokio::time::timeout(Duration::from_secs(2), &mut elector)
                .await
                .is_err()
            {
                elector.abort();
            }
        }
        tasks.shutdown().await;
    }
}

#[async_trait]
impl BackgroundService for KubeSource {
    /// Signals ready once the first complete snapshot is published, so that the proxy listeners
    /// (which depend on this service) never answer from an empty table.
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: pingora_core::services::ServiceReadyNotifier,
    ) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while !shared.is_ready() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            ready.notify_ready();
        });
        self.start(shutdown).await;
    }

    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(client) = self.connect(&mut shutdown).await else {
            return;
        };
        tracing::info!(
            namespace = self.options.watch_namespace.as_deref().unwrap_or("<all>"),
            "watching Kubernetes"
        );
        self.run_with_client(client, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::model::{Endpoint, EndpointSlice, Ingress, IngressClass, SlicePort};

    fn controller() -> (Controller, watch::Receiver<Option<Owned>>) {
        let shared = Shared::new(Default::default(), Metrics::new().unwrap());
        let (owned_tx, owned_rx) = watch::channel(None);
        let (rej_tx, _rej_rx) = mpsc::unbounded_channel();
        (Controller::new(shared, owned_tx, rej_tx), owned_rx)
    }

    fn slice(name: &str, svc: &str, ip: &str) -> Object {
        Object::EndpointSlice(Arc::new(EndpointSlice {
            key: ObjectKey::new("ns", name),
            service_name: Some(svc.into()),
            ports: vec![SlicePort {
                name: String::new(),
                port: Some(8080),
            }],
            endpoints: vec![Endpoint {
                addresses: vec![ip.parse().unwrap()],
                ready: None,
                serving: None,
                terminating: None,
                pod: None,
            }],
        }))
    }

    fn ingress(name: &str) -> Object {
        Object::Ingress(Arc::new(Ingress {
            key: ObjectKey::new("ns", name),
            created: 0,
            class_name: Some("portico".into()),
            class_annotation: None,
            default_backend: None,
            rules: vec![],
            tls: vec![],
            annotations: Default::default(),
            nginx: None,
            problems: vec![],
        }))
    }

    fn relist_all(c: &mut Controller) {
        for kind in [
            Kind::Ingress,
            Kind::IngressClass,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Secret,
        ] {
            c.apply(Change::Relisted(kind, vec![]));
        }
    }

    /// kube builds its rustls connector from whatever crypto provider the build enables; with
    /// Pingora's and kube's TLS in one binary that must still be exactly one (or a panic at the
    /// first HTTPS cluster). Checked here without a server; the stand-in (TLS) checks it end to end.
    #[tokio::test]
    async fn client_builds_for_an_https_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .unwrap();
        let options = crate::config::Flags {
            kubeconfig: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .kubernetes;
        assert!(client(&options).await.is_ok());
        let missing = KubeOptions {
            kubeconfig: Some(dir.path().join("nope")),
            ..options
        };
        assert!(matches!(
            client(&missing).await,
            Err(KubeError::Kubeconfig { .. })
        ));
    }

    /// Changes already queued go out in one publish, and changes that arrive right after a
    /// publish wait for the next one together.
    #[tokio::test]
    async fn queued_changes_go_out_together() {
        let (mut c, _owned) = controller();
        let shared = c.shared.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        for kind in [
            Kind::Ingress,
            Kind::IngressClass,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Secret,
        ] {
            tx.send(Change::Relisted(kind, vec![])).unwrap();
        }
        for name in ["a", "b", "c"] {
            tx.send(Change::Upsert(ingress(name))).unwrap();
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            c.run(rx, stopped).await;
            c
        });
        let wait_for = |generation: u64| {
            let shared = shared.clone();
            async move {
                for _ in 0..500 {
                    if shared.load().generation >= generation {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("generation {generation} was never published");
            }
        };
        wait_for(1).await;
        assert_eq!(
            shared.load().generation,
            1,
            "one publish for the queued batch"
        );
        for name in ["d", "e"] {
            tx.send(Change::Upsert(ingress(name))).unwrap();
        }
        wait_for(2).await;
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(
            shared.load().generation,
            2,
            "one publish for the second batch"
        );
        stop.send(true).unwrap();
        let c = task.await.unwrap();
        assert_eq!(c.model.ingresses.len(), 5);
    }

    #[test]
    fn publishes_nothing_until_every_kind_is_listed() {
        let (mut c, _owned) = controller();
        c.apply(Change::Relisted(Kind::Ingress, vec![ingress("a")]));
        c.flush();
        assert!(!c.shared.is_ready());
        assert_eq!(c.shared.load().generation, 0);
        for kind in [Kind::IngressClass, Kind::Service, Kind::EndpointSlice] {
            c.apply(Change::Relisted(kind, vec![]));
        }
        c.flush();
        assert!(!c.shared.is_ready(), "Secrets are not listed yet");
        c.apply(Change::Relisted(Kind::Secret, vec![]));
        c.flush();
        assert!(c.shared.is_ready());
        assert_eq!(c.shared.load().generation, 1);
    }

    /// A second watch of a kind (ingress-nginx's ConfigMap in its namespace, beside the
    /// ConfigMaps of the watched namespace) must list before the first publish, and its relist
    /// replaces only its namespace's objects.
    #[test]
    fn a_second_watch_of_a_kind_lists_and_relists_its_namespace_only() {
        let (mut c, _owned) = controller();
        // As in compatibility mode: the ConfigMaps, and ingress-nginx's in another namespace.
        c.expect_list();
        c.expect_list();
        let map = |ns: &str, name: &str| {
            Object::ConfigMap(Arc::new(crate::model::ConfigMap {
                key: ObjectKey::new(ns, name),
                data: Default::default(),
            }))
        };
        relist_all(&mut c);
        c.apply(Change::Relisted(Kind::ConfigMap, vec![map("apps", "a")]));
        c.flush();
        assert!(!c.shared.is_ready(), "the second watch has not listed");
        c.apply(Change::RelistedIn(
            Kind::ConfigMap,
            "ingress-nginx".into(),
            vec![map("ingress-nginx", "controller")],
        ));
        c.flush();
        assert!(c.shared.is_ready());
        assert_eq!(c.model.config_maps.len(), 2);
        // A relist of the second watch that no longer has its object removes it, and nothing else.
        c.apply(Change::RelistedIn(
            Kind::ConfigMap,
            "ingress-nginx".into(),
            vec![],
        ));
        assert_eq!(
            c.model.config_maps.keys().cloned().collect::<Vec<_>>(),
            [ObjectKey::new("apps", "a")]
        );
        // A relist of the first leaves the second's objects alone.
        c.apply(Change::RelistedIn(
            Kind::ConfigMap,
            "ingress-nginx".into(),
            vec![map("ingress-nginx", "controller")],
        ));
        c.apply(Change::RelistedIn(Kind::ConfigMap, "apps".into(), vec![]));
        assert_eq!(
            c.model.config_maps.keys().cloned().collect::<Vec<_>>(),
            [ObjectKey::new("ingress-nginx", "controller")]
        );
    }

    #[test]
    fn slice_changes_touch_only_their_services_and_equal_objects_nothing() {
        let (mut c, _owned) = controller();
        relist_all(&mut c);
        c.flush();
        c.apply(Change::Upsert(slice("s1", "web", "10.0.0.1")));
        assert!(!c.routes_dirty);
        assert_eq!(
            c.endpoints_dirty.iter().collect::<Vec<_>>(),
            vec![&ObjectKey::new("ns", "web")]
        );
        c.flush();
        // The same object again (a resync, or a status-only update) changes nothing.
        c.apply(Change::Upsert(slice("s1", "web", "10.0.0.1")));
        c.apply(Change::Upsert(ingress("a")));
        c.flush();
        c.apply(Change::Upsert(ingress("a")));
        assert!(!c.routes_dirty && c.endpoints_dirty.is_empty());
        // A slice moving to another Service stales both.
        c.apply(Change::Upsert(slice("s1", "api", "10.0.0.1")));
        assert_eq!(c.endpoints_dirty.len(), 2);
    }

    #[test]
    fn relist_replaces_a_kind_and_owned_set_follows_classes() {
        let (mut c, owned) = controller();
        relist_all(&mut c);
        c.apply(Change::Upsert(ingress("a")));
        c.apply(Change::Upsert(ingress("b")));
        c.flush();
        assert_eq!(owned.borrow().as_ref().map(|o| o.len()), Some(0));
        c.apply(Change::Upsert(Object::IngressClass(Arc::new(
            IngressClass {
                name: "portico".into(),
                controller: "portico.dev/ingress-controller".into(),
                is_default: false,
            },
        ))));
        c.flush();
        assert_eq!(owned.borrow().as_ref().map(|o| o.len()), Some(2));
        c.apply(Change::Relisted(Kind::Ingress, vec![ingress("b")]));
        assert!(c.routes_dirty);
        c.flush();
        assert_eq!(
            owned.borrow().as_ref().map(|o| o.as_ref().clone()),
            Some(vec![ObjectKey::new("ns", "b")])
        );
    }
}
