//! `POST /api/v1/webhooks/github`: GitHub's `issues` webhook. A closed issue
//! resolves its ticket and findings at once, without waiting for the next poll.

use std::sync::Arc;

use andon_ticketing::config::SinkKind;
use andon_ticketing::sink::{IssueEvent, WebhookError, issue_event};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/webhooks/github", post(github_webhook))
}

/// Deliveries must carry a valid `X-Hub-Signature-256` under the secret in
/// `tickets.github_webhook_secret_env`; without that secret the hook is off.
async fn github_webhook(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let settings = app.tickets.drafter().settings();
    let Some(secret) = std::env::var(&settings.github_webhook_secret_env).ok().filter(|s| !s.is_empty()) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "github webhooks are not configured".into()));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let repo = match &settings.sink {
        SinkKind::GitHub { owner, repo, .. } => Some((owner.as_str(), repo.as_str())),
        _ => None,
    };
    let event = issue_event(secret.as_bytes(), header("x-hub-signature-256"), header("x-github-event"), &body, repo)
        .map_err(|e| match e {
            WebhookError::Unsigned => ApiError(StatusCode::UNAUTHORIZED, e.to_string()),
            WebhookError::Malformed(m) => bad_request(m),
        })?;
    let (number, open, at, actor) = match event {
        IssueEvent::Ping => return Ok(Json(json!({ "ok": true })).into_response()),
        IssueEvent::Ignored(what) => return Ok(Json(json!({ "ignored": what })).into_response()),
        IssueEvent::Changed { number, open, at, actor } => (number, open, at, actor),
    };
    let (tickets, findings) = (Arc::clone(&app.tickets), Arc::clone(&app.findings));
    let resolved = blocking(move || -> Result<usize, ApiError> {
        let Some((tenant, t)) = tickets.by_issue("github", number)? else { return Ok(0) };
        let mut n = 0;
        for (tenant, ids) in tickets.issue_changed(&tenant, &t, open, at, &actor)? {
            n += findings.resolve_ids(&tenant, &ids)?;
        }
        Ok(n)
    })
    .await?;
    Ok(Json(json!({ "resolved_findings": resolved })).into_response())
}
