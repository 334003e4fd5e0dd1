//! Which traces the RCA reads, and the queries that sample them and count
//! failures exactly.

use super::*;

/// Which traces the RCA reads: every one, only those through a service (where
/// the trouble was noticed), only those of a segment (where the findings were
/// confined), or both.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub through: Option<String>,
    /// With `through`: only traces that call this operation of that service.
    pub operation: Option<String>,
    /// Segment attributes and their values, such as `browser.mobile = true`.
    pub segment: BTreeMap<String, serde_json::Value>,
    /// Leave out traces that received a span after this time (the server's
    /// wall clock): they are still arriving, and a partial trace charges a
    /// callee's time to its caller. Continuous detection sets it; a look at
    /// history does not need it.
    pub settled: Option<DateTime<Utc>>,
    /// The opener saw users change what they do (a drop-off): a release new
    /// in the traces may explain it though the requests' mix does not show it
    /// (the traces read are all of one step).
    pub users_moved: bool,
}

impl Scope {
    /// `AND <col> IN (…)` conditions keeping traces in scope, over spans that
    /// start between `from` and `to`. A segment attribute can sit on any span
    /// of a trace (a browser's `browser.mobile` on its client span, a backend's
    /// `cloud.region` on its server spans), so each is its own condition.
    pub(super) fn trace_filter(&self, col: &str, from: &str, to: &str) -> String {
        let conditions = self.conditions();
        let mut out: String = conditions
            .iter()
            .map(|c| {
                format!(
                    "\n      AND {col} IN (SELECT s.trace_id FROM spans s WHERE {c} AND s.start_time >= {from} AND s.start_time < {to})"
                )
            })
            .collect();
        if let Some(at) = self.settled {
            out.push_str(&format!("\n      AND {}", sql::settled(col, at)));
        }
        out
    }

    /// The conditions a span of a trace in scope meets, one per attribute
    /// (each over the spans aliased `s`): [`Self::trace_filter`]'s.
    pub(super) fn conditions(&self) -> Vec<String> {
        let mut conditions = Vec::new();
        if let Some(s) = &self.through {
            match &self.operation {
                Some(op) => {
                    conditions.push(format!("s.service_name = {} AND {} = {}", lit(s), sql::OPERATION, lit(op)))
                }
                None => conditions.push(format!("s.service_name = {}", lit(s))),
            }
        }
        for (attribute, value) in &self.segment {
            if let Some(c) = sql::segment_column(attribute).ok().and_then(|c| c.equals(value)) {
                conditions.push(c);
            }
        }
        conditions
    }

    /// What tells this scope's traces apart, whatever the pass: its
    /// conditions (not when traces settle, nor what the opener saw).
    pub(super) fn key(&self) -> String {
        self.conditions().join("\n")
    }
}

/// How far from its root's start a sampled trace's spans are read: a trace
/// is the same whichever window samples it, so a pass can keep the traces it
/// read for the next ([`super::TraceBook`]).
pub const REACH: Duration = Duration::minutes(10);

fn reach_ns() -> i64 {
    REACH.num_nanoseconds().unwrap_or(i64::MAX)
}

/// The common table expressions of the traces in `scope` whose root starts
/// between `from` and `to`, as `qualifying (trace_id, root_start)`: a trace is
/// in scope when, for each of the scope's conditions, one of its spans within
/// [`REACH`] of its root meets it. Traces still arriving at `settled` are left
/// out.
fn qualifying_ctes(from: DateTime<Utc>, to: DateTime<Utc>, scope: &Scope, settled: Option<DateTime<Utc>>) -> String {
    let reach = format!("INTERVAL '{} seconds'", REACH.num_seconds());
    let settled = settled.map(|at| format!("\n      AND {}", sql::settled("trace_id", at))).unwrap_or_default();
    let mut out = format!(
        "roots AS (\n    SELECT trace_id, min(start_time) AS root_start FROM spans\n    \
         WHERE start_time >= {} AND start_time < {}\n      \
         AND (parent_span_id IS NULL OR parent_span_id = ''){settled}\n    GROUP BY trace_id\n)",
        sql::ts(from),
        sql::ts(to),
    );
    let conditions = scope.conditions();
    for (i, c) in conditions.iter().enumerate() {
        out.push_str(&format!(
            ",\nc{i} AS (\n    SELECT s.trace_id, s.start_time FROM spans s\n    WHERE {c} AND s.start_time >= {} AND s.start_time < {}\n)",
            sql::ts(from - REACH),
            sql::ts(to + REACH),
        ));
    }
    out.push_str(",\nqualifying AS (\n    SELECT r.trace_id, r.root_start FROM roots r");
    for i in 0..conditions.len() {
        out.push_str(&format!(
            "\n    LEFT SEMI JOIN c{i} ON c{i}.trace_id = r.trace_id AND c{i}.start_time >= r.root_start - {reach} \
             AND c{i}.start_time < r.root_start + {reach}"
        ));
    }
    out.push_str("\n)");
    out
}

