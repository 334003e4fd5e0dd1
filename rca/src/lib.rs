//! Root-cause analysis, from an incident back to the change that caused it.
//!
//! So far this crate holds the change lineage: deploys and the evidence their
//! gates produced ([`changes`]), recorded through `POST /api/v1/changes` and
//! queryable as the `changes` table beside `spans`. Incidents, localization
//! and reports build on it.

pub mod changes;

pub use changes::{ChangeFilter, ChangesDb, ChangesTable, StoredChange};

#[derive(Debug, thiserror::Error)]
pub enum RcaError {
    #[error("invalid change: {0}")]
    Invalid(String),
    #[error("changes database: {0}")]
    Db(String),
}
