//! `drop_off`: funnels of ordered steps per session. For each step, the share of
//! sessions that reached it and went no further, against the baseline's; the
//! step where abandonment rose, in the narrowest segment, and whether the
//! sessions that left hit an error there. Without configured flows, every
//! journey enough sessions follow is discovered from the baseline's page
//! requests, and all of them are measured in one scan.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use andon_model::format::{count, pct};
use andon_model::{Affected, FindingKind, Severity, Trouble, Wording};
use async_trait::async_trait;
use serde_json::Value;

use super::{History, Metric, Subject, history_look, num, round, segment_tests};
use crate::AnalysisError;
use crate::config::{AnalysisConfig, Flow};
use crate::detector::{Detector, Facts, Numbers, Sql, Tested, get, grade, per_side, Ctx, Judgement, Test};
use crate::sql::{self, Rows};

#[derive(Debug)]
pub struct DropOff;

pub const KIND: FindingKind = FindingKind::DropOff;

pub const SQL: &str = include_str!("drop_off.sql");
pub const JOURNEYS_SQL: &str = include_str!("journeys.sql");
pub const SESSIONS_SQL: &str = include_str!("drop_off_sessions.sql");

/// A flow with the service each step is served by.
#[derive(Debug, Clone)]
pub struct ResolvedFlow {
    pub name: String,
    pub steps: Vec<(String, String)>,
    /// Per step, how long after reaching it a session may take to request the
    /// next page and still count as going on, in nanoseconds ([`horizons`]);
    /// a step without one waits the session timeout.
    pub horizons: Vec<i64>,
}

impl ResolvedFlow {
    fn horizon(&self, k: usize, timeout_ns: i64) -> i64 {
        self.horizons.get(k).copied().unwrap_or(timeout_ns)
    }
}

/// How a pass makes its flows of the baseline's journeys, with their horizons.
pub type MakeFlows = dyn for<'j> Fn(&'j Journeys) -> Vec<ResolvedFlow> + Sync;

/// Fewer baseline sessions than this going from a step to the next leave the
/// step's horizon at the session timeout.
const MIN_GAPS: usize = 50;

/// Each session's first request of each page over the baseline: the rows of
/// [`journeys_query`], numbered, which journey discovery and the horizons
/// read. A session's pages are kept together so that a fold can hand out the
/// sessions it kept from the last pass without copying them.
#[derive(Debug, Clone, Default)]
pub struct Journeys {
    /// Service and operation, by number.
    pub pages: Vec<(Option<String>, String)>,
    /// Per session, each page it requested (by number, once) and when it
    /// first did.
    pub sessions: Vec<Arc<Vec<(u32, i64)>>>,
}

impl Journeys {
    /// The rows of [`journeys_query`]: a row without a session, an
    /// operation or a time is no request of a page.
    pub fn from_rows(rows: &Rows) -> Self {
        let mut pages: Vec<(Option<String>, String)> = Vec::new();
        let mut numbers: HashMap<(Option<Cow<'_, str>>, Cow<'_, str>), u32> = HashMap::new();
        let mut sessions: HashMap<Cow<'_, str>, Vec<(u32, i64)>> = HashMap::new();
        for (session, service, op, t) in journey_rows(rows) {
            let next = pages.len() as u32;
            let page = *numbers.entry((service, op)).or_insert_with_key(|(service, op)| {
                pages.push((service.as_deref().map(str::to_owned), op.to_string()));
                next
            });
            let visits = sessions.entry(session).or_default();
            match visits.iter_mut().find(|(p, _)| *p == page) {
                Some((_, first)) => *first = (*first).min(t),
                None => visits.push((page, t)),
            }
        }
        Self { pages, sessions: sessions.into_values().map(Arc::new).collect() }
    }

    /// How many rows of [`journeys_query`] these are: one per session and page.
    pub fn len(&self) -> usize {
        self.sessions.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.iter().all(|s| s.is_empty())
    }
}

/// Each flow's horizons from the baseline's journeys: twice the 95th
/// percentile of the baseline's times from a step's first page request to the
/// next page's, among the sessions that went on, between a second and the
/// session timeout. A session that took longer is one of the slowest few in a
/// hundred, twice over; a step too few sessions went on from keeps the
/// timeout.
pub fn horizons(journeys: &Journeys, flows: &mut [ResolvedFlow], timeout_ns: i64) {
    let (pages, at) = pages(flows);
    // The flows' page each numbered page requests, if any.
    let page_of: Vec<Option<usize>> =
        journeys.pages.iter().map(|(_, op)| pages.iter().position(|page| is_page(op, page))).collect();
    // Each session's first request of each flows' page.
    let first: Vec<Vec<Option<i64>>> = journeys
        .sessions
        .iter()
        .filter_map(|visits| {
            let mut times = vec![None; pages.len()];
            let mut any = false;
            for (page, t) in visits.iter() {
                if let Some(p) = page_of[*page as usize] {
                    times[p] = Some(times[p].map_or(*t, |f: i64| f.min(*t)));
                    any = true;
                }
            }
            any.then_some(times)
        })
        .collect();
    for (flow, at) in flows.iter_mut().zip(at) {
        flow.horizons = at
            .windows(2)
            .map(|pair| {
                let mut gaps: Vec<i64> =
                    first.iter().filter_map(|t| Some(t[pair[1]]? - t[pair[0]]?)).filter(|gap| *gap >= 0).collect();
                if gaps.len() < MIN_GAPS {
                    return timeout_ns;
                }
                gaps.sort_unstable();
                let q95 = gaps[((gaps.len() - 1) as f64 * 0.95).round() as usize];
                q95.saturating_mul(2).clamp(1_000_000_000, timeout_ns.max(1_000_000_000))
            })
            .collect();
    }
}

/// The rows of [`journeys_query`] with a session, an operation and a first
/// time: those, and the service (the columns found once per batch).
type JourneyRow<'a> = (Cow<'a, str>, Option<Cow<'a, str>>, Cow<'a, str>, i64);

fn journey_rows(rows: &Rows) -> impl Iterator<Item = JourneyRow<'_>> {
    use arrow::array::{Array, AsArray};
    rows.batches().iter().flat_map(|b: &arrow::array::RecordBatch| {
        let column = |n: &str| b.column_by_name(n).map(|a| a.as_ref());
        let texts = [column("session_id"), column("service"), column("operation")];
        let times = b.column_by_name("first_time").and_then(|a| arrow::compute::cast(a, &arrow::datatypes::DataType::Int64).ok());
        (0..b.num_rows()).filter_map(move |i| {
            let text = |k: usize| texts[k].and_then(|a| andon_store::sql::text_at(a, i));
            let t = times.as_ref().filter(|a| !a.is_null(i))?.as_primitive::<arrow::datatypes::Int64Type>().value(i);
            Some((text(0)?, text(1), text(2)?, t))
        })
    })
}

/// Whether operation `op` requests `page`: it is the page, or the page after
/// its method (`GET /cart` requests `/cart`).
fn is_page(op: &str, page: &str) -> bool {
    op == page || op.strip_suffix(page).is_some_and(|method| method.ends_with(' '))
}

/// One scan for every flow: per session, when it first and last requested each
/// page of any flow and whether one of them failed; then, per flow `f` and step
/// `k` with a next step, `reached{f}_{k}` (weighted as the SQL says),
/// `went{f}_{k}` (of those, the ones that went on within the step's horizon)
/// and `left_after_error{f}_{k}`.
pub fn query(ctx: &Ctx, flows: &[ResolvedFlow], filter: &str) -> String {
    render(ctx, flows, filter, false)
}

/// [`query`] over the [`super::history_look`] before the baseline's end as
/// well, with each earlier session's period (`period`, 0 the last before the
/// baseline's end) and whether it is in the baseline (`in_base`).
pub fn history_query(ctx: &Ctx, flows: &[ResolvedFlow]) -> String {
    render(ctx, flows, "", true)
}

/// The pages of every flow, each once, and each flow's steps as indexes into them.
fn pages(flows: &[ResolvedFlow]) -> (Vec<String>, Vec<Vec<usize>>) {
    let mut pages: Vec<String> = Vec::new();
    let at = flows
        .iter()
        .map(|flow| {
            flow.steps
                .iter()
                .map(|(_, op)| {
                    pages.iter().position(|p| p == op).unwrap_or_else(|| {
                        pages.push(op.clone());
                        pages.len() - 1
                    })
                })
                .collect()
        })
        .collect();
    (pages, at)
}

/// The session timeout in nanoseconds: a step's horizon when the baseline
/// gives it none.
fn timeout_ns(ctx: &Ctx) -> i64 {
    i64::try_from(ctx.config.session_timeout_secs).unwrap_or(i64::MAX).saturating_mul(1_000_000_000)
}

