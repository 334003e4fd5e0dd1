//! Reading sample traces of a finding's operation: where its failures start
//! (an error span with no failing span beneath it) and its slowest traces.
//! Where extra time is spent is the localization's ([`crate::localize`]).

use std::collections::{BTreeMap, HashMap};

use crate::sql::{self, Row, Rows};

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
}

/// The spans of sampled traces, each under the picked span of the operation.
#[derive(Debug, Default)]
pub struct Sample {
    /// Per picked span: every span of its trace.
    traces: BTreeMap<String, Vec<SpanRow>>,
    pub trace_ids: BTreeMap<String, String>,
}

/// A request of the operation under study, picked for a sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pick {
    pub trace_id: String,
    pub span_id: String,
    pub start: i64,
    pub end: i64,
}

impl Pick {
    /// The pick in a row with `trace_id`, `span_id`, `start_time` and `end_time`.
    pub fn of(r: &Row<'_>) -> Option<Pick> {
        Some(Pick {
            trace_id: r.str("trace_id")?,
            span_id: r.str("span_id")?,
            start: r.i64("start_time")?,
            end: r.i64("end_time")?,
        })
    }

    /// The first `limit` of `picks` by trace and span id.
    pub fn first(picks: impl Iterator<Item = Pick>, limit: usize) -> Vec<Pick> {
        let mut v: Vec<Pick> = picks.collect();
        v.sort_by(|a, b| a.trace_id.cmp(&b.trace_id).then(a.span_id.cmp(&b.span_id)));
        v.truncate(limit);
        v
    }

    /// Trace ids of the picks, slowest first (ties by trace id).
    pub fn slowest(picks: &[Pick]) -> Vec<String> {
        let mut v: Vec<&Pick> = picks.iter().collect();
        v.sort_by(|a, b| (b.end - b.start).cmp(&(a.end - a.start)).then(a.trace_id.cmp(&b.trace_id)));
        v.into_iter().map(|p| p.trace_id.clone()).collect()
    }

    /// Trace ids of the picks in a stable order.
    pub fn traces(picks: &[Pick]) -> Vec<String> {
        let mut v: Vec<String> = picks.iter().map(|p| p.trace_id.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Every span of the picks' traces that starts in `[from, to)`: the spans
/// beneath a picked request start after it (less the skew between hosts'
/// clocks, which `from` allows for). `picks` must not be empty.
pub fn query(picks: &[&Pick], from: &str, to: &str) -> String {
    let mut ids: Vec<&str> = picks.iter().map(|p| p.trace_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let traces = ids.iter().map(|t| sql::lit(t)).collect::<Vec<_>>().join(", ");
    sql::render(
        SQL,
        &[
            ("traces", traces),
            ("from", from.to_owned()),
            ("to", to.to_owned()),
            ("operation", sql::OPERATION.to_owned()),
        ],
    )
}

/// The spans of sampled traces, by trace id.
#[derive(Debug, Default)]
pub struct TraceSpans(HashMap<String, Vec<SpanRow>>);

impl TraceSpans {
    pub fn from_rows(rows: &Rows) -> Self {
        let mut by_trace: HashMap<String, Vec<SpanRow>> = HashMap::new();
        for r in rows.iter() {
            let (Some(trace), Some(span_id), Some(service), Some(operation)) =
                (r.str("trace_id"), r.str("span_id"), r.str("service"), r.str("operation"))
            else {
                continue;
            };
            by_trace.entry(trace).or_default().push(SpanRow {
                picked: String::new(),
                span_id,
                parent: r.str("parent_span_id").filter(|p| !p.is_empty()),
                service,
                operation,
                server: r.str("kind").as_deref() == Some("server"),
                err: r.str("status_code").as_deref() == Some("error"),
            });
        }
        Self(by_trace)
    }
}

impl Sample {
    /// The sample of `picks`, from the spans of their traces.
    pub fn new(picks: &[Pick], spans: &TraceSpans) -> Self {
        let mut s = Sample::default();
        for p in picks {
            let Some(trace) = spans.0.get(&p.trace_id) else { continue };
            s.trace_ids.insert(p.span_id.clone(), p.trace_id.clone());
            s.traces.insert(
                p.span_id.clone(),
                trace.iter().map(|r| SpanRow { picked: p.span_id.clone(), ..r.clone() }).collect(),
            );
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
    /// Trace ids in a stable order.
    pub fn traces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.trace_ids.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(span_id: &str, parent: Option<&str>, service: &str, err: bool) -> SpanRow {
        SpanRow {
            picked: String::new(),
            span_id: span_id.to_owned(),
            parent: parent.map(str::to_owned),
            service: service.to_owned(),
            operation: format!("{service} op"),
            server: true,
            err,
        }
    }

    fn pick(trace: &str, span: &str, ms: i64) -> Pick {
        Pick { trace_id: trace.to_owned(), span_id: span.to_owned(), start: 0, end: ms * 1_000_000 }
    }

    #[test]
    fn a_sample_finds_where_failures_start_beneath_each_picked_request_only() {
        // Trace a: the picked checkout call fails because payments beneath it
        // does. Trace b: checkout fails by itself, while its caller (above the
        // picked span) failed too and must not count.
        let spans = TraceSpans(HashMap::from([
            ("a".to_owned(), vec![span("a1", None, "checkout", true), span("a2", Some("a1"), "payments", true)]),
            (
                "b".to_owned(),
                vec![
                    span("b0", None, "gateway", true),
                    span("b1", Some("b0"), "checkout", true),
                    span("b2", Some("b1"), "pricing", false),
                ],
            ),
        ]));
        let picks = vec![pick("a", "a1", 5), pick("b", "b1", 9), pick("gone", "x1", 1)];
        let s = Sample::new(&picks, &spans);
        assert_eq!(s.len(), 2, "a pick whose trace was not read is left out");
        let origins = s.error_origins();
        assert_eq!(
            origins.into_iter().collect::<Vec<_>>(),
            vec![
                (("checkout".to_owned(), "checkout op".to_owned()), 1),
                (("payments".to_owned(), "payments op".to_owned()), 1)
            ]
        );
        assert_eq!(s.traces(), vec!["a", "b"]);
        assert_eq!(Pick::slowest(&picks), vec!["b", "a", "gone"]);
        let first = Pick::first(vec![pick("c", "2", 1), pick("a", "9", 1), pick("c", "1", 1)].into_iter(), 2);
        assert_eq!(
            first.iter().map(|p| (p.trace_id.as_str(), p.span_id.as_str())).collect::<Vec<_>>(),
            vec![("a", "9"), ("c", "1")]
        );
    }
}
