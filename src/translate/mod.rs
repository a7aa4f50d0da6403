//! The edge between Kubernetes and Portico: `k8s-openapi` objects in, [`crate::model`] out.
//!
//! Both sources use this module: the manifest directory parses documents with [`parse_documents`],
//! the Kubernetes watches hand over typed objects to the `*_from_k8s` functions. Nothing past this
//! module sees a Kubernetes type.

pub mod gateway;
pub mod nginx;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap as K8sConfigMap, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use k8s_openapi::api::networking::v1::{
    Ingress as K8sIngress, IngressBackend, IngressClass as K8sClass,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::model::{
    BackendRef, Endpoint, EndpointSlice, HttpPath, Ingress, IngressAnnotations, IngressClass,
    Object, ObjectKey, PathType, PortRef, Rule, Service, ServicePort, SlicePort, TlsEntry,
    TlsSecret,
};

/// The legacy class annotation.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks an IngressClass as the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// Opts an Ingress out of the HTTP to HTTPS redirect.
pub const SSL_REDIRECT_ANNOTATION: &str = "portico.dev/ssl-redirect";
/// Per-Ingress limits, typed values in ingress-nginx's formats.
pub const BODY_SIZE_ANNOTATION: &str = "portico.dev/proxy-body-size";
pub const CONNECT_TIMEOUT_ANNOTATION: &str = "portico.dev/proxy-connect-timeout";
pub const READ_TIMEOUT_ANNOTATION: &str = "portico.dev/proxy-read-timeout";
pub const SEND_TIMEOUT_ANNOTATION: &str = "portico.dev/proxy-send-timeout";
pub const HEALTH_CHECK_PATH_ANNOTATION: &str = "portico.dev/health-check-path";
pub const HEALTH_CHECK_INTERVAL_ANNOTATION: &str = "portico.dev/health-check-interval";
/// The `Strict-Transport-Security` policy of an Ingress's responses over TLS.
pub const HSTS_ANNOTATION: &str = "portico.dev/hsts";
/// How Portico speaks to an Ingress's backends: HTTP, HTTPS, H2C, GRPC or GRPCS.
pub const BACKEND_PROTOCOL_ANNOTATION: &str = "portico.dev/backend-protocol";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Secret type of certificates Portico serves.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The generic Secret type, read for its `ca.crt` (ingress-nginx's `proxy-ssl-secret`).
pub const OPAQUE_SECRET_TYPE: &str = "Opaque";

/// Why a document or object could not be turned into the model.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// `index` counts from 0; the message counts from 1, as a reader of the file does.
    #[error("document {}: not valid YAML/JSON: {error}; the rest of the file is not read", .index + 1)]
    Syntax {
        index: usize,
        error: serde_yaml_ng::Error,
    },
    #[error("document {}: {reason}", .index + 1)]
    Shape { index: usize, reason: String },
    #[error("{kind} {key}: {reason}")]
    Invalid {
        kind: &'static str,
        key: ObjectKey,
        reason: String,
    },
}

impl TranslateError {
    /// A short, low-cardinality reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TranslateError::Syntax { .. } => "syntax",
            TranslateError::Shape { .. } => "shape",
            TranslateError::Invalid { .. } => "invalid",
        }
    }

    /// The kind of the object at fault, when it is known.
    pub fn kind(&self) -> &'static str {
        match self {
            TranslateError::Invalid { kind, .. } => kind,
            _ => "Unknown",
        }
    }
}

