//! The flight recorder: every run of an agent (an RCA, an investigation) as a
//! DAG of steps in `andon.db`, each step with its parents and the SHA-256 of
//! its input and output. Inputs and outputs are stored once per content
//! (`run_blobs`), so a query a hundred runs asked is kept once. What a run
//! recorded can be read back ([`RunsDb::get`], [`RunsDb::recorded`]) and
//! replayed by whoever knows how to re-execute its steps. Runs past the
//! retention are pruned with the blobs no run still uses.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use andon_model::agent::{canonical_json, sha256_hex};
use andon_model::{Run, RunStep, Tenant};
use andon_sqlite::{lock, parse_time, time};
use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::AnalysisError;

fn db_err(e: rusqlite::Error) -> AnalysisError {
    AnalysisError::Db(format!("runs: {e}"))
}

/// How much the recorder keeps.
#[derive(Debug, Clone, Copy)]
pub struct RecorderLimits {
    /// Runs older than this are pruned with their steps.
    pub retention: Duration,
    /// A larger input or output is kept as its hash and size only (its step
    /// cannot be replayed).
    pub max_blob_bytes: usize,
}

impl Default for RecorderLimits {
    fn default() -> Self {
        Self { retention: Duration::days(30), max_blob_bytes: 1 << 20 }
    }
}

#[derive(Debug)]
pub struct RunsDb {
    conn: Mutex<Connection>,
    limits: RecorderLimits,
}

/// A recorded step with what went in and came out (`None` when it was over
/// the size limit).
#[derive(Debug, Clone)]
pub struct RecordedStep {
    pub step: RunStep,
    pub input: Option<Value>,
    pub output: Option<Value>,
    /// Whether the stored input's bytes still hash to `step.input_sha256`.
    pub input_intact: bool,
    pub output_intact: bool,
}

impl RunsDb {
    pub fn open(path: &Path, limits: RecorderLimits) -> Result<Self, AnalysisError> {
        let conn = andon_sqlite::open(
            path,
            andon_sqlite::Sync::Normal,
            "CREATE TABLE IF NOT EXISTS runs (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 subject TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 ended_at TEXT
             );
             CREATE INDEX IF NOT EXISTS runs_tenant ON runs (tenant, started_at);
             CREATE TABLE IF NOT EXISTS run_steps (
                 run_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 id TEXT NOT NULL,
                 parents TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 name TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 ended_at TEXT NOT NULL,
                 input_sha256 TEXT NOT NULL,
                 output_sha256 TEXT NOT NULL,
                 summary TEXT NOT NULL,
                 PRIMARY KEY (run_id, seq)
             );
             CREATE TABLE IF NOT EXISTS run_blobs (
                 sha256 TEXT PRIMARY KEY,
                 bytes INTEGER NOT NULL,
                 body BLOB
             );",
        )
        .map_err(db_err)?;
        Ok(Self { conn, limits })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Starts a run of `kind` about `subject`.
    pub fn begin(self: &Arc<Self>, tenant: &Tenant, kind: &str, subject: &str) -> Recording {
        let now = Utc::now();
        let id = format!(
            "run-{}",
            andon_model::finding::stable_id(&[
                tenant.as_str(),
                kind,
                subject,
                &now.timestamp_nanos_opt().unwrap_or(0).to_string()
            ])
        );
        let subject: String = subject.chars().take(500).collect();
        if let Err(e) = self.conn().execute(
            "INSERT INTO runs (id, tenant, kind, subject, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, tenant.as_str(), kind, subject, time(now)],
        ) {
            tracing::warn!(error = %e, "flight recorder could not start a run");
        }
        Recording { db: Arc::clone(self), id, seq: AtomicU32::new(0) }
    }

    /// Stores `v` by its hash (once) and returns the hash.
    fn put(&self, conn: &Connection, v: &Value) -> rusqlite::Result<String> {
        let bytes = canonical_json(v);
        let sha = sha256_hex(&bytes);
        let body = (bytes.len() <= self.limits.max_blob_bytes).then_some(&bytes);
        conn.execute(
            "INSERT INTO run_blobs (sha256, bytes, body) VALUES (?1, ?2, ?3) ON CONFLICT (sha256) DO NOTHING",
            params![sha, bytes.len() as i64, body],
        )?;
        Ok(sha)
    }

