//! The calls of sessions, folded from one continuous pass to the next.
//!
//! The retry and silent-recovery detectors read one statement over
//! `sessions` for a continuous pass's window and its last minute
//! (`detectors/calls_sessions_last_minute.sql`): per session and operation,
//! the calls, retries, failures and recoveries in the range, then per
//! operation, side and segment, how many sessions did what. Run as SQL, it
//! aggregates every row of the range (3.5 hours by default) every pass, while
//! successive passes, live or replayed by a backtest, move their windows a
//! minute at a time: one minute enters the range, one enters the last minute
//! and one leaves it, one moves from the window to the baseline and one
//! leaves the baseline. Only the sessions with rows in those minutes count
//! differently in the next pass.
//!
//! [`CallsFold`] keeps the range's rows by session, with what each session
//! adds to the statement's groups. A pass reads only the minutes that entered
//! the range and recomputes only the sessions with rows in a minute whose
//! place changed, so its cost follows those sessions, not the range. Its rows
//! are the statement's, exactly (`engine` tests both ways). It starts again
//! from one read of the range when the store's sessions changed since
//! ([`andon_store::Store::sessions_version`]: while traffic arrives, every
//! pass), for another tenant, or for windows that do not follow on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};

use crate::AnalysisError;
use crate::sql::Rows;

/// Where a minute lies in a pass: outside its range, in the baseline, in the
/// window before its last minute, or in the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Out,
    Baseline,
    Window,
    Last,
}

/// A pass's bounds in nanoseconds: the range `[from, to)`, the window from
/// `split` (where the baseline ends), its last minute from `short`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub from: i64,
    pub split: i64,
    pub short: i64,
    pub to: i64,
}

impl Bounds {
    /// The bounds of a pass over `[from, to)` whose window starts at `split`
    /// (where its baseline ends) and whose last minute starts at `short`.
    pub fn new(from: DateTime<Utc>, split: DateTime<Utc>, short: DateTime<Utc>, to: DateTime<Utc>) -> Option<Self> {
        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt();
        let b = Self { from: ns(from)?, split: ns(split)?, short: ns(short)?, to: ns(to)? };
        (b.from <= b.split && b.split <= b.short && b.short <= b.to).then_some(b)
    }

    fn place(&self, minute: i64) -> Place {
        if minute < self.from || minute >= self.to {
            Place::Out
        } else if minute < self.split {
            Place::Baseline
        } else if minute < self.short {
            Place::Window
        } else {
            Place::Last
        }
    }
}

/// One row of `sessions` as the statement reads it.
#[derive(Debug, Clone)]
struct Call {
    minute: i64,
    /// The service, operation and segment values ([`CallsFold::series`]).
    series: u32,
    /// What the session had shown by the end of this row's minute.
    seen: i64,
    calls: i64,
    errors: i64,
    retries: i64,
    auto_retries: i64,
    recovered: i64,
    recovered_end: Option<i64>,
    auto_recovered: i64,
}

/// A group of the statement: service, operation and segments (`series`),
/// `cur`, `cur_s` and `present_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    series: u32,
    cur: i64,
    cur_s: Option<i64>,
    present_s: i64,
}

/// The statement's sums, in its column order after the keys.
const SUMS: [&str; 15] = [
    "sessions",
    "retrying_sessions",
    "retries",
    "auto_retries",
    "attempts",
    "error_sessions",
    "recovered_sessions",
    "auto_recovered_sessions",
    "retrying_sessions_s",
    "retries_s",
    "auto_retries_s",
    "attempts_s",
    "error_sessions_s",
    "recovered_sessions_s",
    "auto_recovered_sessions_s",
];

type Sums = [i64; SUMS.len()];

/// A session's rows in the range and what they add to each group.
#[derive(Debug, Default)]
struct Session {
    calls: Vec<Call>,
    adds: Vec<(Group, Sums)>,
}