/// One document of a manifest file, turned into an object, skipped, or rejected.
#[derive(Debug)]
pub enum Document {
    Object(Object),
    /// A kind Portico does not read (a Deployment, say), or a Secret of another type.
    Ignored,
    /// Rejected; `identity` is `(kind, key)` when the document said who it was, so that a source
    /// can keep the last good version of that object.
    Rejected {
        identity: Option<(&'static str, ObjectKey)>,
        error: TranslateError,
    },
}

/// Parses multi-document YAML (JSON is YAML too) into objects.
///
/// Never panics; every document that fails is returned as [`Document::Rejected`]. A syntax error
/// stops the parse at that document, since YAML cannot resynchronise after it.
pub fn parse_documents(text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => {} // an empty document, e.g. a trailing `---`
            Ok(value) => from_value(index, value, &mut out),
            Err(error) => {
                out.push(Document::Rejected {
                    identity: None,
                    error: TranslateError::Syntax { index, error },
                });
                break;
            }
        }
    }
    out
}

fn from_value(index: usize, value: serde_json::Value, out: &mut Vec<Document>) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if kind.ends_with("List") {
        if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
            for item in items {
                from_value(index, item.clone(), out);
            }
            return;
        }
    }
    if crate::source::gateway_api::is_gateway_kind(api_version, kind)
        || (api_version, kind) == ("v1", "Namespace")
    {
        out.push(gateway_document(value));
        return;
    }
    let known = match (api_version, kind) {
        ("networking.k8s.io/v1", "Ingress") => Some("Ingress"),
        ("networking.k8s.io/v1", "IngressClass") => Some("IngressClass"),
        ("v1", "Service") => Some("Service"),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some("EndpointSlice"),
        ("v1", "Secret") => Some("Secret"),
        ("v1", "ConfigMap") => Some("ConfigMap"),
        (_, "") => {
            out.push(Document::Rejected {
                identity: None,
                error: TranslateError::Shape {
                    index,
                    reason: "no `kind`: every document needs apiVersion and kind".into(),
                },
            });
            return;
        }
        _ => None,
    };
    let Some(kind) = known else {
        // The versions removed from Kubernetes: a document copied from an old guide would
        // otherwise be skipped without a word.
        if let Some((kind, current)) = legacy(api_version, kind) {
            out.push(Document::Rejected {
                identity: Some((kind, identity_of(&value))),
                error: TranslateError::Invalid {
                    kind,
                    key: identity_of(&value),
                    reason: format!(
                        "apiVersion {api_version} is no longer served by Kubernetes; use \
                         {current}{}",
                        if kind == "Ingress" {
                            " (a backend is then service.name and service.port.number)"
                        } else {
                            ""
                        }
                    ),
                },
            });
        } else {
            out.push(Document::Ignored);
        }
        return;
    };
    let identity = Some((kind, identity_of(&value)));
    // serde would name the missing field but not where it is.
    let missing = match kind {
        "Ingress" => missing_path_type(&value),
        _ => None,
    };
    if let Some(reason) = missing {
        let key = identity_of(&value);
        out.push(Document::Rejected {
            identity,
            error: TranslateError::Invalid { kind, key, reason },
        });
        return;
    }
    let shape = |e: serde_json::Error| format!("does not match the {kind} schema: {e}");
    let result = match kind {
        "Ingress" => serde_json::from_value::<K8sIngress>(value)
            .map_err(shape)
            .and_then(|o| ingress_from_k8s(&o).map(|o| Some(Object::Ingress(Arc::new(o))))),
        "IngressClass" => serde_json::from_value::<K8sClass>(value)
            .map_err(shape)
            .and_then(|o| class_from_k8s(&o).map(|o| Some(Object::IngressClass(Arc::new(o))))),
        "Service" => serde_json::from_value::<K8sService>(value)
            .map_err(shape)
            .and_then(|o| service_from_k8s(&o).map(|o| Some(Object::Service(Arc::new(o))))),
        "EndpointSlice" => serde_json::from_value::<K8sSlice>(value)
            .map_err(shape)
            .and_then(|o| slice_from_k8s(&o).map(|o| Some(Object::EndpointSlice(Arc::new(o))))),
        "ConfigMap" => serde_json::from_value::<K8sConfigMap>(value)
            .map_err(shape)
            .and_then(|o| config_map_from_k8s(&o).map(|c| Some(Object::ConfigMap(Arc::new(c))))),
        _ => serde_json::from_value::<Secret>(value)
            .map_err(shape)
            .and_then(|o| secret_from_k8s(&o).map(|o| o.map(|s| Object::Secret(Arc::new(s))))),
    };
    out.push(match result {
        Ok(Some(object)) => Document::Object(object),
        Ok(None) => Document::Ignored,
        Err(reason) => {
            let key = identity
                .as_ref()
                .map(|(_, k)| k.clone())
                .unwrap_or_default();
            Document::Rejected {
                identity,
                error: TranslateError::Invalid { kind, key, reason },
            }
        }
    });
}

