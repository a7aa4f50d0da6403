//! Portico's HTTP/1 engine: HTTP/1.0 and HTTP/1.1 from clients, to HTTP/1.1 backends.
//!
//! - [`parse`]: request and response heads (httparse, then the RFC 9112 framing checks);
//! - [`body`]: the chunked decoder and encoder;
//! - [`encode`]: heads and body framing as the engine writes them;
//! - [`conn`]: the connection loop: keep-alive, pipelining, the upstream exchange;
//! - [`pool`]: idle upstream connections, a stack per worker thread.
//!
//! It runs inside Pingora's `ServerApp` (listeners, TLS, lifecycle) and takes upstream
//! connections from Pingora's `TransportConnector` (idle ones wait in a per-thread stack). What
//! it does not take (CONNECT, routes to HTTPS/h2c/gRPC backends) it hands to Pingora's HTTP
//! proxy, replaying the bytes it read, before anything is sent upstream. Upgrades (WebSocket)
//! it tunnels itself after the backend's 101.

pub mod body;
pub mod conn;
pub mod encode;
pub mod parse;
pub mod pool;

pub use conn::Engine;
