//! `span_metrics` folded from one continuous pass to the next.
//!
//! The latency and error-rate detectors read the range's cells per operation,
//! side and segment values (`latency_rolled.sql`, `error_rate_rolled.sql`),
//! and how each operation moved from one window to the next before the
//! baseline's end (`history_rolled.sql`), once for the window and once for
//! its last minute. A pass that follows on from the last moves one minute
//! into the range, one into the last minute, one from the window to the
//! baseline, and drops one. [`MetricsFold`] keeps the cells by minute and
//! their sums per operation, segment values and place (baseline, window,
//! last minute); a pass reads the minutes that entered and moves the sums of
//! the minutes whose place changed, so it costs in proportion to them, not
//! to the range. The histories' periods count back from the baseline's end
//! and so move with every pass: they are summed again from the kept cells.
//!
//! A read takes [`READ_AHEAD`] past the pass's end too: the cells of those
//! minutes wait outside the range (summed nowhere) until a pass moves them
//! in, so a backtest's passes read a statement every quarter of an hour, not
//! every minute. While traffic arrives those minutes hold little or nothing
//! yet, and what arrives in them is read again as in any changed minute.
//!
//! The fold reads its whole range again when the store's `span_metrics`
//! changed ([`andon_store::Store::metrics_version`]: while traffic arrives,
//! every pass), for another tenant, or for windows that do not follow on.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
use arrow::error::ArrowError;
use hashbrown::HashMap;

use super::{Bounds, Numbered, Place, Source, changed_minute, failed, ints, series_key, strings, ts};
use crate::AnalysisError;
use crate::detectors::error_rate_regression::Errors;
use crate::detectors::latency_regression::{Buckets, Latency};
use crate::detectors::{Metric, Subject, merge_subjects};
use crate::sql::Rows;

/// How far past a pass's end a read of `span_metrics` reaches (ns).
const READ_AHEAD: i64 = 15 * crate::minutes::MINUTE_NS;

/// A history's requests, failed requests and log-latency sum over one period.
type PeriodSums = (i64, i64, f64);

/// A history's sums per series and period, ordered by series and period
/// ([`MetricsFold::history_sums`]): one history serves both detectors'
/// subjects.
#[derive(Debug)]
pub struct HistorySums(Vec<((u32, i64), PeriodSums)>);

/// One cell of `span_metrics`: a server operation's minute in one segment.
#[derive(Debug)]
struct Cell {
    /// Service, operation and segment values ([`MetricsFold::series`]).
    series: u32,
    requests: i64,
    errors: i64,
    own_errors: i64,
    log_sum: f64,
    /// `(latency bucket, requests that succeeded in it)`.
    buckets: Box<[(i32, i64)]>,
}

/// The sums of one operation and segment values over the minutes of one place.
#[derive(Debug, Default)]
struct Acc {
    /// How many cells were summed (the group exists while there are some).
    cells: i64,
    requests: i64,
    errors: i64,
    own_errors: i64,
    /// Per latency bucket: how many cells hold it, and its requests.
    buckets: BTreeMap<i32, (i64, i64)>,
}

impl Acc {
    /// Adds `c` (`sign` 1) or takes it out (`sign` -1).
    fn add(&mut self, c: &Cell, sign: i64) {
        self.cells += sign;
        self.requests += sign * c.requests;
        self.errors += sign * c.errors;
        self.own_errors += sign * c.own_errors;
        for (b, n) in c.buckets.iter() {
            let e = self.buckets.entry(*b).or_default();
            e.0 += sign;
            e.1 += sign * n;
            if e.0 == 0 {
                self.buckets.remove(b);
            }
        }
    }
}

/// `(minute, series, requests, errors, log-latency sum)` ([`MetricsFold::cells`]).
pub type MinuteCell<'a> = (i64, &'a [Option<String>], i64, i64, f64);

/// Which statement of a pair a fold's rows are for: the window's, whose
/// current side is the window with its last minute, or the last minute's,
/// which does not read the rest of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Window,
    LastMinute,
}

impl Side {
    /// The statement's `cur` for a minute in `place`, `None` when it does not read it.
    fn cur(self, place: Place) -> Option<i64> {
        match (self, place) {
            (_, Place::Out) => None,
            (_, Place::Baseline) => Some(0),
            (Side::Window, _) | (Side::LastMinute, Place::Last) => Some(1),
            (Side::LastMinute, Place::Window) => None,
        }
    }
}

