//! Incidents over the API: `POST/GET /api/v1/incidents`, one incident, and
//! its report as Markdown or HTML.

use std::sync::Arc;

use andon_model::{Incident, IncidentState};
use andon_rca::{Hints, OpenIncident, report};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking, tenant_of};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/incidents", get(list_incidents).post(open_incident))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .route("/api/v1/incidents/{id}/report.md", get(report_md))
        .route("/api/v1/incidents/{id}/report.html", get(report_html))
}

async fn open_incident(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let req: OpenIncident = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "body must be {{\"start\", \"end\", \"baseline_start\"?, \"baseline_end\"?, \"service\"?, \"title\"?}}: {e}"
        ))
    })?;
    req.windows()?;
    if let Some(r) = app.limits.refusal(tenant.as_str(), crate::limits::Work::Incidents) {
        return Ok(r);
    }
    let opened_by =
        headers.get("x-andon-client").and_then(|v| v.to_str().ok()).filter(|v| *v == "cli").unwrap_or("api").to_owned();
    let inc = app.pipeline.open_incident(&tenant, &req, Hints { opened_by, ..Hints::default() }).await?;
    Ok((StatusCode::CREATED, Json(inc)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    state: Option<String>,
}

async fn list_incidents(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let state = match p.state.as_deref() {
        None | Some("") => None,
        Some("open") => Some(IncidentState::Open),
        Some("resolved") => Some(IncidentState::Resolved),
        Some(other) => return Err(bad_request(format!("unknown state {other:?}; expected open or resolved"))),
    };
    let db = Arc::clone(&app.incidents);
    let list = blocking(move || db.list(&tenant, state)).await?;
    Ok(Json(json!({ "incidents": list })).into_response())
}

async fn load(app: &AppState, headers: &HeaderMap, id: String) -> Result<Incident, ApiError> {
    let tenant = tenant_of(headers)?;
    let db = Arc::clone(&app.incidents);
    let shown = id.clone();
    let inc = blocking(move || db.get(&tenant, &id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no incident {shown}")))?;
    Ok(app.redacted(inc))
}

async fn get_incident(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(load(&app, &headers, id).await?).into_response())
}

async fn report_md(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let inc = load(&app, &headers, id).await?;
    Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], report::markdown(&inc)).into_response())
}

async fn report_html(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let inc = load(&app, &headers, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'"),
        ],
        report::html(&inc),
    )
        .into_response())
}
