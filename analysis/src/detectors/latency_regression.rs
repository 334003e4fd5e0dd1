//! `latency_regression`: per (service, operation), is the current window slower
//! than the baseline? Mann-Whitney U on log-spaced histograms, with the
//! Hodges–Lehmann shift and its confidence interval as the effect (Kayenta's
//! canary judge), and floors on the relative shift (which the interval must
//! clear) and on the median in ms.
//!
//! Requests close in time share their conditions (load, a collector's pause,
//! a noisy neighbour), so they are not independent: a burst of a minute can
//! make a short window significantly slower than the one before it without
//! anything having changed. A shift is material only when it also stands out
//! from how much the operation's latency moves from one window to the next:
//! the current window's mean log latency against the same measure over the
//! periods of the window's length before the baseline's end, beyond
//! Shewhart's three (robust) standard deviations.

use std::collections::BTreeMap;

use andon_model::format::ms;
use andon_model::statistics::{self as stats, Histogram};
use andon_model::{Affected, FindingKind, Severity, Trouble, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{MIN_PERIODS, Metric, Subject, history_look, merge_subjects, num, round, segment_tests, subjects};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, Ctx, Judgement, Test};
use crate::sql::{self, Rows};
use andon_store::sql::Row;

#[derive(Debug)]
pub struct LatencyRegression;

pub const KIND: FindingKind = FindingKind::LatencyRegression;

pub const SQL: &str = include_str!("latency_regression.sql");

/// [`SQL`] over `span_metrics`, for windows on whole minutes.
pub const ROLLED_SQL: &str = include_str!("latency_rolled.sql");

/// Histogram buckets per factor e of duration: about 5% apart.
pub const BUCKETS_PER_E: f64 = 20.0;

/// A shift must clear this many robust standard deviations of the
/// window-to-window variation (Shewhart's control limits).
const CONTROL_SIGMAS: f64 = 3.0;

/// A latency histogram as a segment's sides sum it: dense counts from its
/// lowest bucket on, so that adding one to another is a pass over two short
/// arrays (a segment's sides are sums of many cells, summed again for each
/// value and pair tested), not a lookup per bucket.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    lo: i64,
    counts: Vec<u64>,
    total: u64,
}

impl Buckets {
    /// Counts `n` more in bucket `b`.
    pub fn add_to(&mut self, b: i64, n: u64) {
        self.cover(b, b);
        self.counts[(b - self.lo) as usize] += n;
        self.total += n;
    }

    /// Widens the range held to `[lo, hi]` at least.
    fn cover(&mut self, lo: i64, hi: i64) {
        if self.counts.is_empty() {
            self.lo = lo;
            self.counts = vec![0; (hi - lo + 1) as usize];
            return;
        }
        if lo < self.lo {
            let mut counts = vec![0; (self.lo - lo) as usize];
            counts.append(&mut self.counts);
            self.counts = counts;
            self.lo = lo;
        }
        let end = self.lo + self.counts.len() as i64 - 1;
        if hi > end {
            self.counts.resize(self.counts.len() + (hi - end) as usize, 0);
        }
    }

    /// The histogram of the buckets that hold requests.
    pub fn histogram(&self) -> Histogram {
        (self.lo..).zip(&self.counts).filter(|(_, n)| **n > 0).map(|(b, n)| (b, *n)).collect()
    }

    pub fn from_histogram(h: &Histogram) -> Self {
        let mut out = Buckets::default();
        for (b, n) in h {
            out.add_to(*b, *n);
        }
        out
    }
}

impl Metric for Buckets {
    fn add(&mut self, other: &Self) {
        if other.counts.is_empty() {
            return;
        }
        self.cover(other.lo, other.lo + other.counts.len() as i64 - 1);
        let at = (other.lo - self.lo) as usize;
        for (kept, n) in self.counts[at..].iter_mut().zip(&other.counts) {
            *kept += n;
        }
        self.total += other.total;
    }

    fn samples(&self) -> u64 {
        self.total
    }
}

