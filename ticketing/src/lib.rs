//! Andon's tickets: findings become drafts a person approves before anything
//! reaches the team's tracker, and each approved ticket becomes exactly one
//! issue.
//!
//! - [`draft`] writes the title, the Markdown body with the evidence, labels and
//!   a priority; [`redact`] masks personal data and secrets and [`markdown`]
//!   keeps span-supplied text from turning into markup.
//! - [`db`] keeps tickets, their audit trail and the outbox in SQLite. The human
//!   gate ([`db::TicketDb::approve`]) is the only way to an
//!   [`db::ApprovedTicket`], and a sink's `create` takes nothing else.
//! - [`outbox`] delivers approved tickets to a [`sink::TicketSink`] (GitHub
//!   issues, a JSON-lines file or a signed webhook), retrying through outages
//!   and rate limits, and looking for its own earlier attempt before every
//!   create so a timeout after the tracker made the issue does not make two.
//! - A recurring finding comments on its ticket's issue (reopening it when it
//!   was closed, if configured) instead of opening another; a closed issue
//!   resolves its ticket and findings.
//!
//! This crate does not run detection or know about the store; the server
//! hands it findings and resolves findings it reports back.

pub mod config;
pub mod db;
pub mod draft;
pub mod gate;
pub mod lifecycle;
pub mod observe;
pub use andon_model::markdown;
pub mod outbox;
pub mod queue;
pub mod redact;
pub mod sink;

pub use config::{Settings, TicketingConfig};
pub use db::{ApprovedTicket, PostedTicket, TicketDb};
pub use draft::{Draft, Drafter};
pub use observe::{Observed, Openings, TicketChange};
pub use outbox::Ticketing;
pub use redact::Redactor;
pub use sink::{SinkError, TicketSink};

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("invalid ticket settings: {0}")]
    Config(String),
    /// A decision the human gate refuses (a bad reviewer name, a missing reason).
    #[error("{0}")]
    Invalid(String),
    #[error("tickets database: {0}")]
    Db(String),
    #[error("no such ticket: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("ticket sink: {0}")]
    Sink(#[from] SinkError),
}
