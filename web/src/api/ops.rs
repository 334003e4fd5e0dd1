//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::metrics;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics_handler))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_handler(State(app): State<Arc<AppState>>) -> Response {
    let app2 = Arc::clone(&app);
    // Sizing the WAL directory touches the disk.
    let store = tokio::task::spawn_blocking(move || app2.store.snapshot_stats()).await.unwrap_or_default();
    let stats = app.store.stats();
    let text = metrics::render(&metrics::Readings {
        ingest: app.ingestor.stats().snapshot(),
        store,
        fsync: stats.fsync_latency.snapshot(),
        flush: stats.flush_latency.snapshot(),
        query: stats.query_latency.snapshot(),
        uptime_secs: app.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        detection: {
            use std::sync::atomic::Ordering::Relaxed;
            let r = &app.runner;
            [r.passes.load(Relaxed), r.failures.load(Relaxed), r.findings.load(Relaxed), r.last_pass_ms.load(Relaxed)]
        },
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