/// The cells of `span_metrics` over a range, and their sums per place, kept
/// from one pass to the next.
#[derive(Debug, Default)]
pub struct MetricsFold {
    source: Option<Source>,
    /// `[from, to)` in nanoseconds: from the earliest minute a history
    /// reads to the pass's end.
    range: Option<(i64, i64)>,
    /// How far the cells were read (at or after the range's end): the
    /// minutes past the range's end wait, summed nowhere.
    read_to: i64,
    bounds: Option<Bounds>,
    minutes: BTreeMap<i64, Vec<Cell>>,
    series: Numbered<Vec<Option<String>>>,
    sums: HashMap<(u32, Place), Acc>,
    rebuilds: u64,
}

impl MetricsFold {
    /// How many times the fold read its whole range.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Whether its cells were read as `source` says (tenant, segment columns
    /// and the store's metrics version).
    pub fn read_as(&self, source: &Source) -> bool {
        self.source.as_ref() == Some(source)
    }

    /// Moves the fold to a pass over `b` whose histories read from `from`
    /// (at or before `b.from`), reading what it lacks of `span_metrics` with
    /// `read` (SQL to rows); `segments` segment columns read as `source` says.
    pub async fn advance<F, Fut>(
        &mut self,
        source: Source,
        segments: usize,
        from: i64,
        b: Bounds,
        changed: impl FnOnce(u64) -> Option<Option<i64>>,
        read: F,
    ) -> Result<(), AnalysisError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Rows, AnalysisError>>,
    {
        let from = from.min(b.from);
        // Since the cells were read, the store may have changed the minutes
        // from `since` on ([`andon_store::Store::metrics_changed_since`]):
        // those are dropped and read again, the others kept.
        let since = changed_minute(self.source.as_ref(), &source, changed);
        let follows = since.is_some_and(|at| at.is_none_or(|m| m > from))
            && self.range.is_some_and(|(f, t)| f <= from && t <= b.to && from < t)
            && self.bounds.is_some();
        let lo = match (self.range, self.bounds) {
            (Some(_), Some(p)) if follows => {
                let end = self.read_to;
                let end = match since.flatten() {
                    Some(m) if m < end => {
                        for (minute, cells) in self.minutes.split_off(&m) {
                            let was = p.place(minute);
                            if was == Place::Out {
                                continue;
                            }
                            for c in &cells {
                                self.unsum(c, was);
                            }
                        }
                        m
                    }
                    _ => end,
                };
                // Every minute whose place changed lies between a bound of
                // the last pass and the same bound of this one.
                let mut moved: Vec<i64> = Vec::new();
                for (x, y) in [(p.from, b.from), (p.split, b.split), (p.short, b.short), (p.to, b.to)] {
                    moved.extend(self.minutes.range(x.min(y)..x.max(y)).map(|(m, _)| *m));
                }
                moved.sort_unstable();
                moved.dedup();
                for m in moved {
                    let (was, is) = (p.place(m), b.place(m));
                    if was == is {
                        continue;
                    }
                    let Some(cells) = self.minutes.remove(&m) else { continue };
                    for c in &cells {
                        if was != Place::Out {
                            self.unsum(c, was);
                        }
                        if is != Place::Out {
                            self.sums.entry((c.series, is)).or_default().add(c, 1);
                        }
                    }
                    self.minutes.insert(m, cells);
                }
                self.minutes = self.minutes.split_off(&from);
                end
            }
            _ => {
                *self = Self { rebuilds: self.rebuilds + 1, source: Some(source.clone()), ..Self::default() };
                from
            }
        };
        self.read_to = lo;
        if lo < b.to {
            let to = b.to.saturating_add(READ_AHEAD);
            let sql = format!(
                "SELECT minute, service_name AS service, operation{}, requests, errors, own_errors, \
                 log_latency_sum, latency_buckets, latency_counts FROM span_metrics \
                 WHERE kind = 'server' AND minute >= {} AND minute < {}",
                source.1,
                ts(lo),
                ts(to)
            );
            let rows = read(sql.clone()).await?;
            for batch in rows.batches() {
                self.take(batch, segments, &b).map_err(failed(&sql))?;
            }
            self.read_to = to;
        }
        self.source = Some(source);
        self.range = Some((from, b.to));
        self.bounds = Some(b);
        Ok(())
    }

    /// Takes `c` out of its place's sums.
    fn unsum(&mut self, c: &Cell, place: Place) {
        let acc = self.sums.entry((c.series, place)).or_default();
        acc.add(c, -1);
        if acc.cells == 0 {
            self.sums.remove(&(c.series, place));
        }
    }

