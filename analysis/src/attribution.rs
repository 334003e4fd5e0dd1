//! Attributing a finding to a change: the version of the service where the
//! trouble starts that first served just before the onset.

use andon_model::ChangeRef;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use crate::detector::Ctx;
use crate::minutes::{MINUTE_NS, MinuteCells, now_ns, whole_minutes};
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

/// [`versions_query`]'s rows kept by minute from one pass to the next: each
/// column is a minimum, a maximum or a count, so a range's rows are its
/// minutes' rows merged, and a pass reads only the minutes it has not seen
/// ([`MinuteCells`]; a span changes only its own minute's rows).
#[derive(Debug)]
pub struct VersionBook {
    inner: std::sync::Mutex<MinuteCells<(), Vec<Served>>>,
}

impl Default for VersionBook {
    fn default() -> Self {
        VersionBook { inner: std::sync::Mutex::new(MinuteCells::new(0)) }
    }
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
    fn cells(&self) -> std::sync::MutexGuard<'_, MinuteCells<(), Vec<Served>>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a turn for `tenant` ([`MinuteCells::turn`]).
    pub fn turn(&self, store: &andon_store::Store, tenant: &andon_model::Tenant) {
        self.cells().turn(store, tenant);
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
        let Some(wanted) = whole_minutes(ctx.baseline_start, ctx.end) else { return Ok(None) };
        let runs = self.cells().missing(tenant, &(), &wanted);
        for (a, z) in runs {
            let read_at = now_ns();
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
            let rows = Rows::new(out.batches);
            let read = rows.iter().filter_map(|r| {
                Some((
                    r.i64("minute")? * MINUTE_NS,
                    Served {
                        service: r.str("service")?,
                        version: r.str("version")?,
                        first_seen: r.i64("first_seen")?,
                        commit: r.str("commit"),
                        pr: r.str("pr"),
                        spans: r.i64("spans").unwrap_or(0),
                    },
                ))
            });
            let read: Vec<(i64, Served)> = read.collect();
            self.cells().fill(tenant, &(), (a, z), read_at, read, |rows| rows);
        }
        let merged: Option<Vec<Served>> = {
            let cells = self.cells();
            cells.parts(tenant, &(), &wanted).map(|parts| {
                let mut by_version: std::collections::BTreeMap<(&str, &str), Served> =
                    std::collections::BTreeMap::new();
                for s in parts.into_iter().flatten() {
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