/// A Gateway API document (GatewayClass, Gateway, HTTPRoute, ReferenceGrant) or a Namespace
/// (for its labels), into the model: kept whole, the compile step translates them.
fn gateway_document(value: serde_json::Value) -> Document {
    use crate::source::gateway_api::{from_value, GatewayObject};
    let kind: &'static str = match value.get("kind").and_then(|k| k.as_str()) {
        Some("GatewayClass") => "GatewayClass",
        Some("Gateway") => "Gateway",
        Some("HTTPRoute") => "HTTPRoute",
        Some("ReferenceGrant") => "ReferenceGrant",
        _ => "Namespace",
    };
    let mut key = identity_of(&value);
    if matches!(kind, "GatewayClass" | "Namespace") {
        key.namespace.clear();
    }
    let invalid = |reason: String| Document::Rejected {
        identity: Some((kind, key.clone())),
        error: TranslateError::Invalid {
            kind,
            key: key.clone(),
            reason,
        },
    };
    if key.name.is_empty() {
        return invalid("metadata.name is missing".into());
    }
    if kind == "Namespace" {
        let mut labels: BTreeMap<String, String> = value
            .pointer("/metadata/labels")
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        // The API server sets it on every namespace (Kubernetes 1.22 and later); selectors
        // rely on it.
        labels.insert("kubernetes.io/metadata.name".into(), key.name.clone());
        return Document::Object(Object::Namespace(Arc::new(crate::model::Namespace {
            name: key.name.clone(),
            labels,
        })));
    }
    match from_value(value) {
        Some(Ok(o)) => Document::Object(match o {
            GatewayObject::GatewayClass(o) => Object::GatewayClass(Arc::new(o)),
            GatewayObject::Gateway(o) => Object::Gateway(Arc::new(o)),
            GatewayObject::HTTPRoute(o) => Object::HTTPRoute(Arc::new(o)),
            GatewayObject::ReferenceGrant(o) => Object::ReferenceGrant(Arc::new(o)),
        }),
        Some(Err(e)) => invalid(format!("does not match the {kind} schema: {e}")),
        None => Document::Ignored,
    }
}

/// The kind, and its current apiVersion, of a document in an apiVersion Kubernetes removed.
fn legacy(api_version: &str, kind: &str) -> Option<(&'static str, &'static str)> {
    match (api_version, kind) {
        ("extensions/v1beta1" | "networking.k8s.io/v1beta1", "Ingress") => {
            Some(("Ingress", "networking.k8s.io/v1"))
        }
        ("networking.k8s.io/v1beta1", "IngressClass") => {
            Some(("IngressClass", "networking.k8s.io/v1"))
        }
        ("discovery.k8s.io/v1beta1", "EndpointSlice") => {
            Some(("EndpointSlice", "discovery.k8s.io/v1"))
        }
        _ => None,
    }
}

