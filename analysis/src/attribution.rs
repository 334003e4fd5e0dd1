//! Attributing a finding to a change: the version of the service where the
//! trouble starts that first served just before the onset.

use andon_model::ChangeRef;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use crate::detector::Ctx;
use crate::sql::{self, Rows};

/// When each version of each service first served in the pass's range.
pub fn versions_query(ctx: &Ctx) -> String {
    sql::render(include_str!("detectors/versions.sql"), &ctx.vars(""))
}

/// The change a finding follows: a version of the service where the trouble
/// starts that first served within 30 minutes before the onset (or, with no
/// onset, inside the current window).
pub fn attribute(versions: &Rows, service: &str, onset: Option<DateTime<Utc>>, ctx: &Ctx) -> Option<ChangeRef> {
    let settle = ctx.baseline_start + chrono::Duration::minutes(2);
    let mut best: Option<(DateTime<Utc>, ChangeRef)> = None;
    for r in versions.iter() {
        if r.str("service").as_deref() != Some(service) {
            continue;
        }
        let Some(first) = r.i64("first_seen").map(|ns| Utc.timestamp_nanos(ns)) else { continue };
        if first <= settle {
            continue;
        }
        let fits = match onset {
            Some(o) => first <= o + chrono::Duration::minutes(2) && first >= o - chrono::Duration::minutes(30),
            None => first >= ctx.split - chrono::Duration::minutes(30),
        };
        if !fits || best.as_ref().is_some_and(|(b, _)| *b > first) {
            continue;
        }
        best = Some((
            first,
            ChangeRef {
                service: service.to_owned(),
                version: r.str("version").unwrap_or_default(),
                commit: r.str("commit"),
                pr: r.str("pr").and_then(|p| p.trim_start_matches('#').parse().ok()),
                first_seen: Some(first),
            },
        ));
    }
    best.map(|(_, c)| c)
}

const MINUTE_NS: i64 = 60_000_000_000;

/// How many turns a minute stays without being asked for.
const KEPT_TURNS: u64 = 3;

/// [`versions_query`]'s rows kept by minute from one pass to the next: each
/// column is a minimum, a maximum or a count, so a range's rows are its
/// minutes' rows merged, and a pass reads only the minutes it has not seen.
/// Each turn drops the minutes spans appended since they were last checked
/// (or read) fall in ([`andon_store::Store::earliest_appended_since`]).
#[derive(Debug, Default)]
pub struct VersionBook {
    inner: std::sync::Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    turn: u64,
    minutes: std::collections::HashMap<andon_model::Tenant, std::collections::BTreeMap<i64, Minute>>,
}

#[derive(Debug)]
struct Minute {
    rows: Vec<Served>,
    checked_from: i64,
    asked: u64,
}

/// A version's first minute or more of serving.
#[derive(Debug, Clone)]
struct Served {
    service: String,
    version: String,
    first_seen: i64,
    commit: Option<String>,
    pr: Option<String>,
    spans: i64,
}

impl VersionBook {
    /// Starts a turn for `tenant`.
    pub fn turn(&self, store: &andon_store::Store, tenant: &andon_model::Tenant) {
        let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let mut b = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.turn += 1;
        let oldest = b.turn.saturating_sub(KEPT_TURNS);
        let mut appended: std::collections::HashMap<i64, Option<Option<i64>>> = std::collections::HashMap::new();
        b.minutes.retain(|t, minutes| {
            minutes.retain(|minute, m| {
                if m.asked < oldest {
                    return false;
                }
                if t != tenant {
                    return true;
                }
                let since = m.checked_from;
                m.checked_from = now;
                match *appended.entry(since).or_insert_with(|| store.earliest_appended_since(tenant, since)) {
                    None => false,
                    Some(None) => true,
                    Some(Some(earliest)) => minute.saturating_add(MINUTE_NS) <= earliest,
                }
            });
            !minutes.is_empty()
        });
    }

