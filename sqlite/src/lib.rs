//! `andon.db`, the one SQLite file beside the segments that holds findings,
//! tickets and their outbox, changes and incidents. Each store keeps its own
//! tables; this is what they share: opening the file with its PRAGMAs, the
//! connection lock, and times stored as text that sorts.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::Connection;

/// How hard a store's commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Survives a process crash; a power cut may lose the last commits
    /// (findings, changes, incidents: the next pass writes them again).
    Normal,
    /// Every commit is on disk before it returns (tickets and their outbox: an
    /// approval must never be lost between the gate and the tracker).
    Full,
}

/// Opens `andon.db` the way every store in it does (WAL, a busy timeout, the
/// given sync level), then runs `schema`.
pub fn open(path: &Path, sync: Sync, schema: &str) -> rusqlite::Result<Mutex<Connection>> {
    let conn = Connection::open(path)?;
    let sync = match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    };
    // The busy timeout first: switching to WAL needs a lock another
    // connection may hold for a moment.
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
    ))?;
    conn.execute_batch(schema)?;
    Ok(Mutex::new(conn))
}

/// A transaction that writes: it takes the write lock when it begins,
/// waiting out the busy timeout. A deferred one that read first could not
/// take it once another connection had committed since its read (SQLite then
/// answers "database is locked" at once, without waiting), and every store
/// shares `andon.db`.
pub fn write(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// The connection; a panic in another holder does not poison it for good.
pub fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A time as stored: RFC 3339 in UTC with microseconds, so times sort as text.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A stored time read back; an unreadable one is the epoch.
pub fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_share_the_file_and_times_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("andon.db");
        let a = open(&path, Sync::Normal, "CREATE TABLE IF NOT EXISTS a (t TEXT)").unwrap();
        let b = open(&path, Sync::Full, "CREATE TABLE IF NOT EXISTS b (t TEXT)").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-20T12:00:00.123456Z").unwrap().with_timezone(&Utc);
        lock(&a).execute("INSERT INTO a VALUES (?1)", [time(t)]).unwrap();
        let back: String = lock(&b).query_row("SELECT t FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(back, "2026-11-20T12:00:00.123456Z");
        assert_eq!(parse_time(&back), t);
        let mode: String = lock(&b).query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_write_that_reads_first_waits_for_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("andon.db");
        let a = open(&path, Sync::Normal, "CREATE TABLE IF NOT EXISTS a (n INTEGER)").unwrap();
        let b = open(&path, Sync::Normal, "").unwrap();
        let mut ca = lock(&a);
        let tx = write(&mut ca).unwrap();
        let n: i64 = tx.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
        // Another connection commits while this one holds the write lock: it
        // waits (busy timeout) instead of failing, and lands after.
        let other = std::thread::spawn(move || lock(&b).execute("INSERT INTO a VALUES (2)", []).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(100));
        tx.execute("INSERT INTO a VALUES (?1)", [n + 1]).unwrap();
        tx.commit().unwrap();
        drop(ca);
        other.join().unwrap().unwrap();
        let total: i64 = lock(&a).query_row("SELECT sum(n) FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(total, 3);
    }
}