    /// Writes step `seq` of `run`, ending now, with its content.
    fn insert_step(&self, tx: &Connection, run: &str, seq: u32, s: &StepRecord<'_>) -> rusqlite::Result<()> {
        let input = self.put(tx, s.input)?;
        let output = self.put(tx, s.output)?;
        tx.execute(
            "INSERT INTO run_steps (run_id, seq, id, parents, kind, name, started_at, ended_at,
                                    input_sha256, output_sha256, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                run,
                seq,
                format!("s{seq}"),
                json!(s.parents).to_string(),
                s.kind,
                s.name,
                time(s.started_at),
                time(Utc::now()),
                input,
                output,
                s.summary
            ],
        )?;
        Ok(())
    }

    /// Appends a step to a run that `tenant` has, after its latest step
    /// (its parent); returns the step's id, or `None` when there is no such
    /// run.
    pub fn append(
        &self,
        tenant: &Tenant,
        run: &str,
        step: andon_model::LoggedStep,
    ) -> Result<Option<String>, AnalysisError> {
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        let known: Option<i64> = tx
            .query_row(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM run_steps WHERE run_id = ?1) FROM runs
                 WHERE id = ?1 AND tenant = ?2",
                params![run, tenant.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let Some(last) = known else { return Ok(None) };
        let parents: Vec<String> = if last > 0 { vec![format!("s{last}")] } else { Vec::new() };
        let seq = last as u32 + 1;
        let record = StepRecord {
            kind: &step.kind,
            name: &step.name,
            parents: &parents,
            started_at: Utc::now(),
            input: &step.input,
            output: &step.output,
            summary: step.summary,
        };
        self.insert_step(&tx, run, seq, &record).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Some(format!("s{seq}")))
    }

    /// The content stored under `sha`, when it was kept.
    pub fn blob(&self, sha: &str) -> Result<Option<Value>, AnalysisError> {
        Ok(self.blob_bytes(sha)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn blob_bytes(&self, sha: &str) -> Result<Option<Vec<u8>>, AnalysisError> {
        let body: Option<Option<Vec<u8>>> = self
            .conn()
            .query_row("SELECT body FROM run_blobs WHERE sha256 = ?1", [sha], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        Ok(body.flatten())
    }

    /// A run with its steps, when `tenant` (any tenant when `None`) has it.
    pub fn get(&self, tenant: Option<&Tenant>, id: &str) -> Result<Option<Run>, AnalysisError> {
        Ok(self.runs(tenant, Some(id), 1)?.pop().map(|(_, run)| run))
    }

    /// Every run of `tenant` (all tenants when `None`), newest first, with
    /// its tenant and its steps.
    pub fn list(&self, tenant: Option<&Tenant>, limit: usize) -> Result<Vec<(String, Run)>, AnalysisError> {
        self.runs(tenant, None, limit)
    }

    fn runs(
        &self,
        tenant: Option<&Tenant>,
        id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Run)>, AnalysisError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT tenant, id, kind, subject, started_at, ended_at FROM runs
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR id = ?2)
                 ORDER BY started_at DESC LIMIT ?3",
            )
            .map_err(db_err)?;
        let runs = st
            .query_map(params![tenant.map(Tenant::as_str), id, limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Run {
                        id: r.get(1)?,
                        kind: r.get(2)?,
                        subject: r.get(3)?,
                        started_at: parse_time(&r.get::<_, String>(4)?),
                        ended_at: r.get::<_, Option<String>>(5)?.map(|t| parse_time(&t)),
                        steps: Vec::new(),
                    },
                ))
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        drop(st);
        runs.into_iter()
            .map(|(t, mut run)| {
                run.steps = steps_of(&conn, &run.id).map_err(db_err)?;
                Ok((t, run))
            })
            .collect()
    }

    /// A run's steps with their recorded inputs and outputs, for a replay.
    pub fn recorded(
        &self,
        tenant: Option<&Tenant>,
        id: &str,
    ) -> Result<Option<(Run, Vec<RecordedStep>)>, AnalysisError> {
        let Some(run) = self.get(tenant, id)? else { return Ok(None) };
        let mut out = Vec::with_capacity(run.steps.len());
        // The stored bytes are what was hashed: checked as they are, before
        // any parsing.
        let read = |sha: &str| -> Result<(Option<Value>, bool), AnalysisError> {
            Ok(match self.blob_bytes(sha)? {
                Some(b) => (serde_json::from_slice(&b).ok(), sha256_hex(&b) == sha),
                None => (None, true),
            })
        };
        for step in &run.steps {
            let (input, input_intact) = read(&step.input_sha256)?;
            let (output, output_intact) = read(&step.output_sha256)?;
            out.push(RecordedStep { step: step.clone(), input, output, input_intact, output_intact });
        }
        Ok(Some((run, out)))
    }

    /// Drops runs that started before `now - retention`, their steps, and the
    /// blobs no remaining step refers to. Returns the runs dropped.
    pub fn prune(&self, now: DateTime<Utc>) -> Result<usize, AnalysisError> {
        let cutoff = time(now - self.limits.retention);
        let mut conn = self.conn();
        let tx = andon_sqlite::write(&mut conn).map_err(db_err)?;
        tx.execute("DELETE FROM run_steps WHERE run_id IN (SELECT id FROM runs WHERE started_at < ?1)", [&cutoff])
            .map_err(db_err)?;
        let n = tx.execute("DELETE FROM runs WHERE started_at < ?1", [&cutoff]).map_err(db_err)?;
        if n > 0 {
            tx.execute(
                "DELETE FROM run_blobs WHERE sha256 NOT IN (SELECT input_sha256 FROM run_steps)
                   AND sha256 NOT IN (SELECT output_sha256 FROM run_steps)",
                [],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n)
    }
}

