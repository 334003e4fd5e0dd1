//! The seam every detector plugs into: the windows and settings it runs its
//! SQL over ([`Ctx`]), the verdict it gives on one cut of the data
//! ([`Judgement`]), the [`Test`] that carries it, and the [`Detector`] trait.
//! A detector owns its SQL, its tests, its evidence query, its affected
//! counts, its severity, its rank among the findings of one cause, and its
//! wording; the [`crate::engine`] only orchestrates a pass over the detectors
//! of [`crate::detectors::registry`].

use std::collections::BTreeMap;

use andon_model::{Affected, FindingKind, Severity, Trouble, Wording};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::AnalysisError;
use crate::config::AnalysisConfig;
use crate::sql::{self, Rows, Segments};

/// The windows and settings of one pass.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub baseline_start: DateTime<Utc>,
    /// The baseline ends here; the current window starts at `split`, at or after it.
    pub baseline_end: DateTime<Utc>,
    pub split: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub segments: Segments,
    pub config: AnalysisConfig,
    /// Leave out the session join: for queries that read no segment value that
    /// comes from the session and no session end.
    pub lean: bool,
    /// Trace samples leave out traces that received a span after this time
    /// (continuous passes: they are still arriving).
    pub settled: Option<DateTime<Utc>>,
    /// `span_metrics` is rolled up by every segment attribute of the pass.
    pub rollups: bool,
    /// `sessions` covers the range, kept by every segment attribute of the
    /// pass with its session timeout and retry interval: the session
    /// detectors read it instead of spans.
    pub sessions: bool,
    /// The pass judges a short window (`recent_secs`): a release new in it is
    /// judged against its operation's baseline ([`crate::detectors::NEW_VERSION`]).
    pub short: bool,
}

impl Ctx {
    /// The placeholders every template shares; `filter` narrows to one subject.
    pub fn vars(&self, filter: &str) -> Vec<(&'static str, String)> {
        let shared = sql::render(sql::SHARED_CTES, &self.shared_vars());
        vec![
            ("shared", shared),
            ("segments", self.segments.list()),
            ("from", sql::ts(self.baseline_start)),
            ("to", sql::ts(self.end)),
            ("split", sql::ts(self.split)),
            ("retry_secs", self.config.retry_interval_secs.to_string()),
            ("filter", filter.to_owned()),
        ]
    }

    /// Whether the pass reads `span_metrics` instead of spans: the store rolls
    /// up by its segments and its windows start and end on whole minutes, as
    /// the rollups' cells do.
    pub fn rolled(&self) -> bool {
        let whole = |t: DateTime<Utc>| t.timestamp_subsec_nanos() == 0 && t.timestamp().rem_euclid(60) == 0;
        self.rollups && [self.baseline_start, self.baseline_end, self.split, self.end].into_iter().all(whole)
    }

    /// The same pass reading spans only (for SQL a person reruns over `spans`).
    pub fn unrolled(&self) -> Ctx {
        Ctx { rollups: false, sessions: false, ..self.clone() }
    }

    /// Whether the session detectors read `sessions` instead of spans: the
    /// store keeps them as the pass needs, and the windows start and end on
    /// whole minutes, as its rows do.
    pub fn sessioned(&self) -> bool {
        self.sessions && self.rolled()
    }

    /// The placeholders of a template over `sessions`.
    pub fn session_vars(&self, filter: &str) -> Vec<(&'static str, String)> {
        // The same columns and windows as over `span_metrics`.
        self.metric_vars(filter)
            .into_iter()
            .map(|(k, v)| (if k == "metric_segments" { "session_segments" } else { k }, v))
            .collect()
    }

