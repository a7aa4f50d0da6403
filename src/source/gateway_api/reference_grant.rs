//! `ReferenceGrant`: the owner of a namespace allows objects of some kinds in other namespaces
//! to refer to objects of its namespace. Served as `v1` and `v1beta1` (same schema) by the
//! v1.6.1 CRD; `v1beta1` is what clusters with Gateway API before v1.5 serve, so both are typed.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `spec` of a ReferenceGrant (`v1`).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "ReferenceGrant",
    namespaced,
    derive = "PartialEq",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// Who may refer: every field must match the referring object exactly.
    pub from: Vec<ReferenceGrantFrom>,
    /// What they may refer to, in the grant's own namespace.
    pub to: Vec<ReferenceGrantTo>,
}

/// A referring kind, by group, kind and namespace (all three required).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

/// A referent kind in the grant's namespace; `name` unset means every object of the kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The same resource at `v1beta1`.
pub mod v1beta1 {
    use super::{ReferenceGrantFrom, ReferenceGrantTo};
    use kube::CustomResource;
    use serde::{Deserialize, Serialize};

    /// `spec` of a ReferenceGrant (`v1beta1`); convert with `From` to use the `v1` type.
    #[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[kube(
        group = "gateway.networking.k8s.io",
        version = "v1beta1",
        kind = "ReferenceGrant",
        namespaced,
        derive = "PartialEq",
        schema = "disabled"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct ReferenceGrantSpec {
        pub from: Vec<ReferenceGrantFrom>,
        pub to: Vec<ReferenceGrantTo>,
    }

    impl From<ReferenceGrant> for super::ReferenceGrant {
        fn from(g: ReferenceGrant) -> Self {
            super::ReferenceGrant {
                metadata: g.metadata,
                spec: super::ReferenceGrantSpec {
                    from: g.spec.from,
                    to: g.spec.to,
                },
            }
        }
    }
}