fn steps_of(conn: &Connection, run: &str) -> rusqlite::Result<Vec<RunStep>> {
    let mut st = conn.prepare_cached(
        "SELECT id, parents, kind, name, started_at, ended_at, input_sha256, output_sha256, summary
         FROM run_steps WHERE run_id = ?1 ORDER BY seq",
    )?;
    st.query_map([run], |r| {
        Ok(RunStep {
            id: r.get(0)?,
            parents: serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or_default(),
            kind: r.get(2)?,
            name: r.get(3)?,
            started_at: parse_time(&r.get::<_, String>(4)?),
            ended_at: parse_time(&r.get::<_, String>(5)?),
            input_sha256: r.get(6)?,
            output_sha256: r.get(7)?,
            summary: r.get(8)?,
        })
    })?
    .collect()
}

impl andon_model::RunLog for RunsDb {
    fn append(&self, tenant: &Tenant, run_id: &str, step: andon_model::LoggedStep) {
        let name = step.name.clone();
        if let Err(e) = RunsDb::append(self, tenant, run_id, step) {
            tracing::warn!(run = run_id, step = name, error = %e, "flight recorder could not append a step");
        }
    }
}

/// One run being recorded. Recording never stops the work it records: a
/// step that cannot be written is logged and skipped.
#[derive(Debug)]
pub struct Recording {
    db: Arc<RunsDb>,
    id: String,
    seq: AtomicU32,
}

/// A step to record.
#[derive(Debug)]
pub struct StepRecord<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub parents: &'a [String],
    pub started_at: DateTime<Utc>,
    pub input: &'a Value,
    pub output: &'a Value,
    pub summary: String,
}

impl Recording {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records a step that ends now; returns its id.
    pub fn step(&self, s: StepRecord<'_>) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("s{seq}");
        let write = || -> rusqlite::Result<()> {
            let mut conn = self.db.conn();
            let tx = andon_sqlite::write(&mut conn)?;
            self.db.insert_step(&tx, &self.id, seq, &s)?;
            tx.commit()
        };
        if let Err(e) = write() {
            tracing::warn!(run = self.id, step = id, error = %e, "flight recorder could not record a step");
        }
        id
    }

    /// Marks the run ended.
    pub fn finish(&self) {
        if let Err(e) =
            self.db.conn().execute("UPDATE runs SET ended_at = ?2 WHERE id = ?1", params![self.id, time(Utc::now())])
        {
            tracing::warn!(run = self.id, error = %e, "flight recorder could not end a run");
        }
    }
}

/// A step of a replay that did not come out as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    pub step: String,
    pub name: String,
    pub reason: String,
}

/// What a replay found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayReport {
    pub run_id: String,
    /// Steps re-executed and compared.
    pub replayed: usize,
    /// Model steps, taken from their recorded responses.
    pub from_recording: usize,
    pub differences: Vec<Difference>,
}

/// Checks that each recorded input and output still has the hash recorded
/// for it; a step whose content was altered is a difference.
pub fn check_integrity(steps: &[RecordedStep], report: &mut ReplayReport) {
    for s in steps {
        for (what, intact, sha) in
            [("input", s.input_intact, &s.step.input_sha256), ("output", s.output_intact, &s.step.output_sha256)]
        {
            if !intact {
                report.differences.push(Difference {
                    step: s.step.id.clone(),
                    name: s.step.name.clone(),
                    reason: format!("the recorded {what} no longer has the hash recorded for it ({sha})"),
                });
            }
        }
    }
}

/// Where two values differ, as paths (`findings[0].evidence.onset`), at
/// most 8 of them.
pub fn diff_paths(now: &Value, then: &Value, at: &str, out: &mut Vec<String>) {
    if out.len() >= 8 || same_content(now, then) {
        return;
    }
    match (now, then) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff_paths(x, y, &format!("{at}.{k}"), out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_paths(x, y, &format!("{at}[{i}]"), out);
            }
        }
        _ => out.push(format!("{at} now {} (recorded {})", short(now), short(then))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s }
}

/// Whether `now`, as the recorder would store it, is `then` as read back
/// from the recording (both through the same bytes, so a float's last digit
/// does not tell them apart).
pub fn same_content(now: &Value, then: &Value) -> bool {
    let now: Value = serde_json::from_slice(&canonical_json(now)).unwrap_or(Value::Null);
    canonical_json(&now) == canonical_json(then)
}

