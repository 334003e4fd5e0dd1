//! Incidents in the server: `POST/GET /api/v1/incidents`, the reports, and
//! opening incidents from critical and high findings, one per shared cause.
//! Every analysed incident gets an RCA ticket draft at the human gate.

use std::collections::BTreeMap;
use std::sync::Arc;

use andon_model::{Finding, FindingKind, FindingState, Incident, IncidentState, Severity, Tenant, TimeWindow};
use andon_rca::localize::Channel;
use andon_rca::{Hints, OpenIncident, Rca, RcaError, report};
use andon_ticketing::Ticketing;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::api::{ApiError, AppState, bad_request, blocking, tenant_of};

#[derive(Debug)]
pub struct Incidents {
    pub rca: Rca,
    pub tickets: Arc<Ticketing>,
    /// One detection-driven opening at a time, so two passes reporting the same
    /// cause do not open two incidents.
    opening: tokio::sync::Mutex<()>,
}

/// An open incident whose cause has not been reported for this long is over:
/// the next finding with the same cause opens a new one.
const QUIET_HOURS: i64 = 6;

/// Findings that share this key share a cause: the change they are attributed
/// to, else where their trouble starts.
pub fn group_key(f: &Finding) -> String {
    match &f.change {
        Some(c) => format!("change\u{1f}{}\u{1f}{}", c.service, c.version),
        None => {
            let (s, o) = f.evidence.cause.as_ref().map_or((&f.service, &f.operation), |c| (&c.service, &c.operation));
            format!("cause\u{1f}{s}\u{1f}{o}")
        }
    }
}

impl Incidents {
    pub fn new(rca: Rca, tickets: Arc<Ticketing>) -> Self {
        Self { rca, tickets, opening: tokio::sync::Mutex::new(()) }
    }

    /// Opens an incident, runs its RCA and drafts its ticket.
    pub async fn open(&self, tenant: &Tenant, req: &OpenIncident, hints: Hints) -> Result<Incident, RcaError> {
        let inc = self.rca.open(tenant, req, hints).await?;
        let (tickets, t, i) = (Arc::clone(&self.tickets), tenant.clone(), inc.clone());
        let drafted = tokio::task::spawn_blocking(move || tickets.observe_incident(&t, &i, &report::markdown(&i)))
            .await
            .map_err(|e| RcaError::Db(e.to_string()))?;
        if let Err(e) = drafted {
            warn!(incident = %inc.id, error = %e, "drafting the rca ticket failed");
        }
        info!(incident = %inc.id, title = %inc.title, confidence = inc.confidence, "incident analysed");
        Ok(inc)
    }

