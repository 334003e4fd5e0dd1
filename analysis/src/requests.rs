//! The server requests of the operations a pass examines, and each session's
//! segment values, kept by the minute for the passes after it.
//!
//! Once a pass has its candidates, it samples each one's requests of its
//! window (the first by trace id, [`crate::engine`]'s picks) and counts the
//! sessions its failures reached on each side (the error-rate finding's
//! evidence). Both used to be statements over every span of their range,
//! run again every pass for the same operations while a fault lasts. A
//! request belongs to the minute it starts in, and a session's segment
//! values over a range are the most of its values in each minute of it
//! ([`crate::sql::Segments::session_aggregates`]: the greatest value on its
//! root spans, else on any), so both are merges of per-minute parts: a pass
//! reads only the minutes it has not seen ([`MinuteCells`]) and gives what
//! the statements give.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use andon_model::Tenant;
use andon_store::QueryEngine;
use andon_store::sql::{Rows, lit, ts};
use chrono::{DateTime, Utc};

use crate::AnalysisError;
use crate::minutes::{MINUTE_NS, MinuteCells, now_ns, whole_minutes};
use crate::sql::{self, Segments};

/// One server request of an operation, as the `requests` common table
/// expression of `detectors/shared.sql` reads it.
#[derive(Debug, Clone)]
pub struct Request {
    pub trace_id: Arc<str>,
    pub span_id: Arc<str>,
    /// Start and end, Unix ns.
    pub start: i64,
    pub end: i64,
    pub duration_ns: i64,
    pub err: bool,
    pub session: Option<Arc<str>>,
    /// Each segment column's value on the span itself, as text.
    pub own: Box<[Option<Arc<str>>]>,
}

/// A session's values in one minute: per segment column, the greatest on
/// its root spans and the greatest on any of its spans (`None` for columns
/// that do not describe the session).
type SessionValues = Box<[(Text, Text)]>;

/// A value as text.
type Text = Option<Arc<str>>;

/// A service and an operation.
type Site = (String, String);

#[derive(Debug)]
struct Inner {
    /// Each session's values by the minute, under the key of the segment columns.
    sessions: MinuteCells<String, HashMap<Arc<str>, SessionValues>>,
    /// Each operation's requests by the minute, under (segment columns,
    /// service, operation).
    requests: MinuteCells<(String, String, String), Arc<[Request]>>,
}

/// Requests and session values kept by minute ([`crate::minutes`]).
#[derive(Debug)]
pub struct RequestBook {
    inner: Mutex<Inner>,
}

impl Default for RequestBook {
    fn default() -> Self {
        // A minute's part is made of the spans that start in it.
        RequestBook { inner: Mutex::new(Inner { sessions: MinuteCells::new(0), requests: MinuteCells::new(0) }) }
    }
}

/// What the segment columns are, as a key: parts read for other columns are not these.
fn columns_key(segments: &Segments) -> String {
    segments.columns.iter().map(|c| format!("{}:{}", c.column, c.per_session)).collect::<Vec<_>>().join(",")
}

fn text(s: Option<String>) -> Text {
    s.map(Arc::from)
}

/// A session's values over several minutes (`max` of each), then as the
/// `sessions` common table expression gives them: the root spans' value, else any span's.
fn merged(parts: &[&HashMap<Arc<str>, SessionValues>], columns: usize) -> HashMap<Arc<str>, Vec<Text>> {
    let mut both: HashMap<Arc<str>, Vec<(Text, Text)>> = HashMap::new();
    for part in parts {
        for (session, values) in *part {
            let slot = both.entry(Arc::clone(session)).or_insert_with(|| vec![(None, None); columns]);
            for (kept, v) in slot.iter_mut().zip(values.iter()) {
                if v.0 > kept.0 {
                    kept.0.clone_from(&v.0);
                }
                if v.1 > kept.1 {
                    kept.1.clone_from(&v.1);
                }
            }
        }
    }
    both.into_iter().map(|(s, v)| (s, v.into_iter().map(|(root, any)| root.or(any)).collect())).collect()
}

impl RequestBook {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a turn for `tenant` ([`MinuteCells::turn`]).
    pub fn turn(&self, store: &andon_store::Store, tenant: &Tenant) {
        let mut inner = self.inner();
        inner.sessions.turn(store, tenant);
        inner.requests.turn(store, tenant);
    }