/// A detection pass's windows as its run records them.
pub fn pass_input(mode: &str, w: &crate::Windows, settled: Option<DateTime<Utc>>) -> Value {
    json!({
        "mode": mode,
        "baseline_start": w.baseline_start, "baseline_end": w.baseline_end, "split": w.split, "end": w.end,
        "settled": settled,
    })
}

/// [`pass_input`] read back: the mode, the windows and the settle time.
pub fn read_pass_input(v: &Value) -> Option<(String, crate::Windows, Option<DateTime<Utc>>)> {
    let t = |k: &str| serde_json::from_value::<DateTime<Utc>>(v.get(k)?.clone()).ok();
    let w = crate::Windows {
        baseline_start: t("baseline_start")?,
        baseline_end: t("baseline_end")?,
        split: t("split")?,
        end: t("end")?,
    };
    Some((v["mode"].as_str()?.to_owned(), w, t("settled")))
}

/// The `runs` table in SQL: one row per step of every run, with the run's
/// kind and subject.
#[derive(Debug)]
pub struct RunsTable {
    pub db: Arc<RunsDb>,
}

impl andon_store::ExtraTable for RunsTable {
    fn name(&self) -> &str {
        "runs"
    }

    fn provider(
        &self,
        tenant: Option<&Tenant>,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>, andon_store::StoreError> {
        let runs = self.db.list(tenant, 10_000).map_err(|e| andon_store::StoreError::Refused(e.to_string()))?;
        let rows: Vec<(&String, &Run, &RunStep)> =
            runs.iter().flat_map(|(t, r)| r.steps.iter().map(move |s| (t, r, s))).collect();
        andon_store::RowsTable::new(&rows)
            .text("tenant", |(t, _, _)| (*t).clone())
            .text("run_id", |(_, r, _)| r.id.clone())
            .text("run_kind", |(_, r, _)| r.kind.clone())
            .text("subject", |(_, r, _)| r.subject.clone())
            .time("run_started_at", |(_, r, _)| r.started_at)
            .text("step_id", |(_, _, s)| s.id.clone())
            .text("parents", |(_, _, s)| s.parents.join(","))
            .text("kind", |(_, _, s)| s.kind.clone())
            .text("name", |(_, _, s)| s.name.clone())
            .time("started_at", |(_, _, s)| s.started_at)
            .time("ended_at", |(_, _, s)| s.ended_at)
            .text("input_sha256", |(_, _, s)| s.input_sha256.clone())
            .text("output_sha256", |(_, _, s)| s.output_sha256.clone())
            .text("summary", |(_, _, s)| s.summary.clone())
            .build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn steps_are_stored_by_content_and_pruned_with_their_run() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(RunsDb::open(&dir.path().join("andon.db"), RecorderLimits::default()).unwrap());
        let t = Tenant::default_tenant();
        let rec = db.begin(&t, "investigation", "why?");
        let q = json!({"sql": "SELECT 1"});
        let a = rec.step(StepRecord {
            kind: "tool",
            name: "sql",
            parents: &[],
            started_at: Utc::now(),
            input: &q,
            output: &json!({"rows": [[1]]}),
            summary: "1 row".into(),
        });
        let b = rec.step(StepRecord {
            kind: "tool",
            name: "sql",
            parents: std::slice::from_ref(&a),
            started_at: Utc::now(),
            input: &q,
            output: &json!({"rows": [[1]]}),
            summary: "1 row".into(),
        });
        rec.finish();
        let run = db.get(Some(&t), rec.id()).unwrap().unwrap();
        assert_eq!(run.steps.len(), 2);
        assert_eq!(run.steps[1].parents, vec![a.clone()]);
        assert_eq!(run.steps[1].id, b);
        assert_eq!(run.steps[0].input_sha256, run.steps[1].input_sha256);
        let blobs: i64 = db.conn().query_row("SELECT count(*) FROM run_blobs", [], |r| r.get(0)).unwrap();
        assert_eq!(blobs, 2, "the same query and result are stored once");
        assert_eq!(db.blob(&run.steps[0].input_sha256).unwrap(), Some(q));
        assert!(run.ended_at.is_some());
        assert!(db.get(Some(&Tenant::new("other").unwrap()), rec.id()).unwrap().is_none(), "runs are per tenant");

        assert_eq!(db.prune(Utc::now()).unwrap(), 0);
        assert_eq!(db.prune(Utc::now() + Duration::days(31)).unwrap(), 1);
        assert!(db.get(None, rec.id()).unwrap().is_none());
        let blobs: i64 = db.conn().query_row("SELECT count(*) FROM run_blobs", [], |r| r.get(0)).unwrap();
        assert_eq!(blobs, 0);
    }
}
