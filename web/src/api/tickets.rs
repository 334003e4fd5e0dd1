//! The human gate over the API: `GET /api/v1/tickets[/{id}]` and
//! `POST /api/v1/tickets/{id}/approve|reject`. The gate's rules (who may be
//! named the reviewer, what a decision carries) are enforced by the gate
//! itself, in `andon_ticketing`.

use std::sync::Arc;

use andon_model::{Priority, TicketState};
use andon_ticketing::TicketError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking, internal, tenant_of};
use crate::auth::Caller;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/tickets", get(list_tickets))
        .route("/api/v1/tickets/{id}", get(get_ticket))
        .route("/api/v1/tickets/{id}/approve", post(approve_ticket))
        .route("/api/v1/tickets/{id}/reject", post(reject_ticket))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketsParams {
    state: Option<String>,
}

async fn list_tickets(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<TicketsParams>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let state =
        p.state.as_deref().filter(|s| !s.is_empty()).map(str::parse::<TicketState>).transpose().map_err(bad_request)?;
    let tickets = Arc::clone(&app.tickets);
    let list = blocking(move || tickets.db().list(&tenant, state)).await?;
    Ok(Json(json!({ "tickets": list })).into_response())
}

async fn get_ticket(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let tickets = Arc::clone(&app.tickets);
    let out = blocking(move || -> Result<_, TicketError> {
        let Some(t) = tickets.db().get(&tenant, &id)? else { return Ok(None) };
        let audit = tickets.db().audit(&t.id)?;
        let deliveries = tickets.db().deliveries(&t.id)?;
        Ok(Some((t, audit, deliveries)))
    })
    .await?;
    let Some((t, audit, deliveries)) = out else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such ticket".into()));
    };
    let mut v = serde_json::to_value(&t).map_err(internal)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("audit".into(), serde_json::to_value(audit).map_err(internal)?);
        o.insert("deliveries".into(), serde_json::to_value(deliveries).map_err(internal)?);
    }
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    reviewer: String,
    note: Option<String>,
    reason: Option<String>,
    priority: Option<String>,
}

/// The decision in a body. With auth on, the reviewer is the token's name and
/// a body's `reviewer` is ignored.
fn decision(body: &[u8], caller: Option<&Caller>) -> Result<Decision, ApiError> {
    let mut d: Decision = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!("body must be {{\"reviewer\": \"...\", \"note\"|\"reason\": \"...\"}}: {e}"))
    })?;
    if let Some(name) = caller.and_then(Caller::name) {
        d.reviewer = name.to_owned();
    }
    Ok(d)
}

/// The human gate: approve a pending draft, which queues it for its sink.
async fn approve_ticket(
    State(app): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let d = decision(&body, caller.as_deref())?;
    if d.reason.is_some() {
        return Err(bad_request("an approval takes a note, not a reason"));
    }
    let priority = d.priority.as_deref().map(str::parse::<Priority>).transpose().map_err(bad_request)?;
    let tickets = Arc::clone(&app.tickets);
    let t = blocking(move || tickets.approve(&tenant, &id, &d.reviewer, d.note.as_deref(), priority)).await?;
    Ok(Json(t).into_response())
}

/// The human gate: reject a pending draft; its fingerprint stays quiet.
async fn reject_ticket(
    State(app): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let d = decision(&body, caller.as_deref())?;
    if d.priority.is_some() {
        return Err(bad_request("a rejection takes no priority"));
    }
    let reason = d.reason.or(d.note).unwrap_or_default();
    let tickets = Arc::clone(&app.tickets);
    let t = blocking(move || tickets.reject(&tenant, &id, &d.reviewer, &reason)).await?;
    Ok(Json(t).into_response())
}