/// The first Ingress path without a `pathType`, which networking.k8s.io/v1 requires.
fn missing_path_type(value: &serde_json::Value) -> Option<String> {
    let rules = value.pointer("/spec/rules")?.as_array()?;
    for (i, rule) in rules.iter().enumerate() {
        let paths = rule.pointer("/http/paths").and_then(|p| p.as_array());
        for (j, path) in paths.into_iter().flatten().enumerate() {
            if path.get("pathType").is_none_or(|t| t.is_null()) {
                return Some(format!(
                    "spec.rules[{i}].http.paths[{j}].pathType is missing; set it to Prefix, \
                     Exact or ImplementationSpecific"
                ));
            }
        }
    }
    None
}

fn identity_of(value: &serde_json::Value) -> ObjectKey {
    let meta = value.get("metadata");
    let field = |name: &str| {
        meta.and_then(|m| m.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    ObjectKey::new(namespace_or_default(&field("namespace")), field("name"))
}

fn namespace_or_default(ns: &str) -> String {
    if ns.is_empty() {
        "default".to_string()
    } else {
        ns.to_string()
    }
}

/// `namespace/name` of a namespaced object; a missing namespace means `default`, as kubectl does.
fn key_of(meta: &ObjectMeta) -> Result<ObjectKey, String> {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    Ok(ObjectKey::new(
        namespace_or_default(meta.namespace.as_deref().unwrap_or("")),
        name,
    ))
}

fn annotation<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .map(|s| s.as_str())
}

/// A size as nginx writes it: bytes, or a number with `k`, `m` or `g` (powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim().to_ascii_lowercase();
    let (digits, unit) = match v.strip_suffix(['k', 'm', 'g']) {
        Some(d) => (d, v.bytes().last().unwrap_or(b'b')),
        None => (v.as_str(), b'b'),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a size like 1m, 512k or 1048576"))?;
    let factor: u64 = match unit {
        b'k' => 1 << 10,
        b'm' => 1 << 20,
        b'g' => 1 << 30,
        _ => 1,
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{value:?} is too large"))
}

/// A timeout as ingress-nginx writes it (whole seconds), or with a unit (`500ms`, `2m`).
pub fn parse_timeout(value: &str) -> Result<std::time::Duration, String> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| format!("{value:?}: {e}"))
}

fn parse_bool_annotation(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected \"true\" or \"false\", got {other:?}")),
    }
}

/// Translates a ConfigMap (its string data; binary data is not read).
pub fn config_map_from_k8s(c: &K8sConfigMap) -> Result<crate::model::ConfigMap, String> {
    Ok(crate::model::ConfigMap {
        key: key_of(&c.metadata)?,
        data: c.data.clone().unwrap_or_default(),
    })
}

