//! `silent_recovery`: an operation fails, the person sends it again within
//! seconds, it succeeds and the session goes on. Dashboards count the success;
//! the person saw the failure. The share of sessions recovering this way against
//! the baseline's, and which share of the sessions that hit the error recovered.

use andon_model::format::{count, pct};
use andon_model::{Affected, FindingKind, Severity, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{Metric, Subject, judge_rate, num, round, segment_tests, subjects};
use crate::AnalysisError;
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::Rows;

#[derive(Debug)]
pub struct SilentRecovery;

pub const KIND: FindingKind = FindingKind::SilentRecovery;

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

fn tests(rows: &Rows, ctx: &Ctx) -> Vec<Test> {
    let subjects: Vec<Subject<Recoveries>> = subjects(rows, &ctx.segments, |m: &mut Recoveries, r| {
        m.sessions += r.u64("sessions");
        m.error_sessions += r.u64("error_sessions");
        m.recovered += r.u64("recovered_sessions");
        m.auto_recovered += r.u64("auto_recovered_sessions");
    });
    subjects
        .iter()
        .flat_map(|s| {
            segment_tests(KIND, s, ctx, |b, c| {
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

#[async_trait]
impl Detector for SilentRecovery {
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
            "sum(sessions) AS sessions, sum(error_sessions) AS error_sessions, \
             sum(recovered_sessions) AS recovered_sessions, \
             round(CAST(sum(recovered_sessions) AS DOUBLE) / sum(sessions), 5) AS recovered_share",
        ))
    }

    fn affected(&self, current: &Numbers, _baseline: &Numbers) -> Affected {
        let n = get(current, "recovered_sessions").max(0.0) as u64;
        Affected { requests: n, sessions: n }
    }

    fn severity(&self, _effect: f64, current: &Numbers, baseline: &Numbers) -> Severity {
        grade(get(current, "recovered_share") - get(baseline, "recovered_share"), [0.5, 0.15, 0.03])
    }

    /// People recovering by hand from most of the failures are the account of
    /// them; otherwise errors and latency come first.
    fn rank(&self, j: &Judgement) -> u8 {
        if get(&j.details, "recovered_of_failed") >= 0.5 { 1 } else { 5 }
    }

    fn sentence(&self, f: &Facts<'_>) -> String {
        format!(
            "{} of {} calling `{}` in {} hit a failure that succeeded when sent again (baseline {}){}; {} of the sessions that hit it recovered this way, so success rates hide it; {} sessions affected.",
            pct(get(f.current, "recovered_share")),
            crate::summary::sessions(f.segment),
            f.operation,
            f.service,
            pct(get(f.baseline, "recovered_share")),
            crate::summary::since(f.onset),
            pct(get(f.current, "recovered_of_failed")),
            count(f.affected.sessions),
        )
    }

    fn short(&self, j: &Judgement) -> String {
        format!(
            "sessions recovering by resending {} → {}",
            pct(get(&j.baseline, "recovered_share")),
            pct(get(&j.current, "recovered_share"))
        )
    }

    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording {
        Wording {
            kind: "silently recovering errors".into(),
            title: format!(
                "{{operation}} in {{service}} fails, then succeeds when sent again{{segment}}: {} of sessions (was {})",
                pct(get(current, "recovered_share")),
                pct(get(baseline, "recovered_share"))
            ),
            effect: format!("{:+.1} percentage points", effect * 100.0),
        }
    }
}