    /// Opens an incident for each group of critical and high findings that share
    /// a cause, unless one is already open for it (then the findings join it).
    pub async fn open_for_findings(&self, tenant: &Tenant, findings: &[Finding]) -> Result<Vec<Incident>, RcaError> {
        let _one = self.opening.lock().await;
        let mut groups: BTreeMap<String, Vec<&Finding>> = BTreeMap::new();
        for f in findings {
            if f.state == FindingState::Open && matches!(f.severity, Severity::Critical | Severity::High) {
                groups.entry(group_key(f)).or_default().push(f);
            }
        }
        let mut opened = Vec::new();
        for (key, group) in groups {
            let ids: Vec<String> = group.iter().map(|f| f.id.clone()).collect();
            let now = chrono::Utc::now();
            if let Some(mut inc) = self.rca.incidents.open_for_key(tenant, &key)? {
                if now - inc.updated_at <= chrono::Duration::hours(QUIET_HOURS) {
                    // Still going: the findings join it, and it was seen now.
                    for id in ids {
                        if !inc.finding_ids.contains(&id) {
                            inc.finding_ids.push(id);
                        }
                    }
                    inc.updated_at = now;
                    self.rca.incidents.save(tenant, &inc, Some(&key))?;
                    continue;
                }
                // Quiet for hours, then back: the old incident is over, this is a new one.
                inc.state = IncidentState::Resolved;
                inc.updated_at = now;
                self.rca.incidents.save(tenant, &inc, Some(&key))?;
            }
            let first = group.iter().min_by_key(|f| f.window.start).copied();
            let Some(first) = first else { continue };
            let start = first.evidence.onset.unwrap_or(first.window.start).min(first.window.start);
            let end = group.iter().map(|f| f.window.end).max().unwrap_or(first.window.end);
            let baseline = first.baseline_window;
            let baseline = TimeWindow { start: baseline.start, end: baseline.end.min(start) };
            if baseline.end <= baseline.start || end <= start {
                continue;
            }
            // Retries and silent recoveries are made of failed calls: their RCA
            // follows the failures, not whatever else got slow.
            let channel = match first.kind {
                FindingKind::LatencyRegression => Some(Channel::Latency),
                FindingKind::ErrorRateRegression | FindingKind::Retry | FindingKind::SilentRecovery => {
                    Some(Channel::Errors)
                }
                // Sessions that leave after an error follow the failures; those
                // that leave without one leave the RCA to find what changed.
                FindingKind::DropOff => {
                    let after_error = first.evidence.details.get("left_after_error_share").and_then(|v| v.as_f64());
                    after_error.is_some_and(|s| s >= 0.5).then_some(Channel::Errors)
                }
            };
            let segment = (!first.segment.is_empty()).then(|| {
                first
                    .segment
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let origin = first
                .evidence
                .cause
                .as_ref()
                .map_or((&first.service, &first.operation), |c| (&c.service, &c.operation));
            let req = OpenIncident {
                start,
                end,
                baseline_start: Some(baseline.start),
                baseline_end: Some(baseline.end),
                // Detection already found where the trouble starts: the RCA reads
                // the traces that call that operation, and digs beneath it.
                service: Some(origin.0.clone()),
                title: None,
            };
            let hints = Hints {
                opened_by: "detection".to_owned(),
                finding_ids: ids,
                channel,
                segment,
                operation: Some(origin.1.clone()),
                segment_filter: first.segment.clone(),
                group_key: Some(key),
            };
            opened.push(self.open(tenant, &req, hints).await?);
        }
        Ok(opened)
    }
}

/// The detection hook: draft tickets for findings, and open incidents for the
/// serious ones in the background.
pub fn on_findings(tickets: Arc<Ticketing>, incidents: Arc<Incidents>) -> andon_analysis::runner::OnFindings {
    Arc::new(move |tenant: &Tenant, found: &[Finding]| {
        if let Err(e) = tickets.observe(tenant, found) {
            warn!(error = %e, "drafting tickets failed");
        }
        spawn_for_findings(&incidents, tenant, found);
    })
}

/// Opens incidents for `found` on the current runtime, without waiting.
pub fn spawn_for_findings(incidents: &Arc<Incidents>, tenant: &Tenant, found: &[Finding]) {
    if !found.iter().any(|f| matches!(f.severity, Severity::Critical | Severity::High)) {
        return;
    }
    let (incidents, tenant, found) = (Arc::clone(incidents), tenant.clone(), found.to_vec());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Err(e) = incidents.open_for_findings(&tenant, &found).await {
                warn!(error = %e, "opening incidents from findings failed");
            }
        });
    }
}

/// Fills in changes from GitHub in the background; a failure is logged and the
/// change stays as reported.
pub fn spawn_enrichment(
    enricher: Arc<andon_rca::github::GitHubEnricher>,
    changes: Arc<andon_rca::ChangesDb>,
    tenant: Tenant,
    ids: Vec<String>,
) {
    if ids.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for id in ids {
            let (db, t, i) = (Arc::clone(&changes), tenant.clone(), id.clone());
            let stored = match tokio::task::spawn_blocking(move || db.get(&t, &i)).await {
                Ok(Ok(Some(s))) => s,
                _ => continue,
            };
            let mut change = stored.change;
            match enricher.enrich(&mut change).await {
                Ok(true) => {
                    let (db, t) = (Arc::clone(&changes), tenant.clone());
                    let saved = tokio::task::spawn_blocking(move || db.enriched(&t, &id, &change)).await;
                    if let Ok(Err(e)) = saved {
                        warn!(error = %e, "storing an enriched change failed");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(change = %id, error = %e, "enriching a change from github failed"),
            }
        }
    });
}

pub async fn open_incident(
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
    let opened_by =
        headers.get("x-andon-client").and_then(|v| v.to_str().ok()).filter(|v| *v == "cli").unwrap_or("api").to_owned();
    let inc = app.incidents.open(&tenant, &req, Hints { opened_by, ..Hints::default() }).await?;
    Ok((StatusCode::CREATED, Json(inc)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    state: Option<String>,
}

pub async fn list_incidents(
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
    let db = Arc::clone(&app.incidents.rca.incidents);
    let list = blocking(move || db.list(&tenant, state)).await?;
    Ok(Json(json!({ "incidents": list })).into_response())
}

async fn load(app: &AppState, headers: &HeaderMap, id: String) -> Result<Incident, ApiError> {
    let tenant = tenant_of(headers)?;
    let db = Arc::clone(&app.incidents.rca.incidents);
    let shown = id.clone();
    blocking(move || db.get(&tenant, &id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no incident {shown}")))
}

pub async fn get_incident(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(load(&app, &headers, id).await?).into_response())
}

pub async fn report_md(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let inc = load(&app, &headers, id).await?;
    Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], report::markdown(&inc)).into_response())
}

pub async fn report_html(
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
