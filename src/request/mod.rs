//! The request path: one policy, two HTTP engines.
//!
//! - [`policy`]: what to do with a request, whatever engine parsed it: route, answer, redirect,
//!   forwarding headers, endpoint choice, retries, metrics and the access log;
//! - [`access_log`]: the access log line, written by the policy for both engines;
//! - [`h1`]: Portico's own HTTP/1 engine (the default for HTTP/1.x);
//! - [`pingora`]: Pingora's `ProxyHttp` calling the same policy, for HTTP/2, the
//!   HTTPS/h2c/gRPC backends, and every request with `--http1-engine pingora`;
//! - [`edge`]: the listeners' application, which gives each connection to its engine;
//! - [`guard`]: request checks shared by both engines;
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer may put before a connection.

pub mod access_log;
pub mod edge;
pub mod guard;
pub mod h1;
pub mod pingora;
pub mod policy;
pub mod proxy_protocol;
