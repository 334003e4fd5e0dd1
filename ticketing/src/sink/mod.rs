//! Where approved tickets go: the `TicketSink` trait and its three
//! implementations (GitHub issues, a JSON-lines file, a signed webhook).

use std::time::Duration;

use andon_model::{ExternalRef, Tenant};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::db::{ApprovedTicket, PostedTicket};

mod file;
mod github;
mod webhook;

pub use file::FileSink;
pub use github::{GitHubSink, IssueEvent, WebhookError, issue_event};
pub use webhook::{WebhookSink, signature};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: a timeout, a 5xx, a rate limit. `retry_after` is what
    /// the tracker asked for, if it said.
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Retrying will not help: bad credentials, no such repository, a payload
    /// the tracker refuses.
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError::Transient { message: message.into(), retry_after: None }
    }
}

/// An issue the tracker already holds for a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub external: ExternalRef,
    /// The ticket id in its marker: this ticket's own issue (an earlier attempt
    /// landed) or another's (an earlier Andon database).
    pub ticket_id: String,
    pub open: bool,
}

/// An issue's state as the tracker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueState {
    pub number: u64,
    pub open: bool,
    pub closed_at: Option<DateTime<Utc>>,
    /// Who closed or last changed it, when the tracker says.
    pub actor: Option<String>,
}

#[async_trait]
pub trait TicketSink: Send + Sync + std::fmt::Debug {
    /// `github`, `file` or `webhook`, as in [`ExternalRef::system`].
    fn system(&self) -> &'static str;

    /// The issue already holding `fingerprint` for `tenant`, if the sink can
    /// tell. Called before every create, so a create that timed out after the
    /// tracker made the issue is not made twice.
    async fn find(&self, tenant: &Tenant, fingerprint: &str) -> Result<Option<Existing>, SinkError>;

    async fn create(&self, ticket: &ApprovedTicket) -> Result<ExternalRef, SinkError>;

    /// Whether a comment carrying `marker` is already on the issue (an earlier
    /// attempt landed).
    async fn has_comment(&self, ticket: &PostedTicket, marker: &str, since: DateTime<Utc>) -> Result<bool, SinkError>;

    async fn comment(&self, ticket: &PostedTicket, body: &str) -> Result<(), SinkError>;

    async fn reopen(&self, ticket: &PostedTicket) -> Result<(), SinkError>;

    /// Issues changed since `since`, for closing the loop; sinks without
    /// issues have none.
    async fn changed_since(&self, _since: DateTime<Utc>) -> Result<Vec<IssueState>, SinkError> {
        Ok(Vec::new())
    }
}