    /// [`versions_query`]'s rows for `ctx`'s range from the minutes kept,
    /// reading the others; `None` for a range that does not begin and end on
    /// a minute.
    pub async fn versions(
        &self,
        engine: &andon_store::QueryEngine,
        tenant: &andon_model::Tenant,
        ctx: &Ctx,
    ) -> Result<Option<Rows>, crate::AnalysisError> {
        let whole = |t: DateTime<Utc>| t.timestamp_nanos_opt().filter(|ns| ns.rem_euclid(MINUTE_NS) == 0);
        let (Some(from), Some(to)) = (whole(ctx.baseline_start), whole(ctx.end)) else { return Ok(None) };
        let wanted: Vec<i64> = (0..).map(|i| from + i * MINUTE_NS).take_while(|m| *m < to).collect();
        let runs: Vec<(i64, i64)> = {
            let mut b = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let turn = b.turn;
            let held = b.minutes.entry(tenant.clone()).or_default();
            let mut runs: Vec<(i64, i64)> = Vec::new();
            for m in &wanted {
                match held.get_mut(m) {
                    Some(minute) => minute.asked = turn,
                    None => match runs.last_mut() {
                        Some(run) if run.1 == *m => run.1 = m + MINUTE_NS,
                        _ => runs.push((*m, m + MINUTE_NS)),
                    },
                }
            }
            runs
        };
        for (a, z) in runs {
            let read_at = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            let q = format!(
                "SELECT service_name AS service, service_version AS version, \
                 CAST(start_time AS BIGINT) / {MINUTE_NS} AS minute, CAST(min(start_time) AS BIGINT) AS first_seen, \
                 max(vcs_ref_head_revision) AS commit, max(vcs_change_id) AS pr, count(*) AS spans\n\
                 FROM spans\n\
                 WHERE start_time >= {} AND start_time < {} AND service_version IS NOT NULL AND kind = 'server'\n\
                 GROUP BY 1, 2, 3",
                sql::ts(Utc.timestamp_nanos(a)),
                sql::ts(Utc.timestamp_nanos(z)),
            );
            let out = engine
                .collect(Some(tenant.clone()), &q)
                .await
                .map_err(|e| crate::AnalysisError::Query { message: e.to_string(), sql: q.clone() })?;
            let mut by_minute: std::collections::BTreeMap<i64, Vec<Served>> =
                (0..).map(|i| a + i * MINUTE_NS).take_while(|m| *m < z).map(|m| (m, Vec::new())).collect();
            for r in Rows::new(out.batches).iter() {
                let (Some(service), Some(version), Some(minute), Some(first_seen)) =
                    (r.str("service"), r.str("version"), r.i64("minute"), r.i64("first_seen"))
                else {
                    continue;
                };
                by_minute.entry(minute * MINUTE_NS).or_default().push(Served {
                    service,
                    version,
                    first_seen,
                    commit: r.str("commit"),
                    pr: r.str("pr"),
                    spans: r.i64("spans").unwrap_or(0),
                });
            }
            let mut b = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let turn = b.turn;
            let held = b.minutes.entry(tenant.clone()).or_default();
            for (m, rows) in by_minute {
                held.insert(m, Minute { rows, checked_from: read_at, asked: turn });
            }
        }
        let merged: Option<Vec<Served>> = {
            let b = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            b.minutes.get(tenant).filter(|h| wanted.iter().all(|m| h.contains_key(m))).map(|h| {
                let mut by_version: std::collections::BTreeMap<(&str, &str), Served> =
                    std::collections::BTreeMap::new();
                for minute in wanted.iter().filter_map(|m| h.get(m)) {
                    for s in &minute.rows {
                        by_version
                            .entry((s.service.as_str(), s.version.as_str()))
                            .and_modify(|v| {
                                v.first_seen = v.first_seen.min(s.first_seen);
                                v.commit = v.commit.take().max(s.commit.clone());
                                v.pr = v.pr.take().max(s.pr.clone());
                                v.spans += s.spans;
                            })
                            .or_insert_with(|| s.clone());
                    }
                }
                by_version.into_values().collect()
            })
        };
        // A turn began meanwhile and dropped minutes: the caller reads the range.
        let Some(merged) = merged else { return Ok(None) };
        Ok(Some(Rows::new(vec![served_batch(&merged)?])))
    }
}

/// The rows as [`versions_query`] gives them.
fn served_batch(rows: &[Served]) -> Result<arrow::array::RecordBatch, crate::AnalysisError> {
    use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("service", DataType::Utf8, true),
        Field::new("version", DataType::Utf8, true),
        Field::new("first_seen", andon_model::schema::timestamp_type(), true),
        Field::new("commit", DataType::Utf8, true),
        Field::new("pr", DataType::Utf8, true),
        Field::new("spans", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.service.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.version.as_str()))),
        Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.first_seen)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.commit.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.pr.as_deref()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.spans))),
    ];
    arrow::array::RecordBatch::try_new(schema, columns)
        .map_err(|e| crate::AnalysisError::Query { message: e.to_string(), sql: String::new() })
}
