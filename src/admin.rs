//! The admin listener: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::dataplane::Shared;

/// Answers health, readiness and metrics requests.
pub struct Admin {
    pub shared: Arc<Shared>,
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
            "/readyz" if self.shared.is_ready() => text(200, plain, b"ready\n".to_vec()),
            "/readyz" => text(503, plain, b"not ready\n".to_vec()),
            "/metrics" => text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.metrics.render(),
            ),
            _ => text(404, plain, b"not found\n".to_vec()),
        }
    }
}
