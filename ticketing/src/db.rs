//! Tickets, their audit trail and the outbox, in SQLite (`andon.db`).
//!
//! Every state change and the delivery it implies are written in one
//! transaction, so an approval is never lost between the gate and the sink, and
//! a restart resumes exactly where the outbox was.

use std::path::Path;
use std::sync::Mutex;

use andon_model::{AuditEntry, ExternalRef, Finding, Incident, Priority, Severity, Tenant, Ticket, TicketState};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::TicketError;
use crate::config::OnClosed;
use crate::draft::{Draft, Drafter};

fn db_err(e: rusqlite::Error) -> TicketError {
    TicketError::Db(e.to_string())
}

fn json_err(e: serde_json::Error) -> TicketError {
    TicketError::Db(e.to_string())
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A ticket a reviewer approved. Only [`TicketDb::due`] makes one, from a row
/// the human gate (or the auto-approve policy) moved to `approved`; a sink's
/// `create` takes nothing else. Its fields are private, so no other code can
/// forge one:
///
/// ```compile_fail
/// fn forge(ticket: andon_model::Ticket, tenant: andon_model::Tenant) -> andon_ticketing::ApprovedTicket {
///     andon_ticketing::ApprovedTicket { tenant, ticket }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ApprovedTicket {
    tenant: Tenant,
    ticket: Ticket,
}

impl ApprovedTicket {
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
}

/// A ticket with an issue in a tracker; the only thing a comment can go to.
#[derive(Debug, Clone)]
pub struct PostedTicket {
    tenant: Tenant,
    ticket: Ticket,
    external: ExternalRef,
}

impl PostedTicket {
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn external(&self) -> &ExternalRef {
        &self.external
    }
}

#[derive(Debug, Clone)]
pub enum Job {
    /// Open the ticket's issue.
    Create(ApprovedTicket),
    /// Comment on its issue, reopening it first when asked.
    Comment { ticket: PostedTicket, body: String, reopen: bool },
}

/// One queued delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    /// Attempts before this one; above zero, the last may have landed.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub job: Job,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommentPayload {
    body: String,
    reopen: bool,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    pub id: i64,
    pub action: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What one batch of findings did to the tickets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub drafted: usize,
    pub refreshed: usize,
    pub auto_approved: usize,
    pub comments: usize,
}