/// What one session adds to the statement's groups, over its `calls` in the
/// range (`calls_sessions_last_minute.sql`, `rows` and `per_session`).
fn adds(calls: &[Call], b: &Bounds) -> Vec<(Group, Sums)> {
    let short_side = |p: Place| matches!(p, Place::Baseline | Place::Last);
    let seen = calls.iter().map(|c| c.seen).max();
    let seen_short = calls.iter().filter(|c| short_side(b.place(c.minute))).map(|c| c.seen).max();
    // A failure followed by a success the person sent again, with the session
    // going on after it among what it had shown by the range's end.
    let recovered = |c: &Call, seen: Option<i64>| match c.recovered_end {
        None => c.recovered,
        Some(end) => i64::from(seen.is_some_and(|s| end < s)),
    };
    /// `per_session`'s columns for one operation and segment values.
    #[derive(Default)]
    struct Per {
        cur: Option<i64>,
        attempts: i64,
        retries: i64,
        auto_retries: i64,
        had_error: i64,
        recovered: Option<i64>,
        auto_recovered: Option<i64>,
        present_s: i64,
        cur_s: Option<i64>,
        attempts_s: i64,
        retries_s: i64,
        auto_retries_s: i64,
        had_error_s: i64,
        recovered_s: i64,
        auto_recovered_s: i64,
    }
    let mut per: Vec<(u32, Per)> = Vec::new();
    for c in calls {
        let place = b.place(c.minute);
        let i = match per.iter().position(|(s, _)| *s == c.series) {
            Some(i) => i,
            None => {
                per.push((c.series, Per::default()));
                per.len() - 1
            }
        };
        let p = &mut per[i].1;
        let cur = i64::from(place >= Place::Window);
        p.cur = Some(p.cur.map_or(cur, |v| v.min(cur)));
        p.attempts += c.calls;
        p.retries += c.retries;
        p.auto_retries += c.auto_retries;
        p.had_error = p.had_error.max(i64::from(c.errors > 0));
        let r = recovered(c, seen);
        p.recovered = Some(p.recovered.map_or(r, |v| v.max(r)));
        p.auto_recovered = Some(p.auto_recovered.map_or(c.auto_recovered, |v| v.max(c.auto_recovered)));
        let in_short = short_side(place);
        p.present_s = p.present_s.max(i64::from(in_short));
        let (rs, ars) = if in_short {
            let cur_s = i64::from(place == Place::Last);
            p.cur_s = Some(p.cur_s.map_or(cur_s, |v| v.min(cur_s)));
            p.attempts_s += c.calls;
            p.retries_s += c.retries;
            p.auto_retries_s += c.auto_retries;
            p.had_error_s = p.had_error_s.max(i64::from(c.errors > 0));
            (recovered(c, seen_short), c.auto_recovered)
        } else {
            (0, 0)
        };
        p.recovered_s = p.recovered_s.max(rs);
        p.auto_recovered_s = p.auto_recovered_s.max(ars);
    }
    per.into_iter()
        .map(|(series, p)| {
            let group = Group { series, cur: p.cur.unwrap_or(0), cur_s: p.cur_s, present_s: p.present_s };
            let sums = [
                1,
                i64::from(p.retries > 0),
                p.retries,
                p.auto_retries,
                p.attempts,
                p.had_error,
                p.recovered.unwrap_or(0),
                p.auto_recovered.unwrap_or(0),
                i64::from(p.retries_s > 0),
                p.retries_s,
                p.auto_retries_s,
                p.attempts_s,
                p.had_error_s,
                p.recovered_s,
                p.auto_recovered_s,
            ];
            (group, sums)
        })
        .collect()
}

/// The rows of a continuous pass's shared calls statement, kept from one pass
/// to the next.
#[derive(Debug, Default)]
pub(crate) struct CallsFold {
    /// Whose rows, read with which segment columns, at which
    /// [`andon_store::Store::sessions_version`]; `None` before the first read.
    source: Option<(andon_model::Tenant, String, u64)>,
    bounds: Option<Bounds>,
    /// The sessions (numbered) with rows in each minute of the range, some
    /// more than once.
    minutes: BTreeMap<i64, Vec<u32>>,
    sessions: HashMap<u32, Session>,
    /// Session ids, numbered.
    ids: HashMap<Box<str>, u32>,
    /// Service, operation and segment values, numbered.
    series: Vec<Vec<Option<String>>>,
    numbered: HashMap<Vec<Option<String>>, u32>,
    groups: HashMap<Group, Sums>,
    /// How many times the fold started again from a read of its whole range.
    pub rebuilds: u64,
}

/// The columns [`CallsFold`] reads of `sessions`, for `[from, to)`:
/// `session_segments` is the statement's `{{session_segments}}`.
fn read_sql(session_segments: &str, from: i64, to: i64) -> String {
    let ts = |ns: i64| crate::sql::ts(DateTime::from_timestamp_nanos(ns));
    format!(
        "SELECT session_id, service_name AS service, operation, minute, \
         coalesce(seen_end, session_end) AS seen{session_segments}, calls, errors, retries, auto_retries, \
         recovered, recovered_end, auto_recovered FROM sessions WHERE minute >= {} AND minute < {}",
        ts(from),
        ts(to)
    )
}

