//! # A stand-in for the Kubernetes API server (test support only)
//!
//! **This is not a Kubernetes API server.** It is an in-process HTTPS server
//! (rustls and hyper 1, bound to `127.0.0.1` on an ephemeral port) that speaks
//! the Kubernetes REST wire protocol closely enough for kube-rs 5.0 (`Api`,
//! `watcher`, `reflector`, `metadata_watcher`, `events::Recorder`) to run
//! against it unmodified, through an ordinary kubeconfig (see
//! [`ApiServer::kubeconfig`]). It exists because no real API server can be
//! installed where Portico's tests run.
//!
//! ## Transport
//!
//! TLS, as a real API server: each server generates its own CA (rcgen) and a
//! serving certificate signed by it for `127.0.0.1` and `localhost`. The
//! kubeconfig carries the CA as `certificate-authority-data` (no
//! `insecure-skip-tls-verify`), so kube-rs verifies the server exactly as it
//! does in a cluster, through its own rustls connector. ALPN offers `h2` and
//! `http/1.1` and the connection is served by hyper's automatic HTTP/1 / HTTP/2
//! builder. kube-rs 5.0 builds its connector with HTTP/1 only (no ALPN), so it
//! speaks HTTP/1.1 over TLS here, as it does against a real API server; an
//! HTTP/2 client (ALPN `h2`) gets HTTP/2. Other clients trust the CA through
//! [`ApiServer::ca_pem`], or use [`ApiServer::http_client`] (HTTP/1.1).
//!
//! ## What it models
//!
//! * **Resources** keyed by (group, version, plural), stored as
//!   `serde_json::Value`s, namespaced and cluster-scoped. Built in: core/v1
//!   `services`, `secrets`, `events`, `namespaces`, `configmaps`, `endpoints`,
//!   `pods`, `nodes`, `serviceaccounts`; `networking.k8s.io/v1` `ingresses`,
//!   `ingressclasses`; `discovery.k8s.io/v1` `endpointslices`;
//!   `coordination.k8s.io/v1` `leases`; `events.k8s.io/v1` `events`. More can
//!   be added with [`ApiServer::register_resource`] (e.g. CRDs).
//! * **Paths**: `/api/v1/...` and `/apis/{g}/{v}/...`, namespaced
//!   (`namespaces/{ns}/{plural}`) and all-namespace / cluster-scoped
//!   collections, `/{name}` and `/{name}/status`. Also `/version`, `/healthz`,
//!   `/livez`, `/readyz` and the legacy (non-aggregated) discovery documents
//!   `/api`, `/apis`, `/api/v1`, `/apis/{g}`, `/apis/{g}/{v}`.
//! * **resourceVersion**: one global, monotonically increasing integer (as a
//!   string), stamped into `metadata.resourceVersion` on every write; creates
//!   set `metadata.uid` and `metadata.creationTimestamp` (and `generation: 1`
//!   for resources that track it; `generation` is bumped when anything outside
//!   `metadata`/`status` changes). No-op updates do not bump the version.
//! * **list**: `{Kind}List` with `metadata.resourceVersion`; `limit` +
//!   `continue` pagination over a *consistent snapshot* (the continue token
//!   carries the snapshot's resourceVersion, and the snapshot is rebuilt from
//!   the event history), `remainingItemCount` when no selector is used;
//!   `resourceVersion` unset / `"0"` / `N` with `resourceVersionMatch`
//!   `NotOlderThan` (served from the latest state) or `Exact` (served from the
//!   snapshot at N); the `ListOptions` validation a real server applies (422);
//!   410 `Expired` for a continue token or `Exact` version older than the
//!   compaction point; 504 `Timeout` (ResourceVersionTooLarge) for a version
//!   from the future. Items of built-in types carry no `apiVersion`/`kind`,
//!   like the real server's JSON (registered custom resources keep them).
//! * **Selectors** on list and watch: `fieldSelector` with `=`, `==`, `!=`
//!   (comma-separated, `\`-escapes) over the field labels the real server
//!   supports per type (`metadata.name`, `metadata.namespace` everywhere;
//!   `type` on secrets; `spec.clusterIP`/`spec.type` on services;
//!   `involvedObject.*`, `reason`, `source`, `type`, `reportingComponent` on
//!   core events; `regarding.*`, `reason`, `type`, `reportingController` on
//!   events.k8s.io events; `status.phase` on namespaces; the usual pod and node
//!   fields) and 400 `field label not supported` for others, like the real
//!   server; `labelSelector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//!   `k in (a,b)`, `k notin (a,b)`.
//! * **watch** (`watch=true`/`watch=1`): a chunked stream of newline-delimited
//!   `{"type":...,"object":...}`. From `resourceVersion=N` the event history
//!   after N is replayed, then live events follow; without a version (or with
//!   `"0"`) synthetic `ADDED` events for the current state come first; with
//!   `sendInitialEvents=true` (streaming lists) the initial `ADDED` events end
//!   with a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//!   Selectors apply, including the real server's translation of an object
//!   moving into/out of the selector into `ADDED`/`DELETED`. `BOOKMARK`s are
//!   sent every [`ApiServer::set_bookmark_interval`] (1 s by default) when
//!   `allowWatchBookmarks=true`. `timeoutSeconds` ends the stream cleanly
//!   (default 1800 s). A watch from a version older than the compaction point
//!   gets one `ERROR` event carrying a `Status` with `code: 410`,
//!   `reason: "Expired"`, then the stream ends, as the real server does; the
//!   kube-runtime watcher answers that with a full relist.
//! * **Writes**: POST (create, `generateName`), PUT (update; a stale
//!   `metadata.resourceVersion` gives 409 `Conflict`; create-on-update for the
//!   kinds that allow it: leases, services, endpoints, events), PATCH with
//!   `application/merge-patch+json` (RFC 7386),
//!   `application/strategic-merge-patch+json`, `application/apply-patch+yaml`
//!   and `application/json-patch+json` (RFC 6902: add, remove, replace, move,
//!   copy, test), DELETE (with `preconditions`, and finalizers: an object with
//!   finalizers gets `deletionTimestamp` and goes away when the last finalizer
//!   is removed), DELETE on a collection (deletecollection), `dryRun=All`.
//!   For resources with a status subresource (services, ingresses, namespaces,
//!   pods, nodes) writes to the main resource keep the old `status` and writes
//!   to `/status` change only `status`; create resets `status`.
//! * **Errors** as `Status` objects with the real reasons and codes: 400
//!   `BadRequest` (undecodable body, name/namespace mismatch, bad selector or
//!   parameter), 404 `NotFound`, 405 `MethodNotAllowed`, 409 `AlreadyExists` /
//!   `Conflict`, 410 `Expired`, 415 `UnsupportedMediaType`, 422 `Invalid`
//!   (well-formed JSON that is not a valid object: missing or invalid name,
//!   JSON-patch that does not apply, forbidden option combinations). Request
//!   handlers run in their own task, so even an unforeseen panic becomes a 500
//!   `InternalError` rather than a dropped connection.
//! * **Faults**: [`ApiServer::compact`] (history compaction, for the 410
//!   path), [`ApiServer::drop_watches`] (abort every watch connection
//!   mid-stream), [`ApiServer::stop`] / [`ApiServer::restart`] (an outage; the
//!   store survives and the server comes back on the same port).
//! * **Records** for assertions: every request ([`ApiServer::requests`]) and
//!   every successful write ([`ApiServer::writes`], [`ApiServer::status_writes`],
//!   [`ApiServer::events`], [`ApiServer::leases`], [`ApiServer::lease_writes`]).
//!
//! ## What it does NOT model
//!
//! * Authentication, authorization (RBAC), admission: any or no bearer token
//!   is accepted; no client certificates are asked for. The CA never rotates
//!   and the serving certificate is not checked for expiry in tests.
//! * The API server's own costs: no etcd round trip (a write is visible to
//!   watches as soon as [`ApiServer::apply`] returns, where a real server
//!   answers the write after etcd commits and its watch cache fans the event
//!   out), no watch cache, no priority and fairness, no HTTP/2 flow control
//!   tuning, and it shares the test's process and CPU.
//! * Schema validation and defaulting: any JSON object is accepted as long as
//!   it has a valid name; field types are not checked, defaults are not filled
//!   in (except `status.phase: Active` on namespaces and an empty
//!   `status.loadBalancer` on services and ingresses at create time).
//! * Strategic merge patch is applied as a JSON merge patch: lists are replaced
//!   whole, not merged by key; `$patch`/`$retainKeys`/`$setElementOrder`
//!   directives are dropped. Server-side apply is applied as a JSON merge patch
//!   of the (YAML or JSON) body that creates the object when it is missing: no
//!   `managedFields`, no field ownership, no conflicts between managers, and
//!   fields the manager stops sending are not removed.
//! * Core v1 and events.k8s.io/v1 `events` are separate stores here (the real
//!   server converts between the two views of one store).
//! * Namespaces are not enforced (objects may be created in a namespace that
//!   does not exist) and deleting a namespace does not delete its contents;
//!   no garbage collection (ownerReferences), no graceful pod deletion, no
//!   controllers (no endpoints, no cluster IPs, no lease expiry).
//! * Watch from a resourceVersion newer than the current one streams from that
//!   version instead of waiting and failing; no watch-cache progress-notify
//!   semantics beyond the periodic bookmarks; pages are exact (a real server
//!   may return short pages with selectors).
//! * Protobuf, Table output (`as=Table`), aggregated discovery, OpenAPI,
//!   `/log`, `/exec`, `/scale`, `/eviction` and other subresources,
//!   `fieldValidation`, `resourceVersion` on GET.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default interval between `BOOKMARK` events on watches that allow them.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Server-side watch timeout used when the client sends no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT_SECS: u64 = 1800;
/// Annotation that marks the end of the initial events of a streaming list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

