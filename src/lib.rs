//! Portico: a Kubernetes Ingress controller and edge proxy on Pingora.
//!
//! The architecture, from the outside in:
//! - [`source`]: where objects come from (manifest files, Kubernetes watches);
//! - [`translate`]: `k8s-openapi` objects to the plain [`model`];
//! - [`routing`]: the pure compile step and the route table;
//! - [`dataplane`]: the one immutable snapshot behind one atomic swap;
//! - [`proxy`]: Pingora's `ProxyHttp`, which reads the snapshot per request;
//! - [`tls`]: certificates from Secrets, chosen by SNI from the snapshot in each handshake;
//! - [`admin`], [`metrics`], [`config`], [`server`]: operating it.

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod downstream;
pub mod echo;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod upstream;
