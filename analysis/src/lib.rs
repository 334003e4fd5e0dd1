//! Andon's detectors: latency and error-rate regressions, retries, funnel
//! drop-offs and silently recovering errors, found with SQL over the `spans`
//! table and real statistics, each reported as a [`Finding`] that carries the
//! evidence for it.
//!
//! A pass ([`Analyzer::pass`]) compares a current window with a baseline window:
//! every detector's SQL aggregates per (service, operation), side and segment;
//! every subject is tested overall and within each segment value;
//! false discoveries are controlled per subject and within it (Simes, then
//! Benjamini–Hochberg over subjects and within the selected); the narrowest
//! segment that explains an effect is kept; sample traces tell where the trouble
//! starts, so symptoms are linked under their cause instead of reported alone.
//!
//! [`Finding`]: andon_model::Finding

pub mod attribution;
pub mod cluster;
pub mod config;
pub mod db;
pub mod detector;
pub mod detectors;
pub mod engine;
pub mod fold;
pub mod localize;
pub mod minutes;
pub mod recorder;
pub mod requests;
pub mod runner;
pub mod sides;
pub mod sql;
pub mod summary;
pub mod traces;

pub use config::{AnalysisConfig, Flow};
pub use db::{FindingFilter, FindingsDb};
pub use detector::Detector;
pub use engine::{Analyzer, PassReport, Windows, floor_minute};

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("invalid analysis settings: {0}")]
    Config(String),
    #[error("detector query failed: {message}")]
    Query { message: String, sql: String },
    #[error("findings database: {0}")]
    Db(String),
}