    /// Reads the minutes of `wanted` not held: the requests of each of
    /// `sites`, and with `sessions` each session's values.
    async fn read(
        &self,
        engine: &QueryEngine,
        tenant: &Tenant,
        segments: &Segments,
        sites: &[(String, String)],
        wanted: &[i64],
        sessions: Option<&[i64]>,
    ) -> Result<(), AnalysisError> {
        let key = columns_key(segments);
        // Sites missing the same runs are read in one statement.
        let mut by_runs: HashMap<Vec<(i64, i64)>, Vec<&Site>> = HashMap::new();
        {
            let mut inner = self.inner();
            for site in sites {
                let runs = inner.requests.missing(tenant, &(key.clone(), site.0.clone(), site.1.clone()), wanted);
                if !runs.is_empty() {
                    by_runs.entry(runs).or_default().push(site);
                }
            }
        }
        for (runs, sites) in by_runs {
            for (a, z) in runs {
                let read_at = now_ns();
                let rows = collect(engine, tenant, &requests_query(segments, &sites, a, z)).await?;
                let mut by_site: HashMap<Site, Vec<(i64, Request)>> = HashMap::new();
                for r in rows.iter() {
                    let (Some(service), Some(operation), Some(trace_id), Some(span_id), Some(start), Some(end)) = (
                        r.str("service"),
                        r.str("operation"),
                        r.str("trace_id"),
                        r.str("span_id"),
                        r.i64("t0"),
                        r.i64("t1"),
                    ) else {
                        continue;
                    };
                    let Some(duration_ns) = r.i64("duration_ns") else {
                        continue;
                    };
                    let own = (0..segments.columns.len()).map(|i| text(r.str(&format!("own{i}")))).collect();
                    let request = Request {
                        trace_id: trace_id.into(),
                        span_id: span_id.into(),
                        start,
                        end,
                        duration_ns,
                        err: r.i64("err") == Some(1),
                        session: text(r.str("session_id")),
                        own,
                    };
                    by_site.entry((service, operation)).or_default().push((start, request));
                }
                let mut inner = self.inner();
                for site in &sites {
                    let items = by_site.remove(*site).unwrap_or_default();
                    let k = (key.clone(), site.0.clone(), site.1.clone());
                    inner.requests.fill(tenant, &k, (a, z), read_at, items, Arc::from);
                }
            }
        }
        let Some(minutes) = sessions else { return Ok(()) };
        let runs = self.inner().sessions.missing(tenant, &key, minutes);
        for (a, z) in runs {
            let read_at = now_ns();
            let rows = collect(engine, tenant, &sessions_query(segments, a, z)).await?;
            let items: Vec<(i64, (Arc<str>, SessionValues))> = rows
                .iter()
                .filter_map(|r| {
                    let values = segments
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| match c.per_session {
                            true => (text(r.str(&format!("root{i}"))), text(r.str(&format!("any{i}")))),
                            false => (None, None),
                        })
                        .collect();
                    Some((r.i64("minute")?.checked_mul(MINUTE_NS)?, (Arc::from(r.str("session_id")?), values)))
                })
                .collect();
            self.inner().sessions.fill(tenant, &key, (a, z), read_at, items, |v| v.into_iter().collect());
        }
        Ok(())
    }

    /// The server requests of `sites` that start in `[from, to)`, each with
    /// its segment values as the `requests` common table expression gives
    /// them over that range (`lean`: the span's own; otherwise the session's
    /// over the range where it has them): `(service, operation, request,
    /// values)` for `each`. `false` when the range is not whole minutes, or a
    /// turn began meanwhile and dropped minutes: the caller runs its SQL.
    #[allow(clippy::too_many_arguments)]
    pub async fn requests(
        &self,
        engine: &QueryEngine,
        tenant: &Tenant,
        segments: &Segments,
        sites: &[(String, String)],
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        lean: bool,
        mut each: impl FnMut(&str, &str, &Request, &[Option<&Arc<str>>]),
    ) -> Result<bool, AnalysisError> {
        let Some(wanted) = whole_minutes(from, to) else { return Ok(false) };
        self.read(engine, tenant, segments, sites, &wanted, (!lean).then_some(&wanted[..])).await?;
        let key = columns_key(segments);
        let inner = self.inner();
        let sessions = match lean {
            true => None,
            false => match inner.sessions.parts(tenant, &key, &wanted) {
                Some(parts) => Some(merged(&parts, segments.columns.len())),
                None => return Ok(false),
            },
        };
        let mut parts = Vec::new();
        for site in sites {
            match inner.requests.parts(tenant, &(key.clone(), site.0.clone(), site.1.clone()), &wanted) {
                Some(p) => parts.push((site, p)),
                None => return Ok(false),
            }
        }
        let mut values: Vec<Option<&Arc<str>>> = vec![None; segments.columns.len()];
        for (site, minutes) in parts {
            for request in minutes.iter().flat_map(|m| m.iter()) {
                let session = sessions.as_ref().and_then(|s| s.get(request.session.as_deref()?));
                for (i, c) in segments.columns.iter().enumerate() {
                    let from_session = session.filter(|_| c.per_session).and_then(|v| v[i].as_ref());
                    values[i] = from_session.or(request.own[i].as_ref());
                }
                each(&site.0, &site.1, request, &values);
            }
        }
        Ok(true)
    }
}

