//! Gateway API on the API stand-in (test support): the CRDs' resources registered as custom
//! resources, and the conformance suite's YAML (from `../shared/gateway-api/`, never copied
//! into this repository) with its placeholders filled in.

use std::path::PathBuf;

use super::apiserver::{ApiServer, ResourceDef};

pub const GROUP: &str = "gateway.networking.k8s.io";
/// The class and controller names the driver substitutes for the suite's placeholders.
pub const CLASS: &str = "portico";
pub const CONTROLLER: &str = "portico.dev/gateway-controller";

/// Serves GatewayClass, Gateway and HTTPRoute (with `/status`) and ReferenceGrant (v1 and
/// v1beta1), and `apps/v1` Deployments, which the base manifests hold (the driver plays the
/// kubelet for them; nothing else reads them).
pub fn register(server: &ApiServer) {
    server.register_resource(
        ResourceDef::custom(GROUP, "v1", "gatewayclasses", "GatewayClass", false).with_status(),
    );
    server.register_resource(
        ResourceDef::custom(GROUP, "v1", "gateways", "Gateway", true).with_status(),
    );
    server.register_resource(
        ResourceDef::custom(GROUP, "v1", "httproutes", "HTTPRoute", true).with_status(),
    );
    server.register_resource(ResourceDef::custom(
        GROUP,
        "v1",
        "referencegrants",
        "ReferenceGrant",
        true,
    ));
    server.register_resource(ResourceDef::custom(
        GROUP,
        "v1beta1",
        "referencegrants",
        "ReferenceGrant",
        true,
    ));
    server.register_resource(ResourceDef::custom(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
    ));
}

/// `../shared/gateway-api/conformance/<relative>` with the placeholders replaced, or `None`
/// (and a notice) when the data is not on this machine.
pub fn conformance_yaml(relative: &str) -> Option<String> {
    let dir = std::env::var_os("PORTICO_GATEWAY_API_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/gateway-api"));
    let path = dir.join("conformance").join(relative);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.replace("{GATEWAY_CLASS_NAME}", CLASS)
                .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER),
        ),
        Err(e) => {
            assert!(
                std::env::var("PORTICO_REQUIRE_GATEWAY_API").as_deref() != Ok("1"),
                "{}: {e}",
                path.display()
            );
            eprintln!("skipped: no Gateway API data at {} ({e})", path.display());
            None
        }
    }
}