fn render(ctx: &Ctx, flows: &[ResolvedFlow], filter: &str, history: bool) -> String {
    let (pages, flow_pages) = pages(flows);
    // A row's step: the first page its operation, route or span name is.
    // Pages are distinct, so each column names one page at most, and the
    // first is the least of the three lookups (a lookup of literals, far
    // cheaper per row than a chain of comparisons).
    let lookup = |column: &str| {
        let arms: String = pages.iter().enumerate().map(|(p, op)| format!(" WHEN {} THEN {p}", sql::lit(op))).collect();
        format!("CASE {column}{arms} END")
    };
    let step_case = if pages.is_empty() {
        "CAST(NULL AS BIGINT)".to_owned()
    } else {
        format!("least({}, {}, {})", lookup("r.operation"), lookup("r.route"), lookup("r.span_name"))
    };
    // From `sessions`, a row holds the first and last call of its operation.
    let (first, last) = if ctx.sessioned() { ("first_call", "last_call") } else { ("start_time", "start_time") };
    let mut step_aggregates = String::new();
    for p in 0..pages.len() {
        step_aggregates.push_str(&format!(
            ", min(CASE WHEN step = {p} THEN {first} END) AS first{p}, \
             max(CASE WHEN step = {p} THEN {last} END) AS last{p}, \
             max(CASE WHEN step = {p} THEN err ELSE 0 END) AS err{p}"
        ));
    }
    let timeout_ns = timeout_ns(ctx);
    let end_ns = ctx.end.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let split_ns = ctx.split.timestamp_nanos_opt().unwrap_or(i64::MIN);
    let ns = |p: usize| format!("CAST(first{p} AS BIGINT)");
    let mut reach = String::new();
    let mut weigh = String::new();
    let mut reach_sums = String::new();
    for (f, (flow, at)) in flows.iter().zip(&flow_pages).enumerate() {
        let n = at.len();
        for k in 0..n {
            let reached = std::iter::once(format!("first{} IS NOT NULL", at[0]))
                .chain((1..=k).map(|j| format!("last{} >= first{}", at[j], at[j - 1])))
                .collect::<Vec<_>>()
                .join(" AND ");
            reach.push_str(&format!(", CASE WHEN {reached} THEN 1 ELSE 0 END AS r{f}_{k}"));
            if k + 1 == n {
                continue;
            }
            let t = if k == 0 {
                ns(at[0])
            } else {
                format!("greatest({})", at[..=k].iter().map(|p| ns(*p)).collect::<Vec<_>>().join(", "))
            };
            reach.push_str(&format!(", {t} AS t{f}_{k}"));
            let h = flow.horizon(k, timeout_ns);
            // The time by which a session must reach the step: H before what
            // the range has seen (`upto`).
            let by = format!("(upto - {h})");
            // How long a current session may take to reach the step and still
            // be kept, at the longest (at least a second).
            let kept = format!("greatest({by} - {split_ns}, 1000000000)");
            weigh.push_str(&format!(
                ", CASE WHEN r{f}_{k} = 0 OR t{f}_{k} >= {by} THEN 0.0 WHEN cur = 1 THEN 1.0 \
                 WHEN {kept} > t{f}_{k} - CAST(first_seen AS BIGINT) \
                 THEN CAST({kept} - (t{f}_{k} - CAST(first_seen AS BIGINT)) AS DOUBLE) / {kept} ELSE 0.0 END AS e{f}_{k}, \
                 CASE WHEN r{f}_{k1} = 1 AND {next} - t{f}_{k} <= {h} THEN 1 ELSE 0 END AS g{f}_{k}",
                k1 = k + 1,
                next = ns(at[k + 1]),
            ));
            reach_sums.push_str(&format!(
                ", sum(e{f}_{k}) AS reached{f}_{k}, sum(e{f}_{k} * e{f}_{k}) AS reached_sq{f}_{k}, \
                 sum(e{f}_{k} * g{f}_{k}) AS went{f}_{k}, \
                 sum(CASE WHEN g{f}_{k} = 0 AND err{p} = 1 THEN e{f}_{k} ELSE 0 END) AS left_after_error{f}_{k}",
                p = at[k]
            ));
        }
    }
    let (segment_max, read) = session_segments(ctx);
    if ctx.short {
        let parts = Parts { step_case, step_aggregates, reach, segment_max, read };
        return render_short(ctx, flows, filter, history, parts);
    }
    let (mut vars, history, history_keys) = if history {
        let (window_ns, end_ns) = period_of(ctx);
        let wide = Ctx { baseline_start: history_start(ctx), ..ctx.clone() };
        let columns = format!(
            ", CASE WHEN first_seen >= {base} THEN 1 ELSE 0 END AS in_base, \
             CASE WHEN first_seen < {end} THEN CAST(({end_ns} - CAST(first_seen AS BIGINT) - 1) / {window_ns} AS BIGINT) END AS period",
            base = sql::ts(ctx.baseline_start),
            end = sql::ts(ctx.baseline_end),
        );
        (vars_of(&wide, filter), columns, ", in_base, period".to_owned())
    } else {
        (vars_of(ctx, filter), String::new(), String::new())
    };
    vars.extend([
        ("history", history),
        ("history_keys", history_keys),
        ("step_case", step_case),
        ("step_aggregates", step_aggregates),
        ("reach", reach),
        ("weighed", format!("SELECT *{weigh} FROM funnel")),
        ("reach_sums", reach_sums),
        ("segment_max", segment_max),
        ("read", read),
        ("end_ns", end_ns.to_string()),
    ]);
    sql::render(if ctx.sessioned() { SESSIONS_SQL } else { SQL }, &vars)
}

/// A session's segment values, as the funnels group it, with what the
/// statement reads them from: `segment_max`, the greatest value of each
/// column, except `service.version`; and `read`, the rows, each with
/// `released`, when its release (service and version) was first called over
/// the rows read, for the rows of the service released last only. A
/// session's `service.version` is then the release of that service that
/// served it (the later, if both), none if the service did not serve it: in
/// a rollout's first minutes the sessions the new release served, whichever
/// callee of the steps it is, are a canary against the sessions the service
/// served before ([`super::segment_tests`] judges a new release against the
/// cells that have a release), and the sessions that never reach that
/// service (who differ from those who do) are neither. [`folded`] makes the
/// same values of the same rows. Only a short window ([`Ctx::short`]) tells
/// releases apart; over a whole window a session has no `service.version`.
fn session_segments(ctx: &Ctx) -> (String, String) {
    let release = release_column(ctx);
    let segment_max = (0..ctx.segments.columns.len())
        .map(|i| {
            if Some(i) == release && !ctx.short {
                // Over a whole window the sessions of a release are not
                // told apart: a window that long holds the releases before
                // and after a deploy, and whatever the baseline served.
                format!(", CAST(NULL AS VARCHAR) AS seg{i}")
            } else if Some(i) == release {
                format!(
                    ", last_value(CASE WHEN released IS NOT NULL THEN seg{i} END ORDER BY released NULLS FIRST, \
                     seg{i} NULLS FIRST) AS seg{i}, max(released) AS released"
                )
            } else {
                format!(", max(seg{i}) AS seg{i}")
            }
        })
        .collect();
    let Some(i) = release.filter(|_| ctx.short) else {
        return (segment_max, "raw_rows".to_owned());
    };
    // A row's version (`seg{i}`) is its service's own, over `sessions` and
    // spans alike. Each release's first request, kept for the service
    // released last (the latest first request, then the greatest version and
    // service name), is looked up by a join on the few releases, so the rows
    // are streamed past it: a window over every row, or a cross join that
    // holds them all, needed them in memory at once.
    let releases = format!(
        "(SELECT service, seg{i} AS version, min(start_time) AS at FROM raw_rows WHERE seg{i} IS NOT NULL \
         GROUP BY service, seg{i})"
    );
    let read = format!(
        "(SELECT y.*, rl.at AS released FROM (SELECT service, version, at FROM (SELECT service, version, at, \
         last_value(service) OVER (ORDER BY at, version, service ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) \
         AS newest FROM {releases} a) b WHERE service = newest) rl \
         RIGHT JOIN raw_rows y ON y.service = rl.service AND y.seg{i} = rl.version)"
    );
    (segment_max, read)
}

/// The segment column of `service.version`, if the pass segments by it.
fn release_column(ctx: &Ctx) -> Option<usize> {
    ctx.segments.columns.iter().position(|c| c.attribute == "service.version")
}

/// What [`render`] builds the same way for a window of any length: the
/// lookup of a row's page, the per-page aggregates, and each step's reach
/// and time columns.
struct Parts {
    step_case: String,
    step_aggregates: String,
    reach: String,
    segment_max: String,
    read: String,
}

/// The funnels of a short window ([`Ctx::short`]): the sessions whose
/// horizon at a step ended in the window's length before what the range has
/// seen (`upto`), so that each is known to have gone on or left, against
/// the baseline's sessions that reached the step. Sides and periods are
/// per step, by when a session reached it, not when it started: the rows
/// are one per session and step (`fk`, numbered over the flows' steps with
/// a next one) and are summed back into the columns of [`render`], each
/// session weighing 1. With `history`, the periods of the window's length
/// over [`history_look`] before the baseline's end, the sessions still
/// inside their horizon on the current side as well (`cur` 2, a row per
/// stratum `wait` of how long they have waited, [`WAIT_STRATA`]), and per
/// step `within{f}_{k}_{j}`, the sessions that went on within each
/// stratum's time.
fn render_short(ctx: &Ctx, flows: &[ResolvedFlow], filter: &str, history: bool, parts: Parts) -> String {
    let (_, flow_pages) = pages(flows);
    let timeout_ns = timeout_ns(ctx);
    let ns = |p: usize| format!("CAST(first{p} AS BIGINT)");
    let (mut t_arms, mut r_arms, mut gap_arms, mut e_arms, mut h_arms, mut reach_sums, mut values) =
        (String::new(), String::new(), String::new(), String::new(), String::new(), String::new(), Vec::new());
    let mut i = 0usize;
    for (f, (flow, at)) in flows.iter().zip(&flow_pages).enumerate() {
        for k in 0..at.len().saturating_sub(1) {
            let h = flow.horizon(k, timeout_ns);
            t_arms.push_str(&format!(" WHEN {i} THEN t{f}_{k}"));
            r_arms.push_str(&format!(" WHEN {i} THEN r{f}_{k}"));
            gap_arms.push_str(&format!(
                " WHEN {i} THEN CASE WHEN r{f}_{k1} = 1 THEN {next} - t{f}_{k} END",
                k1 = k + 1,
                next = ns(at[k + 1]),
            ));
            e_arms.push_str(&format!(" WHEN {i} THEN err{}", at[k]));
            h_arms.push_str(&format!(" WHEN {i} THEN {h}"));
            reach_sums.push_str(&format!(
                ", sum(CASE WHEN fk = {i} THEN 1.0 ELSE 0.0 END) AS reached{f}_{k}, \
                 sum(CASE WHEN fk = {i} THEN 1.0 ELSE 0.0 END) AS reached_sq{f}_{k}, \
                 sum(CASE WHEN fk = {i} AND g = 1 THEN 1.0 ELSE 0.0 END) AS went{f}_{k}, \
                 sum(CASE WHEN fk = {i} AND g = 0 AND e = 1 THEN 1.0 ELSE 0.0 END) AS left_after_error{f}_{k}"
            ));
            if history {
                for j in 1..WAIT_STRATA {
                    reach_sums.push_str(&format!(
                        ", sum(CASE WHEN fk = {i} AND gap <= {by} THEN 1.0 ELSE 0.0 END) AS within{f}_{k}_{j}",
                        by = wait_cut(h, j as i64),
                    ));
                }
            }
            values.push(format!("({i})"));
            i += 1;
        }
    }
    let segments = ctx.segments.list();
    let (window_ns, base_end_ns) = period_of(ctx);
    let base_ns = ctx.baseline_start.timestamp_nanos_opt().unwrap_or(i64::MIN);
    // Periods over `history_look` before the baseline's end, and the rows
    // read from where the window's own pass reads them, so that both read
    // one range of the kept sessions.
    let (look_ns, from) = if history {
        let look = ctx.baseline_end - history_look(ctx);
        (look.timestamp_nanos_opt().unwrap_or(i64::MIN), read_from(ctx))
    } else {
        (base_ns, ctx.baseline_start)
    };
    let (history_keys, period) = if history {
        (
            ", in_base, period, wait",
            format!(
                ", CASE WHEN cur = 0 AND t >= {look_ns} AND t < {base_end_ns} \
                 THEN CAST(({base_end_ns} - t - 1) / {window_ns} AS BIGINT) END AS period"
            ),
        )
    } else {
        ("", String::new())
    };
    // With the history, the sessions still inside their horizon (`cur` 2)
    // too, each in the stratum of how long it has waited ([`WAIT_STRATA`]).
    let strata = WAIT_STRATA as i64;
    let waiting = if history {
        format!(" WHEN t > upto - h AND upto - t >= h / {strata} THEN 2")
    } else {
        String::new()
    };
    let weighed = format!(
        "SELECT *, CASE WHEN cur = 0 AND t >= {base_ns} AND t < {base_end_ns} THEN 1 ELSE 0 END AS in_base{period} \
         FROM (SELECT *, CASE WHEN wait IS NOT NULL THEN CASE WHEN gap <= wait * (h / {strata}) THEN 1 ELSE 0 END \
         WHEN gap <= h THEN 1 ELSE 0 END AS g \
         FROM (SELECT *, CASE WHEN cur = 2 THEN least((upto - t) / (h / {strata}), {last}) END AS wait \
         FROM (SELECT *, CASE WHEN t >= upto - h - {window_ns} AND t < upto - h THEN 1{waiting} ELSE 0 END AS cur \
         FROM (SELECT session_id{segments}, upto, fk.i AS fk, CASE fk.i{t_arms} END AS t, CASE fk.i{r_arms} END AS r, \
         CASE fk.i{gap_arms} END AS gap, CASE fk.i{e_arms} END AS e, CASE fk.i{h_arms} END AS h \
         FROM (VALUES {values}) AS fk(i) CROSS JOIN funnel) unpivoted \
         WHERE r = 1) stepped) waited) judged \
         WHERE cur >= 1 OR (t >= {lower} AND t < {base_end_ns})",
        last = strata - 1,
        values = if values.is_empty() { "(-1)".to_owned() } else { values.join(", ") },
        lower = look_ns.min(base_ns),
    );
    // The rows read: the whole range, the window's minutes before its start
    // included, since a session's horizon at a step ends in the window only
    // when it reached the step before.
    let read = Ctx { baseline_start: from, baseline_end: ctx.split, ..ctx.clone() };
    let mut vars = vars_of(&read, filter);
    vars.extend([
        ("history", String::new()),
        ("history_keys", history_keys.to_owned()),
        ("step_case", parts.step_case),
        ("step_aggregates", parts.step_aggregates),
        ("reach", parts.reach),
        ("reach_sums", reach_sums),
        ("segment_max", parts.segment_max),
        ("read", parts.read),
        ("end_ns", ctx.end.timestamp_nanos_opt().unwrap_or(i64::MAX).to_string()),
        ("weighed", weighed),
    ]);
    sql::render(if ctx.sessioned() { SESSIONS_SQL } else { SQL }, &vars)
}

