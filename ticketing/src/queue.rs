//! The outbox queue: deliveries (an issue to create, a comment to post) written
//! in the same transaction as the ticket change that calls for them, taken in
//! order by [`crate::outbox`], and finished, retried or failed here.

use andon_model::{ExternalRef, Tenant, Ticket, TicketState};
use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

use andon_sqlite::{parse_time, time};

use crate::TicketError;
use crate::config::OnClosed;
use crate::db::{ApprovedTicket, PostedTicket, TicketDb, audit, db_err, json_err, load, strip_marker};
use crate::draft::Drafter;
use crate::lifecycle;

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
pub(crate) struct CommentPayload {
    pub(crate) body: String,
    pub(crate) reopen: bool,
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

pub(crate) fn enqueue(
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

pub(crate) fn set_payload(tx: &Transaction<'_>, id: i64, p: &CommentPayload) -> Result<(), TicketError> {
    let payload = serde_json::to_string(p).map_err(json_err)?;
    tx.execute("UPDATE ticket_outbox SET payload = ?2 WHERE id = ?1", params![id, payload]).map_err(db_err)?;
    Ok(())
}

pub(crate) fn done(tx: &Transaction<'_>, id: i64, now: DateTime<Utc>) -> Result<(), TicketError> {
    tx.execute(
        "UPDATE ticket_outbox SET state = 'done', done_at = ?2, last_error = NULL WHERE id = ?1",
        params![id, time(now)],
    )
    .map_err(db_err)?;
    Ok(())
}

impl Delivery {
    fn ticket(&self) -> (&Tenant, &str) {
        match &self.job {
            Job::Create(a) => (&a.tenant, &a.ticket.id),
            Job::Comment { ticket, .. } => (&ticket.tenant, &ticket.ticket.id),
        }
    }
}

impl TicketDb {
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

    /// Deliveries due at `now`, oldest first. A delivery whose ticket is no
    /// longer in the state it needs is cancelled here.
    pub fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>, TicketError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
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
            lifecycle::posted(t, ext, now);
            audit(tx, &t.id, now, "outbox", "posted", &detail)?;
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
            lifecycle::posted(t, ext, now);
            audit(tx, &t.id, now, "outbox", "posted", &detail)?;
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
}
