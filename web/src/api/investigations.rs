//! The investigation agent over the API: `POST /api/v1/investigations`
//! starts one (201, `running`), `GET /api/v1/investigations/{id}` reads it,
//! `GET /api/v1/investigations` lists the tenant's.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking, tenant_of};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/investigations", get(list).post(create)).route("/api/v1/investigations/{id}", get(one))
}

/// The longest question taken.
const MAX_QUESTION: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    question: String,
}

async fn create(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let ask: Ask = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("body must be {{\"question\": \"...\"}}: {e}")))?;
    let question = ask.question.trim().to_owned();
    if question.is_empty() {
        return Err(bad_request("question is empty"));
    }
    if question.len() > MAX_QUESTION {
        return Err(bad_request(format!("a question is at most {MAX_QUESTION} bytes")));
    }
    if let Some(r) = app.limits.refusal(tenant.as_str(), crate::limits::Work::Investigations) {
        return Ok(r);
    }
    let inv = crate::investigate::start(&app, tenant, question).await?;
    Ok((StatusCode::CREATED, Json(inv)).into_response())
}

async fn one(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let db = Arc::clone(&app.investigations);
    let shown = id.clone();
    let inv = blocking(move || db.get(&tenant, &id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no investigation {shown}")))?;
    Ok(Json(inv).into_response())
}

async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let db = Arc::clone(&app.investigations);
    let list = blocking(move || db.list(&tenant, 200)).await?;
    Ok(Json(json!({ "investigations": list })).into_response())
}
