//! The detectors, one file each, and what they share. Each has its SQL in a
//! `.sql` file beside it; the SQL aggregates per operation, side (baseline or
//! current) and segment, and the detector turns those cells into tests.
//! Segment search, false-discovery control and the choice of segment are
//! shared, here.
//!
//! A new detector is a file here that implements [`Detector`] and one line in
//! the registry below.

/// Declares each detector's module and lists the detectors in the order a
/// pass runs them.
macro_rules! registry {
    ($($module:ident => $detector:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every detector, in the order a pass runs them.
        pub fn registry() -> Vec<std::sync::Arc<dyn Detector>> {
            vec![$(std::sync::Arc::new($module::$detector)),*]
        }
    };
}

registry! {
    latency_regression => LatencyRegression,
    error_rate_regression => ErrorRateRegression,
    retry => Retry,
    silent_recovery => SilentRecovery,
    drop_off => DropOff,
}

use std::borrow::Cow;
use std::collections::BTreeMap;

use andon_model::FindingKind;
use hashbrown::HashMap;
use serde_json::Value;

use crate::config::AnalysisConfig;
use crate::detector::{Ctx, Detector, Judgement, Test};
use crate::sql::{self, Segments};
use andon_store::sql::Row;

/// Renders a session detector's query: when the pass reads `sessions`, the
/// one statement the retry and silent-recovery detectors share
/// (`calls_sessions.sql`, run once a pass), else `template`, which reads
/// `calls.sql` (each session's calls in order) from spans.
pub fn session_calls_query(template: &str, ctx: &Ctx, filter: &str) -> String {
    if ctx.sessioned() {
        return sql::render(include_str!("calls_sessions.sql"), &ctx.session_vars(filter));
    }
    let mut vars = ctx.vars(filter);
    let calls = sql::render(include_str!("calls.sql"), &vars);
    vars.push(("calls", calls));
    sql::render(template, &vars)
}

/// Periods of the current window's length, before the baseline's end, that
/// show how steady a measure is from one window to the next (more when the
/// baseline is longer).
pub const HISTORY_WINDOWS: i64 = 8;

/// The fewest periods, each with `segment_min_samples` samples, that estimate
/// the window-to-window variation; with fewer, a change is judged against the
/// baseline alone.
pub const MIN_PERIODS: usize = 4;

/// The fewest periods of its length, each with `segment_min_samples`, that a
/// short window ([`crate::detector::Ctx::short`]) is judged against: a minute
/// of a service's life is judged only against at least half an hour of
/// minutes like it, never against the baseline alone.
pub const SHORT_MIN_PERIODS: usize = 30;

/// The most periods the window-to-window variation is read over: a window of
/// a minute against a baseline of hours needs an hour of them, not hundreds.
pub const MOST_HISTORY_WINDOWS: i64 = 60;

/// How far back before the baseline's end the window-to-window variation is
/// read: [`HISTORY_WINDOWS`] windows, or the baseline when it is longer (up
/// to [`MOST_HISTORY_WINDOWS`] windows).
pub fn history_look(ctx: &Ctx) -> chrono::Duration {
    let window = (ctx.end - ctx.split).num_seconds().max(1);
    let most = chrono::Duration::seconds(window * MOST_HISTORY_WINDOWS);
    (ctx.baseline_end - ctx.baseline_start).min(most).max(chrono::Duration::seconds(window * HISTORY_WINDOWS))
}

/// How each operation moves from one window to the next, over the rollups
/// (`history_rolled.sql`): [`history_look`] before the baseline's end (its
/// minute), in periods of the current window's length rounded to whole
/// minutes. The latency and error-rate detectors read the same query. `None`
/// when the store keeps no rollups.
pub fn history_rolled_query(ctx: &Ctx, filter: &str) -> Option<String> {
    ctx.rollups.then(|| history_query(include_str!("history_rolled.sql"), ctx, filter))
}

/// How often sessions retry each operation from one window to the next, over
/// `sessions` (`retry_history_sessions.sql`), in the periods of
/// [`history_rolled_query`]. `None` when the pass does not read `sessions`.
pub fn retry_history_query(ctx: &Ctx, filter: &str) -> Option<String> {
    ctx.sessioned().then(|| history_query(include_str!("retry_history_sessions.sql"), ctx, filter))
}

/// Renders a history template: [`history_look`] before the baseline's end
/// (its minute), in periods of the current window's length rounded to whole
/// minutes.
fn history_query(template: &str, ctx: &Ctx, filter: &str) -> String {
    let (from, end, window_secs) = history_span(ctx);
    let ctx = Ctx { baseline_start: from, baseline_end: end, ..ctx.clone() };
    // `sessions` names its segment columns as `span_metrics` does.
    let mut vars = ctx.metric_vars(filter);
    if let Some((_, segments)) = vars.iter().find(|(k, _)| *k == "metric_segments") {
        vars.push(("session_segments", segments.clone()));
    }
    vars.push(("window_secs", window_secs.to_string()));
    sql::render(template, &vars)
}

/// What a history template reads: from [`history_look`] before the
/// baseline's end (its minute) to that end, in periods of the current
/// window's length rounded to whole minutes (in seconds).
pub fn history_span(ctx: &Ctx) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, i64) {
    let window = (ctx.end - ctx.split).num_seconds().max(1);
    let end = crate::engine::floor_minute(ctx.baseline_end);
    (end - history_look(ctx), end, ((window + 30) / 60).max(1) * 60)
}

/// A pass's context for a detector's unit tests: every window starts and ends
/// now, so only the configuration and the segments matter.
#[cfg(test)]
pub(crate) fn test_ctx(config: AnalysisConfig) -> Ctx {
    #[allow(clippy::unwrap_used)]
    let segments = Segments::new(&config.segments).unwrap();
    let t = chrono::Utc::now();
    Ctx {
        baseline_start: t,
        baseline_end: t,
        split: t,
        end: t,
        segments,
        config,
        lean: false,
        rollups: false,
        sessions: false,
        settled: None,
        short: false,
    }
}

/// One side of a comparison, as a detector measures it.
pub trait Metric: Clone + Default {
    fn add(&mut self, other: &Self);
    /// How many samples the comparison rests on.
    fn samples(&self) -> u64;
}

/// Cells of one (service, operation): side, segment values, measurement.
#[derive(Debug, Clone)]
pub struct Subject<M> {
    pub service: String,
    pub operation: String,
    pub cells: Vec<(bool, Vec<Option<String>>, M)>,
}

impl<M: Metric> Subject<M> {
    fn sides(&self, keep: impl Fn(&[Option<String>]) -> bool) -> (M, M) {
        let (mut b, mut c) = (M::default(), M::default());
        for (cur, segs, m) in &self.cells {
            if keep(segs) {
                if *cur { c.add(m) } else { b.add(m) }
            }
        }
        (b, c)
    }
}

