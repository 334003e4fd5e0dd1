//! Root-cause analysis, from an incident back to the change that caused it.
//!
//! So far this crate holds the change lineage: deploys and the evidence their
//! gates produced ([`changes`]), recorded through `POST /api/v1/changes` and
//! queryable as the `changes` table beside `spans`. Incidents, localization
//! and reports build on it.

pub mod changes;
pub mod gates;
pub mod incidents;
pub mod link;
pub mod localize;
pub mod narrate;
pub mod onset;
pub mod report;
pub mod run;

pub use changes::{ChangeFilter, ChangesDb, ChangesTable, StoredChange};
pub use incidents::IncidentsDb;
pub use narrate::{Narrator, TemplateNarrator};
pub use run::{Hints, OpenIncident, Rca};

#[derive(Debug, thiserror::Error)]
pub enum RcaError {
    #[error("{0}")]
    Invalid(String),
    #[error("changes database: {0}")]
    Db(String),
    #[error("rca query failed: {0}")]
    Query(String),
}