/// A short window's sessions still inside their horizon at a step are
/// judged by how long they have waited, in strata of this many parts of the
/// horizon: one that has waited `j` parts (1 ≤ j < this) counts as gone on
/// when it requested the next page within `j` parts, against the baseline's
/// share that did; one that has waited less is not judged yet.
pub const WAIT_STRATA: usize = 4;

/// How long a session in wait stratum `j` has had to go on: `j` parts of
/// the horizon `h` ([`WAIT_STRATA`]).
fn wait_cut(h: i64, j: i64) -> i64 {
    (h / WAIT_STRATA as i64).saturating_mul(j)
}

/// Where a history's rows start: [`history_start`], or for a short window
/// where its whole window's history starts (the window is the short one's
/// baseline end to its end), so that both judgements of a continuous pass
/// read one range.
pub(crate) fn read_from(ctx: &Ctx) -> chrono::DateTime<chrono::Utc> {
    if ctx.short {
        let whole = Ctx { split: ctx.baseline_end, short: false, ..ctx.clone() };
        history_start(&whole).min(history_start(ctx))
    } else {
        history_start(ctx)
    }
}

/// Where [`history_query`] starts reading: [`history_look`] before the
/// baseline's end, or the baseline's start if earlier.
pub(crate) fn history_start(ctx: &Ctx) -> chrono::DateTime<chrono::Utc> {
    ctx.baseline_start.min(ctx.baseline_end - history_look(ctx))
}

/// The length of [`history_query`]'s periods and where they count back
/// from, in nanoseconds: the current window's length, and the baseline's end.
fn period_of(ctx: &Ctx) -> (i64, i64) {
    let window_ns = (ctx.end - ctx.split).num_nanoseconds().unwrap_or(i64::MAX).max(1);
    (window_ns, ctx.baseline_end.timestamp_nanos_opt().unwrap_or(i64::MAX))
}

