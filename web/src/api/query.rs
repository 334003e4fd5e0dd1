//! `POST /api/v1/query`: read-only SQL over the tenant's tables.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, tenant_of};
use crate::rows::to_json;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/query", post(query))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

async fn query(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let req: QueryRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body must be {{\"sql\": \"...\"}}: {e}")))?;
    if req.sql.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "sql is empty".into()));
    }
    let out = app.query.run(Some(tenant), &req.sql).await?;
    let (columns, rows) = to_json(&out.schema, &out.batches);
    Ok(Json(json!({
        "columns": columns,
        "rows": rows,
        "truncated": out.truncated,
        "elapsed_ms": out.elapsed.as_secs_f64() * 1e3,
    }))
    .into_response())
}
