//! Investigations in SQLite (`andon.db`): the question, its state and, once
//! the agent is done, its answer with citations, as JSON.

use std::path::Path;
use std::sync::Mutex;

use andon_model::{Investigation, Tenant};
use rusqlite::{Connection, OptionalExtension, params};

use crate::RcaError;
use crate::sqlite::{db_err, json_err, time};

#[derive(Debug)]
pub struct InvestigationsDb {
    conn: Mutex<Connection>,
}

impl InvestigationsDb {
    pub fn open(path: &Path) -> Result<Self, RcaError> {
        let conn = crate::sqlite::open(
            path,
            "CREATE TABLE IF NOT EXISTS investigations (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 state TEXT NOT NULL,
                 created_at TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS investigations_tenant ON investigations (tenant, created_at);",
        )?;
        // An investigation still running when the server stopped never ends.
        crate::sqlite::lock(&conn)
            .execute(
                "UPDATE investigations SET state = 'failed',
                     body = json_set(body, '$.state', 'failed', '$.reason', 'the server stopped during the investigation')
                 WHERE state = 'running'",
                [],
            )
            .map_err(db_err)?;
        Ok(Self { conn })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sqlite::lock(&self.conn)
    }

    pub fn save(&self, tenant: &Tenant, inv: &Investigation) -> Result<(), RcaError> {
        let body = serde_json::to_string(inv).map_err(json_err)?;
        self.conn()
            .execute(
                "INSERT INTO investigations (id, tenant, state, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body",
                params![inv.id, tenant.as_str(), inv.state.as_str(), time(inv.created_at), body],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Investigation>, RcaError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM investigations WHERE id = ?1 AND tenant = ?2",
                params![id, tenant.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
    }

    /// The tenant's investigations, newest first.
    pub fn list(&self, tenant: &Tenant, limit: usize) -> Result<Vec<Investigation>, RcaError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT body FROM investigations WHERE tenant = ?1 ORDER BY created_at DESC LIMIT ?2")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.as_str(), limit as i64], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        rows.iter().map(|b| serde_json::from_str(b).map_err(json_err)).collect()
    }
}