/// Groups rows into subjects keyed by their `service` and `operation`, cells
/// by side (`cur`) and segment values, in that order. Keys are borrowed from
/// the rows while they are grouped: a result has a row per histogram bucket or
/// period, and only its distinct cells are copied out. A row of the same cell
/// as the row before it (as a result's rows of one cell mostly come) is added
/// without looking its cell up. `measure` adds each row into its cell.
pub fn subjects<M: Metric>(
    rows: &sql::Rows,
    segments: &Segments,
    measure: impl Fn(&mut M, &Row<'_>),
) -> Vec<Subject<M>> {
    use arrow::array::{Array, RecordBatch};
    type Cell<'r> = (bool, Vec<Option<Cow<'r, str>>>);
    // Each cell's number in `measured`.
    let mut by_key: HashMap<(Cow<'_, str>, Cow<'_, str>), HashMap<Cell<'_>, usize>> = HashMap::new();
    let mut measured: Vec<M> = Vec::new();
    let names = segments.names();
    // The key columns and `cur`, found once per batch.
    type Columns<'r> = (Vec<Option<&'r dyn Array>>, Option<&'r dyn Array>);
    let mut found: Option<(*const RecordBatch, Columns<'_>)> = None;
    // The last row's batch, side, cell and key values.
    let mut last: Option<(*const RecordBatch, bool, usize)> = None;
    let mut last_key: Vec<Option<Cow<'_, str>>> = Vec::new();
    for row in rows.iter() {
        let (batch, i) = row.place();
        let (columns, cur_column) = match &found {
            Some((b, columns)) if std::ptr::eq(*b, batch) => columns,
            _ => {
                let column = |n: &str| batch.column_by_name(n).map(|a| a.as_ref());
                let keys = ["service", "operation"].into_iter().chain(names.iter().map(String::as_str)).map(column);
                &found.insert((batch, (keys.collect(), column("cur")))).1
            }
        };
        let text = |k: usize| columns[k].and_then(|a| andon_store::sql::text_at(a, i));
        let cur = cur_column.and_then(|a| andon_store::sql::i64_at(a, i)).unwrap_or(0) == 1;
        let same = last.filter(|(b, c, _)| {
            std::ptr::eq(*b, batch) && *c == cur && last_key.iter().enumerate().all(|(k, v)| text(k) == *v)
        });
        let cell = match same {
            Some((_, _, cell)) => cell,
            None => {
                let key: Vec<Option<Cow<'_, str>>> = (0..columns.len()).map(text).collect();
                let (Some(service), Some(operation)) = (key[0].clone(), key[1].clone()) else {
                    last = None;
                    continue;
                };
                let next = measured.len();
                let cells = by_key.entry((service, operation)).or_default();
                let cell = *cells.entry((cur, key[2..].to_vec())).or_insert(next);
                if cell == next {
                    measured.push(M::default());
                }
                last_key = key;
                cell
            }
        };
        last = Some((batch, cur, cell));
        measure(&mut measured[cell], &row);
    }
    let mut out: Vec<Subject<M>> = by_key
        .into_iter()
        .map(|((service, operation), cells)| {
            let mut cells: Vec<(bool, Vec<Option<String>>, M)> = cells
                .into_iter()
                .map(|((cur, segs), cell)| {
                    let m = std::mem::take(&mut measured[cell]);
                    (cur, segs.into_iter().map(|v| v.map(Cow::into_owned)).collect(), m)
                })
                .collect();
            cells.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            Subject { service: service.into_owned(), operation: operation.into_owned(), cells }
        })
        .collect();
    out.sort_by(|a, b| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)));
    out
}

/// A rate of the current window, `(trials, events)`, against the same rate
/// in the periods of the window's length before the baseline's end: a rate
/// that varies more from one period to the next than binomial noise
/// (Pearson's dispersion φ over the periods, at least 1) must rise by as
/// much more to count. Events close in time share their cause (a
/// dependency's blip, a burst of one client's sessions), so a short window
/// holds them in clumps. `None` with fewer than [`MIN_PERIODS`] periods of
/// `min` trials.
pub fn against_history(periods: impl Iterator<Item = (u64, u64)>, (nc, xc): (u64, u64), min: u64) -> Option<History> {
    let kept: Vec<(f64, f64)> =
        periods.filter(|(n, _)| *n >= min.max(2)).map(|(n, x)| (n as f64, (x.min(n)) as f64)).collect();
    if kept.len() < MIN_PERIODS || nc == 0 {
        return None;
    }
    let (n, x) = kept.iter().fold((0.0, 0.0), |(n, x), (a, b)| (n + a, x + b));
    let rate = x / n;
    // The variance of a rate of 0 or 1 is not 0: half an event either way.
    let p = (x + 0.5) / (n + 1.0);
    let chi2: f64 = kept.iter().map(|(ni, xi)| (xi - ni * rate).powi(2) / (ni * p * (1.0 - p))).sum();
    let dispersion = (chi2 / (kept.len() - 1) as f64).max(1.0);
    let current = xc.min(nc) as f64 / nc as f64;
    let se = (dispersion * p * (1.0 - p) * (1.0 / nc as f64 + 1.0 / n)).sqrt();
    Some(History {
        rate,
        dispersion,
        periods: kept.len(),
        trials: n,
        p_value: andon_model::statistics::normal_sf((current - rate) / se),
    })
}

/// A rate over the periods before the baseline's end, and how the current
/// window's compares ([`against_history`]).
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub rate: f64,
    pub dispersion: f64,
    pub periods: usize,
    /// The trials of the periods the rate is of.
    pub trials: f64,
    pub p_value: f64,
}

/// A detector's subjects as a pass folded them from the rollups, its
/// statement's and its history's together ([`crate::fold::MetricsFold`]),
/// handed to the detector instead of rows it would read back.
#[derive(Debug)]
pub enum Folded {
    Latency(Vec<Subject<latency_regression::Latency>>),
    Errors(Vec<Subject<error_rate_regression::Errors>>),
}

impl Folded {
    /// The detector's statement's rows, made again of the subjects, for
    /// whatever reads them beside the detector's tests (a finding's versions).
    pub fn rows(&self, segments: usize) -> Result<sql::Rows, arrow::error::ArrowError> {
        match self {
            Folded::Latency(s) => latency_regression::rows_of(s, segments),
            Folded::Errors(s) => error_rate_regression::rows_of(s, segments),
        }
    }

    /// How many rows the statement would have given (a recorded pass's count).
    pub fn statement_rows(&self) -> usize {
        match self {
            Folded::Latency(s) => {
                let cells = s.iter().flat_map(|s| s.cells.iter().filter(|c| c.2.periods.is_empty()));
                cells.map(|c| c.2.hist.histogram().len()).sum()
            }
            Folded::Errors(s) => s.iter().flat_map(|s| s.cells.iter().filter(|c| c.2.periods.is_empty())).count(),
        }
    }

    /// How many rows its history would have given: a row per period of each
    /// of the history's cells.
    pub fn history_rows(&self) -> usize {
        match self {
            Folded::Latency(s) => s.iter().flat_map(|s| s.cells.iter().map(|c| c.2.periods.len())).sum(),
            Folded::Errors(s) => s.iter().flat_map(|s| s.cells.iter().map(|c| c.2.periods.len())).sum(),
        }
    }
}

/// Rows of a statement over subjects: service, operation, `cur`, the
/// segment columns `seg0`, … and integer columns.
pub(crate) struct SubjectRows<'a> {
    names: &'a [&'a str],
    texts: Vec<arrow::array::StringBuilder>,
    cur: arrow::array::Int64Builder,
    values: Vec<arrow::array::Int64Builder>,
}

impl<'a> SubjectRows<'a> {
    pub(crate) fn new(segments: usize, names: &'a [&'a str]) -> Self {
        SubjectRows {
            names,
            texts: (0..2 + segments).map(|_| arrow::array::StringBuilder::new()).collect(),
            cur: arrow::array::Int64Builder::new(),
            values: names.iter().map(|_| arrow::array::Int64Builder::new()).collect(),
        }
    }

    pub(crate) fn push<M>(&mut self, s: &Subject<M>, cur: bool, segs: &[Option<String>], values: &[Option<i64>]) {
        self.texts[0].append_value(&s.service);
        self.texts[1].append_value(&s.operation);
        for (b, v) in self.texts[2..].iter_mut().zip(segs) {
            b.append_option(v.as_deref());
        }
        self.cur.append_value(i64::from(cur));
        for (b, v) in self.values.iter_mut().zip(values) {
            b.append_option(*v);
        }
    }

    pub(crate) fn finish(mut self) -> Result<sql::Rows, arrow::error::ArrowError> {
        use arrow::array::{Array, ArrayRef};
        use arrow::datatypes::{DataType, Field, Schema};
        let mut columns: Vec<(String, ArrayRef)> = Vec::new();
        let mut texts = self.texts.iter_mut().map(|b| -> ArrayRef { std::sync::Arc::new(b.finish()) });
        for name in ["service", "operation"] {
            columns.push((
                name.to_owned(),
                texts.next().unwrap_or_else(|| arrow::array::new_empty_array(&DataType::Utf8)),
            ));
        }
        columns.push(("cur".to_owned(), std::sync::Arc::new(self.cur.finish())));
        columns.extend(texts.enumerate().map(|(i, a)| (format!("seg{i}"), a)));
        for (name, b) in self.names.iter().zip(&mut self.values) {
            columns.push(((*name).to_owned(), std::sync::Arc::new(b.finish())));
        }
        let fields: Vec<Field> = columns.iter().map(|(n, a)| Field::new(n, a.data_type().clone(), true)).collect();
        let batch = arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )?;
        Ok(sql::Rows::new(vec![batch]))
    }
}

