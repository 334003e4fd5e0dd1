//! What follows a detection pass, wherever the pass ran (continuous detection,
//! `POST /api/v1/analyze`, `andon demo`): the findings are recorded (keeping
//! their ids across passes), ticket drafts are made or updated at the human
//! gate, findings no longer seen are resolved, and serious findings open
//! incidents, each with its RCA and an RCA ticket draft. Every SQLite call runs
//! off the async threads.

use std::sync::Arc;

use andon_analysis::{AnalysisError, FindingsDb};
use andon_model::{Finding, Incident, LoggedStep, ModelExchange, NarrativeSource, Tenant, TicketOpening};
use andon_rca::from_findings::opens_incident;
use andon_rca::{Hints, OpenIncident, Rca, RcaError, report};
use andon_ticketing::{Observed, Openings, Ticketing};
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

/// Whether a pass waits for the incidents its findings open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incidents {
    /// Open them in the background; the pass returns at once.
    Background,
    /// Open them before returning (the demo prints them).
    Wait,
}

#[derive(Debug)]
pub struct Pipeline {
    pub findings: Arc<FindingsDb>,
    pub tickets: Arc<Ticketing>,
    pub rca: Arc<Rca>,
}

/// What one pass left behind.
#[derive(Debug, Default)]
pub struct AfterPass {
    /// The findings as recorded, with their stored ids and states.
    pub findings: Vec<Finding>,
    /// Findings resolved because no pass had seen them since the cutoff.
    pub resolved: usize,
    /// Incidents opened, when the pass waited for them.
    pub incidents: Vec<Incident>,
}

impl Pipeline {
    /// Records a pass's findings, drafts their tickets, resolves findings not
    /// seen since `resolve_before` (continuous detection only) and opens
    /// incidents for the serious ones.
    pub async fn after_pass(
        self: &Arc<Self>,
        tenant: &Tenant,
        found: Vec<Finding>,
        resolve_before: Option<DateTime<Utc>>,
        incidents: Incidents,
    ) -> Result<AfterPass, AnalysisError> {
        let (db, t) = (Arc::clone(&self.findings), tenant.clone());
        let recorded = tokio::task::spawn_blocking(move || db.record(&t, found))
            .await
            .map_err(|e| AnalysisError::Db(e.to_string()))??;
        let written = self.openings(tenant, &recorded).await;
        let (db, tickets, t, runs) =
            (Arc::clone(&self.findings), Arc::clone(&self.tickets), tenant.clone(), self.rca.recorder.clone());
        let (recorded, resolved) = tokio::task::spawn_blocking(move || {
            let openings: Openings =
                written.iter().map(|w| (w.finding.fingerprint.clone(), w.opening.clone())).collect();
            match tickets.observe_with(&t, &recorded, &openings) {
                Ok(observed) => {
                    if let Some(runs) = runs {
                        record_drafts(&runs, &t, &recorded, &written, &observed);
                    }
                }
                Err(e) => warn!(error = %e, "drafting tickets failed"),
            }
            let resolved = match resolve_before {
                Some(cutoff) => db.resolve_stale(&t, cutoff)?,
                None => 0,
            };
            Ok::<_, AnalysisError>((recorded, resolved))
        })
        .await
        .map_err(|e| AnalysisError::Db(e.to_string()))??;
        let mut out = AfterPass { findings: recorded, resolved, incidents: Vec::new() };
        if out.findings.iter().any(opens_incident) {
            match incidents {
                Incidents::Wait => match self.open_for_findings(tenant, &out.findings).await {
                    Ok(opened) => out.incidents = opened,
                    Err(e) => warn!(error = %e, "opening incidents from findings failed"),
                },
                Incidents::Background => {
                    let (me, t, found) = (Arc::clone(self), tenant.clone(), out.findings.clone());
                    tokio::spawn(async move {
                        if let Err(e) = me.open_for_findings(&t, &found).await {
                            warn!(error = %e, "opening incidents from findings failed");
                        }
                    });
                }
            }
        }
        Ok(out)
    }

