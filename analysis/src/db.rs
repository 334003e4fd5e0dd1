//! Findings in SQLite: one row per finding, `open` until the problem has not been
//! seen for `resolve_after_secs`. A pass that sees an open finding's problem
//! again (its fingerprint, or another account of it: see [`FindingsDb::record`])
//! updates that finding rather than adding another.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use andon_model::{Finding, FindingKind, FindingState, Tenant};
use andon_sqlite::time;
use chrono::{DateTime, Utc};
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

fn db_err(e: rusqlite::Error) -> AnalysisError {
    AnalysisError::Db(e.to_string())
}

/// Whether two segments can describe the same sessions: no attribute both fix
/// differs. `os.type=android` and `browser.mobile=true` overlap; `os.type=android`
/// and `os.type=ios` do not.
fn overlap(a: &BTreeMap<String, serde_json::Value>, b: &BTreeMap<String, serde_json::Value>) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// The open finding of `f`'s kind on `f`'s service and operation, under another
/// segment, that `f` is another account of (the first reported, when
/// several): one whose problem was on before `f`'s baseline ended (`f`'s
/// baseline holds it, so another segment standing out against it is that
/// problem again), or one whose segment overlaps `f`'s (two looks at the same
/// people a few passes apart).
fn another_account(
    tx: &rusqlite::Transaction<'_>,
    tenant: &Tenant,
    f: &Finding,
) -> Result<Option<Finding>, AnalysisError> {
    let mut st = tx
        .prepare(
            "SELECT body FROM findings WHERE tenant = ?1 AND kind = ?2 AND service = ?3 AND state = 'open'
             AND fingerprint != ?4 ORDER BY first_seen",
        )
        .map_err(db_err)?;
    let bodies: Vec<String> = st
        .query_map(params![tenant.as_str(), f.kind.as_str(), f.service, f.fingerprint], |r| r.get(0))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for body in bodies {
        let old: Finding = serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?;
        if old.operation == f.operation
            && (old.window.start < f.baseline_window.end || overlap(&old.segment, &f.segment))
        {
            return Ok(Some(old));
        }
    }
    Ok(None)
}

/// A later pass of an open problem whose account names no cause and no
/// change keeps the ones an earlier account named: once the baseline holds
/// the problem (a release serving on both sides), a pass can no longer see
/// what changed, which does not make the change any less the cause.
fn keep_cause(f: &mut Finding, old: &Finding) {
    if f.evidence.cause.is_some() || f.change.is_some() || (old.evidence.cause.is_none() && old.change.is_none()) {
        return;
    }
    f.evidence.cause = old.evidence.cause.clone();
    f.change = old.change.clone();
    if let Some(why) = old.evidence.details.get("cause_reason") {
        f.evidence.details.insert("cause_reason".into(), why.clone());
    }
}

