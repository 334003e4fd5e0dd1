//! The investigation agent's tools, as Andon's own functions for one tenant
//! (the query engine, the findings, incidents and changes databases, the
//! RCA), and the start of an investigation: stored as `running`, answered in
//! the background, stored again with its outcome.

use std::sync::Arc;

use andon_analysis::FindingFilter;
use andon_model::{FindingState, Incident, Investigation, InvestigationState, Tenant};
use andon_rca::llm::agent::{self, Tools};
use andon_rca::{ChangeFilter, Hints, OpenIncident};
use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::app::{ApiError, AppState};
use crate::rows::to_json;

/// The tools of one tenant's investigation.
pub struct ApiTools {
    pub app: Arc<AppState>,
    pub tenant: Tenant,
}

fn as_objects(columns: &[String], rows: Vec<Vec<Value>>) -> Vec<Value> {
    rows.into_iter().map(|r| Value::Object(columns.iter().cloned().zip(r).collect::<Map<String, Value>>())).collect()
}

#[async_trait]
impl Tools for ApiTools {
    async fn sql(&self, sql: &str) -> Result<Value, String> {
        let out = self.app.query.run(Some(self.tenant.clone()), sql).await.map_err(|e| e.to_string())?;
        let (columns, rows) = to_json(&out.schema, &out.batches);
        let total = rows.len();
        Ok(
            json!({"columns": columns, "rows": as_objects(&columns, rows), "row_count": total, "truncated": out.truncated}),
        )
    }

    async fn trace(&self, trace_id: &str) -> Result<Value, String> {
        let id = crate::ui::traces::normalize(trace_id).ok_or("a trace id is 32 hexadecimal digits")?;
        let sql = format!(
            "SELECT span_id, parent_span_id, service_name, name, kind, start_time, duration_ns, status_code, \
             http_route, http_response_status_code, service_version FROM spans WHERE trace_id = '{id}' \
             ORDER BY start_time LIMIT 200"
        );
        let out = self.app.query.run(Some(self.tenant.clone()), &sql).await.map_err(|e| e.to_string())?;
        let (columns, rows) = to_json(&out.schema, &out.batches);
        if rows.is_empty() {
            return Err(format!("no spans of trace {id} are stored"));
        }
        Ok(json!({"trace_id": id, "spans": as_objects(&columns, rows)}))
    }

    async fn findings(&self, state: Option<&str>) -> Result<Vec<Value>, String> {
        let state = match state {
            None => None,
            Some("open") => Some(FindingState::Open),
            Some("resolved") => Some(FindingState::Resolved),
            Some(other) => return Err(format!("state is open or resolved, not {other:?}")),
        };
        let (db, t) = (Arc::clone(&self.app.findings), self.tenant.clone());
        let mut list = tokio::task::spawn_blocking(move || db.list(&t, &FindingFilter { state, ..Default::default() }))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        list.sort_by_key(|f| std::cmp::Reverse(f.last_seen));
        Ok(list
            .into_iter()
            .map(|f| {
                json!({
                    "id": f.id, "kind": f.kind, "state": f.state, "severity": f.severity, "summary": f.summary,
                    "service": f.service, "operation": f.operation, "segment": f.segment,
                    "baseline": f.baseline, "current": f.current, "p_value": f.p_value, "effect": f.effect,
                    "first_seen": f.first_seen, "last_seen": f.last_seen,
                    "exemplar_trace_ids": f.evidence.exemplar_trace_ids,
                })
            })
            .collect())
    }

    async fn incidents(&self) -> Result<Vec<Value>, String> {
        let (db, t) = (Arc::clone(&self.app.incidents), self.tenant.clone());
        let list = tokio::task::spawn_blocking(move || db.list(&t, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|i| {
                json!({
                    "id": i.id, "title": i.title, "state": i.state, "window": i.window,
                    "signature": i.signature, "suspects": i.suspects.iter().take(3).collect::<Vec<_>>(),
                    "change": i.change, "confidence": i.confidence,
                })
            })
            .collect())
    }

    async fn changes(&self, service: Option<&str>) -> Result<Vec<Value>, String> {
        let (db, t) = (Arc::clone(&self.app.changes), self.tenant.clone());
        let filter = ChangeFilter { service: service.map(str::to_owned), since: None };
        let mut list = tokio::task::spawn_blocking(move || db.list(Some(&t), &filter))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        list.sort_by_key(|c| std::cmp::Reverse(c.1.change.deployed_at));
        Ok(list
            .into_iter()
            .map(|(_, c)| {
                let mut v = serde_json::to_value(&c.change).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("id".into(), json!(c.id));
                    o.insert("inferred".into(), json!(c.inferred));
                }
                v
            })
            .collect())
    }

    async fn rca(&self, request: &Value, keep: bool) -> Result<Incident, String> {
        let req: OpenIncident = serde_json::from_value(request.clone()).map_err(|e| {
            format!(
                "open_incident needs {{\"start\", \"end\", \"service\"?, \"baseline_start\"?, \"baseline_end\"?}}: {e}"
            )
        })?;
        req.windows().map_err(|e| e.to_string())?;
        let hints = Hints { opened_by: "agent".into(), ..Hints::default() };
        let inc = if keep {
            self.app.pipeline.open_incident(&self.tenant, &req, hints).await
        } else {
            self.app.pipeline.rca.dry_run(&self.tenant, &req, &hints).await
        };
        inc.map(|i| self.app.redacted(i)).map_err(|e| e.to_string())
    }
}

fn investigation_id(tenant: &Tenant, question: &str) -> String {
    let at = Utc::now().timestamp_nanos_opt().unwrap_or(0).to_string();
    format!("inv-{}", andon_model::finding::stable_id(&[tenant.as_str(), question, &at]))
}

/// Stores the question as `running` and answers it in the background.
pub async fn start(app: &Arc<AppState>, tenant: Tenant, question: String) -> Result<Investigation, ApiError> {
    let Some(llm) = app.llm.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "investigations need a model: configure [llm] in andon.toml".into(),
        ));
    };
    let rec = app.runs.begin(&tenant, "investigation", &question);
    let now = Utc::now();
    let mut inv = Investigation {
        id: investigation_id(&tenant, &question),
        question: question.clone(),
        state: InvestigationState::Running,
        answer: None,
        citations: Vec::new(),
        reason: None,
        violations: Vec::new(),
        steps: 0,
        tokens: 0,
        run_id: rec.id().to_owned(),
        created_at: now,
        updated_at: now,
    };
    let (db, t, i) = (Arc::clone(&app.investigations), tenant.clone(), inv.clone());
    crate::app::blocking(move || db.save(&t, &i)).await?;
    let (app, running) = (Arc::clone(app), inv.clone());
    tokio::spawn(async move {
        let tools = ApiTools { app: Arc::clone(&app), tenant: tenant.clone() };
        let o = agent::investigate(&llm, &tools, &question, app.agent_limits, &rec).await;
        inv.state = o.state;
        inv.answer = o.answer;
        inv.citations = o.citations;
        inv.reason = o.reason;
        inv.violations = o.violations;
        inv.steps = o.steps;
        inv.tokens = o.tokens;
        inv.updated_at = Utc::now();
        let db = Arc::clone(&app.investigations);
        let saved = tokio::task::spawn_blocking(move || db.save(&tenant, &inv)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!("storing an investigation's outcome failed");
        }
    });
    Ok(running)
}
