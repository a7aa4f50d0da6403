//! The reference and status types that several Gateway API kinds share, with the defaults the
//! CRDs' OpenAPI schemas declare applied by serde (the API server fills them in on a cluster;
//! `--manifests` files and the tests' stand-in do not).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

/// The API group of every kind in this module.
pub const GROUP: &str = "gateway.networking.k8s.io";

pub(crate) fn default_group() -> String {
    GROUP.to_string()
}

pub(crate) fn default_gateway_kind() -> String {
    "Gateway".to_string()
}

pub(crate) fn default_service_kind() -> String {
    "Service".to_string()
}

pub(crate) fn default_secret_kind() -> String {
    "Secret".to_string()
}

/// A route's reference to its parent (a Gateway, or a Gateway's listener by `sectionName` and
/// `port`). `namespace` unset means the route's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_gateway_kind")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A reference to a backend (a Service, by default, in the route's namespace unless
/// `namespace` says otherwise; another namespace needs a ReferenceGrant).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    /// `""` is the core group.
    #[serde(default)]
    pub group: String,
    #[serde(default = "default_service_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Required when the referent is a Service (a CEL rule on the CRD; checked again by the
    /// translator, since files and the stand-in do not validate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A reference to a certificate Secret from a Gateway's listener.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    #[serde(default)]
    pub group: String,
    #[serde(default = "default_secret_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A reference to a parameters object, local to the class's or Gateway's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalParametersReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// The status a route gets from one controller for one of its parents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef as the route wrote it, with `group` and `kind` filled in (the
    /// conformance suite compares them explicitly).
    pub parent_ref: ParentReference,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// `status` of any route kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}
