//! Findings in SQLite: one row per finding, `open` until the problem has not been
//! seen for `resolve_after_secs`. A pass that sees an open finding's fingerprint
//! again updates that finding rather than adding another.

use std::path::Path;
use std::sync::Mutex;

use andon_model::{Finding, FindingKind, FindingState, Tenant};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::AnalysisError;

#[derive(Debug)]
pub struct FindingsDb {
    conn: Mutex<Connection>,
}

/// Filters of `GET /api/v1/findings`.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub kind: Option<FindingKind>,
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub state: Option<FindingState>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn db_err(e: rusqlite::Error) -> AnalysisError {
    AnalysisError::Db(e.to_string())
}

impl FindingsDb {
    pub fn open(path: &Path) -> Result<Self, AnalysisError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS findings (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 service TEXT NOT NULL,
                 state TEXT NOT NULL,
                 first_seen TEXT NOT NULL,
                 last_seen TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS findings_fingerprint ON findings (tenant, fingerprint, state);
             CREATE INDEX IF NOT EXISTS findings_seen ON findings (tenant, last_seen);",
        )
        .map_err(db_err)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a pass's findings. An open finding with the same fingerprint keeps
    /// its id and first sighting and takes the new evidence; the findings are
    /// returned as stored.
    pub fn record(&self, tenant: &Tenant, findings: Vec<Finding>) -> Result<Vec<Finding>, AnalysisError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let mut out = Vec::with_capacity(findings.len());
        for mut f in findings {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, body FROM findings WHERE tenant = ?1 AND fingerprint = ?2 AND state = 'open'",
                    params![tenant.as_str(), f.fingerprint],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            if let Some((id, body)) = existing {
                let old: Finding = serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?;
                f.id = id;
                f.first_seen = old.first_seen.min(f.first_seen);
                f.last_seen = old.last_seen.max(f.last_seen);
            }
            let body = serde_json::to_string(&f).map_err(|e| AnalysisError::Db(e.to_string()))?;
            tx.execute(
                "INSERT INTO findings (id, tenant, fingerprint, kind, service, state, first_seen, last_seen, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, last_seen = excluded.last_seen, body = excluded.body",
                params![
                    f.id,
                    tenant.as_str(),
                    f.fingerprint,
                    f.kind.as_str(),
                    f.service,
                    f.state.as_str(),
                    time(f.first_seen),
                    time(f.last_seen),
                    body
                ],
            )
            .map_err(db_err)?;
            out.push(f);
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Resolves open findings last seen before `cutoff`; returns how many.
    pub fn resolve_stale(&self, tenant: &Tenant, cutoff: DateTime<Utc>) -> Result<usize, AnalysisError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let stale: Vec<(String, String)> = {
            let mut st = tx
                .prepare("SELECT id, body FROM findings WHERE tenant = ?1 AND state = 'open' AND last_seen < ?2")
                .map_err(db_err)?;
            st.query_map(params![tenant.as_str(), time(cutoff)], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?
        };
        for (id, body) in &stale {
            let mut f: Finding = serde_json::from_str(body).map_err(|e| AnalysisError::Db(e.to_string()))?;
            f.state = FindingState::Resolved;
            let body = serde_json::to_string(&f).map_err(|e| AnalysisError::Db(e.to_string()))?;
            tx.execute("UPDATE findings SET state = 'resolved', body = ?2 WHERE id = ?1", params![id, body])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(stale.len())
    }

    pub fn list(&self, tenant: &Tenant, filter: &FindingFilter) -> Result<Vec<Finding>, AnalysisError> {
        let conn = self.conn();
        let mut sql = String::from("SELECT body FROM findings WHERE tenant = ?1");
        let mut args: Vec<String> = vec![tenant.as_str().to_owned()];
        let mut push = |cond: &str, v: String| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        if let Some(k) = filter.kind {
            push("kind =", k.as_str().to_owned());
        }
        if let Some(s) = &filter.service {
            push("service =", s.clone());
        }
        if let Some(s) = filter.state {
            push("state =", s.as_str().to_owned());
        }
        if let Some(t) = filter.since {
            push("last_seen >=", time(t));
        }
        if let Some(t) = filter.until {
            push("first_seen <", time(t));
        }
        sql.push_str(" ORDER BY last_seen DESC, id LIMIT 1000");
        let mut st = conn.prepare(&sql).map_err(db_err)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for body in rows {
            let body = body.map_err(db_err)?;
            out.push(serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?);
        }
        Ok(out)
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Finding>, AnalysisError> {
        let conn = self.conn();
        let body: Option<String> = conn
            .query_row("SELECT body FROM findings WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| AnalysisError::Db(e.to_string()))).transpose()
    }
}
