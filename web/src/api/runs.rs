//! The flight recorder over the API: `GET /api/v1/runs` (the tenant's runs,
//! newest first), `GET /api/v1/runs/{id}` (a run's steps), and
//! `POST /api/v1/runs/{id}/replay`, which re-executes the run's deterministic
//! steps from their recorded inputs and reports every step that differs.

use std::sync::Arc;

use andon_analysis::recorder::ReplayReport;
use andon_model::Tenant;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::app::{ApiError, AppState, blocking, tenant_of};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/runs", get(list))
        .route("/api/v1/runs/{id}", get(one))
        .route("/api/v1/runs/{id}/replay", post(replay))
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no run {id}"))
}

async fn one(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let db = Arc::clone(&app.runs);
    let shown = id.clone();
    let run = blocking(move || db.get(Some(&tenant), &id)).await?.ok_or_else(|| not_found(&shown))?;
    Ok(Json(run).into_response())
}

async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let db = Arc::clone(&app.runs);
    let runs = blocking(move || db.list(Some(&tenant), 200)).await?;
    let runs: Vec<_> = runs
        .into_iter()
        .map(|(_, r)| {
            json!({"id": r.id, "kind": r.kind, "subject": r.subject, "started_at": r.started_at,
                   "ended_at": r.ended_at, "steps": r.steps.len()})
        })
        .collect();
    Ok(Json(json!({ "runs": runs })).into_response())
}

/// Replays a run of `tenant`.
pub async fn replay_run(app: &Arc<AppState>, tenant: &Tenant, id: &str) -> Result<ReplayReport, ApiError> {
    let (db, t, i) = (Arc::clone(&app.runs), tenant.clone(), id.to_owned());
    let (run, steps) = blocking(move || db.recorded(Some(&t), &i)).await?.ok_or_else(|| not_found(id))?;
    Ok(match run.kind.as_str() {
        "rca" => app.pipeline.rca.replay(tenant, &run.id, &steps).await,
        "detection" => app.analyzer.replay_recorded(tenant, &run.id, &steps).await,
        "investigation" => {
            let tools = crate::investigate::ApiTools { app: Arc::clone(app), tenant: tenant.clone() };
            andon_rca::llm::agent::replay(&tools, &run.id, &steps).await
        }
        other => return Err(ApiError(StatusCode::CONFLICT, format!("runs of kind {other} cannot be replayed"))),
    })
}

async fn replay(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let report = replay_run(&app, &tenant, &id).await?;
    Ok(Json(report).into_response())
}
