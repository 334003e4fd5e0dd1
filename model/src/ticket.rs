//! Tickets: what a person approves before Andon writes to a team's tracker.
//!
//! A ticket is drafted from a finding (or, later, an incident), waits as
//! `pending` for a reviewer, and only once `approved` goes through the outbox
//! to a sink. The approval itself is a type in `andon-ticketing`, not a flag
//! here: nothing outside the human gate can make one.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// Drafted, waiting for a person.
    Pending,
    /// Approved; queued in the outbox until the sink has it.
    Approved,
    /// A reviewer said no. Later sightings of the same fingerprint stay muted.
    Rejected,
    /// The sink has it (`external` says where).
    Posted,
    /// The sink refused it for good (for example a 404 for the repository);
    /// approving it again retries.
    Failed,
    /// The external issue was closed; its findings were resolved with it.
    Resolved,
}

impl TicketState {
    pub const ALL: [TicketState; 6] = [
        TicketState::Pending,
        TicketState::Approved,
        TicketState::Rejected,
        TicketState::Posted,
        TicketState::Failed,
        TicketState::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Approved => "approved",
            TicketState::Rejected => "rejected",
            TicketState::Posted => "posted",
            TicketState::Failed => "failed",
            TicketState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for TicketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TicketState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            format!("unknown ticket state {s:?}; expected one of {}", Self::ALL.map(TicketState::as_str).join(", "))
        })
    }
}

/// P0 is the most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::P0, Priority::P1, Priority::P2, Priority::P3];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P0 => "P0",
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown priority {s:?}; expected P0, P1, P2 or P3"))
    }
}

/// Where a posted ticket lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// `github`, `file` or `webhook`.
    pub system: String,
    pub url: String,
    /// The issue number (GitHub) or line number (file); none for a webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub fingerprint: String,
    pub state: TicketState,
    pub title: String,
    /// Markdown, redacted and escaped.
    pub body: String,
    pub labels: Vec<String>,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finding_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    pub severity: Severity,
    /// Who approved or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    /// The reviewer's note, or the reason for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRef>,
    /// How many detection passes have reported its finding.
    pub occurrences: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the external issue was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The last error from the sink, while it retries or after it gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The flight recorder's run that made its latest draft (the detection
    /// pass of its finding, or its incident's RCA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// A finding's ticket opens with this paragraph when a model was asked
    /// to write it: what it wrote, if the validator accepted it, and the
    /// verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<TicketOpening>,
}

/// The opening paragraph of a finding's ticket and who wrote it: a model's
/// draft the validator accepted (`llm`), or the detector's summary
/// (`template`) when every draft was rejected or no model answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketOpening {
    pub text: String,
    pub narrative_source: crate::NarrativeSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrative_validation: Option<crate::NarrativeValidation>,
}

/// One decision or delivery in a ticket's life: who, when, what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// A reviewer's name, `andon`, `policy:auto-approve` or `github:<login>`.
    pub actor: String,
    /// `drafted`, `updated`, `approved`, `rejected`, `posted`, `commented`,
    /// `reopened`, `resolved`, `retrying`, `failed`.
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}
