//! Change lineage in SQLite (`andon.db`): one row per deploy of a version of a
//! service to an environment, with its commit, pull request and gate evidence.
//!
//! Posting the same (service, version, environment) again updates the change
//! instead of adding one, so a pipeline can report its gates as they finish.

use std::path::Path;
use std::sync::{Arc, Mutex};

use andon_model::{ChangeEvent, Tenant};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::RcaError;
use crate::sqlite::{db_err, json_err, time};

/// A change as stored: its id, and the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredChange {
    pub id: String,
    /// Seen first in spans (a new `service.version`) rather than posted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    #[serde(flatten)]
    pub change: ChangeEvent,
}

/// Filters of `GET /api/v1/changes`.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct ChangesDb {
    conn: Mutex<Connection>,
}

/// The id of a deploy: the same service, version and environment is the same
/// change.
pub fn change_id(tenant: &Tenant, c: &ChangeEvent) -> String {
    let env = c.environment.as_deref().unwrap_or("");
    format!("chg-{}", andon_model::finding::stable_id(&[tenant.as_str(), &c.service, &c.version, env]))
}

/// Refuses what would make the lineage misleading: empty names, oversized
/// fields, a repository that is neither `owner/name` nor a URL.
pub fn validate(c: &ChangeEvent) -> Result<(), RcaError> {
    let bad = |m: String| Err(RcaError::Invalid(format!("invalid change: {m}")));
    for (field, v) in [("service", &c.service), ("version", &c.version)] {
        if v.trim().is_empty() || v.len() > 256 {
            return bad(format!("{field} must be 1 to 256 bytes"));
        }
    }
    if let Some(commit) = &c.commit
        && (commit.len() < 7 || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return bad(format!("commit must be 7 to 64 hex digits, not {commit:?}"));
    }
    if let Some(r) = &c.repository {
        let url = r.starts_with("https://") || r.starts_with("http://");
        let slug = r.split('/').count() == 2 && r.split('/').all(|p| !p.is_empty());
        if !(url || slug) {
            return bad(format!("repository must be owner/name or a URL, not {r:?}"));
        }
    }
    if c.gates.len() > 64 {
        return bad("at most 64 gates per change".into());
    }
    for g in &c.gates {
        if g.name.trim().is_empty() || g.name.len() > 128 {
            return bad("every gate needs a name of 1 to 128 bytes".into());
        }
        if g.metrics.values().any(|v| !v.is_finite()) {
            return bad(format!("gate {}: metrics must be finite numbers", g.name));
        }
    }
    Ok(())
}

