//! Portico: a Kubernetes Ingress controller and edge proxy on Pingora.
//!
//! The architecture, from the outside in:
//! - [`source`]: where objects come from (manifest files, Kubernetes watches);
//! - [`translate`]: `k8s-openapi` objects to the plain [`model`];
//! - [`routing`]: the pure compile step and the route table;
//! - [`dataplane`]: the one immutable snapshot behind one atomic swap;
//! - [`request`]: the request path: one policy, Portico's HTTP/1 engine and Pingora's `ProxyHttp`;
//! - [`tls`]: certificates from Secrets, chosen by SNI from the snapshot in each handshake;
//! - [`admin`], [`metrics`], [`config`], [`server`]: operating it.

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod echo;
pub mod health;
pub mod metrics;
pub mod model;
pub mod request;
pub mod routing;
pub mod server;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod upstream;