/// One side of a latency comparison: the histogram the test reads and, on
/// the baseline's side, the requests and log-latency sums of the periods
/// before the baseline's end that show how steady the operation is.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub hist: Buckets,
    /// Per period before the baseline's end (keyed by its start): requests
    /// that succeeded and the sum of their log latencies.
    pub periods: BTreeMap<i64, (u64, f64)>,
}

/// A histogram's requests and the sum of their log latencies (natural log of
/// nanoseconds, at each bucket's midpoint).
pub fn log_sums(h: &Histogram) -> (u64, f64) {
    h.iter().fold((0, 0.0), |(n, s), (b, c)| (n + c, s + (*b as f64 + 0.5) / BUCKETS_PER_E * *c as f64))
}

impl Metric for Latency {
    fn add(&mut self, other: &Self) {
        self.hist.add(&other.hist);
        for (k, (n, sum)) in &other.periods {
            let p = self.periods.entry(*k).or_default();
            p.0 += n;
            p.1 += sum;
        }
    }

    fn samples(&self) -> u64 {
        self.hist.samples()
    }
}

/// How far the current window's mean log latency stands above the periods
/// before it, in robust standard deviations of their means (1.4826 × their
/// median absolute deviation, which a fault in one or two periods does not
/// move), with that deviation and the number of periods. `None` with fewer
/// than [`MIN_PERIODS`] periods of at least `min` requests.
pub fn steadiness(periods: &BTreeMap<i64, (u64, f64)>, now: (u64, f64), min: u64) -> Option<(f64, f64, usize)> {
    let min = min.max(2);
    if now.0 < min {
        return None;
    }
    let mut means: Vec<f64> = periods.values().filter(|(n, _)| *n >= min).map(|(n, s)| s / *n as f64).collect();
    if means.len() < MIN_PERIODS {
        return None;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) { (v[m - 1] + v[m]) / 2.0 } else { v[m] }
    };
    let centre = median(&mut means);
    let mut dev: Vec<f64> = means.iter().map(|m| (m - centre).abs()).collect();
    let sd = (1.4826 * median(&mut dev)).max(1e-9);
    Some(((now.1 / now.0 as f64 - centre) / sd, sd, means.len()))
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    if ctx.rolled() {
        return sql::render(ROLLED_SQL, &ctx.metric_vars(filter));
    }
    let mut vars = ctx.vars(filter);
    vars.push(("buckets_per_e", format!("{BUCKETS_PER_E:.1}")));
    sql::render(SQL, &vars)
}

/// The steadiness query over the [`super::HISTORY_WINDOWS`] windows' length (or the
/// baseline, when longer) before the baseline's end. It reads the rollups
/// whenever the store keeps them, in whole minutes, even for a pass that reads
/// spans (windows of seconds): the periods only need to be about a window long,
/// and reading them from spans would scan several times the pass's range.
pub fn history_query(ctx: &Ctx, filter: &str) -> String {
    if let Some(q) = super::history_rolled_query(ctx, filter) {
        return q;
    }
    let window = (ctx.end - ctx.split).num_seconds().max(1);
    let look = history_look(ctx);
    let ctx = Ctx { baseline_start: ctx.baseline_end - look, split: ctx.baseline_end, end: ctx.baseline_end, ..ctx.clone() };
    let mut vars = ctx.vars(filter);
    vars.push(("window_secs", window.to_string()));
    vars.push(("baseline_end", sql::ts(ctx.baseline_end)));
    sql::render(include_str!("latency_history.sql"), &vars)
}

/// A bucket's midpoint in milliseconds.
pub fn bucket_ms(b: f64) -> f64 {
    ((b + 0.5) / BUCKETS_PER_E).exp() / 1e6
}

fn side(h: &Histogram) -> BTreeMap<String, Value> {
    let q = |p| stats::hist_quantile(h, p).map_or(Value::Null, |b| num(round(bucket_ms(b as f64), 3)));
    BTreeMap::from([
        ("requests".to_owned(), Value::from(stats::total(h))),
        ("p50_ms".to_owned(), q(0.5)),
        ("p95_ms".to_owned(), q(0.95)),
        ("p99_ms".to_owned(), q(0.99)),
    ])
}

