//! One detection pass: run every detector's SQL, test every subject and segment,
//! control false discoveries across the pass, tell causes from symptoms, and
//! turn what is left into findings with their evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use andon_model::{
    Affected, ChangeRef, Evidence, Finding, FindingKind, FindingState, LinkedFinding, ServiceOperation, Severity,
    Tenant, TimeWindow,
};
use andon_store::QueryEngine;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tracing::debug;

use crate::AnalysisError;
use crate::config::AnalysisConfig;
use crate::detectors::{
    self, Candidate, Ctx, Test, drop_off, error_rate_regression, latency_regression, retry, silent_recovery,
};
use crate::sql::{self, Rows, Segments};
use crate::stats;
use crate::summary;
use crate::traces::{self, Sample};

/// The windows of a pass: baseline `[baseline_start, baseline_end)`, current
/// `[split, end)`, with `baseline_end <= split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub baseline_start: DateTime<Utc>,
    pub baseline_end: DateTime<Utc>,
    pub split: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Windows {
    /// The current window `[from, to)` with `baseline_secs` of baseline just before it.
    pub fn before(from: DateTime<Utc>, to: DateTime<Utc>, baseline_secs: u64) -> Self {
        Self {
            baseline_start: from - chrono::Duration::seconds(baseline_secs as i64),
            baseline_end: from,
            split: from,
            end: to,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PassReport {
    pub findings: Vec<Finding>,
    /// Statistical tests made (and corrected for) in the pass.
    pub tests: usize,
    pub flows: Vec<String>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct Analyzer {
    engine: QueryEngine,
    config: AnalysisConfig,
    segments: Segments,
}

/// A candidate with what its traces say about it.
#[derive(Debug, Clone)]
struct Examined {
    test: Test,
    cause: (String, String),
    why: String,
    exemplars: Vec<String>,
}

impl Examined {
    fn site(&self) -> (String, String) {
        (self.test.service.clone(), self.test.operation.clone())
    }

    fn detail(&self, key: &str) -> f64 {
        self.test.judgement.details.get(key).and_then(Value::as_f64).unwrap_or(0.0)
    }
}

impl Analyzer {
    pub fn new(engine: QueryEngine, config: AnalysisConfig) -> Result<Self, AnalysisError> {
        config.validate().map_err(AnalysisError::Config)?;
        let segments = Segments::new(&config.segments).map_err(AnalysisError::Config)?;
        Ok(Self { engine, config, segments })
    }

    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    /// The aggregation queries a pass starts with, as run: every detector's SQL
    /// over the windows (the drop-off funnel once per configured flow). For
    /// comparing engines on the same statements.
    pub fn detector_queries(&self, w: Windows) -> Vec<(String, String)> {
        let ctx = self.ctx(w);
        let mut out = vec![
            ("latency_regression".to_owned(), latency_regression::query(&ctx, "")),
            ("error_rate_regression".to_owned(), error_rate_regression::query(&ctx, "")),
            ("retry".to_owned(), retry::query(&ctx, "")),
            ("silent_recovery".to_owned(), silent_recovery::query(&ctx, "")),
        ];
        let served: Vec<(String, String)> =
            self.config.flows.iter().flat_map(|f| f.steps.iter().map(|s| ("?".to_owned(), s.clone()))).collect();
        for flow in drop_off::resolve(&self.config.flows, &served) {
            out.push((format!("drop_off {}", flow.name), drop_off::query(&ctx, &flow, "")));
        }
        out
    }

    async fn rows(&self, tenant: &Tenant, sql: &str) -> Result<Rows, AnalysisError> {
        let out = self
            .engine
            .collect(Some(tenant.clone()), sql)
            .await
            .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: sql.to_owned() })?;
        Ok(Rows::new(out.batches))
    }

    fn ctx(&self, w: Windows) -> Ctx {
        Ctx {
            baseline_start: w.baseline_start,
            baseline_end: w.baseline_end,
            split: w.split,
            end: w.end,
            segments: self.segments.clone(),
            config: self.config.clone(),
            lean: false,
        }
    }

    /// Runs every detector over `w` and returns the findings, causes first with
    /// their symptoms linked under them.
    pub async fn pass(&self, tenant: &Tenant, w: Windows) -> Result<PassReport, AnalysisError> {
        let started = Instant::now();
        if w.baseline_end <= w.baseline_start || w.end <= w.split || w.split < w.baseline_end {
            return Err(AnalysisError::Config(
                "windows must be ordered: baseline start < baseline end <= current start < current end".into(),
            ));
        }
        let ctx = self.ctx(w);
        let latency_rows = self.rows(tenant, &latency_regression::query(&ctx, "")).await?;
        let mut tests = latency_regression::tests(&latency_rows, &ctx);
        let served: BTreeSet<(String, String)> =
            latency_rows.iter().filter_map(|r| Some((r.str("service")?, r.str("operation")?))).collect();
        let served: Vec<(String, String)> = served.into_iter().collect();
        drop(latency_rows);
        tests.extend(error_rate_regression::tests(
            &self.rows(tenant, &error_rate_regression::query(&ctx, "")).await?,
            &ctx,
        ));
        tests.extend(retry::tests(&self.rows(tenant, &retry::query(&ctx, "")).await?, &ctx));
        tests.extend(silent_recovery::tests(&self.rows(tenant, &silent_recovery::query(&ctx, "")).await?, &ctx));

        let flows = if self.config.flows.is_empty() {
            let rows = self.rows(tenant, &drop_off::journeys_query(&ctx)).await?;
            drop_off::discover(&rows).into_iter().collect()
        } else {
            drop_off::resolve(&self.config.flows, &served)
        };
        let mut flow_queries = BTreeMap::new();
        for flow in &flows {
            let q = drop_off::query(&ctx, flow, "");
            tests.extend(drop_off::tests(&self.rows(tenant, &q).await?, &ctx, flow));
            flow_queries.insert(flow.name.clone(), flow.clone());
        }

        let q = stats::benjamini_hochberg(&tests.iter().map(|t| t.judgement.p_value).collect::<Vec<_>>());
        for (t, q) in tests.iter_mut().zip(q) {
            t.q_value = q;
        }
        let n_tests = tests.len();
        let candidates = detectors::choose_segments(tests, self.config.fdr);
        debug!(tests = n_tests, candidates = candidates.len(), "detection tests done");

        let mut examined = Vec::new();
        for c in candidates {
            examined.push(self.examine(tenant, &ctx, c).await?);
        }
        // Which versions first served when: read only when there is something to attribute.
        let versions = if examined.is_empty() {
            Rows::new(Vec::new())
        } else {
            self.rows(tenant, &sql::render(include_str!("detectors/versions.sql"), &ctx.vars(""))).await?
        };
        let mut findings = Vec::new();
        for cluster in clusters(&examined) {
            let primary = self.primary(&examined, &cluster);
            let linked: Vec<&Examined> = cluster.iter().filter(|i| **i != primary).map(|i| &examined[*i]).collect();
            findings.push(self.finding(tenant, &ctx, &examined[primary], &linked, &versions, &flow_queries).await?);
        }
        findings.sort_by(|a, b| b.impact.total_cmp(&a.impact).then(a.fingerprint.cmp(&b.fingerprint)));
        Ok(PassReport {
            findings,
            tests: n_tests,
            flows: flows.iter().map(|f| f.name.clone()).collect(),
            elapsed: started.elapsed(),
        })
    }

    /// Samples the candidate's traces: where its extra time or its failures start.
    async fn examine(&self, tenant: &Tenant, ctx: &Ctx, c: Candidate) -> Result<Examined, AnalysisError> {
        let t = &c.test;
        let site = (t.service.clone(), t.operation.clone());
        let pick = |from: DateTime<Utc>, to: DateTime<Utc>, errors: bool, limit: usize| -> (String, String) {
            let err = if errors { " AND err = 1" } else { "" };
            let picks = format!(
                "SELECT trace_id, span_id FROM requests WHERE service = {} AND operation = {}{} \
                 AND start_time >= {} AND start_time < {}{err} LIMIT {limit}",
                sql::lit(&t.service),
                sql::lit(&t.operation),
                ctx.segments.condition(&t.segment),
                sql::ts(from),
                sql::ts(to),
            );
            let lean = ctx.lean_for(&t.segment);
            (format!("{},\n", sql::render(sql::SHARED_CTES, &lean.shared_vars())), picks)
        };
        let range = (sql::ts(ctx.baseline_start), sql::ts(ctx.end + chrono::Duration::minutes(5)));
        let sample = |ctes: &str, picks: &str| traces::query(ctes, picks, (&range.0, &range.1));
        if t.kind == FindingKind::LatencyRegression {
            let (ctes, picks) = pick(ctx.baseline_start, ctx.baseline_end, false, 100);
            let base = Sample::from_rows(&self.rows(tenant, &sample(&ctes, &picks)).await?);
            let (ctes, picks) = pick(ctx.split, ctx.end, false, 100);
            let cur = Sample::from_rows(&self.rows(tenant, &sample(&ctes, &picks)).await?);
            let (cause, why) = match traces::slowest_growth(&base, &cur) {
                Some((op, ms)) if op != site && ms > 0.0 => {
                    let why = format!(
                        "{} is slower because {} `{}` takes {:.1} ms more of its own time per request",
                        t.operation, op.0, op.1, ms
                    );
                    (op, why)
                }
                Some((_, ms)) => (site.clone(), format!("its own time grew {ms:.1} ms per request")),
                None => (site.clone(), "no traces to compare".to_owned()),
            };
            let exemplars = cur.slowest_traces().into_iter().take(self.config.exemplars).collect();
            return Ok(Examined { test: c.test, cause, why, exemplars });
        }
        let (ctes, picks) = pick(ctx.split, ctx.end, true, 100);
        let failing = Sample::from_rows(&self.rows(tenant, &sample(&ctes, &picks)).await?);
        let origins = failing.error_origins();
        let (cause, why) = match origins.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) {
            Some((op, n)) if *op != site => (
                op.clone(),
                format!("{n} of {} sampled failing traces fail first in {} `{}`", failing.len(), op.0, op.1),
            ),
            Some((_, n)) => (site.clone(), format!("{n} of {} sampled failing traces fail here first", failing.len())),
            None => (site.clone(), "no failing traces in the sample".to_owned()),
        };
        let mut exemplars = failing.traces();
        if exemplars.is_empty() {
            let (ctes, picks) = pick(ctx.split, ctx.end, false, self.config.exemplars);
            exemplars = Sample::from_rows(&self.rows(tenant, &sample(&ctes, &picks)).await?).traces();
        }
        exemplars.truncate(self.config.exemplars);
        Ok(Examined { test: c.test, cause, why, exemplars })
    }

    /// The finding a cluster is reported as: a drop-off large enough to be the
    /// headline; else, at the operation where the trouble starts, the most
    /// specific account of it (clients retrying on their own, people recovering
    /// by hand, then errors, then latency); else the strongest.
    fn primary(&self, ex: &[Examined], cluster: &[usize]) -> usize {
        let headline = cluster
            .iter()
            .filter(|i| {
                ex[**i].test.kind == FindingKind::DropOff
                    && ex[**i].test.judgement.effect >= self.config.drop_headline_relative
            })
            .max_by(|a, b| ex[**a].test.judgement.effect.total_cmp(&ex[**b].test.judgement.effect));
        if let Some(i) = headline {
            return *i;
        }
        let cause = cluster_cause(ex, cluster);
        let rank = |e: &Examined| -> u8 {
            match e.test.kind {
                FindingKind::Retry if e.detail("automatic_share") >= 0.5 => 0,
                FindingKind::SilentRecovery if e.detail("recovered_of_failed") >= 0.5 => 1,
                FindingKind::ErrorRateRegression => 2,
                FindingKind::LatencyRegression => 3,
                FindingKind::Retry => 4,
                FindingKind::SilentRecovery => 5,
                FindingKind::DropOff => 6,
            }
        };
        cluster
            .iter()
            .filter(|i| ex[**i].site() == cause)
            .min_by_key(|i| (rank(&ex[**i]), **i))
            .or_else(|| cluster.iter().min_by(|a, b| ex[**a].test.q_value.total_cmp(&ex[**b].test.q_value)))
            .copied()
            .unwrap_or(cluster[0])
    }

    async fn finding(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        e: &Examined,
        linked: &[&Examined],
        versions: &Rows,
        flows: &BTreeMap<String, drop_off::ResolvedFlow>,
    ) -> Result<Finding, AnalysisError> {
        let t = &e.test;
        let j = &t.judgement;
        let filter = ctx.subject_filter(&t.service, &t.operation, &t.segment);
        let (mut baseline, mut current) = (j.baseline.clone(), j.current.clone());
        let query = match t.kind {
            FindingKind::LatencyRegression => {
                let q = sql::render(
                    include_str!("detectors/evidence_latency.sql"),
                    &ctx.lean_for(&t.segment).vars(&filter),
                );
                let rows = self.rows(tenant, &q).await?;
                for r in rows.iter() {
                    let side = if r.str("side").as_deref() == Some("current") { &mut current } else { &mut baseline };
                    for k in ["requests", "sessions"] {
                        side.insert(k.into(), Value::from(r.u64(k)));
                    }
                    for k in ["p50_ms", "p95_ms", "p99_ms"] {
                        side.insert(k.into(), r.f64(k).map_or(Value::Null, detectors::num));
                    }
                }
                q
            }
            FindingKind::ErrorRateRegression => wrap(
                &error_rate_regression::query(&ctx.lean_for(&t.segment), &filter),
                "sum(n) AS requests, sum(errors) AS errors, \
                 round(CAST(sum(errors) AS DOUBLE) / sum(n), 5) AS error_rate, sum(error_sessions) AS error_sessions",
            ),
            FindingKind::Retry => wrap(
                &retry::query(ctx, &filter),
                "sum(sessions) AS sessions, sum(retrying_sessions) AS retrying_sessions, \
                 round(CAST(sum(retrying_sessions) AS DOUBLE) / sum(sessions), 5) AS retrying_share, \
                 sum(retries) AS retries, sum(auto_retries) AS auto_retries, sum(attempts) AS attempts",
            ),
            FindingKind::SilentRecovery => wrap(
                &silent_recovery::query(ctx, &filter),
                "sum(sessions) AS sessions, sum(error_sessions) AS error_sessions, \
                 sum(recovered_sessions) AS recovered_sessions, \
                 round(CAST(sum(recovered_sessions) AS DOUBLE) / sum(sessions), 5) AS recovered_share",
            ),
            FindingKind::DropOff => {
                let name = j.details.get("flow").and_then(Value::as_str).unwrap_or_default();
                let flow = flows.get(name).ok_or_else(|| AnalysisError::Config(format!("unknown flow {name}")))?;
                let k = flow.steps.iter().position(|(_, op)| *op == t.operation).unwrap_or(0);
                let seg_filter = ctx.segments.condition(&t.segment);
                wrap(
                    &drop_off::query(ctx, flow, &seg_filter),
                    &format!(
                        "sum(reached{k}) AS sessions_reached, sum(reached{n}) AS sessions_continued, \
                         round(CAST(sum(reached{n}) AS DOUBLE) / sum(reached{k}), 5) AS conversion, \
                         sum(left_after_error{k}) AS left_after_error",
                        n = k + 1
                    ),
                )
            }
        };

        // The onset: a change point in the per-minute metric where the trouble starts.
        let (onset_service, onset_op) = if t.kind == FindingKind::LatencyRegression {
            (t.service.clone(), t.operation.clone())
        } else {
            e.cause.clone()
        };
        let minutes_filter = ctx.subject_filter(&onset_service, &onset_op, &t.segment);
        // Every minute of the range, the gap between the windows included: the
        // onset may lie in it.
        let mut whole = ctx.lean_for(&t.segment);
        whole.baseline_end = ctx.split;
        let minutes = self
            .rows(tenant, &sql::render(include_str!("detectors/minutes.sql"), &whole.vars(&minutes_filter)))
            .await?;
        let metric = if t.kind == FindingKind::LatencyRegression { "log_latency" } else { "error_rate" };
        let series: Vec<(i64, f64)> = minutes
            .iter()
            .filter(|r| r.u64("n") >= 3)
            .filter_map(|r| Some((r.i64("minute")?, r.f64(metric)?)))
            .collect();
        let onset = stats::change_point(&series.iter().map(|s| s.1).collect::<Vec<_>>(), 0.2)
            .and_then(|i| Utc.timestamp_nanos(series[i].0).into())
            .filter(|o: &DateTime<Utc>| *o >= ctx.baseline_start);

        let change = attribute(versions, &e.cause.0, onset, ctx);
        let version_comparison = match &change {
            Some(c) if c.service == t.service => self.compare_versions(tenant, ctx, t, &c.version).await?,
            _ => None,
        };
        let affected = affected(t, &current, &baseline);
        let severity = severity(t.kind, j.effect, &current, &baseline);
        let impact = affected.sessions as f64 * severity.weight();
        let segment_text = summary::segment(&t.segment);
        let mut evidence = Evidence {
            query,
            exemplar_trace_ids: e.exemplars.clone(),
            test: j.test.to_owned(),
            effect_ci: j.ci,
            onset,
            cause: (e.cause != e.site())
                .then(|| ServiceOperation { service: e.cause.0.clone(), operation: e.cause.1.clone() }),
            linked: linked
                .iter()
                .map(|l| LinkedFinding {
                    kind: l.test.kind,
                    service: l.test.service.clone(),
                    operation: l.test.operation.clone(),
                    segment: l.test.segment.clone(),
                    summary: summary::short(l.test.kind, &l.test.service, &l.test.operation, &l.test.judgement),
                    p_value: l.test.judgement.p_value,
                    why: l.why.clone(),
                })
                .collect(),
            details: j.details.clone(),
        };
        evidence.details.insert("q_value".into(), detectors::num(t.q_value));
        if let Some(v) = version_comparison {
            evidence.details.insert("version_comparison".into(), v);
        }
        evidence.details.insert("cause_reason".into(), Value::from(e.why.clone()));
        let fingerprint = Finding::fingerprint_of(t.kind, &t.service, &t.operation, &t.segment);
        let summary = summary::sentence(
            t.kind,
            &t.service,
            &t.operation,
            &segment_text,
            j,
            &baseline,
            &current,
            onset,
            &affected,
            &e.cause,
        );
        Ok(Finding {
            id: format!("{fingerprint}-{}", ctx.split.timestamp()),
            fingerprint,
            kind: t.kind,
            service: t.service.clone(),
            operation: t.operation.clone(),
            segment: t.segment.clone(),
            window: TimeWindow { start: ctx.split, end: ctx.end },
            baseline_window: TimeWindow { start: ctx.baseline_start, end: ctx.baseline_end },
            baseline,
            current,
            p_value: j.p_value,
            effect: j.effect,
            affected,
            impact,
            severity,
            summary,
            evidence,
            change,
            state: FindingState::Open,
            first_seen: ctx.end,
            last_seen: ctx.end,
        })
    }
}

impl Analyzer {
    /// The new version against the one it replaced, over the whole range: the
    /// same test as the windows' comparison, split by `service.version` instead.
    async fn compare_versions(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        t: &Test,
        new: &str,
    ) -> Result<Option<Value>, AnalysisError> {
        let Some(vi) = ctx.segments.columns.iter().position(|c| c.attribute == "service.version") else {
            return Ok(None);
        };
        let filter = ctx.subject_filter(&t.service, &t.operation, &BTreeMap::new());
        let ctx = &ctx.lean_for(&BTreeMap::new());
        let seg = format!("seg{vi}");
        let judged = match t.kind {
            FindingKind::LatencyRegression => {
                let rows = self.rows(tenant, &latency_regression::query(ctx, &filter)).await?;
                let mut by: BTreeMap<String, stats::Histogram> = BTreeMap::new();
                for r in rows.iter() {
                    let Some(v) = r.str(&seg) else { continue };
                    *by.entry(v).or_default().entry(r.i64("bucket").unwrap_or(0)).or_default() += r.u64("n");
                }
                let Some(new_h) = by.remove(new) else { return Ok(None) };
                let Some((prev, prev_h)) = by.into_iter().max_by_key(|(_, h)| stats::total(h)) else {
                    return Ok(None);
                };
                latency_regression::judge(ctx, &prev_h, &new_h).map(|j| (prev, j))
            }
            FindingKind::ErrorRateRegression => {
                let rows = self.rows(tenant, &error_rate_regression::query(ctx, &filter)).await?;
                let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                for r in rows.iter() {
                    let Some(v) = r.str(&seg) else { continue };
                    let e = by.entry(v).or_default();
                    e.0 += r.u64("errors");
                    e.1 += r.u64("n");
                }
                let Some(new_c) = by.remove(new) else { return Ok(None) };
                let Some((prev, prev_c)) = by.into_iter().max_by_key(|(_, c)| c.1) else { return Ok(None) };
                detectors::judge_rate(&self.config, prev_c, new_c, ("errors", "requests", "error_rate"))
                    .map(|j| (prev, j))
            }
            _ => None,
        };
        Ok(judged.map(|(prev, j)| {
            serde_json::json!({
                "previous": prev,
                "new": new,
                "test": j.test,
                "p_value": j.p_value,
                "effect": j.effect,
                "effect_ci": j.ci,
                "previous_numbers": j.baseline,
                "new_numbers": j.current,
            })
        }))
    }
}

/// A detector's query, summed per side: what the evidence query returns.
fn wrap(query: &str, sums: &str) -> String {
    format!(
        "SELECT CASE WHEN cur = 1 THEN 'current' ELSE 'baseline' END AS side, {sums}\nFROM (\n{query}\n) detector\nGROUP BY 1\nORDER BY 1"
    )
}

/// The most common cause among a cluster's members.
fn cluster_cause(ex: &[Examined], cluster: &[usize]) -> (String, String) {
    let mut counts: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for i in cluster {
        *counts.entry(&ex[*i].cause).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k.clone()).unwrap_or_default()
}

/// Candidates whose trouble starts in the same operation describe one problem.
/// Two problems that merely meet at one operation (a slow callee and a rate
/// limiter on the same route) stay apart.
fn clusters(ex: &[Examined]) -> Vec<Vec<usize>> {
    let n = ex.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        p[i] = r;
        r
    }
    for a in 0..n {
        for b in a + 1..n {
            let (x, y) = (&ex[a], &ex[b]);
            if x.cause == y.cause {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}

/// The change a finding follows: a version of the service where the trouble
/// starts that first served within 30 minutes before the onset (or, with no
/// onset, inside the current window).
fn attribute(versions: &Rows, service: &str, onset: Option<DateTime<Utc>>, ctx: &Ctx) -> Option<ChangeRef> {
    let settle = ctx.baseline_start + chrono::Duration::minutes(2);
    let mut best: Option<(DateTime<Utc>, ChangeRef)> = None;
    for r in versions.iter() {
        if r.str("service").as_deref() != Some(service) {
            continue;
        }
        let Some(first) = r.i64("first_seen").map(|ns| Utc.timestamp_nanos(ns)) else { continue };
        if first <= settle {
            continue;
        }
        let fits = match onset {
            Some(o) => first <= o + chrono::Duration::minutes(2) && first >= o - chrono::Duration::minutes(30),
            None => first >= ctx.split - chrono::Duration::minutes(30),
        };
        if !fits || best.as_ref().is_some_and(|(b, _)| *b > first) {
            continue;
        }
        best = Some((
            first,
            ChangeRef {
                service: service.to_owned(),
                version: r.str("version").unwrap_or_default(),
                commit: r.str("commit"),
                pr: r.str("pr").and_then(|p| p.trim_start_matches('#').parse().ok()),
                first_seen: Some(first),
            },
        ));
    }
    best.map(|(_, c)| c)
}

fn get(m: &BTreeMap<String, Value>, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn affected(t: &Test, current: &BTreeMap<String, Value>, baseline: &BTreeMap<String, Value>) -> Affected {
    let u = |k: &str| get(current, k).max(0.0) as u64;
    match t.kind {
        FindingKind::LatencyRegression => Affected { requests: u("requests"), sessions: u("sessions") },
        FindingKind::ErrorRateRegression => Affected { requests: u("errors"), sessions: u("error_sessions") },
        FindingKind::Retry => Affected { requests: u("retries"), sessions: u("retrying_sessions") },
        FindingKind::SilentRecovery => {
            Affected { requests: u("recovered_sessions"), sessions: u("recovered_sessions") }
        }
        FindingKind::DropOff => {
            // Sessions lost beyond what the baseline's conversion would have lost.
            let reached = get(current, "sessions_reached");
            let expected_left = reached * (1.0 - get(baseline, "conversion"));
            let excess = (get(current, "sessions_left") - expected_left).max(0.0).round() as u64;
            Affected { requests: u("left_after_error"), sessions: excess }
        }
    }
}

fn severity(
    kind: FindingKind,
    effect: f64,
    current: &BTreeMap<String, Value>,
    baseline: &BTreeMap<String, Value>,
) -> Severity {
    let grade = |v: f64, [c, h, m]: [f64; 3]| {
        if v >= c {
            Severity::Critical
        } else if v >= h {
            Severity::High
        } else if v >= m {
            Severity::Medium
        } else {
            Severity::Low
        }
    };
    match kind {
        FindingKind::LatencyRegression => grade(effect, [4.0, 2.0, 1.5]),
        FindingKind::ErrorRateRegression => grade(effect, [0.2, 0.05, 0.01]),
        FindingKind::DropOff => grade(effect, [0.3, 0.15, 0.08]),
        FindingKind::Retry => {
            grade(get(current, "retrying_share") - get(baseline, "retrying_share"), [0.5, 0.15, 0.03])
        }
        FindingKind::SilentRecovery => {
            grade(get(current, "recovered_share") - get(baseline, "recovered_share"), [0.5, 0.15, 0.03])
        }
    }
}
