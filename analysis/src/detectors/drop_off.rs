//! `drop_off`: funnels of ordered steps per session. For each step, the share of
//! sessions that reached it and went no further, against the baseline's; the
//! step where abandonment rose, in the narrowest segment, and whether the
//! sessions that left hit an error there. Without configured flows, the most
//! common journey is discovered from the baseline's page requests.

use std::collections::{BTreeMap, HashMap};

use andon_model::format::{count, pct};
use andon_model::{Affected, FindingKind, Severity, Trouble, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{Metric, Subject, num, round, segment_tests};
use crate::AnalysisError;
use crate::config::{AnalysisConfig, Flow};
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::{self, Rows};

#[derive(Debug)]
pub struct DropOff;

pub const KIND: FindingKind = FindingKind::DropOff;

pub const SQL: &str = include_str!("drop_off.sql");
pub const JOURNEYS_SQL: &str = include_str!("journeys.sql");

/// A flow with the service each step is served by.
#[derive(Debug, Clone)]
pub struct ResolvedFlow {
    pub name: String,
    pub steps: Vec<(String, String)>,
}

pub fn query(ctx: &Ctx, flow: &ResolvedFlow, filter: &str) -> String {
    let n = flow.steps.len();
    let mut step_case = String::from("CASE");
    for (k, (_, op)) in flow.steps.iter().enumerate() {
        let l = sql::lit(op);
        step_case.push_str(&format!(" WHEN r.operation = {l} OR r.route = {l} OR r.span_name = {l} THEN {k}"));
    }
    step_case.push_str(" END");
    let mut step_aggregates = String::new();
    for k in 0..n {
        step_aggregates.push_str(&format!(
            ", min(CASE WHEN step = {k} THEN start_time END) AS first{k}, \
             max(CASE WHEN step = {k} THEN start_time END) AS last{k}, \
             max(CASE WHEN step = {k} THEN err ELSE 0 END) AS err{k}"
        ));
    }
    let reached = |k: usize| -> String {
        if k == 0 {
            return "1 = 1".to_owned();
        }
        (1..=k).map(|j| format!("last{j} >= first{}", j - 1)).collect::<Vec<_>>().join(" AND ")
    };
    let mut reach = String::new();
    let mut reach_sums = String::new();
    for k in 0..n {
        reach.push_str(&format!(", CASE WHEN {} THEN 1 ELSE 0 END AS r{k}", reached(k)));
        reach_sums.push_str(&format!(", sum(r{k}) AS reached{k}"));
        if k + 1 < n {
            reach_sums.push_str(&format!(
                ", sum(CASE WHEN r{k} = 1 AND r{} = 0 AND err{k} = 1 THEN 1 ELSE 0 END) AS left_after_error{k}",
                k + 1
            ));
        }
    }
    let segment_max: String = (0..ctx.segments.columns.len()).map(|i| format!(", max(seg{i}) AS seg{i}")).collect();
    let complete_before = ctx.end - chrono::Duration::seconds(ctx.config.session_timeout_secs as i64);
    let mut vars = ctx.vars(filter);
    vars.extend([
        ("step_case", step_case),
        ("step_aggregates", step_aggregates),
        ("reach", reach),
        ("reach_sums", reach_sums),
        ("segment_max", segment_max),
        ("complete_before", sql::ts(complete_before)),
    ]);
    sql::render(SQL, &vars)
}

pub fn journeys_query(ctx: &Ctx) -> String {
    let mut c = ctx.clone();
    c.end = ctx.baseline_end;
    c.split = ctx.baseline_end;
    sql::render(JOURNEYS_SQL, &c.vars(""))
}

/// Steps of configured flows matched to the services that serve them.
pub fn resolve(flows: &[Flow], served: &[(String, String)]) -> Vec<ResolvedFlow> {
    flows
        .iter()
        .filter_map(|f| {
            let steps: Option<Vec<(String, String)>> = f
                .steps
                .iter()
                .map(|step| {
                    served
                        .iter()
                        .find(|(_, op)| op == step || op.ends_with(&format!(" {step}")))
                        .map(|(s, _)| (s.clone(), step.clone()))
                })
                .collect();
            steps.map(|steps| ResolvedFlow { name: f.name.clone(), steps })
        })
        .collect()
}

/// The most common journey: starting from the page most sessions request, the
/// pages that come after it in at least 85% of the sessions that request both,
/// in the order sessions request them.
pub fn discover(rows: &Rows) -> Option<ResolvedFlow> {
    let mut sessions: HashMap<String, Vec<(i64, usize)>> = HashMap::new();
    let mut ops: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for r in rows.iter() {
        let (Some(session), Some(service), Some(op), Some(t)) =
            (r.str("session_id"), r.str("service"), r.str("operation"), r.i64("first_time"))
        else {
            continue;
        };
        let key = (service, op);
        let i = *index.entry(key.clone()).or_insert_with(|| {
            ops.push(key);
            ops.len() - 1
        });
        sessions.entry(session).or_default().push((t, i));
    }
    let total = sessions.len();
    if total < 50 {
        return None;
    }
    let n = ops.len();
    let mut support = vec![0usize; n];
    let mut rank_sum = vec![0f64; n];
    let mut before = vec![vec![0u32; n]; n];
    for seq in sessions.values_mut() {
        seq.sort_unstable();
        for (pos, (_, i)) in seq.iter().enumerate() {
            support[*i] += 1;
            rank_sum[*i] += pos as f64 / seq.len().max(1) as f64;
            for (_, j) in &seq[pos + 1..] {
                before[*i][*j] += 1;
            }
        }
    }
    let min_support = (total / 50).max(10);
    let mut order: Vec<usize> = (0..n).filter(|i| support[*i] >= min_support).collect();
    order.sort_by(|a, b| (rank_sum[*a] / support[*a] as f64).total_cmp(&(rank_sum[*b] / support[*b] as f64)));
    let start = *order.iter().max_by_key(|i| support[**i])?;
    let mut chain = vec![start];
    let start_pos = order.iter().position(|i| *i == start)?;
    for &op in &order[start_pos + 1..] {
        let last = *chain.last()?;
        let both = before[last][op] + before[op][last];
        if both as usize >= min_support && f64::from(before[last][op]) >= 0.85 * f64::from(both) {
            chain.push(op);
        }
    }
    (chain.len() >= 3).then(|| ResolvedFlow {
        name: format!("discovered: {}", chain.iter().map(|i| ops[*i].1.as_str()).collect::<Vec<_>>().join(" → ")),
        steps: chain.into_iter().map(|i| ops[i].clone()).collect(),
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Step {
    pub reached: u64,
    pub next: u64,
    pub left_after_error: u64,
}

impl Metric for Step {
    fn add(&mut self, o: &Self) {
        self.reached += o.reached;
        self.next += o.next;
        self.left_after_error += o.left_after_error;
    }

    fn samples(&self) -> u64 {
        self.reached
    }
}

fn judge(ctx: &Ctx, b: &Step, c: &Step, next_step: &str) -> Option<Judgement> {
    let (lb, lc) = (b.reached - b.next.min(b.reached), c.reached - c.next.min(c.reached));
    let t = andon_model::statistics::proportion_greater(lb, b.reached, lc, c.reached)?;
    let (conv_b, conv_c) = (1.0 - t.baseline, 1.0 - t.current);
    let relative = if conv_b > 0.0 { (conv_b - conv_c) / conv_b } else { 0.0 };
    let material = relative >= ctx.config.drop_min_relative && t.current - t.baseline >= 0.02 && lc >= 5;
    let side = |s: &Step, conv: f64| {
        let left = s.reached - s.next.min(s.reached);
        BTreeMap::from([
            ("sessions_reached".to_owned(), Value::from(s.reached)),
            ("sessions_continued".to_owned(), Value::from(s.next)),
            ("sessions_left".to_owned(), Value::from(left)),
            ("conversion".to_owned(), num(round(conv, 5))),
            ("left_after_error".to_owned(), Value::from(s.left_after_error)),
        ])
    };
    let error_share = if lc == 0 { 0.0 } else { c.left_after_error as f64 / lc as f64 };
    Some(Judgement {
        p_value: t.p_value,
        effect: round(relative, 5),
        ci: None,
        test: t.test,
        material,
        baseline: side(b, conv_b),
        current: side(c, conv_c),
        details: BTreeMap::from([
            ("next_step".to_owned(), Value::from(next_step)),
            ("left_after_error_share".to_owned(), num(round(error_share, 4))),
        ]),
        current_samples: c.reached,
    })
}

fn tests(rows: &Rows, ctx: &Ctx, flow: &ResolvedFlow) -> Vec<Test> {
    let mut out = Vec::new();
    for k in 0..flow.steps.len().saturating_sub(1) {
        let (service, op) = &flow.steps[k];
        let mut cells = BTreeMap::<(bool, Vec<Option<String>>), Step>::new();
        for r in rows.iter() {
            let cur = r.i64("cur").unwrap_or(0) == 1;
            let segs: Vec<Option<String>> =
                (0..ctx.segments.columns.len()).map(|i| r.str(&format!("seg{i}"))).collect();
            cells.entry((cur, segs)).or_default().add(&Step {
                reached: r.u64(&format!("reached{k}")),
                next: r.u64(&format!("reached{}", k + 1)),
                left_after_error: r.u64(&format!("left_after_error{k}")),
            });
        }
        let subject = Subject {
            service: service.clone(),
            operation: op.clone(),
            cells: cells.into_iter().map(|((c, s), m)| (c, s, m)).collect(),
        };
        let next = &flow.steps[k + 1].1;
        let steps: Value = flow.steps.iter().map(|(s, o)| Value::from(vec![s.clone(), o.clone()])).collect();
        for mut t in segment_tests(KIND, &subject, ctx, |b, c| judge(ctx, b, c, next)) {
            for j in std::iter::once(&mut t.judgement).chain(t.complement.as_mut()) {
                j.details.insert("flow".into(), Value::from(flow.name.clone()));
                j.details.insert("flow_steps".into(), steps.clone());
            }
            out.push(t);
        }
    }
    out
}

/// The funnel a drop-off test was judged on, as its details keep it.
fn flow_of(j: &Judgement) -> Option<ResolvedFlow> {
    let name = j.details.get("flow")?.as_str()?.to_owned();
    let steps = j
        .details
        .get("flow_steps")?
        .as_array()?
        .iter()
        .map(|s| Some((s.get(0)?.as_str()?.to_owned(), s.get(1)?.as_str()?.to_owned())))
        .collect::<Option<Vec<_>>>()?;
    Some(ResolvedFlow { name, steps })
}

impl DropOff {
    /// The configured flows with the services serving their steps, else the
    /// journey discovered from the baseline.
    async fn flows(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Vec<ResolvedFlow>, AnalysisError> {
        if ctx.config.flows.is_empty() {
            return Ok(discover(&sql.rows(&journeys_query(ctx)).await?).into_iter().collect());
        }
        let lean = ctx.lean_for(&BTreeMap::new());
        let rows = sql.rows(&sql::render(include_str!("served.sql"), &lean.vars(""))).await?;
        let served: Vec<(String, String)> =
            rows.iter().filter_map(|r| Some((r.str("service")?, r.str("operation")?))).collect();
        Ok(resolve(&ctx.config.flows, &served))
    }
}

#[async_trait]
impl Detector for DropOff {
    fn kind(&self) -> FindingKind {
        KIND
    }

    /// One query per configured flow (steps matched to any service).
    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)> {
        let served: Vec<(String, String)> =
            ctx.config.flows.iter().flat_map(|f| f.steps.iter().map(|s| ("?".to_owned(), s.clone()))).collect();
        resolve(&ctx.config.flows, &served)
            .into_iter()
            .map(|flow| (format!("drop_off {}", flow.name), query(ctx, &flow, "")))
            .collect()
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        let mut out = Tested::default();
        for flow in self.flows(ctx, sql).await? {
            out.tests.extend(tests(&sql.rows(&query(ctx, &flow, "")).await?, ctx, &flow));
            out.flows.push(flow.name);
        }
        Ok(out)
    }

    /// Sessions that leave after an error there follow the failures; those that
    /// leave without one leave the RCA to find what changed.
    fn trouble(&self, j: &Judgement) -> Trouble {
        if get(&j.details, "left_after_error_share") >= 0.5 { Trouble::Failures } else { Trouble::Unclear }
    }

    async fn evidence(
        &self,
        ctx: &Ctx,
        t: &Test,
        _sql: &dyn Sql,
        _baseline: &mut Numbers,
        _current: &mut Numbers,
    ) -> Result<String, AnalysisError> {
        let flow = flow_of(&t.judgement).ok_or_else(|| AnalysisError::Config("a drop-off without its flow".into()))?;
        let k = flow.steps.iter().position(|(_, op)| *op == t.operation).unwrap_or(0);
        Ok(per_side(
            &query(ctx, &flow, &ctx.segments.condition(&t.segment)),
            &format!(
                "sum(reached{k}) AS sessions_reached, sum(reached{n}) AS sessions_continued, \
                 round(CAST(sum(reached{n}) AS DOUBLE) / sum(reached{k}), 5) AS conversion, \
                 sum(left_after_error{k}) AS left_after_error",
                n = k + 1
            ),
        ))
    }

    /// Sessions lost beyond what the baseline's conversion would have lost.
    fn affected(&self, current: &Numbers, baseline: &Numbers) -> Affected {
        let reached = get(current, "sessions_reached");
        let expected_left = reached * (1.0 - get(baseline, "conversion"));
        let excess = (get(current, "sessions_left") - expected_left).max(0.0).round() as u64;
        Affected { requests: get(current, "left_after_error").max(0.0) as u64, sessions: excess }
    }

    fn severity(&self, effect: f64, _current: &Numbers, _baseline: &Numbers) -> Severity {
        grade(effect, [0.3, 0.15, 0.08])
    }

    fn rank(&self, _j: &Judgement) -> u8 {
        6
    }

    fn headline(&self, j: &Judgement, cfg: &AnalysisConfig) -> bool {
        j.effect >= cfg.drop_headline_relative
    }

    fn sentence(&self, f: &Facts<'_>) -> String {
        let j = f.judgement;
        let next = j.details.get("next_step").and_then(Value::as_str).unwrap_or("the next step");
        let err = get(&j.details, "left_after_error_share");
        let cause = f.cause;
        let cause_text = if (cause.0.as_str(), cause.1.as_str()) != (f.service, f.operation) && err > 0.0 {
            format!("; {} of those leaving hit an error there, which starts in {} `{}`", pct(err), cause.0, cause.1)
        } else if err > 0.0 {
            format!("; {} of those leaving hit an error there", pct(err))
        } else {
            String::new()
        };
        format!(
            "Conversion from `{}` to `{next}` drops {}{} ({} → {}){}; {} more sessions left than the baseline rate{cause_text}.",
            f.operation,
            pct(j.effect),
            f.segment,
            pct(get(f.baseline, "conversion")),
            pct(get(f.current, "conversion")),
            crate::summary::since(f.onset),
            count(f.affected.sessions),
        )
    }

    fn short(&self, j: &Judgement) -> String {
        format!("step conversion down {}", pct(j.effect))
    }

    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording {
        Wording {
            kind: "funnel drop-off".into(),
            title: format!(
                "Conversion after {{operation}} drops {}{{segment}} ({} → {})",
                pct(effect),
                pct(get(baseline, "conversion")),
                pct(get(current, "conversion"))
            ),
            effect: format!("conversion down {}", pct(effect)),
        }
    }
}