/// Adds `more`'s cells to the subject of the same (service, operation) in
/// `into`, or `more`'s subject when `into` has none.
pub fn merge_subjects<M: Metric>(into: &mut Vec<Subject<M>>, more: Vec<Subject<M>>) {
    let mut by_key: BTreeMap<(String, String), usize> =
        into.iter().enumerate().map(|(i, s)| ((s.service.clone(), s.operation.clone()), i)).collect();
    for m in more {
        if let Some(&i) = by_key.get(&(m.service.clone(), m.operation.clone())) {
            into[i].cells.extend(m.cells);
        } else {
            by_key.insert((m.service.clone(), m.operation.clone()), into.len());
            into.push(m);
        }
    }
}

/// How many windows of the current one's length a day holds: the short
/// windows a day of continuous passes judges.
pub fn windows_a_day(ctx: &Ctx) -> f64 {
    let window = (ctx.end - ctx.split).num_seconds().max(1) as f64;
    (86_400.0 / window).max(1.0)
}

/// A short window's p-value before [`per_day`]'s correction, in its details.
pub const WINDOW_P_VALUE: &str = "window_p_value";

/// `j`, a short window's, with its p-value corrected for the windows a day
/// ([`windows_a_day`]); the minute's own p-value stays in its details.
pub fn per_day(ctx: &Ctx, j: &mut Judgement) {
    j.details.insert(WINDOW_P_VALUE.to_owned(), num(j.p_value));
    j.details.insert("windows_a_day".to_owned(), num(windows_a_day(ctx)));
    j.p_value = (j.p_value * windows_a_day(ctx)).min(1.0);
}

/// Singles that may combine into a conjunction: at most this many, the
/// strongest, so that the search stays small.
const CONJUNCTION_SEEDS: usize = 6;

/// Every test for a subject: overall, then each value of each segment attribute
/// with enough samples on both sides, then conjunctions of two values of
/// different attributes where both values show the effect on their own (an
/// effect confined to `os.type=android` in `cloud.region=eu-west-1` dilutes
/// into both singles, and only the pair explains it).
pub fn segment_tests<M: Metric>(
    kind: FindingKind,
    subject: &Subject<M>,
    ctx: &Ctx,
    judge: impl Fn(&M, &M) -> Option<Judgement>,
) -> Vec<Test> {
    let (min, min_segment) = (ctx.config.min_samples, ctx.config.segment_min_samples);
    let enough = |b: &M, c: &M| b.samples() >= min_segment && c.samples() >= min_segment;
    type Keep<'k> = &'k dyn Fn(&[Option<String>]) -> bool;
    // The segment's sides `(b, c)`, its current side judged against `base`
    // when given, and `rest`, the sides outside it.
    let judged = |(b, c): (&M, &M), base: Option<&M>, rest: &dyn Fn() -> (M, M), segment: BTreeMap<String, Value>| {
        let b = base.unwrap_or(b);
        if !enough(b, c) || segment.is_empty() && (b.samples() < min || c.samples() < min) {
            return None;
        }
        let follow_up = b.samples() < min || c.samples() < min;
        let j = judge(b, c)?;
        let complement = if segment.is_empty() {
            None
        } else {
            let (rb, rc) = rest();
            if enough(&rb, &rc) { judge(&rb, &rc) } else { None }
        };
        Some(Test {
            kind,
            service: subject.service.clone(),
            operation: subject.operation.clone(),
            segment,
            judgement: j,
            complement,
            q_value: 1.0,
            follow_up,
        })
    };
    // `base` judges the segment's current side against another baseline.
    let test_against = |keep: Keep<'_>, base: Option<Keep<'_>>, segment: BTreeMap<String, Value>| -> Option<Test> {
        let (b, c) = subject.sides(keep);
        let base = base.map(|base| subject.sides(base).0);
        judged((&b, &c), base.as_ref(), &|| subject.sides(|s| !keep(s)), segment)
    };
    // A release the baseline never served, in a short window.
    let new_version = |i: usize, v: &String| {
        ctx.short
            && ctx.segments.columns[i].attribute == "service.version"
            && subject.sides(|s| s[i].as_ref() == Some(v)).0.samples() == 0
    };
    let canary = |mut t: Test| {
        t.judgement.details.insert(NEW_VERSION.to_owned(), Value::Bool(true));
        t
    };
    let whole = subject.sides(|_| true);
    // What a release new in a short window is judged against: every cell
    // the operation served before that has a release. For an operation's
    // own requests, every cell; for a drop-off's sessions, those that the
    // service whose release it is served (`drop_off::session_segments`), not
    // the sessions that never reach it, who differ from those who do.
    let released = |s: &[Option<String>]| {
        ctx.segments.columns.iter().position(|c| c.attribute == "service.version").is_none_or(|i| s[i].is_some())
    };
    let before = if ctx.short { subject.sides(released).0 } else { M::default() };
    let nothing = || (M::default(), M::default());
    let mut out: Vec<Test> = judged((&whole.0, &whole.1), None, &nothing, BTreeMap::new()).into_iter().collect();
    if ctx.short && kind != FindingKind::DropOff {
        // The whole operation's minute is one of the windows a day of
        // continuous passes judges, each a fresh chance of a minute with more
        // failures (or slower, or more retried) than usual: corrected for them
        // (Bonferroni), so that an operation's false alarms stay within `fdr`
        // a day, not a few each day. A release new in the minute is not: it
        // is one occasion, not one of a day's minutes. (The drop-off's tests
        // correct their step's windows the same way, `drop_off::tests`.)
        for t in &mut out {
            per_day(ctx, &mut t.judgement);
        }
    }
    // A short window keeps only the whole operation's test and those of a
    // release new in it ([`judged_in_short_windows`]): without such a release
    // the segments' tests would all be dropped.
    if ctx.short && !serves_new_release(subject, ctx) {
        return out;
    }
    let mut seeds: Vec<(usize, &String, f64)> = Vec::new();
    for (i, col) in ctx.segments.columns.iter().enumerate() {
        // The sides of each value of the attribute (and whether the current
        // window has cells of it), and of the cells without one: summed once,
        // not once per value and again for its rest.
        let mut by_value: BTreeMap<&String, (M, M, bool)> = BTreeMap::new();
        let mut without = (M::default(), M::default());
        for (cur, segs, m) in &subject.cells {
            let (b, c) = match &segs[i] {
                Some(v) => {
                    let slot = by_value.entry(v).or_default();
                    slot.2 |= *cur;
                    (&mut slot.0, &mut slot.1)
                }
                None => (&mut without.0, &mut without.1),
            };
            if *cur { c.add(m) } else { b.add(m) }
        }
        if by_value.values().filter(|(_, _, cur)| *cur).count() < 2 {
            continue;
        }
        for (v, (b, c, _)) in by_value.iter().filter(|(_, (_, _, cur))| *cur) {
            let segment = BTreeMap::from([(col.attribute.clone(), ctx.segments.json_value(i, v))]);
            let rest = || {
                let (mut rb, mut rc) = without.clone();
                for (_, (ob, oc, _)) in by_value.iter().filter(|(w, _)| *w != v) {
                    rb.add(ob);
                    rc.add(oc);
                }
                (rb, rc)
            };
            // A release new in a short window: its requests against every
            // cell the operation served before that has a release (`before`).
            let new = ctx.short && col.attribute == "service.version" && b.samples() == 0;
            let Some(mut t) = judged((b, c), new.then_some(&before), &rest, segment) else { continue };
            if new {
                t = canary(t);
            }
            if t.judgement.material && !t.follow_up {
                seeds.push((i, v, t.judgement.p_value));
            }
            out.push(t);
        }
    }
    seeds.sort_by(|a, b| a.2.total_cmp(&b.2));
    seeds.truncate(CONJUNCTION_SEEDS);
    for (x, &(i, vi, _)) in seeds.iter().enumerate() {
        for &(j, vj, _) in &seeds[x + 1..] {
            if i == j {
                continue;
            }
            let segment = BTreeMap::from([
                (ctx.segments.columns[i].attribute.clone(), ctx.segments.json_value(i, vi)),
                (ctx.segments.columns[j].attribute.clone(), ctx.segments.json_value(j, vj)),
            ]);
            let keep = |s: &[Option<String>]| s[i].as_ref() == Some(vi) && s[j].as_ref() == Some(vj);
            // A pair that is one of its values under another name (every
            // Android session is mobile) adds nothing.
            let (_, pair) = subject.sides(keep);
            let (_, single_i) = subject.sides(|s| s[i].as_ref() == Some(vi));
            let (_, single_j) = subject.sides(|s| s[j].as_ref() == Some(vj));
            if pair.samples() == single_i.samples() || pair.samples() == single_j.samples() {
                continue;
            }
            // A pair with a new release: its requests of the other value
            // against that value's baseline in every release (with one).
            let (new_i, new_j) = (new_version(i, vi), new_version(j, vj));
            let only_i = |s: &[Option<String>]| s[i].as_ref() == Some(vi) && released(s);
            let only_j = |s: &[Option<String>]| s[j].as_ref() == Some(vj) && released(s);
            let base: Option<Keep<'_>> = match (new_i, new_j) {
                (true, _) => Some(&only_j),
                (_, true) => Some(&only_i),
                _ => None,
            };
            let Some(mut t) = test_against(&keep, base, segment) else { continue };
            if new_i || new_j {
                t = canary(t);
            }
            // A pair explains an effect only when neither of its values shows
            // it outside the pair: a fault on every mobile client also shows
            // in mobile ∧ us-east-2, whose rest (desktop, and mobile elsewhere)
            // dilutes it, but mobile elsewhere shows it whole.
            let outside = |a: usize, va: &String, b: usize, vb: &String| {
                let not_b = |s: &[Option<String>]| s[b].as_ref() != Some(vb);
                let (mut rb, rc) = subject.sides(|s| s[a].as_ref() == Some(va) && not_b(s));
                if new_version(a, va) {
                    rb = subject.sides(|s| not_b(s) && released(s)).0;
                }
                enough(&rb, &rc).then(|| judge(&rb, &rc)).flatten().is_some_and(|r| shows_as_much(&r, &t.judgement))
            };
            if outside(i, vi, j, vj) || outside(j, vj, i, vi) {
                continue;
            }
            out.push(t);
        }
    }
    out
}

