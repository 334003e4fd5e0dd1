//! Tickets, their audit trail and the outbox, in SQLite (`andon.db`).
//!
//! Every state change and the delivery it implies are written in one
//! transaction, so an approval is never lost between the gate and the sink, and
//! a restart resumes exactly where the outbox was.

use std::path::Path;
use std::sync::Mutex;

use andon_model::{AuditEntry, ExternalRef, Tenant, Ticket, TicketState};
use andon_sqlite::{parse_time, time};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::TicketError;
use crate::lifecycle;

pub(crate) fn db_err(e: rusqlite::Error) -> TicketError {
    TicketError::Db(e.to_string())
}

pub(crate) fn json_err(e: serde_json::Error) -> TicketError {
    TicketError::Db(e.to_string())
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
    pub(crate) tenant: Tenant,
    pub(crate) ticket: Ticket,
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
    pub(crate) tenant: Tenant,
    pub(crate) ticket: Ticket,
    pub(crate) external: ExternalRef,
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

#[derive(Debug)]
pub struct TicketDb {
    conn: Mutex<Connection>,
}

pub(crate) fn load(tx: &Connection, tenant: &Tenant, id: &str) -> Result<Option<Ticket>, TicketError> {
    let body: Option<String> = tx
        .query_row("SELECT body FROM tickets WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
}

pub(crate) fn save(tx: &Transaction<'_>, tenant: &Tenant, t: &Ticket) -> Result<(), TicketError> {
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

pub(crate) fn audit(
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

impl TicketDb {
    pub fn open(path: &Path) -> Result<Self, TicketError> {
        let conn = andon_sqlite::open(
            path,
            andon_sqlite::Sync::Full,
            "CREATE TABLE IF NOT EXISTS tickets (
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
        Ok(Self { conn })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        andon_sqlite::lock(&self.conn)
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
    /// Runs `f` on ticket `id` in one transaction and saves what it made of
    /// the ticket, with whatever else `f` wrote (audit, outbox).
    pub(crate) fn change<T>(
        &self,
        tenant: &Tenant,
        id: &str,
        f: impl FnOnce(&Transaction<'_>, &mut Ticket) -> Result<T, TicketError>,
    ) -> Result<T, TicketError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let mut t = load(&tx, tenant, id)?.ok_or_else(|| TicketError::NotFound(id.to_owned()))?;
        let out = f(&tx, &mut t)?;
        save(&tx, tenant, &t)?;
        tx.commit().map_err(db_err)?;
        Ok(out)
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
            if !lifecycle::closed(t, at, now) {
                return Ok(Vec::new());
            }
            audit(tx, id, now, actor, "resolved", "the issue was closed; its findings are resolved")?;
            Ok(t.finding_ids.clone())
        })
    }

    /// The issue was reopened by a person in the tracker.
    pub fn reopened(&self, tenant: &Tenant, id: &str, actor: &str, now: DateTime<Utc>) -> Result<(), TicketError> {
        self.change(tenant, id, |tx, t| {
            if !lifecycle::reopened(t, now) {
                return Ok(());
            }
            audit(tx, id, now, actor, "reopened", "the issue was reopened in the tracker")
        })
    }
}

/// A body without its first-line marker.
pub fn strip_marker(body: &str) -> &str {
    match body.split_once('\n') {
        Some((first, rest)) if first.starts_with("<!-- andon:") => rest.trim_start(),
        _ => body,
    }
}