impl FindingsDb {
    pub fn open(path: &Path) -> Result<Self, AnalysisError> {
        let conn = andon_sqlite::open(
            path,
            andon_sqlite::Sync::Normal,
            "CREATE TABLE IF NOT EXISTS findings (
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
        Ok(Self { conn })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        andon_sqlite::lock(&self.conn)
    }

    /// Records a pass's findings. A finding that is another account of an open
    /// one (the same fingerprint, or `another_account`) keeps that finding's
    /// id, fingerprint and first sighting, and either revises its segment and
    /// evidence or counts as a sighting of it; the findings are returned as
    /// stored.
    pub fn record(&self, tenant: &Tenant, findings: Vec<Finding>) -> Result<Vec<Finding>, AnalysisError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let mut out = Vec::with_capacity(findings.len());
        for mut f in findings {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT body FROM findings WHERE tenant = ?1 AND fingerprint = ?2 AND state = 'open'",
                    params![tenant.as_str(), f.fingerprint],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let same = existing.is_some();
            let account = match existing {
                Some(body) => Some(serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?),
                None => another_account(&tx, tenant, &f)?,
            };
            if let Some(mut old) = account {
                // Which account the finding gives. Of the same segment, the
                // later pass's, unless its window is shorter: a last minute's
                // account never replaces a whole window's. Of another segment
                // (while a problem grows, successive passes may name a
                // release, then the region it rolled out to, then mobile: one
                // problem, one finding and one ticket), the same, and only
                // from a pass whose baseline ended before the problem began:
                // a clean comparison whose window holds more of it. A pass
                // whose baseline holds the problem says where it stands out
                // against itself.
                let longer = f.window.end - f.window.start >= old.window.end - old.window.start;
                let clean = old.window.start >= f.baseline_window.end
                    || old.evidence.onset.is_some_and(|onset| f.baseline_window.end <= onset);
                let revise = longer && (same || clean);
                if revise && out.iter().any(|o: &Finding| o.id == old.id) {
                    // Another account of this pass already revised it.
                    continue;
                }
                if revise {
                    // The finding takes this account's segment and evidence,
                    // and keeps its id, fingerprint (and so its ticket) and
                    // first sighting.
                    f.id = old.id.clone();
                    f.fingerprint = old.fingerprint.clone();
                    f.first_seen = old.first_seen.min(f.first_seen);
                    f.last_seen = old.last_seen.max(f.last_seen);
                    keep_cause(&mut f, &old);
                } else {
                    // A sighting of the open finding.
                    old.last_seen = old.last_seen.max(f.last_seen);
                    tx.execute(
                        "UPDATE findings SET last_seen = ?1, body = ?2 WHERE id = ?3",
                        params![
                            time(old.last_seen),
                            serde_json::to_string(&old).map_err(|e| AnalysisError::Db(e.to_string()))?,
                            old.id
                        ],
                    )
                    .map_err(db_err)?;
                    if !out.iter().any(|o: &Finding| o.id == old.id) {
                        out.push(old);
                    }
                    continue;
                }
            } else {
                // A new problem: its id names the tenant, so the same fault in two
                // tenants (or a crafted one) never lands on one row.
                f.id = format!("f-{}", andon_model::finding::stable_id(&[tenant.as_str(), &f.id]));
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
        // A symptom reported on its own by an earlier pass (its cause was not
        // yet a finding then) is superseded once its cause's finding links it.
        for f in &out {
            for l in &f.evidence.linked {
                let open: Vec<(String, String)> = {
                    let mut st = tx
                        .prepare(
                            "SELECT id, body FROM findings
                             WHERE tenant = ?1 AND kind = ?2 AND service = ?3 AND state = 'open' AND id != ?4",
                        )
                        .map_err(db_err)?;
                    st.query_map(params![tenant.as_str(), l.kind.as_str(), l.service, f.id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(db_err)?
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?
                };
                for (id, body) in open {
                    let mut old: Finding = serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?;
                    // The same symptom, or the same operation under another
                    // segment whose cause was already named as this finding's
                    // site (the symptom seen in a subset first).
                    let same_cause = old
                        .evidence
                        .cause
                        .as_ref()
                        .is_some_and(|c| c.service == f.service && c.operation == f.operation);
                    if old.operation != l.operation
                        || (old.segment != l.segment && !same_cause)
                        || out.iter().any(|o| o.id == id)
                    {
                        continue;
                    }
                    old.state = FindingState::Resolved;
                    old.evidence.details.insert("superseded_by".into(), serde_json::Value::from(f.id.clone()));
                    let body = serde_json::to_string(&old).map_err(|e| AnalysisError::Db(e.to_string()))?;
                    tx.execute("UPDATE findings SET state = 'resolved', body = ?2 WHERE id = ?1", params![id, body])
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Resolves open findings last seen before `cutoff`; returns how many.
    pub fn resolve_stale(&self, tenant: &Tenant, cutoff: DateTime<Utc>) -> Result<usize, AnalysisError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
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

    /// Resolves the open findings among `ids` (their ticket's issue was
    /// closed); returns how many changed.
    pub fn resolve_ids(&self, tenant: &Tenant, ids: &[String]) -> Result<usize, AnalysisError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let mut n = 0;
        for id in ids {
            let body: Option<String> = tx
                .query_row(
                    "SELECT body FROM findings WHERE tenant = ?1 AND id = ?2 AND state = 'open'",
                    params![tenant.as_str(), id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(body) = body else { continue };
            let mut f: Finding = serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?;
            f.state = FindingState::Resolved;
            let body = serde_json::to_string(&f).map_err(|e| AnalysisError::Db(e.to_string()))?;
            tx.execute("UPDATE findings SET state = 'resolved', body = ?2 WHERE id = ?1", params![id, body])
                .map_err(db_err)?;
            n += 1;
        }
        tx.commit().map_err(db_err)?;
        Ok(n)
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
        let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(0)).map_err(db_err)?;
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

/// The `findings` table of `/api/v1/query`: one row per finding, its evidence
/// as JSON in `body`.
#[derive(Debug)]
pub struct FindingsTable {
    pub db: std::sync::Arc<FindingsDb>,
}

impl FindingsDb {
    /// Every finding of `tenant` (of every tenant when `None`), with its tenant.
    pub fn all(&self, tenant: Option<&Tenant>) -> Result<Vec<(String, Finding)>, AnalysisError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT tenant, body FROM findings WHERE ?1 IS NULL OR tenant = ?1 ORDER BY last_seen")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant.map(Tenant::as_str)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (t, body) = row.map_err(db_err)?;
            out.push((t, serde_json::from_str(&body).map_err(|e| AnalysisError::Db(e.to_string()))?));
        }
        Ok(out)
    }
}

impl andon_store::ExtraTable for FindingsTable {
    fn name(&self) -> &str {
        "findings"
    }

    fn provider(
        &self,
        tenant: Option<&Tenant>,
    ) -> Result<std::sync::Arc<dyn datafusion::catalog::TableProvider>, andon_store::StoreError> {
        let rows = self.db.all(tenant).map_err(|e| andon_store::StoreError::Refused(e.to_string()))?;
        andon_store::RowsTable::new(&rows)
            .text("tenant", |(t, _)| t.clone())
            .text("id", |(_, f)| f.id.clone())
            .text("fingerprint", |(_, f)| f.fingerprint.clone())
            .text("kind", |(_, f)| f.kind.as_str().to_owned())
            .text("service", |(_, f)| f.service.clone())
            .text("operation", |(_, f)| f.operation.clone())
            .text("segment", |(_, f)| serde_json::to_string(&f.segment).unwrap_or_default())
            .text("state", |(_, f)| f.state.as_str().to_owned())
            .text("severity", |(_, f)| f.severity.as_str().to_owned())
            .float("p_value", |(_, f)| f.p_value)
            .float("effect", |(_, f)| f.effect)
            .float("impact", |(_, f)| f.impact)
            .int("affected_sessions", |(_, f)| f.affected.sessions as i64)
            .int("affected_requests", |(_, f)| f.affected.requests as i64)
            .text("summary", |(_, f)| f.summary.clone())
            .time("window_start", |(_, f)| f.window.start)
            .time("window_end", |(_, f)| f.window.end)
            .time("first_seen", |(_, f)| f.first_seen)
            .time("last_seen", |(_, f)| f.last_seen)
            .opt_text("change_version", |(_, f)| f.change.as_ref().map(|c| c.version.clone()))
            .opt_text("change_commit", |(_, f)| f.change.as_ref().and_then(|c| c.commit.clone()))
            .opt_int("change_pr", |(_, f)| f.change.as_ref().and_then(|c| c.pr).map(|p| p as i64))
            .text("query", |(_, f)| f.evidence.query.clone())
            .text("body", |(_, f)| serde_json::to_string(f).unwrap_or_default())
            .build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use andon_model::{Affected, Evidence, Severity, TimeWindow, Trouble, Wording};
    use chrono::TimeZone;

    use super::*;

    fn finding(seen: i64, service: &str) -> Finding {
        let t = Utc.timestamp_opt(seen, 0).unwrap();
        let fingerprint = Finding::fingerprint_of(FindingKind::Retry, service, "POST /cart/items", &BTreeMap::new());
        Finding {
            id: format!("{fingerprint}-{seen}"),
            fingerprint,
            kind: FindingKind::Retry,
            service: service.into(),
            operation: "POST /cart/items".into(),
            segment: BTreeMap::new(),
            window: TimeWindow { start: t, end: t },
            baseline_window: TimeWindow { start: t, end: t },
            baseline: BTreeMap::new(),
            current: BTreeMap::new(),
            p_value: 1e-9,
            effect: 0.2,
            affected: Affected { requests: 10, sessions: 5 },
            impact: 20.0,
            severity: Severity::High,
            summary: "s".into(),
            wording: Wording::default(),
            trouble: Trouble::Failures,
            evidence: Evidence::default(),
            change: None,
            state: FindingState::Open,
            first_seen: t,
            last_seen: t,
            run_id: None,
        }
    }

    #[test]
    fn another_segment_against_a_baseline_that_holds_an_open_problem_is_that_problem() {
        let dir = tempfile::tempdir().unwrap();
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        let t = Tenant::default_tenant();
        let at = |s: i64| Utc.timestamp_opt(s, 0).unwrap();
        let with_segment = |seen: i64, value: &str, window: (i64, i64), baseline: (i64, i64)| {
            let mut f = finding(seen, "frontend");
            f.segment.insert("os.type".into(), serde_json::json!(value));
            f.fingerprint = Finding::fingerprint_of(f.kind, &f.service, &f.operation, &f.segment);
            f.id = format!("{}-{seen}", f.fingerprint);
            f.window = TimeWindow { start: at(window.0), end: at(window.1) };
            f.baseline_window = TimeWindow { start: at(baseline.0), end: at(baseline.1) };
            f
        };
        // Android sessions fail from 1000; a pass at 1600 reports it.
        let first = db.record(&t, vec![with_segment(1600, "android", (1000, 1600), (0, 1000))]).unwrap();
        // Hours later the baseline (to 5000) holds the problem, and Windows
        // sessions stand out against it: the same problem, seen again.
        let later = db.record(&t, vec![with_segment(5600, "windows", (5000, 5600), (0, 5000))]).unwrap();
        assert_eq!(later[0].id, first[0].id);
        assert_eq!(later[0].segment["os.type"], "android");
        assert_eq!(later[0].last_seen.timestamp(), 5600);
        assert_eq!(db.list(&t, &FindingFilter::default()).unwrap().len(), 1);
        // A segment whose baseline ended before the open problem began is news.
        let mut other = Tenant::new("other").unwrap();
        db.record(&other, vec![with_segment(1600, "android", (1000, 1600), (0, 1000))]).unwrap();
        let news = db.record(&other, vec![with_segment(1500, "ios", (900, 1500), (0, 900))]).unwrap();
        assert_eq!(news[0].segment["os.type"], "ios");
        assert_eq!(db.list(&other, &FindingFilter::default()).unwrap().len(), 2);
        other = t;
        assert_eq!(db.list(&other, &FindingFilter::default()).unwrap().len(), 1);

        // A problem that began near the end of the first reporting pass's
        // window (at 1450): that pass saw only its start, in Android sessions.
        let third = Tenant::new("third").unwrap();
        let mut start = with_segment(1600, "android", (1000, 1600), (0, 1000));
        start.evidence.onset = Some(at(1450));
        let start = db.record(&third, vec![start]).unwrap().remove(0);
        // A pass whose baseline ended before the onset, with more of the
        // problem in its window, finds it for everyone: the finding says so.
        let mut everyone = finding(1700, "frontend");
        everyone.window = TimeWindow { start: at(1100), end: at(1700) };
        everyone.baseline_window = TimeWindow { start: at(500), end: at(1100) };
        let revised = db.record(&third, vec![everyone]).unwrap().remove(0);
        assert_eq!(
            (revised.id.as_str(), revised.fingerprint.as_str()),
            (start.id.as_str(), start.fingerprint.as_str())
        );
        assert!(revised.segment.is_empty(), "{:?}", revised.segment);
        assert_eq!((revised.first_seen.timestamp(), revised.last_seen.timestamp()), (1600, 1700));
        // A later pass whose baseline holds the problem does not change it again.
        let skewed = db.record(&third, vec![with_segment(2200, "ios", (1600, 2200), (1000, 1600))]).unwrap();
        assert_eq!(skewed[0].id, start.id);
        assert!(db.get(&third, &start.id).unwrap().unwrap().segment.is_empty());
        assert_eq!(db.list(&third, &FindingFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn accounts_of_one_problem_in_overlapping_segments_are_one_finding() {
        let dir = tempfile::tempdir().unwrap();
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        let t = Tenant::default_tenant();
        let at = |s: i64| Utc.timestamp_opt(s, 0).unwrap();
        // Payments fail from 9,950; passes a minute apart report it, each
        // with a 30-minute window (or the last minute) after a baseline.
        let account = |end: i64, window: i64, segment: &[(&str, serde_json::Value)]| {
            let mut f = finding(end, "payments");
            f.segment = segment.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            f.fingerprint = Finding::fingerprint_of(f.kind, &f.service, &f.operation, &f.segment);
            f.id = format!("{}-{end}", f.fingerprint);
            f.window = TimeWindow { start: at(end - window), end: at(end) };
            f.baseline_window = TimeWindow { start: at(0), end: at(end - 1800) };
            f.evidence.onset = Some(at(9_950));
            f
        };
        let version = |v: &str| ("service.version", serde_json::json!(v));
        let region = |r: &str| ("cloud.region", serde_json::json!(r));
        let mobile = ("browser.mobile", serde_json::json!(true));
        // The last minute names the release; the next passes' whole windows
        // name the region it runs in, then mobile sessions there, then mobile.
        let first = db.record(&t, vec![account(10_000, 60, &[version("3.5.0")])]).unwrap().remove(0);
        let region_account = db.record(&t, vec![account(10_060, 1800, &[region("us-east-1")])]).unwrap().remove(0);
        assert_eq!(region_account.id, first.id);
        assert_eq!(region_account.fingerprint, first.fingerprint, "the ticket stays the same one");
        assert_eq!(region_account.segment["cloud.region"], "us-east-1", "the whole window's account");
        assert_eq!(region_account.first_seen.timestamp(), 10_000);
        // A last minute's account does not replace a whole window's: a sighting.
        let minute = db.record(&t, vec![account(10_120, 60, &[version("3.5.0")])]).unwrap().remove(0);
        assert_eq!(minute.id, first.id);
        assert_eq!(minute.segment["cloud.region"], "us-east-1");
        assert_eq!(minute.last_seen.timestamp(), 10_120);
        let narrower = db.record(&t, vec![account(10_180, 1800, &[mobile.clone(), region("us-east-1")])]).unwrap();
        let wider = db.record(&t, vec![account(10_240, 1800, std::slice::from_ref(&mobile))]).unwrap().remove(0);
        assert_eq!((narrower[0].id.as_str(), wider.id.as_str()), (first.id.as_str(), first.id.as_str()));
        assert_eq!(wider.segment, BTreeMap::from([("browser.mobile".to_owned(), serde_json::json!(true))]));
        assert_eq!((wider.first_seen.timestamp(), wider.last_seen.timestamp()), (10_000, 10_240));
        // The next pass reporting the same account finds it by the fingerprint
        // it was first reported with.
        let again = db.record(&t, vec![account(10_300, 1800, std::slice::from_ref(&mobile))]).unwrap().remove(0);
        assert_eq!(again.id, first.id);
        assert_eq!(db.list(&t, &FindingFilter::default()).unwrap().len(), 1);
        // Once a pass's baseline holds the problem (it ends after the onset),
        // another segment standing out against it is a sighting.
        let skewed = db.record(&t, vec![account(11_800, 1800, &[region("eu-west-1")])]).unwrap().remove(0);
        assert_eq!(skewed.id, first.id);
        assert_eq!(skewed.segment, again.segment);
        assert_eq!(skewed.last_seen.timestamp(), 11_800);
        // Other people (desktop sessions) failing the same way, seen by a pass
        // whose baseline was clean, are another problem; so is another
        // operation.
        let mut desktop = account(10_360, 1800, &[("browser.mobile", serde_json::json!(false))]);
        desktop.baseline_window.end = at(8_000);
        assert_ne!(db.record(&t, vec![desktop]).unwrap()[0].id, first.id);
        let mut elsewhere = account(11_800, 1800, &[mobile]);
        elsewhere.operation = "GET /v1/cards".into();
        elsewhere.fingerprint =
            Finding::fingerprint_of(elsewhere.kind, "payments", "GET /v1/cards", &elsewhere.segment);
        assert_ne!(db.record(&t, vec![elsewhere]).unwrap()[0].id, first.id);
        assert_eq!(db.list(&t, &FindingFilter::default()).unwrap().len(), 3);
    }

    #[test]
    fn a_later_pass_that_cannot_see_the_cause_keeps_the_one_named_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        let t = Tenant::default_tenant();
        let mut first = finding(1000, "gateway");
        first.evidence.cause =
            Some(andon_model::ServiceOperation { service: "rates".into(), operation: "GET /quote".into() });
        first.evidence.details.insert("cause_reason".into(), "rates 0.9.5 is new".into());
        first.change = Some(andon_model::ChangeRef {
            service: "rates".into(),
            version: "0.9.5".into(),
            commit: None,
            pr: Some(212),
            first_seen: None,
        });
        db.record(&t, vec![first]).unwrap();
        // The next pass's baseline holds the release: it names nothing.
        let later = db.record(&t, vec![finding(1100, "gateway")]).unwrap().remove(0);
        assert_eq!(later.evidence.cause.as_ref().map(|c| c.service.as_str()), Some("rates"));
        assert_eq!(later.change.as_ref().map(|c| c.version.as_str()), Some("0.9.5"));
        assert_eq!(later.evidence.details["cause_reason"], "rates 0.9.5 is new");
        // One that names a cause of its own is taken as it is.
        let mut own = finding(1200, "gateway");
        own.evidence.cause =
            Some(andon_model::ServiceOperation { service: "rooms".into(), operation: "GET /r".into() });
        let own = db.record(&t, vec![own]).unwrap().remove(0);
        assert_eq!(own.evidence.cause.as_ref().map(|c| c.service.as_str()), Some("rooms"));
        assert!(own.change.is_none());
    }

    #[test]
    fn the_same_problem_seen_at_the_same_time_in_two_tenants_is_two_findings() {
        let dir = tempfile::tempdir().unwrap();
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        let (a, b) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let fa = db.record(&a, vec![finding(1000, "frontend")]).unwrap();
        let mut other = finding(1000, "frontend");
        other.summary = "b's".into();
        let fb = db.record(&b, vec![other]).unwrap();
        assert_ne!(fa[0].id, fb[0].id);
        assert_eq!(db.get(&a, &fa[0].id).unwrap().unwrap().summary, "s", "b's pass did not overwrite a's finding");
        assert_eq!(db.get(&b, &fb[0].id).unwrap().unwrap().summary, "b's");
        assert!(db.get(&b, &fa[0].id).unwrap().is_none());
    }

    #[test]
    fn a_recurring_finding_keeps_its_id_until_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        let t = Tenant::default_tenant();
        let first = db.record(&t, vec![finding(1000, "frontend")]).unwrap();
        let again = db.record(&t, vec![finding(2000, "frontend")]).unwrap();
        assert_eq!(first[0].id, again[0].id);
        assert_eq!(again[0].first_seen.timestamp(), 1000);
        assert_eq!(again[0].last_seen.timestamp(), 2000);
        db.record(&t, vec![finding(5000, "cart")]).unwrap();
        // Another tenant's findings are its own.
        let other = Tenant::new("other").unwrap();
        db.record(&other, vec![finding(5000, "frontend")]).unwrap();
        assert_eq!(db.list(&t, &FindingFilter::default()).unwrap().len(), 2);

        assert_eq!(db.resolve_stale(&t, Utc.timestamp_opt(3000, 0).unwrap()).unwrap(), 1);
        let open = FindingFilter { state: Some(FindingState::Open), ..Default::default() };
        let open = db.list(&t, &open).unwrap();
        assert_eq!(open.iter().map(|f| f.service.as_str()).collect::<Vec<_>>(), ["cart"]);
        let resolved = db.get(&t, &first[0].id).unwrap().unwrap();
        assert_eq!(resolved.state, FindingState::Resolved);
        // Seen again after it was resolved: a new finding, not the old one reopened.
        let back = db.record(&t, vec![finding(6000, "frontend")]).unwrap();
        assert_ne!(back[0].id, first[0].id);
        // Reopening the database keeps everything.
        drop(db);
        let db = FindingsDb::open(&dir.path().join("a.db")).unwrap();
        assert_eq!(db.list(&t, &FindingFilter::default()).unwrap().len(), 3);
        assert_eq!(db.all(None).unwrap().len(), 4);
        // A symptom reported alone is superseded when its cause's finding links it.
        let symptom = db.record(&t, vec![finding(7000, "catalog")]).unwrap().remove(0);
        let mut cause = finding(7100, "pricing");
        cause.evidence.linked.push(andon_model::LinkedFinding {
            kind: symptom.kind,
            service: "catalog".into(),
            operation: symptom.operation.clone(),
            segment: BTreeMap::new(),
            summary: "s".into(),
            p_value: 1e-9,
            why: "waits on pricing".into(),
        });
        db.record(&t, vec![cause]).unwrap();
        let gone = db.get(&t, &symptom.id).unwrap().unwrap();
        assert_eq!(gone.state, FindingState::Resolved);
        assert!(gone.evidence.details.contains_key("superseded_by"));
        // A symptom first seen in one segment, whose cause it already named, is
        // superseded when that cause's finding links the symptom for everyone;
        // one that named no such cause stays: it may be another problem.
        let in_segment = |seen: i64, service: &str, cause: Option<&str>| {
            let mut f = finding(seen, service);
            f.segment.insert("browser.mobile".into(), serde_json::json!(true));
            f.fingerprint = Finding::fingerprint_of(f.kind, &f.service, &f.operation, &f.segment);
            f.id = format!("{}-{seen}", f.fingerprint);
            f.evidence.cause = cause
                .map(|c| andon_model::ServiceOperation { service: c.into(), operation: "POST /cart/items".into() });
            f
        };
        let named = db.record(&t, vec![in_segment(8000, "gateway", Some("orders"))]).unwrap().remove(0);
        let unnamed = db.record(&t, vec![in_segment(8000, "edge", None)]).unwrap().remove(0);
        let mut cause = finding(8100, "orders");
        for symptom in ["gateway", "edge"] {
            cause.evidence.linked.push(andon_model::LinkedFinding {
                kind: named.kind,
                service: symptom.into(),
                operation: named.operation.clone(),
                segment: BTreeMap::new(),
                summary: "s".into(),
                p_value: 1e-9,
                why: "waits on orders".into(),
            });
        }
        let cause = db.record(&t, vec![cause]).unwrap().remove(0);
        let named = db.get(&t, &named.id).unwrap().unwrap();
        assert_eq!(named.state, FindingState::Resolved);
        assert_eq!(named.evidence.details["superseded_by"], serde_json::json!(cause.id));
        assert_eq!(db.get(&t, &unnamed.id).unwrap().unwrap().state, FindingState::Open);
        // Closing a ticket resolves its findings by id, once.
        let ids = vec![back[0].id.clone(), "no-such-finding".to_owned()];
        assert_eq!(db.resolve_ids(&t, &ids).unwrap(), 1);
        assert_eq!(db.resolve_ids(&t, &ids).unwrap(), 0);
        assert_eq!(db.get(&t, &back[0].id).unwrap().unwrap().state, FindingState::Resolved);
    }
}
