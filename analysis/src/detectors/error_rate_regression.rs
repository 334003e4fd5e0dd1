//! `error_rate_regression`: per (service, operation), did the share of failed
//! requests rise? The two-proportion z-test, or Fisher's exact test when counts
//! are small, with floors on the ratio and the absolute rise. Where the
//! rollups show how the rate moves from one window to the next before the
//! baseline's end, the rise must also stand out from that
//! ([`super::against_history`]): failures come in clumps.

use std::collections::BTreeMap;

use andon_model::format::{count, pct};
use andon_model::{Affected, FindingKind, Severity, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{Metric, Subject, judge_rate, merge_subjects, segment_tests, subjects};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::{self, Rows};
use andon_store::sql::Row;

#[derive(Debug)]
pub struct ErrorRateRegression;

pub const KIND: FindingKind = FindingKind::ErrorRateRegression;

pub const SQL: &str = include_str!("error_rate_regression.sql");

/// [`SQL`] over `span_metrics`, for windows on whole minutes.
pub const ROLLED_SQL: &str = include_str!("error_rate_rolled.sql");

#[derive(Debug, Clone, Default)]
pub struct Errors {
    pub requests: u64,
    pub errors: u64,
    /// Errors that started in this operation rather than in a callee.
    pub own: u64,
    pub error_sessions: u64,
    /// On the baseline's side, `(requests, errors)` per period of the current
    /// window's length before the baseline's end ([`history_query`]).
    pub periods: BTreeMap<i64, (u64, u64)>,
}

impl Metric for Errors {
    fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.own += o.own;
        self.error_sessions += o.error_sessions;
        for (k, (n, x)) in &o.periods {
            let p = self.periods.entry(*k).or_default();
            p.0 += n;
            p.1 += x;
        }
    }

    fn samples(&self) -> u64 {
        self.requests
    }
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    if ctx.rolled() {
        return sql::render(ROLLED_SQL, &ctx.metric_vars(filter));
    }
    sql::render(SQL, &ctx.vars(filter))
}

/// The subjects of the statement's `rows`, with the `history`'s periods
/// joined on the baseline's side.
pub fn subjects_of(rows: &Rows, history: &Rows, ctx: &Ctx) -> Vec<Subject<Errors>> {
    let mut subjects: Vec<Subject<Errors>> = subjects(rows, &ctx.segments, |m: &mut Errors, r| {
        m.requests += r.u64("n");
        m.errors += r.u64("errors");
        m.own += r.u64("own_errors");
        m.error_sessions += r.u64("error_sessions");
    });
    // The history's periods join their subjects, on the baseline's side.
    let periods = super::subjects(history, &ctx.segments, |m: &mut Errors, r| {
        if let Some(p) = r.i64("period") {
            let e = m.periods.entry(p).or_default();
            e.0 += r.u64("requests");
            e.1 += r.u64("errors");
        }
    });
    merge_subjects(&mut subjects, periods);
    subjects
}

/// The statement's rows as [`subjects_of`] reads them (its cells that are
/// not a history's).
pub fn rows_of(subjects: &[Subject<Errors>], segments: usize) -> Result<Rows, arrow::error::ArrowError> {
    let mut rows = super::SubjectRows::new(segments, &["n", "errors", "own_errors", "error_sessions"]);
    for s in subjects {
        for (cur, segs, m) in s.cells.iter().filter(|c| c.2.periods.is_empty()) {
            let sessions = (m.error_sessions > 0).then_some(m.error_sessions as i64);
            rows.push(s, *cur, segs, &[Some(m.requests as i64), Some(m.errors as i64), Some(m.own as i64), sessions]);
        }
    }
    rows.finish()
}

fn tests(subjects: &[Subject<Errors>], ctx: &Ctx) -> Vec<Test> {
    subjects
        .iter()
        .flat_map(|s| {
            segment_tests(KIND, s, ctx, |b, c| {
                let mut j = judge_rate(
                    &ctx.config,
                    (b.errors, b.requests),
                    (c.errors, c.requests),
                    ("errors", "requests", "error_rate"),
                )?;
                let min = ctx.config.segment_min_samples;
                let history = super::against_history(b.periods.values().copied(), (c.requests, c.errors), min);
                if ctx.short && history.is_none_or(|h| h.periods < super::SHORT_MIN_PERIODS) {
                    j.material = false;
                }
                if let Some(h) = history {
                    let cur = c.errors as f64 / c.requests.max(1) as f64;
                    j.material &= cur - h.rate >= ctx.config.rate_min_delta && cur >= ctx.config.rate_min_ratio * h.rate;
                    j.p_value = j.p_value.max(h.p_value);
                    j.details.insert("history_error_rate".into(), super::num(super::round(h.rate, 5)));
                    j.details.insert("history_dispersion".into(), super::num(super::round(h.dispersion, 3)));
                    j.details.insert("history_p_value".into(), super::num(h.p_value));
                    j.details.insert("windows_compared".into(), Value::from(h.periods));
                }
                let own = |e: &Errors| if e.errors == 0 { 0.0 } else { e.own as f64 / e.errors as f64 };
                j.details.insert("own_error_share".into(), super::num(super::round(own(c), 4)));
                j.current.insert("error_sessions".into(), Value::from(c.error_sessions));
                j.baseline.insert("error_sessions".into(), Value::from(b.error_sessions));
                Some(j)
            })
        })
        .collect()
}