#[derive(Debug)]
pub struct TicketDb {
    conn: Mutex<Connection>,
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

/// A new pending ticket from a draft.
fn pending(draft: Draft, finding_ids: Vec<String>, incident_id: Option<String>, now: DateTime<Utc>) -> Ticket {
    Ticket {
        id: draft.ticket_id,
        fingerprint: draft.fingerprint,
        state: TicketState::Pending,
        title: draft.title,
        body: draft.body,
        labels: draft.labels,
        priority: draft.priority,
        finding_ids,
        incident_id,
        severity: draft.severity,
        reviewer: None,
        note: None,
        external: None,
        occurrences: 1,
        created_at: now,
        updated_at: now,
        resolved_at: None,
        last_error: None,
    }
}

/// A pending ticket takes a newer draft's text, labels and priority.
fn refresh(t: &mut Ticket, draft: Draft) {
    t.title = draft.title;
    t.body = draft.body;
    t.labels = draft.labels;
    t.priority = draft.priority;
    t.severity = draft.severity;
}

fn load(tx: &Connection, tenant: &Tenant, id: &str) -> Result<Option<Ticket>, TicketError> {
    let body: Option<String> = tx
        .query_row("SELECT body FROM tickets WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
}

fn save(tx: &Transaction<'_>, tenant: &Tenant, t: &Ticket) -> Result<(), TicketError> {
    let body = serde_json::to_string(t).map_err(json_err)?;
    tx.execute(
        "INSERT INTO tickets (id, tenant, fingerprint, state, system, number, updated_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, system = excluded.system,
             number = excluded.number, updated_at = excluded.updated_at, body = excluded.body",
        params![
            t.id,
            tenant.as_str(),
            t.fingerprint,
            t.state.as_str(),
            t.external.as_ref().map(|e| e.system.clone()),
            t.external.as_ref().and_then(|e| e.number).map(|n| n as i64),
            time(t.updated_at),
            body
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

fn audit(
    tx: &Transaction<'_>,
    id: &str,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<(), TicketError> {
    tx.execute(
        "INSERT INTO ticket_audit (ticket_id, at, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, time(at), actor, action, detail],
    )
    .map_err(db_err)?;
    Ok(())
}

fn enqueue(
    tx: &Transaction<'_>,
    tenant: &Tenant,
    id: &str,
    action: &str,
    payload: &str,
    now: DateTime<Utc>,
) -> Result<i64, TicketError> {
    tx.execute(
        "INSERT INTO ticket_outbox (tenant, ticket_id, action, payload, state, attempts, next_at, created_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5, ?5)",
        params![tenant.as_str(), id, action, payload, time(now)],
    )
    .map_err(db_err)?;
    Ok(tx.last_insert_rowid())
}

/// Swaps the priority label for the new priority's.
fn relabel(t: &mut Ticket) {
    t.labels.retain(|l| l.parse::<Priority>().is_err());
    t.labels.push(t.priority.as_str().to_owned());
}

impl TicketDb {
    pub fn open(path: &Path) -> Result<Self, TicketError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS tickets (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 state TEXT NOT NULL,
                 system TEXT,
                 number INTEGER,
                 updated_at TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS tickets_state ON tickets (tenant, state, updated_at);
             CREATE TABLE IF NOT EXISTS ticket_audit (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 ticket_id TEXT NOT NULL,
                 at TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 action TEXT NOT NULL,
                 detail TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS ticket_audit_ticket ON ticket_audit (ticket_id, seq);
             CREATE TABLE IF NOT EXISTS ticket_outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 tenant TEXT NOT NULL,
                 ticket_id TEXT NOT NULL,
                 action TEXT NOT NULL,
                 payload TEXT NOT NULL,
                 state TEXT NOT NULL,
                 attempts INTEGER NOT NULL,
                 next_at TEXT NOT NULL,
                 last_error TEXT,
                 created_at TEXT NOT NULL,
                 done_at TEXT
             );
             CREATE INDEX IF NOT EXISTS ticket_outbox_due ON ticket_outbox (state, next_at);",
        )
        .map_err(db_err)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

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
        let tx = conn.transaction().map_err(db_err)?;
        let t = match load(&tx, tenant, &draft.ticket_id)? {
            None => {
                let t = pending(draft, inc.finding_ids.clone(), Some(inc.id.clone()), now);
                audit(&tx, &t.id, now, "andon", "drafted", &format!("from incident {}", inc.id))?;
                save(&tx, tenant, &t)?;
                t
            }
            Some(mut t) if t.state == TicketState::Pending => {
                refresh(&mut t, draft);
                t.finding_ids = inc.finding_ids.clone();
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
        now: DateTime<Utc>,
    ) -> Result<Observed, TicketError> {
        let settings = drafter.settings();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let mut out = Observed::default();
        for f in findings.iter().filter(|f| f.severity <= settings.draft_min) {
            let draft = drafter.draft(tenant, f);
            let Some(mut t) = load(&tx, tenant, &draft.ticket_id)? else {
                let mut t = pending(draft, vec![f.id.clone()], None, now);
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
                continue;
            };
            t.occurrences += 1;
            let known = t.finding_ids.contains(&f.id);
            match t.state {
                TicketState::Pending => {
                    refresh(&mut t, draft);
                    if !known {
                        t.finding_ids.push(f.id.clone());
                        audit(&tx, &t.id, now, "andon", "updated", &format!("now also finding {}", f.id))?;
                    }
                    out.refreshed += 1;
                }
                TicketState::Posted if !known => {
                    recur(&tx, tenant, drafter, &mut t, f, false, "seen again", now)?;
                    out.comments += 1;
                }
                TicketState::Resolved if !known && t.resolved_at.is_some_and(|r| f.window.start >= r) => {
                    let reopen = settings.on_closed == OnClosed::Reopen;
                    recur(&tx, tenant, drafter, &mut t, f, reopen, "seen after the issue was closed", now)?;
                    out.comments += 1;
                }
                _ => {}
            }
            t.updated_at = now;
            save(&tx, tenant, &t)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    pub fn list(&self, tenant: &Tenant, state: Option<TicketState>) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT body FROM tickets WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY updated_at DESC, id LIMIT 1000",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.as_str(), state.map(TicketState::as_str)], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for b in rows {
            out.push(serde_json::from_str(&b.map_err(db_err)?).map_err(json_err)?);
        }
        Ok(out)
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Ticket>, TicketError> {
        load(&self.conn(), tenant, id)
    }

    /// The audit trail of a ticket, oldest first.
    pub fn audit(&self, id: &str) -> Result<Vec<AuditEntry>, TicketError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT at, actor, action, detail FROM ticket_audit WHERE ticket_id = ?1 ORDER BY seq")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(AuditEntry {
                    at: parse_time(&r.get::<_, String>(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// The deliveries of a ticket, oldest first.
    pub fn deliveries(&self, id: &str) -> Result<Vec<DeliveryInfo>, TicketError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id, action, state, attempts, next_at, last_error FROM ticket_outbox WHERE ticket_id = ?1 ORDER BY id")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(DeliveryInfo {
                    id: r.get(0)?,
                    action: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    next_attempt_at: parse_time(&r.get::<_, String>(4)?),
                    last_error: r.get(5)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// Runs `f` on ticket `id` in one transaction and saves what it made of
    /// the ticket, with whatever else `f` wrote (audit, outbox).
    fn change<T>(
        &self,
        tenant: &Tenant,
        id: &str,
        f: impl FnOnce(&Transaction<'_>, &mut Ticket) -> Result<T, TicketError>,
    ) -> Result<T, TicketError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let mut t = load(&tx, tenant, id)?.ok_or_else(|| TicketError::NotFound(id.to_owned()))?;
        let out = f(&tx, &mut t)?;
        save(&tx, tenant, &t)?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// The human gate: a pending (or failed) ticket becomes approved, and its
    /// delivery is queued in the same transaction.
    pub fn approve(
        &self,
        tenant: &Tenant,
        id: &str,
        reviewer: &str,
        note: Option<&str>,
        priority: Option<Priority>,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        self.change(tenant, id, |tx, t| {
            undecided(t)?;
            let mut detail = note.map(str::to_owned).unwrap_or_default();
            if let Some(p) = priority.filter(|p| *p != t.priority) {
                detail = format!("priority {} → {p}{}{detail}", t.priority, if detail.is_empty() { "" } else { "; " });
                t.priority = p;
                relabel(t);
            }
            t.state = TicketState::Approved;
            t.reviewer = Some(reviewer.to_owned());
            t.note = note.map(str::to_owned);
            t.last_error = None;
            t.updated_at = now;
            audit(tx, id, now, reviewer, "approved", &detail)?;
            let queued: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM ticket_outbox WHERE ticket_id = ?1 AND action = 'create' AND state = 'queued')",
                    params![id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if !queued {
                enqueue(tx, tenant, id, "create", "{}", now)?;
            }
            Ok(t.clone())
        })
    }

    /// The human gate: a pending ticket is rejected, and its fingerprint muted.
    pub fn reject(
        &self,
        tenant: &Tenant,
        id: &str,
        reviewer: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        self.change(tenant, id, |tx, t| {
            undecided(t)?;
            t.state = TicketState::Rejected;
            t.reviewer = Some(reviewer.to_owned());
            t.note = Some(reason.to_owned());
            t.updated_at = now;
            audit(tx, id, now, reviewer, "rejected", reason)?;
            Ok(t.clone())
        })
    }

    /// Deliveries due at `now`, oldest first. A delivery whose ticket is no
    /// longer in the state it needs is cancelled here.
    pub fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>, TicketError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let rows: Vec<(i64, String, String, String, String, u32, String)> = {
            let mut st = tx
                .prepare(
                    "SELECT id, tenant, ticket_id, action, payload, attempts, created_at FROM ticket_outbox
                     WHERE state = 'queued' AND next_at <= ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(db_err)?;
            st.query_map(params![time(now), limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?
        };
        let mut out = Vec::new();
        for (id, tenant, ticket_id, action, payload, attempts, created) in rows {
            let tenant = Tenant::new(&tenant).map_err(|e| TicketError::Db(e.to_string()))?;
            let t = load(&tx, &tenant, &ticket_id)?;
            let job = match (action.as_str(), t) {
                ("create", Some(t @ Ticket { state: TicketState::Approved, reviewer: Some(_), .. })) => {
                    Some(Job::Create(ApprovedTicket { tenant, ticket: t }))
                }
                ("comment", Some(t))
                    if t.external.is_some() && matches!(t.state, TicketState::Posted | TicketState::Resolved) =>
                {
                    let p: CommentPayload = serde_json::from_str(&payload).map_err(json_err)?;
                    let external = t.external.clone().ok_or_else(|| TicketError::Db("checked above".into()))?;
                    Some(Job::Comment {
                        ticket: PostedTicket { tenant, ticket: t, external },
                        body: p.body,
                        reopen: p.reopen,
                    })
                }
                _ => None,
            };
            match job {
                Some(job) => out.push(Delivery { id, attempts, created_at: parse_time(&created), job }),
                None => {
                    tx.execute(
                        "UPDATE ticket_outbox SET state = 'cancelled', done_at = ?2 WHERE id = ?1",
                        params![id, time(now)],
                    )
                    .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Records that an attempt is starting, before the request goes out, so a
    /// crash during it leaves the next attempt knowing it may have landed.
    pub fn begin_attempt(&self, delivery: i64) -> Result<(), TicketError> {
        self.conn()
            .execute("UPDATE ticket_outbox SET attempts = attempts + 1 WHERE id = ?1", params![delivery])
            .map_err(db_err)?;
        Ok(())
    }

    /// The ticket's issue exists: created now, or found from an earlier attempt.
    pub fn posted(&self, d: &Delivery, ext: &ExternalRef, found: bool, now: DateTime<Utc>) -> Result<(), TicketError> {
        let (tenant, id) = d.ticket();
        self.change(tenant, id, |tx, t| {
            let detail = if found {
                format!("{} already had it ({}), from an earlier attempt; not posted again", ext.system, ext.url)
            } else {
                format!("{} {}", ext.system, ext.url)
            };
            mark_posted(tx, t, ext, &detail, now)?;
            done(tx, d.id, now)
        })
    }

    /// The ticket's issue exists already (its fingerprint was found in the
    /// tracker, for example after the database was lost): the create becomes a
    /// comment on it.
    pub fn adopt(
        &self,
        d: &Delivery,
        ext: &ExternalRef,
        open: bool,
        drafter: &Drafter,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        let (tenant, id) = d.ticket();
        self.change(tenant, id, |tx, t| {
            let detail =
                format!("found an existing issue for this fingerprint ({}); commenting there instead", ext.url);
            mark_posted(tx, t, ext, &detail, now)?;
            let reopen = !open && drafter.settings().on_closed == OnClosed::Reopen;
            let delivery = enqueue(tx, tenant, &t.id, "comment", "{}", now)?;
            let body = format!(
                "{}\n\nAndon found this problem again and approved a new ticket for it; the evidence follows.\n\n{}",
                crate::draft::comment_marker(delivery, &t.id),
                strip_marker(&t.body)
            );
            set_payload(tx, delivery, &CommentPayload { body, reopen })?;
            done(tx, d.id, now)
        })
    }

    pub fn commented(&self, d: &Delivery, reopened: bool, now: DateTime<Utc>) -> Result<(), TicketError> {
        let (tenant, id) = d.ticket();
        let url = match &d.job {
            Job::Comment { ticket, .. } => ticket.external.url.clone(),
            Job::Create(_) => return Err(TicketError::Db("not a comment delivery".into())),
        };
        self.change(tenant, id, |tx, t| {
            if reopened {
                t.state = TicketState::Posted;
                t.resolved_at = None;
                audit(tx, id, now, "outbox", "reopened", &url)?;
            }
            t.last_error = None;
            t.updated_at = now;
            audit(tx, id, now, "outbox", "commented", &url)?;
            done(tx, d.id, now)
        })
    }

    /// A transient failure: try again at `next`.
    pub fn retry_later(
        &self,
        d: &Delivery,
        error: &str,
        next: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        let (tenant, id) = d.ticket();
        self.change(tenant, id, |tx, t| {
            tx.execute(
                "UPDATE ticket_outbox SET next_at = ?2, last_error = ?3 WHERE id = ?1",
                params![d.id, time(next), error],
            )
            .map_err(db_err)?;
            // One audit entry per outage, not one per attempt.
            if t.last_error.is_none() {
                audit(tx, id, now, "outbox", "retrying", error)?;
            }
            t.last_error = Some(error.to_owned());
            Ok(())
        })
    }

    /// A permanent failure: the delivery stops; a failed create fails its
    /// ticket, which a reviewer can approve again.
    pub fn failed(&self, d: &Delivery, error: &str, now: DateTime<Utc>) -> Result<(), TicketError> {
        let (tenant, id) = d.ticket();
        self.change(tenant, id, |tx, t| {
            tx.execute(
                "UPDATE ticket_outbox SET state = 'failed', last_error = ?2, done_at = ?3 WHERE id = ?1",
                params![d.id, error, time(now)],
            )
            .map_err(db_err)?;
            if matches!(d.job, Job::Create(_)) {
                t.state = TicketState::Failed;
            }
            t.last_error = Some(error.to_owned());
            t.updated_at = now;
            audit(tx, id, now, "outbox", "failed", error)
        })
    }

    /// Tickets with an issue in `system`, posted or resolved.
    pub fn with_issues(&self, system: &str) -> Result<Vec<(Tenant, Ticket)>, TicketError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT tenant, body FROM tickets WHERE system = ?1 AND state IN ('posted', 'resolved')")
            .map_err(db_err)?;
        let rows =
            st.query_map(params![system], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, body) = row.map_err(db_err)?;
            let tenant = Tenant::new(&tenant).map_err(|e| TicketError::Db(e.to_string()))?;
            out.push((tenant, serde_json::from_str(&body).map_err(json_err)?));
        }
        Ok(out)
    }

    /// The issue was closed in the tracker: the ticket is resolved, and its
    /// finding ids are returned so the findings can be resolved with it.
    pub fn closed(
        &self,
        tenant: &Tenant,
        id: &str,
        at: DateTime<Utc>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, TicketError> {
        self.change(tenant, id, |tx, t| {
            if t.state != TicketState::Posted {
                return Ok(Vec::new());
            }
            t.state = TicketState::Resolved;
            t.resolved_at = Some(at);
            t.updated_at = now;
            audit(tx, id, now, actor, "resolved", "the issue was closed; its findings are resolved")?;
            Ok(t.finding_ids.clone())
        })
    }

    /// The issue was reopened by a person in the tracker.
    pub fn reopened(&self, tenant: &Tenant, id: &str, actor: &str, now: DateTime<Utc>) -> Result<(), TicketError> {
        self.change(tenant, id, |tx, t| {
            if t.state != TicketState::Resolved {
                return Ok(());
            }
            t.state = TicketState::Posted;
            t.resolved_at = None;
            t.updated_at = now;
            audit(tx, id, now, actor, "reopened", "the issue was reopened in the tracker")
        })
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

/// Only a pending ticket, or one whose delivery failed, awaits a decision.
fn undecided(t: &Ticket) -> Result<(), TicketError> {
    if matches!(t.state, TicketState::Pending | TicketState::Failed) {
        Ok(())
    } else {
        Err(TicketError::Conflict(format!("ticket {} is {}, not pending", t.id, t.state)))
    }
}

fn mark_posted(
    tx: &Transaction<'_>,
    t: &mut Ticket,
    ext: &ExternalRef,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<(), TicketError> {
    t.state = TicketState::Posted;
    t.external = Some(ext.clone());
    t.last_error = None;
    t.updated_at = now;
    audit(tx, &t.id, now, "outbox", "posted", detail)
}

impl Delivery {
    fn ticket(&self) -> (&Tenant, &str) {
        match &self.job {
            Job::Create(a) => (&a.tenant, &a.ticket.id),
            Job::Comment { ticket, .. } => (&ticket.tenant, &ticket.ticket.id),
        }
    }
}

fn set_payload(tx: &Transaction<'_>, id: i64, p: &CommentPayload) -> Result<(), TicketError> {
    let payload = serde_json::to_string(p).map_err(json_err)?;
    tx.execute("UPDATE ticket_outbox SET payload = ?2 WHERE id = ?1", params![id, payload]).map_err(db_err)?;
    Ok(())
}

fn done(tx: &Transaction<'_>, id: i64, now: DateTime<Utc>) -> Result<(), TicketError> {
    tx.execute(
        "UPDATE ticket_outbox SET state = 'done', done_at = ?2, last_error = NULL WHERE id = ?1",
        params![id, time(now)],
    )
    .map_err(db_err)?;
    Ok(())
}

/// A body without its first-line marker.
pub fn strip_marker(body: &str) -> &str {
    match body.split_once('\n') {
        Some((first, rest)) if first.starts_with("<!-- andon:") => rest.trim_start(),
        _ => body,
    }
}
