//! Incidents in SQLite (`andon.db`), each with its RCA as JSON, and the lookup
//! of similar past incidents by signature.

use std::path::Path;
use std::sync::Mutex;

use andon_model::{Incident, IncidentState, Signature, SimilarIncident, Tenant};
use rusqlite::{Connection, OptionalExtension, params};

use crate::RcaError;
use crate::sqlite::{db_err, json_err, time};

#[derive(Debug)]
pub struct IncidentsDb {
    conn: Mutex<Connection>,
}

impl IncidentsDb {
    pub fn open(path: &Path) -> Result<Self, RcaError> {
        let conn = crate::sqlite::open(
            path,
            "CREATE TABLE IF NOT EXISTS incidents (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 state TEXT NOT NULL,
                 group_key TEXT,
                 kind TEXT,
                 service TEXT,
                 operation TEXT,
                 window_end TEXT NOT NULL,
                 created_at TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS incidents_tenant ON incidents (tenant, created_at);
             CREATE INDEX IF NOT EXISTS incidents_group ON incidents (tenant, group_key, state);",
        )?;
        Ok(Self { conn })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sqlite::lock(&self.conn)
    }

    /// Inserts or replaces an incident. `group_key` groups findings that share a
    /// cause (detection opens one incident per key while it is open).
    pub fn save(&self, tenant: &Tenant, inc: &Incident, group_key: Option<&str>) -> Result<(), RcaError> {
        let body = serde_json::to_string(inc).map_err(json_err)?;
        let sig = inc.signature.as_ref();
        self.conn()
            .execute(
                "INSERT INTO incidents (id, tenant, state, group_key, kind, service, operation, window_end, created_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                     group_key = coalesce(excluded.group_key, incidents.group_key), kind = excluded.kind,
                     service = excluded.service, operation = excluded.operation,
                     window_end = excluded.window_end, body = excluded.body",
                params![
                    inc.id,
                    tenant.as_str(),
                    inc.state.as_str(),
                    group_key,
                    sig.map(|s| s.kind.to_string()),
                    sig.map(|s| s.service.clone()),
                    sig.map(|s| s.operation.clone()),
                    time(inc.window.end),
                    time(inc.created_at),
                    body
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Incident>, RcaError> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM incidents WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
    }

    /// Incidents newest first, optionally of one state.
    pub fn list(&self, tenant: &Tenant, state: Option<IncidentState>) -> Result<Vec<Incident>, RcaError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT body FROM incidents WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY created_at DESC, id LIMIT 1000",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.as_str(), state.map(IncidentState::as_str)], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for body in rows {
            out.push(serde_json::from_str(&body.map_err(db_err)?).map_err(json_err)?);
        }
        Ok(out)
    }

    /// The open incident grouping findings under `key`, if any.
    pub fn open_for_key(&self, tenant: &Tenant, key: &str) -> Result<Option<Incident>, RcaError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM incidents WHERE tenant = ?1 AND group_key = ?2 AND state = 'open'
                 ORDER BY created_at DESC LIMIT 1",
                params![tenant.as_str(), key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(json_err)).transpose()
    }

    /// Earlier incidents that look like this one: the same kind, service and
    /// operation first, then the same culprit service. Newest first, at most 5.
    pub fn similar(&self, tenant: &Tenant, id: &str, sig: &Signature) -> Result<Vec<SimilarIncident>, RcaError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT body, kind = ?3 AND operation = ?5 FROM incidents
                 WHERE tenant = ?1 AND id <> ?2 AND service = ?4
                 ORDER BY (kind = ?3 AND operation = ?5) DESC, created_at DESC LIMIT 5",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.as_str(), id, sig.kind.to_string(), sig.service, sig.operation], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (body, exact) = row.map_err(db_err)?;
            let inc: Incident = serde_json::from_str(&body).map_err(json_err)?;
            let matched = if exact {
                format!("the same {} on {} in {}", sig.kind, sig.operation, sig.service)
            } else {
                format!("the same culprit service, {}", sig.service)
            };
            out.push(SimilarIncident {
                id: inc.id,
                title: inc.title,
                opened_at: inc.created_at,
                state: inc.state,
                matched,
                change: inc.change.map(|c| format!("{} {}", c.event.service, c.event.version)),
            });
        }
        Ok(out)
    }
}
