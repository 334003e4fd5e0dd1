//! The REST API on the API port: `/api/v1/query`, `/api/v1/findings`,
//! `/api/v1/analyze`, `/api/v1/tickets` (the human gate), `/api/v1/changes`,
//! `/api/v1/incidents` (with their RCA reports),
//! `/api/v1/webhooks/github`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use andon_analysis::runner::RunnerStats;
use andon_analysis::{AnalysisError, Analyzer, FindingFilter, FindingsDb, Windows};
use andon_ingest::Ingestor;
use andon_model::{FindingKind, FindingState, Priority, Tenant, TicketState};
use andon_store::{QueryEngine, Store, StoreError};
use andon_ticketing::{TicketError, Ticketing};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{incidents, metrics};

#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub query: QueryEngine,
    pub ingestor: Arc<Ingestor>,
    pub analyzer: Analyzer,
    pub findings: Arc<FindingsDb>,
    pub tickets: Arc<Ticketing>,
    pub changes: Arc<andon_rca::ChangesDb>,
    pub incidents: Arc<crate::incidents::Incidents>,
    /// Fills in changes from GitHub, when `rca.github_enrich` is on.
    pub enricher: Option<Arc<andon_rca::github::GitHubEnricher>>,
    pub runner: Arc<RunnerStats>,
    /// The ingest counters over the last hour, for the UI's overview.
    pub ingest_history: Arc<crate::ui::IngestHistory>,
    pub ready: AtomicBool,
    pub started: Instant,
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
            StoreError::Query(_) | StoreError::Refused(_) => StatusCode::BAD_REQUEST,
            StoreError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            TicketError::Config(_) => StatusCode::BAD_REQUEST,
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

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs SQLite work off the async threads, mapping its error to an answer.
pub(crate) async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(internal)?.map_err(Into::into)
}

pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn tenant_of(headers: &HeaderMap) -> Result<Tenant, ApiError> {
    Tenant::from_header(headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid x-scope-orgid: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

/// One cell as JSON: numbers as numbers, timestamps as RFC 3339 strings, lists,
/// structs and maps as JSON arrays and objects.
fn cell(array: &dyn Array, i: usize, fmt: &FormatOptions<'_>) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(i))
        };
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => serde_json::Number::from_f64(f64::from(array.as_primitive::<Float32Type>().value(i)))
            .map_or(Value::Null, Value::Number),
        DataType::Float64 => serde_json::Number::from_f64(array.as_primitive::<Float64Type>().value(i))
            .map_or(Value::Null, Value::Number),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_owned()),
        DataType::List(_) => {
            let v = array.as_list::<i32>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::LargeList(_) => {
            let v = array.as_list::<i64>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(
                fields.iter().zip(s.columns()).map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i, fmt))).collect(),
            )
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let key = |j| match cell(keys.as_ref(), j, fmt) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Value::Object((0..entries.len()).map(|j| (key(j), cell(values.as_ref(), j, fmt))).collect())
        }
        _ => match ArrayFormatter::try_new(array, fmt) {
            Ok(f) => Value::String(f.value(i).to_string()),
            Err(_) => Value::Null,
        },
    }
}

/// `{"columns": [...], "rows": [[...]]}` for a query result.
pub fn to_json(schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) -> (Vec<String>, Vec<Vec<Value>>) {
    let fmt = FormatOptions::default().with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.fZ"));
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push(b.columns().iter().map(|c| cell(c.as_ref(), i, &fmt)).collect());
        }
    }
    (columns, rows)
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

/// An optional time parameter: absent or empty means none.
fn opt_time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.filter(|s| !s.is_empty()).map(|s| parse_time(field, s)).transpose()
}

fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_request(format!("{field} must be an rfc 3339 timestamp: {e}")))
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
    /// The baseline; by default the configured `baseline_secs` just before `from`.
    baseline_from: Option<String>,
    baseline_to: Option<String>,
}

/// Runs every detector over a past range (a backtest) and records what it finds.
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
    let mut windows = Windows::before(from, to, app.analyzer.config().baseline_secs);
    match (req.baseline_from.as_deref(), req.baseline_to.as_deref()) {
        (None, None) => {}
        (Some(bf), Some(bt)) => {
            windows.baseline_start = parse_time("baseline_from", bf)?;
            windows.baseline_end = parse_time("baseline_to", bt)?;
            if windows.baseline_end > from || windows.baseline_start >= windows.baseline_end {
                return Err(bad_request("the baseline must be a non-empty range ending at or before from"));
            }
        }
        _ => return Err(bad_request("give both baseline_from and baseline_to, or neither")),
    }
    let report = backtest(&app, &tenant, windows).await?;
    crate::incidents::spawn_for_findings(&app.incidents, &tenant, &report.findings);
    Ok(Json(json!({
        "findings": report.findings,
        "tests": report.tests,
        "flows": report.flows,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
    }))
    .into_response())
}

/// Runs every detector over `windows`, records what they find and drafts the
/// findings' tickets. The report's findings are the recorded ones (with their
/// stored ids and states).
pub(crate) async fn backtest(
    app: &AppState,
    tenant: &Tenant,
    windows: Windows,
) -> Result<andon_analysis::engine::PassReport, ApiError> {
    let mut report = app.analyzer.pass(tenant, windows).await?;
    let (db, tickets, t) = (Arc::clone(&app.findings), Arc::clone(&app.tickets), tenant.clone());
    let found = std::mem::take(&mut report.findings);
    report.findings = blocking(move || {
        let recorded = db.record(&t, found)?;
        if let Err(e) = tickets.observe(&t, &recorded) {
            tracing::warn!(error = %e, "drafting tickets failed");
        }
        Ok::<_, AnalysisError>(recorded)
    })
    .await?;
    Ok(report)
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
    reviewer: String,
    note: Option<String>,
    reason: Option<String>,
    priority: Option<String>,
}