/// Translates an Ingress. Invalid paths and backends are kept out of the rules and reported in
/// `problems`, so that the rest of the Ingress still serves.
pub fn ingress_from_k8s(ing: &K8sIngress) -> Result<Ingress, String> {
    let key = key_of(&ing.metadata)?;
    let created = ing
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let mut problems = Vec::new();
    let mut annotations = IngressAnnotations::default();
    if let Some(v) = annotation(&ing.metadata, SSL_REDIRECT_ANNOTATION) {
        match parse_bool_annotation(v) {
            Ok(b) => annotations.ssl_redirect = Some(b),
            Err(e) => problems.push(annotation_problem(SSL_REDIRECT_ANNOTATION, &e)),
        }
    }
    let mut limits = crate::model::RouteLimits::default();
    let mut report = |name: &str, e: String| problems.push(annotation_problem(name, &e));
    if let Some(v) = annotation(&ing.metadata, BODY_SIZE_ANNOTATION) {
        parse_size(v).map_or_else(
            |e| report(BODY_SIZE_ANNOTATION, e),
            |n| limits.max_body = Some(n),
        );
    }
    for (name, slot) in [
        (CONNECT_TIMEOUT_ANNOTATION, &mut limits.connect_timeout),
        (READ_TIMEOUT_ANNOTATION, &mut limits.read_timeout),
        (SEND_TIMEOUT_ANNOTATION, &mut limits.send_timeout),
    ] {
        if let Some(v) = annotation(&ing.metadata, name) {
            parse_timeout(v).map_or_else(|e| report(name, e), |t| *slot = Some(t));
        }
    }
    annotations.limits = limits;
    if let Some(path) = annotation(&ing.metadata, HEALTH_CHECK_PATH_ANNOTATION) {
        let interval = match annotation(&ing.metadata, HEALTH_CHECK_INTERVAL_ANNOTATION) {
            Some(v) => match parse_timeout(v) {
                Ok(t) if !t.is_zero() => Some(t),
                Ok(_) => {
                    report(
                        HEALTH_CHECK_INTERVAL_ANNOTATION,
                        "must be more than 0".into(),
                    );
                    None
                }
                Err(e) => {
                    report(HEALTH_CHECK_INTERVAL_ANNOTATION, e);
                    None
                }
            },
            None => Some(std::time::Duration::from_secs(5)),
        };
        let valid_path =
            path.starts_with('/') && !path.bytes().any(|b| b.is_ascii_control() || b == b' ');
        if !valid_path {
            report(
                HEALTH_CHECK_PATH_ANNOTATION,
                format!("{path:?} is not an absolute path"),
            );
        } else if let Some(interval) = interval {
            annotations.health_check = Some(crate::model::HealthCheck {
                path: path.to_string(),
                interval,
            });
        }
    }
    // An invalid value is reported and ignored: the Ingress still serves, with the default.
    if let Some(v) = annotation(&ing.metadata, HSTS_ANNOTATION) {
        match v.parse() {
            Ok(h) => annotations.hsts = Some(h),
            Err(e) => problems.push(annotation_problem(HSTS_ANNOTATION, &e)),
        }
    }
    if let Some(v) = annotation(&ing.metadata, BACKEND_PROTOCOL_ANNOTATION) {
        match v.parse() {
            Ok(p) => annotations.backend_protocol = Some(p),
            Err(e) => problems.push(format!(
                "metadata.annotations[{BACKEND_PROTOCOL_ANNOTATION}]: {e}; the backends are \
                 spoken to in HTTP"
            )),
        }
    }
    let spec = ing.spec.clone().unwrap_or_default();
    let default_backend = match spec.default_backend.as_ref().map(backend_from_k8s) {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            problems.push(format!("spec.defaultBackend.{e}; it is not served"));
            None
        }
        None => None,
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        let mut paths = Vec::new();
        for (j, p) in rule
            .http
            .map(|h| h.paths)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let path_type = match p.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                "ImplementationSpecific" => PathType::ImplementationSpecific,
                other => {
                    problems.push(format!(
                        "spec.rules[{i}].http.paths[{j}].pathType: {other:?} is not Exact, \
                         Prefix or ImplementationSpecific (the names are case-sensitive); the \
                         path is not served"
                    ));
                    continue;
                }
            };
            match backend_from_k8s(&p.backend) {
                Ok(backend) => paths.push(HttpPath {
                    // An unset path is "/" for ImplementationSpecific; the compile step rejects it
                    // for Exact and Prefix, as the API server would.
                    path: p.path.unwrap_or_default(),
                    path_type,
                    backend,
                }),
                Err(e) => problems.push(format!(
                    "spec.rules[{i}].http.paths[{j}].backend.{e}; the path is not served"
                )),
            }
        }
        rules.push(Rule {
            host: rule.host.filter(|h| !h.is_empty()),
            paths,
        });
    }
    let tls = spec
        .tls
        .unwrap_or_default()
        .into_iter()
        .map(|t| TlsEntry {
            hosts: t.hosts.unwrap_or_default(),
            secret_name: t.secret_name.filter(|s| !s.is_empty()),
        })
        .collect();
    Ok(Ingress {
        key,
        created,
        class_name: spec.ingress_class_name.filter(|c| !c.is_empty()),
        class_annotation: annotation(&ing.metadata, CLASS_ANNOTATION).map(str::to_string),
        default_backend,
        rules,
        tls,
        annotations,
        nginx: ing
            .metadata
            .annotations
            .as_ref()
            .and_then(nginx::parse)
            .map(Arc::new),
        problems,
    })
}

