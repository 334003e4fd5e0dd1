//! Andon's data model: the Arrow schema of the `spans` table, the semantic-convention
//! attributes that get columns of their own, tenants, change events with their gate
//! evidence, the kinds of finding, incidents and their RCA, tickets, and the small statistics types shared by the
//! ingest path, the store and the server; and who may call (bearer tokens, roles, tenant pinning).
//!
//! This crate does no I/O. It is the one place where the span schema is defined, so
//! the receivers that build span batches, the store that writes them to the WAL and
//! to Parquet, and the SQL layer that reads them cannot disagree about a column.

pub mod agent;
pub mod auth;
pub mod change;
pub mod clock;
pub mod finding;
pub mod format;
pub mod html;
pub mod incident;
pub mod markdown;
pub mod schema;
pub mod sink;
pub mod statistics;
pub mod stats;
pub mod tenant;
pub mod ticket;

pub use agent::{Citation, Investigation, InvestigationState, LoggedStep, ModelExchange, Run, RunLog, RunStep};
pub use change::{ChangeEvent, Gate, GateKind, Verdict};
pub use finding::{
    Affected, ChangeRef, Evidence, Finding, FindingKind, FindingState, LinkedFinding, ServiceOperation, Severity,
    TimeWindow, Trouble, Wording,
};
pub use incident::{
    Discrepancy, GateAssessment, ImplicatedChange, Incident, IncidentState, NarrativeSource, NarrativeValidation,
    RcaStep, Signature, SimilarIncident, Suspect, SuspectCause, Violation,
};
pub use schema::{SemConv, SpanColumn, span_schema};
pub use sink::{AppendFuture, AppendOutcome, EncodedSpans, ReadyFuture, Reconvert, SinkError, SpanSink};
pub use tenant::{TENANT_HEADER, Tenant, TenantError};
pub use ticket::{AuditEntry, ExternalRef, Priority, Ticket, TicketOpening, TicketState};

/// Makes ring the crypto provider of every TLS client and server in the
/// process (HTTPS to a server, a webhook or GitHub; TLS on the three ports).
/// Call it before building an HTTP client; calling it again does nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