// ---------------------------------------------------------------------------
// Resource registry
// ---------------------------------------------------------------------------

/// Describes one resource type the stand-in serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Plural resource name used in URLs, e.g. `ingresses`.
    pub plural: String,
    /// Kind, e.g. `Ingress`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the resource has a `/status` subresource.
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained.
    pub tracks_generation: bool,
    /// Whether PUT on a missing object creates it.
    pub allow_create_on_update: bool,
    /// Built-in types have `apiVersion`/`kind` stripped from list items, and
    /// support strategic merge patch.
    pub builtin: bool,
    /// Field labels usable in `fieldSelector` besides `metadata.name` and
    /// `metadata.namespace`.
    pub field_labels: Vec<String>,
}

impl ResourceDef {
    /// A custom (non-built-in) resource, e.g. a CRD. No status subresource
    /// until [`ResourceDef::with_status`].
    pub fn custom(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            tracks_generation: true,
            allow_create_on_update: false,
            builtin: false,
            field_labels: Vec::new(),
        }
    }

    /// Enables the `/status` subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as in real error messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn gvr(&self) -> Gvr {
        Gvr {
            group: self.group.clone(),
            version: self.version.clone(),
            plural: self.plural.clone(),
        }
    }

    fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || field == "metadata.namespace"
            || self.field_labels.iter().any(|f| f == field)
    }
}

#[derive(Clone, Copy)]
struct Traits {
    namespaced: bool,
    status: bool,
    generation: bool,
    create_on_update: bool,
}

fn builtin(g: &str, v: &str, plural: &str, kind: &str, t: Traits, fields: &[&str]) -> ResourceDef {
    ResourceDef {
        group: g.into(),
        version: v.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced: t.namespaced,
        status_subresource: t.status,
        tracks_generation: t.generation,
        allow_create_on_update: t.create_on_update,
        builtin: true,
        field_labels: fields.iter().map(|s| s.to_string()).collect(),
    }
}

fn builtin_resources() -> Vec<ResourceDef> {
    const fn t(namespaced: bool, status: bool, generation: bool, create_on_update: bool) -> Traits {
        Traits {
            namespaced,
            status,
            generation,
            create_on_update,
        }
    }
    let involved = [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    let regarding = [
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "type",
    ];
    let pod_fields = [
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            t(false, true, false, false),
            &["status.phase"],
        ),
        builtin(
            "",
            "v1",
            "services",
            "Service",
            t(true, true, false, true),
            &["spec.clusterIP", "spec.type"],
        ),
        builtin(
            "",
            "v1",
            "secrets",
            "Secret",
            t(true, false, false, false),
            &["type"],
        ),
        builtin(
            "",
            "v1",
            "events",
            "Event",
            t(true, false, false, true),
            &involved,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            t(true, false, false, false),
            &[],
        ),
        builtin(
            "",
            "v1",
            "endpoints",
            "Endpoints",
            t(true, false, false, true),
            &[],
        ),
        builtin(
            "",
            "v1",
            "pods",
            "Pod",
            t(true, true, true, false),
            &pod_fields,
        ),
        builtin(
            "",
            "v1",
            "nodes",
            "Node",
            t(false, true, false, false),
            &["spec.unschedulable"],
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            t(true, false, false, false),
            &[],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "Ingress",
            t(true, true, true, false),
            &[],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "ingressclasses",
            "IngressClass",
            t(false, false, true, false),
            &[],
        ),
        builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            t(true, false, true, false),
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            t(true, false, false, true),
            &[],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            t(true, false, false, true),
            &regarding,
        ),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Gvr {
    group: String,
    version: String,
    plural: String,
}

/// (namespace, name); namespace is `""` for cluster-scoped objects.
type ObjKey = (String, String);

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// One HTTP request as received (and the status code it was answered with).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Raw query string (still percent-encoded), `""` when absent.
    pub query: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub body: String,
    /// Status code of the response; 0 while still being handled.
    pub status: u16,
    /// The HTTP version the client spoke (HTTP/1.1 or HTTP/2).
    pub version: http::Version,
}

impl RecordedRequest {
    /// A decoded query parameter.
    pub fn query_param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_string)
    }

    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        Query::parse(&self.query).flag("watch")
    }

    /// The body parsed as JSON (`None` when empty or not JSON).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// One successful write made over HTTP (the controller's side effects).
#[derive(Clone, Debug)]
pub struct RecordedWrite {
    /// `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    /// Empty for deletecollection.
    pub name: String,
    /// `Some("status")` for writes to the status subresource.
    pub subresource: Option<String>,
    pub content_type: Option<String>,
    /// Request body as JSON (YAML bodies are converted), `Null` if empty.
    pub body: Value,
    /// What the server answered with (object, or Status/List for deletes).
    pub result: Value,
}

// ---------------------------------------------------------------------------
// Store and watch plumbing
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
struct HistEvent {
    rv: u64,
    gvr: Gvr,
    ns: String,
    name: String,
    etype: EventType,
    /// The object after the change (for deletes: the last state, with the
    /// deletion's resourceVersion).
    object: Value,
    /// The object before the change (`None` for creations).
    prev: Option<Value>,
}

enum WatchMsg {
    Event(Arc<HistEvent>),
    Kill,
}

struct WatchReg {
    id: u64,
    gvr: Gvr,
    ns: Option<String>,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct State {
    resources: Vec<ResourceDef>,
    objects: BTreeMap<Gvr, BTreeMap<ObjKey, Value>>,
    rv: u64,
    compacted_rv: u64,
    history: Vec<Arc<HistEvent>>,
    watchers: Vec<WatchReg>,
    next_watch_id: u64,
    requests: Vec<RecordedRequest>,
    writes: Vec<RecordedWrite>,
}

struct Shared {
    state: Mutex<State>,
    bookmark_ms: AtomicU64,
    conns: Mutex<Vec<JoinHandle<()>>>,
    tls: Tls,
}

/// The server's CA and its TLS configuration; the same across restarts.
struct Tls {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// A fresh CA and a serving certificate for `127.0.0.1` and `localhost` signed by it.
    fn generate() -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        fn fail<T>(e: rcgen::Error) -> T {
            panic!("stand-in API server: certificate: {e}")
        }
        let ca_key = KeyPair::generate().unwrap_or_else(fail);
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "portico-standin-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(fail);
        let key = KeyPair::generate().unwrap_or_else(fail);
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf.subject_alt_names = vec![
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
            SanType::DnsName("localhost".try_into().unwrap_or_else(fail)),
            SanType::DnsName("kubernetes.default.svc".try_into().unwrap_or_else(fail)),
        ];
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap_or_else(fail);
        let chain = vec![cert.der().clone(), ca_cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e| panic!("stand-in API server: TLS configuration: {e}"));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Tls {
            ca_pem: ca_cert.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

/// Standard base64 (RFC 4648, with padding), for `certificate-authority-data`.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_ms.load(Ordering::Relaxed).max(1))
    }

    fn kill_watches(&self) {
        let regs = std::mem::take(&mut self.lock().watchers);
        for reg in regs {
            let _ = reg.tx.send(WatchMsg::Kill);
        }
    }
}

// ---------------------------------------------------------------------------
// Errors (as Status objects)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    fn obj_details(def: &ResourceDef, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": def.plural});
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        d
    }

    fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", def.qualified(), name),
        )
        .with_details(Self::obj_details(def, name))
    }

    fn unknown_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", def.qualified(), name),
        )
        .with_details(Self::obj_details(def, name))
    }

    fn conflict(def: &ResourceDef, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                def.qualified(),
                name,
                why
            ),
        )
        .with_details(Self::obj_details(def, name))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn invalid(kind: &str, name: &str, field: &str, cause: &'static str, msg: &str) -> Self {
        let mut details =
            json!({"kind": kind, "causes": [{"reason": cause, "message": msg, "field": field}]});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {msg}"),
        )
        .with_details(details)
    }

    fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    fn too_large(requested: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
        .with_details(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1
        }))
    }

    fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------
