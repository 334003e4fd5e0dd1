//! What every handler of the API port shares: the server's state, the JSON
//! error answer, and the helpers for tenants, times and blocking work. Nothing
//! here knows a route.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use andon_analysis::engine::PassReport;
use andon_analysis::runner::RunnerStats;
use andon_analysis::{AnalysisError, Analyzer, FindingsDb, Windows};
use andon_ingest::Ingestor;
use andon_model::{TENANT_HEADER, Tenant};
use andon_store::{QueryEngine, Store, StoreError};
use andon_ticketing::{TicketError, Ticketing};
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::pipeline::{Incidents, Pipeline};

#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub query: QueryEngine,
    pub ingestor: Arc<Ingestor>,
    pub analyzer: Analyzer,
    pub findings: Arc<FindingsDb>,
    pub tickets: Arc<Ticketing>,
    pub changes: Arc<andon_rca::ChangesDb>,
    pub incidents: Arc<andon_rca::IncidentsDb>,
    pub investigations: Arc<andon_rca::InvestigationsDb>,
    /// The flight recorder: every RCA and investigation, step by step.
    pub runs: Arc<andon_analysis::recorder::RunsDb>,
    /// The model behind `[llm]`, when one is configured; investigations need it.
    pub llm: Option<Arc<andon_rca::llm::Llm>>,
    pub agent_limits: andon_rca::llm::agent::AgentLimits,
    /// Records findings, drafts tickets and opens incidents: what follows every
    /// detection pass, and the incidents opened by hand.
    pub pipeline: Arc<Pipeline>,
    /// Fills in changes from GitHub, when `rca.github_enrich` is on.
    pub enricher: Option<Arc<andon_rca::github::GitHubEnricher>>,
    pub runner: Arc<RunnerStats>,
    /// The ingest counters over the last hour, for the UI's overview.
    pub ingest_history: Arc<crate::ingest_history::IngestHistory>,
    pub ready: AtomicBool,
    pub started: Instant,
    /// Who may call, shared with the OTLP ports (off with no token configured).
    pub auth: Arc<andon_model::auth::Verifier>,
    /// The UI's logged-in browsers.
    pub sessions: crate::auth::Sessions,
    /// Session cookies say `Secure` (the port serves TLS).
    pub secure_cookies: bool,
    /// Host names this port answers to besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Incidents and analyses each tenant may start per minute.
    pub limits: crate::limits::RateLimits,
    /// The longest range an analysis may cover, its baseline included.
    pub max_analyze_range: chrono::Duration,
}

impl AppState {
    /// `inc` with personal data and secrets masked by the ticket redactor, as
    /// every way an incident leaves the server shows it (JSON, report.md,
    /// report.html, the UI): span attributes quoted in evidence, a reviewer's
    /// or a pipeline's text.
    pub fn redacted(&self, inc: andon_model::Incident) -> andon_model::Incident {
        redact_incident(self.tickets.drafter().redactor(), inc)
    }
}

/// `inc` with personal data and secrets masked by `redactor`, value by value
/// (before any rendering: Markdown's escapes would hide an address from it).
pub fn redact_incident(
    redactor: &andon_ticketing::redact::Redactor,
    inc: andon_model::Incident,
) -> andon_model::Incident {
    match serde_json::to_value(&inc).map(|v| serde_json::from_value(redactor.json(&v))) {
        Ok(Ok(masked)) => masked,
        // Masking only rewrites strings; should the result not read back,
        // nothing unmasked goes out either.
        _ => {
            let mut bare = inc;
            bare.title = redactor.text(&bare.title).into_owned();
            bare.narrative.clear();
            bare.why_missed.clear();
            bare.remediation.clear();
            bare.suspects.clear();
            bare.steps.clear();
            bare.gate_analysis.clear();
            bare
        }
    }
}

/// A JSON error: `{"error": "..."}` with a lowercase message.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Query(_) | StoreError::Refused(_) | StoreError::TooBig { .. } => StatusCode::BAD_REQUEST,
            StoreError::Timeout(_) | StoreError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = e.to_string();
        // DataFusion capitalises some messages; ours are lowercase.
        let mut chars = msg.chars();
        let msg = chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
        ApiError(status, msg)
    }
}

