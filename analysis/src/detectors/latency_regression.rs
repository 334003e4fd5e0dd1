//! `latency_regression`: per (service, operation), is the current window slower
//! than the baseline? Mann-Whitney U on log-spaced histograms, with the
//! Hodges–Lehmann shift and its confidence interval as the effect (Kayenta's
//! canary judge), and floors on the relative shift and on the median in ms.

use std::collections::BTreeMap;

use andon_model::format::ms;
use andon_model::statistics::{self as stats, Histogram};
use andon_model::{Affected, FindingKind, Severity, Trouble, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{Metric, Subject, num, round, segment_tests, subjects};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, Ctx, Judgement, Test};
use crate::sql::{self, Rows};

#[derive(Debug)]
pub struct LatencyRegression;

pub const KIND: FindingKind = FindingKind::LatencyRegression;

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
    if ctx.rolled() {
        return sql::render(include_str!("latency_rolled.sql"), &ctx.metric_vars(filter));
    }
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
        size: ratio - 1.0,
        ci: Some([round(ci[0], 4), round(ci[1], 4)]),
        test: "mann_whitney_u",
        material,
        baseline: side(base),
        current: side(cur),
        details: BTreeMap::from([("median_shift_ms".to_owned(), num(round(delta_ms, 3)))]),
        current_samples: stats::total(cur),
    })
}

fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Histogram>> = subjects(
        rows,
        &ctx.segments,
        |r| Some((r.str("service")?, r.str("operation")?)),
        |r| BTreeMap::from([(r.i64("bucket").unwrap_or(0), r.u64("n"))]),
    );
    subjects
        .iter()
        .flat_map(|s| segment_tests(KIND, s, ctx, |b, c| judge(ctx, b, c)))
        .collect()
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
        Ok(Tested { tests: tests(&sql.rows(&query(ctx, "")).await?, ctx), flows: Vec::new() })
    }

    fn trouble(&self, _j: &Judgement) -> Trouble {
        Trouble::Latency
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
        let Some((seg, filter, ctx)) = ctx.by_version(t) else { return Ok(None) };
        let rows = sql.rows(&query(&ctx, &filter)).await?;
        let mut by: BTreeMap<String, Histogram> = BTreeMap::new();
        for r in rows.iter() {
            let Some(v) = r.str(&seg) else { continue };
            *by.entry(v).or_default().entry(r.i64("bucket").unwrap_or(0)).or_default() += r.u64("n");
        }
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