// Small utilities: time, ids, JSON helpers, query parsing
// ---------------------------------------------------------------------------

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Current time as RFC 3339 with second precision (`metav1.Time`).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rv.to_string()));
}

fn copy_key(dst: &mut Map<String, Value>, src: Option<&Map<String, Value>>, key: &str) {
    match src.and_then(|s| s.get(key)) {
        Some(v) => {
            dst.insert(key.into(), v.clone());
        }
        None => {
            dst.remove(key);
        }
    }
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Everything except `metadata` and `status` (what `generation` tracks).
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn hex_encode(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn str(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True" | "TRUE"))
    }
}

// ---------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_label_selector(s: &str) -> ApiResult<Vec<LabelReq>> {
    let bad = |part: &str, why: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: {why}: found '{part}' in label selector \"{s}\""
        ))
    };
    let mut reqs = Vec::new();
    if s.trim().is_empty() {
        return Ok(reqs);
    }
    for part in split_top_level_commas(s) {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad(part, "empty requirement"));
        }
        let key_ok = |k: &str| {
            if valid_label_key(k) {
                Ok(k.to_string())
            } else {
                Err(bad(part, "invalid label key"))
            }
        };
        let val_ok = |v: &str| {
            if valid_label_value(v) {
                Ok(v.to_string())
            } else {
                Err(bad(part, "invalid label value"))
            }
        };
        if let Some(k) = part.strip_prefix('!') {
            reqs.push(LabelReq::NotExists(key_ok(k.trim())?));
            continue;
        }
        // Set-based: `key in (a,b)` / `key notin (a,b)`.
        if let Some((k, rest)) = part.split_once(char::is_whitespace) {
            let rest = rest.trim_start();
            let (op, set) = if let Some(r) = rest.strip_prefix("notin") {
                ("notin", r)
            } else if let Some(r) = rest.strip_prefix("in") {
                ("in", r)
            } else {
                ("", rest)
            };
            if !op.is_empty() {
                let set = set.trim();
                let inner = set
                    .strip_prefix('(')
                    .and_then(|x| x.strip_suffix(')'))
                    .ok_or_else(|| bad(part, "expected a parenthesised set of values"))?;
                let values = inner
                    .split(',')
                    .map(|v| val_ok(v.trim()))
                    .collect::<ApiResult<Vec<_>>>()?;
                let key = key_ok(k.trim())?;
                reqs.push(if op == "in" {
                    LabelReq::In(key, values)
                } else {
                    LabelReq::NotIn(key, values)
                });
                continue;
            }
        }
        if let Some((k, v)) = part.split_once("!=") {
            reqs.push(LabelReq::Ne(key_ok(k.trim())?, val_ok(v.trim())?));
        } else if let Some((k, v)) = part.split_once("==") {
            reqs.push(LabelReq::Eq(key_ok(k.trim())?, val_ok(v.trim())?));
        } else if let Some((k, v)) = part.split_once('=') {
            reqs.push(LabelReq::Eq(key_ok(k.trim())?, val_ok(v.trim())?));
        } else {
            reqs.push(LabelReq::Exists(key_ok(part)?));
        }
    }
    Ok(reqs)
}

#[derive(Debug)]
struct FieldReq {
    field: String,
    negate: bool,
    value: String,
}

/// Splits on `sep` not preceded by a backslash escape.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

fn unescape_field_value(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_field_selector(def: &ResourceDef, s: &str) -> ApiResult<Vec<FieldReq>> {
    let mut reqs = Vec::new();
    if s.trim().is_empty() {
        return Ok(reqs);
    }
    for term in split_unescaped(s, ',') {
        let term = term.trim();
        let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, false, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, false, v)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{s}'; can't understand '{term}'"
            )));
        };
        let field = field.trim();
        if !def.supports_field(field) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        reqs.push(FieldReq {
            field: field.to_string(),
            negate,
            value: unescape_field_value(value.trim()),
        });
    }
    Ok(reqs)
}

fn field_value(def: &ResourceDef, obj: &Value, field: &str) -> String {
    let path = if def.plural == "events" && def.group.is_empty() && field == "source" {
        "source.component"
    } else {
        field
    };
    let mut cur = Some(obj);
    for seg in path.split('.') {
        cur = cur.and_then(|v| v.get(seg));
    }
    match cur {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => {
            if matches!(field, "spec.unschedulable" | "spec.hostNetwork") {
                "false".into()
            } else {
                String::new()
            }
        }
        Some(other) => other.to_string(),
    }
}

/// Compiled label + field selectors for one request.
struct Selector {
    def: ResourceDef,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    fn from_query(def: &ResourceDef, q: &Query) -> ApiResult<Self> {
        Ok(Self {
            def: def.clone(),
            labels: parse_label_selector(q.str("labelSelector"))?,
            fields: parse_field_selector(def, q.str("fieldSelector"))?,
        })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = meta(obj)
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|r| (field_value(&self.def, obj, &r.field) == r.value) != r.negate)
    }
}

// ---------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Drops strategic-merge-patch directives (`$patch`, `$retainKeys`, ...).
fn strip_smp_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_smp_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_smp_directives),
        _ => {}
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer {path:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_parent<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("path element {t:?} not found"))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| format!("invalid array index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("array index {i} out of bounds"))?
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_parent(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i > a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add to a scalar at {path:?}")),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match pointer_parent(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {path:?} not found")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("array index {i} out of bounds"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove from a scalar at {path:?}")),
    }
}

