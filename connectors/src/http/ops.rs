//! `/metrics`, request metrics and the fallback 404 shared by every service.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lifecycle_pipeline::metrics::HttpMetrics;
use prometheus::{Encoder, Registry, TextEncoder};

/// Prometheus text exposition of `registry`.
pub async fn metrics_handler(State(registry): State<Registry>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Middleware counting requests by route template (bounded labels) and status.
pub async fn track(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    metrics.requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}

/// Binds `addr` and serves `app` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