/// Whether the subject's current window serves, under `service.version`, a
/// release its baseline never served, beside at least one other release: the
/// only segment tests a short window keeps are that release's, alone or with
/// one other value (a release is tested only when the window serves two).
fn serves_new_release<M: Metric>(subject: &Subject<M>, ctx: &Ctx) -> bool {
    let Some(i) = ctx.segments.columns.iter().position(|c| c.attribute == "service.version") else {
        return false;
    };
    // Per release: whether the window serves it, and its baseline's side.
    let mut releases: BTreeMap<&String, (bool, M)> = BTreeMap::new();
    for (cur, segs, m) in &subject.cells {
        if let Some(v) = &segs[i] {
            let seen = releases.entry(v).or_default();
            if *cur {
                seen.0 = true;
            } else {
                seen.1.add(m);
            }
        }
    }
    releases.values().filter(|(cur, _)| *cur).count() >= 2
        && releases.values().any(|(cur, base)| *cur && base.samples() == 0)
}

/// The p-value at which another value of a segment's attribute counts as
/// showing the effect too (with a material effect at least half the size).
const SIBLING_SHOWS_EFFECT: f64 = 0.05;

/// `other` shows an effect comparable to `t`'s: material, nominally
/// significant, and at least half the size.
fn shows_as_much(other: &Judgement, t: &Judgement) -> bool {
    other.material && other.p_value <= SIBLING_SHOWS_EFFECT && other.size >= 0.5 * t.size
}

/// A detail a short window's test carries when its segment is a release the
/// baseline never served, judged against everything its operation served
/// before (a canary against the fleet it joins). The first instances of a
/// rolling deploy serve a small share of a minute's requests, in the region
/// the rollout starts in: the release, not that region, explains what they do.
pub const NEW_VERSION: &str = "new_version";

pub(crate) fn is_new_version(t: &Test) -> bool {
    t.judgement.details.get(NEW_VERSION).and_then(Value::as_bool).unwrap_or(false)
}

/// Whether a test of a short window takes part in its pass: the whole
/// operation, or a release new in the window (alone or with one other
/// segment value). See [`crate::Analyzer::continuous`].
pub fn judged_in_short_windows(t: &Test) -> bool {
    t.segment.is_empty() || is_new_version(t)
}

/// A detail a test may carry: `false` when its effect is probably past the
/// detector's floor but its interval reaches below it. Such a test is not
/// reported, but still counts as showing the effect when it is the rest of
/// the data or a sibling.
pub const CLEARS_FLOOR: &str = "interval_clears_floor";

fn clears_floor(j: &Judgement) -> bool {
    j.details.get(CLEARS_FLOOR).and_then(Value::as_bool).unwrap_or(true)
}

/// A finding before enrichment: where, what, and the test that carries it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub test: Test,
}

/// Another value of one of `t`'s attributes shows an effect of comparable
/// size (iOS, when Android is the candidate and every mobile client is hit):
/// the rest's test dilutes such a sibling in everything else (every desktop
/// session) and can miss it.
fn sibling_shows(pool: &[&Test], t: &Test) -> bool {
    pool.iter().any(|u| {
        u.segment.len() == 1
            && u.segment.iter().all(|(a, v)| t.segment.get(a).is_some_and(|mine| mine != v))
            && shows_as_much(&u.judgement, &t.judgement)
    })
}

/// The rest of the data (outside `t`'s segment) shows no effect: none that
/// is significant, and none of comparable size that is nominally so. A rest
/// with fewer sessions (mobile, beside desktop) can miss significance early in
/// a problem while plainly showing the same effect; that is not "none".
fn rest_shows_none(t: &Test, fdr: f64) -> bool {
    t.complement.as_ref().is_some_and(|c| {
        let significant = c.material && c.p_value <= fdr;
        !significant && !shows_as_much(c, &t.judgement)
    })
}

/// Picks, per subject, the narrowest segment that explains the effect: a value
/// whose own test is significant while the rest of the data shows no effect.
/// With none, the overall test if it is significant; with neither, nothing.
///
/// Once discovery has found a problem in a subject, a segment too thin to
/// take part in discovery (a follow-up test) may narrow it: when its own
/// effect is material and significant at `fdr` on its own, the rest of the
/// data shows none, and no sibling value shows one of comparable size. That is
/// a second, confirmatory test within a problem already found (Android's
/// payments, inside the mobile sessions discovery could see), and the
/// candidate keeps the q-value of the discovery.
pub fn choose_segments(tests: &[Test], fdr: f64) -> Vec<Candidate> {
    let mut by_subject: BTreeMap<(FindingKind, &str, &str), Vec<&Test>> = BTreeMap::new();
    for t in tests {
        by_subject.entry((t.kind, &t.service, &t.operation)).or_default().push(t);
    }
    let mut out = Vec::new();
    for (_, all) in by_subject {
        let (tests, thin): (Vec<&Test>, Vec<&Test>) = all.iter().partition(|t| !t.follow_up);
        let significant = |t: &Test| t.judgement.material && clears_floor(&t.judgement) && t.q_value <= fdr;
        // A release new in a short window whose requests do worse than the
        // operation did explains the effect wherever else it shows (the
        // region its rollout started in): the release, or the release within
        // one segment where the rest shows none (its mobile sessions).
        let releases: Vec<&Test> = tests.iter().copied().filter(|t| is_new_version(t) && significant(t)).collect();
        let release = releases
            .iter()
            .filter(|t| t.segment.len() > 1 && rest_shows_none(t, fdr) && !sibling_shows(&tests, t))
            .min_by_key(|t| t.judgement.current_samples)
            .or_else(|| releases.iter().min_by(|a, b| a.q_value.total_cmp(&b.q_value)));
        if let Some(t) = release {
            out.push(Candidate { test: Test::clone(t) });
            continue;
        }
        let overall = tests.iter().find(|t| t.segment.is_empty() && significant(t));
        // The rest of the data shows none, and no sibling shows a comparable
        // effect. The fewest sessions; among equals, the fewest attributes.
        let explaining = tests
            .iter()
            .filter(|t| !t.segment.is_empty() && significant(t))
            .filter(|t| rest_shows_none(t, fdr))
            .filter(|t| !sibling_shows(&tests, t))
            .min_by_key(|t| (t.judgement.current_samples, t.segment.len()));
        let chosen = match (explaining, overall) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(t),
            (None, None) => tests.iter().filter(|t| significant(t)).min_by(|a, b| a.q_value.total_cmp(&b.q_value)),
        };
        let Some(chosen) = chosen else { continue };
        let narrower = thin
            .iter()
            .filter(|t| t.judgement.material && clears_floor(&t.judgement) && t.judgement.p_value <= fdr)
            .filter(|t| t.judgement.current_samples < chosen.judgement.current_samples)
            .filter(|t| rest_shows_none(t, fdr))
            .filter(|t| !sibling_shows(&all, t))
            .min_by_key(|t| (t.judgement.current_samples, t.segment.len()));
        let test = match narrower {
            Some(t) => Test { q_value: chosen.q_value, ..Test::clone(t) },
            None => Test::clone(chosen),
        };
        out.push(Candidate { test });
    }
    out
}

