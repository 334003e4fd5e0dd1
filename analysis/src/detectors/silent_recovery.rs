//! `silent_recovery`: an operation fails, the person sends it again within
//! seconds, it succeeds and the session goes on. Dashboards count the success;
//! the person saw the failure. The share of sessions recovering this way against
//! the baseline's, and which share of the sessions that hit the error recovered.

use andon_model::FindingKind;
use serde_json::Value;

use super::{Ctx, Metric, Subject, Test, judge_rate, num, round, segment_tests, subjects};
use crate::sql::Rows;

pub const SQL: &str = include_str!("silent_recovery.sql");

#[derive(Debug, Clone, Copy, Default)]
pub struct Recoveries {
    pub sessions: u64,
    pub error_sessions: u64,
    pub recovered: u64,
    pub auto_recovered: u64,
}

impl Metric for Recoveries {
    fn add(&mut self, o: &Self) {
        self.sessions += o.sessions;
        self.error_sessions += o.error_sessions;
        self.recovered += o.recovered;
        self.auto_recovered += o.auto_recovered;
    }

    fn samples(&self) -> u64 {
        self.sessions
    }
}

impl Recoveries {
    /// Of the sessions that hit the error, the share that recovered by hand.
    pub fn recovered_share(&self) -> f64 {
        if self.error_sessions == 0 { 0.0 } else { self.recovered as f64 / self.error_sessions as f64 }
    }
}

pub fn query(ctx: &Ctx, filter: &str) -> String {
    super::session_calls_query(SQL, ctx, filter)
}

pub fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Recoveries>> = subjects(
        rows,
        &ctx.segments,
        |r| Some((r.str("service")?, r.str("operation")?)),
        |r| Recoveries {
            sessions: r.u64("sessions"),
            error_sessions: r.u64("error_sessions"),
            recovered: r.u64("recovered_sessions"),
            auto_recovered: r.u64("auto_recovered_sessions"),
        },
    );
    subjects
        .iter()
        .flat_map(|s| {
            segment_tests(FindingKind::SilentRecovery, s, ctx, |b, c| {
                let mut j = judge_rate(
                    &ctx.config,
                    (b.recovered, b.sessions),
                    (c.recovered, c.sessions),
                    ("recovered_sessions", "sessions", "recovered_share"),
                )?;
                for (side, m) in [(&mut j.baseline, b), (&mut j.current, c)] {
                    side.insert("error_sessions".into(), Value::from(m.error_sessions));
                    side.insert("recovered_of_failed".into(), num(round(m.recovered_share(), 4)));
                }
                j.details.insert("recovered_of_failed".into(), num(round(c.recovered_share(), 4)));
                Some(j)
            })
        })
        .collect()
}
