//! The human gate, with rules that hold whoever calls it (the API, the UI, a
//! test): who may be named as the reviewer, what a decision must carry, and
//! the approval that queues a ticket's delivery in the same transaction.

use andon_model::{Priority, Tenant, Ticket};
use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::TicketError;
use crate::db::{TicketDb, audit, db_err};
use crate::lifecycle;
use crate::queue::enqueue;

/// The longest note or reason a decision may carry, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// The reviewer's name, trimmed: 1 to 100 printable characters.
pub fn reviewer(name: &str) -> Result<&str, TicketError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TicketError::Invalid("reviewer must be a name of 1 to 100 printable characters".into()));
    }
    Ok(name)
}

/// An approval's optional note.
pub fn note(note: Option<&str>) -> Result<(), TicketError> {
    if note.is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(TicketError::Invalid(format!("the note is longer than {MAX_NOTE_BYTES} bytes")));
    }
    Ok(())
}

/// A rejection's reason: required, and no longer than a note.
pub fn reason(reason: &str) -> Result<(), TicketError> {
    if reason.trim().is_empty() {
        return Err(TicketError::Invalid("a rejection needs a reason".into()));
    }
    note(Some(reason))
}

impl TicketDb {
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
        let reviewer = self::reviewer(reviewer)?;
        self::note(note)?;
        self.change(tenant, id, |tx, t| {
            let detail = lifecycle::approve(t, reviewer, note, priority, now)?;
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
        let reviewer = self::reviewer(reviewer)?;
        self::reason(reason)?;
        self.change(tenant, id, |tx, t| {
            lifecycle::reject(t, reviewer, reason, now)?;
            audit(tx, id, now, reviewer, "rejected", reason)?;
            Ok(t.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(reviewer("  ana  ").unwrap(), "ana");
        assert!(reviewer("   ").is_err());
        assert!(reviewer(&"x".repeat(101)).is_err());
        assert!(reviewer("ana\u{7}").is_err());
        assert!(note(Some(&"n".repeat(MAX_NOTE_BYTES + 1))).is_err());
        assert!(note(None).is_ok());
        assert!(reason(" ").is_err());
        assert!(reason("duplicate of #12").is_ok());
    }
}
