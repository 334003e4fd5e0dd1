//! `retry`: within a session, the same operation called again shortly after it
//! failed, by the client on its own (`http.request.resend_count`) or by the
//! person. The share of sessions retrying against the baseline's, with the mean
//! attempts per request and how many retries were automatic.

use andon_model::format::pct;
use andon_model::{Affected, FindingKind, Severity, Wording};
use async_trait::async_trait;
use serde_json::Value;

use std::collections::BTreeMap;

use super::{
    Metric, SHORT_MIN_PERIODS, Subject, against_history, judge_rate, merge_subjects, num, round, segment_tests,
    subjects,
};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::Rows;

#[derive(Debug)]
pub struct Retry;

pub const KIND: FindingKind = FindingKind::Retry;

pub const SQL: &str = include_str!("retry.sql");

#[derive(Debug, Clone, Default)]
pub struct Retries {
    pub sessions: u64,
    pub retrying_sessions: u64,
    pub retries: u64,
    pub auto_retries: u64,
    pub attempts: u64,
    /// Before the baseline's end, per period of the window's length:
    /// (sessions, retrying sessions). Only a short window reads them.
    pub periods: BTreeMap<i64, (u64, u64)>,
}

impl Metric for Retries {
    fn add(&mut self, o: &Self) {
        self.sessions += o.sessions;
        self.retrying_sessions += o.retrying_sessions;
        self.retries += o.retries;
        self.auto_retries += o.auto_retries;
        self.attempts += o.attempts;
        for (p, (n, x)) in &o.periods {
            let e = self.periods.entry(*p).or_default();
            e.0 += n;
            e.1 += x;
        }
    }

    fn samples(&self) -> u64 {
        self.sessions
    }
}

impl Retries {
    /// Attempts per request: every attempt over the requests that were not retries.
    pub fn mean_attempts(&self) -> f64 {
        let first = self.attempts.saturating_sub(self.retries);
        if first == 0 { 0.0 } else { self.attempts as f64 / first as f64 }
    }

    /// Attempts per request among requests that were retried at least once.
    pub fn attempts_when_retried(&self) -> f64 {
        if self.retrying_sessions == 0 { 0.0 } else { 1.0 + self.retries as f64 / self.retrying_sessions as f64 }
    }

    pub fn auto_share(&self) -> f64 {
        if self.retries == 0 { 0.0 } else { self.auto_retries as f64 / self.retries as f64 }
    }
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    super::session_calls_query(SQL, ctx, filter)
}

/// The retry history a short window is judged against: a minute of a
/// service's life is compared with at least half an hour of minutes like it
/// (how much the share of sessions retrying moves on its own from one minute
/// to the next), never with the baseline alone.
fn tests(rows: &Rows, history: &Rows, ctx: &Ctx) -> Vec<Test> {
    let mut subjects: Vec<Subject<Retries>> = subjects(rows, &ctx.segments, |m: &mut Retries, r| {
        m.sessions += r.u64("sessions");
        m.retrying_sessions += r.u64("retrying_sessions");
        m.retries += r.u64("retries");
        m.auto_retries += r.u64("auto_retries");
        m.attempts += r.u64("attempts");
    });
    // The history's periods join their subjects, on the baseline's side.
    let periods = super::subjects(history, &ctx.segments, |m: &mut Retries, r| {
        if let Some(p) = r.i64("period") {
            let e = m.periods.entry(p).or_default();
            e.0 += r.u64("sessions");
            e.1 += r.u64("retrying_sessions");
        }
    });
    merge_subjects(&mut subjects, periods);
    subjects
        .iter()
        .flat_map(|s| {
            segment_tests(KIND, s, ctx, |b, c| {
                let mut j = judge_rate(
                    &ctx.config,
                    (b.retrying_sessions, b.sessions),
                    (c.retrying_sessions, c.sessions),
                    ("retrying_sessions", "sessions", "retrying_share"),
                )?;
                if ctx.short {
                    let min = ctx.config.segment_min_samples;
                    let periods = b.periods.values().map(|(n, x)| (*n, *x));
                    match against_history(periods, (c.sessions, c.retrying_sessions), min) {
                        Some(h) if h.periods >= SHORT_MIN_PERIODS => {
                            let cur = c.retrying_sessions as f64 / c.sessions.max(1) as f64;
                            j.material &= cur - h.rate >= ctx.config.rate_min_delta
                                && cur >= ctx.config.rate_min_ratio * h.rate;
                            j.p_value = j.p_value.max(h.p_value);
                            j.details.insert("history_retrying_share".into(), num(round(h.rate, 5)));
                            j.details.insert("history_dispersion".into(), num(round(h.dispersion, 3)));
                            j.details.insert("history_p_value".into(), num(h.p_value));
                            j.details.insert("windows_compared".into(), Value::from(h.periods));
                        }
                        _ => j.material = false,
                    }
                }
                for (side, m) in [(&mut j.baseline, b), (&mut j.current, c)] {
                    side.insert("mean_attempts".into(), num(round(m.mean_attempts(), 4)));
                    side.insert("attempts_when_retried".into(), num(round(m.attempts_when_retried(), 4)));
                    side.insert("retries".into(), Value::from(m.retries));
                }
                j.details.insert("automatic_share".into(), num(round(c.auto_share(), 4)));
                Some(j)
            })
        })
        .collect()
}

