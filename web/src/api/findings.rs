//! `GET /api/v1/findings[/{id}]` and `POST /api/v1/analyze` (a backtest).

use std::sync::Arc;

use andon_analysis::{FindingFilter, Windows};
use andon_model::{FindingKind, FindingState};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{ApiError, AppState, bad_request, blocking, opt_time, parse_time, tenant_of};
use crate::pipeline::Incidents;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/findings", get(list_findings))
        .route("/api/v1/findings/{id}", get(get_finding))
        .route("/api/v1/analyze", post(analyze))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingsParams {
    kind: Option<String>,
    service: Option<String>,
    since: Option<String>,
    until: Option<String>,
    state: Option<String>,
}

async fn list_findings(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<FindingsParams>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let filter = FindingFilter {
        kind: p
            .kind
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(str::parse::<FindingKind>)
            .transpose()
            .map_err(bad_request)?,
        service: p.service.filter(|s| !s.is_empty()),
        since: opt_time("since", p.since.as_deref())?,
        until: opt_time("until", p.until.as_deref())?,
        state: match p.state.as_deref() {
            None | Some("") => None,
            Some("open") => Some(FindingState::Open),
            Some("resolved") => Some(FindingState::Resolved),
            Some(other) => return Err(bad_request(format!("state must be open or resolved, not {other:?}"))),
        },
    };
    let db = Arc::clone(&app.findings);
    let findings = blocking(move || db.list(&tenant, &filter)).await?;
    Ok(Json(json!({ "findings": findings })).into_response())
}

async fn get_finding(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let db = Arc::clone(&app.findings);
    let found = blocking(move || db.get(&tenant, &id)).await?;
    match found {
        Some(f) => Ok(Json(f).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such finding".into())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyzeRequest {
    from: String,
    to: String,
    /// An explicit baseline for one comparison; without one, the range is replayed.
    baseline_from: Option<String>,
    baseline_to: Option<String>,
}

/// A backtest: without a baseline, replays the passes continuous detection
/// would have run over the range; with one, compares the range with it once.
/// Either way the findings are recorded, drafted and escalated as live ones.
async fn analyze(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let req: AnalyzeRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("body must be {{\"from\": t, \"to\": t}}: {e}")))?;
    let (from, to) = (parse_time("from", &req.from)?, parse_time("to", &req.to)?);
    if to <= from {
        return Err(bad_request("to must be after from"));
    }
    let most = app.max_analyze_range;
    if to - from > most
        || req.baseline_from.as_deref().and_then(|b| parse_time("baseline_from", b).ok()).is_some_and(|b| to - b > most)
    {
        return Err(bad_request(format!("an analysis covers at most {} hours, baseline included", most.num_hours())));
    }
    if let Some(r) = app.limits.refusal(tenant.as_str(), crate::limits::Work::Analyses) {
        return Ok(r);
    }
    let baseline = match (req.baseline_from.as_deref(), req.baseline_to.as_deref()) {
        (None, None) => None,
        (Some(bf), Some(bt)) => {
            let (bf, bt) = (parse_time("baseline_from", bf)?, parse_time("baseline_to", bt)?);
            if bt > from || bf >= bt {
                return Err(bad_request("the baseline must be a non-empty range ending at or before from"));
            }
            Some((bf, bt))
        }
        _ => return Err(bad_request("give both baseline_from and baseline_to, or neither")),
    };
    let Some((baseline_start, baseline_end)) = baseline else {
        // No baseline: what continuous detection would have reported over the
        // range, and when.
        let replay = app.replay(&tenant, from, to, None, Incidents::Background).await?;
        return Ok(Json(json!({
            "findings": replay.findings,
            "passes": replay.passes,
            "tests": replay.tests,
            "flows": replay.flows,
            "elapsed_ms": replay.elapsed.as_secs_f64() * 1e3,
        }))
        .into_response());
    };
    // One explicit comparison of the range against the baseline.
    let windows = Windows { baseline_start, baseline_end, split: from, end: to };
    let (report, _) = app.backtest(&tenant, windows, Incidents::Background).await?;
    Ok(Json(json!({
        "findings": report.findings,
        "passes": 1,
        "tests": report.tests,
        "flows": report.flows,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
    }))
    .into_response())
}