/// RFC 6902 JSON patch, applied atomically.
fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{kind} operation without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("{kind} operation without \"from\""))
        };
        match kind {
            "add" => pointer_add(&mut out, path, value()?)?,
            "remove" => {
                pointer_remove(&mut out, path)?;
            }
            "replace" => {
                pointer_remove(&mut out, path)?;
                pointer_add(&mut out, path, value()?)?;
            }
            "move" => {
                let v = pointer_remove(&mut out, from()?)?;
                pointer_add(&mut out, path, v)?;
            }
            "copy" => {
                let v = out
                    .pointer(from()?)
                    .cloned()
                    .ok_or("\"from\" path not found")?;
                pointer_add(&mut out, path, v)?;
            }
            "test" => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(format!("test operation failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatchType {
    Merge,
    Strategic,
    Apply,
    Json,
}

impl PatchType {
    fn from_content_type(ct: Option<&str>) -> ApiResult<Self> {
        let base = ct.unwrap_or("").split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            "application/json-patch+json" => Ok(Self::Json),
            _ => Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json (got {base:?})"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Store operations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    Main,
    Status,
}

/// How an object is rendered in a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Render {
    Full,
    /// `Accept: ...;as=PartialObjectMetadata[List]` (kube's metadata API).
    MetaOnly,
}

fn render_object(obj: &Value, mode: Render) -> Value {
    match mode {
        Render::Full => obj.clone(),
        Render::MetaOnly => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

fn render_list_item(def: &ResourceDef, obj: &Value, mode: Render) -> Value {
    let mut v = render_object(obj, mode);
    if mode == Render::Full && def.builtin {
        if let Some(m) = v.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
    }
    v
}

enum DeleteOutcome {
    /// Removed now; the deleted object (with the deletion's version).
    Deleted(Value),
    /// Kept because of finalizers; the object with `deletionTimestamp`.
    Pending(Value),
}

impl State {
    fn new() -> Self {
        Self {
            resources: builtin_resources(),
            objects: BTreeMap::new(),
            rv: 1,
            compacted_rv: 0,
            history: Vec::new(),
            watchers: Vec::new(),
            next_watch_id: 1,
            requests: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn def_by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceDef> {
        self.resources
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }

    fn current(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&def.gvr())
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    fn emit(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        etype: EventType,
        object: Value,
        prev: Option<Value>,
    ) {
        let ev = Arc::new(HistEvent {
            rv: self.rv,
            gvr: def.gvr(),
            ns: ns.to_string(),
            name: name.to_string(),
            etype,
            object,
            prev,
        });
        self.history.push(ev.clone());
        self.watchers.retain(|w| {
            if w.gvr != ev.gvr || w.ns.as_ref().is_some_and(|n| *n != ev.ns) {
                return true;
            }
            w.tx.send(WatchMsg::Event(ev.clone())).is_ok()
        });
    }

    /// Stores `obj` under a fresh resourceVersion and emits the event.
    fn commit(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        mut obj: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        self.objects
            .entry(def.gvr())
            .or_default()
            .insert((ns.to_string(), name.to_string()), obj.clone());
        let etype = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.emit(def, ns, name, etype, obj.clone(), prev);
        obj
    }

    /// Removes the object under a fresh resourceVersion; `last` is its final
    /// state (defaults to what is stored).
    fn commit_delete(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) -> Option<Value> {
        let prev = self
            .objects
            .get_mut(&def.gvr())?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let mut obj = last.unwrap_or_else(|| prev.clone());
        set_rv(&mut obj, self.rv);
        self.emit(def, ns, name, EventType::Deleted, obj.clone(), Some(prev));
        Some(obj)
    }

    /// The objects of one resource as they were at `at` (>= compaction point).
    fn snapshot(&self, gvr: &Gvr, at: u64) -> BTreeMap<ObjKey, Value> {
        let mut m = self.objects.get(gvr).cloned().unwrap_or_default();
        for ev in self.history.iter().rev() {
            if ev.rv <= at {
                break;
            }
            if &ev.gvr != gvr {
                continue;
            }
            let key = (ev.ns.clone(), ev.name.clone());
            match &ev.prev {
                Some(p) => {
                    m.insert(key, p.clone());
                }
                None => {
                    m.remove(&key);
                }
            }
        }
        m
    }

    // ---- create / update / patch / delete (HTTP semantics) ----

    /// Checks and normalises an incoming object's type and identity fields.
    fn prepare_incoming(
        def: &ResourceDef,
        ns: Option<&str>,
        url_name: Option<&str>,
        obj: &mut Value,
    ) -> ApiResult<()> {
        let Some(o) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(format!(
                "couldn't get version/kind; json parse error: expected a JSON object for {}",
                def.kind
            )));
        };
        match o.get("apiVersion") {
            None | Some(Value::Null) => {
                o.insert("apiVersion".into(), json!(def.api_version()));
            }
            Some(Value::String(v)) if *v == def.api_version() => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    v.as_str().unwrap_or("?"),
                    def.api_version()
                )))
            }
        }
        match o.get("kind") {
            None | Some(Value::Null) => {
                o.insert("kind".into(), json!(def.kind));
            }
            Some(Value::String(k)) if *k == def.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({}) does not match the expected kind ({})",
                    k.as_str().unwrap_or("?"),
                    def.kind
                )))
            }
        }
        match o.get("metadata") {
            None | Some(Value::Null) => {
                o.insert("metadata".into(), json!({}));
            }
            Some(Value::Object(_)) => {}
            Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
        }
        let m = meta_mut(obj);
        for key in ["name", "namespace", "resourceVersion", "generateName"] {
            if m.get(key).is_some_and(|v| !v.is_string() && !v.is_null()) {
                return Err(ApiError::bad_request(format!(
                    "metadata.{key} must be a string"
                )));
            }
        }
        if def.namespaced {
            let ns = ns.unwrap_or("");
            match m.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(ns));
                }
                Some(body_ns) if body_ns == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
            }
        } else {
            m.remove("namespace");
        }
        if let Some(url_name) = url_name {
            let body_name = m.get("name").and_then(Value::as_str).unwrap_or("");
            if body_name != url_name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                )));
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        Self::prepare_incoming(def, ns, None, &mut obj)?;
        let m = meta_mut(&mut obj);
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let prefix = m.get("generateName").and_then(Value::as_str).unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &def.kind,
                    "",
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{}", name_suffix());
            m.insert("name".into(), json!(name));
        }
        let valid = if def.plural == "namespaces" {
            is_dns_label(&name)
        } else {
            is_dns_subdomain(&name)
        };
        if !valid {
            return Err(ApiError::invalid(
                &def.kind,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                &format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case \
                     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if m.get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let ns_key = if def.namespaced { ns.unwrap_or("") } else { "" };
        if self.current(def, ns_key, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("resourceVersion");
        if def.tracks_generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        if def.status_subresource {
            reset_status_on_create(def, &mut obj);
        }
        if dry_run {
            return Ok(obj);
        }
        Ok(self.commit(def, ns_key, &name, obj, None))
    }

    /// PUT semantics (also the second half of PATCH). Returns the object and
    /// whether it was created.
    fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Sub,
        mut obj: Value,
        dry_run: bool,
    ) -> ApiResult<(Value, bool)> {
        Self::prepare_incoming(def, ns, Some(name), &mut obj)?;
        let ns_key = if def.namespaced { ns.unwrap_or("") } else { "" };
        let Some(old) = self.current(def, ns_key, name).cloned() else {
            if sub == Sub::Main && def.allow_create_on_update {
                meta_mut(&mut obj).remove("resourceVersion");
                return self.create(def, ns, obj, dry_run).map(|o| (o, true));
            }
            return Err(ApiError::not_found(def, name));
        };
        let old_rv = meta_str(&old, "resourceVersion").to_string();
        let body_rv = meta_str(&obj, "resourceVersion");
        if !body_rv.is_empty() && body_rv != old_rv {
            return Err(ApiError::conflict(
                def,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = match sub {
            Sub::Main => {
                if def.status_subresource {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(o) = obj.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                obj
            }
            Sub::Status => {
                let mut n = old.clone();
                match obj.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(o) = n.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                n
            }
        };
        let old_meta = meta(&old).cloned();
        {
            let m = meta_mut(&mut new);
            for key in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                copy_key(m, old_meta.as_ref(), key);
            }
            m.insert("resourceVersion".into(), json!(old_rv));
        }
        if def.tracks_generation && spec_part(&new) != spec_part(&old) {
            let gen = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(gen + 1));
        }
        if new == old {
            return Ok((old, false));
        }
        if dry_run {
            return Ok((new, false));
        }
        let finished = meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp"))
            && !has_finalizers(&new);
        if finished {
            let gone = self
                .commit_delete(def, ns_key, name, Some(new.clone()))
                .unwrap_or(new);
            return Ok((gone, false));
        }
        Ok((self.commit(def, ns_key, name, new, Some(old)), false))
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Sub,
        ptype: PatchType,
        body: &Bytes,
        q: &Query,
    ) -> ApiResult<(Value, bool)> {
        let dry_run = q.str("dryRun") == "All";
        let ns_key = if def.namespaced { ns.unwrap_or("") } else { "" };
        let old = self.current(def, ns_key, name).cloned();
        let parse_json = |b: &Bytes| -> ApiResult<Value> {
            serde_json::from_slice(b)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        let patched = match ptype {
            PatchType::Apply => {
                let patch = parse_yaml_or_json(body)?;
                if q.str("fieldManager").is_empty() {
                    return Err(ApiError::invalid(
                        "PatchOptions",
                        "",
                        "fieldManager",
                        "FieldValueRequired",
                        "Required value: is required for apply patch",
                    ));
                }
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "apply patch must be a JSON/YAML object",
                    ));
                }
                for key in ["apiVersion", "kind"] {
                    if patch
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        return Err(ApiError::bad_request(format!(
                            "error decoding YAML: Object '{key}' is missing in apply patch"
                        )));
                    }
                }
                match old {
                    Some(ref o) => {
                        let mut n = o.clone();
                        merge_patch(&mut n, &patch);
                        n
                    }
                    None if sub == Sub::Main => {
                        let mut obj = patch;
                        Self::prepare_incoming(def, ns, Some(name), &mut obj)?;
                        return self.create(def, ns, obj, dry_run).map(|o| (o, true));
                    }
                    None => return Err(ApiError::not_found(def, name)),
                }
            }
            PatchType::Merge | PatchType::Strategic => {
                if ptype == PatchType::Strategic && !def.builtin {
                    return Err(ApiError::unsupported_media(
                        "strategic merge patch is not supported for custom resources",
                    ));
                }
                let mut patch = parse_json(body)?;
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                if ptype == PatchType::Strategic {
                    strip_smp_directives(&mut patch);
                }
                let Some(mut n) = old.clone() else {
                    return Err(ApiError::not_found(def, name));
                };
                merge_patch(&mut n, &patch);
                n
            }
            PatchType::Json => {
                let ops = parse_json(body)?;
                let Some(o) = old.as_ref() else {
                    return Err(ApiError::not_found(def, name));
                };
                json_patch(o, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?
            }
        };
        self.update(def, ns, name, sub, patched, dry_run)
    }

    fn delete(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> ApiResult<DeleteOutcome> {
        let ns_key = if def.namespaced { ns.unwrap_or("") } else { "" };
        let Some(old) = self.current(def, ns_key, name).cloned() else {
            return Err(ApiError::not_found(def, name));
        };
        if let Some(pre) = opts.get("preconditions") {
            for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str) {
                    let have = meta_str(&old, field);
                    if want != have {
                        return Err(ApiError::conflict(
                            def,
                            name,
                            &format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"),
                        ));
                    }
                }
            }
        }
        if has_finalizers(&old) {
            if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) || dry_run {
                return Ok(DeleteOutcome::Pending(old));
            }
            let mut new = old.clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok(DeleteOutcome::Pending(self.commit(
                def,
                ns_key,
                name,
                new,
                Some(old),
            )));
        }
        if dry_run {
            return Ok(DeleteOutcome::Deleted(old));
        }
        let gone = self.commit_delete(def, ns_key, name, None).unwrap_or(old);
        Ok(DeleteOutcome::Deleted(gone))
    }

    // ---- list ----

    fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        q: &Query,
        mode: Render,
    ) -> ApiResult<Value> {
        let sel = Selector::from_query(def, q)?;
        let rv_param = q.str("resourceVersion");
        let rv_match = q.str("resourceVersionMatch");
        let cont = q.str("continue");
        let invalid = |field: &str, msg: &str| {
            ApiError::invalid("ListOptions", "", field, "FieldValueForbidden", msg)
        };
        if !rv_match.is_empty() {
            if rv_param.is_empty() {
                return Err(invalid("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
            }
            if !cont.is_empty() {
                return Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if rv_match != "Exact" && rv_match != "NotOlderThan" {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    "FieldValueNotSupported",
                    &format!("Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\", \"\""),
                ));
            }
            if rv_match == "Exact" && rv_param == "0" {
                return Err(invalid("resourceVersionMatch", "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
            }
        }
        if q.get("sendInitialEvents").is_some() {
            return Err(invalid(
                "sendInitialEvents",
                "Forbidden: sendInitialEvents is forbidden for list",
            ));
        }
        let limit: usize = match q.get("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                .max(0) as usize,
        };
        let (snap_rv, start_after) = if !cont.is_empty() {
            if !rv_param.is_empty() && rv_param != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, key) = decode_continue(cont).ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: malformed token")
            })?;
            if rv < self.compacted_rv {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ));
            }
            if rv > self.rv {
                return Err(ApiError::bad_request(
                    "continue key is not valid: resource version from the future",
                ));
            }
            (rv, Some(key))
        } else {
            match rv_param {
                "" | "0" => (self.rv, None),
                n => {
                    let n: u64 = n.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version: {n:?}"))
                    })?;
                    if n > self.rv {
                        return Err(ApiError::too_large(n, self.rv));
                    }
                    if rv_match == "Exact" {
                        if n < self.compacted_rv {
                            return Err(ApiError::gone(format!(
                                "too old resource version: {n} ({})",
                                self.compacted_rv
                            )));
                        }
                        (n, None)
                    } else {
                        (self.rv, None)
                    }
                }
            }
        };
        let gvr = def.gvr();
        let items: Cow<'_, BTreeMap<ObjKey, Value>> = if snap_rv == self.rv {
            match self.objects.get(&gvr) {
                Some(m) => Cow::Borrowed(m),
                None => Cow::Owned(BTreeMap::new()),
            }
        } else {
            Cow::Owned(self.snapshot(&gvr, snap_rv))
        };
        let mut out = Vec::new();
        let mut last_key: Option<&ObjKey> = None;
        let mut more = false;
        let mut remaining = 0u64;
        for (key, obj) in items.iter() {
            if ns.is_some_and(|n| n != key.0) {
                continue;
            }
            if start_after.as_ref().is_some_and(|s| key <= s) {
                continue;
            }
            if !sel.matches(obj) {
                continue;
            }
            if limit > 0 && out.len() >= limit {
                more = true;
                remaining += 1;
                continue;
            }
            out.push(render_list_item(def, obj, mode));
            last_key = Some(key);
        }
        let mut list_meta = json!({"resourceVersion": snap_rv.to_string()});
        if more {
            if let Some(k) = last_key {
                list_meta["continue"] = json!(encode_continue(snap_rv, k));
            }
            if sel.is_empty() {
                list_meta["remainingItemCount"] = json!(remaining);
            }
        }
        let (kind, api_version) = match mode {
            Render::Full => (format!("{}List", def.kind), def.api_version()),
            Render::MetaOnly => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into()),
        };
        Ok(json!({"kind": kind, "apiVersion": api_version, "metadata": list_meta, "items": out}))
    }
}

