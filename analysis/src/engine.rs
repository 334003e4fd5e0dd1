//! One detection pass: run every detector of the registry, control false
//! discoveries across the pass, choose each subject's segment, sample traces
//! to tell causes from symptoms, cluster by cause, and turn what is left into
//! findings with their evidence. What a finding says and how it is tested are
//! its detector's ([`crate::detector::Detector`]); this only orchestrates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use andon_model::statistics as stats;
use andon_model::{
    Evidence, Finding, FindingKind, FindingState, LinkedFinding, ServiceOperation, Tenant, TimeWindow, Trouble,
};
use andon_store::QueryEngine;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tracing::debug;

use crate::AnalysisError;
use crate::attribution;
use crate::cluster::{self, Member};
use crate::config::AnalysisConfig;
use crate::detector::{Ctx, Detector, Facts, Sql, Test};
use crate::detectors::{self, Candidate};
use crate::localize::{self, Scope};
use crate::sides;
use crate::sql::{self, Rows, Segments};
use crate::summary;
use crate::traces::{self, Pick, Sample, TraceSpans};

/// The bin of a finding's onset series: a minute, finer when the pass's range
/// is short (about 40 bins across it), never under 10 s. A minute's bin on a
/// range of a few minutes places an onset up to a minute early, and the onset
/// decides which later passes compare against a baseline free of the problem.
fn onset_bin_secs(ctx: &Ctx) -> i64 {
    ((ctx.end - ctx.baseline_start).num_seconds() / 40).clamp(10, 60)
}

/// Traces of each window the localization of a slower operation reads.
const CAUSE_TRACES: usize = 500;

/// Requests sampled to find where a candidate's failures start, or its
/// slowest traces.
const SAMPLE: usize = 100;

/// A candidate's requests picked in the current window: its sample, and the
/// first of every one of its requests (exemplars when none failed).
struct Picked {
    sample: Vec<Pick>,
    any: Vec<Pick>,
}

/// A service's and an operation's names, shared.
type Names = (Arc<str>, Arc<str>);

/// A request of the current window, with what the candidates tell apart
/// (the names and values shared with the requests kept by minute).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WindowRequest {
    service: Arc<str>,
    operation: Arc<str>,
    err: bool,
    segs: Box<[Option<Arc<str>>]>,
    trace_id: Arc<str>,
    span_id: Arc<str>,
    start: i64,
    end: i64,
}

impl WindowRequest {
    fn pick(&self) -> Pick {
        Pick {
            trace_id: self.trace_id.to_string(),
            span_id: self.span_id.to_string(),
            start: self.start,
            end: self.end,
        }
    }

    /// The first `limit` of `requests` by trace and span id, as picks.
    fn first<'a>(requests: impl Iterator<Item = &'a WindowRequest>, limit: usize) -> Vec<Pick> {
        let mut v: Vec<&WindowRequest> = requests.collect();
        v.sort_by(|a, b| a.trace_id.cmp(&b.trace_id).then(a.span_id.cmp(&b.span_id)));
        v.into_iter().take(limit).map(WindowRequest::pick).collect()
    }
}

/// Rows of one operation within one segment, among rows that carry every
/// `seg` column ([`Segments::names`]).
struct Cut<'a> {
    service: &'a str,
    operation: &'a str,
    /// Each `seg` column the segment fixes, by position, with its text.
    want: Vec<(usize, String)>,
}

impl<'a> Cut<'a> {
    fn new(segments: &Segments, service: &'a str, operation: &'a str, segment: &BTreeMap<String, Value>) -> Self {
        let columns = segments.names();
        let want = segments
            .values(segment)
            .into_iter()
            .filter_map(|(col, v)| Some((columns.iter().position(|c| *c == col)?, v)))
            .collect();
        Self { service, operation, want }
    }

    fn holds<S: AsRef<str>>(&self, service: &str, operation: &str, segs: &[Option<S>]) -> bool {
        service == self.service && operation == self.operation && self.within(segs)
    }

    /// Whether values `segs` are within the segment.
    fn within<S: AsRef<str>>(&self, segs: &[Option<S>]) -> bool {
        self.want.iter().all(|(i, v)| segs[*i].as_ref().map(AsRef::as_ref) == Some(v.as_str()))
    }
}

/// A condition matching rows of any of `sites` (service, operation), each once.
fn sites_condition<'a>(sites: impl Iterator<Item = (&'a str, &'a str)>, service_column: &str) -> String {
    let mut sites: Vec<(&str, &str)> = sites.collect();
    sites.sort_unstable();
    sites.dedup();
    sites
        .iter()
        .map(|(s, o)| format!("({service_column} = {} AND operation = {})", sql::lit(s), sql::lit(o)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Where a finding's onset is looked for.
struct Onset {
    service: String,
    operation: String,
    segment: BTreeMap<String, Value>,
    /// In the latency of successful requests; otherwise in the error rate.
    latency: bool,
}

/// One cell of the rollups an onset series sums: a minute of an operation
/// in one combination of segment values.
struct OnsetCell {
    bin: i64,
    service: String,
    operation: String,
    segs: Vec<Option<String>>,
    n: u64,
    ok: u64,
    errors: u64,
    log_sum: f64,
}

/// Each subject's onset series from the rollups' cells of its operation:
/// `(minute, metric)` for the minutes with at least 3 requests in its segment.
fn onset_series_of(ctx: &Ctx, subjects: &[Onset], cells: &[OnsetCell]) -> Vec<Vec<(i64, f64)>> {
    subjects
        .iter()
        .map(|o| {
            let cut = Cut::new(&ctx.segments, &o.service, &o.operation, &o.segment);
            // (n, ok, errors, log sum) by minute.
            let mut bins: BTreeMap<i64, (u64, u64, u64, f64)> = BTreeMap::new();
            for c in cells.iter().filter(|c| cut.holds(&c.service, &c.operation, &c.segs)) {
                let b = bins.entry(c.bin).or_default();
                b.0 += c.n;
                b.1 += c.ok;
                b.2 += c.errors;
                b.3 += c.log_sum;
            }
            bins.into_iter()
                .filter(|(_, b)| b.0 >= 3)
                .filter_map(|(bin, (n, ok, errors, log_sum))| {
                    let v = if o.latency { (ok > 0).then(|| log_sum / ok as f64)? } else { errors as f64 / n as f64 };
                    Some((bin, v))
                })
                .collect()
        })
        .collect()
}

/// The traces a candidate's cause is looked for in: those through its
/// operation, in its segment.
fn cause_scope(ctx: &Ctx, t: &Test) -> Scope {
    Scope {
        through: Some(t.service.clone()),
        operation: Some(t.operation.clone()),
        segment: t.segment.clone(),
        settled: ctx.settled,
        users_moved: false,
    }
}

/// The baseline and current windows a candidate's cause is looked for in.
fn cause_windows(ctx: &Ctx) -> [TimeWindow; 2] {
    [TimeWindow { start: ctx.baseline_start, end: ctx.baseline_end }, TimeWindow { start: ctx.split, end: ctx.end }]
}

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

    /// The passes continuous detection would have run with their ends in
    /// `(from, to]`: one every `interval_secs` (a minute when continuous
    /// detection is off), spaced out evenly when that would be more than
    /// `replay_max_passes`. Each looks back as a live pass does: its current
    /// window and baseline may start before `from`.
    pub fn replay(
        cfg: &AnalysisConfig,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_passes: Option<usize>,
    ) -> Vec<Windows> {
        let every = if cfg.interval_secs > 0 { cfg.interval_secs } else { 60 };
        let most = max_passes.map_or(cfg.replay_max_passes, |m| m.clamp(1, cfg.replay_max_passes));
        // Passes a whole number of minutes apart end on whole minutes, as live
        // passes do, so that they read the rollups; spaced out, they stay a
        // whole number of minutes apart.
        let minutes = every % 60 == 0;
        let mut end = if minutes { floor_minute(from) } else { from };
        let span = (to - end).num_seconds().max(1) as u64;
        let mut step = every.max(span.div_ceil(most as u64));
        if minutes {
            step = step.div_ceil(60) * 60;
        }
        let step = chrono::Duration::seconds(step as i64);
        let window = chrono::Duration::seconds(cfg.window_secs as i64);
        // The last pass ends at the range's end, or, for passes on whole
        // minutes, at its last whole minute: a live pass would not have run
        // later, and a pass off the minute reads every span of its baseline
        // instead of the rollups.
        let last = if minutes { floor_minute(to) } else { to };
        let mut out = Vec::new();
        while end < last {
            end = (end + step).min(last);
            out.push(Windows::before(end - window, end, cfg.baseline_secs));
        }
        if out.is_empty() {
            // A range within one minute: the pass that minute began with.
            out.push(Windows::before(last - window, last, cfg.baseline_secs));
        }
        out
    }
}

/// The start of `t`'s minute.
pub fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp().div_euclid(60) * 60, 0).single().unwrap_or(t)
}

#[derive(Debug, Clone)]
pub struct PassReport {
    pub findings: Vec<Finding>,
    /// Statistical tests made (and corrected for) in the pass.
    pub tests: usize,
    pub flows: Vec<String>,
    pub elapsed: Duration,
    /// How the pass got to its findings, for the flight recorder (kept only
    /// by an analyzer that records): each detector's queries, the tests it
    /// selected, where each candidate's trouble starts, and how they were
    /// grouped.
    pub steps: Vec<PassStep>,
    /// What the pass's clustering read of each finding's headline account,
    /// in the order of `findings`: a continuous pass weighs its last minute's
    /// accounts against its whole window's with it.
    pub accounts: Vec<Account>,
}

/// A finding's headline account as clustering weighs it, with the short
/// form of its effect for a finding it is linked under.
#[derive(Debug, Clone)]
pub struct Account {
    pub member: Member,
    pub short: String,
}

impl Account {
    /// `f` (whose account this is) as linked under another finding, with what
    /// was linked under it.
    fn linked(&self, f: &Finding) -> Vec<LinkedFinding> {
        let own = LinkedFinding {
            kind: f.kind,
            service: f.service.clone(),
            operation: f.operation.clone(),
            segment: f.segment.clone(),
            summary: summary::linked(f.kind, &f.service, &f.operation, &self.short),
            p_value: f.p_value,
            why: f.evidence.details.get("cause_reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
        };
        std::iter::once(own).chain(f.evidence.linked.iter().cloned()).collect()
    }
}

/// One step of a pass, as the flight recorder keeps it.
#[derive(Debug, Clone)]
pub struct PassStep {
    /// `query` or `decision`.
    pub kind: &'static str,
    pub name: String,
    /// Names of the steps it followed (`windows` is the pass's input).
    pub parents: Vec<String>,
    pub input: serde_json::Value,
    pub output: serde_json::Value,
    pub summary: String,
}

/// Whether a recorded step is one a pass makes (and a replay makes again),
/// not one appended after it (its tickets, the gate, deliveries).
fn is_pass_step(name: &str) -> bool {
    let n = name.strip_prefix("last minute: ").unwrap_or(name);
    n.ends_with(" tests") || matches!(n, "select" | "attribute" | "cluster")
}

/// Compares a replayed pass's steps with the recorded ones, by name: what
/// went in (the SQL asked) and what came out.
fn compare_steps(
    recorded: &[crate::recorder::RecordedStep],
    now: &[PassStep],
    report: &mut crate::recorder::ReplayReport,
) {
    use crate::recorder::{Difference, diff_paths, same_content};
    for r in recorded.iter().filter(|r| is_pass_step(&r.step.name)) {
        report.replayed += 1;
        let differ = |reason: String| Difference { step: r.step.id.clone(), name: r.step.name.clone(), reason };
        let Some(n) = now.iter().find(|n| n.name == r.step.name) else {
            report.differences.push(differ("the pass no longer makes this step".into()));
            continue;
        };
        for (what, now, then) in [("input", &n.input, &r.input), ("output", &n.output, &r.output)] {
            let Some(then) = then else { continue };
            if !same_content(now, then) {
                let mut paths = Vec::new();
                diff_paths(now, then, what, &mut paths);
                report.differences.push(differ(format!("its {what} differs: {}", paths.join(", "))));
            }
        }
    }
    for n in now.iter().filter(|n| !recorded.iter().any(|r| r.step.name == n.name)) {
        report.differences.push(crate::recorder::Difference {
            step: String::new(),
            name: n.name.clone(),
            reason: "the pass now makes a step the recording does not have".into(),
        });
    }
}

/// A test as a step records it: its subject, and its statistics to four
/// significant digits (a sum over partitions may differ in its last bits
/// between two runs).
fn test_json(t: &Test) -> serde_json::Value {
    let sig = |x: f64| -> serde_json::Value {
        if x.is_finite() {
            format!("{x:.3e}").parse::<f64>().map_or(serde_json::Value::Null, |v| v.into())
        } else {
            serde_json::Value::Null
        }
    };
    serde_json::json!({
        "kind": t.kind.as_str(), "service": t.service, "operation": t.operation, "segment": t.segment,
        "p_value": sig(t.judgement.p_value), "q_value": sig(t.q_value), "effect": sig(t.judgement.effect),
        "follow_up": t.follow_up,
    })
}

#[derive(Debug, Clone)]
pub struct Analyzer {
    engine: QueryEngine,
    config: AnalysisConfig,
    segments: Segments,
    detectors: Vec<Arc<dyn Detector>>,
    /// The store rolls spans up by every configured segment attribute.
    rollups: bool,
    /// The store keeps sessions by them too, with the detectors' session
    /// timeout and retry interval (once they cover every stored span).
    sessions: bool,
    /// The flight recorder each pass is recorded in, when there is one.
    recorder: Option<Arc<crate::recorder::RunsDb>>,
    /// Whether passes keep their steps ([`PassReport::steps`]): when
    /// recorded, and when replayed.
    journal: bool,
    /// The calls of sessions as the last continuous pass folded them, for the
    /// next ([`crate::fold`]); taken out while a pass uses it.
    calls_fold: Arc<std::sync::Mutex<Option<crate::fold::CallsFold>>>,
    /// The sessions by page request as the last pass folded them, for the
    /// drop-off funnels of the next ([`crate::fold::PageFold`]).
    /// Held while a pass moves and reads it: a continuous pass's window and
    /// last minute read it at once, and the second finds it moved.
    page_fold: Arc<tokio::sync::Mutex<Option<crate::fold::PageFold>>>,
    /// The last read of `sessions` one fold made for a pass, for the other
    /// ([`crate::fold::SharedRead`]).
    session_read: Arc<crate::fold::SharedRead>,
    /// The cells of `span_metrics` as the last pass folded them, for the
    /// latency and error-rate statements of the next ([`crate::fold::MetricsFold`]).
    metrics_fold: Arc<std::sync::Mutex<Option<crate::fold::MetricsFold>>>,
    /// The traces the last passes sampled for their candidates' causes, for
    /// the next ([`localize::TraceBook`]).
    traces: Arc<localize::TraceBook>,
    /// The spans of the traces the last passes' failing samples picked, for
    /// the next ([`traces::SpansBook`]).
    failing: Arc<traces::SpansBook>,
    /// When each version first served, by minute, for the next pass
    /// ([`attribution::VersionBook`]).
    versions: Arc<attribution::VersionBook>,
    /// The requests of the operations examined, and the sessions' segment
    /// values, by minute, for the next pass ([`crate::requests::RequestBook`]).
    requests: Arc<crate::requests::RequestBook>,
}

/// What a pass knows before its judgements: statements' rows, and the
/// subjects the latency and error-rate detectors' statements (with their
/// histories) were folded into ([`crate::fold::MetricsFold::latency_subjects`]).
#[derive(Debug, Clone, Default)]
struct Known {
    rows: BTreeMap<String, Rows>,
    folded: BTreeMap<String, Arc<detectors::Folded>>,
    /// How many segment columns the folded statements' rows have.
    segments: usize,
}

/// SQL as one tenant, for one pass: a statement the pass already ran (the
/// latency and error-rate detectors read the same history), or whose rows the
/// pass summed out of a statement it shares with another ([`crate::sides`]),
/// is answered from its result.
struct TenantSql<'a> {
    engine: &'a QueryEngine,
    tenant: &'a Tenant,
    ran: std::sync::Mutex<BTreeMap<String, Rows>>,
    /// The subjects the pass folded, by statement ([`Known::folded`]), and
    /// how many segment columns their rows have.
    folded: BTreeMap<String, Arc<detectors::Folded>>,
    segments: usize,
    /// Each statement asked for since the last [`TenantSql::asked`], with
    /// its row count, when the pass is recorded.
    log: Option<std::sync::Mutex<Vec<(String, usize)>>>,
    /// Where the sessions by page request are kept between passes, and the
    /// calls fold's read of `sessions` it may take.
    pages: Option<(&'a tokio::sync::Mutex<Option<crate::fold::PageFold>>, &'a crate::fold::SharedRead)>,
    /// Where requests and session values are kept by minute between passes.
    requests: Option<&'a crate::requests::RequestBook>,
}

