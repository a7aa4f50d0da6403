//! Test support: the Gateway API v1.6.1 conformance objects from `../shared/gateway-api/`
//! (they may not be copied into this repository), with the suite's placeholders filled in.
//!
//! The directory is `$PORTICO_GATEWAY_API_DIR`, else `../shared/gateway-api` beside the crate.
//! When it is absent the tests that need it return early with a notice, unless
//! `PORTICO_REQUIRE_GATEWAY_API=1`, which makes them fail (set it in CI where the data exists).

use std::path::PathBuf;

use serde::Deserialize;

/// The class name the tests substitute for `{GATEWAY_CLASS_NAME}`.
pub const CLASS: &str = "portico";
/// The controller name substituted for `{GATEWAY_CONTROLLER_NAME}`.
pub const CONTROLLER: &str = "portico.dev/gateway-controller";

/// The data directory, or `None` (with a notice) when it is absent and not required.
pub fn dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTICO_GATEWAY_API_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/gateway-api"));
    if dir.join("conformance").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("PORTICO_REQUIRE_GATEWAY_API").as_deref() != Ok("1"),
        "{} has no conformance/ directory",
        dir.display()
    );
    eprintln!(
        "skipped: no Gateway API data at {} (set PORTICO_GATEWAY_API_DIR)",
        dir.display()
    );
    None
}

/// The documents of one file under `conformance/` (`base-manifests.yaml`,
/// `tests/<name>.yaml`), placeholders replaced, empty documents dropped.
pub fn documents(relative: &str) -> Option<Vec<serde_json::Value>> {
    let path = dir()?.join("conformance").join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("{GATEWAY_CLASS_NAME}", CLASS)
        .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER);
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        if !v.is_null() {
            out.push(v);
        }
    }
    Some(out)
}

/// The names of the test files under `conformance/tests/`, sorted.
pub fn test_files() -> Option<Vec<String>> {
    let tests = dir()?.join("conformance/tests");
    let mut names: Vec<String> = std::fs::read_dir(&tests)
        .unwrap_or_else(|e| panic!("{}: {e}", tests.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    Some(names)
}