fn reset_status_on_create(def: &ResourceDef, obj: &mut Value) {
    let status = match (def.group.as_str(), def.plural.as_str()) {
        ("", "services") | ("networking.k8s.io", "ingresses") => Some(json!({"loadBalancer": {}})),
        ("", "namespaces") => Some(json!({"phase": "Active"})),
        _ => None,
    };
    if let Some(o) = obj.as_object_mut() {
        match status {
            Some(s) => {
                o.insert("status".into(), s);
            }
            None => {
                o.remove("status");
            }
        }
    }
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": key.0, "name": key.1});
    hex_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Option<(u64, ObjKey)> {
    let v: Value = serde_json::from_slice(&hex_decode(token)?).ok()?;
    Some((
        v.get("rv")?.as_u64()?,
        (
            v.get("ns")?.as_str()?.to_string(),
            v.get("name")?.as_str()?.to_string(),
        ),
    ))
}

fn parse_yaml_or_json(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
    serde_yaml_ng::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

// ---------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------

/// Response body: a complete buffer, or a stream of chunks (watch). A stream
/// that yields an error makes hyper abort the connection mid-body.
enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Result<Bytes, io::Error>>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(Bytes::from(bytes))))
        .unwrap_or_else(|_| Response::new(Body::Full(None)))
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

enum Target {
    Collection {
        def: ResourceDef,
        ns: Option<String>,
    },
    Object {
        def: ResourceDef,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
    },
}

fn route(resources: &[ResourceDef], path: &str) -> ApiResult<Target> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::unknown_resource()),
    };
    if rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::unknown_resource());
    }
    let find = |plural: &str| {
        resources
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    };
    if let ["namespaces", ns, plural, tail @ ..] = rest {
        if let Some(def) = find(plural).filter(|d| d.namespaced) {
            let ns = Some(ns.to_string());
            return match tail {
                [] => Ok(Target::Collection { def, ns }),
                [name] => Ok(Target::Object {
                    def,
                    ns,
                    name: name.to_string(),
                    sub: None,
                }),
                [name, sub] => Ok(Target::Object {
                    def,
                    ns,
                    name: name.to_string(),
                    sub: Some(sub.to_string()),
                }),
                _ => Err(ApiError::unknown_resource()),
            };
        }
    }
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::unknown_resource()),
    };
    let def = find(plural).ok_or_else(ApiError::unknown_resource)?;
    match name {
        None => Ok(Target::Collection { def, ns: None }),
        Some(_) if def.namespaced => Err(ApiError::unknown_resource()),
        Some(name) => Ok(Target::Object {
            def,
            ns: None,
            name: name.to_string(),
            sub: sub.map(str::to_string),
        }),
    }
}

fn discovery(resources: &[ResourceDef], path: &str, addr: SocketAddr) -> Option<Value> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    let resource_list = |group: &str, version: &str| -> Option<Value> {
        let mut out = Vec::new();
        for d in resources
            .iter()
            .filter(|d| d.group == group && d.version == version)
        {
            out.push(json!({
                "name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            }));
            if d.status_subresource {
                out.push(json!({
                    "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                    "kind": d.kind, "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if out.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
        )
    };
    let group_doc = |group: &str| -> Option<Value> {
        let versions: Vec<Value> = {
            let mut vs: Vec<&str> = resources
                .iter()
                .filter(|d| d.group == group)
                .map(|d| d.version.as_str())
                .collect();
            vs.dedup();
            vs.iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect()
        };
        let first = versions.first()?.clone();
        Some(
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": first}),
        )
    };
    match segs.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
        })),
        ["api", "v1"] => resource_list("", "v1"),
        ["apis"] => {
            let mut groups: Vec<&str> = resources
                .iter()
                .map(|d| d.group.as_str())
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            let groups: Vec<Value> = groups.iter().filter_map(|g| group_doc(g)).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g] => group_doc(g),
        ["apis", g, v] => resource_list(g, v),
        _ => None,
    }
}

async fn serve_request(
    sh: Arc<Shared>,
    addr: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "failed to read request body: {e}"
            )))
        }
    };
    let idx = {
        let mut st = sh.lock();
        st.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: header_str(&parts.headers, header::CONTENT_TYPE),
            accept: header_str(&parts.headers, header::ACCEPT),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
            version: parts.version,
        });
        st.requests.len() - 1
    };
    // Run the handler in its own task: a panic becomes a 500, not a crash.
    let sh2 = sh.clone();
    let resp = match tokio::spawn(async move { handle(sh2, addr, parts, body) }).await {
        Ok(r) => r,
        Err(e) => error_response(&ApiError::internal(format!("stand-in handler failed: {e}"))),
    };
    if let Some(r) = sh.lock().requests.get_mut(idx) {
        r.status = resp.status().as_u16();
    }
    resp
}

