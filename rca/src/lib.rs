//! Root-cause analysis, from an incident back to the change that caused it.
//!
//! - [`changes`]: the change lineage, deploys and the evidence their gates
//!   produced, posted (`POST /api/v1/changes`) or inferred from a new
//!   `service.version` in spans ([`link::infer_versions`]), optionally filled
//!   in from GitHub ([`github`]); queryable as the `changes` table.
//! - [`run::Rca`] runs an incident's analysis: [`localize`] ranks suspects
//!   from the call trees, [`onset`] measures the signature and its onset,
//!   [`link`] ties it to a change with a confidence, [`gates`] holds the
//!   change's gates against production, and a [`Narrator`] writes the
//!   narrative. [`from_findings`] groups serious findings by cause into the
//!   incidents detection opens. [`incidents`] stores incidents and finds similar ones;
//!   [`report`] renders Markdown and HTML.

pub mod changes;
pub mod from_findings;
pub mod gates;
pub mod github;
pub mod incidents;
pub mod investigations;
pub mod link;
pub mod llm;
/// Localization is shared with detection, which names a finding's cause with it.
pub use andon_analysis::localize;
pub mod narrate;
pub mod onset;
pub mod record;
pub mod report;
pub mod run;
mod sqlite;

pub use changes::{ChangeFilter, ChangesDb, ChangesTable, StoredChange};
pub use incidents::IncidentsDb;
pub use investigations::InvestigationsDb;
pub use narrate::{Narrative, Narrator, TemplateNarrator};
pub use run::{Hints, OpenIncident, Rca, RcaConfig};

#[derive(Debug, thiserror::Error)]
pub enum RcaError {
    #[error("{0}")]
    Invalid(String),
    #[error("changes database: {0}")]
    Db(String),
    #[error("rca query failed: {0}")]
    Query(String),
}

impl From<andon_analysis::AnalysisError> for RcaError {
    fn from(e: andon_analysis::AnalysisError) -> Self {
        match e {
            andon_analysis::AnalysisError::Query { message, .. } => RcaError::Query(message),
            other => RcaError::Query(other.to_string()),
        }
    }
}

/// Runs SQLite work (changes, incidents) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RcaError> + Send + 'static,
) -> Result<T, RcaError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RcaError::Db(e.to_string()))?
}
