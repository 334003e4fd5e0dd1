//! `retry`: within a session, the same operation called again shortly after it
//! failed, by the client on its own (`http.request.resend_count`) or by the
//! person. The share of sessions retrying against the baseline's, with the mean
//! attempts per request and how many retries were automatic.

use andon_model::format::pct;
use andon_model::{Affected, FindingKind, Severity, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{Metric, Subject, judge_rate, num, round, segment_tests, subjects};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::Rows;

#[derive(Debug)]
pub struct Retry;

pub const KIND: FindingKind = FindingKind::Retry;

pub const SQL: &str = include_str!("retry.sql");

#[derive(Debug, Clone, Copy, Default)]
pub struct Retries {
    pub sessions: u64,
    pub retrying_sessions: u64,
    pub retries: u64,
    pub auto_retries: u64,
    pub attempts: u64,
}

impl Metric for Retries {
    fn add(&mut self, o: &Self) {
        self.sessions += o.sessions;
        self.retrying_sessions += o.retrying_sessions;
        self.retries += o.retries;
        self.auto_retries += o.auto_retries;
        self.attempts += o.attempts;
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

fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Retries>> = subjects(
        rows,
        &ctx.segments,
        |r| Some((r.str("service")?, r.str("operation")?)),
        |r| Retries {
            sessions: r.u64("sessions"),
            retrying_sessions: r.u64("retrying_sessions"),
            retries: r.u64("retries"),
            auto_retries: r.u64("auto_retries"),
            attempts: r.u64("attempts"),
        },
    );
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

    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)> {
        vec![(KIND.to_string(), query(ctx, ""))]
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        Ok(Tested { tests: tests(&sql.rows(&query(ctx, "")).await?, ctx), flows: Vec::new() })
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
