//! A ticket's lifecycle as pure decisions: what a draft, an approval, a
//! rejection or a delivery does to a ticket, and which changes are allowed.
//! [`crate::db`] stores the result, with its audit entry and outbox rows, in
//! one transaction.

use andon_model::{ExternalRef, Priority, Ticket, TicketState};
use chrono::{DateTime, Utc};

use crate::TicketError;
use crate::draft::Draft;

/// A new pending ticket from a draft.
pub fn pending(draft: Draft, finding_ids: Vec<String>, incident_id: Option<String>, now: DateTime<Utc>) -> Ticket {
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
        run_id: None,
        opening: draft.opening,
    }
}

/// A pending ticket takes a newer draft's text, labels and priority.
pub fn refresh(t: &mut Ticket, draft: Draft) {
    t.title = draft.title;
    t.body = draft.body;
    t.labels = draft.labels;
    t.priority = draft.priority;
    t.severity = draft.severity;
    t.opening = draft.opening;
}

/// Swaps the priority label for the new priority's.
pub fn relabel(t: &mut Ticket) {
    t.labels.retain(|l| l.parse::<Priority>().is_err());
    t.labels.push(t.priority.as_str().to_owned());
}

/// Only a pending ticket, or one whose delivery failed, awaits a decision.
pub fn undecided(t: &Ticket) -> Result<(), TicketError> {
    if matches!(t.state, TicketState::Pending | TicketState::Failed) {
        Ok(())
    } else {
        Err(TicketError::Conflict(format!("ticket {} is {}, not pending", t.id, t.state)))
    }
}

/// The human gate approves: the reviewer's name (checked by
/// [`crate::gate`]), their note and an optional new priority. Returns the
/// audit detail.
pub fn approve(
    t: &mut Ticket,
    reviewer: &str,
    note: Option<&str>,
    priority: Option<Priority>,
    now: DateTime<Utc>,
) -> Result<String, TicketError> {
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
    Ok(detail)
}

/// The human gate rejects, with a reason; the fingerprint stays quiet.
pub fn reject(t: &mut Ticket, reviewer: &str, reason: &str, now: DateTime<Utc>) -> Result<(), TicketError> {
    undecided(t)?;
    t.state = TicketState::Rejected;
    t.reviewer = Some(reviewer.to_owned());
    t.note = Some(reason.to_owned());
    t.updated_at = now;
    Ok(())
}

/// The ticket's issue exists in the tracker.
pub fn posted(t: &mut Ticket, ext: &ExternalRef, now: DateTime<Utc>) {
    t.state = TicketState::Posted;
    t.external = Some(ext.clone());
    t.last_error = None;
    t.updated_at = now;
}

/// The issue was closed: a posted ticket is resolved (`false` for any other).
pub fn closed(t: &mut Ticket, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    if t.state != TicketState::Posted {
        return false;
    }
    t.state = TicketState::Resolved;
    t.resolved_at = Some(at);
    t.updated_at = now;
    true
}

/// The issue was reopened: a resolved ticket is posted again (`false` for any other).
pub fn reopened(t: &mut Ticket, now: DateTime<Utc>) -> bool {
    if t.state != TicketState::Resolved {
        return false;
    }
    t.state = TicketState::Posted;
    t.resolved_at = None;
    t.updated_at = now;
    true
}

#[cfg(test)]
mod tests {
    use andon_model::Severity;

    use super::*;

    fn draft() -> Draft {
        Draft {
            ticket_id: "t-1".into(),
            fingerprint: "fp".into(),
            title: "title".into(),
            body: "body".into(),
            labels: vec!["andon".into(), "P2".into()],
            priority: Priority::P2,
            severity: Severity::Medium,
            opening: None,
        }
    }

    #[test]
    fn only_an_undecided_ticket_can_be_decided() {
        let now = Utc::now();
        let mut t = pending(draft(), vec!["f".into()], None, now);
        let detail = approve(&mut t, "ana", Some("ship it"), Some(Priority::P0), now).unwrap();
        assert_eq!(detail, "priority P2 → P0; ship it");
        assert_eq!((t.state, t.labels.last().map(String::as_str)), (TicketState::Approved, Some("P0")));
        assert!(matches!(reject(&mut t, "bo", "no", now), Err(TicketError::Conflict(_))));
        assert!(!closed(&mut t, now, now), "an approved ticket has no issue to close");
        posted(&mut t, &ExternalRef { system: "github".into(), url: "u".into(), number: Some(1) }, now);
        assert!(closed(&mut t, now, now) && t.state == TicketState::Resolved);
        assert!(reopened(&mut t, now) && t.state == TicketState::Posted);
    }
}
