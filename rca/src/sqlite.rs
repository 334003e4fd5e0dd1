//! The error mapping of this crate's two SQLite stores (changes, incidents);
//! opening `andon.db`, its lock and its times are `andon_sqlite`'s.

pub(crate) use andon_sqlite::{lock, time};

use crate::RcaError;

pub(crate) fn db_err(e: rusqlite::Error) -> RcaError {
    RcaError::Db(e.to_string())
}

pub(crate) fn json_err(e: serde_json::Error) -> RcaError {
    RcaError::Db(e.to_string())
}

/// Opens `andon.db` and runs `schema`.
pub(crate) fn open(path: &std::path::Path, schema: &str) -> Result<std::sync::Mutex<rusqlite::Connection>, RcaError> {
    andon_sqlite::open(path, andon_sqlite::Sync::Normal, schema).map_err(db_err)
}
