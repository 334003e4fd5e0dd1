//! What follows a detection pass, wherever the pass ran (continuous detection,
//! `POST /api/v1/analyze`, `andon demo`): the findings are recorded (keeping
//! their ids across passes), ticket drafts are made or updated at the human
//! gate, findings no longer seen are resolved, and serious findings open
//! incidents, each with its RCA and an RCA ticket draft. Every SQLite call runs
//! off the async threads.

use std::sync::Arc;

use andon_analysis::{AnalysisError, FindingsDb};
use andon_model::{Finding, Incident, Tenant};
use andon_rca::from_findings::opens_incident;
use andon_rca::{Hints, OpenIncident, Rca, RcaError, report};
use andon_ticketing::Ticketing;
use chrono::{DateTime, Utc};
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
        let (db, tickets, t) = (Arc::clone(&self.findings), Arc::clone(&self.tickets), tenant.clone());
        let (recorded, resolved) = tokio::task::spawn_blocking(move || {
            let recorded = db.record(&t, found)?;
            if let Err(e) = tickets.observe(&t, &recorded) {
                warn!(error = %e, "drafting tickets failed");
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
        let drafted = tokio::task::spawn_blocking(move || {
            // The report is rendered from the masked incident: once rendered,
            // Markdown's escapes hide an address from the redactor.
            let masked = crate::app::redact_incident(tickets.drafter().redactor(), i.clone());
            tickets.observe_incident(&t, &i, &report::markdown(&masked))
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
