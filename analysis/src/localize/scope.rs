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
}

/// The spans of sampled traces whose root starts in the window, of the traces
/// in `scope`.
pub fn sample_query(w: &TimeWindow, traces: usize, scope: &Scope) -> String {
    let (from, to) = (sql::ts(w.start), sql::ts(w.end));
    let slack_from = sql::ts(w.start - Duration::minutes(10));
    let slack_to = sql::ts(w.end + Duration::minutes(10));
    let through = scope.trace_filter("trace_id", &from, &slack_to);
    format!(
        "WITH picked AS (\n    SELECT trace_id FROM spans\n    WHERE start_time >= {from} AND start_time < {to}\n      \
         AND (parent_span_id IS NULL OR parent_span_id = ''){through}\n    GROUP BY trace_id ORDER BY trace_id LIMIT {traces}\n)\n\
         SELECT s.trace_id, s.span_id, s.parent_span_id, s.service_name AS service, {op} AS operation, s.kind,\n       \
         s.status_code, s.service_version AS version, CAST(s.start_time AS BIGINT) AS t0,\n       \
         CAST(s.end_time AS BIGINT) AS t1\n\
         FROM spans s JOIN picked p ON s.trace_id = p.trace_id\n\
         WHERE s.start_time >= {slack_from} AND s.start_time < {slack_to}",
        op = sql::OPERATION,
    )
}

/// Exact failure counts over the whole window, not a sample: failures are
/// rarer than slow calls, and a sample of traces can miss them. Per (service,
/// operation, kind): calls, failures that start there (no failing child), and
/// the roots with their failures; of the traces in `scope`.
pub fn failures_query(w: &TimeWindow, scope: &Scope) -> String {
    let (from, to) = (sql::ts(w.start), sql::ts(w.end));
    let slack_to = sql::ts(w.end + Duration::minutes(10));
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