pub fn judge(ctx: &Ctx, base: &Histogram, cur: &Histogram) -> Option<Judgement> {
    let t = stats::mann_whitney(base, cur, 0.95)?;
    let ratio = (t.shift / BUCKETS_PER_E).exp();
    let ci = [(t.ci.0 / BUCKETS_PER_E).exp(), (t.ci.1 / BUCKETS_PER_E).exp()];
    let p50 = |h: &Histogram| stats::hist_quantile(h, 0.5).map_or(0.0, |b| bucket_ms(b as f64));
    let delta_ms = p50(base) * (ratio - 1.0);
    let cfg = &ctx.config;
    let material = ratio >= cfg.latency_min_ratio && ci[0] > 1.0 && delta_ms >= cfg.latency_min_ms;
    // Reported only when the whole interval clears the floor (Kayenta's rule):
    // a shift that is probably 35% but may be 16% is not yet known to be 25%.
    // Whether the rest of the data shows the effect is still judged on the
    // estimate: too few requests to be sure is not evidence of none.
    let clears = ci[0] >= cfg.latency_min_ratio;
    Some(Judgement {
        p_value: t.p_value,
        effect: round(ratio, 4),
        size: ratio - 1.0,
        ci: Some([round(ci[0], 4), round(ci[1], 4)]),
        test: "mann_whitney_u",
        material,
        baseline: side(base),
        current: side(cur),
        details: BTreeMap::from([
            ("median_shift_ms".to_owned(), num(round(delta_ms, 3))),
            (super::CLEARS_FLOOR.to_owned(), Value::Bool(clears)),
        ]),
        current_samples: stats::total(cur),
    })
}

/// [`judge`], with the shift material only where it also stands out from the
/// operation's window-to-window variation.
fn judge_steady(ctx: &Ctx, b: &Latency, c: &Latency) -> Option<Judgement> {
    let current = c.hist.histogram();
    let mut j = judge(ctx, &b.hist.histogram(), &current)?;
    let steady = steadiness(&b.periods, log_sums(&current), ctx.config.segment_min_samples);
    if ctx.short && steady.is_none_or(|(_, _, periods)| periods < super::SHORT_MIN_PERIODS) {
        j.material = false;
    }
    if let Some((sds, sd, periods)) = steady {
        j.material &= sds >= CONTROL_SIGMAS;
        j.details.insert("shift_in_window_sds".to_owned(), num(round(sds, 2)));
        j.details.insert("window_sd_log".to_owned(), num(round(sd, 4)));
        j.details.insert("windows_compared".to_owned(), Value::from(periods));
    }
    Some(j)
}

/// The subjects of the statement's `rows`, with the `history`'s periods
/// joined on the baseline's side (its rows have no `cur`).
pub fn subjects_of(rows: &Rows, history: &Rows, ctx: &Ctx) -> Vec<Subject<Latency>> {
    let mut subjects: Vec<Subject<Latency>> = subjects(rows, &ctx.segments, |m: &mut Latency, r| {
        m.hist.add_to(r.i64("bucket").unwrap_or(0), r.u64("n"));
    });
    let periods = super::subjects(history, &ctx.segments, |m: &mut Latency, r| {
        if let Some(p) = r.i64("period") {
            let e = m.periods.entry(p).or_default();
            e.0 += r.u64("n");
            e.1 += r.f64("log_sum").unwrap_or(0.0);
        }
    });
    merge_subjects(&mut subjects, periods);
    subjects
}

fn tests(subjects: &[Subject<Latency>], ctx: &Ctx) -> Vec<Test> {
    subjects.iter().flat_map(|s| segment_tests(KIND, s, ctx, |b, c| judge_steady(ctx, b, c))).collect()
}

