//! The Gateway API conformance driver, files mode: each core test's objects, with the suite's
//! base manifests, served by a real Portico from `--manifests`, and the same requests and
//! expectations as the upstream Go test (`conformance/tests/<name>.go` at v1.6.1).
//!
//! The driver plays the kubelet: each Deployment of the manifests gets echo pods on loopback
//! addresses this process owns, and each Service an EndpointSlice of its Deployment's pods (the
//! echo's port under every Service port name). Portico gives each Gateway an address from
//! `--gateway-address-pool 127.0.0.2-127.0.0.250` and serves spec port 80 on an ephemeral
//! socket; requests go to the Gateway's published address on that socket. Status is read from
//! the admin listener's `/status/gateway-api`, as the suite reads it from the API server.
//!
//! The data is read at run time from `../shared/gateway-api/` (never copied here); without it
//! the tests pass with a notice (`PORTICO_REQUIRE_GATEWAY_API=1` makes that a failure).
//!
//! This binary runs them in files mode; `gateway_conformance_cluster` runs the same driver against
//! the API stand-in.

mod common;
mod support;

const CLUSTER: bool = false;

include!("gateway/driver.rs");