fn strings(b: &RecordBatch, name: &str) -> Result<StringArray, ArrowError> {
    let a = b.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))?;
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// Numbers and nanosecond timestamps as `i64`.
fn ints(b: &RecordBatch, name: &str) -> Result<Int64Array, ArrowError> {
    let a = b.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))?;
    let a = match a.data_type() {
        DataType::Timestamp(_, tz) => {
            let ns = DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, tz.clone());
            cast(&cast(a, &ns)?, &DataType::Int64)?
        }
        _ => cast(a, &DataType::Int64)?,
    };
    Ok(a.as_primitive::<Int64Type>().clone())
}

impl CallsFold {
    /// The statement's rows for a pass over `b`, reading what it lacks of
    /// `tenant`'s `sessions` with `read` (SQL to rows) at `version`.
    /// `segments` are the statement's segment columns (`seg0`, ...) and
    /// `session_segments` how they are read (`{{session_segments}}`).
    pub async fn rows<F, Fut>(
        &mut self,
        tenant: &andon_model::Tenant,
        version: u64,
        segments: usize,
        session_segments: &str,
        b: Bounds,
        read: F,
    ) -> Result<Rows, AnalysisError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
    {
        fn failed(sql: &str) -> impl Fn(ArrowError) -> AnalysisError + '_ {
            move |e| AnalysisError::Query { message: e.to_string(), sql: sql.to_owned() }
        }
        let source = (tenant.clone(), session_segments.to_owned(), version);
        let follows = self.source.as_ref() == Some(&source)
            && self.bounds.is_some_and(|p| p.from <= b.from && p.to <= b.to && b.from < p.to);
        if !follows {
            *self = Self { rebuilds: self.rebuilds + 1, ..Self::default() };
            self.source = Some(source);
            let sql = read_sql(session_segments, b.from, b.to);
            let rows = read(sql.clone()).await?;
            self.bounds = Some(b);
            let fresh = self.add_rows(&rows, segments).map_err(failed(&sql))?;
            for id in fresh {
                self.refold(id, &b);
            }
            return self.output(segments).map_err(failed("the folded calls"));
        }
        let Some(p) = self.bounds else { return self.output(segments).map_err(failed("the folded calls")) };
        // The sessions with rows in a minute whose place changed.
        let mut touched: HashSet<u32> = HashSet::new();
        for (lo, hi) in [
            (p.from, b.from),
            (p.split.min(b.split), p.split.max(b.split)),
            (p.short.min(b.short), p.short.max(b.short)),
            (p.to.min(b.to), p.to.max(b.to)),
        ] {
            for (m, ids) in self.minutes.range(lo..hi) {
                if p.place(*m) != b.place(*m) {
                    touched.extend(ids.iter().copied());
                }
            }
        }
        // The minutes that left the range go; those that entered are read.
        let gone: Vec<i64> = self.minutes.range(..b.from).map(|(m, _)| *m).collect();
        for m in gone {
            self.minutes.remove(&m);
        }
        for id in &touched {
            if let Some(s) = self.sessions.get_mut(id) {
                s.calls.retain(|c| c.minute >= b.from);
            }
        }
        if p.to < b.to {
            let sql = read_sql(session_segments, p.to, b.to);
            let rows = read(sql.clone()).await?;
            touched.extend(self.add_rows(&rows, segments).map_err(failed(&sql))?);
        }
        self.bounds = Some(b);
        for id in touched {
            self.refold(id, &b);
        }
        self.output(segments).map_err(failed("the folded calls"))
    }

    /// Adds `rows` read of `sessions`; returns the sessions they belong to.
    fn add_rows(&mut self, rows: &Rows, segments: usize) -> Result<HashSet<u32>, ArrowError> {
        let mut fresh = HashSet::new();
        for batch in rows.batches() {
            let (ids, services, operations) =
                (strings(batch, "session_id")?, strings(batch, "service")?, strings(batch, "operation")?);
            let segs: Vec<StringArray> =
                (0..segments).map(|i| strings(batch, &format!("seg{i}"))).collect::<Result<_, _>>()?;
            let [minute, seen, calls, errors, retries, auto_retries, recovered, recovered_end, auto_recovered] = [
                "minute",
                "seen",
                "calls",
                "errors",
                "retries",
                "auto_retries",
                "recovered",
                "recovered_end",
                "auto_recovered",
            ]
            .map(|c| ints(batch, c));
            let (minute, seen, calls, errors) = (minute?, seen?, calls?, errors?);
            let (retries, auto_retries, recovered, recovered_end, auto_recovered) =
                (retries?, auto_retries?, recovered?, recovered_end?, auto_recovered?);
            let value = |a: &Int64Array, i: usize| if a.is_null(i) { 0 } else { a.value(i) };
            for i in 0..batch.num_rows() {
                let key: Vec<Option<String>> = [&services, &operations]
                    .into_iter()
                    .chain(segs.iter())
                    .map(|a| (!a.is_null(i)).then(|| a.value(i).to_owned()))
                    .collect();
                let series = match self.numbered.get(&key) {
                    Some(n) => *n,
                    None => {
                        let n = self.series.len() as u32;
                        self.series.push(key.clone());
                        self.numbered.insert(key, n);
                        n
                    }
                };
                let id = match self.ids.get(ids.value(i)) {
                    Some(n) => *n,
                    None => {
                        let n = self.ids.len() as u32;
                        self.ids.insert(ids.value(i).into(), n);
                        n
                    }
                };
                let call = Call {
                    minute: minute.value(i),
                    series,
                    seen: value(&seen, i),
                    calls: value(&calls, i),
                    errors: value(&errors, i),
                    retries: value(&retries, i),
                    auto_retries: value(&auto_retries, i),
                    recovered: value(&recovered, i),
                    recovered_end: (!recovered_end.is_null(i)).then(|| recovered_end.value(i)),
                    auto_recovered: value(&auto_recovered, i),
                };
                self.minutes.entry(call.minute).or_default().push(id);
                self.sessions.entry(id).or_default().calls.push(call);
                fresh.insert(id);
            }
        }
        Ok(fresh)
    }

    /// Takes what session `id` added out of the groups.
    fn retract(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        for (g, sums) in s.adds.drain(..) {
            if let Some(total) = self.groups.get_mut(&g) {
                total.iter_mut().zip(sums).for_each(|(t, v)| *t -= v);
                if total[0] == 0 {
                    self.groups.remove(&g);
                }
            }
        }
    }

    /// Replaces what session `id` adds to the groups with what it adds over
    /// its rows in `b` (a session left without rows goes).
    fn refold(&mut self, id: u32, b: &Bounds) {
        self.retract(id);
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.calls.is_empty() {
            self.sessions.remove(&id);
            return;
        }
        s.adds = adds(&s.calls, b);
        for (g, sums) in &s.adds {
            let total = self.groups.entry(*g).or_insert([0; SUMS.len()]);
            total.iter_mut().zip(sums).for_each(|(t, v)| *t += v);
        }
    }

    /// The groups as the statement's rows.
    fn output(&self, segments: usize) -> Result<Rows, ArrowError> {
        let mut groups: Vec<(&Group, &Sums)> = self.groups.iter().collect();
        groups.sort_by_key(|(g, _)| (g.series, g.cur, g.cur_s, g.present_s));
        let text = |k: usize| -> ArrayRef {
            Arc::new(groups.iter().map(|(g, _)| self.series[g.series as usize][k].as_deref()).collect::<StringArray>())
        };
        let mut fields = vec![
            Field::new("service", DataType::Utf8, true),
            Field::new("operation", DataType::Utf8, true),
            Field::new("cur", DataType::Int64, true),
            Field::new("cur_s", DataType::Int64, true),
            Field::new("present_s", DataType::Int64, true),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            text(0),
            text(1),
            Arc::new(groups.iter().map(|(g, _)| Some(g.cur)).collect::<Int64Array>()),
            Arc::new(groups.iter().map(|(g, _)| g.cur_s).collect::<Int64Array>()),
            Arc::new(groups.iter().map(|(g, _)| Some(g.present_s)).collect::<Int64Array>()),
        ];
        for i in 0..segments {
            fields.push(Field::new(format!("seg{i}"), DataType::Utf8, true));
            columns.push(text(2 + i));
        }
        for (k, name) in SUMS.iter().enumerate() {
            fields.push(Field::new(*name, DataType::Int64, true));
            columns.push(Arc::new(groups.iter().map(|(_, s)| Some(s[k])).collect::<Int64Array>()));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        Ok(Rows::new(vec![batch]))
    }
}