/// The server requests of `sites` starting in `[a, z)` (Unix ns), with what
/// [`Request`] keeps.
fn requests_query(segments: &Segments, sites: &[&(String, String)], a: i64, z: i64) -> String {
    let own: String = segments
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!(", CAST(s.{} AS VARCHAR) AS own{i}", c.column))
        .collect();
    let sites: Vec<String> = sites
        .iter()
        .map(|(service, operation)| {
            format!("(s.service_name = {} AND {} = {})", lit(service), sql::OPERATION, lit(operation))
        })
        .collect();
    format!(
        "SELECT s.trace_id, s.span_id, CAST(s.start_time AS BIGINT) AS t0, CAST(s.end_time AS BIGINT) AS t1,\n       \
         s.duration_ns, s.service_name AS service, {op} AS operation,\n       \
         CASE WHEN s.status_code = 'error' THEN 1 ELSE 0 END AS err, s.session_id{own}\n\
         FROM spans s\nWHERE s.kind = 'server' AND s.start_time >= {from} AND s.start_time < {to}\n  AND ({sites})",
        op = sql::OPERATION,
        from = ts(DateTime::from_timestamp_nanos(a)),
        to = ts(DateTime::from_timestamp_nanos(z)),
        sites = sites.join(" OR "),
    )
}

/// Each session's values by the minute its spans start in (`minute`, in
/// minutes since the epoch), over `[a, z)`: per segment column that
/// describes the session, the greatest on its root spans (`root{i}`) and on
/// any (`any{i}`).
fn sessions_query(segments: &Segments, a: i64, z: i64) -> String {
    let mut values = String::new();
    for (i, c) in segments.columns.iter().enumerate().filter(|(_, c)| c.per_session) {
        let v = format!("CAST({} AS VARCHAR)", c.column);
        values.push_str(&format!(
            ", max(CASE WHEN parent_span_id IS NULL OR parent_span_id = '' THEN {v} END) AS root{i}, max({v}) AS any{i}"
        ));
    }
    format!(
        "SELECT session_id, CAST(start_time AS BIGINT) / {MINUTE_NS} AS minute{values}\nFROM spans\n\
         WHERE start_time >= {} AND start_time < {} AND session_id IS NOT NULL\nGROUP BY 1, 2",
        ts(DateTime::from_timestamp_nanos(a)),
        ts(DateTime::from_timestamp_nanos(z)),
    )
}

async fn collect(engine: &QueryEngine, tenant: &Tenant, q: &str) -> Result<Rows, AnalysisError> {
    Ok(Rows::new(
        engine
            .collect(Some(tenant.clone()), q)
            .await
            .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: q.to_owned() })?
            .batches,
    ))
}

/// The traces of `tenant` still arriving at `at` (a span came after it), as
/// the `arriving_traces` table gives them.
pub fn arriving(store: &andon_store::Store, tenant: &Tenant, at: Option<DateTime<Utc>>) -> HashSet<u128> {
    match at.and_then(|at| at.timestamp_nanos_opt()) {
        Some(at) => store.arrivals_after(tenant, at).into_iter().map(|a| a.0).collect(),
        None => HashSet::new(),
    }
}

/// Whether the trace `id` (hex) is among `arriving`.
pub fn is_arriving(arriving: &HashSet<u128>, id: &str) -> bool {
    !arriving.is_empty() && u128::from_str_radix(id, 16).is_ok_and(|v| arriving.contains(&v))
}

/// `percentile_cont(p) WITHIN GROUP (ORDER BY v)` of integers as DataFusion
/// computes it: between the closest ranks, by a weight quantized to a
/// millionth, truncated back to an integer. `values` is sorted.
pub fn percentile_cont(values: &[i64], p: f64) -> Option<i64> {
    let n = values.len();
    if n <= 1 {
        return values.first().copied();
    }
    let index = p * (n - 1) as f64;
    let (lower, upper) = (index.floor() as usize, index.ceil() as usize);
    if lower == upper {
        return Some(values[lower]);
    }
    let weight = ((index - lower as f64) * 1_000_000.0) as usize as f64 / 1_000_000.0;
    let (lo, hi) = (values[lower] as f64, values[upper] as f64);
    Some((lo + (hi - lo) * weight) as i64)
}

/// `round(ns / 1e6, 3)`: nanoseconds as milliseconds to three places, as DataFusion rounds.
pub fn round_ms(ns: i64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}
