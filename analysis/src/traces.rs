//! Reading sample traces of a finding's operation: where its failures start
//! (an error span with no failing span beneath it) and its slowest traces.
//! Where extra time is spent is the localization's ([`crate::localize`]).

use std::collections::{BTreeMap, HashMap};

use crate::sql::{self, Rows};

pub const SQL: &str = include_str!("detectors/traces.sql");

#[derive(Debug, Clone)]
struct SpanRow {
    picked: String,
    span_id: String,
    parent: Option<String>,
    service: String,
    operation: String,
    server: bool,
    err: bool,
    t0: i64,
    t1: i64,
}

/// The spans of sampled traces, each under the picked span of the operation.
#[derive(Debug, Default)]
pub struct Sample {
    /// Per picked span: every span of its trace.
    traces: BTreeMap<String, Vec<SpanRow>>,
    pub trace_ids: BTreeMap<String, String>,
}

pub fn query(ctes: &str, picks: &str, window: (&str, &str)) -> String {
    sql::render(
        SQL,
        &[
            ("ctes", ctes.to_owned()),
            ("picks", picks.to_owned()),
            ("from", window.0.to_owned()),
            ("to", window.1.to_owned()),
            ("operation", sql::OPERATION.to_owned()),
        ],
    )
}

impl Sample {
    pub fn from_rows(rows: &Rows) -> Self {
        let mut s = Sample::default();
        for r in rows.iter() {
            let (Some(picked), Some(trace), Some(span_id), Some(service), Some(operation)) =
                (r.str("picked"), r.str("trace_id"), r.str("span_id"), r.str("service"), r.str("operation"))
            else {
                continue;
            };
            s.trace_ids.insert(picked.clone(), trace);
            s.traces.entry(picked.clone()).or_default().push(SpanRow {
                picked,
                span_id,
                parent: r.str("parent_span_id").filter(|p| !p.is_empty()),
                service,
                operation,
                server: r.str("kind").as_deref() == Some("server"),
                err: r.str("status_code").as_deref() == Some("error"),
                t0: r.i64("start_time").unwrap_or(0),
                t1: r.i64("end_time").unwrap_or(0),
            });
        }
        s
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Every span under (and including) the picked span, with its children.
    fn subtree(spans: &[SpanRow]) -> (Vec<usize>, HashMap<usize, Vec<usize>>) {
        let by_id: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, s) in spans.iter().enumerate() {
            if let Some(p) = s.parent.as_deref().and_then(|p| by_id.get(p)) {
                children.entry(*p).or_default().push(i);
            }
        }
        let Some(&root) = spans.first().and_then(|s| by_id.get(s.picked.as_str())) else {
            return (Vec::new(), children);
        };
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = children.get(&out[i]) {
                out.extend(c.iter().copied());
            }
            i += 1;
        }
        (out, children)
    }

    /// Where the failures in these traces start: server spans that failed while
    /// no server span beneath them did, counted by (service, operation).
    pub fn error_origins(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for spans in self.traces.values() {
            let (nodes, children) = Self::subtree(spans);
            let failing_below = |i: usize| {
                let mut stack: Vec<usize> = children.get(&i).cloned().unwrap_or_default();
                while let Some(j) = stack.pop() {
                    if spans[j].server && spans[j].err {
                        return true;
                    }
                    if let Some(c) = children.get(&j) {
                        stack.extend(c.iter().copied());
                    }
                }
                false
            };
            for i in nodes {
                let s = &spans[i];
                if s.server && s.err && !failing_below(i) {
                    *out.entry((s.service.clone(), s.operation.clone())).or_default() += 1;
                }
            }
        }
        out
    }
}

impl Sample {
    /// Trace ids, slowest picked span first.
    pub fn slowest_traces(&self) -> Vec<String> {
        let mut v: Vec<(i64, &String)> = self
            .traces
            .iter()
            .filter_map(|(picked, spans)| {
                let s = spans.iter().find(|s| &s.span_id == picked)?;
                Some((s.t1 - s.t0, self.trace_ids.get(picked)?))
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        v.into_iter().map(|(_, t)| t.clone()).collect()
    }

    /// Trace ids in a stable order.
    pub fn traces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.trace_ids.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}