/// The message for an annotation whose value cannot be used.
fn annotation_problem(name: &str, e: &str) -> String {
    format!("metadata.annotations[{name}]: {e}; the annotation is ignored")
}

/// A backend's errors name its field relative to the backend (`service.port: ...`), so that the
/// caller can put the backend's own path in front.
fn backend_from_k8s(b: &IngressBackend) -> Result<BackendRef, String> {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => Err("service and .resource are both set; keep one".into()),
        (None, Some(r)) => Ok(BackendRef::Resource {
            kind: r.kind.clone(),
            name: r.name.clone(),
        }),
        (None, None) => Err("service is missing; a backend needs a service (name and port)".into()),
        (Some(svc), None) => {
            if svc.name.is_empty() {
                return Err("service.name is empty".into());
            }
            let port = svc
                .port
                .as_ref()
                .ok_or("service.port is missing; give its number or name")?;
            let port = match (port.number, port.name.as_deref()) {
                (Some(_), Some(n)) if !n.is_empty() => {
                    return Err("service.port has both number and name; keep one".into())
                }
                (Some(n), _) => PortRef::Number(
                    u16::try_from(n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("service.port.number {n} is out of range"))?,
                ),
                (None, Some(n)) if !n.is_empty() => PortRef::Name(n.to_string()),
                _ => return Err("service.port has neither number nor name; give one".into()),
            };
            Ok(BackendRef::Service {
                name: svc.name.clone(),
                port,
            })
        }
    }
}

/// Translates an IngressClass (cluster-scoped).
pub fn class_from_k8s(c: &K8sClass) -> Result<IngressClass, String> {
    let name = c.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    let is_default = match annotation(&c.metadata, DEFAULT_CLASS_ANNOTATION) {
        Some(v) => parse_bool_annotation(v)
            .map_err(|e| format!("annotation {DEFAULT_CLASS_ANNOTATION}: {e}"))?,
        None => false,
    };
    Ok(IngressClass {
        name,
        controller: c
            .spec
            .as_ref()
            .and_then(|s| s.controller.clone())
            .unwrap_or_default(),
        is_default,
    })
}

/// Translates a Service: its ports and whether it is an ExternalName Service.
pub fn service_from_k8s(s: &K8sService) -> Result<Service, String> {
    let key = key_of(&s.metadata)?;
    let spec = s.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for p in spec.ports.unwrap_or_default() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {} is out of range", p.port))?;
        ports.push(ServicePort {
            name: p.name.unwrap_or_default(),
            port,
        });
    }
    Ok(Service {
        key,
        ports,
        external_name: spec.type_.as_deref() == Some("ExternalName"),
    })
}

/// Translates an EndpointSlice. Addresses that are not IPs (FQDN slices) are dropped with an error,
/// since Portico does not resolve names on the request path.
pub fn slice_from_k8s(s: &K8sSlice) -> Result<EndpointSlice, String> {
    let key = key_of(&s.metadata)?;
    if s.address_type == "FQDN" {
        return Err("addressType FQDN is not supported".into());
    }
    let service_name = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned();
    let mut ports = Vec::new();
    for p in s.ports.clone().unwrap_or_default() {
        let port = match p.port {
            None => None,
            Some(n) => Some(
                u16::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("port {n} is out of range"))?,
            ),
        };
        ports.push(SlicePort {
            name: p.name.unwrap_or_default(),
            port,
        });
    }
    let mut endpoints = Vec::new();
    for e in &s.endpoints {
        let mut addresses = Vec::new();
        for a in &e.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| format!("endpoint address {a:?} is not an IP address"))?;
            addresses.push(ip);
        }
        let c = e.conditions.clone().unwrap_or_default();
        endpoints.push(Endpoint {
            addresses,
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
            pod: e
                .target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .or_else(|| e.hostname.clone()),
        });
    }
    Ok(EndpointSlice {
        key,
        service_name,
        ports,
        endpoints,
    })
}