    /// The placeholders of a template over `span_metrics`.
    pub fn metric_vars(&self, filter: &str) -> Vec<(&'static str, String)> {
        let metric_segments: String = self
            .segments
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", CAST({} AS VARCHAR) AS seg{i}", c.column))
            .collect();
        vec![
            ("segments", self.segments.list()),
            ("metric_segments", metric_segments),
            ("from", sql::ts(self.baseline_start)),
            ("to", sql::ts(self.end)),
            ("split", sql::ts(self.split)),
            ("baseline_end", sql::ts(self.baseline_end)),
            ("filter", filter.to_owned()),
            ("side", format!("CASE WHEN minute >= {} THEN 1 ELSE 0 END", sql::ts(self.split))),
        ]
    }

    /// The placeholders of `shared.sql`.
    pub fn shared_vars(&self) -> Vec<(&'static str, String)> {
        let (last_seen, segments, join) = if self.lean {
            ("CAST(NULL AS TIMESTAMP) AS last_seen", self.segments.request_exprs_lean(), "")
        } else {
            ("ss.last_seen", self.segments.request_exprs(), " LEFT JOIN sessions ss ON s.session_id = ss.session_id")
        };
        vec![
            ("session_aggregates", self.segments.session_aggregates()),
            ("request_segments", segments),
            ("last_seen", last_seen.to_owned()),
            ("session_join", join.to_owned()),
            ("operation", sql::OPERATION.to_owned()),
            ("from", sql::ts(self.baseline_start)),
            ("to", sql::ts(self.end)),
            ("split", sql::ts(self.split)),
            ("baseline_end", sql::ts(self.baseline_end)),
        ]
    }

    /// The same windows, without the session join when `segment` is empty.
    pub fn lean_for(&self, segment: &BTreeMap<String, Value>) -> Ctx {
        Ctx { lean: segment.is_empty(), ..self.clone() }
    }

    /// For comparing versions of a subject (service, operation): the segment
    /// column holding `service.version`, the filter to the subject in every
    /// segment, and the windows without the session join. `None` when
    /// versions are not a segment.
    pub fn by_version(&self, (service, operation): (&str, &str)) -> Option<(String, String, Ctx)> {
        let vi = self.segments.columns.iter().position(|c| c.attribute == "service.version")?;
        let filter = self.subject_filter(service, operation, &BTreeMap::new());
        Some((format!("seg{vi}"), filter, self.lean_for(&BTreeMap::new())))
    }

    /// The condition that narrows `span_metrics` to one subject and segment.
    pub fn metrics_filter(&self, service: &str, operation: &str, segment: &BTreeMap<String, Value>) -> String {
        let mut out = format!("AND service_name = {} AND operation = {}", sql::lit(service), sql::lit(operation));
        for (attr, v) in segment {
            if let Some(c) = self.segments.columns.iter().find(|c| &c.attribute == attr) {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!(" AND CAST({} AS VARCHAR) = {}", c.column, sql::lit(&text)));
            }
        }
        out
    }

    /// The condition that narrows a detector's rows to one subject and segment.
    pub fn subject_filter(&self, service: &str, operation: &str, segment: &BTreeMap<String, Value>) -> String {
        format!(
            "AND service = {} AND operation = {}{}",
            sql::lit(service),
            sql::lit(operation),
            self.segments.condition(segment)
        )
    }
}

/// A detector's verdict on baseline against current for one cut of the data.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub p_value: f64,
    pub effect: f64,
    /// The effect on a scale where 0 is none, comparable between segments of
    /// one subject (a rate's rise, a ratio less one).
    pub size: f64,
    pub ci: Option<[f64; 2]>,
    pub test: &'static str,
    /// The effect clears the detector's relative and absolute floors.
    pub material: bool,
    pub baseline: BTreeMap<String, Value>,
    pub current: BTreeMap<String, Value>,
    pub details: BTreeMap<String, Value>,
    pub current_samples: u64,
}

/// One test of a pass: a subject, overall or within one segment value, with the
/// same test on the rest of the data beside it.
#[derive(Debug, Clone)]
pub struct Test {
    pub kind: FindingKind,
    pub service: String,
    pub operation: String,
    pub segment: BTreeMap<String, Value>,
    pub judgement: Judgement,
    /// The same comparison outside the segment (none for the overall test).
    pub complement: Option<Judgement>,
    /// Benjamini–Hochberg adjusted p-value, filled in across the whole pass.
    pub q_value: f64,
    /// A segment with fewer than `min_samples` a side (but at least
    /// `segment_min_samples`): too thin to discover a problem in, among every
    /// test of a pass, but enough to confirm what a problem already found
    /// does to users there. Left out of the false-discovery correction.
    pub follow_up: bool,
}