/// Every trace in `scope` whose root starts between `from` and `to`, with its
/// root's start (`root_start`, Unix ns), settled or not.
pub(super) fn qualifying_query(from: DateTime<Utc>, to: DateTime<Utc>, scope: &Scope) -> String {
    format!(
        "WITH {}\nSELECT trace_id, CAST(root_start AS BIGINT) AS root_start FROM qualifying",
        qualifying_ctes(from, to, scope, None)
    )
}

/// The traces whose root starts between `from` and `to` and which meet at
/// least one of `conditions` (over the spans aliased `s`), with the root's
/// start (`root_start`, Unix ns) and, for each condition, whether one of
/// the trace's spans within [`REACH`] of its root meets it (`c0`, `c1`, …: 1
/// or 0). One read serves many scopes: a trace is in a scope when it meets
/// each of the scope's conditions (at least one), which is what
/// [`qualifying_query`] gives for that scope. Only the spans that meet a
/// condition are joined to the roots.
pub(super) fn conditions_query(from: DateTime<Utc>, to: DateTime<Utc>, conditions: &[String]) -> String {
    let reach = format!("INTERVAL '{} seconds'", REACH.num_seconds());
    let flags: String = conditions
        .iter()
        .enumerate()
        .map(|(i, c)| format!(",\n       max(CASE WHEN {c} THEN 1 ELSE 0 END) AS c{i}"))
        .collect();
    let any: Vec<String> = conditions.iter().map(|c| format!("({c})")).collect();
    let any = if any.is_empty() { "FALSE".to_owned() } else { any.join("\n    OR ") };
    format!(
        "WITH roots AS (\n    SELECT trace_id, min(start_time) AS root_start FROM spans\n    \
         WHERE start_time >= {from} AND start_time < {to}\n      \
         AND (parent_span_id IS NULL OR parent_span_id = '')\n    GROUP BY trace_id\n)\n\
         SELECT r.trace_id, CAST(r.root_start AS BIGINT) AS root_start{flags}\n\
         FROM roots r JOIN spans s ON s.trace_id = r.trace_id\n\
         WHERE s.start_time >= {slack_from} AND s.start_time < {slack_to}\n  \
         AND s.start_time >= r.root_start - {reach} AND s.start_time < r.root_start + {reach}\n  \
         AND ({any})\n\
         GROUP BY r.trace_id, r.root_start",
        from = sql::ts(from),
        to = sql::ts(to),
        slack_from = sql::ts(from - REACH),
        slack_to = sql::ts(to + REACH),
    )
}

/// The sampled traces whose root starts in the window, of the traces in
/// `scope`: the first `traces` by trace id (as random as the ids), with
/// their root's start (`root_start`, Unix ns).
pub fn picked_query(w: &TimeWindow, traces: usize, scope: &Scope) -> String {
    format!(
        "WITH {}\nSELECT trace_id, CAST(root_start AS BIGINT) AS root_start FROM qualifying\n\
         ORDER BY trace_id LIMIT {traces}",
        qualifying_ctes(w.start, w.end, scope, scope.settled)
    )
}

/// What a sample reads of each span.
fn sample_columns() -> String {
    format!(
        "s.trace_id, s.span_id, s.parent_span_id, s.service_name AS service, {op} AS operation, s.kind,\n       \
         s.status_code, s.service_version AS version, CAST(s.start_time AS BIGINT) AS t0,\n       \
         CAST(s.end_time AS BIGINT) AS t1",
        op = sql::OPERATION,
    )
}

/// The spans of the sampled traces ([`picked_query`]) that start within
/// [`REACH`] of their root, in one statement.
pub fn sample_query(w: &TimeWindow, traces: usize, scope: &Scope) -> String {
    let reach = format!("INTERVAL '{} seconds'", REACH.num_seconds());
    format!(
        "WITH {},\npicked AS (\n    SELECT trace_id, root_start FROM qualifying ORDER BY trace_id LIMIT {traces}\n)\n\
         SELECT {columns}\n\
         FROM spans s JOIN picked p ON s.trace_id = p.trace_id\n\
         WHERE s.start_time >= {slack_from} AND s.start_time < {slack_to}\n  \
         AND s.start_time >= p.root_start - {reach} AND s.start_time < p.root_start + {reach}",
        qualifying_ctes(w.start, w.end, scope, scope.settled),
        columns = sample_columns(),
        slack_from = sql::ts(w.start - REACH),
        slack_to = sql::ts(w.end + REACH),
    )
}

