//! `retry`: within a session, the same operation called again shortly after it
//! failed, by the client on its own (`http.request.resend_count`) or by the
//! person. The share of sessions retrying against the baseline's, with the mean
//! attempts per request and how many retries were automatic.

use andon_model::FindingKind;
use serde_json::Value;

use super::{Ctx, Metric, Subject, Test, judge_rate, num, round, segment_tests, subjects};
use crate::sql::Rows;

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

pub fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
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
            segment_tests(FindingKind::Retry, s, ctx, |b, c| {
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