fn decision(body: &[u8]) -> Result<Decision, ApiError> {
    let d: Decision = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!("body must be {{\"reviewer\": \"...\", \"note\"|\"reason\": \"...\"}}: {e}"))
    })?;
    let reviewer = check_decision(&d.reviewer, d.note.as_deref().or(d.reason.as_deref()))?;
    Ok(Decision { reviewer, ..d })
}

/// The rules a reviewer's name and note follow, from the API and the UI alike;
/// the name comes back trimmed.
pub(crate) fn check_decision(reviewer: &str, note: Option<&str>) -> Result<String, ApiError> {
    let reviewer = reviewer.trim();
    if reviewer.is_empty() || reviewer.chars().count() > 100 || reviewer.chars().any(char::is_control) {
        return Err(bad_request("reviewer must be a name of 1 to 100 printable characters"));
    }
    if note.is_some_and(|n| n.len() > 4096) {
        return Err(bad_request("the note is longer than 4096 bytes"));
    }
    Ok(reviewer.to_owned())
}

/// The human gate: approve a pending draft, which queues it for its sink.
async fn approve_ticket(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let d = decision(&body)?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let d = decision(&body)?;
    if d.priority.is_some() {
        return Err(bad_request("a rejection takes no priority"));
    }
    let reason = d
        .reason
        .or(d.note)
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| bad_request("a rejection needs a reason"))?;
    let tickets = Arc::clone(&app.tickets);
    let t = blocking(move || tickets.reject(&tenant, &id, &d.reviewer, &reason)).await?;
    Ok(Json(t).into_response())
}

/// GitHub's `issues` webhook: a closed issue resolves its ticket and findings
/// at once, without waiting for the next poll. Deliveries must carry a valid
/// `X-Hub-Signature-256` under the secret in `tickets.github_webhook_secret_env`.
async fn github_webhook(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let settings = app.tickets.drafter().settings();
    let Some(secret) = std::env::var(&settings.github_webhook_secret_env).ok().filter(|s| !s.is_empty()) else {
        return Err(ApiError(StatusCode::NOT_FOUND, "github webhooks are not configured".into()));
    };
    let given = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let want = andon_ticketing::sink::signature(secret.as_bytes(), &body);
    let same = given.len() == want.len() && given.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "invalid or missing x-hub-signature-256".into()));
    }
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if event == "ping" {
        return Ok(Json(json!({ "ok": true })).into_response());
    }
    if event != "issues" {
        return Ok(Json(json!({ "ignored": event })).into_response());
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid json: {e}")))?;
    let (Some(action), Some(number)) =
        (v.get("action").and_then(Value::as_str), v.pointer("/issue/number").and_then(Value::as_u64))
    else {
        return Err(bad_request("an issues event needs action and issue.number"));
    };
    if let andon_ticketing::config::SinkKind::GitHub { owner, repo, .. } = &settings.sink {
        let full = v.pointer("/repository/full_name").and_then(Value::as_str).unwrap_or_default();
        if !full.eq_ignore_ascii_case(&format!("{owner}/{repo}")) {
            return Ok(Json(json!({ "ignored": "another repository" })).into_response());
        }
    }
    let open = match action {
        "closed" => false,
        "reopened" => true,
        other => return Ok(Json(json!({ "ignored": other })).into_response()),
    };
    let at = v
        .pointer("/issue/closed_at")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let actor = format!("github:{}", v.pointer("/sender/login").and_then(Value::as_str).unwrap_or("unknown"));
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
        crate::incidents::spawn_enrichment(Arc::clone(e), Arc::clone(&app.changes), tenant, vec![id.clone()]);
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_handler(State(app): State<Arc<AppState>>) -> Response {
    let app2 = Arc::clone(&app);
    // Sizing the WAL directory touches the disk.
    let store = tokio::task::spawn_blocking(move || app2.store.snapshot_stats()).await.unwrap_or_default();
    let stats = app.store.stats();
    let text = metrics::render(&metrics::Readings {
        ingest: app.ingestor.stats().snapshot(),
        store,
        fsync: stats.fsync_latency.snapshot(),
        flush: stats.flush_latency.snapshot(),
        query: stats.query_latency.snapshot(),
        uptime_secs: app.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        detection: {
            use std::sync::atomic::Ordering::Relaxed;
            let r = &app.runner;
            [r.passes.load(Relaxed), r.failures.load(Relaxed), r.findings.load(Relaxed), r.last_pass_ms.load(Relaxed)]
        },
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/query", post(query))
        .route("/api/v1/findings", get(list_findings))
        .route("/api/v1/findings/{id}", get(get_finding))
        .route("/api/v1/analyze", post(analyze))
        .route("/api/v1/changes", get(list_changes).post(add_change))
        .route("/api/v1/incidents", get(incidents::list_incidents).post(incidents::open_incident))
        .route("/api/v1/incidents/{id}", get(incidents::get_incident))
        .route("/api/v1/incidents/{id}/report.md", get(incidents::report_md))
        .route("/api/v1/incidents/{id}/report.html", get(incidents::report_html))
        .route("/api/v1/tickets", get(list_tickets))
        .route("/api/v1/tickets/{id}", get(get_ticket))
        .route("/api/v1/tickets/{id}/approve", post(approve_ticket))
        .route("/api/v1/tickets/{id}/reject", post(reject_ticket))
        .route("/api/v1/webhooks/github", post(github_webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(app)
}