/// The rows of [`history_query`] over `sessions`, from `pages`, every session
/// with rows in its range ([`crate::fold::PageFold`]): the same columns,
/// groups and sums, each session weighed as the statement weighs it.
pub fn folded(ctx: &Ctx, flows: &[ResolvedFlow], pages: &crate::fold::Pages) -> Result<Rows, arrow::error::ArrowError> {

    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let (page_names, flow_pages) = self::pages(flows);
    // Each request's step: the first page its operation, route or span name is.
    let step_of: Vec<Option<usize>> = pages
        .requests
        .iter()
        .map(|texts| {
            texts.iter().filter_map(|t| t.as_deref().and_then(|t| page_names.iter().position(|p| p == t))).min()
        })
        .collect();
    let timeout_ns = timeout_ns(ctx);
    let ns = |t: chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt();
    let split_ns = ns(ctx.split).unwrap_or(i64::MIN);
    let base_ns = ns(ctx.baseline_start).unwrap_or(i64::MIN);
    let (window_ns, base_end_ns) = period_of(ctx);
    // What the range has seen, as the statement's `upto`: its latest call, or
    // its end if earlier.
    let latest = pages.sessions.iter().flat_map(|s| s.requests.iter().map(|r| r.2)).max();
    let upto = latest.map_or(i64::MAX, |l| l.min(ns(ctx.end).unwrap_or(i64::MAX)));
    // Per flow and step with a next one: its horizon, the time by which a
    // session must reach it, and how long a current session may take to.
    let bounds: Vec<Vec<(i64, i64, i64)>> = flows
        .iter()
        .zip(&flow_pages)
        .map(|(flow, at)| {
            (0..at.len().saturating_sub(1))
                .map(|k| {
                    let h = flow.horizon(k, timeout_ns);
                    let by = upto.saturating_sub(h);
                    (h, by, by.saturating_sub(split_ns).max(1_000_000_000))
                })
                .collect()
        })
        .collect();
    // The sums of a step: reached, reached_sq, went and left_after_error,
    // and for a short window within each wait stratum's time.
    let per_step = if ctx.short { 3 + WAIT_STRATA } else { 4 };
    let width: usize = bounds.iter().map(|b| b.len() * per_step).sum();
    // A short window's periods and the earliest of its rows kept, as
    // [`render_short`] has them.
    let look_ns = ns(ctx.baseline_end - history_look(ctx)).unwrap_or(i64::MIN);
    let lower_ns = look_ns.min(base_ns);
    /// A group of the statement: `cur`, `in_base`, `period`, a short
    /// window's `wait` and the segment values' number.
    type Group = (i64, i64, Option<i64>, Option<i64>, u32);
    // Each group's sessions, then the sums of each step.
    let mut groups: HashMap<Group, (i64, Vec<f64>)> = HashMap::new();
    let mut first = vec![None::<i64>; page_names.len()];
    let mut last = vec![None::<i64>; page_names.len()];
    let mut err = vec![false; page_names.len()];
    let (seg_values, seg_of) = session_values(ctx, pages);
    for (s, &segs) in pages.sessions.iter().zip(&seg_of) {
        first.iter_mut().for_each(|v| *v = None);
        last.iter_mut().for_each(|v| *v = None);
        err.iter_mut().for_each(|v| *v = false);
        for (request, f, l, e) in &s.requests {
            let Some(p) = step_of[*request as usize] else { continue };
            first[p] = Some(first[p].map_or(*f, |v: i64| v.min(*f)));
            last[p] = Some(last[p].map_or(*l, |v: i64| v.max(*l)));
            err[p] |= *e;
        }
        if ctx.short {
            // One row per step the session reached, keyed by when it did.
            let mut col = 0;
            for (at, steps) in flow_pages.iter().zip(&bounds) {
                let mut reached = first[at[0]].is_some();
                let link = |j: usize| matches!((last[at[j]], first[at[j - 1]]), (Some(l), Some(f)) if l >= f);
                let mut t: Option<i64> = None;
                for (k, (h, by, _)) in steps.iter().enumerate() {
                    t = t.max(first[at[k]]);
                    let reached_next = reached && link(k + 1);
                    if let (true, Some(t)) = (reached, t) {
                        let part = h / WAIT_STRATA as i64;
                        let cur = if t >= by.saturating_sub(window_ns) && t < *by {
                            1
                        } else if t > *by && upto - t >= part {
                            2
                        } else {
                            0
                        };
                        if cur > 0 || (t >= lower_ns && t < base_end_ns) {
                            let in_base = cur == 0 && t >= base_ns && t < base_end_ns;
                            let period =
                                (cur == 0 && t >= look_ns && t < base_end_ns).then(|| (base_end_ns - t - 1) / window_ns);
                            let wait = (cur == 2).then(|| ((upto - t) / part).min(WAIT_STRATA as i64 - 1));
                            let gap = first[at[k + 1]].filter(|_| reached_next).map(|next| next - t);
                            let went = gap.is_some_and(|gap| gap <= wait.map_or(*h, |j| wait_cut(*h, j)));
                            let (sessions, sums) = groups
                                .entry((cur, i64::from(in_base), period, wait, segs))
                                .or_insert_with(|| (0, vec![0.0; width]));
                            *sessions += 1;
                            sums[col] += 1.0;
                            sums[col + 1] += 1.0;
                            sums[col + 2] += if went { 1.0 } else { 0.0 };
                            sums[col + 3] += if !went && err[at[k]] { 1.0 } else { 0.0 };
                            for j in 1..WAIT_STRATA {
                                sums[col + 3 + j] += if gap.is_some_and(|gap| gap <= wait_cut(*h, j as i64)) { 1.0 } else { 0.0 };
                            }
                        }
                    }
                    col += per_step;
                    reached = reached_next;
                }
            }
            continue;
        }
        let cur = i64::from(s.first_seen >= split_ns);
        let in_base = i64::from(s.first_seen >= base_ns);
        let period = (s.first_seen < base_end_ns).then(|| (base_end_ns - s.first_seen - 1) / window_ns);
        let (sessions, sums) =
            groups.entry((cur, in_base, period, None, segs)).or_insert_with(|| (0, vec![0.0; width]));
        *sessions += 1;
        let mut col = 0;
        for (at, steps) in flow_pages.iter().zip(&bounds) {
            // Whether the session reached step k: the flow's first page, then
            // each next one no earlier than the one before.
            let mut reached = first[at[0]].is_some();
            if !reached {
                col += per_step * steps.len();
                continue;
            }
            let link = |j: usize| matches!((last[at[j]], first[at[j - 1]]), (Some(l), Some(f)) if l >= f);
            // The latest first request of the steps up to k.
            let mut t: Option<i64> = None;
            for (k, (h, by, kept)) in steps.iter().enumerate() {
                t = t.max(first[at[k]]);
                let reached_next = reached && link(k + 1);
                let e = match t {
                    Some(t) if reached && t < *by => {
                        if cur == 1 {
                            1.0
                        } else if *kept > t - s.first_seen {
                            (kept - (t - s.first_seen)) as f64 / *kept as f64
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                let went = match (t, first[at[k + 1]]) {
                    (Some(t), Some(next)) => reached_next && next - t <= *h,
                    _ => false,
                };
                sums[col] += e;
                sums[col + 1] += e * e;
                sums[col + 2] += if went { e } else { 0.0 };
                sums[col + 3] += if !went && err[at[k]] { e } else { 0.0 };
                col += per_step;
                reached = reached_next;
            }
        }
    }
    let mut rows: Vec<(&Group, &(i64, Vec<f64>))> = groups.iter().collect();
    rows.sort_by_key(|(k, _)| **k);
    let int = |f: &dyn Fn(&Group) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(|(k, _)| f(k)).collect::<Int64Array>())
    };
    let mut fields = vec![
        Field::new("cur", DataType::Int64, true),
        Field::new("in_base", DataType::Int64, true),
        Field::new("period", DataType::Int64, true),
    ];
    let mut columns = vec![int(&|k| Some(k.0)), int(&|k| Some(k.1)), int(&|k| k.2)];
    if ctx.short {
        fields.push(Field::new("wait", DataType::Int64, true));
        columns.push(int(&|k| k.3));
    }
    for i in 0..ctx.segments.columns.len() {
        fields.push(Field::new(format!("seg{i}"), DataType::Utf8, true));
        let values = rows.iter().map(|(k, _)| seg_values[k.4 as usize].get(i).and_then(|v| v.as_deref()));
        columns.push(Arc::new(values.collect::<StringArray>()));
    }
    fields.push(Field::new("sessions", DataType::Int64, true));
    columns.push(Arc::new(rows.iter().map(|(_, (n, _))| Some(*n)).collect::<Int64Array>()));
    let mut col = 0;
    for (f, steps) in bounds.iter().enumerate() {
        for k in 0..steps.len() {
            let within = (1..WAIT_STRATA).map(|j| format!("within{f}_{k}_{j}"));
            let names = ["reached", "reached_sq", "went", "left_after_error"].map(|name| format!("{name}{f}_{k}"));
            for name in names.into_iter().chain(within).take(per_step) {
                fields.push(Field::new(name, DataType::Float64, true));
                columns.push(Arc::new(rows.iter().map(|(_, (_, sums))| Some(sums[col])).collect::<Float64Array>()));
                col += 1;
            }
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(Rows::new(vec![batch]))
}

/// Each session's segment values as [`session_segments`] makes them from
/// `sessions` rows, numbered: the greatest of each column, and under
/// `service.version` the release that served it of the service released
/// last (in a short window; none over a whole one). Returns the values by
/// number and each session's number, in the order of `pages.sessions`.
fn session_values(ctx: &Ctx, pages: &crate::fold::Pages) -> (Vec<Vec<Option<String>>>, Vec<u32>) {
    let Some(vi) = release_column(ctx) else {
        return (pages.segments.clone(), pages.sessions.iter().map(|s| s.segs).collect());
    };
    let version = |segs: u32| pages.segments.get(segs as usize).and_then(|v| v.get(vi)).and_then(|v| v.as_deref());
    let name = |service: u32| pages.services.get(service as usize).and_then(|s| s.as_deref());
    // When each release (service and version) was first called in the range;
    // none over a whole window, where no session has a release.
    let mut released: HashMap<(u32, &str), i64> = HashMap::new();
    for s in pages.sessions.iter().filter(|_| ctx.short) {
        for &(service, segs, first) in &s.served {
            if let Some(v) = version(segs) {
                let at = released.entry((service, v)).or_insert(first);
                *at = (*at).min(first);
            }
        }
    }
    // The service released last (its version's text, then its name, breaking a tie).
    let newest = released.iter().map(|(&(service, v), &at)| (at, v, name(service), service)).max().map(|n| n.3);
    number_values(pages.sessions.iter().map(|s| {
        let release = s
            .served
            .iter()
            .filter(|&&(service, _, _)| Some(service) == newest)
            .filter_map(|&(service, segs, _)| {
                let v = version(segs)?;
                Some((released.get(&(service, v)).copied()?, v))
            })
            .max();
        let mut own = pages.segments.get(s.segs as usize).cloned().unwrap_or_default();
        if let Some(slot) = own.get_mut(vi) {
            *slot = release.map(|(_, v)| v.to_owned());
        }
        own
    }))
}

/// Each session's values numbered: the distinct values, and each session's
/// number, in order.
fn number_values(each: impl Iterator<Item = Vec<Option<String>>>) -> (Vec<Vec<Option<String>>>, Vec<u32>) {
    let mut numbers: HashMap<Vec<Option<String>>, u32> = HashMap::new();
    let mut values: Vec<Vec<Option<String>>> = Vec::new();
    let of = each
        .map(|own| {
            *numbers.entry(own).or_insert_with_key(|own| {
                values.push(own.clone());
                values.len() as u32 - 1
            })
        })
        .collect();
    (values, of)
}

/// The placeholders of the funnel query, over `sessions` or spans.
fn vars_of(ctx: &Ctx, filter: &str) -> Vec<(&'static str, String)> {
    if ctx.sessioned() { ctx.session_vars(filter) } else { ctx.vars(filter) }
}

pub fn journeys_query(ctx: &Ctx) -> String {
    let mut c = ctx.clone();
    c.end = ctx.baseline_end;
    c.split = ctx.baseline_end;
    if c.sessioned() {
        return sql::render(include_str!("journeys_sessions.sql"), &c.session_vars(""));
    }
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
            steps.map(|steps| ResolvedFlow { name: f.name.clone(), steps, horizons: Vec::new() })
        })
        .collect()
}

/// Journeys beyond this many are left out, the least travelled first.
const MAX_FLOWS: usize = 12;

/// Every journey enough sessions follow, not only the most common: checkout
/// is rarely the most travelled path. Pages are linked `A → B` when sessions
/// that request both request `A` first (85% of them) and sessions reach `B`
/// through `A` (85% of those requesting `B` requested `A` before it); links
/// implied by a longer path are dropped, and every path from a page nothing
/// leads to, to a page that leads nowhere, with at least three pages, is a
/// journey. A page counts when at least 2% of sessions (at least ten)
/// request it.
pub fn discover(journeys: &Journeys) -> Vec<ResolvedFlow> {
    // Pages numbered by name, not in the order rows arrive (which varies from
    // one run to the next): ties between journeys break the same way every
    // time. A page without a service is no step.
    let mut order: Vec<usize> = (0..journeys.pages.len()).filter(|i| journeys.pages[*i].0.is_some()).collect();
    order.sort_by(|a, b| journeys.pages[*a].cmp(&journeys.pages[*b]));
    let mut rank: Vec<Option<usize>> = vec![None; journeys.pages.len()];
    for (r, i) in order.iter().enumerate() {
        rank[*i] = Some(r);
    }
    let ops: Vec<(String, String)> =
        order.iter().map(|i| (journeys.pages[*i].0.clone().unwrap_or_default(), journeys.pages[*i].1.clone())).collect();
    let mut sessions: Vec<Vec<(i64, usize)>> = journeys
        .sessions
        .iter()
        .map(|visits| visits.iter().filter_map(|(page, t)| Some((*t, rank[*page as usize]?))).collect::<Vec<_>>())
        .filter(|seq| !seq.is_empty())
        .collect();
    let total = sessions.len();
    if total < 50 {
        return Vec::new();
    }
    let n = ops.len();
    let mut support = vec![0usize; n];
    let mut before = vec![vec![0usize; n]; n];
    for seq in sessions.iter_mut() {
        seq.sort_unstable();
        seq.dedup_by_key(|(_, i)| *i);
        for (pos, (_, i)) in seq.iter().enumerate() {
            support[*i] += 1;
            for (_, j) in &seq[pos + 1..] {
                before[*i][*j] += 1;
            }
        }
    }
    let min_support = (total / 50).max(10);
    let pages: Vec<usize> = (0..n).filter(|i| support[*i] >= min_support).collect();
    let linked = |a: usize, b: usize| {
        let (ab, both) = (before[a][b], before[a][b] + before[b][a]);
        ab >= min_support && ab as f64 >= 0.85 * both as f64 && ab as f64 >= 0.85 * support[b] as f64
    };
    let mut next: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut has_prev = vec![false; n];
    for &a in &pages {
        for &b in &pages {
            if a == b || !linked(a, b) {
                continue;
            }
            let implied = pages.iter().any(|&c| c != a && c != b && linked(a, c) && linked(c, b));
            if !implied {
                next.entry(a).or_default().push(b);
                has_prev[b] = true;
            }
        }
    }
    // Every maximal path, depth first from the pages nothing leads to. The
    // links only go forward in the order sessions take, so there is no cycle.
    let mut paths: Vec<Vec<usize>> = Vec::new();
    let mut stack: Vec<Vec<usize>> = pages.iter().filter(|p| !has_prev[**p]).map(|p| vec![*p]).collect();
    while let Some(path) = stack.pop() {
        if paths.len() >= 4 * MAX_FLOWS {
            break;
        }
        let last = *path.last().unwrap_or(&0);
        match next.get(&last) {
            Some(after) if !after.is_empty() => {
                for b in after {
                    let mut p = path.clone();
                    p.push(*b);
                    stack.push(p);
                }
            }
            _ => {
                if path.len() >= 3 {
                    paths.push(path);
                }
            }
        }
    }
    // The most travelled first: by the sessions that take the journey's first link.
    paths.sort_by_key(|p| (std::cmp::Reverse(before[p[0]][p[1]]), p.clone()));
    paths.truncate(MAX_FLOWS);
    paths
        .into_iter()
        .map(|chain| ResolvedFlow {
            name: format!("discovered: {}", chain.iter().map(|i| ops[*i].1.as_str()).collect::<Vec<_>>().join(" → ")),
            steps: chain.into_iter().map(|i| ops[i].clone()).collect(),
            horizons: Vec::new(),
        })
        .collect()
}

/// One side of a step, in sessions weighted as [`query`] weighs them.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Σw over the sessions that reached the step.
    pub reached: f64,
    /// Σw² over them: with `reached`, the effective number of sessions.
    pub reached_sq: f64,
    /// Σw over those that went on to the next step.
    pub next: f64,
    pub left_after_error: f64,
    /// On the baseline's side, the same sums per period of the window's length
    /// before the baseline's end ([`history_query`]), keyed by how many
    /// periods back it is, without `left_after_error`.
    pub periods: BTreeMap<i64, Step>,
    /// On the baseline's side of a short window, Σw over the sessions that
    /// went on within each wait stratum's time (stratum `j` at `j - 1`,
    /// [`WAIT_STRATA`]).
    pub within: [f64; WAIT_STRATA - 1],
    /// On the current side of a short window, the sessions still inside
    /// their horizon, per wait stratum (`j` at `j - 1`).
    pub waiting: [Waiting; WAIT_STRATA - 1],
}

