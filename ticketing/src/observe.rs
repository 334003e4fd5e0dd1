//! What findings and incidents do to tickets: a new problem is drafted at the
//! gate, a recurrence refreshes its pending draft or comments on its issue.

use andon_model::{Finding, Incident, Severity, Tenant, Ticket, TicketOpening, TicketState};
use chrono::{DateTime, Utc};
use rusqlite::Transaction;

use crate::TicketError;
use crate::config::OnClosed;
use crate::db::{TicketDb, audit, db_err, load, save};
use crate::draft::Drafter;
use crate::lifecycle;
use crate::queue::{CommentPayload, enqueue, set_payload};

/// What one batch of findings did to the tickets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub drafted: usize,
    pub refreshed: usize,
    pub auto_approved: usize,
    pub comments: usize,
    /// Each ticket a finding drafted, refreshed or commented on.
    pub changes: Vec<TicketChange>,
}

/// What one finding did to its ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketChange {
    pub finding_id: String,
    pub ticket_id: String,
    /// `drafted`, `auto-approved`, `refreshed` or `commented`.
    pub action: &'static str,
    pub state: TicketState,
    pub title: String,
    pub priority: andon_model::Priority,
}

/// The openings a model wrote, by finding fingerprint.
pub type Openings = std::collections::BTreeMap<String, TicketOpening>;

impl TicketDb {
    /// Drafts the RCA ticket of an incident, or refreshes it while it is pending
    /// (the analysis was re-run). Returns the ticket.
    pub fn observe_incident(
        &self,
        tenant: &Tenant,
        drafter: &Drafter,
        inc: &Incident,
        report_md: &str,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        let draft = drafter.draft_incident(tenant, inc, report_md);
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let t = match load(&tx, tenant, &draft.ticket_id)? {
            None => {
                let mut t = lifecycle::pending(draft, inc.finding_ids.clone(), Some(inc.id.clone()), now);
                t.run_id = inc.run_id.clone();
                audit(&tx, &t.id, now, "andon", "drafted", &format!("from incident {}", inc.id))?;
                save(&tx, tenant, &t)?;
                t
            }
            Some(mut t) if t.state == TicketState::Pending => {
                lifecycle::refresh(&mut t, draft);
                t.finding_ids = inc.finding_ids.clone();
                t.run_id = inc.run_id.clone();
                t.updated_at = now;
                audit(&tx, &t.id, now, "andon", "updated", "the analysis was run again")?;
                save(&tx, tenant, &t)?;
                t
            }
            Some(t) => t,
        };
        tx.commit().map_err(db_err)?;
        Ok(t)
    }