    /// Keeps the cells of `batch`, adding them to their places' sums.
    fn take(&mut self, batch: &RecordBatch, segments: usize, b: &Bounds) -> Result<(), ArrowError> {
        let (services, operations) = (strings(batch, "service")?, strings(batch, "operation")?);
        let segs: Vec<StringArray> =
            (0..segments).map(|i| strings(batch, &format!("seg{i}"))).collect::<Result<_, _>>()?;
        let (minute, requests, errors, own_errors) =
            (ints(batch, "minute")?, ints(batch, "requests")?, ints(batch, "errors")?, ints(batch, "own_errors")?);
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
        };
        let log_sum = arrow::compute::cast(&column("log_latency_sum")?, &DataType::Float64)?;
        let log_sum = log_sum.as_primitive::<arrow::datatypes::Float64Type>();
        let list = |name: &str| -> Result<arrow::array::ListArray, ArrowError> {
            let a = column(name)?;
            a.as_list_opt::<i32>().cloned().ok_or_else(|| ArrowError::SchemaError(format!("{name} is not a list")))
        };
        let (bucket_lists, count_lists) = (list("latency_buckets")?, list("latency_counts")?);
        let bucket_values = arrow::compute::cast(bucket_lists.values(), &DataType::Int32)?;
        let count_values = arrow::compute::cast(count_lists.values(), &DataType::Int64)?;
        let (bucket_values, count_values) =
            (bucket_values.as_primitive::<Int32Type>(), count_values.as_primitive::<Int64Type>());
        let value = |a: &Int64Array, i: usize| if a.is_null(i) { 0 } else { a.value(i) };
        for i in 0..batch.num_rows() {
            let key = series_key([&services, &operations].into_iter().chain(segs.iter()), i);
            let (bo, co) = (bucket_lists.value_offsets(), count_lists.value_offsets());
            let (bs, be) = (bo[i] as usize, bo[i + 1] as usize);
            let (cs, ce) = (co[i] as usize, co[i + 1] as usize);
            if bucket_lists.is_null(i) || count_lists.is_null(i) || be - bs != ce - cs {
                return Err(ArrowError::InvalidArgumentError("latency buckets and counts differ in length".into()));
            }
            let buckets: Box<[(i32, i64)]> =
                (0..be - bs).map(|k| (bucket_values.value(bs + k), count_values.value(cs + k))).collect();
            let cell = Cell {
                series: self.series.number(key),
                requests: value(&requests, i),
                errors: value(&errors, i),
                own_errors: value(&own_errors, i),
                log_sum: if log_sum.is_null(i) { 0.0 } else { log_sum.value(i) },
                buckets,
            };
            let m = minute.value(i);
            let place = b.place(m);
            if place != Place::Out {
                self.sums.entry((cell.series, place)).or_default().add(&cell, 1);
            }
            self.minutes.entry(m).or_default().push(cell);
        }
        Ok(())
    }

    /// The cells of the minutes in `[from, to)` whose series (service,
    /// operation, then the segment values) `wanted` admits, as `(minute,
    /// series, requests, errors, log-latency sum)`, in minute order; `None`
    /// when the fold does not hold all of `[from, to)` (the onset series
    /// `minutes_rolled.sql` reads, without reading it).
    pub fn cells(&self, from: i64, to: i64, wanted: impl Fn(&[Option<String>]) -> bool) -> Option<Vec<MinuteCell<'_>>> {
        let (lo, hi) = self.range?;
        if from < lo || to > hi {
            return None;
        }
        let mut admitted: HashMap<u32, bool> = HashMap::new();
        let mut out = Vec::new();
        for (m, cells) in self.minutes.range(from..to) {
            for c in cells {
                let series = self.series.get(c.series);
                if *admitted.entry(c.series).or_insert_with(|| wanted(series)) {
                    out.push((*m, series.as_slice(), c.requests, c.errors, c.log_sum));
                }
            }
        }
        Some(out)
    }

    /// Per series and `cur` of `side`'s statement, the places' sums it adds up.
    fn groups(&self, side: Side) -> Vec<(u32, i64, Vec<&Acc>)> {
        let mut groups: BTreeMap<(u32, i64), Vec<&Acc>> = BTreeMap::new();
        for ((series, place), acc) in &self.sums {
            if let Some(cur) = side.cur(*place) {
                groups.entry((*series, cur)).or_default().push(acc);
            }
        }
        groups.into_iter().map(|((s, c), accs)| (s, c, accs)).collect()
    }

    /// The text columns of `keys` (service, operation, then the segments).
    fn texts(&self, keys: &[u32], segments: usize) -> Vec<ArrayRef> {
        (0..2 + segments)
            .map(|k| -> ArrayRef {
                Arc::new(keys.iter().map(|s| self.series.get(*s)[k].as_deref()).collect::<StringArray>())
            })
            .collect()
    }

    /// `latency_rolled.sql`'s rows for `side`'s statement of the last pass
    /// ([`Self::advance`]): per service, operation, `cur`, segment values and
    /// latency bucket, the requests that succeeded.
    pub fn latency(&self, side: Side, segments: usize) -> Result<Rows, ArrowError> {
        let (mut keys, mut curs, mut buckets, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (series, cur, accs) in self.groups(side) {
            let mut merged: BTreeMap<i32, i64> = BTreeMap::new();
            for acc in accs {
                for (b, (_, n)) in &acc.buckets {
                    *merged.entry(*b).or_default() += n;
                }
            }
            for (b, n) in merged {
                keys.push(series);
                curs.push(cur);
                buckets.push(b);
                counts.push(n);
            }
        }
        let texts = self.texts(&keys, segments);
        let mut fields =
            vec![Field::new("service", DataType::Utf8, true), Field::new("operation", DataType::Utf8, true)];
        let mut columns: Vec<ArrayRef> = texts[..2].to_vec();
        fields.push(Field::new("cur", DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from(curs)));
        for (i, t) in texts[2..].iter().enumerate() {
            fields.push(Field::new(format!("seg{i}"), DataType::Utf8, true));
            columns.push(Arc::clone(t));
        }
        fields.push(Field::new("bucket", DataType::Int32, true));
        columns.push(Arc::new(Int32Array::from(buckets)));
        fields.push(Field::new("n", DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from(counts)));
        Ok(Rows::new(vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?]))
    }

    /// `error_rate_rolled.sql`'s rows for `side`'s statement of the last
    /// pass: per service, operation, `cur` and segment values, the requests,
    /// the failed ones and those that failed on their own.
    pub fn error_rate(&self, side: Side, segments: usize) -> Result<Rows, ArrowError> {
        let groups = self.groups(side);
        let keys: Vec<u32> = groups.iter().map(|g| g.0).collect();
        let sum = |f: fn(&Acc) -> i64| -> ArrayRef {
            Arc::new(groups.iter().map(|(_, _, accs)| accs.iter().map(|a| f(a)).sum::<i64>()).collect::<Int64Array>())
        };
        let texts = self.texts(&keys, segments);
        let mut fields =
            vec![Field::new("service", DataType::Utf8, true), Field::new("operation", DataType::Utf8, true)];
        let mut columns: Vec<ArrayRef> = texts[..2].to_vec();
        fields.push(Field::new("cur", DataType::Int64, true));
        columns.push(Arc::new(groups.iter().map(|g| g.1).collect::<Int64Array>()));
        for (i, t) in texts[2..].iter().enumerate() {
            fields.push(Field::new(format!("seg{i}"), DataType::Utf8, true));
            columns.push(Arc::clone(t));
        }
        for (name, f) in [
            ("n", (|a: &Acc| a.requests) as fn(&Acc) -> i64),
            ("errors", |a: &Acc| a.errors),
            ("own_errors", |a: &Acc| a.own_errors),
        ] {
            fields.push(Field::new(name, DataType::Int64, true));
            columns.push(sum(f));
        }
        fields.push(Field::new("error_sessions", DataType::Int64, true));
        columns.push(Arc::new(Int64Array::new_null(groups.len())));
        Ok(Rows::new(vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?]))
    }

    /// The latency detector's subjects for `side`'s statement, with
    /// `history` ([`Self::history_sums`]) merged in: what
    /// [`crate::detectors::subjects`] makes of the rows of [`Self::latency`]
    /// and of `history_rolled.sql`, without the rows.
    pub fn latency_subjects(&self, side: Side, history: &HistorySums) -> Vec<Subject<Latency>> {
        let cell = |accs: &[&Acc]| {
            let mut merged: BTreeMap<i32, i64> = BTreeMap::new();
            for acc in accs {
                for (b, (_, n)) in &acc.buckets {
                    *merged.entry(*b).or_default() += n;
                }
            }
            // A group without a latency bucket has no row.
            (!merged.is_empty()).then(|| {
                let mut hist = Buckets::default();
                for (b, n) in merged {
                    hist.add_to(i64::from(b), n.max(0) as u64);
                }
                Latency { hist, periods: BTreeMap::new() }
            })
        };
        let period = |m: &mut Latency, p: i64, (requests, errors, log_sum): &PeriodSums| {
            let e = m.periods.entry(p).or_default();
            e.0 += (requests - errors).max(0) as u64;
            e.1 += log_sum;
        };
        self.subjects(side, history, cell, period)
    }

    /// The error-rate detector's subjects for `side`'s statement, with
    /// `history` merged in ([`Self::latency_subjects`], of the rows of
    /// [`Self::error_rate`] and of `history_rolled.sql`).
    pub fn error_subjects(&self, side: Side, history: &HistorySums) -> Vec<Subject<Errors>> {
        let cell = |accs: &[&Acc]| {
            let sum = |f: fn(&Acc) -> i64| accs.iter().map(|a| f(a)).sum::<i64>().max(0) as u64;
            Some(Errors {
                requests: sum(|a| a.requests),
                errors: sum(|a| a.errors),
                own: sum(|a| a.own_errors),
                ..Errors::default()
            })
        };
        let period = |m: &mut Errors, p: i64, (requests, errors, _): &PeriodSums| {
            let e = m.periods.entry(p).or_default();
            e.0 += (*requests).max(0) as u64;
            e.1 += (*errors).max(0) as u64;
        };
        self.subjects(side, history, cell, period)
    }

    /// Subjects of `side`'s groups, each cell made by `cell` of the places'
    /// sums it adds up (none where it gives none), then the history's
    /// subjects, each period added by `period`, merged in: in the order and
    /// with the cells [`crate::detectors::subjects`] and
    /// [`crate::detectors::merge_subjects`] give of the rows. A series'
    /// names are looked up once, however many periods it has.
    fn subjects<M: Metric>(
        &self,
        side: Side,
        history: &HistorySums,
        cell: impl Fn(&[&Acc]) -> Option<M>,
        period: impl Fn(&mut M, i64, &PeriodSums),
    ) -> Vec<Subject<M>> {
        let keyed = |series: u32| {
            let key = self.series.get(series);
            match (&key[0], &key[1]) {
                (Some(service), Some(operation)) => Some(((service.as_str(), operation.as_str()), &key[2..])),
                _ => None,
            }
        };
        type Cells<'k, M> = BTreeMap<(&'k str, &'k str), Vec<(bool, &'k [Option<String>], M)>>;
        let mut main: Cells<'_, M> = BTreeMap::new();
        for (series, cur, accs) in self.groups(side) {
            let (Some((subject, segs)), Some(m)) = (keyed(series), cell(&accs)) else { continue };
            main.entry(subject).or_default().push((cur == 1, segs, m));
        }
        // Per subject, each series' periods (a series is one segment values).
        type Periods<'k, M> = BTreeMap<(&'k str, &'k str), BTreeMap<&'k [Option<String>], M>>;
        let mut past: Periods<'_, M> = BTreeMap::new();
        for periods in history.0.chunk_by(|a, b| a.0.0 == b.0.0) {
            let Some((subject, segs)) = keyed(periods[0].0.0) else { continue };
            let m = past.entry(subject).or_default().entry(segs).or_default();
            for ((_, p), sums) in periods {
                period(m, *p, sums);
            }
        }
        let owned = |cells: Vec<(bool, &[Option<String>], M)>| -> Vec<(bool, Vec<Option<String>>, M)> {
            cells.into_iter().map(|(cur, segs, m)| (cur, segs.to_vec(), m)).collect()
        };
        let subject = |(service, operation): (&str, &str), cells| Subject {
            service: service.to_owned(),
            operation: operation.to_owned(),
            cells,
        };
        let mut out: Vec<Subject<M>> = main
            .into_iter()
            .map(|(k, mut cells)| {
                cells.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                subject(k, owned(cells))
            })
            .collect();
        let past = past
            .into_iter()
            .map(|(k, cells)| subject(k, owned(cells.into_iter().map(|(segs, m)| (false, segs, m)).collect())));
        merge_subjects(&mut out, past.collect());
        out
    }

    /// Per series and period of `window` ns counted back from `end`, over
    /// `[from, end)`: the requests, the failed ones and the log-latency sum,
    /// ordered by series and period. `None` when the kept range does not
    /// hold `[from, end)`.
    pub fn history_sums(&self, (from, end, window): (i64, i64, i64)) -> Option<HistorySums> {
        let (lo, hi) = self.range?;
        if from < lo || end > hi || window <= 0 {
            return None;
        }
        let mut groups: HashMap<(u32, i64), PeriodSums> = HashMap::new();
        for (m, cells) in self.minutes.range(from..end) {
            let period = end + (m - end).div_euclid(window) * window;
            for c in cells {
                let g = groups.entry((c.series, period)).or_default();
                g.0 += c.requests;
                g.1 += c.errors;
                g.2 += c.log_sum;
            }
        }
        let mut groups: Vec<((u32, i64), PeriodSums)> = groups.into_iter().collect();
        groups.sort_unstable_by_key(|(k, _)| *k);
        Some(HistorySums(groups))
    }
}