impl From<AnalysisError> for ApiError {
    fn from(e: AnalysisError) -> Self {
        let status = match &e {
            AnalysisError::Config(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        let status = match &e {
            TicketError::Config(_) | TicketError::Invalid(_) => StatusCode::BAD_REQUEST,
            TicketError::NotFound(_) => StatusCode::NOT_FOUND,
            TicketError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<andon_rca::RcaError> for ApiError {
    fn from(e: andon_rca::RcaError) -> Self {
        let status = match &e {
            andon_rca::RcaError::Invalid(_) => StatusCode::BAD_REQUEST,
            andon_rca::RcaError::Db(_) | andon_rca::RcaError::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs SQLite work off the async threads, mapping its error to an answer.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(internal)?.map_err(Into::into)
}

pub fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The tenant a request names in its tenant header (the default when absent).
pub fn tenant_of(headers: &HeaderMap) -> Result<Tenant, ApiError> {
    Tenant::from_header(headers.get(TENANT_HEADER).and_then(|v| v.to_str().ok()))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid {TENANT_HEADER}: {e}")))
}

/// An optional time parameter: absent or empty means none.
pub fn opt_time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.filter(|s| !s.is_empty()).map(|s| parse_time(field, s)).transpose()
}

/// A required RFC 3339 time parameter.
pub fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_request(format!("{field} must be an rfc 3339 timestamp: {e}")))
}

impl AppState {
    /// Runs every detector over `windows` once and hands the findings to the
    /// after-pass pipeline. The report's findings are the recorded ones (with
    /// their stored ids and states).
    pub async fn backtest(
        &self,
        tenant: &Tenant,
        windows: Windows,
        incidents: Incidents,
    ) -> Result<(PassReport, Vec<andon_model::Incident>), ApiError> {
        let mut report = self.analyzer.pass(tenant, windows).await?;
        let found = std::mem::take(&mut report.findings);
        let after = self.pipeline.after_pass(tenant, found, None, incidents).await?;
        report.findings = after.findings;
        Ok((report, after.incidents))
    }

    /// Replays the passes continuous detection would have run over `[from, to)`
    /// ([`Analyzer::replay`]), each handed to the after-pass pipeline as a live
    /// pass is, with findings not seen for `resolve_after_secs` resolved as
    /// they would have been. Returns each finding once, as stored after the
    /// last pass, with the time a pass first reported it (`first_seen`).
    /// `max_passes` may space the passes out further than the configured
    /// `replay_max_passes`; `incidents` says whether each pass waits for the
    /// incidents its findings open (they are returned when it does).
    pub async fn replay(
        &self,
        tenant: &Tenant,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_passes: Option<usize>,
        incidents: Incidents,
    ) -> Result<Replay, ApiError> {
        let started = Instant::now();
        let resolve_after = chrono::Duration::seconds(self.analyzer.config().resolve_after_secs as i64);
        let passes = self.analyzer.replay(from, to, max_passes);
        let mut out = Replay { passes: passes.len(), ..Replay::default() };
        let mut seen: Vec<String> = Vec::new();
        for w in passes {
            let report = self.analyzer.continuous(tenant, w, None).await?;
            out.tests += report.tests;
            for flow in report.flows {
                if !out.flows.contains(&flow) {
                    out.flows.push(flow);
                }
            }
            let after =
                self.pipeline.after_pass(tenant, report.findings, Some(w.end - resolve_after), incidents).await?;
            out.incidents.extend(after.incidents);
            for f in after.findings {
                if !seen.contains(&f.id) {
                    seen.push(f.id);
                }
            }
        }
        let (db, t) = (Arc::clone(&self.findings), tenant.clone());
        let mut findings = blocking(move || {
            seen.iter().filter_map(|id| db.get(&t, id).transpose()).collect::<Result<Vec<_>, AnalysisError>>()
        })
        .await?;
        findings.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(b.impact.total_cmp(&a.impact)));
        out.findings = findings;
        out.elapsed = started.elapsed();
        Ok(out)
    }
}

/// What a replayed backtest found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Each finding once, in the order passes first reported them.
    pub findings: Vec<andon_model::Finding>,
    pub passes: usize,
    /// Incidents the findings opened, when the passes waited for them.
    pub incidents: Vec<andon_model::Incident>,
    /// Statistical tests made over every pass.
    pub tests: usize,
    pub flows: Vec<String>,
    pub elapsed: std::time::Duration,
}
