//! What the two SQLite stores of this crate (changes, incidents) share.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::Connection;

use crate::RcaError;

pub(crate) fn db_err(e: rusqlite::Error) -> RcaError {
    RcaError::Db(e.to_string())
}

pub(crate) fn json_err(e: serde_json::Error) -> RcaError {
    RcaError::Db(e.to_string())
}

/// Times as stored: RFC 3339 with microseconds, so they sort as text.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Opens `andon.db` the way every store in it does (WAL, a busy timeout), then
/// runs `schema`.
pub(crate) fn open(path: &Path, schema: &str) -> Result<Mutex<Connection>, RcaError> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
        .map_err(db_err)?;
    conn.execute_batch(schema).map_err(db_err)?;
    Ok(Mutex::new(conn))
}

pub(crate) fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