/// The sessions of a wait stratum: how many reached the step, how many went
/// on within the stratum's time, and how many of the rest hit an error there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waiting {
    pub sessions: f64,
    pub went: f64,
    pub left_after_error: f64,
}

impl Step {
    /// Kish's effective number of sessions, (Σw)² / Σw²: as many as the
    /// sessions when every weight is 1.
    fn effective(&self) -> f64 {
        if self.reached_sq > 0.0 { self.reached * self.reached / self.reached_sq } else { 0.0 }
    }

    /// Sessions that reached the step and those that left there, as whole
    /// effective sessions (the weighted shares kept).
    fn counts(&self) -> (u64, u64) {
        let n = self.effective();
        let left = (self.reached - self.next.min(self.reached)).max(0.0);
        let share = if self.reached > 0.0 { left / self.reached } else { 0.0 };
        (n.round() as u64, (n * share).round() as u64)
    }
}

impl Metric for Step {
    fn add(&mut self, o: &Self) {
        self.reached += o.reached;
        self.reached_sq += o.reached_sq;
        self.next += o.next;
        self.left_after_error += o.left_after_error;
        for (k, p) in &o.periods {
            self.periods.entry(*k).or_default().add(p);
        }
        for (a, b) in self.within.iter_mut().zip(&o.within) {
            *a += b;
        }
        for (a, b) in self.waiting.iter_mut().zip(&o.waiting) {
            a.sessions += b.sessions;
            a.went += b.went;
            a.left_after_error += b.left_after_error;
        }
    }

    /// The sessions that reached the step, those still inside their horizon
    /// included.
    fn samples(&self) -> u64 {
        (self.effective() + self.waiting.iter().map(|w| w.sessions).sum::<f64>()).round() as u64
    }
}

/// The current leaving rate against the periods before the baseline's end
/// ([`super::against_history`] on each period's effective sessions and
/// leavers).
pub fn against_history(periods: &BTreeMap<i64, Step>, c: &Step, min: u64) -> Option<History> {
    super::against_history(periods.values().map(Step::counts), c.counts(), min)
}

/// A fall in conversion that is material: by `drop_min_relative` of the
/// conversion before, two points of leaving rate, and five sessions.
fn material(ctx: &Ctx, left_before: f64, left_now: f64, left: u64) -> bool {
    let (before, now) = (1.0 - left_before, 1.0 - left_now);
    let relative = if before > 0.0 { (before - now) / before } else { 0.0 };
    relative >= ctx.config.drop_min_relative && left_now - left_before >= 0.02 && left >= 5
}

/// The step's conversion against the baseline's and, where the periods before
/// it show how much it varies ([`against_history`]), against those too: the
/// fall must hold against both (the larger p-value), so a baseline that
/// happened to lose few sessions does not make an ordinary window a drop-off.
fn judge(ctx: &Ctx, b: &Step, c: &Step, next_step: &str) -> Option<Judgement> {
    let ((nb, lb), (nc, lc)) = (b.counts(), c.counts());
    let waited = Waited::of(b, c);
    let (t, current, lc, nc) = match &waited {
        // With sessions still inside their horizon: the sessions that have
        // not gone on so far, against how many would not have at the
        // baseline's leaving rate.
        Some(w) => {
            let t = andon_model::statistics::ProportionTest {
                p_value: w.p_value(Waited::smoothed(lb as f64, nb as f64)),
                baseline: lb as f64 / nb as f64,
                current: w.rate(),
                test: "binomial_strata_exact",
            };
            let shown = Step {
                reached: w.worth,
                reached_sq: w.worth,
                next: w.went,
                left_after_error: c.left_after_error + c.waiting.iter().map(|w| w.left_after_error).sum::<f64>(),
                ..Step::default()
            };
            let left = (w.worth - w.went).max(0.0).round() as u64;
            (t, shown, left, w.worth.round() as u64)
        }
        None => (andon_model::statistics::proportion_greater(lb, nb, lc, nc)?, c.clone(), lc, nc),
    };
    let c = &current;
    let (conv_b, conv_c) = (1.0 - t.baseline, 1.0 - t.current);
    let relative = if conv_b > 0.0 { (conv_b - conv_c) / conv_b } else { 0.0 };
    let mut material = material(ctx, t.baseline, t.current, lc);
    let mut p_value = t.p_value;
    let history = match &waited {
        Some(w) => super::against_history(b.periods.values().map(Step::counts), (1, 0), ctx.config.segment_min_samples)
            .map(|h| History { p_value: w.against_history(&h), ..h }),
        None => against_history(&b.periods, c, ctx.config.segment_min_samples),
    };
    if let Some(h) = history {
        material &= self::material(ctx, h.rate, t.current, lc);
        p_value = p_value.max(h.p_value);
    }
    // A short window is judged only against enough periods like it.
    if ctx.short && history.is_none_or(|h| h.periods < super::SHORT_MIN_PERIODS) {
        material = false;
    }
    let side = |s: &Step, conv: f64| {
        let whole = |x: f64| Value::from(x.round() as u64);
        BTreeMap::from([
            ("sessions_reached".to_owned(), whole(s.reached)),
            ("sessions_continued".to_owned(), whole(s.next)),
            ("sessions_left".to_owned(), whole(s.reached - s.next.min(s.reached))),
            ("effective_sessions".to_owned(), whole(s.effective())),
            ("conversion".to_owned(), num(round(conv, 5))),
            ("left_after_error".to_owned(), whole(s.left_after_error)),
        ])
    };
    let left_c = c.reached - c.next.min(c.reached);
    let error_share = if left_c <= 0.0 { 0.0 } else { (c.left_after_error / left_c).min(1.0) };
    // Of the sessions lost beyond the baseline's leaving rate, the share
    // that the leavers after an error beyond the baseline's account for:
    // some sessions leave every step, and these say whether the errors
    // explain the fall.
    let beyond = left_c - c.reached * t.baseline;
    let errors_beyond = c.left_after_error - c.reached * if b.reached > 0.0 { b.left_after_error / b.reached } else { 0.0 };
    let excess_share = if beyond <= 0.0 { 0.0 } else { (errors_beyond / beyond).clamp(0.0, 1.0) };
    let mut details = BTreeMap::from([
        ("next_step".to_owned(), Value::from(next_step)),
        ("left_after_error_share".to_owned(), num(round(error_share, 4))),
        (super::EXCESS_AFTER_ERROR.to_owned(), num(round(excess_share, 4))),
    ]);
    let mut current = side(c, conv_c);
    if let Some(w) = &waited {
        let (sessions, went) = w.waiting();
        current.insert("sessions_waiting".to_owned(), Value::from(sessions));
        current.insert("waiting_continued".to_owned(), Value::from(went));
        details.insert("wait_strata".to_owned(), Value::from(WAIT_STRATA));
    }
    if let Some(h) = history {
        details.insert("history_left_rate".to_owned(), num(round(h.rate, 5)));
        details.insert("history_dispersion".to_owned(), num(round(h.dispersion, 3)));
        details.insert("history_p_value".to_owned(), num(h.p_value));
        details.insert("windows_compared".to_owned(), Value::from(h.periods));
    }
    Some(Judgement {
        p_value,
        effect: round(relative, 5),
        size: relative,
        ci: None,
        test: t.test,
        material,
        baseline: side(b, conv_b),
        current,
        details,
        current_samples: nc,
    })
}

/// A short window's current side with its sessions still inside their
/// horizon ([`render_short`]): a session that has waited `j` parts of the
/// horizon has gone on by then with the probability `(1 - r)·sⱼ`, `r` the
/// step's leaving rate and `sⱼ` the share of the baseline's sessions going
/// on that did within `j` parts; a session whose horizon ended, `1 - r`.
/// The test counts the sessions not gone on so far, each stratum's weighed
/// by what it tells of `r` (`sⱼ / qⱼ(1 - qⱼ)`, `qⱼ` the chance of not having
/// gone on at the baseline's rate, in whole parts of [`WEIGHT_SCALE`]): a
/// sum of weighted binomials, whose exact tail at the baseline's rate, and
/// normal tail at the history's, give the p-value. A session that has
/// waited only a moment tells little and weighs little or nothing. The
/// sessions' worth fully observed, `Σ nⱼ sⱼ`, and those gone on give the
/// rate the window shows.
struct Waited {
    /// Per stratum, the sessions, those not gone on so far, `sⱼ` and the
    /// weight; the sessions whose horizon ended last, with `s` 1.
    strata: Vec<(u64, u64, f64, u64)>,
    /// Σ nⱼ sⱼ over the strata.
    worth: f64,
    /// The sessions gone on so far.
    went: f64,
}

/// The weight of the stratum that tells most of the leaving rate
/// ([`Waited`]); the others' in proportion, rounded.
const WEIGHT_SCALE: f64 = 4.0;

impl Waited {
    /// `None` without sessions waiting, or without a baseline that sessions
    /// went on from.
    fn of(b: &Step, c: &Step) -> Option<Self> {
        let (nb, lb) = b.counts();
        if c.waiting.iter().all(|w| w.sessions < 0.5) || b.next <= 0.0 || nb == 0 {
            return None;
        }
        let rate = Self::smoothed(lb as f64, nb as f64);
        let (nc, lc) = c.counts();
        let mut strata: Vec<(u64, u64, f64)> = Vec::with_capacity(WAIT_STRATA);
        for (w, within) in c.waiting.iter().zip(&b.within) {
            let n = w.sessions.round() as u64;
            let went = (w.went.round() as u64).min(n);
            if n > 0 {
                strata.push((n, n - went, (within / b.next).clamp(0.0, 1.0)));
            }
        }
        strata.push((nc, lc, 1.0));
        let tells = |s: f64| {
            let q = 1.0 - (1.0 - rate) * s;
            if q > 0.0 && q < 1.0 { s / (q * (1.0 - q)) } else { 0.0 }
        };
        let most = strata.iter().map(|(_, _, s)| tells(*s)).fold(0.0, f64::max);
        let strata: Vec<(u64, u64, f64, u64)> = strata
            .into_iter()
            .map(|(n, left, s)| {
                let w = if most > 0.0 { (WEIGHT_SCALE * tells(s) / most).round() as u64 } else { 1 };
                (n, left, s, w)
            })
            .collect();
        let worth = strata.iter().map(|(n, _, s, _)| *n as f64 * s).sum();
        let went = strata.iter().map(|(n, left, _, _)| (n - left) as f64).sum();
        Some(Self { strata, worth, went })
    }