/// One side's numbers, by name (`p95_ms`, `error_rate`, ...).
pub type Numbers = BTreeMap<String, Value>;

/// One side's latency evidence ([`Sql::latency_evidence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SideLatency {
    pub current: bool,
    pub requests: u64,
    pub sessions: u64,
    /// p50, p95 and p99 in milliseconds, to three places.
    pub ms: [f64; 3],
}

/// Runs SQL as the pass's tenant, on the query engine's own runtime.
#[async_trait]
pub trait Sql: Send + Sync {
    async fn rows(&self, sql: &str) -> Result<Rows, AnalysisError>;

    /// Every session of `sessions` with rows in `[from, to)`, folded by page
    /// request and kept from the last pass's where the pass keeps them
    /// ([`crate::fold::PageFold`]); `None` where it does not, and the caller
    /// runs its SQL instead.
    async fn session_pages(
        &self,
        _ctx: &Ctx,
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
    ) -> Result<Option<crate::fold::Pages>, AnalysisError> {
        Ok(None)
    }

    /// The journeys of `journeys_sessions.sql` over the minutes `[from,
    /// to)`, from the sessions folded by page request over `[range_from,
    /// range_to)` as [`Sql::session_pages`] keeps them; `None` where it
    /// keeps none, and the caller runs the SQL instead.
    async fn session_journeys(
        &self,
        _ctx: &Ctx,
        _range: (DateTime<Utc>, DateTime<Utc>),
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
    ) -> Result<Option<crate::detectors::drop_off::Journeys>, AnalysisError> {
        Ok(None)
    }

    /// The flows `make` makes of the journeys [`Sql::session_journeys`]
    /// gives, and how many rows those are, made once for every judgement
    /// over the same journeys ([`crate::fold::PageFold::flows`]); `None`
    /// where the pass keeps no sessions by page request.
    async fn session_flows(
        &self,
        _ctx: &Ctx,
        _range: (DateTime<Utc>, DateTime<Utc>),
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
        _make: &crate::detectors::drop_off::MakeFlows,
    ) -> Result<Option<(Vec<crate::detectors::drop_off::ResolvedFlow>, usize)>, AnalysisError> {
        Ok(None)
    }

    /// The sessions the failed requests of a subject (service, operation,
    /// segment) reached, (baseline, current), as `error_rate_regression.sql`
    /// over spans counts them (without a segment, by the spans' own segment
    /// values), from the requests kept by minute; `None` where the pass
    /// keeps none, and the caller runs the SQL.
    async fn error_sessions(
        &self,
        _ctx: &Ctx,
        _subject: (&str, &str, &BTreeMap<String, Value>),
    ) -> Result<Option<(u64, u64)>, AnalysisError> {
        Ok(None)
    }

    /// The latency of a subject's requests that succeeded, per side, as
    /// `detectors/evidence_latency.sql` gives it: `(current, requests,
    /// sessions, p50, p95, p99 in ms)` for each side with requests, from the
    /// requests kept by minute; `None` where the pass keeps none.
    async fn latency_evidence(
        &self,
        _ctx: &Ctx,
        _subject: (&str, &str, &BTreeMap<String, Value>),
    ) -> Result<Option<Vec<SideLatency>>, AnalysisError> {
        Ok(None)
    }

    /// The subjects a pass folded for the statement `sql` and its history
    /// ([`crate::detectors::Folded`]); `None` where it folded none, and the
    /// detector reads the rows.
    fn folded(&self, _sql: &str) -> Option<std::sync::Arc<crate::detectors::Folded>> {
        None
    }

    /// Notes that `sql` was answered with `rows` without being run.
    fn answered(&self, _sql: &str, _rows: &Rows) {}

    /// Notes that `sql` was answered, in `rows` rows, without being run or
    /// its rows built.
    fn noted(&self, _sql: &str, _rows: usize) {}
}

