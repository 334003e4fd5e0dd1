//! `error_rate_regression`: per (service, operation), did the share of failed
//! requests rise? The two-proportion z-test, or Fisher's exact test when counts
//! are small, with floors on the ratio and the absolute rise.

use andon_model::FindingKind;
use serde_json::Value;

use super::{Ctx, Metric, Subject, Test, judge_rate, segment_tests, subjects};
use crate::sql::{self, Rows};

pub const SQL: &str = include_str!("error_rate_regression.sql");

#[derive(Debug, Clone, Copy, Default)]
pub struct Errors {
    pub requests: u64,
    pub errors: u64,
    /// Errors that started in this operation rather than in a callee.
    pub own: u64,
    pub error_sessions: u64,
}

impl Metric for Errors {
    fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.own += o.own;
        self.error_sessions += o.error_sessions;
    }

    fn samples(&self) -> u64 {
        self.requests
    }
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    sql::render(SQL, &ctx.vars(filter))
}

pub fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Errors>> = subjects(
        rows,
        &ctx.segments,
        |r| Some((r.str("service")?, r.str("operation")?)),
        |r| Errors {
            requests: r.u64("n"),
            errors: r.u64("errors"),
            own: r.u64("own_errors"),
            error_sessions: r.u64("error_sessions"),
        },
    );
    subjects
        .iter()
        .flat_map(|s| {
            segment_tests(FindingKind::ErrorRateRegression, s, ctx, |b, c| {
                let mut j = judge_rate(
                    &ctx.config,
                    (b.errors, b.requests),
                    (c.errors, c.requests),
                    ("errors", "requests", "error_rate"),
                )?;
                let own = |e: &Errors| if e.errors == 0 { 0.0 } else { e.own as f64 / e.errors as f64 };
                j.details.insert("own_error_share".into(), super::num(super::round(own(c), 4)));
                j.current.insert("error_sessions".into(), Value::from(c.error_sessions));
                j.baseline.insert("error_sessions".into(), Value::from(b.error_sessions));
                Some(j)
            })
        })
        .collect()
}