    /// A leaving rate of `left` in `n` smoothed, as [`super::against_history`]
    /// smooths one: a rate of 0 is not certainty.
    fn smoothed(left: f64, n: f64) -> f64 {
        (left + 0.5) / (n + 1.0)
    }

    /// The sessions still waiting, and those of them gone on so far.
    fn waiting(&self) -> (u64, u64) {
        let waiting = &self.strata[..self.strata.len() - 1];
        (waiting.iter().map(|s| s.0).sum(), waiting.iter().map(|s| s.0 - s.1).sum())
    }

    /// The weighted count of the sessions not gone on so far.
    fn left(&self) -> u64 {
        self.strata.iter().map(|(_, left, _, w)| left * w).sum()
    }

    /// The leaving rate the window shows: of the sessions' worth fully
    /// observed, the share not gone on.
    fn rate(&self) -> f64 {
        if self.worth > 0.0 { (1.0 - self.went / self.worth).clamp(0.0, 1.0) } else { 0.0 }
    }

    /// The chance of as many (weighed) sessions or more not gone on so far
    /// when sessions leave at rate `r`: exact.
    fn p_value(&self, r: f64) -> f64 {
        let strata: Vec<(u64, f64, u64)> =
            self.strata.iter().map(|(n, _, s, w)| (*n, 1.0 - (1.0 - r) * s, *w)).collect();
        andon_model::statistics::binomials_at_least(&strata, self.left())
    }

    /// Against the periods before the baseline's end, as
    /// [`super::against_history`] judges a rate: their rate (smoothed as
    /// there) and its own uncertainty, the variance of both scaled by the
    /// periods' dispersion.
    fn against_history(&self, h: &History) -> f64 {
        let p = Self::smoothed(h.rate * h.trials, h.trials);
        let (mut mean, mut var, mut slope) = (0.0, 0.0, 0.0);
        for (n, _, s, w) in &self.strata {
            let (n, q, w) = (*n as f64, 1.0 - (1.0 - p) * s, *w as f64);
            mean += w * n * q;
            var += w * w * n * q * (1.0 - q);
            slope += w * n * s;
        }
        let var = h.dispersion * (var + slope * slope * p * (1.0 - p) / h.trials.max(1.0));
        let over = self.left() as f64 - mean;
        if var <= 0.0 {
            return if over > 0.0 { 0.0 } else { 1.0 };
        }
        andon_model::statistics::normal_sf(over / var.sqrt())
    }
}

/// A funnel statement's cell: its side (`cur`) and segment values.
type FunnelCell = (bool, Vec<Option<String>>);

/// The rows of a funnel statement ([`query`], [`history_query`]) as every
/// step reads them: read once, not once per flow and step.
struct Funnel<'r> {
    rows: &'r Rows,
    /// Per row: its cell (side and segment values) in `cells`, its period,
    /// whether the baseline holds it, and a short window's wait stratum.
    at: Vec<(usize, Option<i64>, bool, Option<i64>)>,
    /// The distinct cells, in order.
    cells: Vec<FunnelCell>,
}

impl<'r> Funnel<'r> {
    fn new(rows: &'r Rows, ctx: &Ctx) -> Self {
        let names = ctx.segments.names();
        let mut read: Vec<(FunnelCell, Option<i64>, bool, Option<i64>)> = Vec::with_capacity(rows.len());
        for r in rows.iter() {
            // `cur` 2: sessions still inside their horizon, by `wait`.
            let cur = r.i64("cur").unwrap_or(0) >= 1;
            let segs: Vec<Option<String>> = names.iter().map(|n| r.str(n)).collect();
            // A history row (`history_query`) is in the baseline only when
            // `in_base` says so, and in its period either way.
            let period = if cur { None } else { r.i64("period") };
            let in_base = r.i64("in_base").is_none_or(|b| b == 1);
            let wait = if cur { r.i64("wait") } else { None };
            read.push(((cur, segs), period, in_base, wait));
        }
        let numbered: BTreeMap<&FunnelCell, usize> = {
            let mut keys: Vec<&FunnelCell> = read.iter().map(|(k, _, _, _)| k).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()
        };
        let at = read.iter().map(|(k, period, in_base, wait)| (numbered[k], *period, *in_base, *wait)).collect();
        let cells = numbered.into_keys().cloned().collect();
        Self { rows, at, cells }
    }

    /// Per cell, the sums of step `k` of flow `f`.
    fn step(&self, f: usize, k: usize) -> Vec<Step> {
        let columns = [
            format!("reached{f}_{k}"),
            format!("reached_sq{f}_{k}"),
            format!("went{f}_{k}"),
            format!("left_after_error{f}_{k}"),
        ];
        let within: [String; WAIT_STRATA - 1] = std::array::from_fn(|j| format!("within{f}_{k}_{}", j + 1));
        let mut cells = vec![Step::default(); self.cells.len()];
        let mut at = self.at.iter();
        for batch in self.rows.batches() {
            let sums = columns.each_ref().map(|c| batch.column_by_name(c).map(|a| a.as_ref()));
            let within = within.each_ref().map(|c| batch.column_by_name(c).map(|a| a.as_ref()));
            for i in 0..batch.num_rows() {
                let Some(&(cell, period, in_base, wait)) = at.next() else { break };
                let sum = |c: usize| sums[c].and_then(|a| andon_store::sql::f64_at(a, i)).unwrap_or(0.0);
                if let Some(j) = wait.and_then(|j| usize::try_from(j).ok()).filter(|j| (1..WAIT_STRATA).contains(j)) {
                    let w = &mut cells[cell].waiting[j - 1];
                    w.sessions += sum(0);
                    w.went += sum(2);
                    w.left_after_error += sum(3);
                    continue;
                }
                let step = Step {
                    reached: sum(0),
                    reached_sq: sum(1),
                    next: sum(2),
                    left_after_error: sum(3),
                    within: within.map(|c| c.and_then(|a| andon_store::sql::f64_at(a, i)).unwrap_or(0.0)),
                    ..Step::default()
                };
                let cur = self.cells[cell].0;
                let mut one = if cur || in_base { step.clone() } else { Step::default() };
                if let Some(p) = period {
                    one.periods.insert(p, Step { left_after_error: 0.0, ..step });
                }
                cells[cell].add(&one);
            }
        }
        cells
    }
}

/// The tests of flow `f` of a [`query`] over several flows, its rows read
/// as `funnel`. A step another flow already tested with the same pages
/// before it and the same next page is not tested twice.
fn tests(funnel: &Funnel<'_>, ctx: &Ctx, f: usize, flow: &ResolvedFlow, seen: &mut HashSet<Vec<String>>) -> Vec<Test> {
    let mut out = Vec::new();
    for k in 0..flow.steps.len().saturating_sub(1) {
        if !seen.insert(flow.steps[..=k + 1].iter().map(|(_, op)| op.clone()).collect()) {
            continue;
        }
        let (service, op) = &flow.steps[k];
        let subject = Subject {
            service: service.clone(),
            operation: op.clone(),
            cells: funnel.cells.iter().zip(funnel.step(f, k)).map(|((c, s), m)| (*c, s.clone(), m)).collect(),
        };
        let next = &flow.steps[k + 1].1;
        let steps: Value = flow.steps.iter().map(|(s, o)| Value::from(vec![s.clone(), o.clone()])).collect();
        let horizons: Value = flow.horizons.iter().copied().map(Value::from).collect();
        for mut t in segment_tests(KIND, &subject, ctx, |b, c| judge(ctx, b, c, next)) {
            // A step's short window is one of the windows a day of
            // continuous passes judges, each a fresh chance of one that lost
            // more sessions than usual: corrected for them. The sessions a
            // release new in it served are not: that is one occasion (a
            // deploy), as the other detectors judge it.
            if ctx.short && !super::is_new_version(&t) {
                super::per_day(ctx, &mut t.judgement);
            }
            if ctx.short
                && let Some(c) = t.complement.as_mut()
            {
                super::per_day(ctx, c);
            }
            for j in std::iter::once(&mut t.judgement).chain(t.complement.as_mut()) {
                j.details.insert("flow".into(), Value::from(flow.name.clone()));
                j.details.insert("flow_steps".into(), steps.clone());
                j.details.insert("flow_horizons_ns".into(), horizons.clone());
            }
            out.push(t);
        }
    }
    out
}