#[async_trait]
impl Detector for ErrorRateRegression {
    fn kind(&self) -> FindingKind {
        KIND
    }

    fn judges_short_windows(&self) -> bool {
        true
    }

    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)> {
        vec![(KIND.to_string(), query(ctx, ""))]
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        let q = query(ctx, "");
        if let Some(folded) = sql.folded(&q)
            && let super::Folded::Errors(subjects) = &*folded
        {
            if let Some(h) = super::history_rolled_query(ctx, "") {
                sql.noted(&h, folded.history_rows());
            }
            return Ok(Tested { tests: tests(subjects, ctx), flows: Vec::new() });
        }
        let rows = sql.rows(&q).await?;
        let history = match super::history_rolled_query(ctx, "") {
            Some(q) => sql.rows(&q).await?,
            None => Rows::new(Vec::new()),
        };
        Ok(Tested { tests: tests(&subjects_of(&rows, &history, ctx), ctx), flows: Vec::new() })
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
        let q = per_side(
            &query(&ctx.lean_for(&t.segment).unrolled(), &filter),
            "sum(n) AS requests, sum(errors) AS errors, \
             round(CAST(sum(errors) AS DOUBLE) / sum(n), 5) AS error_rate, sum(error_sessions) AS error_sessions",
        );
        if ctx.rolled() {
            // The rollups do not count sessions: the spans of this one
            // subject do, from the requests kept by minute where the pass
            // keeps them.
            if let Some((b, c)) = sql.error_sessions(ctx, (&t.service, &t.operation, &t.segment)).await? {
                baseline.insert("error_sessions".into(), Value::from(b));
                current.insert("error_sessions".into(), Value::from(c));
                sql.noted(&q, 2);
                return Ok(q);
            }
            for r in sql.rows(&q).await?.iter() {
                let side = if r.str("side").as_deref() == Some("current") { &mut *current } else { &mut *baseline };
                side.insert("error_sessions".into(), Value::from(r.u64("error_sessions")));
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
        let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let each = |v: String, r: &Row<'_>| {
            let e = by.entry(v).or_default();
            e.0 += r.u64("errors");
            e.1 += r.u64("n");
        };
        let Some(ctx) = super::each_version_row(ctx, (&t.service, &t.operation), sql, query, each).await? else { return Ok(None) };
        let Some(new_c) = by.remove(new) else { return Ok(None) };
        let Some((prev, prev_c)) = by.into_iter().max_by_key(|(_, c)| c.1) else { return Ok(None) };
        Ok(judge_rate(&ctx.config, prev_c, new_c, ("errors", "requests", "error_rate")).map(|j| (prev, j)))
    }

    fn affected(&self, current: &Numbers, _baseline: &Numbers) -> Affected {
        Affected {
            requests: get(current, "errors").max(0.0) as u64,
            sessions: get(current, "error_sessions").max(0.0) as u64,
        }
    }

    fn severity(&self, effect: f64, _current: &Numbers, _baseline: &Numbers) -> Severity {
        grade(effect, [0.2, 0.05, 0.01])
    }

    fn rank(&self, _j: &Judgement) -> u8 {
        2
    }

    fn sentence(&self, f: &Facts<'_>) -> String {
        format!(
            "`{}` in {} fails {} of requests{}{} (baseline {}); {} failed requests, {} sessions hit the error.",
            f.operation,
            f.service,
            pct(get(f.current, "error_rate")),
            f.segment,
            crate::summary::since(f.onset),
            pct(get(f.baseline, "error_rate")),
            count(f.affected.requests),
            count(f.affected.sessions),
        )
    }

    fn short(&self, j: &Judgement) -> String {
        format!("error rate {} → {}", pct(get(&j.baseline, "error_rate")), pct(get(&j.current, "error_rate")))
    }

    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording {
        Wording {
            kind: "error-rate regression".into(),
            title: format!(
                "{{operation}} in {{service}} fails {} of requests{{segment}} (was {})",
                pct(get(current, "error_rate")),
                pct(get(baseline, "error_rate"))
            ),
            effect: format!("{:+.1} percentage points", effect * 100.0),
        }
    }
}