/// Translates a Secret. `kubernetes.io/tls` Secrets are kept (their certificate, key and CA), and
/// `Opaque` ones whole (ingress-nginx's `proxy-ssl-secret` and `auth-secret`); `Ok(None)` for the
/// other types. `stringData` wins over `data`, as the API server merges them.
pub fn secret_from_k8s(s: &Secret) -> Result<Option<TlsSecret>, String> {
    let tls = match s.type_.as_deref() {
        Some(TLS_SECRET_TYPE) => true,
        Some(OPAQUE_SECRET_TYPE) | None => false,
        Some(_) => return Ok(None),
    };
    let field = |name: &str| -> Option<Vec<u8>> {
        s.string_data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|b| b.0.clone())
            })
    };
    let ca_pem = field("ca.crt");
    let key = key_of(&s.metadata)?;
    let missing = |name: &str| {
        format!(
            "data[{name}] is missing; a kubernetes.io/tls Secret holds the PEM certificate chain \
             in tls.crt and its private key in tls.key"
        )
    };
    let (cert_pem, key_pem) = if tls {
        (
            field("tls.crt").ok_or_else(|| missing("tls.crt"))?,
            field("tls.key").ok_or_else(|| missing("tls.key"))?,
        )
    } else {
        (
            field("tls.crt").unwrap_or_default(),
            field("tls.key").unwrap_or_default(),
        )
    };
    let mut data = BTreeMap::new();
    if !tls {
        for (k, v) in s.data.iter().flatten() {
            data.insert(k.clone(), v.0.clone());
        }
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.as_bytes().to_vec());
        }
    }
    Ok(Some(TlsSecret {
        key,
        tls,
        cert_pem,
        key_pem,
        ca_pem,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendProtocol, Hsts};

    #[test]
    fn tls_annotations_are_typed_and_bad_values_reported() {
        let docs = parse_documents(include_str!("../../tests/fixtures/tls/annotations.yaml"));
        let ingresses: Vec<&Ingress> = docs
            .iter()
            .filter_map(|d| match d {
                Document::Object(Object::Ingress(i)) => Some(i.as_ref()),
                _ => None,
            })
            .collect();
        let good = ingresses[0];
        assert_eq!(good.annotations.ssl_redirect, Some(false));
        assert_eq!(
            good.annotations.hsts,
            Some(Hsts {
                max_age: 31536000,
                include_subdomains: true,
                preload: true
            })
        );
        assert_eq!(
            good.annotations.backend_protocol,
            Some(BackendProtocol::Grpc)
        );
        assert!(good.problems.is_empty(), "{:?}", good.problems);

        let bad = ingresses[1];
        assert_eq!(bad.annotations, IngressAnnotations::default());
        assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
        assert!(bad.problems[0].contains(HSTS_ANNOTATION));
        assert!(bad.problems[1].contains(BACKEND_PROTOCOL_ANNOTATION));

        // The TLS Secret is read (not parsed as PEM yet: that is the compile step's job); the
        // Opaque one is kept whole, never as a certificate.
        let secrets: Vec<&TlsSecret> = docs
            .iter()
            .filter_map(|d| match d {
                Document::Object(Object::Secret(s)) => Some(s.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(secrets.len(), 2);
        assert!(secrets[0].tls);
        assert_eq!(secrets[0].cert_pem, b"cert");
        assert_eq!(secrets[0].key_pem, b"key");
        assert!(!secrets[1].tls);
        assert_eq!(
            secrets[1].data.get("password").map(Vec::as_slice),
            Some(&b"pass"[..])
        );
    }
}