/// Everything a write handler needs to record the write.
struct WriteCtx<'a> {
    def: &'a ResourceDef,
    ns: &'a Option<String>,
    name: &'a str,
    sub: Option<&'a str>,
    content_type: &'a Option<String>,
    body: &'a Bytes,
}

impl WriteCtx<'_> {
    fn record(&self, st: &mut State, verb: &'static str, result: &Value) {
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            parse_yaml_or_json(self.body).unwrap_or(Value::Null)
        };
        st.writes.push(RecordedWrite {
            verb,
            group: self.def.group.clone(),
            version: self.def.version.clone(),
            plural: self.def.plural.clone(),
            namespace: self.ns.clone(),
            name: self.name.to_string(),
            subresource: self.sub.map(str::to_string),
            content_type: self.content_type.clone(),
            body,
            result: result.clone(),
        });
    }
}

fn decode_body(content_type: &Option<String>, body: &Bytes) -> ApiResult<Value> {
    let base = content_type
        .as_deref()
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    match base {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml_or_json(body),
        other => Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml (got {other:?})"
        ))),
    }
}

fn handle(
    sh: Arc<Shared>,
    addr: SocketAddr,
    parts: http::request::Parts,
    body: Bytes,
) -> Response<Body> {
    let path = parts.uri.path().to_string();
    let q = Query::parse(parts.uri.query().unwrap_or(""));
    let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
    let accept = header_str(&parts.headers, header::ACCEPT).unwrap_or_default();
    let mode = if accept.contains("as=PartialObjectMetadata") {
        Render::MetaOnly
    } else {
        Render::Full
    };

    match path.as_str() {
        "/version" | "/version/" => {
            return json_response(
                200,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-portico-standin",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                    "platform": "linux/amd64",
                }),
            )
        }
        "/healthz" | "/livez" | "/readyz" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::Full(Some(Bytes::from_static(b"ok"))))
                .unwrap_or_else(|_| Response::new(Body::Full(None)));
        }
        _ => {}
    }
    let routed = {
        let st = sh.lock();
        if parts.method == Method::GET {
            if let Some(doc) = discovery(&st.resources, &path, addr) {
                return json_response(200, &doc);
            }
        }
        route(&st.resources, &path)
    };
    let target = match routed {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let dry_run = q.str("dryRun") == "All";
    match target {
        Target::Collection { def, ns } => match parts.method {
            Method::GET if q.flag("watch") => {
                start_watch(&sh, &def, ns, &q, mode).unwrap_or_else(|e| error_response(&e))
            }
            Method::GET => match sh.lock().list(&def, ns.as_deref(), &q, mode) {
                Ok(v) => json_response(200, &v),
                Err(e) => error_response(&e),
            },
            Method::POST if def.namespaced && ns.is_none() => {
                error_response(&ApiError::method_not_allowed())
            }
            Method::POST => {
                let obj = match decode_body(&content_type, &body) {
                    Ok(v) => v,
                    Err(e) => return error_response(&e),
                };
                let mut st = sh.lock();
                match st.create(&def, ns.as_deref(), obj, dry_run) {
                    Ok(created) => {
                        let name = meta_str(&created, "name").to_string();
                        let ctx = WriteCtx {
                            def: &def,
                            ns: &ns,
                            name: &name,
                            sub: None,
                            content_type: &content_type,
                            body: &body,
                        };
                        if !dry_run {
                            ctx.record(&mut st, "create", &created);
                        }
                        json_response(201, &render_object(&created, mode))
                    }
                    Err(e) => error_response(&e),
                }
            }
            Method::DELETE => {
                let opts = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                let mut st = sh.lock();
                let sel = match Selector::from_query(&def, &q) {
                    Ok(s) => s,
                    Err(e) => return error_response(&e),
                };
                let keys: Vec<ObjKey> = st
                    .objects
                    .get(&def.gvr())
                    .map(|m| {
                        m.iter()
                            .filter(|(k, o)| {
                                ns.as_deref().is_none_or(|n| n == k.0) && sel.matches(o)
                            })
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let mut items = Vec::new();
                for (kns, kname) in keys {
                    let obj_ns = def.namespaced.then_some(kns.as_str());
                    match st.delete(&def, obj_ns, &kname, &opts, dry_run) {
                        Ok(DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o)) => {
                            items.push(render_list_item(&def, &o, mode))
                        }
                        Err(e) => return error_response(&e),
                    }
                }
                let list = json!({
                    "kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items,
                });
                if !dry_run {
                    let ctx = WriteCtx {
                        def: &def,
                        ns: &ns,
                        name: "",
                        sub: None,
                        content_type: &content_type,
                        body: &body,
                    };
                    ctx.record(&mut st, "deletecollection", &list);
                }
                json_response(200, &list)
            }
            _ => error_response(&ApiError::method_not_allowed()),
        },
        Target::Object { def, ns, name, sub } => {
            let sub_kind = match sub.as_deref() {
                None => Sub::Main,
                Some("status") if def.status_subresource => Sub::Status,
                Some(_) => return error_response(&ApiError::unknown_resource()),
            };
            let ctx = WriteCtx {
                def: &def,
                ns: &ns,
                name: &name,
                sub: sub.as_deref(),
                content_type: &content_type,
                body: &body,
            };
            match parts.method {
                Method::GET => {
                    let st = sh.lock();
                    let ns_key = if def.namespaced {
                        ns.as_deref().unwrap_or("")
                    } else {
                        ""
                    };
                    match st.current(&def, ns_key, &name) {
                        Some(o) => json_response(200, &render_object(o, mode)),
                        None => error_response(&ApiError::not_found(&def, &name)),
                    }
                }
                Method::PUT => {
                    let obj = match decode_body(&content_type, &body) {
                        Ok(v) => v,
                        Err(e) => return error_response(&e),
                    };
                    let mut st = sh.lock();
                    match st.update(&def, ns.as_deref(), &name, sub_kind, obj, dry_run) {
                        Ok((o, created)) => {
                            if !dry_run {
                                ctx.record(&mut st, if created { "create" } else { "update" }, &o);
                            }
                            json_response(if created { 201 } else { 200 }, &render_object(&o, mode))
                        }
                        Err(e) => error_response(&e),
                    }
                }
                Method::PATCH => {
                    let ptype = match PatchType::from_content_type(content_type.as_deref()) {
                        Ok(p) => p,
                        Err(e) => return error_response(&e),
                    };
                    let mut st = sh.lock();
                    match st.patch(&def, ns.as_deref(), &name, sub_kind, ptype, &body, &q) {
                        Ok((o, created)) => {
                            if !dry_run {
                                ctx.record(&mut st, "patch", &o);
                            }
                            json_response(if created { 201 } else { 200 }, &render_object(&o, mode))
                        }
                        Err(e) => error_response(&e),
                    }
                }
                Method::DELETE if sub_kind == Sub::Main => {
                    let opts = if body.is_empty() {
                        Value::Null
                    } else {
                        match serde_json::from_slice::<Value>(&body) {
                            Ok(v) => v,
                            Err(e) => {
                                return error_response(&ApiError::bad_request(format!(
                                    "invalid DeleteOptions: {e}"
                                )))
                            }
                        }
                    };
                    let mut st = sh.lock();
                    match st.delete(&def, ns.as_deref(), &name, &opts, dry_run) {
                        Ok(DeleteOutcome::Pending(o)) => {
                            if !dry_run {
                                ctx.record(&mut st, "delete", &o);
                            }
                            json_response(200, &render_object(&o, mode))
                        }
                        Ok(DeleteOutcome::Deleted(o)) => {
                            let mut details = ApiError::obj_details(&def, &name);
                            details["uid"] = json!(meta_str(&o, "uid"));
                            let status = json!({
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success", "details": details,
                            });
                            if !dry_run {
                                ctx.record(&mut st, "delete", &status);
                            }
                            json_response(200, &status)
                        }
                        Err(e) => error_response(&e),
                    }
                }
                _ => error_response(&ApiError::method_not_allowed()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

struct WatchSpec {
    def: ResourceDef,
    sel: Selector,
    mode: Render,
    bookmarks: bool,
}

impl WatchSpec {
    fn line(etype: &str, object: Value) -> Bytes {
        let mut b =
            serde_json::to_vec(&json!({"type": etype, "object": object})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }

    fn render_event(&self, ev: &HistEvent) -> Option<Bytes> {
        let now = self.sel.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.sel.matches(p));
        let etype = match ev.etype {
            EventType::Added => now.then_some("ADDED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
            EventType::Deleted => before.then_some("DELETED"),
        }?;
        Some(Self::line(etype, render_object(&ev.object, self.mode)))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut md = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            md["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let (kind, api_version) = match self.mode {
            Render::Full => (self.def.kind.clone(), self.def.api_version()),
            Render::MetaOnly => ("PartialObjectMetadata".into(), "meta.k8s.io/v1".into()),
        };
        Self::line(
            "BOOKMARK",
            json!({"kind": kind, "apiVersion": api_version, "metadata": md}),
        )
    }
}

fn start_watch(
    sh: &Arc<Shared>,
    def: &ResourceDef,
    ns: Option<String>,
    q: &Query,
    mode: Render,
) -> ApiResult<Response<Body>> {
    let sel = Selector::from_query(def, q)?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    let rv_match = q.str("resourceVersionMatch");
    let invalid = |field: &str, msg: &str| {
        ApiError::invalid("ListOptions", "", field, "FieldValueForbidden", msg)
    };
    if q.get("sendInitialEvents").is_some() {
        if rv_match != "NotOlderThan" {
            return Err(invalid("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        }
        if send_initial && !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks",
                "Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ));
        }
    } else if !rv_match.is_empty() {
        return Err(invalid("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
    }
    let timeout = match q.get("timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH_TIMEOUT_SECS,
        Some(t) => match t.parse::<u64>() {
            Ok(0) => DEFAULT_WATCH_TIMEOUT_SECS,
            Ok(n) => n,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid timeoutSeconds {t:?}"
                )))
            }
        },
    };
    let rv_param = q.str("resourceVersion");
    let from_rv: Option<u64> = match rv_param {
        "" | "0" => None,
        n => Some(
            n.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {n:?}")))?,
        ),
    };
    let spec = WatchSpec {
        def: def.clone(),
        sel,
        mode,
        bookmarks,
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Result<Bytes, io::Error>>();
    let (tx, rx) = mpsc::unbounded_channel();
    let gvr = def.gvr();
    let registered = {
        let mut st = sh.lock();
        let in_ns = |k: &str| ns.as_deref().is_none_or(|n| n == k);
        match from_rv {
            Some(n) if !send_initial && n < st.compacted_rv => {
                let err = ApiError::gone(format!(
                    "too old resource version: {n} ({})",
                    st.compacted_rv
                ));
                let _ = out_tx.send(Ok(WatchSpec::line("ERROR", err.to_status())));
                None
            }
            Some(n) if !send_initial => {
                for ev in st
                    .history
                    .iter()
                    .filter(|e| e.rv > n && e.gvr == gvr && in_ns(&e.ns))
                {
                    if let Some(line) = spec.render_event(ev) {
                        let _ = out_tx.send(Ok(line));
                    }
                }
                // Live events from here on; never at or below the requested version.
                Some(st.rv.max(n))
            }
            // `sendInitialEvents=false` without a version: start at the most recent.
            None if q.get("sendInitialEvents").is_some() && !send_initial => Some(st.rv),
            _ => {
                if let Some(objs) = st.objects.get(&gvr) {
                    for ((kns, _), obj) in objs {
                        if in_ns(kns) && spec.sel.matches(obj) {
                            let _ =
                                out_tx.send(Ok(WatchSpec::line("ADDED", render_object(obj, mode))));
                        }
                    }
                }
                if send_initial {
                    let _ = out_tx.send(Ok(spec.bookmark(st.rv, true)));
                }
                Some(st.rv)
            }
        }
        .map(|start_rv| {
            let id = st.next_watch_id;
            st.next_watch_id += 1;
            st.watchers.push(WatchReg {
                id,
                gvr: gvr.clone(),
                ns: ns.clone(),
                tx,
            });
            (id, start_rv)
        })
    };
    if let Some((id, start_rv)) = registered {
        tokio::spawn(watch_loop(
            sh.clone(),
            spec,
            id,
            rx,
            out_tx,
            start_rv,
            Duration::from_secs(timeout),
        ));
    }
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Stream(out_rx))
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn watch_loop(
    sh: Arc<Shared>,
    spec: WatchSpec,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<WatchMsg>,
    out: mpsc::UnboundedSender<Result<Bytes, io::Error>>,
    mut last_rv: u64,
    timeout: Duration,
) {
    // Events at or below the version the watch started from were already
    // replayed (or predate the requested version).
    let floor = last_rv;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut next_bookmark = Instant::now() + sh.bookmark_interval();
    let abort = |out: &mpsc::UnboundedSender<Result<Bytes, io::Error>>| {
        let _ = out.send(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "watch dropped by the stand-in",
        )));
    };
    'outer: loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = out.closed() => break,
            msg = rx.recv() => match msg {
                Some(WatchMsg::Event(ev)) => {
                    last_rv = last_rv.max(ev.rv);
                    if let Some(line) = spec.render_event(&ev).filter(|_| ev.rv > floor) {
                        if out.send(Ok(line)).is_err() {
                            break;
                        }
                    }
                }
                Some(WatchMsg::Kill) | None => {
                    abort(&out);
                    break;
                }
            },
            _ = tokio::time::sleep_until(next_bookmark), if spec.bookmarks => {
                // Every event up to `current` is already queued in `rx` (events
                // are queued under the same lock that advances the version), so
                // drain it before announcing `current` in a bookmark.
                let current = sh.lock().rv;
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        WatchMsg::Event(ev) => {
                            last_rv = last_rv.max(ev.rv);
                            if let Some(line) = spec.render_event(&ev).filter(|_| ev.rv > floor) {
                                if out.send(Ok(line)).is_err() {
                                    break 'outer;
                                }
                            }
                        }
                        WatchMsg::Kill => {
                            abort(&out);
                            break 'outer;
                        }
                    }
                }
                last_rv = last_rv.max(current);
                if out.send(Ok(spec.bookmark(last_rv, false))).is_err() {
                    break;
                }
                next_bookmark = Instant::now() + sh.bookmark_interval();
            }
        }
    }
    sh.lock().watchers.retain(|w| w.id != id);
}

// ---------------------------------------------------------------------------
// The server handle
// ---------------------------------------------------------------------------

/// A running stand-in API server. Dropping it shuts it down.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: Mutex<SocketAddr>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

async fn bind_with_retry(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last_err = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "address in use")))
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>, addr: SocketAddr) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sh2 = sh.clone();
        let acceptor = sh.tls.acceptor.clone();
        let conn = tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return; // a failed handshake: the client gave up or distrusts the CA
            };
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh2.clone();
                async move { Ok::<_, Infallible>(serve_request(sh, addr, req).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
        });
        let mut conns = lock(&sh.conns);
        conns.retain(|h| !h.is_finished());
        conns.push(conn);
    }
}