impl<'a> TenantSql<'a> {
    fn new(engine: &'a QueryEngine, tenant: &'a Tenant, logged: bool, known: &Known) -> Self {
        let ran = std::sync::Mutex::new(known.rows.clone());
        Self {
            engine,
            tenant,
            ran,
            folded: known.folded.clone(),
            segments: known.segments,
            log: logged.then(std::sync::Mutex::default),
            pages: None,
            requests: None,
        }
    }

    /// The same, keeping requests and session values by minute in `book`.
    fn with_requests(self, book: &'a crate::requests::RequestBook) -> Self {
        Self { requests: Some(book), ..self }
    }

    /// The same, keeping the sessions by page request in `pages`, reading
    /// `sessions` through `shared`.
    fn keeping(
        self,
        pages: &'a tokio::sync::Mutex<Option<crate::fold::PageFold>>,
        shared: &'a crate::fold::SharedRead,
    ) -> Self {
        Self { pages: Some((pages, shared)), ..self }
    }

    fn ran(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Rows>> {
        self.ran.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note(&self, sql: &str, rows: &Rows) {
        self.count(sql, rows.len());
    }

    fn count(&self, sql: &str, rows: usize) {
        if let Some(log) = &self.log {
            log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((sql.to_owned(), rows));
        }
    }

    /// The statements asked for since the last call, with their row counts.
    fn asked(&self) -> Vec<(String, usize)> {
        self.log
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
            .unwrap_or_default()
    }
}

#[async_trait]
impl Sql for TenantSql<'_> {
    async fn rows(&self, sql: &str) -> Result<Rows, AnalysisError> {
        let cached = self.ran().get(sql).cloned();
        if let Some(rows) = cached {
            self.note(sql, &rows);
            return Ok(rows);
        }
        if let Some(folded) = self.folded.get(sql) {
            // Made again of the subjects the pass folded.
            let rows = folded
                .rows(self.segments)
                .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: sql.to_owned() })?;
            self.note(sql, &rows);
            self.ran().insert(sql.to_owned(), rows.clone());
            return Ok(rows);
        }
        // `RUST_LOG=andon_analysis::sql=trace` prints every statement in full.
        tracing::trace!(target: "andon_analysis::sql", "{sql}");
        let rows = query(self.engine, self.tenant, sql).await?;
        self.note(sql, &rows);
        self.ran().insert(sql.to_owned(), rows.clone());
        Ok(rows)
    }

    async fn session_pages(
        &self,
        ctx: &Ctx,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<crate::fold::Pages>, AnalysisError> {
        self.page_fold(ctx, from, to, |fold| Ok(fold.kept_pages())).await
    }

    async fn session_journeys(
        &self,
        ctx: &Ctx,
        (range_from, range_to): (DateTime<Utc>, DateTime<Utc>),
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<crate::detectors::drop_off::Journeys>, AnalysisError> {
        let (Some(from), Some(to)) = (from.timestamp_nanos_opt(), to.timestamp_nanos_opt()) else { return Ok(None) };
        let journeys = |fold: &mut crate::fold::PageFold| Ok(fold.journeys(from, to));
        Ok(self.page_fold(ctx, range_from, range_to, journeys).await?.flatten())
    }

    async fn session_flows(
        &self,
        ctx: &Ctx,
        (range_from, range_to): (DateTime<Utc>, DateTime<Utc>),
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        make: &crate::detectors::drop_off::MakeFlows,
    ) -> Result<Option<(Vec<crate::detectors::drop_off::ResolvedFlow>, usize)>, AnalysisError> {
        let (Some(from), Some(to)) = (from.timestamp_nanos_opt(), to.timestamp_nanos_opt()) else { return Ok(None) };
        let flows = |fold: &mut crate::fold::PageFold| Ok(fold.flows(from, to, make));
        Ok(self.page_fold(ctx, range_from, range_to, flows).await?.flatten())
    }

    async fn error_sessions(
        &self,
        ctx: &Ctx,
        subject: (&str, &str, &BTreeMap<String, Value>),
    ) -> Result<Option<(u64, u64)>, AnalysisError> {
        // `count(DISTINCT session_id)` of the failed requests per side and
        // segment values, summed over the values the segment keeps.
        let mut seen: HashSet<(bool, Vec<Option<Arc<str>>>, Arc<str>)> = HashSet::new();
        let kept = self
            .subject_requests(ctx, subject, |cur, r, segs| {
                if let Some(session) = r.session.as_ref().filter(|_| r.err) {
                    seen.insert((cur, segs.iter().map(|v| v.cloned()).collect(), Arc::clone(session)));
                }
            })
            .await?;
        let current = seen.iter().filter(|k| k.0).count() as u64;
        Ok(kept.then(|| (seen.len() as u64 - current, current)))
    }

    async fn latency_evidence(
        &self,
        ctx: &Ctx,
        subject: (&str, &str, &BTreeMap<String, Value>),
    ) -> Result<Option<Vec<crate::detector::SideLatency>>, AnalysisError> {
        // Per side (baseline, current): the durations and the sessions of the requests that succeeded.
        let mut sides: [(Vec<i64>, HashSet<Arc<str>>); 2] = Default::default();
        let kept = self
            .subject_requests(ctx, subject, |cur, r, _| {
                if r.err {
                    return;
                }
                let side = &mut sides[usize::from(cur)];
                side.0.push(r.duration_ns);
                if let Some(s) = &r.session {
                    side.1.insert(Arc::clone(s));
                }
            })
            .await?;
        if !kept {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (current, (mut durations, sessions)) in [false, true].into_iter().zip(sides) {
            durations.sort_unstable();
            let ms = [0.5, 0.95, 0.99]
                .map(|p| crate::requests::percentile_cont(&durations, p).map_or(f64::NAN, crate::requests::round_ms));
            if !durations.is_empty() {
                out.push(crate::detector::SideLatency {
                    current,
                    requests: durations.len() as u64,
                    sessions: sessions.len() as u64,
                    ms,
                });
            }
        }
        Ok(Some(out))
    }

    fn folded(&self, sql: &str) -> Option<Arc<detectors::Folded>> {
        let folded = self.folded.get(sql)?;
        if self.log.is_some() {
            self.count(sql, folded.statement_rows());
        }
        Some(Arc::clone(folded))
    }

    fn answered(&self, sql: &str, rows: &Rows) {
        self.note(sql, rows);
        self.ran().insert(sql.to_owned(), rows.clone());
    }

    fn noted(&self, sql: &str, rows: usize) {
        self.count(sql, rows);
    }
}

impl TenantSql<'_> {
    /// The server requests of a subject (service, operation, segment) on
    /// either side of the pass, as a detector's statement over spans sees
    /// them (without a segment, by the spans' own segment values), from the
    /// requests kept by minute: `each(current, request, segment values)`.
    /// `false` where the pass keeps none or they are not held (the caller
    /// runs the SQL).
    async fn subject_requests(
        &self,
        ctx: &Ctx,
        (service, operation, segment): (&str, &str, &BTreeMap<String, Value>),
        mut each: impl FnMut(bool, &crate::requests::Request, &[Option<&Arc<str>>]),
    ) -> Result<bool, AnalysisError> {
        let Some(book) = self.requests else { return Ok(false) };
        let (Some(baseline_end), Some(split)) =
            (ctx.baseline_end.timestamp_nanos_opt(), ctx.split.timestamp_nanos_opt())
        else {
            return Ok(false);
        };
        let cut = Cut::new(&ctx.segments, service, operation, segment);
        let site = [(service.to_owned(), operation.to_owned())];
        let range = (ctx.baseline_start, ctx.end);
        book.requests(
            self.engine,
            self.tenant,
            &ctx.segments,
            &site,
            range,
            segment.is_empty(),
            |service, operation, r, segs| {
                let cur = r.start >= split;
                if !(cur || r.start < baseline_end) {
                    return;
                }
                if cut.holds(service, operation, segs) {
                    each(cur, r, segs);
                }
            },
        )
        .await
    }

    /// Moves the page fold kept between passes to `[from, to)` and hands it
    /// to `then`; `None` where the pass keeps no fold.
    async fn page_fold<T>(
        &self,
        ctx: &Ctx,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        then: impl FnOnce(&mut crate::fold::PageFold) -> Result<T, AnalysisError>,
    ) -> Result<Option<T>, AnalysisError> {
        let Some((slot, shared)) = self.pages else { return Ok(None) };
        let session_segments = ctx.session_vars("").into_iter().find(|(k, _)| *k == "session_segments");
        let (Some((_, session_segments)), Some(from), Some(to)) =
            (session_segments, from.timestamp_nanos_opt(), to.timestamp_nanos_opt())
        else {
            return Ok(None);
        };
        let mut held = slot.lock().await;
        let mut fold = held.take().unwrap_or_default();
        let source = (self.tenant.clone(), session_segments, self.engine.store().sessions_version());
        let read = |sql: String| {
            let key = (self.tenant.clone(), self.engine.store().sessions_version(), sql);
            shared.rows(key, |sql| async move { query(self.engine, self.tenant, &sql).await })
        };
        let changed = |version| self.engine.store().sessions_changed_since(self.tenant, version);
        let out = match fold.advance(source, ctx.segments.columns.len(), from, to, changed, read).await {
            Ok(()) => then(&mut fold),
            Err(e) => Err(e),
        };
        // Kept for the next pass, which reads again the minutes of the
        // sessions that changed since.
        if out.is_ok() {
            *held = Some(fold);
        }
        out.map(Some)
    }
}

/// A detector's statement over the metrics fold: its kind, how it renders
/// it, its subjects folded with a history's sums, and its rows where they are
/// not.
type Folding<'a> = (
    FindingKind,
    fn(&Ctx, &str) -> String,
    &'a dyn Fn(&crate::fold::HistorySums) -> detectors::Folded,
    fn(&crate::fold::MetricsFold, crate::fold::Side, usize) -> Result<Rows, arrow::error::ArrowError>,
);

/// A shared statement, then each of the two statements of a pass (its
/// window's and its last minute's) and how its rows are summed out of the
/// shared one's.
type Pair = (String, (String, sides::Regroup<'static>), (String, sides::Regroup<'static>));

/// A shared statement's keys: the service, the operation, its segment
/// columns `segs`, then `more`.
fn statement_keys(segs: &[String], more: &[&str]) -> Vec<String> {
    ["service", "operation"]
        .iter()
        .map(|k| (*k).to_owned())
        .chain(segs.iter().cloned())
        .chain(more.iter().map(|k| (*k).to_owned()))
        .collect()
}

