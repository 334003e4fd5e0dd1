//! Sessions folded from one continuous pass to the next.
//!
//! The session detectors read statements over `sessions` that aggregate
//! every row of a pass's range (3.5 hours by default) per session, then per
//! operation, side and segment. Successive passes, live or replayed by a
//! backtest, move their windows a minute at a time: one minute enters the
//! range, one enters the last minute and one leaves it, one moves from the
//! window to the baseline and one leaves the baseline. Only the sessions with
//! rows in those minutes count differently in the next pass.
//!
//! A fold keeps the range's rows by session (`Kept`). A pass reads only the
//! minutes that entered the range and drops those that left. While traffic
//! arrives, the store changes sessions between passes: it tells from which
//! minute the sessions changed since the rows were read begin
//! ([`andon_store::Store::sessions_changed_since`]; a session's rows change
//! together), and the fold reads those minutes again. It starts again from
//! one read of the whole range when the store cannot tell (retention, the
//! sessions rebuilt), for another tenant, or for windows that do not follow on.
//!
//! - [`CallsFold`] answers the retry and silent-recovery detectors' shared
//!   statement (`detectors/calls_sessions_last_minute.sql`): it keeps what
//!   each session adds to the statement's groups and recomputes only the
//!   sessions with rows in a minute whose place changed, so a pass costs in
//!   proportion to those sessions, not to the range.
//! - [`PageFold`] keeps each session's first and last call of each request
//!   and its segment values, recomputed for the sessions whose rows changed;
//!   the drop-off funnels are weighed from them in one pass over the sessions
//!   ([`crate::detectors::drop_off::folded`]), not over their rows.
//!
//! - [`MetricsFold`] does the same for the latency and error-rate
//!   detectors' statements over `span_metrics` and their histories, keeping
//!   cells by minute ([`andon_store::Store::metrics_changed_since`]).
//!
//! All give the statements' rows (the drop-off sums and the histories'
//! log-latency sums to within rounding, as the order of a sum of
//! floating-point values goes); the `engine` tests compare them with the SQL
//! over successive passes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};
use hashbrown::{HashMap, HashSet};

use crate::AnalysisError;
use crate::detectors::drop_off::{Journeys, ResolvedFlow};
use crate::minutes::MINUTE_NS;
use crate::sql::Rows;

mod metrics;
pub use metrics::{HistorySums, MetricsFold, Side};

/// Where a minute lies in a pass: outside its range, in the baseline, in the
/// window before its last minute, or in the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Place {
    Out,
    Baseline,
    Window,
    Last,
}

/// A pass's bounds in nanoseconds: the range `[from, to)`, the window from
/// `split` (where the baseline ends), its last minute from `short`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
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

/// Whose rows a fold keeps: the tenant, how the segment columns are read
/// (a statement's `{{session_segments}}`), and the store's
/// [`andon_store::Store::sessions_version`] when they were read.
pub type Source = (andon_model::Tenant, String, u64);

/// The first minute (Unix ns) whose rows may have changed since rows were
/// read as `kept` says, for a reader of `source`: `Some(None)` when none may,
/// `None` when they must be read whole (another tenant or columns, or the
/// store cannot tell; `changed` answers from the version they were read at).
fn changed_minute(
    kept: Option<&Source>,
    source: &Source,
    changed: impl FnOnce(u64) -> Option<Option<i64>>,
) -> Option<Option<i64>> {
    let since = match kept {
        Some(s) if s == source => Some(None),
        Some(s) if s.0 == source.0 && s.1 == source.1 => changed(s.2),
        _ => None,
    }?;
    Some(since.map(|ns| ns.div_euclid(MINUTE_NS) * MINUTE_NS))
}

/// A row of `sessions` as a fold keeps it.
trait Timed {
    fn minute(&self) -> i64;
}

impl Timed for Call {
    fn minute(&self) -> i64 {
        self.minute
    }
}

/// Rows of `sessions` kept by session over a range of minutes, from one pass
/// to the next.
#[derive(Debug)]
struct Kept<R> {
    source: Option<Source>,
    /// `[from, to)` in nanoseconds.
    range: Option<(i64, i64)>,
    /// The sessions (numbered) with rows in each minute of the range, some
    /// more than once.
    minutes: BTreeMap<i64, Vec<u32>>,
    sessions: HashMap<u32, Vec<R>>,
    /// The kept sessions' ids, numbered, both ways (a session's number goes
    /// with its last row), and the next number.
    ids: HashMap<Arc<str>, u32>,
    names: HashMap<u32, Arc<str>>,
    next: u32,
    /// How many times the rows were read again for a whole range.
    rebuilds: u64,
}

impl<R> Default for Kept<R> {
    fn default() -> Self {
        Self {
            source: None,
            range: None,
            minutes: BTreeMap::new(),
            sessions: HashMap::new(),
            ids: HashMap::new(),
            names: HashMap::new(),
            next: 0,
            rebuilds: 0,
        }
    }
}

/// What moving a fold's range changed: whether it read its whole range
/// again, and the sessions whose rows changed (all of them if it did).
struct Moved {
    rebuilt: bool,
    changed: HashSet<u32>,
    /// The first minute whose rows were read (the range's end if none was):
    /// the rows of the minutes from the range's start up to it are as before.
    read_from: i64,
}