/// A detector's tests of one pass.
#[derive(Debug, Default)]
pub struct Tested {
    /// Every test, overall and per segment value, before false-discovery control.
    pub tests: Vec<Test>,
    /// The funnels judged, by name (drop-off).
    pub flows: Vec<String>,
}

/// What a finding's sentence is made of.
#[derive(Debug)]
pub struct Facts<'a> {
    pub service: &'a str,
    pub operation: &'a str,
    /// ` for `k=v` sessions`, or nothing.
    pub segment: &'a str,
    pub judgement: &'a Judgement,
    pub baseline: &'a Numbers,
    pub current: &'a Numbers,
    pub onset: Option<DateTime<Utc>>,
    pub affected: &'a Affected,
    /// Where the trouble starts.
    pub cause: &'a (String, String),
}

#[async_trait]
pub trait Detector: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> FindingKind;

    /// The aggregation SQL a pass starts with, labelled, as run (for comparing
    /// engines on the same statements).
    fn queries(&self, ctx: &Ctx) -> Vec<(String, String)>;

    /// Runs the detector's SQL over the pass's windows and tests every subject,
    /// overall and within each segment value.
    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError>;

    /// Whether this detector judges a window as short as `recent_secs`: only
    /// one that judges it against how much windows of its length vary before
    /// the baseline's end (at least [`crate::detectors::SHORT_MIN_PERIODS`] of
    /// them), since a minute's requests share their conditions.
    fn judges_short_windows(&self) -> bool {
        false
    }

    /// What a candidate's traces are sampled for, and what its onset measures.
    fn trouble(&self, _j: &Judgement) -> Trouble {
        Trouble::Failures
    }

    /// The evidence query: the detector's query narrowed to the finding's
    /// subject and segment, per side. It may add numbers to each side.
    async fn evidence(
        &self,
        ctx: &Ctx,
        t: &Test,
        sql: &dyn Sql,
        baseline: &mut Numbers,
        current: &mut Numbers,
    ) -> Result<String, AnalysisError>;

    /// The new version of the service against the one it replaced, judged the
    /// same way, when the detector can tell versions apart.
    async fn compare_versions(
        &self,
        _ctx: &Ctx,
        _t: &Test,
        _new: &str,
        _sql: &dyn Sql,
    ) -> Result<Option<(String, Judgement)>, AnalysisError> {
        Ok(None)
    }

    fn affected(&self, current: &Numbers, baseline: &Numbers) -> Affected;

    fn severity(&self, effect: f64, current: &Numbers, baseline: &Numbers) -> Severity;

    /// Among findings of one cause at the operation where it starts, the most
    /// specific account is reported and the rest are linked under it: lower
    /// ranks first.
    fn rank(&self, j: &Judgement) -> u8;

    /// Whether this finding is the headline of its cause wherever the cause
    /// starts (a drop-off large enough that it is what users feel).
    fn headline(&self, _j: &Judgement, _cfg: &AnalysisConfig) -> bool {
        false
    }

    /// The finding's one sentence, with its numbers.
    fn sentence(&self, facts: &Facts<'_>) -> String;

    /// The effect in a few words, for a finding linked under another.
    fn short(&self, j: &Judgement) -> String;

    /// The kind, a title and the effect in words, for tickets.
    fn wording(&self, effect: f64, baseline: &Numbers, current: &Numbers) -> Wording;
}

/// A number of a side, 0 when absent.
pub fn get(m: &Numbers, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Grades `v` against the critical, high and medium floors.
pub fn grade(v: f64, [c, h, m]: [f64; 3]) -> Severity {
    if v >= c {
        Severity::Critical
    } else if v >= h {
        Severity::High
    } else if v >= m {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// A detector's query summed per side: what an evidence query returns.
pub fn per_side(query: &str, sums: &str) -> String {
    format!(
        "SELECT CASE WHEN cur = 1 THEN 'current' ELSE 'baseline' END AS side, {sums}\nFROM (\n{query}\n) detector\nGROUP BY 1\nORDER BY 1"
    )
}