impl ChangesDb {
    pub fn open(path: &Path) -> Result<Self, RcaError> {
        let conn = crate::sqlite::open(
            path,
            "CREATE TABLE IF NOT EXISTS changes (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 service TEXT NOT NULL,
                 deployed_at TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS changes_service ON changes (tenant, service, deployed_at);",
        )?;
        {
            let c = crate::sqlite::lock(&conn);
            let has_inferred: bool = c
                .query_row("SELECT count(*) FROM pragma_table_info('changes') WHERE name = 'inferred'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(db_err)?
                > 0;
            if !has_inferred {
                c.execute_batch("ALTER TABLE changes ADD COLUMN inferred INTEGER NOT NULL DEFAULT 0;")
                    .map_err(db_err)?;
            }
        }
        Ok(Self { conn })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sqlite::lock(&self.conn)
    }

    /// Records a change; returns its id and whether it was new. A change seen
    /// again keeps what it had and takes what the new report adds: gates by
    /// name, and fields the earlier report lacked.
    pub fn add(&self, tenant: &Tenant, c: ChangeEvent) -> Result<(String, bool), RcaError> {
        validate(&c)?;
        let id = change_id(tenant, &c);
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let old: Option<String> = tx
            .query_row("SELECT body FROM changes WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        let created = old.is_none();
        let merged = match old {
            None => c,
            Some(body) => merge(serde_json::from_str(&body).map_err(json_err)?, c),
        };
        // A version first seen in spans and now reported by its pipeline is one
        // change: the report replaces the inference and keeps what only the
        // spans knew.
        let mut merged = merged;
        for (other, body) in same_version(&tx, tenant, &merged.service, &merged.version, true)? {
            if other == id {
                continue;
            }
            let seen: ChangeEvent = serde_json::from_str(&body).map_err(json_err)?;
            merged.commit = merged.commit.or(seen.commit);
            merged.pr = merged.pr.or(seen.pr);
            merged.repository = merged.repository.or(seen.repository);
            tx.execute("DELETE FROM changes WHERE id = ?1", params![other]).map_err(db_err)?;
        }
        let body = serde_json::to_string(&merged).map_err(json_err)?;
        tx.execute(
            "INSERT INTO changes (id, tenant, service, deployed_at, body, inferred) VALUES (?1, ?2, ?3, ?4, ?5, 0)
             ON CONFLICT (id) DO UPDATE SET deployed_at = excluded.deployed_at, body = excluded.body, inferred = 0",
            params![id, tenant.as_str(), merged.service, time(merged.deployed_at), body],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok((id, created))
    }

    /// Records a version first seen in spans, unless that version of the service
    /// is already in the lineage (posted or inferred). Returns the new change's id.
    pub fn infer(&self, tenant: &Tenant, c: ChangeEvent) -> Result<Option<String>, RcaError> {
        validate(&c)?;
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        if !same_version(&tx, tenant, &c.service, &c.version, false)?.is_empty() {
            return Ok(None);
        }
        let id = change_id(tenant, &c);
        let body = serde_json::to_string(&c).map_err(json_err)?;
        tx.execute(
            "INSERT INTO changes (id, tenant, service, deployed_at, body, inferred) VALUES (?1, ?2, ?3, ?4, ?5, 1)
             ON CONFLICT (id) DO NOTHING",
            params![id, tenant.as_str(), c.service, time(c.deployed_at), body],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Some(id))
    }

    /// One change by id.
    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<StoredChange>, RcaError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT body, inferred FROM changes WHERE tenant = ?1 AND id = ?2",
                params![tenant.as_str(), id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        row.map(|(body, inferred)| {
            Ok(StoredChange {
                id: id.to_owned(),
                inferred: inferred != 0,
                change: serde_json::from_str(&body).map_err(json_err)?,
            })
        })
        .transpose()
    }

    /// Stores what enrichment filled in, keeping the change's id and origin.
    pub fn enriched(&self, tenant: &Tenant, id: &str, c: &ChangeEvent) -> Result<(), RcaError> {
        validate(c)?;
        let body = serde_json::to_string(c).map_err(json_err)?;
        self.conn()
            .execute("UPDATE changes SET body = ?3 WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id, body])
            .map_err(db_err)?;
        Ok(())
    }

    /// Changes of `tenant` (of every tenant when `None`), newest first.
    pub fn list(&self, tenant: Option<&Tenant>, f: &ChangeFilter) -> Result<Vec<(String, StoredChange)>, RcaError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT tenant, id, body, inferred FROM changes
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR service = ?2) AND (?3 IS NULL OR deployed_at >= ?3)
                 ORDER BY deployed_at DESC, id LIMIT 10000",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.map(Tenant::as_str), f.service, f.since.map(time)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (t, id, body, inferred) = row.map_err(db_err)?;
            out.push((
                t,
                StoredChange { id, inferred: inferred != 0, change: serde_json::from_str(&body).map_err(json_err)? },
            ));
        }
        Ok(out)
    }
}

/// The changes (id, body) of one version of a service, in any environment;
/// only inferred ones with `inferred_only`.
fn same_version(
    tx: &rusqlite::Transaction<'_>,
    tenant: &Tenant,
    service: &str,
    version: &str,
    inferred_only: bool,
) -> Result<Vec<(String, String)>, RcaError> {
    let mut st = tx
        .prepare("SELECT id, body FROM changes WHERE tenant = ?1 AND service = ?2 AND (?3 = 0 OR inferred = 1)")
        .map_err(db_err)?;
    let rows = st
        .query_map(params![tenant.as_str(), service, i64::from(inferred_only)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body) = row.map_err(db_err)?;
        let c: ChangeEvent = serde_json::from_str(&body).map_err(json_err)?;
        if c.version == version {
            out.push((id, body));
        }
    }
    Ok(out)
}

/// `old` updated by `new`: new values win, missing ones are kept, gates are
/// replaced by name and otherwise appended.
fn merge(mut old: ChangeEvent, new: ChangeEvent) -> ChangeEvent {
    old.deployed_at = new.deployed_at;
    old.commit = new.commit.or(old.commit);
    old.repository = new.repository.or(old.repository);
    old.pr = new.pr.or(old.pr);
    old.title = new.title.or(old.title);
    old.author = new.author.or(old.author);
    for g in new.gates {
        match old.gates.iter_mut().find(|o| o.name == g.name) {
            Some(o) => *o = g,
            None => old.gates.push(g),
        }
    }
    old
}

/// The `changes` table of `/api/v1/query`: one row per change, its gates as
/// JSON in `gates`.
#[derive(Debug)]
pub struct ChangesTable {
    pub db: Arc<ChangesDb>,
}

impl andon_store::ExtraTable for ChangesTable {
    fn name(&self) -> &str {
        "changes"
    }