fn failed(sql: &str) -> impl Fn(ArrowError) -> AnalysisError + '_ {
    move |e| AnalysisError::Query { message: e.to_string(), sql: sql.to_owned() }
}

/// Values numbered in the order first seen.
#[derive(Debug, Clone)]
struct Numbered<K> {
    values: Vec<K>,
    numbers: HashMap<K, u32>,
}

impl<K> Default for Numbered<K> {
    fn default() -> Self {
        Self { values: Vec::new(), numbers: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Numbered<K> {
    /// `key`'s number, the next free one if it has none yet.
    fn number(&mut self, key: K) -> u32 {
        if let Some(n) = self.numbers.get(&key) {
            return *n;
        }
        let n = self.values.len() as u32;
        self.values.push(key.clone());
        self.numbers.insert(key, n);
        n
    }

    fn get(&self, n: u32) -> &K {
        &self.values[n as usize]
    }
}

impl<R> Kept<R> {
    /// Whether the rows were read at the store's sessions `version`.
    fn read_at(&self, version: u64) -> bool {
        self.source.as_ref().is_some_and(|s| s.2 == version)
    }
}

impl<R: Timed> Kept<R> {
    /// When the rows kept can serve `source` over `[from, to)` (the same
    /// tenant and columns, and a range that starts no earlier, ends no
    /// earlier and overlaps theirs), the first minute whose rows may have
    /// changed since they were read (`Some(None)`: none; `changed` tells it
    /// from the version they were read at); `None` when the range must be
    /// read whole.
    fn follows(
        &self,
        source: &Source,
        from: i64,
        to: i64,
        changed: impl FnOnce(u64) -> Option<Option<i64>>,
    ) -> Option<Option<i64>> {
        if !self.range.is_some_and(|(f, t)| f <= from && t <= to && from < t) {
            return None;
        }
        let since = changed_minute(self.source.as_ref(), source, changed)?;
        since.is_none_or(|m| m > from).then_some(since)
    }

    /// Moves the range to `[from, to)`: drops the rows before `from` and
    /// those of the minutes from `follows` ([`Self::follows`]: the minutes
    /// the store changed since they were read), and reads what it lacks with
    /// `read` (SQL of `sql(lo, hi)` for the minutes `[lo, hi)`), every minute
    /// when `follows` is `None`. `parse` hands each row of a result to `push`
    /// with its session's id.
    #[allow(clippy::too_many_arguments)]
    async fn advance<S, F, Fut, P>(
        &mut self,
        source: Source,
        from: i64,
        to: i64,
        follows: Option<Option<i64>>,
        sql: S,
        read: F,
        mut parse: P,
    ) -> Result<Moved, AnalysisError>
    where
        S: Fn(i64, i64) -> String,
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
        P: FnMut(&RecordBatch, &mut dyn FnMut(&str, R)) -> Result<(), ArrowError>,
    {
        let rebuilt = follows.is_none();
        let mut changed = HashSet::new();
        let lo = match (self.range, follows) {
            (Some((before, end)), Some(since)) => {
                // The rows before the range, and those of the minutes the
                // store may have changed since they were read.
                let end = since.filter(|m| *m < end).unwrap_or(end);
                let mut gone: Vec<i64> = self.minutes.range(before..from).map(|(m, _)| *m).collect();
                gone.extend(self.minutes.range(end..).map(|(m, _)| *m));
                let mut touched: HashSet<u32> = HashSet::new();
                for m in gone {
                    if let Some(ids) = self.minutes.remove(&m) {
                        touched.extend(ids);
                    }
                }
                for id in &touched {
                    if let Some(rows) = self.sessions.get_mut(id) {
                        rows.retain(|r| r.minute() >= from && r.minute() < end);
                        if rows.is_empty() {
                            self.sessions.remove(id);
                            if let Some(name) = self.names.remove(id) {
                                self.ids.remove(&name);
                            }
                        }
                    }
                }
                changed.extend(touched);
                end
            }
            _ => {
                *self = Self { rebuilds: self.rebuilds + 1, ..Self::default() };
                from
            }
        };
        if lo < to {
            let q = sql(lo, to);
            let rows = read(q.clone()).await?;
            let (ids, names, next) = (&mut self.ids, &mut self.names, &mut self.next);
            let (minutes, sessions) = (&mut self.minutes, &mut self.sessions);
            let mut push = |id: &str, r: R| {
                let n = match ids.get(id) {
                    Some(n) => *n,
                    None => {
                        let (n, name) = (*next, Arc::<str>::from(id));
                        *next = next.wrapping_add(1);
                        ids.insert(Arc::clone(&name), n);
                        names.insert(n, name);
                        n
                    }
                };
                minutes.entry(r.minute()).or_default().push(n);
                sessions.entry(n).or_default().push(r);
                changed.insert(n);
            };
            for b in rows.batches() {
                parse(b, &mut push).map_err(failed(&q))?;
            }
        }
        self.source = Some(source);
        self.range = Some((from, to));
        Ok(Moved { rebuilt, changed, read_from: lo.min(to) })
    }
}

/// The rows of `sessions` in the minutes `[lo, hi)` as both folds read them
/// (each its own columns of them), with the segment columns
/// `session_segments` (`, … AS seg0`, …): one statement, so that the rows one
/// fold read for a pass serve the other ([`SharedRead`]).
fn sessions_query(session_segments: &str, lo: i64, hi: i64) -> String {
    format!(
        "SELECT session_id, service_name AS service, operation, route, span_name, minute, first_call, last_call, \
         first_page, coalesce(seen_end, session_end) AS seen{session_segments}, calls, errors, retries, \
         auto_retries, recovered, recovered_end, auto_recovered FROM sessions WHERE minute >= {} AND minute < {}",
        ts(lo),
        ts(hi)
    )
}

/// What a statement over `sessions` is read as: (tenant, the store's
/// sessions version when it was read, the statement).
pub type ReadKey = (andon_model::Tenant, u64, String);

/// The last read of `sessions` one fold made, left for the other: a pass
/// moves both folds by the same minutes, and the second to read them takes
/// the first's rows ([`sessions_query`]) instead of reading them again.
#[derive(Debug, Default)]
pub struct SharedRead(std::sync::Mutex<Option<(ReadKey, Rows)>>);

impl SharedRead {
    /// The rows of `key`'s statement: the ones left by the read before, taken,
    /// when it read the same statement at the same version; else read with
    /// `read`, and left for the next.
    pub async fn rows<F, Fut>(&self, key: ReadKey, read: F) -> Result<Rows, AnalysisError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
    {
        let left = {
            let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if held.as_ref().is_some_and(|(k, _)| *k == key) { held.take().map(|(_, rows)| rows) } else { None }
        };
        if let Some(rows) = left {
            return Ok(rows);
        }
        let rows = read(key.2.clone()).await?;
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((key, rows.clone()));
        Ok(rows)
    }
}

/// Row `i` of `columns` (service, operation, segment values), owned: a
/// series' key.
fn series_key<'a>(columns: impl IntoIterator<Item = &'a StringArray>, i: usize) -> Vec<Option<String>> {
    columns.into_iter().map(|a| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect()
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

/// A timestamp literal of `ns`.
fn ts(ns: i64) -> String {
    crate::sql::ts(DateTime::from_timestamp_nanos(ns))
}

/// Sessions that called a series, and those of them that retried it.
type Retrying = (i64, i64);

/// The rows of a continuous pass's shared calls statement, kept from one pass
/// to the next.
#[derive(Debug, Default)]
pub struct CallsFold {
    kept: Kept<Call>,
    bounds: Option<Bounds>,
    /// What each session adds to the groups.
    adds: HashMap<u32, Vec<(Group, Sums)>>,
    /// Service, operation and segment values, numbered.
    series: Numbered<Vec<Option<String>>>,
    groups: HashMap<Group, Sums>,
    /// Per minute of the range whose rows are as read: per series, the
    /// sessions that called it in the minute and those that retried it
    /// ([`Self::retry_history`] in periods of a minute).
    minute_retries: BTreeMap<i64, Vec<(u32, Retrying)>>,
}

impl CallsFold {
    /// How many times the fold read its whole range.
    pub fn rebuilds(&self) -> u64 {
        self.kept.rebuilds
    }

    /// The statement's rows for a pass over `b`, reading what it lacks of
    /// `sessions` with `read` (SQL to rows). `segments` is how many segment
    /// columns (`seg0`, ...) the statement has, read as `source` says.
    pub async fn rows<F, Fut>(
        &mut self,
        source: Source,
        segments: usize,
        b: Bounds,
        changed_since: impl FnOnce(u64) -> Option<Option<i64>>,
        read: F,
    ) -> Result<Rows, AnalysisError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
    {
        // The sessions with rows in a minute that moved into or out of the
        // window or the last minute.
        let mut moved: HashSet<u32> = HashSet::new();
        let follows = self.kept.follows(&source, b.from, b.to, changed_since);
        if let Some(p) = self.bounds.filter(|_| follows.is_some()) {
            for (lo, hi) in [(p.split.min(b.split), p.split.max(b.split)), (p.short.min(b.short), p.short.max(b.short))]
            {
                for (m, ids) in self.kept.minutes.range(lo..hi) {
                    if p.place(*m) != b.place(*m) {
                        moved.extend(ids.iter().copied());
                    }
                }
            }
        }
        let session_segments = source.1.clone();
        let sql = |lo: i64, hi: i64| sessions_query(&session_segments, lo, hi);
        let series = &mut self.series;
        let parse = |batch: &RecordBatch, push: &mut dyn FnMut(&str, Call)| -> Result<(), ArrowError> {
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
                let key = series_key([&services, &operations].into_iter().chain(segs.iter()), i);
                let call = Call {
                    minute: minute.value(i),
                    series: series.number(key),
                    seen: value(&seen, i),
                    calls: value(&calls, i),
                    errors: value(&errors, i),
                    retries: value(&retries, i),
                    auto_retries: value(&auto_retries, i),
                    recovered: value(&recovered, i),
                    recovered_end: (!recovered_end.is_null(i)).then(|| recovered_end.value(i)),
                    auto_recovered: value(&auto_recovered, i),
                };
                push(ids.value(i), call);
            }
            Ok(())
        };
        let Moved { rebuilt, changed, read_from } =
            self.kept.advance(source, b.from, b.to, follows, sql, read, parse).await?;
        self.bounds = Some(b);
        if rebuilt {
            self.groups.clear();
            self.adds.clear();
        }
        self.minute_retries.retain(|m, _| (b.from..read_from).contains(m));
        for id in changed.into_iter().chain(moved) {
            self.refold(id, &b);
        }
        self.output(segments).map_err(failed("the folded calls"))
    }

    /// The rows of `retry_history_sessions.sql` over `[from, end)`, in
    /// periods of `window` nanoseconds counted back from `end`: per
    /// operation, segment values and period, the sessions that called the
    /// operation and those of them that retried it. `None` when the kept
    /// range does not hold `[from, end)`.
    pub fn retry_history(
        &mut self,
        from: i64,
        end: i64,
        window: i64,
        segments: usize,
    ) -> Option<Result<Rows, ArrowError>> {
        let (lo, hi) = self.kept.range?;
        if from < lo || end > hi || window <= 0 {
            return None;
        }
        let mut groups: HashMap<(u32, i64), (i64, i64)> = HashMap::new();
        if window == MINUTE_NS && from.rem_euclid(MINUTE_NS) == 0 && end.rem_euclid(MINUTE_NS) == 0 {
            // Periods of whole minutes: each minute's counts, kept while its
            // rows are.
            for m in (from..end).step_by(MINUTE_NS as usize) {
                if !self.minute_retries.contains_key(&m) {
                    let counts = self.retries(m, m + MINUTE_NS, MINUTE_NS).into_iter().map(|((s, _), n)| (s, n));
                    self.minute_retries.insert(m, counts.collect());
                }
                groups.extend(self.minute_retries[&m].iter().map(|(s, n)| ((*s, m), *n)));
            }
        } else {
            groups = self.retries(from, end, window);
        }
        let mut groups: Vec<((u32, i64), (i64, i64))> = groups.into_iter().collect();
        groups.sort_unstable_by_key(|(k, _)| *k);
        let text = |k: usize| -> ArrayRef {
            Arc::new(groups.iter().map(|((s, _), _)| self.series.get(*s)[k].as_deref()).collect::<StringArray>())
        };
        let periods = arrow::array::TimestampNanosecondArray::from_iter_values(groups.iter().map(|((_, p), _)| *p))
            .with_timezone("UTC");
        let mut fields = vec![
            Field::new("service", DataType::Utf8, true),
            Field::new("operation", DataType::Utf8, true),
            Field::new("period", periods.data_type().clone(), true),
        ];
        let mut columns: Vec<ArrayRef> = vec![text(0), text(1), Arc::new(periods)];
        for i in 0..segments {
            fields.push(Field::new(format!("seg{i}"), DataType::Utf8, true));
            columns.push(text(2 + i));
        }
        fields.push(Field::new("sessions", DataType::Int64, true));
        columns.push(Arc::new(groups.iter().map(|(_, (n, _))| Some(*n)).collect::<Int64Array>()));
        fields.push(Field::new("retrying_sessions", DataType::Int64, true));
        columns.push(Arc::new(groups.iter().map(|(_, (_, x))| Some(*x)).collect::<Int64Array>()));
        Some(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map(|b| Rows::new(vec![b])))
    }

    /// Per series and period of `window` ns counted back from `end`, over
    /// `[from, end)`: the sessions that called it, and those that retried it.
    fn retries(&self, from: i64, end: i64, window: i64) -> HashMap<(u32, i64), (i64, i64)> {
        // Per session, operation and segment values, and period: its retries.
        let mut per: HashMap<(u32, u32, i64), i64> = HashMap::new();
        let within: HashSet<u32> =
            self.kept.minutes.range(from..end).flat_map(|(_, ids)| ids.iter().copied()).collect();
        for id in &within {
            let Some(calls) = self.kept.sessions.get(id) else { continue };
            for c in calls.iter().filter(|c| (from..end).contains(&c.minute)) {
                let period = end + (c.minute - end).div_euclid(window) * window;
                *per.entry((*id, c.series, period)).or_default() += c.retries;
            }
        }
        // Per operation, segment values and period: sessions, and those that retried.
        let mut groups: HashMap<(u32, i64), (i64, i64)> = HashMap::new();
        for ((_, series, period), retries) in per {
            let g = groups.entry((series, period)).or_default();
            g.0 += 1;
            g.1 += i64::from(retries > 0);
        }
        groups
    }

    /// Replaces what session `id` adds to the groups with what it adds over
    /// its rows in `b`.
    fn refold(&mut self, id: u32, b: &Bounds) {
        for (g, sums) in self.adds.remove(&id).into_iter().flatten() {
            if let Some(total) = self.groups.get_mut(&g) {
                total.iter_mut().zip(sums).for_each(|(t, v)| *t -= v);
                if total[0] == 0 {
                    self.groups.remove(&g);
                }
            }
        }
        let Some(calls) = self.kept.sessions.get(&id) else { return };
        let now = adds(calls, b);
        for (g, sums) in &now {
            let total = self.groups.entry(*g).or_insert([0; SUMS.len()]);
            total.iter_mut().zip(sums).for_each(|(t, v)| *t += v);
        }
        self.adds.insert(id, now);
    }

    /// The groups as the statement's rows.
    fn output(&self, segments: usize) -> Result<Rows, ArrowError> {
        let mut groups: Vec<(&Group, &Sums)> = self.groups.iter().collect();
        groups.sort_by_key(|(g, _)| (g.series, g.cur, g.cur_s, g.present_s));
        let text = |k: usize| -> ArrayRef {
            Arc::new(groups.iter().map(|(g, _)| self.series.get(g.series)[k].as_deref()).collect::<StringArray>())
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

/// One row of `sessions` as the drop-off funnels read it.
#[derive(Debug, Clone)]
struct PageCall {
    minute: i64,
    /// The service ([`PageFold::services`]).
    service: u32,
    /// When the session first requested the operation as a page in this
    /// minute (`first_page`), if it did.
    first_page: Option<i64>,
    /// Operation, route and span name ([`Pages::requests`]).
    request: u32,
    /// Segment values ([`Pages::segments`]).
    segs: u32,
    first: i64,
    last: i64,
    err: bool,
}

impl Timed for PageCall {
    fn minute(&self) -> i64 {
        self.minute
    }
}

/// One session over a pass's range, as the drop-off funnels read it: when
/// it was first seen, the greatest of each segment column's values, and per
/// operation, route and span name its first and last call and whether one
/// failed.
#[derive(Debug)]
pub struct SessionPages {
    /// The session's number in the fold.
    pub id: u32,
    pub first_seen: i64,
    /// Into [`Pages::segments`].
    pub segs: u32,
    /// `(request, first call, last call, failed)`, `request` into [`Pages::requests`].
    pub requests: Vec<(u32, i64, i64, bool)>,
    /// `(service, segment values, first call)` of each service and segment
    /// values its rows have, the first call the earliest of theirs: where a
    /// pass finds the releases that served it.
    pub served: Vec<(u32, u32, i64)>,
}

/// Every session of a pass's range, folded by page request.
#[derive(Debug)]
pub struct Pages {
    /// Operation, route and span name, by number.
    pub requests: Vec<[Option<String>; 3]>,
    /// Segment values, by number.
    pub segments: Vec<Vec<Option<String>>>,
    /// Services, by number ([`SessionPages::served`]).
    pub services: Vec<Option<String>>,
    pub sessions: Vec<Arc<SessionPages>>,
}

/// The sessions of a range as the drop-off funnels read them, kept from one
/// pass to the next.
#[derive(Debug, Default)]
pub struct PageFold {
    kept: Kept<PageCall>,
    summaries: HashMap<u32, Arc<SessionPages>>,
    requests: Numbered<[Option<String>; 3]>,
    segments: Numbered<Vec<Option<String>>>,
    services: Numbered<Option<String>>,
    /// Journeys' pages (service and operation), by number, and the page of
    /// each service and request.
    pages: Numbered<(Option<String>, String)>,
    page_of: HashMap<(u32, u32), Option<u32>>,
    /// Each session's journey over the minutes `journey_bounds` (its pages
    /// and first requests of each), kept from one pass to the next.
    journeys: HashMap<u32, Arc<Vec<(u32, i64)>>>,
    journey_bounds: Option<(i64, i64)>,
    /// The sessions whose rows changed since their journeys were taken.
    moved: HashSet<u32>,
    /// The flows made of the journeys as they stand ([`Self::flows`]), with
    /// how many rows the journeys are; dropped when a journey is taken again.
    flows: Option<(Vec<ResolvedFlow>, usize)>,
}

impl PageFold {
    /// How many times the fold read its whole range.
    pub fn rebuilds(&self) -> u64 {
        self.kept.rebuilds
    }

    /// Whether its rows were read at the store's sessions `version`.
    pub fn read_at(&self, version: u64) -> bool {
        self.kept.read_at(version)
    }

    /// Moves the fold to `[from, to)`, reading what it lacks of `sessions`
    /// with `read`; `segments` segment columns read as `source` says. Its
    /// sessions are then [`Self::kept_pages`], its journeys [`Self::journeys`].
    pub async fn advance<F, Fut>(
        &mut self,
        source: Source,
        segments: usize,
        from: i64,
        to: i64,
        changed_since: impl FnOnce(u64) -> Option<Option<i64>>,
        read: F,
    ) -> Result<(), AnalysisError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
    {
        let session_segments = source.1.clone();
        let sql = |lo: i64, hi: i64| sessions_query(&session_segments, lo, hi);
        let (requests, seg_values, services) = (&mut self.requests, &mut self.segments, &mut self.services);
        let parse = |batch: &RecordBatch, push: &mut dyn FnMut(&str, PageCall)| -> Result<(), ArrowError> {
            let (ids, service) = (strings(batch, "session_id")?, strings(batch, "service")?);
            let first_page = ints(batch, "first_page")?;
            let texts = [strings(batch, "operation")?, strings(batch, "route")?, strings(batch, "span_name")?];
            let segs: Vec<StringArray> =
                (0..segments).map(|i| strings(batch, &format!("seg{i}"))).collect::<Result<_, _>>()?;
            let (minute, first, last, errors) =
                (ints(batch, "minute")?, ints(batch, "first_call")?, ints(batch, "last_call")?, ints(batch, "errors")?);
            let text = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
            for i in 0..batch.num_rows() {
                let request = [text(&texts[0], i), text(&texts[1], i), text(&texts[2], i)];
                let values: Vec<Option<String>> = segs.iter().map(|a| text(a, i)).collect();
                let call = PageCall {
                    minute: minute.value(i),
                    service: services.number(text(&service, i)),
                    first_page: (!first_page.is_null(i)).then(|| first_page.value(i)),
                    request: requests.number(request),
                    segs: seg_values.number(values),
                    first: first.value(i),
                    last: last.value(i),
                    err: !errors.is_null(i) && errors.value(i) > 0,
                };
                push(ids.value(i), call);
            }
            Ok(())
        };
        let follows = self.kept.follows(&source, from, to, changed_since);
        let Moved { rebuilt, changed, .. } = self.kept.advance(source, from, to, follows, sql, read, parse).await?;
        if rebuilt {
            self.summaries.clear();
            self.journeys.clear();
            self.journey_bounds = None;
            self.moved.clear();
            self.flows = None;
        }
        self.moved.extend(changed.iter().copied());
        for id in changed {
            self.summaries.remove(&id);
            let Some(calls) = self.kept.sessions.get(&id) else { continue };
            let summary = summarize(id, &mut self.segments, calls);
            self.summaries.insert(id, Arc::new(summary));
        }
        Ok(())
    }

    /// Every session the fold keeps, as its last move left them.
    pub fn kept_pages(&self) -> Pages {
        let mut sessions: Vec<Arc<SessionPages>> = self.summaries.values().cloned().collect();
        sessions.sort_unstable_by_key(|s| s.id);
        Pages {
            requests: self.requests.values.clone(),
            segments: self.segments.values.clone(),
            services: self.services.values.clone(),
            sessions,
        }
    }
}

impl PageFold {
    /// `journeys_sessions.sql`'s rows over the minutes `[from, to)` of the
    /// range the fold was last moved to, numbered: per session, each page
    /// (service and operation) it requested there and its first such
    /// request. A session's journey is taken again only when its rows
    /// changed or it has rows in a minute that entered or left `[from, to)`
    /// since the last call. `None` when the kept range does not hold
    /// `[from, to)`.
    pub fn journeys(&mut self, from: i64, to: i64) -> Option<Journeys> {
        self.take_journeys(from, to)?;
        Some(self.kept_journeys())
    }

    /// The flows `make` makes of [`Self::journeys`] over `[from, to)`, and
    /// how many rows the journeys are: made again only when a journey was
    /// taken again since the last call, so that the judgements of one pass
    /// (its window's and its last minute's, over one baseline) make them
    /// once. `make` must make the same flows of the same journeys every
    /// time. `None` when the kept range does not hold `[from, to)`.
    pub fn flows(
        &mut self,
        from: i64,
        to: i64,
        make: impl FnOnce(&Journeys) -> Vec<ResolvedFlow>,
    ) -> Option<(Vec<ResolvedFlow>, usize)> {
        self.take_journeys(from, to)?;
        if self.flows.is_none() {
            let journeys = self.kept_journeys();
            self.flows = Some((make(&journeys), journeys.len()));
        }
        self.flows.clone()
    }

    fn kept_journeys(&self) -> Journeys {
        Journeys { pages: self.pages.values.clone(), sessions: self.journeys.values().cloned().collect() }
    }

    /// Takes again the journeys over `[from, to)` of the sessions that
    /// moved or have rows in a minute that entered or left them; `None`
    /// when the kept range does not hold `[from, to)`.
    fn take_journeys(&mut self, from: i64, to: i64) -> Option<()> {
        let (lo, hi) = self.kept.range?;
        if from < lo || to > hi {
            return None;
        }
        let mut again = std::mem::take(&mut self.moved);
        let ids = |range: std::ops::Range<i64>| {
            self.kept.minutes.range(range).flat_map(|(_, ids)| ids.iter().copied()).collect::<Vec<u32>>()
        };
        match self.journey_bounds {
            // The minutes in one of the two ranges only.
            Some((f, t)) => {
                again.extend(ids(f.min(from)..f.max(from)));
                again.extend(ids(t.min(to)..t.max(to)));
            }
            None => {
                self.journeys.clear();
                again.extend(ids(from..to));
            }
        }
        if !again.is_empty() || self.journey_bounds != Some((from, to)) {
            self.flows = None;
        }
        for id in again {
            let mut visits: Vec<(u32, i64)> = Vec::new();
            let calls = self.kept.sessions.get(&id).map_or(&[][..], Vec::as_slice);
            for c in calls.iter().filter(|c| (from..to).contains(&c.minute)) {
                let Some(t) = c.first_page else { continue };
                let (requests, pages, services) = (&self.requests, &mut self.pages, &self.services);
                let page = *self.page_of.entry((c.service, c.request)).or_insert_with(|| {
                    let operation = requests.get(c.request)[0].clone()?;
                    Some(pages.number((services.get(c.service).clone(), operation)))
                });
                let Some(page) = page else { continue };
                match visits.iter_mut().find(|(p, _)| *p == page) {
                    Some((_, first)) => *first = (*first).min(t),
                    None => visits.push((page, t)),
                }
            }
            if visits.is_empty() {
                self.journeys.remove(&id);
            } else {
                self.journeys.insert(id, Arc::new(visits));
            }
        }
        self.journey_bounds = Some((from, to));
        Some(())
    }
}

/// One session over its rows in the range; the greatest segment values are
/// numbered in `segments`.
fn summarize(id: u32, segments: &mut Numbered<Vec<Option<String>>>, calls: &[PageCall]) -> SessionPages {
    let first_seen = calls.iter().map(|c| c.first).min().unwrap_or(0);
    // The greatest value of each segment column, as SQL's `max` (nulls aside).
    let mut greatest: Vec<Option<&String>> = Vec::new();
    for c in calls {
        let values = segments.get(c.segs);
        greatest.resize(values.len(), None);
        for (g, v) in greatest.iter_mut().zip(values) {
            if let Some(v) = v
                && g.is_none_or(|g| v > g)
            {
                *g = Some(v);
            }
        }
    }
    let values: Vec<Option<String>> = greatest.into_iter().map(|v| v.cloned()).collect();
    let segs = segments.number(values);
    let mut requests: Vec<(u32, i64, i64, bool)> = Vec::new();
    let mut served: Vec<(u32, u32, i64)> = Vec::new();
    for c in calls {
        match served.iter_mut().find(|r| r.0 == c.service && r.1 == c.segs) {
            Some(r) => r.2 = r.2.min(c.first),
            None => served.push((c.service, c.segs, c.first)),
        }
        match requests.iter_mut().find(|r| r.0 == c.request) {
            Some(r) => {
                r.1 = r.1.min(c.first);
                r.2 = r.2.max(c.last);
                r.3 |= c.err;
            }
            None => requests.push((c.request, c.first, c.last, c.err)),
        }
    }
    SessionPages { id, first_seen, segs, requests, served }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampNanosecondArray;

    const MINUTE: i64 = 60_000_000_000;

    /// A row of `sessions`: session, operation, minute and first call.
    type Row<'a> = (&'a str, &'a str, i64, i64);

    /// Rows of `sessions` as the page fold reads them.
    fn rows(calls: &[Row<'_>]) -> Rows {
        let ts = |f: &dyn Fn(&Row<'_>) -> i64| -> ArrayRef {
            Arc::new(TimestampNanosecondArray::from_iter_values(calls.iter().map(f)).with_timezone("UTC"))
        };
        let text = |f: &dyn Fn(&Row<'_>) -> Option<String>| -> ArrayRef {
            Arc::new(calls.iter().map(f).collect::<StringArray>())
        };
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("session_id", text(&|c| Some(c.0.to_owned()))),
            ("service", text(&|_| Some("frontend".to_owned()))),
            ("operation", text(&|c| Some(c.1.to_owned()))),
            ("route", text(&|_| None)),
            ("span_name", text(&|c| Some(c.1.to_owned()))),
            ("minute", ts(&|c| c.2 * MINUTE)),
            ("first_call", ts(&|c| c.3)),
            ("last_call", ts(&|c| c.3 + 1)),
            ("errors", Arc::new(calls.iter().map(|_| Some(0i64)).collect::<Int64Array>())),
            // `GET /cart` is requested by a page's script, not as a page.
            (
                "first_page",
                Arc::new(
                    calls
                        .iter()
                        .map(|c| (c.1 != "GET /cart").then_some(c.3))
                        .collect::<TimestampNanosecondArray>()
                        .with_timezone("UTC"),
                ),
            ),
            ("seg0", text(&|c| Some(if c.0 == "b" { "ios" } else { "android" }.to_owned()))),
        ];
        Rows::new(vec![RecordBatch::try_from_iter(columns).unwrap()])
    }

    #[test]
    fn a_fold_reads_only_the_minutes_that_entered_and_forgets_the_sessions_that_left() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let tenant = andon_model::Tenant::default_tenant();
        let source = |version| (tenant.clone(), ", seg0".to_owned(), version);
        let asked = std::sync::Mutex::new(Vec::new());
        let serve = |answer: Rows| {
            let asked = &asked;
            move |sql: String| {
                asked.lock().unwrap().push(sql);
                let answer = answer.clone();
                async move { Ok::<_, AnalysisError>(answer) }
            }
        };
        let mut fold = PageFold::default();
        // Moves the fold and hands out its sessions.
        let moved = |fold: &mut PageFold, (source, segments, from, to, read)| {
            rt.block_on(fold.advance(source, segments, from, to, |_| None, read)).map(|()| fold.kept_pages())
        };
        // Minutes 0..3: session a in minutes 0 and 2, b in minute 1.
        let first = rows(&[("a", "GET /", 0, 10), ("b", "GET /", 1, 70), ("a", "GET /cart", 2, 130)]);
        let pages = moved(&mut fold, (source(7), 1, 0, 3 * MINUTE, serve(first))).unwrap();
        assert_eq!(pages.sessions.len(), 2);
        let a = pages.sessions.iter().find(|s| s.first_seen == 10).unwrap();
        assert_eq!(a.requests.len(), 2, "a's two requests");
        assert_eq!(pages.segments[a.segs as usize], vec![Some("android".to_owned())]);
        // The next pass: minute 0 leaves, minute 3 enters with a new session c.
        let next = rows(&[("c", "GET /", 3, 190)]);
        let pages = moved(&mut fold, (source(7), 1, MINUTE, 4 * MINUTE, serve(next))).unwrap();
        let asked_now = asked.lock().unwrap().clone();
        assert_eq!(asked_now.len(), 2);
        assert!(asked_now[1].contains("minute >= TIMESTAMP '1970-01-01T00:03:00"), "{}", asked_now[1]);
        let mut seen: Vec<(i64, usize)> = pages.sessions.iter().map(|s| (s.first_seen, s.requests.len())).collect();
        seen.sort();
        assert_eq!(seen, [(70, 1), (130, 1), (190, 1)], "a is now first seen at its call of minute 2");
        assert_eq!(fold.rebuilds(), 1);
        // The journeys of minutes 1..4: each session's first page request,
        // a's `GET /cart` none; of minute 0, gone from the range, none.
        let firsts = |j: &Journeys| {
            let mut v: Vec<Vec<(String, i64)>> = j
                .sessions
                .iter()
                .map(|s| s.iter().map(|(p, t)| (j.pages[*p as usize].1.clone(), *t)).collect())
                .collect();
            v.sort();
            v
        };
        let journeys = fold.journeys(MINUTE, 4 * MINUTE).unwrap();
        let page = |t: i64| vec![("GET /".to_owned(), t)];
        assert_eq!(firsts(&journeys), [page(70), page(190)]);
        assert_eq!(journeys.pages, [(Some("frontend".to_owned()), "GET /".to_owned())]);
        assert!(fold.journeys(0, 4 * MINUTE).is_none());
        // Minute 1 leaves the journeys' minutes, and b with it; then it
        // comes back.
        assert_eq!(firsts(&fold.journeys(2 * MINUTE, 4 * MINUTE).unwrap()), [page(190)]);
        assert_eq!(firsts(&fold.journeys(MINUTE, 3 * MINUTE).unwrap()), [page(70)]);
        // The flows of the same journeys are made once, and again once a
        // journey is taken again: by other minutes, or by `journeys`.
        let made = std::cell::Cell::new(0);
        let make = |j: &Journeys| {
            made.set(made.get() + 1);
            let name = firsts(j).iter().map(|s| s[0].1.to_string()).collect::<Vec<_>>().join(",");
            vec![ResolvedFlow { name, steps: Vec::new(), horizons: Vec::new() }]
        };
        let mut flows = |from: i64, to: i64| {
            let (flows, rows) = fold.flows(from, to, make).unwrap();
            (flows[0].name.clone(), rows, made.get())
        };
        assert_eq!(flows(MINUTE, 3 * MINUTE), ("70".to_owned(), 1, 1));
        assert_eq!(flows(MINUTE, 3 * MINUTE), ("70".to_owned(), 1, 1));
        assert_eq!(flows(2 * MINUTE, 4 * MINUTE), ("190".to_owned(), 1, 2));
        assert_eq!(flows(2 * MINUTE, 4 * MINUTE), ("190".to_owned(), 1, 2));
        assert_eq!(firsts(&fold.journeys(MINUTE, 4 * MINUTE).unwrap()), [page(70), page(190)]);
        assert_eq!(fold.flows(MINUTE, 4 * MINUTE, make).unwrap().0[0].name, "70,190");
        assert_eq!(made.get(), 3);
        // Minutes 1 and 2 leave: a and b are forgotten, their ids too.
        let pages = moved(&mut fold, (source(7), 1, 3 * MINUTE, 4 * MINUTE, serve(rows(&[])))).unwrap();
        assert_eq!(pages.sessions.iter().map(|s| s.first_seen).collect::<Vec<_>>(), [190]);
        assert_eq!((fold.kept.ids.len(), fold.kept.names.len(), fold.kept.sessions.len()), (1, 1, 1));
        // Another version of `sessions`: the whole range is read again.
        let again = rows(&[("c", "GET /", 3, 190), ("d", "GET /", 3, 200)]);
        let pages = moved(&mut fold, (source(8), 1, 3 * MINUTE, 4 * MINUTE, serve(again))).unwrap();
        assert_eq!(pages.sessions.len(), 2);
        assert_eq!(fold.rebuilds(), 2);
        assert!(fold.read_at(8) && !fold.read_at(7));
    }

    #[test]
    fn a_read_of_sessions_serves_the_next_fold_that_asks_for_it_at_the_same_version_once() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let reads = std::cell::Cell::new(0);
        let shared = SharedRead::default();
        let tenant = andon_model::Tenant::default_tenant();
        let statement = sessions_query(", os AS seg0", 0, MINUTE);
        let get = |version: u64, sql: &str| {
            let read = |_: String| {
                reads.set(reads.get() + 1);
                let answer = rows(&[("a", "GET /", 0, 10)]);
                async move { Ok::<_, AnalysisError>(answer) }
            };
            rt.block_on(shared.rows((tenant.clone(), version, sql.to_owned()), read)).unwrap().len()
        };
        // The calls fold reads the minute; the page fold takes its rows.
        assert_eq!((get(1, &statement), get(1, &statement), reads.get()), (1, 1, 1));
        // Taken once: a third fold asking reads again.
        assert_eq!((get(1, &statement), reads.get()), (1, 2));
        // The store's sessions changed since: read again.
        assert_eq!((get(2, &statement), reads.get()), (1, 3));
        // Another statement (other minutes) is read too, and replaces it.
        let later = sessions_query(", os AS seg0", MINUTE, 2 * MINUTE);
        assert_eq!((get(2, &later), get(2, &statement), reads.get()), (1, 1, 5));
        for column in ["first_page", "seen", "recovered_end", "seg0"] {
            assert!(statement.contains(column), "both folds' columns: {statement}");
        }
    }
}