    /// Drafts tickets for new problems and notes recurrences of old ones: a
    /// pending draft takes the latest evidence; a posted ticket whose finding
    /// comes back (a new finding after the last resolved, or evidence entirely
    /// after its issue was closed) gets a comment, reopening the issue when
    /// configured; a rejected fingerprint stays quiet.
    pub fn observe(
        &self,
        tenant: &Tenant,
        drafter: &Drafter,
        findings: &[Finding],
        openings: &Openings,
        now: DateTime<Utc>,
    ) -> Result<Observed, TicketError> {
        let settings = drafter.settings();
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let mut out = Observed::default();
        for f in findings.iter().filter(|f| f.severity <= settings.draft_min) {
            let draft = drafter.draft_with(tenant, f, openings.get(&f.fingerprint));
            let Some(mut t) = load(&tx, tenant, &draft.ticket_id)? else {
                let mut t = lifecycle::pending(draft, vec![f.id.clone()], None, now);
                t.run_id = f.run_id.clone();
                audit(&tx, &t.id, now, "andon", "drafted", &format!("from finding {}", f.id))?;
                out.drafted += 1;
                if settings.auto_approve_min.is_some_and(|min| f.severity <= min) {
                    t.state = TicketState::Approved;
                    t.reviewer = Some("policy:auto-approve".into());
                    let detail = format!(
                        "severity {} is at or above {}",
                        f.severity,
                        settings.auto_approve_min.map_or("", Severity::as_str)
                    );
                    audit(&tx, &t.id, now, "policy:auto-approve", "approved", &detail)?;
                    enqueue(&tx, tenant, &t.id, "create", "{}", now)?;
                    out.auto_approved += 1;
                }
                save(&tx, tenant, &t)?;
                let action = if t.state == TicketState::Approved { "auto-approved" } else { "drafted" };
                out.changes.push(change(f, &t, action));
                continue;
            };
            t.occurrences += 1;
            let known = t.finding_ids.contains(&f.id);
            match t.state {
                TicketState::Pending => {
                    lifecycle::refresh(&mut t, draft);
                    t.run_id = f.run_id.clone().or(t.run_id.take());
                    if !known {
                        t.finding_ids.push(f.id.clone());
                        audit(&tx, &t.id, now, "andon", "updated", &format!("now also finding {}", f.id))?;
                    }
                    out.refreshed += 1;
                    out.changes.push(change(f, &t, "refreshed"));
                }
                TicketState::Posted if !known => {
                    recur(&tx, tenant, drafter, &mut t, f, false, "seen again", now)?;
                    out.comments += 1;
                    out.changes.push(change(f, &t, "commented"));
                }
                TicketState::Resolved if !known && t.resolved_at.is_some_and(|r| f.window.start >= r) => {
                    let reopen = settings.on_closed == OnClosed::Reopen;
                    recur(&tx, tenant, drafter, &mut t, f, reopen, "seen after the issue was closed", now)?;
                    out.comments += 1;
                    out.changes.push(change(f, &t, "commented"));
                }
                _ => {}
            }
            t.updated_at = now;
            save(&tx, tenant, &t)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }
}

fn change(f: &Finding, t: &Ticket, action: &'static str) -> TicketChange {
    TicketChange {
        finding_id: f.id.clone(),
        ticket_id: t.id.clone(),
        action,
        state: t.state,
        title: t.title.clone(),
        priority: t.priority,
    }
}

impl TicketDb {
    /// The findings of `findings` whose ticket a pass would draft or
    /// refresh (those a model may write an opening for), with the opening
    /// their pending ticket has now.
    pub fn awaiting_openings<'f>(
        &self,
        tenant: &Tenant,
        drafter: &Drafter,
        findings: &'f [Finding],
    ) -> Result<Vec<(&'f Finding, Option<TicketOpening>)>, TicketError> {
        let conn = self.conn();
        let mut out = Vec::new();
        for f in findings.iter().filter(|f| f.severity <= drafter.settings().draft_min) {
            match load(&conn, tenant, &crate::draft::ticket_id(tenant, &f.fingerprint))? {
                None => out.push((f, None)),
                Some(t) if t.state == TicketState::Pending => out.push((f, t.opening)),
                Some(_) => {}
            }
        }
        Ok(out)
    }
}

/// Queues the comment (and reopen) a recurrence of `f` calls for.
#[allow(clippy::too_many_arguments)]
fn recur(
    tx: &Transaction<'_>,
    tenant: &Tenant,
    drafter: &Drafter,
    t: &mut Ticket,
    f: &Finding,
    reopen: bool,
    how: &str,
    now: DateTime<Utc>,
) -> Result<(), TicketError> {
    t.finding_ids.push(f.id.clone());
    let delivery = enqueue(tx, tenant, &t.id, "comment", "{}", now)?;
    let body = drafter.recurrence(tenant, delivery, &t.id, f, reopen);
    set_payload(tx, delivery, &CommentPayload { body, reopen })?;
    let what = if reopen { "reopen and comment queued" } else { "comment queued" };
    audit(tx, &t.id, now, "andon", "recurred", &format!("finding {} {how}; {what}", f.id))
}