/// The share of a drop-off's sessions lost beyond the baseline's leaving
/// rate that leavers after an error at the step account for
/// ([`EXCESS_AFTER_ERROR`]), above which the errors explain the drop-off.
const ERRORS_EXPLAIN: f64 = 0.5;

/// A drop-off's detail: of the sessions lost beyond the baseline's leaving
/// rate, the share that leavers after an error (beyond the baseline's)
/// account for.
pub const EXCESS_AFTER_ERROR: &str = "excess_left_after_error_share";

/// Drop-offs that an error regression already found explains: at the step
/// (service and operation) and in the segment of an error-rate candidate, a
/// material fall in conversion whose sessions lost beyond the baseline's
/// leaving rate mostly hit the error there. The
/// error regression established the problem across the pass's tests; the
/// drop-off is what it does to users, tested on its own at `fdr`, so it is
/// reported (with the errors as its cause) even when the pass-wide correction
/// leaves it short, as it does where few sessions take the journey.
///
/// The drop-off is tested only because errors were found there, so its
/// family is the drop-off tests at that step and segment (Bonferroni over
/// them), not every test of the pass: a short window's drop-off is judged
/// by its own minute's p-value (`window_p_value`), not corrected for the
/// minutes of a day ([`per_day`]). The day's minutes are already in the
/// error regression's own test, which opened the gate.
pub fn drop_offs_errors_explain(tests: &[Test], chosen: &[Candidate], fdr: f64) -> Vec<Candidate> {
    let explains = |u: &Test| {
        u.kind == FindingKind::DropOff
            && u.judgement.material
            && u.judgement.details.get(EXCESS_AFTER_ERROR).and_then(Value::as_f64).unwrap_or(0.0) > ERRORS_EXPLAIN
    };
    // The test's own p-value: before the correction for a day's minutes.
    let own = |u: &Test| u.judgement.details.get(WINDOW_P_VALUE).and_then(Value::as_f64).unwrap_or(u.judgement.p_value);
    let mut out: Vec<Candidate> = Vec::new();
    for c in chosen.iter().filter(|c| c.test.kind == FindingKind::ErrorRateRegression) {
        let at_step =
            |u: &&Test| u.service == c.test.service && u.operation == c.test.operation && u.segment == c.test.segment;
        let already = |k: &Candidate| {
            k.test.kind == FindingKind::DropOff
                && k.test.service == c.test.service
                && k.test.operation == c.test.operation
        };
        if chosen.iter().chain(&out).any(already) {
            continue;
        }
        let family = tests.iter().filter(at_step).filter(|u| u.kind == FindingKind::DropOff).count();
        let Some((u, p)) = tests
            .iter()
            .filter(at_step)
            .filter(|u| explains(u))
            .map(|u| (u, (own(u) * family as f64).min(1.0)))
            .filter(|(_, p)| *p <= fdr)
            .min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            continue;
        };
        let mut test = u.clone();
        if test.judgement.p_value != p {
            let j = &mut test.judgement;
            j.details.insert("p_value_before_gate".to_owned(), num(j.p_value));
            j.details.insert(
                "gated_by".to_owned(),
                Value::from(format!("{} {} {}", c.test.kind.as_str(), c.test.service, c.test.operation)),
            );
            j.details.insert("gate_family".to_owned(), Value::from(family));
            j.p_value = p;
        }
        out.push(Candidate { test });
    }
    out
}

