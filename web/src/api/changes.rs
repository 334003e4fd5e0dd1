//! The change lineage: `POST/GET /api/v1/changes`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking, opt_time, tenant_of};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/changes", get(list_changes).post(add_change))
}

/// Records a deploy and its gate evidence; the same service, version and
/// environment again updates it (201 when new, 200 when updated).
async fn add_change(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let change: andon_model::ChangeEvent =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("body must be a ChangeEvent: {e}")))?;
    let db = Arc::clone(&app.changes);
    let t = tenant.clone();
    let (id, created) = blocking(move || db.add(&t, change)).await?;
    if let Some(e) = &app.enricher {
        Arc::clone(e).spawn_for(Arc::clone(&app.changes), tenant, vec![id.clone()]);
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "id": id, "created": created }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    service: Option<String>,
    since: Option<String>,
}

async fn list_changes(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<ChangesParams>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let filter = andon_rca::ChangeFilter {
        service: p.service.filter(|s| !s.is_empty()),
        since: opt_time("since", p.since.as_deref())?,
    };
    let db = Arc::clone(&app.changes);
    let rows = blocking(move || db.list(Some(&tenant), &filter)).await?;
    let changes: Vec<_> = rows.into_iter().map(|(_, c)| c).collect();
    Ok(Json(json!({ "changes": changes })).into_response())
}