    /// The openings of the tickets a pass drafts or refreshes, when the
    /// narrator writes them (a model is configured): the most impactful
    /// findings first, at most [`OPENINGS_PER_PASS`] asked of the model.
    async fn openings(&self, tenant: &Tenant, findings: &[Finding]) -> Vec<Written> {
        let narrator = Arc::clone(&self.rca.narrator);
        if !narrator.checks_claims() {
            return Vec::new();
        }
        let (tickets, t, all) = (Arc::clone(&self.tickets), tenant.clone(), findings.to_vec());
        let awaiting = tokio::task::spawn_blocking(move || {
            tickets.awaiting_openings(&t, &all).map(|a| a.into_iter().map(|(f, o)| (f.clone(), o)).collect::<Vec<_>>())
        })
        .await;
        let mut awaiting = match awaiting.map_err(|e| e.to_string()).and_then(|a| a.map_err(|e| e.to_string())) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading tickets for their openings failed");
                return Vec::new();
            }
        };
        awaiting.sort_by(|a, b| b.0.impact.total_cmp(&a.0.impact));
        let mut out = Vec::new();
        for (f, previous) in awaiting.into_iter().take(OPENINGS_PER_PASS) {
            let started = Utc::now();
            if let Some(o) = narrator.ticket_opening(&f, previous.as_ref()).await {
                let kept = o.exchanges.is_empty() && previous.as_ref() == Some(&o.opening);
                out.push(Written { finding: f, opening: o.opening, exchanges: o.exchanges, kept, started });
            }
        }
        out
    }

    /// Opens an incident, runs its RCA and drafts its ticket.
    pub async fn open_incident(&self, tenant: &Tenant, req: &OpenIncident, hints: Hints) -> Result<Incident, RcaError> {
        let inc = self.rca.open(tenant, req, hints).await?;
        self.draft_rca_ticket(tenant, &inc).await?;
        Ok(inc)
    }

    /// Opens incidents for the serious findings, one per shared cause, each with
    /// its RCA ticket draft.
    pub async fn open_for_findings(&self, tenant: &Tenant, findings: &[Finding]) -> Result<Vec<Incident>, RcaError> {
        let opened = self.rca.open_for_findings(tenant, findings).await?;
        for inc in &opened {
            self.draft_rca_ticket(tenant, inc).await?;
        }
        Ok(opened)
    }

    async fn draft_rca_ticket(&self, tenant: &Tenant, inc: &Incident) -> Result<(), RcaError> {
        let (tickets, t, i) = (Arc::clone(&self.tickets), tenant.clone(), inc.clone());
        let runs = self.rca.recorder.clone();
        let drafted = tokio::task::spawn_blocking(move || {
            // The report is rendered from the masked incident: once rendered,
            // Markdown's escapes hide an address from the redactor.
            let masked = crate::app::redact_incident(tickets.drafter().redactor(), i.clone());
            let drafted = tickets.observe_incident(&t, &i, &report::markdown(&masked));
            if let (Some(runs), Some(run), Ok(tk)) = (runs, &i.run_id, &drafted) {
                let input = json!({ "incident": i.id });
                let output = json!({
                    "ticket": tk.id, "state": tk.state.as_str(), "title": tk.title, "priority": tk.priority.as_str(),
                });
                let summary = format!("RCA ticket {} is {}", tk.id, tk.state.as_str());
                if let Err(e) = runs.append(
                    &t,
                    run,
                    LoggedStep { kind: "decision".into(), name: "ticket".into(), input, output, summary },
                ) {
                    warn!(error = %e, "flight recorder could not record the rca ticket");
                }
            }
            drafted
        })
        .await
        .map_err(|e| RcaError::Db(e.to_string()))?;
        if let Err(e) = drafted {
            warn!(incident = %inc.id, error = %e, "drafting the rca ticket failed");
        }
        info!(incident = %inc.id, title = %inc.title, confidence = inc.confidence, "incident analysed");
        Ok(())
    }
}

/// Model requests for ticket openings one pass makes at most; the rest of
/// its drafts open with their detectors' summaries until a later pass.
pub const OPENINGS_PER_PASS: usize = 10;

/// A ticket opening written (or kept) for one finding of a pass.
#[derive(Debug)]
struct Written {
    finding: Finding,
    opening: TicketOpening,
    /// The requests to the model that wrote it.
    exchanges: Vec<ModelExchange>,
    /// The pending ticket's opening, still supported by the new evidence.
    kept: bool,
    started: DateTime<Utc>,
}

/// Appends to each finding's detection run the opening its ticket got (a
/// model step, with the validator's verdict) and what the finding did to its
/// ticket (drafted, refreshed, commented on).
fn record_drafts(
    runs: &andon_analysis::recorder::RunsDb,
    tenant: &Tenant,
    findings: &[Finding],
    written: &[Written],
    observed: &Observed,
) {
    let run_of = |id: &str| findings.iter().find(|f| f.id == id).and_then(|f| f.run_id.clone());
    let append = |run: &str, step: LoggedStep| {
        if let Err(e) = runs.append(tenant, run, step) {
            warn!(error = %e, "flight recorder could not record a ticket step");
        }
    };
    for w in written {
        let Some(run) = &w.finding.run_id else { continue };
        for (i, x) in w.exchanges.iter().enumerate() {
            append(run, andon_rca::record::exchange_step(i + 1, x));
        }
        let validation = w.opening.narrative_validation.as_ref();
        let summary = match (w.kept, w.opening.narrative_source) {
            (true, _) => format!("{}: the model's opening still holds; kept", w.finding.id),
            (false, NarrativeSource::Llm) => {
                format!("{}: accepted after {} drafts", w.finding.id, validation.map_or(0, |v| v.attempts))
            }
            (false, NarrativeSource::Template) => format!(
                "{}: the detector's summary ({})",
                w.finding.id,
                validation.and_then(|v| v.error.clone()).unwrap_or_else(|| "every draft was rejected".into())
            ),
        };
        let input = json!({ "finding": w.finding.id, "fingerprint": w.finding.fingerprint, "started_at": w.started });
        let output = serde_json::to_value(&w.opening).unwrap_or_default();
        append(run, LoggedStep { kind: "decision".into(), name: "ticket opening".into(), input, output, summary });
    }
    for c in &observed.changes {
        let Some(run) = run_of(&c.finding_id) else { continue };
        let input = json!({ "finding": c.finding_id });
        let output = json!({
            "ticket": c.ticket_id, "action": c.action, "state": c.state.as_str(), "title": c.title,
            "priority": c.priority.as_str(),
        });
        let summary = format!("{} {}: {}", c.action, c.ticket_id, c.title);
        append(&run, LoggedStep { kind: "decision".into(), name: "ticket".into(), input, output, summary });
    }
}
