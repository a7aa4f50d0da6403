//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and `/status/gateway-api` (the
//! Gateway API status of the current snapshot, JSON).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::dataplane::Shared;

/// Answers health, readiness and metrics requests.
pub struct Admin {
    pub shared: Arc<Shared>,
    /// The plain-HTTP proxy listener. It opens only after the first snapshot is published, a
    /// moment after the snapshot makes Portico ready; `/readyz` says ready only once it accepts,
    /// so that no load balancer sends a connection to a port that refuses it.
    pub proxy_listener: SocketAddr,
    /// It accepted once (listeners stay open until shutdown, which readiness already covers).
    pub listening: AtomicBool,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, proxy_listener: SocketAddr) -> Self {
        Self {
            shared,
            proxy_listener,
            listening: AtomicBool::new(false),
        }
    }

    /// Whether the proxy listener accepts connections, found by connecting to it once.
    async fn proxy_listening(&self) -> bool {
        if self.listening.load(Ordering::Relaxed) {
            return true;
        }
        let mut addr = self.proxy_listener;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let connect = tokio::net::TcpStream::connect(addr);
        let ok = matches!(
            tokio::time::timeout(Duration::from_millis(200), connect).await,
            Ok(Ok(_))
        );
        if ok {
            self.listening.store(true, Ordering::Relaxed);
        }
        ok
    }
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let plain = "text/plain; charset=utf-8";
        match session.req_header().uri.path() {
            "/healthz" => text(200, plain, b"ok\n".to_vec()),
            "/readyz" if self.shared.is_ready() && self.proxy_listening().await => {
                text(200, plain, b"ready\n".to_vec())
            }
            "/readyz" => text(503, plain, b"not ready\n".to_vec()),
            "/metrics" => text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.metrics.render(),
            ),
            "/status/gateway-api" => match &self.shared.current().gateway_status {
                Some(status) => text(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&**status).unwrap_or_default(),
                ),
                None => text(
                    404,
                    plain,
                    b"Gateway API is off (--gateway-listen)\n".to_vec(),
                ),
            },
            _ => text(404, plain, b"not found\n".to_vec()),
        }
    }
}