#[async_trait]
impl Detector for Retry {
    fn kind(&self) -> FindingKind {
        KIND
    }

    /// A short window is judged against the minutes before the baseline's
    /// end, read from `sessions`; a pass over spans has no such history and
    /// reports no retries from its short window.
    fn judges_short_windows(&self) -> bool {
        true
    }

    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)> {
        vec![(KIND.to_string(), query(ctx, ""))]
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        let rows = sql.rows(&query(ctx, "")).await?;
        let history = match super::retry_history_query(ctx, "").filter(|_| ctx.short) {
            Some(q) => sql.rows(&q).await?,
            None => Rows::new(Vec::new()),
        };
        Ok(Tested { tests: tests(&rows, &history, ctx), flows: Vec::new() })
    }

    async fn evidence(
        &self,
        ctx: &Ctx,
        t: &Test,
        _sql: &dyn Sql,
        _baseline: &mut Numbers,
        _current: &mut Numbers,
    ) -> Result<String, AnalysisError> {
        let filter = ctx.subject_filter(&t.service, &t.operation, &t.segment);
        Ok(per_side(
            &query(ctx, &filter),
            "sum(sessions) AS sessions, sum(retrying_sessions) AS retrying_sessions, \
             round(CAST(sum(retrying_sessions) AS DOUBLE) / sum(sessions), 5) AS retrying_share, \
             sum(retries) AS retries, sum(auto_retries) AS auto_retries, sum(attempts) AS attempts",
        ))
    }

    fn affected(&self, current: &Numbers, _baseline: &Numbers) -> Affected {
        Affected {
            requests: get(current, "retries").max(0.0) as u64,
            sessions: get(current, "retrying_sessions").max(0.0) as u64,
        }
    }

    fn severity(&self, _effect: f64, current: &Numbers, baseline: &Numbers) -> Severity {
        grade(get(current, "retrying_share") - get(baseline, "retrying_share"), [0.5, 0.15, 0.03])
    }

    /// Clients retrying on their own are the most specific account of a
    /// failure; people retrying by hand follow latency and errors.
    fn rank(&self, j: &Judgement) -> u8 {
        if get(&j.details, "automatic_share") >= 0.5 { 0 } else { 4 }
    }

    fn sentence(&self, f: &Facts<'_>) -> String {
        format!(
            "{} of {} calling `{}` ({}) retried it (baseline {}){}, {:.1} attempts on average before success (baseline {:.1}); {} of retries automatic.",
            pct(get(f.current, "retrying_share")),
            crate::summary::sessions(f.segment),
            f.operation,
            f.service,
            pct(get(f.baseline, "retrying_share")),
            crate::summary::since(f.onset),
            get(f.current, "attempts_when_retried"),
            get(f.baseline, "attempts_when_retried").max(1.0),
            pct(get(&f.judgement.details, "automatic_share")),
        )
    }

    fn short(&self, j: &Judgement) -> String {
        format!(
            "sessions retrying {} → {}",
            pct(get(&j.baseline, "retrying_share")),
            pct(get(&j.current, "retrying_share"))
        )
    }

    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording {
        Wording {
            kind: "retries".into(),
            title: format!(
                "Clients retry {{operation}} in {{service}}{{segment}}: {} of sessions (was {})",
                pct(get(current, "retrying_share")),
                pct(get(baseline, "retrying_share"))
            ),
            effect: format!("{:+.1} percentage points", effect * 100.0),
        }
    }
}