/// What a task spawned beside a pass's own work gave; its panic goes on in
/// the pass.
async fn joined<T>(task: tokio::task::JoinHandle<Result<T, AnalysisError>>, what: &str) -> Result<T, AnalysisError> {
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(AnalysisError::Config(format!("{what} stopped: {e}"))),
    }
}

/// Runs `sql` as `tenant`, on the query engine's own runtime.
async fn query(engine: &QueryEngine, tenant: &Tenant, sql: &str) -> Result<Rows, AnalysisError> {
    let out = engine
        .collect(Some(tenant.clone()), sql)
        .await
        .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: sql.to_owned() })?;
    Ok(Rows::new(out.batches))
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
}

impl Analyzer {
    pub fn new(engine: QueryEngine, config: AnalysisConfig) -> Result<Self, AnalysisError> {
        config.validate().map_err(AnalysisError::Config)?;
        let segments = Segments::new(&config.segments).map_err(AnalysisError::Config)?;
        let detectors = detectors::registry();
        for d in &detectors {
            d.kind().register();
        }
        let rolled = &engine.store().config().rollup_segments;
        let store = engine.store().config();
        let rollups = store.rollups && config.segments.iter().all(|s| s == "service.version" || rolled.contains(s));
        let sessions = rollups
            && store.session_timeout_secs == config.session_timeout_secs
            && store.retry_interval_secs == config.retry_interval_secs;
        Ok(Self {
            engine,
            config,
            segments,
            detectors,
            rollups,
            sessions,
            recorder: None,
            journal: false,
            calls_fold: Arc::default(),
            page_fold: Arc::default(),
            session_read: Arc::default(),
            metrics_fold: Arc::default(),
            traces: Arc::default(),
            failing: Arc::default(),
            versions: Arc::default(),
            requests: Arc::default(),
        })
    }

    /// The same analyzer, recording each pass in the flight recorder (its
    /// windows, then its findings) and marking each finding with the run.
    pub fn recording(mut self, runs: Arc<crate::recorder::RunsDb>) -> Self {
        self.recorder = Some(runs);
        self.journal = true;
        self
    }

    /// The same analyzer reading every window from spans, never from
    /// `span_metrics` (for comparing the two).
    pub fn reading_spans_only(mut self) -> Self {
        self.rollups = false;
        self.sessions = false;
        self
    }

    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    /// Sampled traces (answered from the ones earlier passes read, read from
    /// the store) since the analyzer began.
    pub fn sampled_traces(&self) -> (u64, u64) {
        self.traces.counts()
    }

    /// The traces of failing samples (answered from the ones earlier passes
    /// read, read from the store) since the analyzer began.
    pub fn failing_traces(&self) -> (u64, u64) {
        self.failing.counts()
    }

    /// The passes continuous detection would have run over `(from, to]`.
    pub fn replay(&self, from: DateTime<Utc>, to: DateTime<Utc>, max_passes: Option<usize>) -> Vec<Windows> {
        Windows::replay(&self.config, from, to, max_passes)
    }

    pub fn engine(&self) -> &QueryEngine {
        &self.engine
    }

    /// The aggregation queries a pass starts with, as run: every detector's SQL
    /// over the windows (the drop-off funnels of every configured flow in one
    /// query). For
    /// comparing engines on the same statements.
    pub fn detector_queries(&self, w: Windows) -> Vec<(String, String)> {
        let ctx = self.ctx(w, None).unrolled();
        self.detectors.iter().flat_map(|d| d.queries(&ctx)).collect()
    }

    fn detector(&self, kind: FindingKind) -> Result<&dyn Detector, AnalysisError> {
        self.detectors
            .iter()
            .find(|d| d.kind() == kind)
            .map(|d| d.as_ref())
            .ok_or_else(|| AnalysisError::Config(format!("no detector for {kind}")))
    }

    async fn rows(&self, tenant: &Tenant, sql: &str) -> Result<Rows, AnalysisError> {
        // Trace samples and the spans of their traces: read once, never kept.
        query(&self.engine, tenant, sql).await
    }

    fn ctx(&self, w: Windows, settled: Option<DateTime<Utc>>) -> Ctx {
        Ctx {
            short: false,
            settled,
            baseline_start: w.baseline_start,
            baseline_end: w.baseline_end,
            split: w.split,
            end: w.end,
            segments: self.segments.clone(),
            config: self.config.clone(),
            lean: false,
            rollups: self.rollups,
            sessions: self.sessions && self.engine.store().sessions_ready(),
        }
    }

    /// Runs every detector over `w` and returns the findings, causes first with
    /// their symptoms linked under them.
    pub async fn pass(&self, tenant: &Tenant, w: Windows) -> Result<PassReport, AnalysisError> {
        self.pass_settled(tenant, w, None).await
    }

    /// A pass as continuous detection runs it, at the server's wall clock:
    /// trace samples leave out traces that received a span after `settled`
    /// (they are still arriving).
    pub async fn pass_settled(
        &self,
        tenant: &Tenant,
        w: Windows,
        settled: Option<DateTime<Utc>>,
    ) -> Result<PassReport, AnalysisError> {
        let started = Utc::now();
        let mut report = self.judge(tenant, w, settled, false, &Known::default()).await?;
        self.record(tenant, "pass", w, settled, started, &mut report);
        Ok(report)
    }

    /// Records a pass that ran: its windows as the run's input, then what it
    /// found; each finding gets the run's id.
    fn record(
        &self,
        tenant: &Tenant,
        mode: &str,
        w: Windows,
        settled: Option<DateTime<Utc>>,
        started: DateTime<Utc>,
        report: &mut PassReport,
    ) {
        let Some(runs) = &self.recorder else { return };
        let rec = runs.begin(tenant, "detection", &format!("{mode} {} – {}", w.split, w.end));
        let input = crate::recorder::pass_input(mode, &w, settled);
        let first = rec.step(crate::recorder::StepRecord {
            kind: "input",
            name: "windows",
            parents: &[],
            started_at: started,
            input: &input,
            output: &input,
            summary: format!("baseline {} – {}, window {} – {}", w.baseline_start, w.baseline_end, w.split, w.end),
        });
        let mut ids: BTreeMap<String, String> = BTreeMap::from([("windows".to_owned(), first.clone())]);
        let mut last = vec![first];
        for step in std::mem::take(&mut report.steps) {
            let parents: Vec<String> = step.parents.iter().filter_map(|p| ids.get(p).cloned()).collect();
            let id = rec.step(crate::recorder::StepRecord {
                kind: step.kind,
                name: &step.name,
                parents: &parents,
                started_at: started,
                input: &step.input,
                output: &step.output,
                summary: step.summary,
            });
            // The findings follow from the groups of each window judged.
            if step.name.ends_with("cluster") {
                if last.first().is_some_and(|l| ids.get("windows") == Some(l)) {
                    last.clear();
                }
                last.push(id.clone());
            }
            ids.insert(step.name, id);
        }
        let found = serde_json::to_value(&report.findings).unwrap_or_default();
        rec.step(crate::recorder::StepRecord {
            kind: "stage",
            name: "detect",
            parents: &last,
            started_at: started,
            input: &input,
            output: &found,
            summary: format!("{} findings from {} tests", report.findings.len(), report.tests),
        });
        rec.finish();
        for f in &mut report.findings {
            f.run_id = Some(rec.id().to_owned());
        }
    }