/// The evidence of a short window's drop-off at step `k` of `flow`: its
/// numbers per side as [`judge`] shows them, the sessions still inside their
/// horizon included, each stratum's weighing by the share of the
/// baseline's sessions that went on within its time ([`Waited`]).
/// `current` and `baseline` narrow each side to the test's segment: a
/// release new in the window is judged against its step's whole baseline
/// (or the other value's, with one).
fn short_evidence(ctx: &Ctx, flow: &ResolvedFlow, k: usize, current: &str, baseline: &str) -> String {
    let funnel = render(ctx, std::slice::from_ref(flow), "", true);
    let strata: Vec<usize> = (1..WAIT_STRATA).collect();
    let shares: String = strata.iter().map(|j| format!(", sum(within0_{k}_{j}) AS w{j}")).collect();
    let share_of: String = strata.iter().map(|j| format!(" WHEN {j} THEN b.w{j}")).collect();
    format!(
        "SELECT side, round(sum(worth)) AS sessions_reached, round(sum(went)) AS sessions_continued, \
         round(sum(went) / sum(worth), 5) AS conversion, round(sum(left_after_error)) AS left_after_error\n\
         FROM (SELECT CASE WHEN d.cur >= 1 THEN 'current' ELSE 'baseline' END AS side, \
         CASE WHEN d.wait IS NULL THEN d.reached0_{k} ELSE d.reached0_{k} * CASE d.wait{share_of} END / b.went END AS worth, \
         d.went0_{k} AS went, d.left_after_error0_{k} AS left_after_error\n\
         FROM (\n{funnel}\n) d\n\
         CROSS JOIN (SELECT sum(went0_{k}) AS went{shares} FROM (\n{funnel}\n) x WHERE cur = 0 AND in_base = 1{baseline}) b\n\
         WHERE (d.cur >= 1{current}) OR (d.cur = 0 AND d.in_base = 1{baseline})) sides\n\
         GROUP BY side\nORDER BY side"
    )
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
    let horizons = j
        .details
        .get("flow_horizons_ns")
        .and_then(Value::as_array)
        .map(|h| h.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    Some(ResolvedFlow { name, steps, horizons })
}

impl DropOff {
    /// The configured flows with the services serving their steps, else the
    /// journeys discovered from the baseline; either way with the horizons
    /// the baseline's journeys give them.
    pub(crate) async fn flows(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Vec<ResolvedFlow>, AnalysisError> {
        let statement = journeys_query(ctx);
        // From the sessions kept since the last pass where the pass keeps
        // them (the funnels read the same fold), else the statement.
        let keeps = ctx.sessioned() && (ctx.baseline_end == ctx.split || ctx.short);
        let range = (read_from(ctx), ctx.end);
        if keeps && ctx.config.flows.is_empty() {
            // Discovered, the flows depend on the journeys alone: made once
            // for the pass's judgements over this baseline.
            let timeout = timeout_ns(ctx);
            let make = move |journeys: &Journeys| {
                let mut flows = discover(journeys);
                horizons(journeys, &mut flows, timeout);
                flows
            };
            if let Some((flows, rows)) =
                sql.session_flows(ctx, range, ctx.baseline_start, ctx.baseline_end, &make).await?
            {
                sql.noted(&statement, rows);
                return Ok(flows);
            }
        }
        let kept = if keeps { sql.session_journeys(ctx, range, ctx.baseline_start, ctx.baseline_end).await? } else { None };
        let journeys = match kept {
            Some(journeys) => {
                sql.noted(&statement, journeys.len());
                journeys
            }
            None => Journeys::from_rows(&sql.rows(&statement).await?),
        };
        let mut flows = self.resolved(ctx, sql, &journeys).await?;
        horizons(&journeys, &mut flows, timeout_ns(ctx));
        Ok(flows)
    }

    async fn resolved(&self, ctx: &Ctx, sql: &dyn Sql, journeys: &Journeys) -> Result<Vec<ResolvedFlow>, AnalysisError> {
        if ctx.config.flows.is_empty() {
            return Ok(discover(journeys));
        }
        let query = if ctx.rolled() {
            sql::render(include_str!("served_rolled.sql"), &ctx.metric_vars(""))
        } else {
            sql::render(include_str!("served.sql"), &ctx.lean_for(&BTreeMap::new()).vars(""))
        };
        let rows = sql.rows(&query).await?;
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
        let flows = resolve(&ctx.config.flows, &served);
        if flows.is_empty() {
            return Vec::new();
        }
        vec![("drop_off".to_owned(), query(ctx, &flows, ""))]
    }

    async fn tests(&self, ctx: &Ctx, sql: &dyn Sql) -> Result<Tested, AnalysisError> {
        let mut out = Tested::default();
        let flows = self.flows(ctx, sql).await?;
        if flows.is_empty() {
            return Ok(out);
        }
        let statement = history_query(ctx, &flows);
        // Over `sessions`, from the sessions kept since the last pass where
        // the pass keeps them: the statement's rows, computed in place.
        let kept = if ctx.sessioned() && (ctx.baseline_end == ctx.split || ctx.short) {
            sql.session_pages(ctx, read_from(ctx), ctx.end).await?
        } else {
            None
        };
        let rows = match kept {
            Some(pages) => {
                let rows = folded(ctx, &flows, &pages)
                    .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: statement.clone() })?;
                sql.answered(&statement, &rows);
                rows
            }
            None => sql.rows(&statement).await?,
        };
        let mut seen = HashSet::new();
        let funnel = Funnel::new(&rows, ctx);
        for (f, flow) in flows.into_iter().enumerate() {
            out.tests.extend(tests(&funnel, ctx, f, &flow, &mut seen));
            out.flows.push(flow.name);
        }
        Ok(out)
    }

    /// Sessions that leave after an error there follow the failures; those that
    /// leave without one leave the RCA to find what changed.
    /// A short window holds the sessions whose horizon at a step ended in
    /// it, judged against at least [`super::SHORT_MIN_PERIODS`] periods like
    /// it before the baseline's end: a step's leaving is known a horizon
    /// after sessions reach it, not a session timeout after they leave.
    fn judges_short_windows(&self) -> bool {
        true
    }

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
        if ctx.short {
            let mut base = t.segment.clone();
            if super::is_new_version(t) {
                base.remove("service.version");
            }
            let (current, baseline) = (ctx.segments.condition(&t.segment), ctx.segments.condition(&base));
            return Ok(short_evidence(ctx, &flow, k, &current, &baseline));
        }
        Ok(per_side(
            &query(ctx, std::slice::from_ref(&flow), &ctx.segments.condition(&t.segment)),
            &format!(
                "round(sum(reached0_{k})) AS sessions_reached, round(sum(went0_{k})) AS sessions_continued, \
                 round(sum(went0_{k}) / sum(reached0_{k}), 5) AS conversion, \
                 round(sum(left_after_error0_{k})) AS left_after_error"
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn an_operation_requests_a_page_by_its_route_after_a_method() {
        assert!(is_page("/cart", "/cart"));
        assert!(is_page("GET /cart", "/cart"));
        assert!(!is_page("GET /cart/items", "/cart"));
        assert!(!is_page("GET/cart", "/cart"));
        assert!(!is_page("GET /shopping/cart", "/cart"));
        assert!(!is_page("/cart", "GET /cart"));
    }

    /// Rows of the journeys query: each session's pages in order.
    fn rows(sessions: &[(usize, &[&str])]) -> Rows {
        let (mut id, mut op, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let mut n = 0;
        for (count, pages) in sessions {
            for _ in 0..*count {
                for (k, page) in pages.iter().enumerate() {
                    id.push(format!("s{n}"));
                    op.push((*page).to_owned());
                    t.push(k as i64 * 1_000_000_000);
                }
                n += 1;
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("session_id", DataType::Utf8, false),
            Field::new("service", DataType::Utf8, false),
            Field::new("operation", DataType::Utf8, false),
            Field::new("first_time", DataType::Int64, false),
        ]));
        let service = vec!["shop"; id.len()];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(id)),
                Arc::new(StringArray::from(service)),
                Arc::new(StringArray::from(op)),
                Arc::new(Int64Array::from(t)),
            ],
        )
        .unwrap();
        Rows::new(vec![batch])
    }

    fn names(flows: &[ResolvedFlow]) -> Vec<Vec<&str>> {
        flows.iter().map(|f| f.steps.iter().map(|(_, op)| op.as_str()).collect()).collect()
    }

    #[test]
    fn a_checkout_journey_is_discovered_beside_the_most_common_path() {
        // Most sessions browse: items, their reviews, deals, the account and
        // help pages. One in ten checks out and reads no reviews: the checkout
        // pages are never requested with the browsing pages that come first.
        let flows = discover(&Journeys::from_rows(&rows(&[
            (900, &["GET /", "GET /items/{id}", "GET /items/{id}/reviews", "GET /deals", "GET /account", "GET /help"]),
            (100, &["GET /", "GET /items/{id}", "POST /bag", "POST /checkout/shipping", "POST /checkout/payment"]),
        ])));
        let found = names(&flows);
        assert!(
            found.contains(&vec!["GET /", "GET /items/{id}", "POST /bag", "POST /checkout/shipping", "POST /checkout/payment"]),
            "{found:#?}"
        );
        assert!(found.iter().any(|f| f.contains(&"GET /deals")), "the browsing path too: {found:#?}");
    }

    /// A side of `n` unweighted sessions of which `left` left at the step.
    fn step(n: u64, left: u64) -> Step {
        Step { reached: n as f64, reached_sq: n as f64, next: (n - left) as f64, ..Step::default() }
    }

    /// A baseline side with these (sessions, left) periods before it.
    fn with_history(base: Step, periods: &[(u64, u64)]) -> Step {
        Step { periods: periods.iter().enumerate().map(|(i, (n, l))| (i as i64, step(*n, *l))).collect(), ..base }
    }

    #[test]
    fn a_window_that_loses_its_usual_share_is_no_drop_off_after_a_baseline_that_lost_few() {
        let ctx = crate::detectors::test_ctx(AnalysisConfig::default());
        // About 8% leave at this step, window after window; the baseline
        // window happened to lose 4 of 126, the current one 14 of 101.
        let usual = [(120, 10), (130, 11), (115, 10), (125, 12), (110, 9), (126, 8), (118, 11), (122, 11)];
        let alone = judge(&ctx, &step(126, 4), &step(101, 14), "next").unwrap();
        assert!(alone.material && alone.p_value < 0.01, "against the baseline alone: {alone:?}");
        let j = judge(&ctx, &with_history(step(126, 4), &usual), &step(101, 14), "next").unwrap();
        assert!(j.p_value > 0.02, "{j:?}");
        assert_eq!(j.details["windows_compared"], 8);
        // Twice as many leaving as ever before is a drop-off still.
        let j = judge(&ctx, &with_history(step(126, 4), &usual), &step(101, 30), "next").unwrap();
        assert!(j.material && j.p_value < 1e-4, "{j:?}");
    }

    #[test]
    fn sessions_still_inside_their_horizon_count_by_how_long_they_have_waited() {
        let whole = crate::detectors::test_ctx(AnalysisConfig::default());
        let ctx = Ctx { short: true, split: whole.end - chrono::Duration::minutes(1), ..whole };
        // 9% leave at this step, minute after minute; of those going on,
        // 70%, 95% and 99% do within a quarter, a half and three quarters of
        // the horizon.
        let usual: Vec<(u64, u64)> = (0..40).map(|i| (100, 8 + i % 3)).collect();
        let mut b = with_history(step(2000, 180), &usual);
        b.within = [1274.0, 1729.0, 1802.0];
        let waiting = |went: [f64; 3]| went.map(|went| Waiting { sessions: 30.0, went, left_after_error: 0.0 });
        // Sessions whose horizon ended leaving as usual, and the waiting
        // ones going on as usual for how long they have waited: nothing.
        // A step's minute, corrected for the minutes a day as [`tests`]
        // corrects every one but a new release's.
        let judge = |ctx: &Ctx, b: &Step, c: &Step, next: &str| {
            judge(ctx, b, c, next).map(|mut j| {
                crate::detectors::per_day(ctx, &mut j);
                j
            })
        };
        let usual_minute = Step { waiting: waiting([19.0, 26.0, 27.0]), ..step(60, 6) };
        let j = judge(&ctx, &b, &usual_minute, "next").unwrap();
        assert!(j.p_value > 0.5 && j.test == "binomial_strata_exact", "{j:?}");
        assert_eq!((j.current["sessions_waiting"].as_u64(), j.current["waiting_continued"].as_u64()), (Some(90), Some(72)));
        // 12 of 60 leaving is no drop-off on its own in a minute of the
        // 1,440 a day judges; with the sessions still waiting going on half
        // as often as usual, it is.
        let alone = judge(&ctx, &b, &step(60, 12), "next").unwrap();
        assert!(alone.p_value > 0.5, "{alone:?}");
        let j = judge(&ctx, &b, &Step { waiting: waiting([10.0, 13.0, 14.0]), ..step(60, 12) }, "next").unwrap();
        assert!(j.material && j.p_value < 1e-6, "{j:?}");
        // The conversion shown weighs each waiting session by how much of
        // its going on could have shown: 85 of 139 sessions' worth.
        assert!((j.current["conversion"].as_f64().unwrap() - 85.0 / 139.2).abs() < 1e-3, "{:?}", j.current);
        // Sessions that waited only a quarter of the horizon and have not
        // gone on tell less than those that waited three quarters.
        let early = judge(&ctx, &b, &Step { waiting: waiting([10.0, 26.0, 27.0]), ..step(60, 6) }, "next").unwrap();
        let late = judge(&ctx, &b, &Step { waiting: waiting([19.0, 26.0, 18.0]), ..step(60, 6) }, "next").unwrap();
        let minute = |j: &Judgement| j.details["window_p_value"].as_f64().unwrap();
        assert!(minute(&early) > 10.0 * minute(&late), "{} against {}", minute(&early), minute(&late));
    }

    /// Three hours of a checkout, a session starting every half second: the
    /// cart, then the payment page (which calls `payments`) 5 s later, then
    /// the order page 5 s after that for those that go on. A third of the
    /// sessions search first (calling `search`), and those leave at the
    /// payment page one time in four, the others one in forty. From 95 s
    /// before the end, `new` ("payments" or "search") rolls out a release
    /// the baseline never saw to a fifth (payments) or three quarters (search) of
    /// what it serves; a payments release that is `failing` fails seven in
    /// ten of its mobile payments, and those sessions leave. The sessions
    /// as the fold keeps them, each with the greatest version text of its
    /// rows, as `summarize` gives it.
    fn checkout(end: i64, new: &str, failing: bool) -> crate::fold::Pages {
        const S: i64 = 1_000_000_000;
        let page = |op: &str| [Some(op.to_owned()), None, None];
        let requests = vec![page("POST /cart"), page("POST /checkout/payment"), page("GET /order")];
        let services = ["frontend", "payments", "search"].map(|s| Some(s.to_owned())).to_vec();
        let mut segments: Vec<Vec<Option<String>>> = Vec::new();
        let mut number = |values: [&str; 2]| {
            let values: Vec<Option<String>> = values.iter().map(|v| Some((*v).to_owned())).collect();
            segments.iter().position(|v| *v == values).unwrap_or_else(|| {
                segments.push(values);
                segments.len() - 1
            }) as u32
        };
        let mut sessions = Vec::new();
        let (first, last) = (end - 3 * 3600 * S, end - 11 * S);
        for (i, t0) in (first..last).step_by((S / 2) as usize).enumerate() {
            // A draw in [0, 1000) of the session's, one per salt.
            let draw = |salt: u64| {
                // SplitMix64 of the session and the salt.
                let mut z = (i as u64).wrapping_mul(8).wrapping_add(salt).wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) % 1000
            };
            let mobile = if draw(1) < 500 { "true" } else { "false" };
            let searches = draw(2) < 333;
            let rolled = t0 >= end - 95 * S;
            let new_payments = rolled && new == "payments" && draw(3) < 200;
            let new_search = rolled && new == "search" && draw(3) < 750;
            let fails = failing && new_payments && mobile == "true" && draw(4) < 700;
            let leaves = draw(5) < if searches { 250 } else { 25 };
            let mut calls = vec![(0, t0, t0, false), (1, t0 + 5 * S, t0 + 5 * S, fails)];
            if !fails && !leaves {
                calls.push((2, t0 + 10 * S, t0 + 10 * S, false));
            }
            // The frontend's rows, the payment's, and the search's.
            let payments = if new_payments { "3.5.0" } else { "3.4.1" };
            let mut served = vec![(0, number([mobile, "3.8.1"]), t0), (1, number([mobile, payments]), t0 + 5 * S)];
            if searches {
                served.push((2, number([mobile, if new_search { "2.0.0" } else { "1.9.0" }]), t0 + S));
            }
            sessions.push(Arc::new(crate::fold::SessionPages {
                id: i as u32,
                first_seen: t0,
                segs: number([mobile, "3.8.1"]),
                requests: calls,
                served,
            }));
        }
        crate::fold::Pages { requests, segments, services, sessions }
    }

    #[test]
    fn a_release_of_a_callee_new_in_the_minute_is_judged_on_the_sessions_it_served() {
        let config = AnalysisConfig {
            segments: vec!["browser.mobile".into(), "service.version".into()],
            ..AnalysisConfig::default()
        };
        // A whole minute.
        let end = chrono::DateTime::from_timestamp(30_000_000 * 60, 0).unwrap();
        let ctx = Ctx {
            short: true,
            baseline_start: end - chrono::Duration::hours(3),
            baseline_end: end - chrono::Duration::minutes(1),
            split: end - chrono::Duration::minutes(1),
            end,
            ..crate::detectors::test_ctx(config)
        };
        let steps = ["POST /cart", "POST /checkout/payment", "GET /order"];
        let flow = ResolvedFlow {
            name: "checkout".into(),
            steps: steps.iter().map(|op| ("frontend".to_owned(), (*op).to_owned())).collect(),
            horizons: vec![30_000_000_000; 2],
        };
        let tested = |new: &str, failing: bool| {
            let pages = checkout(end.timestamp_nanos_opt().unwrap(), new, failing);
            let rows = folded(&ctx, std::slice::from_ref(&flow), &pages).unwrap();
            tests(&Funnel::new(&rows, &ctx), &ctx, 0, &flow, &mut HashSet::new())
        };
        let at_payment = |tests: &[Test], segment: &BTreeMap<String, Value>| {
            tests.iter().find(|t| t.operation == steps[1] && t.segment == *segment).cloned()
        };
        let release = |v: &str| BTreeMap::from([("service.version".to_owned(), Value::from(v))]);
        let shows = |t: &Test| t.judgement.material && t.judgement.p_value < 0.05;

        let found = tested("payments", true);
        // The sessions payments 3.5.0 served, against every session payments
        // served before: far more of them left.
        let t = at_payment(&found, &release("3.5.0")).expect("the release's sessions judged");
        assert!(crate::detectors::is_new_version(&t), "{t:?}");
        assert!(t.judgement.material && t.judgement.p_value < 1e-3, "{:?}", t.judgement);
        assert!(!t.judgement.details.contains_key("windows_a_day"), "one deploy, not one of a day's minutes");
        // The whole step lost a few sessions more than usual in its minute,
        // not enough for one of the 1,440 minutes a day.
        let whole = at_payment(&found, &BTreeMap::new()).expect("the whole step judged");
        assert!(!shows(&whole), "{:?}", whole.judgement);
        // The step before the payment loses nobody.
        assert!(found.iter().filter(|t| t.operation == steps[0]).all(|t| !shows(t)));

        // The same release converting as well as the one before: nothing.
        let fine = tested("payments", false);
        let t = at_payment(&fine, &release("3.5.0")).expect("the release's sessions judged");
        assert!(!shows(&t), "{:?}", t.judgement);

        // A release of `search`, which only the sessions that leave most
        // call: its sessions are judged against those search served before,
        // not against every session, and nothing shows.
        let searched = tested("search", false);
        let t = at_payment(&searched, &release("2.0.0")).expect("the release's sessions judged");
        assert!(t.judgement.baseline["conversion"].as_f64() < Some(0.8), "searchers' own: {:?}", t.judgement.baseline);
        assert!(searched.iter().all(|t| !shows(t)), "{searched:?}");
    }

    #[test]
    fn a_leaving_rate_that_wanders_from_window_to_window_must_rise_further() {
        let current = step(200, 40);
        // 10% leave, with binomial noise only; then with windows between 3% and 20%.
        let steady = [(200, 20), (200, 22), (200, 18), (200, 21), (200, 19), (200, 20)];
        let wandering = [(200, 6), (200, 40), (200, 10), (200, 34), (200, 8), (200, 22)];
        let h = against_history(&with_history(step(0, 0), &steady).periods, &current, 20).unwrap();
        assert!(h.dispersion == 1.0 && h.p_value < 1e-4, "{h:?}");
        let w = against_history(&with_history(step(0, 0), &wandering).periods, &current, 20).unwrap();
        assert!(w.dispersion > 5.0 && w.p_value > 0.05, "{w:?}");
        assert!((h.rate - w.rate).abs() < 1e-9, "the same rate on average");
        // Too few periods with enough sessions: no history to judge by.
        assert!(against_history(&with_history(step(0, 0), &steady[..3]).periods, &current, 20).is_none());
        assert!(against_history(&with_history(step(0, 0), &steady).periods, &current, 500).is_none());
    }

    #[test]
    fn a_step_waits_twice_as_long_as_the_slowest_of_the_baseline_take_to_go_on() {
        // 100 sessions go from the cart to shipping in 1 to 100 seconds and 40
        // of them on to paying, too few to know how long that takes.
        let mut id = Vec::new();
        let mut op = Vec::new();
        let mut t = Vec::new();
        for n in 0..100i64 {
            let mut page = |o: &str, at: i64| {
                id.push(format!("s{n}"));
                op.push(o.to_owned());
                t.push(at * 1_000_000_000);
            };
            page("GET /cart", 1_000);
            page("POST /checkout/shipping", 1_001 + n);
            if n < 40 {
                page("POST /checkout/payment", 2_000);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("session_id", DataType::Utf8, false),
            Field::new("operation", DataType::Utf8, false),
            Field::new("first_time", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(id)), Arc::new(StringArray::from(op)), Arc::new(Int64Array::from(t))],
        )
        .unwrap();
        let step = |op: &str| ("shop".to_owned(), op.to_owned());
        let mut flows = vec![ResolvedFlow {
            name: "checkout".into(),
            // A configured step names the route; the rows name the operation.
            steps: vec![step("GET /cart"), step("/checkout/shipping"), step("POST /checkout/payment")],
            horizons: Vec::new(),
        }];
        let timeout = 900 * 1_000_000_000;
        horizons(&Journeys::from_rows(&Rows::new(vec![batch])), &mut flows, timeout);
        // The 95th percentile of 1..=100 s is 95 s.
        assert_eq!(flows[0].horizons, vec![190_000_000_000, timeout]);
        assert_eq!(flows[0].horizon(1, timeout), timeout);
        assert_eq!(flows[0].horizon(7, 5), 5, "a step without a horizon waits the timeout");
    }

    #[test]
    fn pages_requested_in_no_consistent_order_make_no_journey() {
        let flows = discover(&Journeys::from_rows(&rows(&[(300, &["GET /a", "GET /b", "GET /c"]), (300, &["GET /c", "GET /b", "GET /a"])])));
        assert!(flows.is_empty(), "{:#?}", names(&flows));
    }
}
