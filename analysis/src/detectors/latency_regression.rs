//! `latency_regression`: per (service, operation), is the current window slower
//! than the baseline? Mann-Whitney U on log-spaced histograms, with the
//! Hodges–Lehmann shift and its confidence interval as the effect (Kayenta's
//! canary judge), and floors on the relative shift and on the median in ms.

use std::collections::BTreeMap;

use andon_model::FindingKind;
use serde_json::Value;

use super::{Ctx, Judgement, Metric, Subject, Test, num, round, segment_tests, subjects};
use crate::sql::{self, Rows};
use crate::stats::{self, Histogram};

pub const SQL: &str = include_str!("latency_regression.sql");

/// Histogram buckets per factor e of duration: about 5% apart.
pub const BUCKETS_PER_E: f64 = 20.0;

impl Metric for Histogram {
    fn add(&mut self, other: &Self) {
        for (b, c) in other {
            *self.entry(*b).or_default() += c;
        }
    }

    fn samples(&self) -> u64 {
        stats::total(self)
    }
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    let mut vars = ctx.vars(filter);
    vars.push(("buckets_per_e", format!("{BUCKETS_PER_E:.1}")));
    sql::render(SQL, &vars)
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
    Some(Judgement {
        p_value: t.p_value,
        effect: round(ratio, 4),
        ci: Some([round(ci[0], 4), round(ci[1], 4)]),
        test: "mann_whitney_u",
        material,
        baseline: side(base),
        current: side(cur),
        details: BTreeMap::from([("median_shift_ms".to_owned(), num(round(delta_ms, 3)))]),
        current_samples: stats::total(cur),
    })
}

pub fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Histogram>> = subjects(
        rows,
        &ctx.segments,
        |r| Some((r.str("service")?, r.str("operation")?)),
        |r| BTreeMap::from([(r.i64("bucket").unwrap_or(0), r.u64("n"))]),
    );
    subjects
        .iter()
        .flat_map(|s| segment_tests(FindingKind::LatencyRegression, s, ctx, |b, c| judge(ctx, b, c)))
        .collect()
}