    fn provider(
        &self,
        tenant: Option<&Tenant>,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>, andon_store::StoreError> {
        let rows = self
            .db
            .list(tenant, &ChangeFilter::default())
            .map_err(|e| andon_store::StoreError::Refused(e.to_string()))?;
        andon_store::RowsTable::new(&rows)
            .text("tenant", |(t, _)| t.clone())
            .text("id", |(_, c)| c.id.clone())
            .text("service", |(_, c)| c.change.service.clone())
            .text("version", |(_, c)| c.change.version.clone())
            .opt_text("environment", |(_, c)| c.change.environment.clone())
            .time("deployed_at", |(_, c)| c.change.deployed_at)
            .opt_text("commit", |(_, c)| c.change.commit.clone())
            .opt_text("repository", |(_, c)| c.change.repository.clone())
            .opt_int("pr", |(_, c)| c.change.pr.map(|p| p as i64))
            .opt_text("title", |(_, c)| c.change.title.clone())
            .opt_text("author", |(_, c)| c.change.author.clone())
            .text("gates", |(_, c)| serde_json::to_string(&c.change.gates).unwrap_or_default())
            .boolean("inferred", |(_, c)| c.inferred)
            .build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn change(json: serde_json::Value) -> ChangeEvent {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_same_deploy_reported_twice_is_one_change_with_both_reports() {
        let dir = tempfile::tempdir().unwrap();
        let db = ChangesDb::open(&dir.path().join("a.db")).unwrap();
        let t = Tenant::default_tenant();
        let first = change(serde_json::json!({
            "service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z",
            "commit": "9f8e7d6c5b4a", "gates": [{"name": "unit", "kind": "tests", "verdict": "pass"}]
        }));
        let (id, created) = db.add(&t, first).unwrap();
        assert!(created);
        let later = change(serde_json::json!({
            "service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z", "pr": 4417,
            "gates": [{"name": "perf", "kind": "perf", "verdict": "pass", "metrics": {"p95_delta_pct": 1.5}}]
        }));
        let (again, created) = db.add(&t, later).unwrap();
        assert_eq!((again.as_str(), created), (id.as_str(), false));
        let other =
            change(serde_json::json!({"service": "cart", "version": "2.0.0", "deployed_at": "2026-11-21T08:00:00Z"}));
        db.add(&t, other).unwrap();
        let all = db.list(Some(&t), &ChangeFilter::default()).unwrap();
        assert_eq!(all.len(), 2);
        let pricing = &all[0].1.change;
        assert_eq!((pricing.commit.as_deref(), pricing.pr), (Some("9f8e7d6c5b4a"), Some(4417)));
        assert_eq!(pricing.gates.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["unit", "perf"]);
        let since = DateTime::parse_from_rfc3339("2026-11-21T09:00:00Z").unwrap().with_timezone(&Utc);
        let f = ChangeFilter { service: None, since: Some(since) };
        assert_eq!(db.list(Some(&t), &f).unwrap().len(), 1);
        let f = ChangeFilter { service: Some("cart".into()), since: None };
        assert_eq!(db.list(Some(&t), &f).unwrap()[0].1.change.version, "2.0.0");
        // A version seen in spans first, then posted by its pipeline, is one change.
        let seen = change(serde_json::json!({
            "service": "cart", "version": "2.1.0", "deployed_at": "2026-11-21T10:00:05Z", "commit": "abcdef1234"
        }));
        let inferred = db.infer(&t, seen.clone()).unwrap().unwrap();
        assert_eq!(db.infer(&t, seen).unwrap(), None, "inferred once");
        assert!(
            db.list(Some(&t), &ChangeFilter::default()).unwrap().iter().any(|(_, c)| c.id == inferred && c.inferred)
        );
        let posted = change(serde_json::json!({
            "service": "cart", "version": "2.1.0", "environment": "production",
            "deployed_at": "2026-11-21T10:00:00Z", "pr": 88
        }));
        db.add(&t, posted).unwrap();
        let carts: Vec<_> = db
            .list(Some(&t), &ChangeFilter { service: Some("cart".into()), since: None })
            .unwrap()
            .into_iter()
            .filter(|(_, c)| c.change.version == "2.1.0")
            .collect();
        assert_eq!(carts.len(), 1, "{carts:?}");
        let c = &carts[0].1;
        assert!(!c.inferred);
        assert_eq!((c.change.commit.as_deref(), c.change.pr), (Some("abcdef1234"), Some(88)));
        // Another tenant's lineage is its own.
        assert!(db.list(Some(&Tenant::new("other").unwrap()), &ChangeFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn misleading_changes_are_refused() {
        let base = serde_json::json!({"service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z"});
        let with = |k: &str, v: serde_json::Value| {
            let mut j = base.clone();
            j[k] = v;
            change(j)
        };
        assert!(validate(&change(base.clone())).is_ok());
        for (c, needle) in [
            (with("service", "".into()), "service"),
            (with("commit", "not-a-sha".into()), "commit"),
            (with("repository", "just-a-name".into()), "repository"),
            (with("gates", serde_json::json!([{"name": " ", "kind": "perf", "verdict": "pass"}])), "gate"),
        ] {
            let e = validate(&c).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