/// The statement's rows as [`subjects_of`] reads them (its cells that are
/// not a history's, a row per latency bucket).
pub fn rows_of(subjects: &[Subject<Latency>], segments: usize) -> Result<Rows, arrow::error::ArrowError> {
    let mut rows = super::SubjectRows::new(segments, &["bucket", "n"]);
    for s in subjects {
        for (cur, segs, m) in s.cells.iter().filter(|c| c.2.periods.is_empty()) {
            for (b, n) in m.hist.histogram() {
                rows.push(s, *cur, segs, &[Some(b), Some(n as i64)]);
            }
        }
    }
    rows.finish()
}

#[async_trait]
impl Detector for LatencyRegression {
    fn kind(&self) -> FindingKind {
        KIND
    }

    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)> {
        vec![(KIND.to_string(), query(ctx, ""))]
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        let q = query(ctx, "");
        if let Some(folded) = sql.folded(&q)
            && let super::Folded::Latency(subjects) = &*folded
        {
            sql.noted(&history_query(ctx, ""), folded.history_rows());
            return Ok(Tested { tests: tests(subjects, ctx), flows: Vec::new() });
        }
        let rows = sql.rows(&q).await?;
        let history = sql.rows(&history_query(ctx, "")).await?;
        Ok(Tested { tests: tests(&subjects_of(&rows, &history, ctx), ctx), flows: Vec::new() })
    }

    fn trouble(&self, _j: &Judgement) -> Trouble {
        Trouble::Latency
    }

    fn judges_short_windows(&self) -> bool {
        true
    }

    async fn evidence(
        &self,
        ctx: &Ctx,
        t: &Test,
        sql: &dyn Sql,
        baseline: &mut Numbers,
        current: &mut Numbers,
    ) -> Result<String, AnalysisError> {
        let filter = ctx.subject_filter(&t.service, &t.operation, &t.segment);
        let q = sql::render(include_str!("evidence_latency.sql"), &ctx.lean_for(&t.segment).vars(&filter));
        if let Some(sides) = sql.latency_evidence(ctx, (&t.service, &t.operation, &t.segment)).await? {
            sql.noted(&q, sides.len());
            for s in sides {
                let side = if s.current { &mut *current } else { &mut *baseline };
                side.insert("requests".into(), Value::from(s.requests));
                side.insert("sessions".into(), Value::from(s.sessions));
                for (k, v) in ["p50_ms", "p95_ms", "p99_ms"].into_iter().zip(s.ms) {
                    side.insert(k.into(), num(v));
                }
            }
            return Ok(q);
        }
        for r in sql.rows(&q).await?.iter() {
            let side = if r.str("side").as_deref() == Some("current") { &mut *current } else { &mut *baseline };
            for k in ["requests", "sessions"] {
                side.insert(k.into(), Value::from(r.u64(k)));
            }
            for k in ["p50_ms", "p95_ms", "p99_ms"] {
                side.insert(k.into(), r.f64(k).map_or(Value::Null, num));
            }
        }
        Ok(q)
    }

    async fn compare_versions(
        &self,
        ctx: &Ctx,
        t: &Test,
        new: &str,
        sql: &dyn Sql,
    ) -> Result<Option<(String, Judgement)>, AnalysisError> {
        let mut by: BTreeMap<String, Histogram> = BTreeMap::new();
        let each = |v: String, r: &Row<'_>| {
            *by.entry(v).or_default().entry(r.i64("bucket").unwrap_or(0)).or_default() += r.u64("n");
        };
        let Some(ctx) = super::each_version_row(ctx, (&t.service, &t.operation), sql, query, each).await? else { return Ok(None) };
        let Some(new_h) = by.remove(new) else { return Ok(None) };
        let Some((prev, prev_h)) = by.into_iter().max_by_key(|(_, h)| stats::total(h)) else { return Ok(None) };
        Ok(judge(&ctx, &prev_h, &new_h).map(|j| (prev, j)))
    }

    fn affected(&self, current: &Numbers, _baseline: &Numbers) -> Affected {
        Affected { requests: get(current, "requests").max(0.0) as u64, sessions: get(current, "sessions").max(0.0) as u64 }
    }

    fn severity(&self, effect: f64, _current: &Numbers, _baseline: &Numbers) -> Severity {
        grade(effect, [4.0, 2.0, 1.5])
    }

    fn rank(&self, _j: &Judgement) -> u8 {
        3
    }

    fn sentence(&self, f: &Facts<'_>) -> String {
        let j = f.judgement;
        let ci = j.ci.map(|c| format!(" (95% CI {:.1}–{:.1}×)", c[0], c[1])).unwrap_or_default();
        format!(
            "p95 latency of `{}` in {}{} rose from {} to {}{}; requests are {:.1}× slower at the median{ci}; {} sessions affected.",
            f.operation,
            f.service,
            f.segment,
            ms(get(f.baseline, "p95_ms")),
            ms(get(f.current, "p95_ms")),
            crate::summary::since(f.onset),
            j.effect,
            crate::summary::count(f.affected.sessions),
        )
    }

    fn short(&self, j: &Judgement) -> String {
        format!("{:.1}× slower at the median", j.effect)
    }

    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording {
        Wording {
            kind: "latency regression".into(),
            title: format!(
                "{{operation}} in {{service}} is {effect:.1}× slower{{segment}} (p95 {} → {})",
                ms(get(baseline, "p95_ms")),
                ms(get(current, "p95_ms"))
            ),
            effect: format!("{effect:.2}× at the median"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::AnalysisConfig;

    fn ctx() -> Ctx {
        crate::detectors::test_ctx(AnalysisConfig::default())
    }

    /// `n` requests a period with these mean log latencies (natural log of ns).
    fn periods(means: &[f64], n: u64) -> BTreeMap<i64, (u64, f64)> {
        means.iter().enumerate().map(|(i, m)| (i as i64, (n, m * n as f64))).collect()
    }

    /// Latencies around `median_ms`, log-normal-ish, as a histogram of `n`.
    fn hist(median_ms: f64, n: u64) -> Histogram {
        let centre = (median_ms * 1e6).ln() * BUCKETS_PER_E;
        let mut h = Histogram::new();
        for i in 0..n {
            // A spread of about ±40% around the median, evenly.
            let off = (i as f64 / n as f64 - 0.5) * 0.8 * BUCKETS_PER_E;
            *h.entry((centre + off).floor() as i64).or_default() += 1;
        }
        h
    }

    fn side(median_ms: f64, n: u64, periods_: BTreeMap<i64, (u64, f64)>) -> Latency {
        Latency { hist: Buckets::from_histogram(&hist(median_ms, n)), periods: periods_ }
    }

    #[test]
    fn dense_buckets_sum_to_the_histogram_a_sum_of_histograms_gives() {
        let parts: [Histogram; 4] = [
            BTreeMap::from([(300, 2), (305, 1)]),
            BTreeMap::from([(290, 4), (310, 1)]),
            BTreeMap::new(),
            BTreeMap::from([(305, 3), (400, 1), (280, 2)]),
        ];
        // The sum bucket by bucket, as a map.
        let sum = |into: &mut Histogram, h: &Histogram| {
            for (b, n) in h {
                *into.entry(*b).or_default() += n;
            }
        };
        let mut dense = Buckets::default();
        let mut sparse = Histogram::new();
        for p in &parts {
            dense.add(&Buckets::from_histogram(p));
            sum(&mut sparse, p);
        }
        assert_eq!(dense.histogram(), sparse);
        assert_eq!(dense.samples(), 14);
        // A bucket below and above the range held widens it.
        dense.add_to(100, 1);
        dense.add_to(500, 2);
        sum(&mut sparse, &BTreeMap::from([(100, 1), (500, 2)]));
        assert_eq!(dense.histogram(), sparse);
        assert_eq!(Buckets::default().histogram(), Histogram::new());
    }

    #[test]
    fn a_shift_is_reported_only_when_its_whole_interval_clears_the_floor() {
        let ctx = ctx();
        // 1.35× slower, on few requests: probably past the 1.25× floor, but
        // the interval reaches well below it.
        let j = judge(&ctx, &hist(10.0, 30), &hist(13.5, 30)).unwrap();
        assert!(j.effect >= 1.25 && j.ci.unwrap()[0] < 1.25 && j.p_value < 0.01, "{j:?}");
        assert!(j.material && j.details[crate::detectors::CLEARS_FLOOR] == false, "{j:?}");
        // The same shift on many requests is known to be past it.
        let j = judge(&ctx, &hist(10.0, 3000), &hist(13.5, 3000)).unwrap();
        assert!(j.ci.unwrap()[0] >= 1.25 && j.material && j.details[crate::detectors::CLEARS_FLOOR] == true, "{j:?}");
    }

    #[test]
    fn a_shift_counts_against_how_much_windows_move_on_their_own() {
        let base = (10e6f64).ln();
        // Windows that wander by about ±10% from one to the next.
        let wandering: Vec<f64> = [0.0, 0.1, -0.1, 0.05, -0.05, 0.0, 0.1, -0.1].iter().map(|d| base + d).collect();
        let (sds, sd, n) = steadiness(&periods(&wandering, 100), (100, (base + 0.2) * 100.0), 20).unwrap();
        assert_eq!(n, 8);
        assert!((sd - 1.4826 * 0.075).abs() < 1e-9, "{sd}");
        assert!(sds > 1.5 && sds < 2.0, "{sds}");
        // Too few periods with enough requests: no estimate.
        assert!(steadiness(&periods(&wandering[..3], 100), (100, base * 100.0), 20).is_none());
        assert!(steadiness(&periods(&wandering, 10), (100, base * 100.0), 20).is_none());

        let ctx = ctx();
        // 1.3× slower over 400 requests: significant and material as requests go.
        let steady: Vec<f64> = [0.0, 0.01, -0.01, 0.005, -0.005, 0.0, 0.01, -0.01].iter().map(|d| base + d).collect();
        let j = judge_steady(&ctx, &side(10.0, 400, periods(&steady, 100)), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(j.material && j.p_value < 1e-6, "{j:?}");
        assert!(j.details["shift_in_window_sds"].as_f64().unwrap() > 10.0);
        // The same shift on an operation whose windows wander by ±25% on their
        // own is what its windows do anyway.
        let noisy: Vec<f64> = [0.0, 0.25, -0.25, 0.2, -0.2, 0.0, 0.25, -0.25].iter().map(|d| base + d).collect();
        let j = judge_steady(&ctx, &side(10.0, 400, periods(&noisy, 100)), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(!j.material && j.p_value < 1e-6, "{j:?}");
        // Four times slower stands out of the same wandering.
        let j = judge_steady(&ctx, &side(10.0, 400, periods(&noisy, 100)), &side(40.0, 400, BTreeMap::new())).unwrap();
        assert!(j.material, "{j:?}");
        // With no history to judge by, the shift is judged on its own.
        let j = judge_steady(&ctx, &side(10.0, 400, BTreeMap::new()), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(j.material && !j.details.contains_key("shift_in_window_sds"), "{j:?}");

        // A short window is judged only against at least half an hour of
        // windows like it: with 8, or none, the shift is not material.
        let short = Ctx { short: true, ..ctx.clone() };
        let j = judge_steady(&short, &side(10.0, 400, periods(&steady, 100)), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(!j.material, "{j:?}");
        let j = judge_steady(&short, &side(10.0, 400, BTreeMap::new()), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(!j.material, "{j:?}");
        let half_hour: Vec<f64> = steady.iter().cycle().take(super::super::SHORT_MIN_PERIODS).copied().collect();
        let j = judge_steady(&short, &side(10.0, 400, periods(&half_hour, 100)), &side(13.0, 400, BTreeMap::new())).unwrap();
        assert!(j.material, "{j:?}");
    }
}