/// The spans of these traces (`(trace id, root start in Unix ns)`) that start
/// within [`REACH`] of the earliest and latest root: a superset of what
/// [`sample_query`] reads of them, to be cut to each trace's own reach.
pub(super) fn spans_query(traces: &[(String, i64)]) -> Option<String> {
    let lo = traces.iter().map(|t| t.1).min()?.saturating_sub(reach_ns());
    let hi = traces.iter().map(|t| t.1).max()?.saturating_add(reach_ns());
    let at = |ns: i64| sql::ts(DateTime::from_timestamp_nanos(ns));
    let ids: Vec<String> = traces.iter().map(|t| lit(&t.0)).collect();
    Some(format!(
        "SELECT {columns}\nFROM spans s\nWHERE s.start_time >= {from} AND s.start_time < {to}\n  \
         AND s.trace_id IN ({ids})",
        columns = sample_columns(),
        from = at(lo),
        to = at(hi),
        ids = ids.join(", "),
    ))
}

/// Whether a span starting at `t0` is within [`REACH`] of its root's start.
pub(super) fn within_reach(root_start: i64, t0: i64) -> bool {
    t0 >= root_start.saturating_sub(reach_ns()) && t0 < root_start.saturating_add(reach_ns())
}

/// Exact failure counts over the whole window, not a sample: failures are
/// rarer than slow calls, and a sample of traces can miss them. Per (service,
/// operation, kind): calls, failures that start there (no failing child), and
/// the roots with their failures; of the traces in `scope`.
pub fn failures_query(w: &TimeWindow, scope: &Scope) -> String {
    let (from, to) = (sql::ts(w.start), sql::ts(w.end));
    let slack_to = sql::ts(w.end + REACH);
    let in_scope = scope.trace_filter("s.trace_id", &from, &slack_to);
    format!(
        "WITH failing_parent AS (\n    SELECT DISTINCT trace_id, parent_span_id FROM spans\n    \
         WHERE start_time >= {from} AND start_time < {slack_to} AND status_code = 'error'\n      \
         AND parent_span_id IS NOT NULL AND parent_span_id <> ''\n)\n\
         SELECT s.service_name AS service, {op} AS operation, s.kind, count(*) AS calls,\n       \
         sum(CASE WHEN s.status_code = 'error' AND f.parent_span_id IS NULL THEN 1 ELSE 0 END) AS origins,\n       \
         sum(CASE WHEN s.parent_span_id IS NULL OR s.parent_span_id = '' THEN 1 ELSE 0 END) AS roots,\n       \
         sum(CASE WHEN (s.parent_span_id IS NULL OR s.parent_span_id = '') AND s.status_code = 'error' THEN 1 ELSE 0 END) \
         AS root_errors\n\
         FROM spans s LEFT JOIN failing_parent f ON f.trace_id = s.trace_id AND f.parent_span_id = s.span_id\n\
         WHERE s.start_time >= {from} AND s.start_time < {to}{in_scope}\nGROUP BY 1, 2, 3",
        op = sql::OPERATION,
    )
}

/// Exact failure counts of one window.
#[derive(Debug, Default)]
pub struct Failures {
    pub(super) stats: BTreeMap<Key, Stat>,
    pub(super) root: Stat,
}

impl Failures {
    pub fn from_rows(rows: &andon_store::sql::Rows) -> Self {
        let mut f = Failures::default();
        for r in rows.iter() {
            let (Some(service), Some(operation)) = (r.str("service"), r.str("operation")) else { continue };
            let (service, operation): (Arc<str>, Arc<str>) = (Arc::from(service), Arc::from(operation));
            let key = if matches!(r.str("kind").as_deref(), Some("client" | "producer")) {
                Key::Dependency { service, operation }
            } else {
                Key::Own { service, operation }
            };
            let st = f.stats.entry(key).or_default();
            st.calls += r.u64("calls");
            st.errors += r.u64("origins");
            f.root.calls += r.u64("roots");
            f.root.errors += r.u64("root_errors");
        }
        f
    }
}