    /// Runs a recorded pass again over its recorded windows and compares its
    /// findings with the recorded ones.
    pub async fn replay_recorded(
        &self,
        tenant: &Tenant,
        run_id: &str,
        steps: &[crate::recorder::RecordedStep],
    ) -> crate::recorder::ReplayReport {
        use crate::recorder::{Difference, ReplayReport, check_integrity};
        let mut report = ReplayReport { run_id: run_id.to_owned(), ..Default::default() };
        check_integrity(steps, &mut report);
        let Some(detect) = steps.iter().find(|s| s.step.name == "detect") else {
            report.differences.push(Difference {
                step: String::new(),
                name: "detect".into(),
                reason: "the run recorded no pass to replay".into(),
            });
            return report;
        };
        let differ = |reason: String, report: &mut ReplayReport| {
            report.differences.push(Difference { step: detect.step.id.clone(), name: "detect".into(), reason });
        };
        let Some((mode, w, settled)) = detect.input.as_ref().and_then(crate::recorder::read_pass_input) else {
            differ("its recorded windows do not read back".into(), &mut report);
            return report;
        };
        report.from_recording += 1;
        report.replayed += 1;
        let plain = Self { recorder: None, journal: true, ..self.clone() };
        let ran = if mode == "continuous" {
            plain.continuous(tenant, w, settled).await
        } else {
            plain.pass_settled(tenant, w, settled).await
        };
        match ran {
            Err(e) => differ(format!("the pass failed on replay: {e}"), &mut report),
            Ok(r) => {
                compare_steps(steps, &r.steps, &mut report);
                let now = serde_json::to_value(&r.findings).unwrap_or_default();
                let then = detect.output.clone().unwrap_or_default();
                if !crate::recorder::same_content(&now, &then) {
                    let (a, b) = (r.findings.len(), then.as_array().map_or(0, Vec::len));
                    let fp = |v: &serde_json::Value| -> Vec<String> {
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f["fingerprint"].as_str().map(str::to_owned))
                            .collect()
                    };
                    let (now_fp, then_fp) = (fp(&now), fp(&then));
                    let new: Vec<&String> = now_fp.iter().filter(|f| !then_fp.contains(f)).collect();
                    let gone: Vec<&String> = then_fp.iter().filter(|f| !now_fp.contains(f)).collect();
                    let mut paths = Vec::new();
                    crate::recorder::diff_paths(&now, &then, "findings", &mut paths);
                    differ(
                        format!(
                            "the pass now finds {a} findings (recorded {b}); new {new:?}, gone {gone:?}; differing: {}",
                            paths.join(", ")
                        ),
                        &mut report,
                    );
                }
            }
        }
        report
    }

    /// A pass as continuous detection runs it (live, or replayed): `w`, then
    /// its last `recent_secs` against the same baseline by the detectors that
    /// judge so short a window ([`Detector::judges_short_windows`]). A fault
    /// that stands out within a minute is reported by the first pass after
    /// its onset, instead of once it fills enough of the window.
    ///
    /// The last minute says that an operation broke, not where: it is judged
    /// for the whole operation, or for a release new in it (alone, or with
    /// one other segment value). A minute of one region or OS is too thin for
    /// "the rest shows none" to mean anything, so narrower segments are left
    /// to the whole window. And where the whole window reports the operation
    /// (or links it under one of its findings) for the same kind of trouble,
    /// in whatever segment, the short window's account is left out: the
    /// whole window's has more evidence. A short window's account of another
    /// kind of trouble that starts where a whole window's finding starts
    /// joins that finding (see `continuous_unrecorded`).
    pub async fn continuous(
        &self,
        tenant: &Tenant,
        w: Windows,
        settled: Option<DateTime<Utc>>,
    ) -> Result<PassReport, AnalysisError> {
        let started = Utc::now();
        let mut report = self.continuous_unrecorded(tenant, w, settled).await?;
        self.record(tenant, "continuous", w, settled, started, &mut report);
        Ok(report)
    }

    async fn continuous_unrecorded(
        &self,
        tenant: &Tenant,
        w: Windows,
        settled: Option<DateTime<Utc>>,
    ) -> Result<PassReport, AnalysisError> {
        let recent = chrono::Duration::seconds(self.config.recent_secs as i64);
        if recent.is_zero() || w.split + recent >= w.end {
            return self.judge(tenant, w, settled, false, &Known::default()).await;
        }
        let last = Windows { split: w.end - recent, ..w };
        let known = self.shared_sides(tenant, w, last, settled).await?;
        // The last minute is judged beside the window, on another worker
        // where the runtime has one: the two share nothing but what
        // `shared_sides` read for both.
        let short = {
            let (this, tenant, known) = (self.clone(), tenant.clone(), known.clone());
            tokio::spawn(async move { this.judge(&tenant, last, settled, true, &known).await })
        };
        let report = self.judge(tenant, w, settled, false, &known).await;
        let short = joined(short, "the last minute's judgement").await?;
        let mut report = report?;
        // Per kind of trouble, service and operation the whole window
        // reports (or links), the finding that holds it.
        let mut known: BTreeMap<(FindingKind, String, String), usize> = BTreeMap::new();
        for (i, f) in report.findings.iter().enumerate() {
            known.entry((f.kind, f.service.clone(), f.operation.clone())).or_insert(i);
            for l in &f.evidence.linked {
                known.entry((l.kind, l.service.clone(), l.operation.clone())).or_insert(i);
            }
        }
        let mut fresh: Vec<(Finding, Account)> = Vec::new();
        for (f, a) in short.findings.into_iter().zip(short.accounts) {
            let Some(&i) = known.get(&(f.kind, f.service.clone(), f.operation.clone())) else {
                fresh.push((f, a));
                continue;
            };
            // The whole window's account stands. What the minute links under
            // it that the whole window has not seen (users leaving a funnel
            // at the failing step, a horizon after they reached it) is the
            // same problem: it joins the finding that holds the trouble.
            for l in f.evidence.linked {
                let key = (l.kind, l.service.clone(), l.operation.clone());
                if let std::collections::btree_map::Entry::Vacant(e) = known.entry(key) {
                    e.insert(i);
                    report.findings[i].evidence.linked.push(l);
                }
            }
        }
        for (f, a) in fresh {
            // Trouble that starts where one of the whole window's findings
            // starts is that finding's problem: the two accounts are one
            // finding, headed by the account clustering would choose in one
            // pass (the short window's retries for everyone over the whole
            // window's error rate in one OS), with the other linked under it.
            // A minute of users leaving a funnel is the consequence of what
            // they hit at the step, which the whole window holds: it is
            // linked under that account and never heads it, so that the
            // finding does not change head (and ticket) with one minute.
            let Some(i) = report.accounts.iter().position(|w| w.member.cause == a.member.cause) else {
                report.findings.push(f);
                report.accounts.push(a);
                continue;
            };
            let pair = [report.accounts[i].member.clone(), a.member.clone()];
            if f.kind != FindingKind::DropOff && cluster::primary(&pair, &[0, 1]) == 1 {
                let whole = std::mem::replace(&mut report.findings[i], f);
                let linked = report.accounts[i].linked(&whole);
                report.findings[i].evidence.linked.splice(0..0, linked);
                report.accounts[i] = a;
            } else {
                let linked = a.linked(&f);
                report.findings[i].evidence.linked.extend(linked);
            }
        }
        report.tests += short.tests;
        report.steps.extend(short.steps.into_iter().map(|mut s| {
            s.name = format!("last minute: {}", s.name);
            for p in s.parents.iter_mut().filter(|p| p.as_str() != "windows") {
                *p = format!("last minute: {p}");
            }
            s
        }));
        let mut found: Vec<(Finding, Account)> =
            std::mem::take(&mut report.findings).into_iter().zip(std::mem::take(&mut report.accounts)).collect();
        found.sort_by(|(a, _), (b, _)| b.impact.total_cmp(&a.impact).then(a.fingerprint.cmp(&b.fingerprint)));
        (report.findings, report.accounts) = found.into_iter().unzip();
        report.elapsed += short.elapsed;
        Ok(report)
    }

    /// The rows of the statements that a continuous pass's window `w` and its
    /// last minute `last` both ask for, each keyed by its SQL, from one read
    /// of their baseline per pair ([`crate::sides`]): the latency and error
    /// rate over `span_metrics`, and the calls over `sessions` that the retry
    /// and silent-recovery detectors share. Empty when the pass reads spans.
    async fn shared_sides(
        &self,
        tenant: &Tenant,
        w: Windows,
        last: Windows,
        settled: Option<DateTime<Utc>>,
    ) -> Result<Known, AnalysisError> {
        let mut known = Known::default();
        let (whole, minute) = (self.ctx(w, settled), Ctx { short: true, ..self.ctx(last, settled) });
        if !whole.rolled() || !minute.rolled() {
            return Ok(known);
        }
        let active = |k: FindingKind| self.detectors.iter().any(|d| d.kind() == k);
        let segs = whole.segments.names();
        let keyed = |more: &[&str]| -> Vec<String> { statement_keys(&segs, more) };
        let three = format!(
            "CASE WHEN minute >= {} THEN 2 WHEN minute >= {} THEN 1 ELSE 0 END",
            sql::ts(minute.split),
            sql::ts(whole.split)
        );
        /// A detector's statement over `span_metrics`: its template, whose
        /// side is the `{{side}}` placeholder, how the detector renders it,
        /// its keys besides the service, operation and segments, and its sums.
        struct Rolled {
            kind: FindingKind,
            template: &'static str,
            query: fn(&Ctx, &str) -> String,
            more_keys: &'static [&'static str],
            sums: &'static [(&'static str, &'static str)],
        }
        let mut pairs: Vec<Pair> = Vec::new();
        let rolled = [
            Rolled {
                kind: FindingKind::LatencyRegression,
                template: detectors::latency_regression::ROLLED_SQL,
                query: detectors::latency_regression::query,
                more_keys: &["bucket"],
                sums: &[("n", "n")],
            },
            Rolled {
                kind: FindingKind::ErrorRateRegression,
                template: detectors::error_rate_regression::ROLLED_SQL,
                query: detectors::error_rate_regression::query,
                more_keys: &["error_sessions"],
                sums: &[("n", "n"), ("errors", "errors"), ("own_errors", "own_errors")],
            },
        ];
        for Rolled { kind, template, query, more_keys, sums } in rolled {
            if !active(kind) {
                continue;
            }
            let (keys, sums) = (keyed(more_keys), sums.to_vec());
            let mut vars = whole.metric_vars("");
            vars.retain(|(k, _)| *k != "side");
            vars.push(("side", three.clone()));
            let window = sides::Regroup { side: "cur", map: sides::window_side, present: None, keys, sums };
            let minute_of = sides::Regroup {
                map: sides::last_minute_side,
                keys: window.keys.clone(),
                sums: window.sums.clone(),
                ..window
            };
            pairs.push((sql::render(template, &vars), (query(&whole, ""), window), (query(&minute, ""), minute_of)));
        }
        // The calls of sessions beside the cells of `span_metrics`, on
        // another worker where the runtime has one.
        let calls = {
            let (this, tenant, whole, minute) = (self.clone(), tenant.clone(), whole.clone(), minute.clone());
            tokio::spawn(async move { this.shared_calls(&tenant, &whole, &minute).await })
        };
        let bounds = crate::fold::Bounds::new(whole.baseline_start, whole.split, minute.split, whole.end);
        let metrics = match bounds.filter(|_| whole.baseline_end == whole.split && !pairs.is_empty()) {
            Some(b) => self.folded_metrics(tenant, &whole, &minute, b, &mut known).await,
            None => self.regrouped(tenant, pairs, &mut known.rows).await,
        };
        let calls = joined(calls, "the calls of sessions").await;
        metrics?;
        known.rows.extend(calls?);
        Ok(known)
    }

    /// Each statement of `pairs` from its shared statement's rows, into `known`.
    async fn regrouped(
        &self,
        tenant: &Tenant,
        pairs: Vec<Pair>,
        known: &mut BTreeMap<String, Rows>,
    ) -> Result<(), AnalysisError> {
        for (shared, window, minute_of) in pairs {
            let rows = self.rows(tenant, &shared).await?;
            for (statement, regroup) in [window, minute_of] {
                let out = sides::regroup(&rows, &regroup)
                    .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: shared.clone() })?;
                known.insert(statement, out);
            }
        }
        Ok(())
    }

    /// The rows of the retry and silent-recovery detectors' statements of a
    /// continuous pass's window `whole` and last minute `minute`, and of the
    /// last minute's retry history, from one statement over `sessions` (the
    /// calls of sessions, folded from the last pass's where the windows
    /// follow on). Empty when neither detector runs or the pass reads spans.
    async fn shared_calls(
        &self,
        tenant: &Tenant,
        whole: &Ctx,
        minute: &Ctx,
    ) -> Result<BTreeMap<String, Rows>, AnalysisError> {
        let mut known = BTreeMap::new();
        let active = |k: FindingKind| self.detectors.iter().any(|d| d.kind() == k);
        let segs = whole.segments.names();
        let keyed = |more: &[&str]| -> Vec<String> { statement_keys(&segs, more) };
        if whole.sessioned()
            && minute.sessioned()
            && [FindingKind::Retry, FindingKind::SilentRecovery].into_iter().any(active)
        {
            let mut vars = whole.session_vars("");
            vars.push(("short_split", sql::ts(minute.split)));
            // Each count of `calls_sessions.sql`, and its name for the last
            // minute in the shared statement.
            let counts = [
                ("retrying_sessions", "retrying_sessions_s"),
                ("retries", "retries_s"),
                ("auto_retries", "auto_retries_s"),
                ("attempts", "attempts_s"),
                ("error_sessions", "error_sessions_s"),
                ("recovered_sessions", "recovered_sessions_s"),
                ("auto_recovered_sessions", "auto_recovered_sessions_s"),
            ];
            let window = sides::Regroup {
                side: "cur",
                map: Some,
                present: None,
                keys: keyed(&[]),
                sums: std::iter::once(("sessions", "sessions")).chain(counts.iter().map(|(c, _)| (*c, *c))).collect(),
            };
            let minute_of = sides::Regroup {
                side: "cur_s",
                map: Some,
                present: Some("present_s"),
                keys: window.keys.clone(),
                sums: std::iter::once(("sessions", "sessions")).chain(counts.iter().map(|(c, s)| (*s, *c))).collect(),
            };
            let shared = sql::render(include_str!("detectors/calls_sessions_last_minute.sql"), &vars);
            // Folded from the last pass's where the windows follow on from its.
            let session_segments = vars.iter().find(|(k, _)| *k == "session_segments").map(|(_, v)| v.clone());
            let bounds = crate::fold::Bounds::new(whole.baseline_start, whole.split, minute.split, whole.end);
            let rows = match (session_segments, bounds) {
                (Some(session_segments), Some(bounds)) if whole.baseline_end == whole.split => {
                    let taken = self.calls_fold.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    let mut fold = taken.unwrap_or_default();
                    let source = (tenant.clone(), session_segments, self.engine.store().sessions_version());
                    let read = |sql: String| {
                        let key = (tenant.clone(), self.engine.store().sessions_version(), sql);
                        self.session_read.rows(key, |sql| async move { query(&self.engine, tenant, &sql).await })
                    };
                    let changed = |version| self.engine.store().sessions_changed_since(tenant, version);
                    let rows = fold.rows(source, segs.len(), bounds, changed, read).await;
                    // The last minute's retries against the minutes before
                    // (`retry_history_sessions.sql`), from the same rows.
                    if let (Ok(_), Some(statement)) = (&rows, detectors::retry_history_query(minute, "")) {
                        let (from, end, window) = detectors::history_span(minute);
                        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt();
                        if let (Some(from), Some(end)) = (ns(from), ns(end))
                            && let Some(history) = fold.retry_history(from, end, window * 1_000_000_000, segs.len())
                        {
                            let history = history
                                .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: statement.clone() })?;
                            known.insert(statement, history);
                        }
                    }
                    // As the page fold (`TenantSql::session_pages`): kept for the next pass.
                    if rows.is_ok() {
                        *self.calls_fold.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fold);
                    }
                    rows?
                }
                _ => self.rows(tenant, &shared).await?,
            };
            for (statement, regroup) in
                [(detectors::retry::query(whole, ""), window), (detectors::retry::query(minute, ""), minute_of)]
            {
                let out = sides::regroup(&rows, &regroup)
                    .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: shared.clone() })?;
                known.insert(statement, out);
            }
        }
        Ok(known)
    }

    /// The rows of the latency and error-rate statements of a continuous
    /// pass's window `whole` and last minute `minute` (bounds `b`), and of
    /// their histories, from the cells of `span_metrics` folded from the last
    /// pass's ([`crate::fold::MetricsFold`]), into `known`.
    async fn folded_metrics(
        &self,
        tenant: &Tenant,
        whole: &Ctx,
        minute: &Ctx,
        b: crate::fold::Bounds,
        known: &mut Known,
    ) -> Result<(), AnalysisError> {
        use crate::fold::Side;
        let active = |k: FindingKind| self.detectors.iter().any(|d| d.kind() == k);
        let segments = whole.segments.names().len();
        let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt();
        // The histories read before the baseline's start.
        let from = [whole, minute].into_iter().filter_map(|c| ns(detectors::history_span(c).0)).min().unwrap_or(b.from);
        let vars = whole.metric_vars("");
        let metric_segments = vars.iter().find(|(k, _)| *k == "metric_segments").map(|(_, v)| v.clone());
        let source = (tenant.clone(), metric_segments.unwrap_or_default(), self.engine.store().metrics_version());
        let taken = self.metrics_fold.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let mut fold = taken.unwrap_or_default();
        let read = |sql: String| async move { query(&self.engine, tenant, &sql).await };
        let changed = |version| self.engine.store().metrics_changed_since(tenant, version);
        fold.advance(source, segments, from, b, changed, read).await?;
        let failed = |sql: &str| {
            let sql = sql.to_owned();
            move |e: arrow::error::ArrowError| AnalysisError::Query { message: e.to_string(), sql }
        };
        known.segments = segments;
        for (c, side) in [(whole, Side::Window), (minute, Side::LastMinute)] {
            let (from, end, window) = detectors::history_span(c);
            let history = detectors::history_rolled_query(c, "");
            // The detectors' subjects with their histories, where the fold
            // holds the histories too; else their statements' rows, and the
            // histories' statements run as SQL.
            let span = match (&history, ns(from), ns(end)) {
                (Some(_), Some(from), Some(end)) => Some((from, end, window * 1_000_000_000)),
                _ => None,
            };
            // One history for both detectors' subjects.
            let sums = span.and_then(|s| fold.history_sums(s));
            let latency = |h: &_| detectors::Folded::Latency(fold.latency_subjects(side, h));
            let errors = |h: &_| detectors::Folded::Errors(fold.error_subjects(side, h));
            let statements: [Folding<'_>; 2] = [
                (
                    FindingKind::LatencyRegression,
                    detectors::latency_regression::query,
                    &latency,
                    crate::fold::MetricsFold::latency,
                ),
                (
                    FindingKind::ErrorRateRegression,
                    detectors::error_rate_regression::query,
                    &errors,
                    crate::fold::MetricsFold::error_rate,
                ),
            ];
            for (kind, query, subjects, rows) in statements {
                if !active(kind) {
                    continue;
                }
                let q = query(c, "");
                match sums.as_ref().map(subjects) {
                    Some(folded) => drop(known.folded.insert(q, Arc::new(folded))),
                    None => {
                        let rows = rows(&fold, side, segments).map_err(failed(&q))?;
                        known.rows.insert(q, rows);
                    }
                }
            }
        }
        // Kept for the next pass, which reads again the minutes the store
        // changed since.
        *self.metrics_fold.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fold);
        Ok(())
    }

    /// One pass over `w`; `short` runs only the detectors that judge short
    /// windows; `known` answers statements ([`TenantSql`]).
    async fn judge(
        &self,
        tenant: &Tenant,
        w: Windows,
        settled: Option<DateTime<Utc>>,
        short: bool,
        known: &Known,
    ) -> Result<PassReport, AnalysisError> {
        let started = Instant::now();
        if w.baseline_end <= w.baseline_start || w.end <= w.split || w.split < w.baseline_end {
            return Err(AnalysisError::Config(
                "windows must be ordered: baseline start < baseline end <= current start < current end".into(),
            ));
        }
        let ctx = Ctx { short, ..self.ctx(w, settled) };
        self.traces.turn(self.engine.store(), tenant);
        self.failing.turn(self.engine.store(), tenant);
        self.versions.turn(self.engine.store(), tenant);
        self.requests.turn(self.engine.store(), tenant);
        let logged = self.journal;
        let sql = TenantSql::new(&self.engine, tenant, logged, known)
            .keeping(&self.page_fold, &self.session_read)
            .with_requests(&self.requests);
        let mut steps: Vec<PassStep> = Vec::new();
        let mut tests = Vec::new();
        let mut flows = Vec::new();
        for d in self.detectors.iter().filter(|d| !short || d.judges_short_windows()) {
            let tested = d.tests(&ctx, &sql).await?;
            let before = tests.len();
            tests.extend(tested.tests.into_iter().filter(|t| !short || detectors::judged_in_short_windows(t)));
            if logged {
                let asked = sql.asked();
                let made = tests.len() - before;
                steps.push(PassStep {
                    kind: "query",
                    name: format!("{} tests", d.kind().as_str()),
                    parents: vec!["windows".into()],
                    input: serde_json::json!({ "sql": asked.iter().map(|(q, _)| q).collect::<Vec<_>>() }),
                    output: serde_json::json!({
                        "rows": asked.iter().map(|(_, n)| n).collect::<Vec<_>>(),
                        "tests": made, "flows": tested.flows,
                    }),
                    summary: format!(
                        "{} queries, {} rows, {made} tests",
                        asked.len(),
                        asked.iter().map(|a| a.1).sum::<usize>()
                    ),
                });
            }
            flows.extend(tested.flows);
        }

        // Follow-up tests (thin segments) confirm; they take no part in discovery.
        let discovery: Vec<usize> = (0..tests.len()).filter(|i| !tests[*i].follow_up).collect();
        // Discoveries are controlled per subject (kind, service, operation),
        // which is what a finding reports, then within the subjects selected:
        // a lone marginal test is no finding because other faults are many.
        let mut subjects: BTreeMap<(FindingKind, &str, &str), usize> = BTreeMap::new();
        let family: Vec<usize> = discovery
            .iter()
            .map(|i| {
                let t = &tests[*i];
                let next = subjects.len();
                *subjects.entry((t.kind, t.service.as_str(), t.operation.as_str())).or_insert(next)
            })
            .collect();
        let p: Vec<f64> = discovery.iter().map(|i| tests[*i].judgement.p_value).collect();
        let q = stats::two_level_fdr(&p, &family, self.config.fdr);
        for (i, q) in discovery.into_iter().zip(q) {
            tests[i].q_value = q;
        }
        let n_tests = tests.len();
        let mut candidates = detectors::choose_segments(&tests, self.config.fdr);
        candidates.extend(detectors::drop_offs_errors_explain(&tests, &candidates, self.config.fdr));
        debug!(tests = n_tests, candidates = candidates.len(), "detection tests done");
        if logged {
            let queried: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
            let mut chosen: Vec<serde_json::Value> = candidates.iter().map(|c| test_json(&c.test)).collect();
            chosen.sort_by_key(|v| v.to_string());
            steps.push(PassStep {
                kind: "decision",
                name: "select".into(),
                parents: queried,
                input: serde_json::json!({ "tests": n_tests, "fdr": self.config.fdr }),
                summary: format!("{} candidates of {n_tests} tests at FDR {}", chosen.len(), self.config.fdr),
                output: serde_json::json!({ "candidates": chosen }),
            });
        }

        // Every candidate's sample of requests in one read of the current
        // window, and the spans beneath its failing ones: those of the traces
        // the last passes did not read, in one read by trace id.
        let picks = self.picks(tenant, &ctx, &candidates).await?;
        let failing: Vec<&Pick> = candidates
            .iter()
            .zip(&picks)
            .filter(|(c, _)| !self.latency(&c.test))
            .flat_map(|(_, p)| p.sample.iter())
            .collect();
        let spans = self.failing.spans(tenant, &failing, |q| async move { self.rows(tenant, &q).await }).await?;
        self.prefill_samples(tenant, &ctx, &candidates).await?;
        // Two candidates at a time: a candidate waits on its statements (the
        // trace samples of both windows), which leave a core idle.
        let examined: Vec<Examined> = futures::stream::iter(candidates.into_iter().zip(picks))
            .map(|(c, picked)| self.examine(tenant, &ctx, c, picked, &spans))
            .buffered(2)
            .try_collect()
            .await?;
        if logged {
            let asked = sql.asked();
            let mut causes: Vec<serde_json::Value> = examined
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "kind": e.test.kind.as_str(), "service": e.test.service, "operation": e.test.operation,
                        "segment": e.test.segment, "cause": {"service": e.cause.0, "operation": e.cause.1},
                        "why": e.why, "exemplars": e.exemplars.len(),
                    })
                })
                .collect();
            causes.sort_by_key(|v| v.to_string());
            let moved = causes
                .iter()
                .filter(|c| c["cause"]["service"] != c["service"] || c["cause"]["operation"] != c["operation"])
                .count();
            steps.push(PassStep {
                kind: "decision",
                name: "attribute".into(),
                parents: vec!["select".into()],
                input: serde_json::json!({ "sql": asked.iter().map(|(q, _)| q).collect::<Vec<_>>() }),
                summary: format!("{} candidates traced; {moved} start elsewhere", causes.len()),
                output: serde_json::json!({ "candidates": causes }),
            });
        }
        // Which versions first served when: read only when there is something to attribute.
        let versions = if examined.is_empty() {
            Rows::new(Vec::new())
        } else {
            let q = attribution::versions_query(&ctx);
            match self.versions.versions(&self.engine, tenant, &ctx).await? {
                Some(rows) => {
                    sql.answered(&q, &rows);
                    rows
                }
                None => sql.rows(&q).await?,
            }
        };
        let members = examined
            .iter()
            .map(|e| {
                let d = self.detector(e.test.kind)?;
                Ok(Member {
                    cause: e.cause.clone(),
                    site: e.site(),
                    q_value: e.test.q_value,
                    effect: e.test.judgement.effect,
                    rank: d.rank(&e.test.judgement),
                    headline: d.headline(&e.test.judgement, &self.config),
                    segment: e.test.segment.clone(),
                })
            })
            .collect::<Result<Vec<_>, AnalysisError>>()?;
        let groups: Vec<(usize, Vec<usize>)> =
            cluster::clusters(&members).into_iter().map(|g| (cluster::primary(&members, &g), g)).collect();
        if logged {
            let subject = |e: &Examined| {
                let seg: Vec<String> = e.test.segment.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {} {} {}", e.test.kind.as_str(), e.test.service, e.test.operation, seg.join(","))
                    .trim()
                    .to_owned()
            };
            let mut grouped: Vec<serde_json::Value> = groups
                .iter()
                .map(|(p, g)| {
                    let mut linked: Vec<String> =
                        g.iter().filter(|i| *i != p).map(|i| subject(&examined[*i])).collect();
                    linked.sort();
                    serde_json::json!({ "primary": subject(&examined[*p]), "linked": linked })
                })
                .collect();
            grouped.sort_by_key(|v| v.to_string());
            steps.push(PassStep {
                kind: "decision",
                name: "cluster".into(),
                parents: vec!["attribute".into()],
                input: serde_json::json!({ "candidates": examined.len() }),
                summary: format!("{} candidates in {} groups", examined.len(), grouped.len()),
                output: serde_json::json!({ "groups": grouped }),
            });
        }
        let onsets: Vec<Onset> = groups.iter().map(|(p, _)| self.onset_of(&examined[*p])).collect();
        let series = self.onset_series(&sql, &ctx, &onsets).await?;
        let mut found = Vec::new();
        for ((primary, group), series) in groups.iter().zip(&series) {
            let linked: Vec<&Examined> = group.iter().filter(|i| *i != primary).map(|i| &examined[*i]).collect();
            let e = &examined[*primary];
            let account = Account {
                member: members[*primary].clone(),
                short: self.detector(e.test.kind)?.short(&e.test.judgement),
            };
            found.push((self.finding(&sql, &ctx, e, &linked, &versions, series).await?, account));
        }
        found.sort_by(|(a, _), (b, _)| b.impact.total_cmp(&a.impact).then(a.fingerprint.cmp(&b.fingerprint)));
        let (findings, accounts) = found.into_iter().unzip();
        Ok(PassReport { findings, tests: n_tests, flows, elapsed: started.elapsed(), steps, accounts })
    }

    /// What a finding's onset is found in: the binned latency of its own
    /// operation when its trouble is time, otherwise the error rate where its
    /// cause starts, in its segment.
    fn onset_of(&self, e: &Examined) -> Onset {
        let t = &e.test;
        let latency = self.latency(t);
        let (service, operation) = if latency { (t.service.clone(), t.operation.clone()) } else { e.cause.clone() };
        Onset { service, operation, segment: t.segment.clone(), latency }
    }

    /// Each subject's onset series, `(bin start ns, metric)` for bins with at
    /// least 3 requests, over every bin of the range, the gap between the
    /// windows included (the onset may lie in it). On minutes, every series
    /// comes from one read of the rollups; finer bins (short ranges) read spans
    /// per subject.
    async fn onset_series(
        &self,
        sql: &TenantSql<'_>,
        ctx: &Ctx,
        subjects: &[Onset],
    ) -> Result<Vec<Vec<(i64, f64)>>, AnalysisError> {
        let metric = |o: &Onset| if o.latency { "log_latency" } else { "error_rate" };
        let bin_secs = onset_bin_secs(ctx);
        if bin_secs != 60 || !ctx.rollups {
            let mut out = Vec::new();
            for o in subjects {
                let mut whole = ctx.lean_for(&o.segment);
                whole.baseline_end = ctx.split;
                let mut vars = whole.vars(&ctx.subject_filter(&o.service, &o.operation, &o.segment));
                vars.push(("bin_secs", bin_secs.to_string()));
                let bins = sql.rows(&sql::render(include_str!("detectors/minutes.sql"), &vars)).await?;
                out.push(
                    bins.iter()
                        .filter(|r| r.u64("n") >= 3)
                        .filter_map(|r| Some((r.i64("bin")?, r.f64(metric(o))?)))
                        .collect(),
                );
            }
            return Ok(out);
        }
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        // Minutes: the rollups hold them, and the metrics fold holds the
        // rollups' cells of the range when it was read at the store's
        // present version; otherwise one read of every subject's operation by
        // minute and segment values. Each subject sums the cells of its segment.
        let sites: BTreeSet<(&str, &str)> =
            subjects.iter().map(|o| (o.service.as_str(), o.operation.as_str())).collect();
        let cells = match self.kept_onset_cells(sql.tenant, ctx, &sites) {
            Some(cells) => cells,
            None => self.read_onset_cells(sql, ctx, &sites).await?,
        };
        Ok(onset_series_of(ctx, subjects, &cells))
    }

    /// The rollups' cells of the sites over the range, from the metrics fold
    /// when it holds them as the store now is.
    fn kept_onset_cells(&self, tenant: &Tenant, ctx: &Ctx, sites: &BTreeSet<(&str, &str)>) -> Option<Vec<OnsetCell>> {
        let fold = self.metrics_fold.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let from = floor_minute(ctx.baseline_start).timestamp_nanos_opt();
        let to = ctx.end.timestamp_nanos_opt();
        let vars = ctx.metric_vars("");
        let metric_segments = vars.iter().find(|(k, _)| *k == "metric_segments").map(|(_, v)| v.clone());
        let source = (tenant.clone(), metric_segments.unwrap_or_default(), self.engine.store().metrics_version());
        fold.as_ref().filter(|f| f.read_as(&source)).zip(from.zip(to)).and_then(|(f, (from, to))| {
            let wanted = |k: &[Option<String>]| match k {
                [Some(service), Some(operation), ..] => sites.contains(&(service.as_str(), operation.as_str())),
                _ => false,
            };
            f.cells(from, to, wanted).map(|cells| {
                cells
                    .into_iter()
                    .map(|(bin, key, n, errors, log_sum)| OnsetCell {
                        bin,
                        service: key[0].clone().unwrap_or_default(),
                        operation: key[1].clone().unwrap_or_default(),
                        segs: key[2..].to_vec(),
                        n: n.max(0) as u64,
                        ok: (n - errors).max(0) as u64,
                        errors: errors.max(0) as u64,
                        log_sum,
                    })
                    .collect()
            })
        })
    }

    /// The rollups' cells of the sites over the range, read (`minutes_rolled.sql`).
    async fn read_onset_cells(
        &self,
        sql: &TenantSql<'_>,
        ctx: &Ctx,
        sites: &BTreeSet<(&str, &str)>,
    ) -> Result<Vec<OnsetCell>, AnalysisError> {
        let mut vars = ctx.metric_vars("");
        vars.push(("sites", sites_condition(sites.iter().copied(), "service_name")));
        let rows = sql.rows(&sql::render(include_str!("detectors/minutes_rolled.sql"), &vars)).await?;
        let columns = ctx.segments.names();
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(OnsetCell {
                    bin: r.i64("bin")?,
                    service: r.str("service")?,
                    operation: r.str("operation")?,
                    segs: columns.iter().map(|c| r.str(c)).collect(),
                    n: r.u64("n"),
                    ok: r.u64("ok"),
                    errors: r.u64("errors"),
                    log_sum: r.f64("log_latency_sum").unwrap_or(0.0),
                })
            })
            .collect())
    }

    /// Whether a test's trouble is time (its sample is of every request, not
    /// the failing ones).
    fn latency(&self, t: &Test) -> bool {
        self.detector(t.kind).is_ok_and(|d| d.trouble(&t.judgement) == Trouble::Latency)
    }

    /// The server requests of `sites` in the current window, settled, each
    /// once with its segment values as the `requests` common table
    /// expression of `shared.sql` gives them over the window (`lean`: the
    /// span's own): from the requests kept by minute when `kept` and the
    /// window is whole minutes, otherwise read.
    async fn window_requests(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        sites: &[(String, String)],
        lean: bool,
        kept: bool,
    ) -> Result<Vec<WindowRequest>, AnalysisError> {
        let mut requests: Vec<WindowRequest> = Vec::new();
        if kept {
            let arriving = crate::requests::arriving(self.engine.store(), tenant, ctx.settled);
            let window = (ctx.split, ctx.end);
            // Each site's names once, shared by its requests.
            let names: HashMap<(&str, &str), Names> = sites
                .iter()
                .map(|(s, o)| ((s.as_str(), o.as_str()), (Arc::from(s.as_str()), Arc::from(o.as_str()))))
                .collect();
            let each = |service: &str, operation: &str, r: &crate::requests::Request, segs: &[Option<&Arc<str>>]| {
                if crate::requests::is_arriving(&arriving, &r.trace_id) {
                    return;
                }
                let Some((service, operation)) = names.get(&(service, operation)) else { return };
                requests.push(WindowRequest {
                    service: Arc::clone(service),
                    operation: Arc::clone(operation),
                    err: r.err,
                    segs: segs.iter().map(|v| v.cloned()).collect(),
                    trace_id: Arc::clone(&r.trace_id),
                    span_id: Arc::clone(&r.span_id),
                    start: r.start,
                    end: r.end,
                });
            };
            if self.requests.requests(&self.engine, tenant, &ctx.segments, sites, window, lean, each).await? {
                return Ok(requests);
            }
            requests.clear();
        }
        let window = Ctx { baseline_start: ctx.split, baseline_end: ctx.split, lean, ..ctx.clone() };
        let q = format!(
            "WITH {}\nSELECT trace_id, span_id, start_time, end_time, service, operation, err{} FROM requests \
             WHERE start_time >= {} AND start_time < {} AND ({}){settled}",
            sql::render(sql::SHARED_CTES, &window.shared_vars()),
            ctx.segments.list(),
            sql::ts(ctx.split),
            sql::ts(ctx.end),
            sites_condition(sites.iter().map(|(s, o)| (s.as_str(), o.as_str())), "service"),
            settled = ctx.settled.map(|at| format!(" AND {}", sql::settled("trace_id", at))).unwrap_or_default(),
        );
        let rows = self.rows(tenant, &q).await?;
        let columns = ctx.segments.names();
        requests.extend(rows.iter().filter_map(|r| {
            let pick = Pick::of(&r)?;
            Some(WindowRequest {
                segs: columns.iter().map(|c| r.str(c).map(Arc::from)).collect(),
                service: r.str("service")?.into(),
                operation: r.str("operation")?.into(),
                err: r.i64("err") == Some(1),
                trace_id: pick.trace_id.into(),
                span_id: pick.span_id.into(),
                start: pick.start,
                end: pick.end,
            })
        }));
        Ok(requests)
    }

    /// Each candidate's sample of requests in the current window, in one read:
    /// the first [`SAMPLE`] by trace id (as random a sample as the ids, and the
    /// same one every time the pass runs), of every request when its trouble
    /// is time, of the failing ones otherwise. Segment values are the
    /// sessions' as the window's spans give them.
    async fn picks(&self, tenant: &Tenant, ctx: &Ctx, candidates: &[Candidate]) -> Result<Vec<Picked>, AnalysisError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let lean = candidates.iter().all(|c| c.test.segment.is_empty());
        let mut sites: Vec<(String, String)> =
            candidates.iter().map(|c| (c.test.service.clone(), c.test.operation.clone())).collect();
        sites.sort_unstable();
        sites.dedup();
        let requests = self.window_requests(tenant, ctx, &sites, lean, true).await?;
        let mut by_site: HashMap<(&str, &str), Vec<&WindowRequest>> = HashMap::new();
        for r in &requests {
            by_site.entry((&r.service, &r.operation)).or_default().push(r);
        }
        Ok(candidates
            .iter()
            .map(|c| {
                let t = &c.test;
                let errors = !self.latency(t);
                let cut = Cut::new(&ctx.segments, &t.service, &t.operation, &t.segment);
                let site = by_site.get(&(t.service.as_str(), t.operation.as_str())).map_or(&[][..], |v| &v[..]);
                let mine = || site.iter().copied().filter(|r| cut.within(&r.segs));
                Picked {
                    sample: WindowRequest::first(mine().filter(|r| !errors || r.err), SAMPLE),
                    any: WindowRequest::first(mine(), self.config.exemplars),
                }
            })
            .collect())
    }

    /// Where the candidate's extra time or its failures start, from its
    /// sample (`picked`) and the spans of its traces.
    async fn examine(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        c: Candidate,
        picked: Picked,
        spans: &TraceSpans,
    ) -> Result<Examined, AnalysisError> {
        let t = &c.test;
        let site = (t.service.clone(), t.operation.clone());
        if self.latency(t) {
            let (cause, why) = self.latency_cause(tenant, ctx, t).await?;
            let exemplars = Pick::slowest(&picked.sample).into_iter().take(self.config.exemplars).collect();
            return Ok(Examined { test: c.test, cause, why, exemplars });
        }
        let failing = Sample::new(&picked.sample, spans);
        let origins = failing.error_origins();
        let (cause, why) = match origins.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) {
            Some((op, n)) if *op != site => (
                op.clone(),
                format!("{n} of {} sampled failing traces fail first in {} `{}`", failing.len(), op.0, op.1),
            ),
            Some((_, n)) => (site.clone(), format!("{n} of {} sampled failing traces fail here first", failing.len())),
            None => self.quiet_cause(tenant, ctx, t).await?,
        };
        let mut exemplars = failing.traces();
        if exemplars.is_empty() {
            // No failing request: the first of every request, by trace id.
            exemplars = Pick::traces(&picked.any);
        }
        exemplars.truncate(self.config.exemplars);
        Ok(Examined { test: c.test, cause, why, exemplars })
    }

    /// Where a slower operation's extra time is spent, by the localization the
    /// RCA uses ([`localize`]): its traces' self time, hops and dependencies,
    /// each compared with its own baseline variability.
    async fn latency_cause(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        t: &Test,
    ) -> Result<((String, String), String), AnalysisError> {
        let site = (t.service.clone(), t.operation.clone());
        Ok(match self.beneath(tenant, ctx, t, Some(localize::Channel::Latency)).await?.0 {
            Some(s) if (s.service.as_str(), s.operation.as_str()) != (site.0.as_str(), site.1.as_str()) => (
                (s.service.clone(), s.operation.clone()),
                format!("{} is slower because of {} `{}`: {}", t.operation, s.service, s.operation, s.reason),
            ),
            Some(s) => (site, s.reason),
            None => (site, "no operation beneath it is measurably slower".to_owned()),
        })
    }

    /// Where trouble that no failure explains (users leaving a step whose
    /// calls all succeed) comes from: what changed beneath the operation, in
    /// time or, when nothing slowed, in the versions serving its traces (a
    /// release that returns wrong values).
    async fn quiet_cause(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        t: &Test,
    ) -> Result<((String, String), String), AnalysisError> {
        // The finding is itself a change in what users do, which a release new
        // in the operation's traces may explain.
        let (suspect, (base, cur)) = self.beneath(tenant, ctx, t, None).await?;
        Ok(match suspect {
            Some(s) => (
                (s.service.clone(), s.operation.clone()),
                format!("no failing traces in the sample; beneath it, {} `{}`: {}", s.service, s.operation, s.reason),
            ),
            None => (
                (t.service.clone(), t.operation.clone()),
                format!(
                    "no failing traces in the sample, and nothing beneath it changed measurably in {cur} traces \
                     against {base} in the baseline"
                ),
            ),
        })
    }

    /// Reads for every latency candidate at once the minutes of its trace
    /// samples the book does not hold ([`localize::TraceBook::prefill`]):
    /// each is about to be localized ([`Self::latency_cause`]), and alone
    /// each would read the same minutes of spans for itself.
    async fn prefill_samples(&self, tenant: &Tenant, ctx: &Ctx, candidates: &[Candidate]) -> Result<(), AnalysisError> {
        let scopes: Vec<Scope> =
            candidates.iter().filter(|c| self.latency(&c.test)).map(|c| cause_scope(ctx, &c.test)).collect();
        if scopes.is_empty() {
            return Ok(());
        }
        let scopes: Vec<&Scope> = scopes.iter().collect();
        self.traces.prefill(&self.engine, tenant, &cause_windows(ctx), CAUSE_TRACES, &scopes).await
    }

    /// The localization's top suspect among the operation and what it calls,
    /// over the operation's traces in the test's segment, with the traces read
    /// (baseline, current). With no channel, the trouble is in what users do,
    /// not in time or failures (`Scope::users_moved`). Suspects upstream of
    /// it (the callers that wait on it) are passed over: only the operation
    /// itself and what it calls can change what it does.
    async fn beneath(
        &self,
        tenant: &Tenant,
        ctx: &Ctx,
        t: &Test,
        channel: Option<localize::Channel>,
    ) -> Result<(Option<andon_model::Suspect>, (usize, usize)), AnalysisError> {
        let scope = Scope { users_moved: channel.is_none(), ..cause_scope(ctx, t) };
        let limits = localize::LocalizeLimits { traces: CAUSE_TRACES, fdr: self.config.fdr };
        let [baseline, current] = cause_windows(ctx);
        let (found, _) = localize::localize_with(
            &self.engine,
            tenant,
            &baseline,
            &current,
            &scope,
            channel,
            &limits,
            Some(&self.traces),
        )
        .await?;
        let below = found.callees_of(&t.service);
        let traces = found.traces;
        Ok((found.suspects.into_iter().find(|s| s.service == t.service || below.contains(&s.service)), traces))
    }

    async fn finding(
        &self,
        sql: &TenantSql<'_>,
        ctx: &Ctx,
        e: &Examined,
        linked: &[&Examined],
        versions: &Rows,
        series: &[(i64, f64)],
    ) -> Result<Finding, AnalysisError> {
        let t = &e.test;
        let j = &t.judgement;
        let d = self.detector(t.kind)?;
        let (mut baseline, mut current) = (j.baseline.clone(), j.current.clone());
        let query = d.evidence(ctx, t, sql, &mut baseline, &mut current).await?;
        let trouble = d.trouble(j);
        let onset = stats::change_point(&series.iter().map(|s| s.1).collect::<Vec<_>>(), 0.2)
            .and_then(|i| Utc.timestamp_nanos(series[i].0).into())
            .filter(|o: &DateTime<Utc>| *o >= ctx.baseline_start);

        let change = attribution::attribute(versions, &e.cause.0, onset, ctx);
        let version_comparison = match &change {
            Some(c) if c.service == t.service => d.compare_versions(ctx, t, &c.version, sql).await?.map(|(prev, v)| {
                serde_json::json!({
                    "previous": prev,
                    "new": c.version,
                    "test": v.test,
                    "p_value": v.p_value,
                    "effect": v.effect,
                    "effect_ci": v.ci,
                    "previous_numbers": v.baseline,
                    "new_numbers": v.current,
                })
            }),
            _ => None,
        };
        let affected = d.affected(&current, &baseline);
        let severity = d.severity(j.effect, &current, &baseline);
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
                .map(|l| {
                    let short = self.detector(l.test.kind).map(|d| d.short(&l.test.judgement)).unwrap_or_default();
                    LinkedFinding {
                        kind: l.test.kind,
                        service: l.test.service.clone(),
                        operation: l.test.operation.clone(),
                        segment: l.test.segment.clone(),
                        summary: summary::linked(l.test.kind, &l.test.service, &l.test.operation, &short),
                        p_value: l.test.judgement.p_value,
                        why: l.why.clone(),
                    }
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
        let summary = d.sentence(&Facts {
            service: &t.service,
            operation: &t.operation,
            segment: &segment_text,
            judgement: j,
            baseline: &baseline,
            current: &current,
            onset,
            affected: &affected,
            cause: &e.cause,
        });
        let wording = d.wording(j.effect, &baseline, &current);
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
            wording,
            trouble,
            evidence,
            change,
            state: FindingState::Open,
            first_seen: ctx.end,
            last_seen: ctx.end,
            run_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row of `rows` as its columns' names and values, sorted.
    fn canonical(rows: &Rows) -> Vec<String> {
        let mut out = Vec::new();
        for b in rows.batches() {
            let schema = b.schema();
            for i in 0..b.num_rows() {
                let mut cells: Vec<String> = (0..b.num_columns())
                    .map(|c| {
                        let v = arrow::util::display::array_value_to_string(b.column(c), i).unwrap_or_default();
                        format!("{}={v}", schema.field(c).name())
                    })
                    .collect();
                cells.sort();
                out.push(cells.join(" "));
            }
        }
        out.sort();
        out
    }

    /// Whether `a` and `b` hold the same rows, their floating-point columns
    /// equal to within rounding (sums taken in another order); else how not.
    /// Whether `folded` holds the subjects of the statement's rows `direct`
    /// and its history's `history`: the same cells with the same counts, and
    /// the histories' log-latency sums to within rounding.
    fn same_subjects(folded: &detectors::Folded, direct: &Rows, history: &Rows, ctx: &Ctx) -> Result<(), String> {
        use detectors::{Folded, Subject};
        fn compare<M: std::fmt::Debug>(
            a: &[Subject<M>],
            b: &[Subject<M>],
            same: impl Fn(&M, &M) -> bool,
        ) -> Result<(), String> {
            if a.len() != b.len() {
                return Err(format!("{} subjects, {} wanted", a.len(), b.len()));
            }
            for (x, y) in a.iter().zip(b) {
                let cells = |s: &Subject<M>| s.cells.iter().map(|c| (c.0, c.1.clone())).collect::<Vec<_>>();
                if (&x.service, &x.operation, cells(x)) != (&y.service, &y.operation, cells(y)) {
                    return Err(format!("{x:?} against {y:?}"));
                }
                if let Some((c, d)) = x.cells.iter().zip(&y.cells).find(|(c, d)| !same(&c.2, &d.2)) {
                    return Err(format!("{} {}: {c:?} against {d:?}", x.service, x.operation));
                }
            }
            Ok(())
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        match folded {
            Folded::Latency(s) => {
                let read = detectors::latency_regression::subjects_of(direct, history, ctx);
                compare(s, &read, |a, b| {
                    a.hist.histogram() == b.hist.histogram()
                        && a.periods.len() == b.periods.len()
                        && a.periods
                            .iter()
                            .zip(&b.periods)
                            .all(|(p, q)| p.0 == q.0 && p.1.0 == q.1.0 && close(p.1.1, q.1.1))
                })
            }
            Folded::Errors(s) => {
                let read = detectors::error_rate_regression::subjects_of(direct, history, ctx);
                compare(s, &read, |a, b| {
                    (a.requests, a.errors, a.own, a.error_sessions, &a.periods)
                        == (b.requests, b.errors, b.own, b.error_sessions, &b.periods)
                })
            }
        }
    }

    fn same_rows(a: &Rows, b: &Rows) -> Result<(), String> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::DataType;
        let split = |rows: &Rows| -> Vec<(String, Vec<f64>)> {
            let mut out: Vec<(String, Vec<f64>)> = Vec::new();
            for batch in rows.batches() {
                let schema = batch.schema();
                let mut order: Vec<usize> = (0..batch.num_columns()).collect();
                order.sort_by_key(|c| schema.field(*c).name().clone());
                for i in 0..batch.num_rows() {
                    let (mut key, mut floats) = (String::new(), Vec::new());
                    for c in &order {
                        let column = batch.column(*c);
                        if column.data_type() == &DataType::Float64 {
                            let values = column.as_primitive::<arrow::datatypes::Float64Type>();
                            floats.push(if values.is_null(i) { f64::NAN } else { values.value(i) });
                        } else {
                            let v = arrow::util::display::array_value_to_string(column, i).unwrap_or_default();
                            key.push_str(&format!("{}={v} ", schema.field(*c).name()));
                        }
                    }
                    out.push((key, floats));
                }
            }
            out.sort_by(|x, y| x.0.cmp(&y.0));
            out
        };
        let (a, b) = (split(a), split(b));
        if a.len() != b.len() {
            return Err(format!("{} rows against {}", a.len(), b.len()));
        }
        for ((ka, fa), (kb, fb)) in a.iter().zip(&b) {
            let close = fa.len() == fb.len()
                && fa.iter().zip(fb).all(|(x, y)| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0));
            if ka != kb || !close {
                return Err(format!("{ka} {fa:?} against {kb} {fb:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn a_pass_and_its_last_minute_get_from_one_read_the_rows_each_statement_gives() {
        use std::sync::Arc;

        use andon_ingest::{IngestConfig, Ingestor};
        use andon_model::clock::SystemClock;
        use andon_store::sql::Row;
        use andon_store::{Durability, QueryLimits, Store, StoreConfig};

        // Every fault of the shop at once, so that the retries, failures and
        // recoveries the shared statements count are not all zero.
        let end = DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc);
        let g = andon_fixtures::generate("all", 11, 1.5, 2.0, end).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.durability = Durability::None;
        let store = Store::open(cfg).unwrap();
        let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let tenant = Tenant::default_tenant();
        let mut requests = g.requests;
        // Sent after the first passes: changes to `sessions` and to
        // `span_metrics` between passes, one inside the passes' range, kept
        // in the buffer for a pass, and one after it.
        let late = [requests.remove(requests.len() / 2), requests.pop().unwrap()];
        for req in requests {
            if store.buffer_full() {
                store.flush().unwrap();
            }
            rt.block_on(ingestor.export(&tenant, req)).unwrap();
        }
        store.flush().unwrap();
        let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 2).unwrap();
        let config = AnalysisConfig { baseline_secs: 2400, window_secs: 900, ..AnalysisConfig::default() };
        let analyzer = Analyzer::new(engine.clone(), config.clone()).unwrap();
        // The first passes with a whole baseline behind them, each minute,
        // while the faults (from 40% of the run) go on.
        let from = g.truth.start + chrono::Duration::minutes(55);
        let mut passes = Windows::replay(&config, from, from + chrono::Duration::minutes(4), None);
        assert_eq!(passes.len(), 4);
        passes.push(passes[3]);
        passes.push(passes[3]);
        let mut nonzero = BTreeMap::<&str, i64>::new();
        let rebuilds = || analyzer.calls_fold.lock().unwrap().as_ref().map_or(0, |f| f.rebuilds());
        let page_rebuilds = || analyzer.page_fold.try_lock().unwrap().as_ref().map_or(0, |f| f.rebuilds());
        let metric_rebuilds = || analyzer.metrics_fold.lock().unwrap().as_ref().map_or(0, |f| f.rebuilds());
        let mut funnels = 0;
        for (i, w) in passes.into_iter().enumerate() {
            if i == 4 {
                rt.block_on(ingestor.export(&tenant, late[0].clone())).unwrap();
            }
            if i == 5 {
                rt.block_on(ingestor.export(&tenant, late[1].clone())).unwrap();
                store.flush().unwrap();
            }
            let last = Windows { split: w.end - chrono::Duration::seconds(config.recent_secs as i64), ..w };
            let known = rt.block_on(analyzer.shared_sides(&tenant, w, last, None)).unwrap();
            assert_eq!(
                (known.folded.len(), known.rows.len()),
                (4, 3),
                "latency and error rate with their histories folded, and calls, each for the window and the \
                 last minute, and the last minute's retry history"
            );
            // The folded subjects, as the subjects of the statements' and
            // their histories' rows read.
            let (whole, minute) = (analyzer.ctx(w, None), Ctx { short: true, ..analyzer.ctx(last, None) });
            for (sql, folded) in &known.folded {
                let c = if *sql == detectors::latency_regression::query(&whole, "")
                    || *sql == detectors::error_rate_regression::query(&whole, "")
                {
                    &whole
                } else {
                    &minute
                };
                let direct = rt.block_on(query(&engine, &tenant, sql)).unwrap();
                let history = detectors::history_rolled_query(c, "").unwrap();
                let history = rt.block_on(query(&engine, &tenant, &history)).unwrap();
                assert!(!direct.is_empty() && !history.is_empty(), "{sql}");
                if let Err(e) = same_subjects(folded, &direct, &history, c) {
                    panic!("pass {i}: {e}: {sql}");
                }
            }
            let mut all: Vec<(String, Rows)> = known.rows.clone().into_iter().collect();
            all.extend(known.folded.iter().map(|(q, f)| (q.clone(), f.rows(known.segments).unwrap())));
            for (sql, rows) in &all {
                let direct = rt.block_on(query(&engine, &tenant, sql)).unwrap();
                assert!(!direct.is_empty(), "{sql}");
                // The histories' log-latency sums to within rounding, every other column exactly.
                if let Err(e) = same_rows(rows, &direct) {
                    let (got, want) = (canonical(rows), canonical(&direct));
                    let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
                    let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
                    panic!(
                        "pass {i}: {e}; {} rows, {} wanted; extra {extra:#?}, missing {missing:#?}: {sql}",
                        got.len(),
                        want.len()
                    );
                }
                for c in ["retries", "recovered_sessions", "errors"] {
                    *nonzero.entry(c).or_default() += rows.iter().filter_map(|r| r.i64(c)).sum::<i64>();
                }
            }
            // The onset series from the metrics fold's cells, as from the rollups read.
            let ctx = analyzer.ctx(w, None);
            let mut subjects: Vec<Onset> = Vec::new();
            for r in all
                .iter()
                .filter(|(q, _)| q.contains("latency_buckets") || q.contains("errors"))
                .flat_map(|(_, r)| r.iter())
            {
                let (Some(service), Some(operation)) = (r.str("service"), r.str("operation")) else { continue };
                if subjects.iter().any(|o| o.service == service && o.operation == operation) || subjects.len() >= 12 {
                    continue;
                }
                let latency = subjects.len().is_multiple_of(2);
                let mut segment = BTreeMap::new();
                if subjects.len() % 3 == 1 {
                    segment.insert("browser.mobile".to_owned(), Value::Bool(true));
                }
                subjects.push(Onset { service, operation, segment, latency });
            }
            assert!(subjects.len() >= 6, "{} subjects", subjects.len());
            let sites: BTreeSet<(&str, &str)> =
                subjects.iter().map(|o| (o.service.as_str(), o.operation.as_str())).collect();
            let kept = analyzer.kept_onset_cells(&tenant, &ctx, &sites).expect("the fold holds the range");
            let sql = TenantSql::new(&engine, &tenant, false, &Known::default());
            let read = rt.block_on(analyzer.read_onset_cells(&sql, &ctx, &sites)).unwrap();
            let (kept, read) = (onset_series_of(&ctx, &subjects, &kept), onset_series_of(&ctx, &subjects, &read));
            assert!(read.iter().filter(|s| s.len() > 30).count() >= 4, "pass {i}: series of the range's minutes");
            for (k, r) in kept.iter().zip(&read) {
                assert_eq!(k.len(), r.len(), "pass {i}");
                for (a, b) in k.iter().zip(r) {
                    assert!(a.0 == b.0 && (a.1 - b.1).abs() <= 1e-9 * b.1.abs().max(1.0), "pass {i}: {a:?} {b:?}");
                }
            }
            // A subject's rows by version, from the rows the pass read for
            // every subject, as the statement narrowed to the subject gives.
            let sql = TenantSql::new(&engine, &tenant, false, &known);
            let mut versions = BTreeSet::new();
            for o in &subjects {
                let subject = (o.service.as_str(), o.operation.as_str());
                let (seg, filter, lean) = ctx.by_version(subject).expect("versions are a segment");
                let queries: [fn(&Ctx, &str) -> String; 2] =
                    [detectors::latency_regression::query, detectors::error_rate_regression::query];
                for q in queries {
                    let key = |v: String, r: &Row<'_>| (v, r.i64("cur"), r.i64("bucket"), r.u64("n"), r.u64("errors"));
                    let mut kept = Vec::new();
                    let each = |v: String, r: &Row<'_>| kept.push(key(v, r));
                    rt.block_on(detectors::each_version_row(&ctx, subject, &sql, q, each)).unwrap();
                    let direct = rt.block_on(query(&engine, &tenant, &q(&lean, &filter))).unwrap();
                    let mut direct: Vec<_> = direct.iter().filter_map(|r| Some(key(r.str(&seg)?, &r))).collect();
                    kept.sort();
                    direct.sort();
                    assert!(!kept.is_empty() && kept == direct, "pass {i}: {subject:?}");
                    versions.extend(kept.into_iter().map(|k| k.0));
                }
            }
            assert!(versions.len() >= 2, "pass {i}: {versions:?}");
            // When each version first served, from the minutes kept by the
            // passes before and those read now.
            analyzer.versions.turn(&store, &tenant);
            let ctx = analyzer.ctx(w, None);
            let booked = rt.block_on(analyzer.versions.versions(&engine, &tenant, &ctx)).unwrap().unwrap();
            let direct = rt.block_on(query(&engine, &tenant, &attribution::versions_query(&ctx))).unwrap();
            assert!(direct.iter().any(|r| r.str("commit").is_some()), "versions with their commit");
            assert_eq!(canonical(&booked), canonical(&direct), "pass {i}");
            // The requests the picks sample, and the sessions failures
            // reached, from the requests kept by minute, as read.
            analyzer.requests.turn(&store, &tenant);
            let ctx = analyzer.ctx(w, None);
            let mut sites: Vec<(String, String)> =
                subjects.iter().map(|o| (o.service.clone(), o.operation.clone())).collect();
            sites.sort();
            sites.dedup();
            for lean in [true, false] {
                let mut kept = rt.block_on(analyzer.window_requests(&tenant, &ctx, &sites, lean, true)).unwrap();
                let mut read = rt.block_on(analyzer.window_requests(&tenant, &ctx, &sites, lean, false)).unwrap();
                kept.sort();
                read.sort();
                assert!(read.len() > 100 && read.iter().any(|r| r.err), "pass {i}: {} requests", read.len());
                // The session's device, where the session's values are read.
                let mobile = read.iter().any(|r| r.segs[0].as_deref() == Some("true"));
                assert!(mobile != lean, "pass {i}, lean {lean}: mobile sessions {mobile}");
                assert!(kept == read, "pass {i}, lean {lean}: the window's requests differ");
            }
            let sql = TenantSql::new(&engine, &tenant, false, &Known::default()).with_requests(&analyzer.requests);
            for o in &subjects {
                let subject = (o.service.as_str(), o.operation.as_str(), &o.segment);
                let kept = rt.block_on(sql.error_sessions(&ctx, subject)).unwrap().expect("kept by minute");
                let filter = ctx.subject_filter(&o.service, &o.operation, &o.segment);
                let statement = crate::detector::per_side(
                    &detectors::error_rate_regression::query(&ctx.lean_for(&o.segment).unrolled(), &filter),
                    "sum(error_sessions) AS error_sessions",
                );
                let direct = rt.block_on(query(&engine, &tenant, &statement)).unwrap();
                let side = |name: &str| {
                    direct
                        .iter()
                        .find(|r| r.str("side").as_deref() == Some(name))
                        .map_or(0, |r| r.u64("error_sessions"))
                };
                assert_eq!(kept, (side("baseline"), side("current")), "pass {i}: {subject:?}");
                *nonzero.entry("error_sessions").or_default() += kept.1 as i64;
                // The latency evidence likewise.
                let kept = rt.block_on(sql.latency_evidence(&ctx, subject)).unwrap().expect("kept by minute");
                let statement = sql::render(
                    include_str!("detectors/evidence_latency.sql"),
                    &ctx.lean_for(&o.segment).vars(&filter),
                );
                let direct: Vec<crate::detector::SideLatency> = rt
                    .block_on(query(&engine, &tenant, &statement))
                    .unwrap()
                    .iter()
                    .map(|r| crate::detector::SideLatency {
                        current: r.str("side").as_deref() == Some("current"),
                        requests: r.u64("requests"),
                        sessions: r.u64("sessions"),
                        ms: ["p50_ms", "p95_ms", "p99_ms"].map(|k| r.f64(k).unwrap_or(f64::NAN)),
                    })
                    .collect();
                assert_eq!(direct.len(), 2, "pass {i}: {subject:?}");
                assert_eq!(kept, direct, "pass {i}: {subject:?}");
            }
            // The traces each subject's cause is looked for in, read for all
            // the subjects in one statement, as each scope's own statement
            // picks them.
            analyzer.traces.turn(&store, &tenant);
            let scopes: Vec<Scope> = subjects
                .iter()
                .map(|o| Scope {
                    through: Some(o.service.clone()),
                    operation: Some(o.operation.clone()),
                    segment: o.segment.clone(),
                    ..Scope::default()
                })
                .collect();
            assert!(scopes.iter().any(|s| !s.segment.is_empty()));
            let refs: Vec<&Scope> = scopes.iter().collect();
            let windows = cause_windows(&ctx);
            rt.block_on(analyzer.traces.prefill(&engine, &tenant, &windows, 40, &refs)).unwrap();
            let reads = analyzer.traces.scope_reads();
            for scope in &scopes {
                for w in &windows {
                    let held = rt.block_on(analyzer.traces.picked(&engine, &tenant, w, 40, scope)).unwrap();
                    let direct = rt.block_on(query(&engine, &tenant, &localize::picked_query(w, 40, scope))).unwrap();
                    let direct: Vec<(String, i64)> =
                        direct.iter().filter_map(|r| Some((r.str("trace_id")?, r.i64("root_start")?))).collect();
                    assert!(!direct.is_empty(), "pass {i}: {scope:?}");
                    assert_eq!(held, direct, "pass {i}: {scope:?} over {w:?}");
                }
            }
            assert_eq!(analyzer.traces.scope_reads(), reads, "pass {i}: no scope read its traces on its own");
            // The calls of sessions and the cells of `span_metrics` are kept
            // through new spans: only the minutes the store may have changed
            // (those of the sessions the spans belong to; every buffered
            // span's) are read again.
            assert_eq!(rebuilds(), 1, "pass {i}");
            assert_eq!(metric_rebuilds(), 1, "pass {i}");
            // So are the sessions the drop-off funnels read: the statement's
            // rows computed from them are the statement's.
            let ctx = analyzer.ctx(w, None);
            let sql = TenantSql::new(&engine, &tenant, false, &Known::default())
                .keeping(&analyzer.page_fold, &analyzer.session_read);
            let flows = rt.block_on(detectors::drop_off::DropOff.flows(&ctx, &sql)).unwrap();
            assert!(!flows.is_empty());
            let statement = detectors::drop_off::history_query(&ctx, &flows);
            let direct = rt.block_on(query(&engine, &tenant, &statement)).unwrap();
            let start = detectors::drop_off::history_start(&ctx);
            // The baseline's journeys, from the same fold.
            let range = (start, ctx.end);
            let journeys =
                rt.block_on(sql.session_journeys(&ctx, range, ctx.baseline_start, ctx.baseline_end)).unwrap().unwrap();
            let direct_journeys =
                rt.block_on(query(&engine, &tenant, &detectors::drop_off::journeys_query(&ctx))).unwrap();
            assert!(!direct_journeys.is_empty());
            // Each session's pages and first requests, whoever the session is.
            let visits = |j: &detectors::drop_off::Journeys| {
                let mut v: Vec<Vec<(Option<String>, String, i64)>> = j
                    .sessions
                    .iter()
                    .map(|s| {
                        let mut s: Vec<_> = s
                            .iter()
                            .map(|(p, t)| {
                                let (service, op) = j.pages[*p as usize].clone();
                                (service, op, *t)
                            })
                            .collect();
                        s.sort();
                        s
                    })
                    .collect();
                v.sort();
                v
            };
            let direct_journeys = detectors::drop_off::Journeys::from_rows(&direct_journeys);
            assert_eq!(journeys.len(), direct_journeys.len(), "pass {i}");
            assert!(visits(&journeys) == visits(&direct_journeys), "pass {i}: the journeys differ");
            let pages = rt.block_on(sql.session_pages(&ctx, start, ctx.end)).unwrap().unwrap();
            let folded = detectors::drop_off::folded(&ctx, &flows, &pages).unwrap();
            same_rows(&folded, &direct).unwrap_or_else(|e| panic!("pass {i}: {e}"));
            funnels += direct.len();
            // The last minute's funnels (per step, by when sessions reached
            // it) from the same fold over the same range, as the statement.
            let minute = Ctx { short: true, ..analyzer.ctx(last, None) };
            assert_eq!(detectors::drop_off::read_from(&minute), start, "one range for both");
            let short_flows = rt.block_on(detectors::drop_off::DropOff.flows(&minute, &sql)).unwrap();
            assert_eq!(short_flows.len(), flows.len(), "the same baseline's journeys");
            let statement = detectors::drop_off::history_query(&minute, &short_flows);
            let direct = rt.block_on(query(&engine, &tenant, &statement)).unwrap();
            let pages = rt.block_on(sql.session_pages(&minute, start, minute.end)).unwrap().unwrap();
            let folded = detectors::drop_off::folded(&minute, &short_flows, &pages).unwrap();
            same_rows(&folded, &direct).unwrap_or_else(|e| panic!("pass {i}, last minute: {e}"));
            let side = |cur: i64| direct.iter().filter(|r| r.i64("cur") == Some(cur)).count();
            assert!(
                side(1) > 0 && side(0) > 0,
                "pass {i}: sessions whose horizon ended in the last minute, and before"
            );
            assert!(direct.iter().filter_map(|r| r.i64("period")).max() >= Some(29), "pass {i}: periods of a minute");
            assert!(side(2) > 0, "pass {i}: sessions still inside their horizon");
            if i == 0 {
                // A step's evidence gives its numbers as the judgement has
                // them, the sessions still inside their horizon weighed in.
                use crate::detector::Detector;
                let tested = rt.block_on(detectors::drop_off::DropOff.tests(&minute, &sql)).unwrap();
                let t = tested
                    .tests
                    .iter()
                    .filter(|t| t.segment.is_empty() && t.judgement.current.contains_key("sessions_waiting"))
                    .max_by_key(|t| t.judgement.current_samples)
                    .expect("a whole step judged with sessions waiting");
                let (mut b, mut c) = (t.judgement.baseline.clone(), t.judgement.current.clone());
                let evidence =
                    rt.block_on(detectors::drop_off::DropOff.evidence(&minute, t, &sql, &mut b, &mut c)).unwrap();
                let rows = rt.block_on(query(&engine, &tenant, &evidence)).unwrap();
                for (side, numbers) in [("current", &t.judgement.current), ("baseline", &t.judgement.baseline)] {
                    let row = rows.iter().find(|r| r.str("side").as_deref() == Some(side)).unwrap();
                    for name in ["sessions_reached", "sessions_continued", "left_after_error"] {
                        let read = row.f64(name).unwrap();
                        let judged = numbers[name].as_f64().unwrap();
                        assert!((read - judged).abs() <= 1.0, "{side} {name}: {read} against {judged}\n{evidence}");
                    }
                    let read = row.f64("conversion").unwrap();
                    let judged = numbers["conversion"].as_f64().unwrap();
                    assert!((read - judged).abs() < 1e-3, "{side} conversion: {read} against {judged}");
                }

                // The same statement over spans (windows off the minute, a
                // store without sessions), and the evidence's, run too.
                let spans = rt.block_on(query(&engine, &tenant, &statement_over_spans(&minute, &short_flows))).unwrap();
                assert!(spans.iter().any(|r| r.i64("cur") == Some(1)), "the last minute's sessions, from spans");
                // Over spans a session has the release it has over `sessions`.
                let vi = minute.segments.columns.iter().position(|c| c.attribute == "service.version").unwrap();
                let by_release = |rows: &andon_store::sql::Rows| {
                    let mut m = BTreeMap::<Option<String>, i64>::new();
                    for r in rows.iter().filter(|r| r.i64("cur") >= Some(1)) {
                        *m.entry(r.str(&format!("seg{vi}"))).or_default() += r.i64("sessions").unwrap();
                    }
                    m
                };
                let history = detectors::drop_off::history_query(&minute.unrolled(), &short_flows);
                let over_spans = rt.block_on(query(&engine, &tenant, &history)).unwrap();
                assert!(by_release(&direct).keys().any(Option::is_some), "sessions a release served");
                assert_eq!(by_release(&over_spans), by_release(&direct), "the last minute's sessions by release");
            }
            assert_eq!(page_rebuilds(), 1, "pass {i}");
        }
        assert!(nonzero.values().all(|n| *n > 0), "{nonzero:?}");
        assert!(funnels > 0);
    }

    /// A short window's funnels over spans: its history statement and the
    /// evidence statement of its first flow, as one.
    fn statement_over_spans(minute: &Ctx, flows: &[detectors::drop_off::ResolvedFlow]) -> String {
        let spans = minute.unrolled();
        let evidence = detectors::drop_off::query(&spans, &flows[..1], "");
        format!(
            "SELECT cur, sum(reached0_0) AS reached FROM ({}) h GROUP BY cur UNION ALL SELECT cur, sum(reached0_0) FROM ({evidence}) e GROUP BY cur",
            detectors::drop_off::history_query(&spans, flows)
        )
    }

    #[test]
    fn a_replay_runs_the_passes_continuous_detection_would_have_run() {
        let t = |h: i64, m: i64| {
            DateTime::parse_from_rfc3339("2026-11-20T08:00:00Z").unwrap().with_timezone(&Utc)
                + chrono::Duration::hours(h)
                + chrono::Duration::minutes(m)
        };
        let cfg = AnalysisConfig { interval_secs: 600, ..AnalysisConfig::default() };
        let passes = Windows::replay(&cfg, t(0, 0), t(1, 0), None);
        assert_eq!(passes.len(), 6, "every interval");
        assert_eq!(passes[0], Windows::before(t(0, 10) - chrono::Duration::minutes(30), t(0, 10), 3 * 3600));
        assert_eq!(passes.last().unwrap().end, t(1, 0));
        let many = Windows::replay(&AnalysisConfig::default(), t(0, 0), t(24, 0), None);
        assert_eq!(many.len(), 48, "spaced out to replay_max_passes");
        assert_eq!(many[1].end - many[0].end, chrono::Duration::minutes(30));
        let odd = Windows::replay(&AnalysisConfig::default(), t(0, 0), t(21, 0), None);
        assert_eq!(odd[1].end - odd[0].end, chrono::Duration::minutes(27), "26.25 min, rounded up to minutes");
        assert!(odd.iter().all(|w| w.end.timestamp() % 60 == 0 && w.split.timestamp() % 60 == 0));
        assert_eq!(odd.last().unwrap().end, t(21, 0));
        let late = chrono::Duration::seconds(30);
        let unaligned = Windows::replay(&AnalysisConfig::default(), t(0, 0) + late, t(24, 0) + late, None);
        assert!(unaligned.len() <= 48, "{} passes", unaligned.len());
        assert_eq!(unaligned.last().unwrap().end, t(24, 0), "the last pass ends on the range's last whole minute");
        assert!(unaligned.iter().all(|w| w.end.timestamp() % 60 == 0 && w.end > t(0, 0) + late));
        let within = Windows::replay(&AnalysisConfig::default(), t(1, 0) + late, t(1, 0) + late * 3 / 2, None);
        assert_eq!(within.iter().map(|w| w.end).collect::<Vec<_>>(), [t(1, 0)], "the minute the range lies in");
        let seconds = AnalysisConfig { interval_secs: 45, ..AnalysisConfig::default() };
        let odd_interval = Windows::replay(&seconds, t(0, 0) + late, t(0, 5) + late, None);
        assert_eq!(odd_interval.last().unwrap().end, t(0, 5) + late, "off the minute, passes run to the range's end");
        let off = AnalysisConfig { interval_secs: 0, ..AnalysisConfig::default() };
        assert_eq!(
            Windows::replay(&off, t(0, 0), t(0, 5), None).len(),
            5,
            "a minute apart when continuous detection is off"
        );
    }
}