impl ApiServer {
    /// Starts an empty server on `127.0.0.1` on an ephemeral port.
    pub async fn start() -> ApiServer {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("stand-in API server: cannot bind 127.0.0.1:0")
    }

    /// Starts an empty server on the given address (port 0 = ephemeral).
    pub async fn start_on(addr: SocketAddr) -> io::Result<ApiServer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            bookmark_ms: AtomicU64::new(DEFAULT_BOOKMARK_INTERVAL.as_millis() as u64),
            conns: Mutex::new(Vec::new()),
            tls: Tls::generate(),
        });
        let server = ApiServer {
            shared,
            addr: Mutex::new(addr),
            accept: Mutex::new(None),
        };
        server.listen(addr).await?;
        Ok(server)
    }

    async fn listen(&self, addr: SocketAddr) -> io::Result<()> {
        let listener = bind_with_retry(addr).await?;
        let bound = listener.local_addr()?;
        *lock(&self.addr) = bound;
        let handle = tokio::spawn(accept_loop(listener, self.shared.clone(), bound));
        if let Some(old) = lock(&self.accept).replace(handle) {
            old.abort();
        }
        Ok(())
    }

    /// The address the server listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        *lock(&self.addr)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The PEM of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.shared.tls.ca_pem
    }

    /// A reqwest client that trusts the server's CA and speaks HTTP/1.1, as kube-rs does.
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes())
            .expect("stand-in API server: CA PEM parses");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .http1_only()
            .build()
            .expect("stand-in API server: reqwest client builds")
    }

    /// Whether the server is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.accept)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// A kubeconfig (YAML) for this server: `https://`, its CA as
    /// `certificate-authority-data`, a dummy token.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: portico-standin\n  \
               cluster:\n    \
                 server: {url}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: portico-standin\n  \
               user:\n    \
                 token: portico-standin-token\n\
             contexts:\n\
             - name: portico-standin\n  \
               context:\n    \
                 cluster: portico-standin\n    \
                 user: portico-standin\n    \
                 namespace: default\n\
             current-context: portico-standin\n",
            url = self.url(),
            ca = base64(self.ca_pem().as_bytes()),
        )
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `dir/kubeconfig` and returns
    /// the path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml())
            .expect("stand-in API server: cannot write kubeconfig");
        path
    }

    /// A kube client configured through this server's kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .expect("kubeconfig parses");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kube accepts the stand-in kubeconfig");
        kube::Client::try_from(cfg).expect("kube client builds")
    }

    /// Serves an additional resource type (e.g. a CRD).
    pub fn register_resource(&self, def: ResourceDef) {
        let mut st = self.shared.lock();
        st.resources.retain(|d| {
            !(d.group == def.group && d.version == def.version && d.plural == def.plural)
        });
        st.resources.push(def);
    }

    // ---- direct store access (test setup; not recorded as HTTP writes) ----

    fn resolve(st: &State, api_version: &str, kind: &str) -> ResourceDef {
        st.def_by_kind(api_version, kind).unwrap_or_else(|| {
            panic!("stand-in API server: unknown resource {api_version} {kind}; register it first")
        })
    }

    /// Creates or replaces an object as-is (including `status`), like
    /// `kubectl apply` of a full object: emits `ADDED` or `MODIFIED` (nothing
    /// when unchanged). `metadata.namespace` defaults to `default`; `uid` and
    /// `creationTimestamp` are kept from the stored object or the input, or
    /// generated. Returns the stored object. Panics on unknown kinds or
    /// objects without a name (test-setup errors).
    pub fn apply(&self, mut obj: Value) -> Value {
        let mut st = self.shared.lock();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let def = Self::resolve(&st, &api_version, &kind);
        let name = meta_str(&obj, "name").to_string();
        assert!(
            !name.is_empty(),
            "stand-in API server: apply() needs metadata.name"
        );
        let ns = if def.namespaced {
            let ns = meta_str(&obj, "namespace");
            if ns.is_empty() {
                "default".to_string()
            } else {
                ns.to_string()
            }
        } else {
            String::new()
        };
        let old = st.current(&def, &ns, &name).cloned();
        let spec_changed = old.as_ref().is_none_or(|o| spec_part(o) != spec_part(&obj));
        {
            let m = meta_mut(&mut obj);
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            let old_meta = old.as_ref().and_then(meta);
            for key in ["uid", "creationTimestamp"] {
                if let Some(v) = old_meta.and_then(|om| om.get(key)) {
                    m.insert(key.into(), v.clone());
                }
            }
            if !m.contains_key("uid") {
                m.insert("uid".into(), json!(new_uid()));
            }
            if !m.contains_key("creationTimestamp") {
                m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            }
            if def.tracks_generation && !m.contains_key("generation") {
                let gen = old_meta
                    .and_then(|om| om.get("generation"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                m.insert(
                    "generation".into(),
                    json!(if spec_changed { gen + 1 } else { gen }),
                );
            }
        }
        if let Some(o) = &old {
            let mut cmp = obj.clone();
            set_rv(
                &mut cmp,
                meta_str(o, "resourceVersion").parse().unwrap_or(0),
            );
            if cmp == *o {
                return o.clone();
            }
        }
        st.commit(&def, &ns, &name, obj, old)
    }

    /// [`ApiServer::apply`] for every document of a (multi-document) YAML
    /// string; `kind: *List` documents are expanded. Empty documents are
    /// skipped. Panics on invalid YAML. (YAML is parsed with `serde_yaml_ng`
    /// 0.10, a normal dependency of the crate, so no dev-dependency is needed.)
    pub fn apply_yaml(&self, yaml: &str) -> Vec<Value> {
        use serde::Deserialize;
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).expect("stand-in API server: invalid YAML document");
            if v.is_null() {
                continue;
            }
            let is_list = v
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"));
            match v.get("items").and_then(Value::as_array) {
                Some(items) if is_list => out.extend(items.iter().cloned().map(|i| self.apply(i))),
                _ => out.push(self.apply(v)),
            }
        }
        out
    }

    /// Deletes an object like `kubectl delete` (an object with finalizers only
    /// gets `deletionTimestamp`). `ns` is ignored for cluster-scoped kinds.
    /// Returns the deleted (or pending) object, `None` if it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let mut st = self.shared.lock();
        let def = Self::resolve(&st, api_version, kind);
        match st.delete(&def, Some(ns), name, &Value::Null, false) {
            Ok(DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o)) => Some(o),
            Err(_) => None,
        }
    }

    /// The stored object, if any. `ns` is ignored for cluster-scoped kinds.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let st = self.shared.lock();
        let def = Self::resolve(&st, api_version, kind);
        let ns = if def.namespaced { ns } else { "" };
        st.current(&def, ns, name).cloned()
    }

    /// All stored objects of a kind, in one namespace or all (`None`).
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let st = self.shared.lock();
        let def = Self::resolve(&st, api_version, kind);
        st.objects
            .get(&def.gvr())
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| ns.is_none_or(|n| n == k.0))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Compacts the event history up to the current resourceVersion: watches
    /// (and `Exact` lists, continue tokens) from older versions now get 410.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted_rv = st.rv;
        st.history.clear();
    }

    /// Aborts every open watch connection mid-stream (the client sees the
    /// connection break, as when an API server or load balancer drops it).
    pub fn drop_watches(&self) {
        self.shared.kill_watches();
    }

    /// Number of open watch streams.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().watchers.len()
    }

    /// Waits (up to `timeout`) until at least `n` watches are open.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.watch_count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.watch_count() >= n
    }

    /// Interval between `BOOKMARK` events (default 1 s); applies to open
    /// watches from their next bookmark on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared
            .bookmark_ms
            .store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Stops listening and closes every connection (an outage). The store is
    /// kept; [`ApiServer::restart`] brings the server back on the same port.
    pub async fn stop(&self) {
        let accept = lock(&self.accept).take();
        if let Some(h) = accept {
            h.abort();
            let _ = h.await;
        }
        self.shared.kill_watches();
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for h in &conns {
            h.abort();
        }
        for h in conns {
            let _ = h.await;
        }
    }

    /// Starts listening again on the same address, with the same store.
    pub async fn restart(&self) {
        let addr = self.addr();
        self.restart_on(addr)
            .await
            .unwrap_or_else(|e| panic!("stand-in API server: cannot re-bind {addr}: {e}"));
    }

    /// Stops (if running) and listens on `addr`, with the same store.
    pub async fn restart_on(&self, addr: SocketAddr) -> io::Result<()> {
        if lock(&self.accept).is_some() {
            self.stop().await;
        }
        self.listen(addr).await
    }

    // ---- records ----

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Forgets the recorded requests and writes.
    pub fn clear_records(&self) {
        let mut st = self.shared.lock();
        st.requests.clear();
        st.writes.clear();
    }

    /// Every successful write made over HTTP, in order.
    pub fn writes(&self) -> Vec<RecordedWrite> {
        self.shared.lock().writes.clone()
    }

    /// Successful writes (PUT/PATCH) to `ingresses/{name}/status`.
    pub fn status_writes(&self) -> Vec<RecordedWrite> {
        self.status_writes_for("networking.k8s.io", "ingresses")
    }

    /// Successful writes to the status subresource of a resource.
    pub fn status_writes_for(&self, group: &str, plural: &str) -> Vec<RecordedWrite> {
        self.writes()
            .into_iter()
            .filter(|w| {
                w.group == group && w.plural == plural && w.subresource.as_deref() == Some("status")
            })
            .collect()
    }

    /// Events written over HTTP (created, or patched as a series), core v1
    /// and events.k8s.io/v1, as the server stored them.
    pub fn events(&self) -> Vec<Value> {
        self.writes()
            .into_iter()
            .filter(|w| w.plural == "events" && (w.group.is_empty() || w.group == "events.k8s.io"))
            .filter(|w| matches!(w.verb, "create" | "update" | "patch"))
            .map(|w| w.result)
            .collect()
    }

    /// The Lease objects currently stored, all namespaces.
    pub fn leases(&self) -> Vec<Value> {
        self.list("coordination.k8s.io/v1", "Lease", None)
    }

    /// Successful Lease writes made over HTTP.
    pub fn lease_writes(&self) -> Vec<RecordedWrite> {
        self.writes()
            .into_iter()
            .filter(|w| w.group == "coordination.k8s.io" && w.plural == "leases")
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.accept).take() {
            h.abort();
        }
        self.shared.kill_watches();
        for h in lock(&self.shared.conns).drain(..) {
            h.abort();
        }
    }
}