pub(crate) fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Rounds for display in JSON: 4 significant decimals is plenty for a person.
pub(crate) fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Each row of detector statement `query` over the range of `ctx`, for
/// `subject` (service, operation), with the row's `service.version`; the
/// context to judge the versions in, `None` when versions are not a segment.
/// Over the rollups the pass has already read the statement for every
/// subject, and its rows for this one are what the subject's filter would
/// keep; over spans, the statement is narrowed to the subject and reads no
/// sessions.
pub(crate) async fn each_version_row(
    ctx: &Ctx,
    subject: (&str, &str),
    sql: &dyn crate::detector::Sql,
    query: fn(&Ctx, &str) -> String,
    mut each: impl FnMut(String, &Row<'_>) + Send,
) -> Result<Option<Ctx>, crate::AnalysisError> {
    let Some((seg, filter, lean)) = ctx.by_version(subject) else { return Ok(None) };
    let statement = if ctx.rolled() { query(ctx, "") } else { query(&lean, &filter) };
    let rows = sql.rows(&statement).await?;
    for r in rows.rows_where(&[("service", subject.0), ("operation", subject.1)]) {
        if let Some(v) = r.str(&seg) {
            each(v, &r);
        }
    }
    Ok(Some(lean))
}

/// Judges a rate that should not rise: `x/n` baseline against current.
pub(crate) fn judge_rate(
    cfg: &AnalysisConfig,
    (xb, nb): (u64, u64),
    (xc, nc): (u64, u64),
    names: (&str, &str, &str),
) -> Option<Judgement> {
    let t = andon_model::statistics::proportion_greater(xb, nb, xc, nc)?;
    let delta = t.current - t.baseline;
    let material = delta >= cfg.rate_min_delta && t.current >= cfg.rate_min_ratio * t.baseline && xc >= 5;
    let (count, total, rate) = names;
    let side = |x: u64, n: u64, r: f64| {
        BTreeMap::from([
            (count.to_owned(), Value::from(x)),
            (total.to_owned(), Value::from(n)),
            (rate.to_owned(), num(round(r, 5))),
        ])
    };
    Some(Judgement {
        p_value: t.p_value,
        effect: delta,
        size: delta,
        ci: None,
        test: t.test,
        material,
        baseline: side(xb, nb, t.baseline),
        current: side(xc, nc, t.current),
        details: BTreeMap::new(),
        current_samples: nc,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use andon_model::Finding;

    #[derive(Debug, Clone, Copy, Default)]
    struct Rate {
        x: u64,
        n: u64,
    }

    impl Metric for Rate {
        fn add(&mut self, o: &Self) {
            self.x += o.x;
            self.n += o.n;
        }
        fn samples(&self) -> u64 {
            self.n
        }
    }

    fn ctx() -> Ctx {
        test_ctx(AnalysisConfig { segments: vec!["os.type".into()], ..AnalysisConfig::default() })
    }

    /// (failed, calls)
    type Counts = (u64, u64);

    /// Failures per OS: (os, baseline, current).
    fn subject(cells: &[(&str, Counts, Counts)]) -> Subject<Rate> {
        let mut out = Vec::new();
        for (os, b, c) in cells {
            out.push((false, vec![Some((*os).to_owned())], Rate { x: b.0, n: b.1 }));
            out.push((true, vec![Some((*os).to_owned())], Rate { x: c.0, n: c.1 }));
        }
        Subject { service: "reservations".into(), operation: "POST /pay".into(), cells: out }
    }

    #[test]
    fn rows_group_into_subjects_by_operation_side_and_segment_values() {
        use std::sync::Arc;

        use arrow::array::{DictionaryArray, Int64Array, RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Int32Type, Schema};

        // Two batches of one result; the segment column is a dictionary in
        // the second, as DataFusion may return it.
        let batch = |service: Vec<&str>, os: Arc<dyn arrow::array::Array>, cur: Vec<i64>, n: Vec<i64>| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("service", DataType::Utf8, true),
                Field::new("operation", DataType::Utf8, false),
                Field::new("seg0", os.data_type().clone(), true),
                Field::new("cur", DataType::Int64, false),
                Field::new("n", DataType::Int64, false),
            ]));
            let ops = StringArray::from(vec!["GET /a"; n.len()]);
            let service: StringArray = service.into_iter().map(|s| (!s.is_empty()).then_some(s)).collect();
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(service),
                    Arc::new(ops),
                    os,
                    Arc::new(Int64Array::from(cur)),
                    Arc::new(Int64Array::from(n)),
                ],
            )
            .unwrap()
        };
        let first = batch(
            vec!["web", "web", "api", ""],
            Arc::new(StringArray::from(vec![Some("ios"), None, Some("ios"), Some("ios")])),
            vec![1, 0, 0, 1],
            vec![3, 5, 7, 100],
        );
        let dict: DictionaryArray<Int32Type> = vec!["ios", "android", "ios"].into_iter().collect();
        let second = batch(vec!["web", "web", "web"], Arc::new(dict), vec![1, 1, 0], vec![10, 20, 40]);
        let rows = sql::Rows::new(vec![first, second]);
        let got = subjects(&rows, &ctx().segments, |m: &mut Rate, r| m.add(&Rate { x: 0, n: r.u64("n") }));
        type Cells = Vec<(bool, Vec<Option<String>>, u64)>;
        let got: Vec<(String, Cells)> =
            got.into_iter().map(|s| (s.service, s.cells.into_iter().map(|(c, v, m)| (c, v, m.n)).collect())).collect();
        let some = |v: &str| vec![Some(v.to_owned())];
        assert_eq!(
            got,
            vec![
                ("api".to_owned(), vec![(false, some("ios"), 7)]),
                (
                    "web".to_owned(),
                    vec![
                        (false, vec![None], 5),
                        (false, some("ios"), 40),
                        (true, some("android"), 20),
                        (true, some("ios"), 13)
                    ]
                ),
            ],
            "the row without a service is left out; cells are summed across batches and ordered"
        );
    }

    fn tests_of(s: &Subject<Rate>) -> Vec<Test> {
        let ctx = ctx();
        let mut tests = segment_tests(FindingKind::ErrorRateRegression, s, &ctx, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        let found: Vec<usize> = (0..tests.len()).filter(|i| !tests[*i].follow_up).collect();
        let q = andon_model::statistics::benjamini_hochberg(
            &found.iter().map(|i| tests[*i].judgement.p_value).collect::<Vec<_>>(),
        );
        for (i, q) in found.into_iter().zip(q) {
            tests[i].q_value = q;
        }
        tests
    }

    #[test]
    fn a_platform_too_thin_for_discovery_narrows_a_problem_discovery_found() {
        // Android holds 25 of 145 calls a side: fewer than `min_samples`, as
        // many as `segment_min_samples`. Half its calls fail; nobody else's do.
        let s = subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 60), (0, 60)), ("windows", (0, 60), (0, 60))]);
        let tests = tests_of(&s);
        let android = tests.iter().find(|t| t.segment.get("os.type") == Some(&Value::from("android"))).unwrap();
        assert!(android.follow_up && android.judgement.material && android.judgement.p_value < 1e-4);
        assert_eq!(android.q_value, 1.0, "left out of the pass-wide correction");
        let overall_q = tests.iter().find(|t| t.segment.is_empty()).unwrap().q_value;
        // Discovery finds the operation failing; the thin segment narrows it.
        let chosen = choose_segments(&tests, 0.01);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment, BTreeMap::from([("os.type".to_owned(), Value::from("android"))]));
        assert_eq!(chosen[0].test.q_value, overall_q, "the discovery's q-value");

        // iOS failing as often: the problem is not Android's alone.
        let both =
            subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 25), (11, 25)), ("windows", (0, 95), (0, 95))]);
        let chosen = choose_segments(&tests_of(&both), 0.01);
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].test.segment.is_empty(), "{:?}", chosen[0].test.segment);

        // Early in a problem, the larger segment (desktop) reaches significance
        // while the smaller rest (mobile) shows the same effect short of it:
        // the problem is everyone's, not desktop's.
        let early =
            subject(&[("windows", (0, 400), (14, 400)), ("android", (0, 60), (3, 60)), ("ios", (0, 60), (2, 60))]);
        let tests = tests_of(&early);
        let windows = tests.iter().find(|t| t.segment.get("os.type") == Some(&Value::from("windows"))).unwrap();
        let rest = windows.complement.as_ref().unwrap();
        assert!(rest.p_value > 0.01 && rest.p_value <= 0.05, "the rest short of significance: {}", rest.p_value);
        let chosen = choose_segments(&tests, 0.01);
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].test.segment.is_empty(), "{:?}", chosen[0].test.segment);

        // A thin segment never discovers a problem on its own.
        let thin = subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 10), (0, 10))]);
        let tests = tests_of(&thin);
        assert!(!tests.is_empty() && tests.iter().all(|t| t.follow_up));
        assert!(choose_segments(&tests, 0.01).is_empty());
    }

    /// Failures per OS and region: (os, region, baseline, current), judged
    /// and corrected as a pass does.
    fn by_os_and_region(cells: &[(&str, &str, Counts, Counts)]) -> Vec<Candidate> {
        let ctx = test_ctx(AnalysisConfig {
            segments: vec!["os.type".into(), "cloud.region".into()],
            ..AnalysisConfig::default()
        });
        let cells: Vec<(Vec<&str>, Counts, Counts)> = cells.iter().map(|(o, r, b, c)| (vec![*o, *r], *b, *c)).collect();
        choose_for(&ctx, &cells)
    }

    /// Failures per segment values (in the order of `ctx`'s segments), as
    /// (values, baseline, current), judged and corrected as a pass does.
    fn choose_for(ctx: &Ctx, cells: &[(Vec<&str>, Counts, Counts)]) -> Vec<Candidate> {
        let s = subject_of(cells);
        let mut tests = segment_tests(FindingKind::ErrorRateRegression, &s, ctx, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        // As a pass keeps them.
        tests.retain(|t| !ctx.short || judged_in_short_windows(t));
        let q =
            andon_model::statistics::benjamini_hochberg(&tests.iter().map(|t| t.judgement.p_value).collect::<Vec<_>>());
        for (t, q) in tests.iter_mut().zip(q) {
            t.q_value = q;
        }
        choose_segments(&tests, 0.01)
    }

    #[test]
    fn a_pair_of_values_is_reported_only_when_neither_value_shows_the_effect_outside_it() {
        // Every Android client fails, in both regions. Android in eu-west-1 has
        // fewer calls than Android, and its rest (Android in us-east-2, a few
        // calls, and every iOS call) dilutes the effect short of significance;
        // but Android outside eu-west-1 shows it whole.
        let chosen = by_os_and_region(&[
            ("android", "eu-west-1", (1, 200), (60, 200)),
            ("android", "us-east-2", (0, 30), (9, 30)),
            ("ios", "eu-west-1", (2, 400), (2, 400)),
            ("ios", "us-east-2", (2, 400), (2, 400)),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment, BTreeMap::from([("os.type".to_owned(), Value::from("android"))]));

        // Only Android in eu-west-1 fails: the pair explains it, and neither
        // Android nor eu-west-1 alone does as narrowly.
        let chosen = by_os_and_region(&[
            ("android", "eu-west-1", (1, 200), (60, 200)),
            ("android", "us-east-2", (0, 200), (0, 200)),
            ("ios", "eu-west-1", (2, 400), (2, 400)),
            ("ios", "us-east-2", (2, 400), (2, 400)),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(
            chosen[0].test.segment,
            BTreeMap::from([
                ("cloud.region".to_owned(), Value::from("eu-west-1")),
                ("os.type".to_owned(), Value::from("android"))
            ])
        );
    }

    #[test]
    fn a_short_window_tests_segments_only_for_a_release_new_in_it() {
        let ctx = Ctx {
            short: true,
            ..test_ctx(AnalysisConfig {
                segments: vec!["cloud.region".into(), "service.version".into()],
                ..AnalysisConfig::default()
            })
        };
        let subject = |cells: &[(&str, &str, Counts, Counts)]| {
            let mut out = Vec::new();
            for (region, version, b, c) in cells {
                let segs = vec![Some((*region).to_owned()), Some((*version).to_owned())];
                out.push((false, segs.clone(), Rate { x: b.0, n: b.1 }));
                out.push((true, segs, Rate { x: c.0, n: c.1 }));
            }
            Subject { service: "reservations".into(), operation: "POST /pay".into(), cells: out }
        };
        let tests = |ctx: &Ctx, s: &Subject<Rate>| {
            segment_tests(FindingKind::ErrorRateRegression, s, ctx, |b, c| {
                judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
            })
        };
        // One region failing, every release old: the minute keeps only the
        // whole operation's test, so it makes no other.
        let old = subject(&[
            ("eu-west-1", "2.7.3", (2, 2000), (30, 200)),
            ("us-east-1", "2.7.3", (2, 2000), (0, 200)),
            ("eu-west-1", "2.7.2", (2, 2000), (0, 200)),
            ("us-east-1", "2.7.2", (2, 2000), (0, 200)),
        ]);
        let made = tests(&ctx, &old);
        assert_eq!(made.len(), 1, "{made:?}");
        assert!(made[0].segment.is_empty());
        // The same cells over a whole window test the region.
        let whole = Ctx { short: false, ..ctx.clone() };
        let region = BTreeMap::from([("cloud.region".to_owned(), Value::from("eu-west-1"))]);
        assert!(tests(&whole, &old).iter().any(|t| t.segment == region));
        // A release the baseline never served, beside the old one: its tests
        // are made, against everything the operation served before.
        let new = subject(&[
            ("eu-west-1", "2.7.3", (2, 2000), (0, 200)),
            ("us-east-1", "2.7.3", (2, 2000), (0, 200)),
            ("us-east-1", "2.8.0", (0, 0), (30, 200)),
        ]);
        let made = tests(&ctx, &new);
        let release = BTreeMap::from([("service.version".to_owned(), Value::from("2.8.0"))]);
        let t = made.iter().find(|t| t.segment == release).expect("the new release's test");
        assert!(is_new_version(t) && judged_in_short_windows(t));
        assert_eq!(t.judgement.baseline["requests"], 4000);
    }

    /// Failures per version and region: (version, region, baseline, current),
    /// judged and corrected as a pass does, in a short window or not.
    fn by_version_and_region(short: bool, cells: &[(&str, &str, Counts, Counts)]) -> Vec<Candidate> {
        let ctx = Ctx {
            short,
            ..test_ctx(AnalysisConfig {
                segments: vec!["cloud.region".into(), "service.version".into()],
                ..AnalysisConfig::default()
            })
        };
        let cells: Vec<(Vec<&str>, Counts, Counts)> = cells.iter().map(|(v, r, b, c)| (vec![*r, *v], *b, *c)).collect();
        choose_for(&ctx, &cells)
    }

    #[test]
    fn a_minute_of_an_operation_is_corrected_for_the_minutes_a_day_and_a_new_release_is_not() {
        let mut ctx = Ctx {
            short: true,
            ..test_ctx(AnalysisConfig { segments: vec!["service.version".into()], ..AnalysisConfig::default() })
        };
        ctx.split = ctx.end - chrono::Duration::seconds(60);
        assert_eq!(windows_a_day(&ctx), 1440.0);
        // Six failures in a minute of 232 requests where 0.22% fail: Fisher's
        // p is about 3e-5, once in a few days of one operation's minutes.
        let blip = [(vec!["2.7.3"], (18, 8349), (6, 232))];
        assert!(choose_for(&ctx, &blip).is_empty());
        let tests = segment_tests(FindingKind::ErrorRateRegression, &subject_of(&blip), &ctx, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        let j = &tests[0].judgement;
        let minute = j.details["window_p_value"].as_f64().unwrap_or(1.0);
        assert!(minute < 1e-4 && (j.p_value - minute * 1440.0).abs() < 1e-9, "{j:?}");
        // Over a whole window of 30 minutes the same counts are 48 windows a day.
        let mut whole = ctx.clone();
        whole.short = false;
        let tests = segment_tests(FindingKind::ErrorRateRegression, &subject_of(&blip), &whole, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        assert!(!tests[0].judgement.details.contains_key("window_p_value"), "only short windows are corrected");
        // A failing minute is reported all the same.
        let fault = [(vec!["2.7.3"], (18, 8349), (30, 232))];
        assert_eq!(choose_for(&ctx, &fault).len(), 1);
        // The same six failures from a release the baseline never served: one
        // occasion, judged as it is.
        let release = [(vec!["2.7.3"], (18, 8349), (0, 180)), (vec!["2.8.0"], (0, 0), (6, 52))];
        let chosen = choose_for(&ctx, &release);
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        assert_eq!(chosen[0].test.judgement.details.get(NEW_VERSION), Some(&Value::Bool(true)));
        assert!(!chosen[0].test.judgement.details.contains_key("window_p_value"));
    }

    fn subject_of(cells: &[(Vec<&str>, Counts, Counts)]) -> Subject<Rate> {
        let mut out = Vec::new();
        for (values, b, c) in cells {
            let segs: Vec<Option<String>> = values.iter().map(|v| Some((*v).to_owned())).collect();
            out.push((false, segs.clone(), Rate { x: b.0, n: b.1 }));
            out.push((true, segs, Rate { x: c.0, n: c.1 }));
        }
        Subject { service: "reservations".into(), operation: "POST /pay".into(), cells: out }
    }

    #[test]
    fn a_release_new_in_a_short_window_explains_what_its_first_instances_do() {
        // A minute into a rolling deploy: 2.8.0 runs on one instance in
        // us-east-1, and a tenth of its calls fail. The baseline never saw it.
        let cells = [
            ("2.7.3", "us-east-1", (1, 2000), (0, 60)),
            ("2.8.0", "us-east-1", (0, 0), (12, 120)),
            ("2.7.3", "eu-west-1", (1, 2000), (0, 180)),
            ("2.7.3", "ap-southeast-1", (1, 2000), (0, 180)),
        ];
        let chosen = by_version_and_region(true, &cells);
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        let t = &chosen[0].test;
        assert_eq!(t.segment, BTreeMap::from([("service.version".to_owned(), Value::from("2.8.0"))]));
        assert_eq!(t.judgement.details.get(NEW_VERSION), Some(&Value::Bool(true)));
        assert_eq!(t.judgement.baseline["requests"], 6000, "against everything the operation served before");
        // Its fingerprint is the operation's: once rolled out, the whole
        // operation's finding is the same problem.
        assert_eq!(
            Finding::fingerprint_of(t.kind, &t.service, &t.operation, &t.segment),
            Finding::fingerprint_of(t.kind, &t.service, &t.operation, &BTreeMap::new())
        );
        // Over a whole window the release is not judged against the baseline:
        // the region the rollout started in is what stands out there.
        let chosen = by_version_and_region(false, &cells);
        assert!(chosen.iter().all(|c| !c.test.judgement.details.contains_key(NEW_VERSION)), "{chosen:?}");

        // A release that fails only its mobile sessions: the release within
        // them, whose fingerprint is the mobile sessions'.
        let ctx = Ctx {
            short: true,
            ..test_ctx(AnalysisConfig {
                segments: vec!["browser.mobile".into(), "cloud.region".into(), "service.version".into()],
                ..AnalysisConfig::default()
            })
        };
        let cells: Vec<(Vec<&str>, Counts, Counts)> = vec![
            (vec!["true", "us-east-1", "3.4.2"], (1, 1000), (0, 30)),
            (vec!["false", "us-east-1", "3.4.2"], (1, 1000), (0, 30)),
            (vec!["true", "us-east-1", "3.5.0"], (0, 0), (36, 60)),
            (vec!["false", "us-east-1", "3.5.0"], (0, 0), (0, 60)),
            (vec!["true", "eu-west-1", "3.4.2"], (1, 1000), (0, 90)),
            (vec!["false", "eu-west-1", "3.4.2"], (1, 1000), (0, 90)),
        ];
        let picked = choose_for(&ctx, &cells);
        assert_eq!(picked.len(), 1, "{picked:?}");
        let t = &picked[0].test;
        let mobile = BTreeMap::from([("browser.mobile".to_owned(), ctx.segments.json_value(0, "true"))]);
        let mut release = mobile.clone();
        release.insert("service.version".to_owned(), Value::from("3.5.0"));
        assert_eq!(t.segment, release);
        assert_eq!(t.judgement.baseline["requests"], 2000, "against every mobile request before");
        assert_eq!(
            Finding::fingerprint_of(t.kind, &t.service, &t.operation, &t.segment),
            Finding::fingerprint_of(t.kind, &t.service, &t.operation, &mobile)
        );

        // A new release that does as well as the fleet: nothing.
        let fine = [
            ("2.7.3", "us-east-1", (1, 2000), (0, 60)),
            ("2.8.0", "us-east-1", (0, 0), (0, 120)),
            ("2.7.3", "eu-west-1", (1, 2000), (0, 180)),
            ("2.7.3", "ap-southeast-1", (1, 2000), (0, 180)),
        ];
        assert!(by_version_and_region(true, &fine).is_empty());
    }

    #[test]
    fn a_minute_says_that_an_operation_broke_and_the_window_says_where() {
        // The last minute: us-east-1 fails a tenth of its calls, on the
        // version the baseline ran. A minute of one region is too thin to
        // tell it from the rest, so the short window reports the operation.
        let cells = [
            ("2.7.3", "us-east-1", (1, 2000), (12, 120)),
            ("2.7.3", "eu-west-1", (1, 2000), (0, 180)),
            ("2.7.3", "ap-southeast-1", (1, 2000), (0, 180)),
        ];
        let chosen = by_version_and_region(true, &cells);
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        assert!(chosen[0].test.segment.is_empty(), "{chosen:?}");
        // The whole window names the region.
        let chosen = by_version_and_region(false, &cells);
        assert_eq!(chosen.len(), 1, "{chosen:?}");
        assert_eq!(
            chosen[0].test.segment,
            BTreeMap::from([("cloud.region".to_owned(), Value::from("us-east-1"))]),
            "{chosen:?}"
        );
    }

    #[test]
    fn a_rate_that_clumps_from_one_period_to_the_next_must_rise_further() {
        // 1% of 500 calls a period, steadily: 4% now stands out.
        let steady: Vec<(u64, u64)> = (0..12).map(|_| (500, 5)).collect();
        let h = against_history(steady.iter().copied(), (500, 20), 20).unwrap();
        assert!((h.rate - 0.01).abs() < 1e-9 && h.dispersion < 1.5, "{h:?}");
        assert!(h.p_value < 1e-6, "{h:?}");
        // The same 1% on average, in bursts of 4%: a period of 4% is ordinary.
        let bursty: Vec<(u64, u64)> = (0..12).map(|i| (500, if i % 4 == 0 { 20 } else { 0 })).collect();
        let h = against_history(bursty.iter().copied(), (500, 20), 20).unwrap();
        assert!(h.dispersion > 5.0, "{h:?}");
        assert!(h.p_value > 0.01, "{h:?}");
        // Too few periods to tell.
        assert!(against_history(steady[..3].iter().copied(), (500, 35), 20).is_none());
    }

    #[test]
    fn an_effect_whose_interval_reaches_below_the_floor_is_not_reported() {
        let latency = |clears: bool| {
            let mut t = test(FindingKind::LatencyRegression, "POST /checkout/guest", "ios", 1e-6, 1e-5, 0.0);
            t.follow_up = false;
            t.complement = Some(Judgement { material: false, p_value: 0.5, ..t.judgement.clone() });
            t.judgement.details = BTreeMap::from([(CLEARS_FLOOR.to_owned(), Value::Bool(clears))]);
            t
        };
        assert!(choose_segments(&[latency(false)], 0.01).is_empty(), "probably past the floor, not known to be");
        let chosen = choose_segments(&[latency(true)], 0.01);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment["os.type"], "ios");
        // As the rest of the data, the same test still shows the effect: too
        // few requests to be sure is not evidence of none.
        let mut narrow = latency(true);
        narrow.complement = Some(Judgement { material: true, p_value: 0.02, ..latency(false).judgement });
        assert!(!rest_shows_none(&narrow, 0.01));
    }

    fn test(kind: FindingKind, operation: &str, os: &str, p: f64, q: f64, left_after_error: f64) -> Test {
        Test {
            kind,
            service: "gateway".into(),
            operation: operation.into(),
            segment: BTreeMap::from([("os.type".to_owned(), Value::from(os))]),
            judgement: Judgement {
                p_value: p,
                effect: 0.37,
                size: 0.37,
                ci: None,
                test: "two_proportion_z",
                material: true,
                baseline: BTreeMap::new(),
                current: BTreeMap::new(),
                details: BTreeMap::from([(EXCESS_AFTER_ERROR.to_owned(), Value::from(left_after_error))]),
                current_samples: 28,
            },
            complement: None,
            q_value: q,
            follow_up: true,
        }
    }

    #[test]
    fn a_drop_off_that_errors_explain_is_reported_though_the_pass_wide_correction_leaves_it_short() {
        let errors = Candidate {
            test: test(FindingKind::ErrorRateRegression, "POST /checkout/pay", "android", 1e-7, 1e-5, 0.0),
        };
        let drop = |os: &str, p: f64, share: f64| test(FindingKind::DropOff, "POST /checkout/pay", os, p, 0.06, share);
        let promoted = |tests: Vec<Test>| drop_offs_errors_explain(&tests, std::slice::from_ref(&errors), 0.01);

        let found = promoted(vec![drop("android", 0.002, 0.8)]);
        assert_eq!(found.len(), 1, "the users leaving after the failures are the finding");
        assert_eq!(found[0].test.kind, FindingKind::DropOff);
        assert_eq!(found[0].test.segment["os.type"], "android");

        assert!(promoted(vec![drop("android", 0.002, 0.3)]).is_empty(), "most of those lost never saw the error");
        assert!(promoted(vec![drop("android", 0.04, 0.8)]).is_empty(), "not significant even on its own");
        assert!(promoted(vec![drop("ios", 0.002, 0.8)]).is_empty(), "another segment than the errors'");
        let elsewhere = test(FindingKind::DropOff, "POST /checkout/guest", "android", 0.002, 0.06, 0.8);
        assert!(promoted(vec![elsewhere]).is_empty(), "another step than the errors'");
    }

    #[test]
    fn a_minutes_drop_off_behind_errors_is_judged_by_its_own_p_value_against_the_steps_tests() {
        let errors = Candidate {
            test: test(FindingKind::ErrorRateRegression, "POST /checkout/pay", "android", 1e-7, 1e-5, 0.0),
        };
        let promoted = |tests: Vec<Test>| drop_offs_errors_explain(&tests, std::slice::from_ref(&errors), 0.01);
        // A short window's drop-off: its minute's p-value kept, its own
        // corrected for the 1,440 minutes a day.
        let minute = |p: f64| {
            let mut t = test(FindingKind::DropOff, "POST /checkout/pay", "android", (p * 1440.0).min(1.0), 0.5, 0.8);
            t.judgement.details.insert(WINDOW_P_VALUE.to_owned(), Value::from(p));
            t
        };
        let found = promoted(vec![minute(3e-4)]);
        assert_eq!(found.len(), 1, "the errors opened the gate: the minute is not one of a day's");
        let j = &found[0].test.judgement;
        assert!((j.p_value - 3e-4).abs() < 1e-12, "{j:?}");
        assert!((j.details["p_value_before_gate"].as_f64().unwrap() - 0.432).abs() < 1e-9);
        assert_eq!(j.details["gate_family"], 1);

        // Two drop-off tests at the step and segment (two flows through it):
        // Bonferroni over both.
        let mut other_flow = minute(0.5);
        other_flow.judgement.details.insert("flow".into(), Value::from("other"));
        let found = promoted(vec![minute(3e-4), other_flow.clone()]);
        assert!((found[0].test.judgement.p_value - 6e-4).abs() < 1e-12);
        assert!(promoted(vec![minute(6e-3), other_flow]).is_empty(), "0.012 over both tests of the step");

        assert!(promoted(vec![minute(0.02)]).is_empty(), "not significant even on its own");
        let mut without_errors = minute(3e-4);
        without_errors.judgement.details.insert(EXCESS_AFTER_ERROR.into(), Value::from(0.2));
        assert!(promoted(vec![without_errors]).is_empty(), "most who left never saw the error");
        // No gate without the error regression at the step.
        assert!(drop_offs_errors_explain(&[minute(3e-4)], &[], 0.01).is_empty());
    }
}
