//! Reading sample traces of a finding's operation: where its failures start
//! (an error span with no failing span beneath it) and its slowest traces.
//! Where extra time is spent is the localization's ([`crate::localize`]).
//!
//! The spans beneath a picked request are those of its trace that start
//! within its reach ([`Pick::reach`]), whatever the window: consecutive
//! passes pick mostly the same failing requests, so the traces one pass
//! read are kept for the next ([`SpansBook`]) and only new ones are read.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use andon_model::Tenant;

use crate::minutes::{KeptTraces, now_ns};
use crate::sql::{self, Row, Rows};

pub const SQL: &str = include_str!("detectors/traces.sql");

#[derive(Debug, Clone)]
struct SpanRow {
    picked: String,
    /// `start_time` in Unix ns.
    start: i64,
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

    /// Where the spans beneath it start, `[from, to)` in Unix ns: from a
    /// minute before it (the skew between hosts' clocks) to five minutes
    /// after it ends (work it left running).
    pub fn reach(&self) -> (i64, i64) {
        const SKEW: i64 = 60_000_000_000;
        const LATE: i64 = 300_000_000_000;
        (self.start.saturating_sub(SKEW), self.end.saturating_add(LATE))
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

/// Every span of the traces `ids` that starts in `[from, to)` (Unix ns).
pub fn query(ids: &[&str], from: i64, to: i64) -> String {
    let traces = ids.iter().map(|t| sql::lit(t)).collect::<Vec<_>>().join(", ");
    let at = |ns: i64| sql::ts(chrono::DateTime::from_timestamp_nanos(ns));
    sql::render(
        SQL,
        &[("traces", traces), ("from", at(from)), ("to", at(to)), ("operation", sql::OPERATION.to_owned())],
    )
}

/// The spans of sampled traces, by trace id.
#[derive(Debug, Default)]
pub struct TraceSpans(HashMap<String, Arc<[SpanRow]>>);

impl TraceSpans {
    pub fn from_rows(rows: &Rows) -> Self {
        let mut by_trace: HashMap<String, Vec<SpanRow>> = HashMap::new();
        for r in rows.iter() {
            let (Some(trace), Some(start), Some(span_id), Some(service), Some(operation)) =
                (r.str("trace_id"), r.i64("start_time"), r.str("span_id"), r.str("service"), r.str("operation"))
            else {
                continue;
            };
            by_trace.entry(trace).or_default().push(SpanRow {
                picked: String::new(),
                start,
                span_id,
                parent: r.str("parent_span_id").filter(|p| !p.is_empty()),
                service,
                operation,
                server: r.str("kind").as_deref() == Some("server"),
                err: r.str("status_code").as_deref() == Some("error"),
            });
        }
        Self(by_trace.into_iter().map(|(t, v)| (t, v.into())).collect())
    }
}

/// The spans of the traces of failing picks, kept from one pass to the next
/// by (tenant, trace id) with the range `[from, to)` they were read over.
#[derive(Debug, Default)]
pub struct SpansBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    traces: KeptTraces<Read>,
    /// Traces answered from the book and read from the store, since it began.
    hits: u64,
    reads: u64,
}

/// A trace's spans that start in `[from, to)`.
#[derive(Debug)]
struct Read {
    from: i64,
    to: i64,
    spans: Arc<[SpanRow]>,
}

impl SpansBook {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a turn for `tenant` ([`KeptTraces::turn`]).
    pub fn turn(&self, store: &andon_store::Store, tenant: &Tenant) {
        self.book().traces.turn(tenant, |after| store.arrivals_after(tenant, after));
    }

    /// The spans within reach of each of `picks` in its trace: the book's,
    /// when it read the trace over the whole reach, and the others' read
    /// with `read` in one statement ([`query`]).
    pub async fn spans<F, Fut, E>(&self, tenant: &Tenant, picks: &[&Pick], read: F) -> Result<TraceSpans, E>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Rows, E>>,
    {
        // Per trace: the union of its picks' reaches.
        let mut wanted: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for p in picks {
            let (a, z) = p.reach();
            let w = wanted.entry(p.trace_id.as_str()).or_insert((a, z));
            *w = (w.0.min(a), w.1.max(z));
        }
        let mut out = TraceSpans::default();
        let mut missing: Vec<(&str, (i64, i64))> = Vec::new();
        {
            let mut b = self.book();
            for (id, (a, z)) in &wanted {
                match b.traces.get(tenant, id) {
                    Some(k) if k.from <= *a && *z <= k.to => {
                        out.0.insert((*id).to_owned(), Arc::clone(&k.spans));
                    }
                    _ => missing.push((id, (*a, *z))),
                }
            }
            b.hits += out.0.len() as u64;
            b.reads += missing.len() as u64;
        }
        let (Some(from), Some(to)) = (missing.iter().map(|m| m.1.0).min(), missing.iter().map(|m| m.1.1).max()) else {
            return Ok(out);
        };
        let ids: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let read_at = now_ns();
        let mut read = TraceSpans::from_rows(&read(query(&ids, from, to)).await?);
        let mut b = self.book();
        for id in ids {
            let spans = read.0.remove(id).unwrap_or_else(|| Vec::new().into());
            b.traces.insert(tenant, id.to_owned(), Read { from, to, spans: Arc::clone(&spans) }, read_at);
            out.0.insert(id.to_owned(), spans);
        }
        Ok(out)
    }

    /// (traces answered from the book, read from the store) since it began.
    pub fn counts(&self) -> (u64, u64) {
        let b = self.book();
        (b.hits, b.reads)
    }
}

impl Sample {
    /// The sample of `picks`, from the spans of their traces within each
    /// pick's reach.
    pub fn new(picks: &[Pick], spans: &TraceSpans) -> Self {
        let mut s = Sample::default();
        for p in picks {
            let Some(trace) = spans.0.get(&p.trace_id) else { continue };
            let (from, to) = p.reach();
            s.trace_ids.insert(p.span_id.clone(), p.trace_id.clone());
            s.traces.insert(
                p.span_id.clone(),
                trace
                    .iter()
                    .filter(|r| from <= r.start && r.start < to)
                    .map(|r| SpanRow { picked: p.span_id.clone(), ..r.clone() })
                    .collect(),
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
            start: 0,
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
            ("a".to_owned(), vec![span("a1", None, "checkout", true), span("a2", Some("a1"), "payments", true)].into()),
            (
                "b".to_owned(),
                vec![
                    span("b0", None, "gateway", true),
                    span("b1", Some("b0"), "checkout", true),
                    span("b2", Some("b1"), "pricing", false),
                ]
                .into(),
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
    }

    const MIN: i64 = 60_000_000_000;

    /// A span as a test's store holds it: (trace, start, span, parent,
    /// service, failed).
    type Stored<'a> = (&'a str, i64, &'a str, &'a str, &'a str, bool);

    /// Rows of `spans` as `traces.sql` selects them.
    fn rows(spans: &[Stored<'_>]) -> Rows {
        use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        let text = |f: &dyn Fn(&Stored<'_>) -> String| -> ArrayRef {
            Arc::new(StringArray::from(spans.iter().map(f).collect::<Vec<_>>()))
        };
        let batch = RecordBatch::try_from_iter([
            ("trace_id", text(&|s| s.0.to_owned())),
            ("start_time", Arc::new(Int64Array::from(spans.iter().map(|s| s.1).collect::<Vec<_>>())) as ArrayRef),
            ("span_id", text(&|s| s.2.to_owned())),
            ("parent_span_id", text(&|s| s.3.to_owned())),
            ("service", text(&|s| s.4.to_owned())),
            ("operation", text(&|s| format!("{} op", s.4))),
            ("kind", text(&|_| "server".to_owned())),
            ("status_code", text(&|s| if s.5 { "error" } else { "ok" }.to_owned())),
        ])
        .unwrap();
        Rows::new(vec![batch])
    }

    #[test]
    fn the_book_reads_a_trace_once_while_its_picks_stay_within_what_was_read() {
        // Trace a: a failing checkout call whose payments call fails, and a
        // failing span of the trace far later, beyond the pick's reach, that
        // must not count. Trace b: a checkout call that fails by itself, ten
        // minutes later, and another half an hour after that.
        let store = [
            ("a", 10 * MIN, "a1", "", "checkout", true),
            ("a", 10 * MIN + 1, "a2", "a1", "payments", true),
            ("a", 40 * MIN, "a3", "a1", "payments", true),
            ("b", 20 * MIN, "b1", "", "checkout", true),
            ("b", 50 * MIN, "b2", "", "checkout", true),
        ];
        let asked: Mutex<Vec<String>> = Mutex::default();
        let read = |q: String| {
            // The store's answer: the spans of the traces asked for.
            let mine: Vec<_> = store.iter().copied().filter(|s| q.contains(&format!("'{}'", s.0))).collect();
            asked.lock().unwrap().push(q);
            async move { Ok::<_, ()>(rows(&mine)) }
        };
        let at = |trace: &str, span: &str, start: i64| Pick {
            trace_id: trace.to_owned(),
            span_id: span.to_owned(),
            start,
            end: start + 1_000_000,
        };
        let (a1, b1) = (at("a", "a1", 10 * MIN), at("b", "b1", 20 * MIN));
        let book = SpansBook::default();
        let tenant = Tenant::default_tenant();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let origins = |picks: &[Pick]| {
            let refs: Vec<&Pick> = picks.iter().collect();
            let spans = rt.block_on(book.spans(&tenant, &refs, read)).unwrap();
            Sample::new(picks, &spans).error_origins().into_iter().map(|(k, n)| (k.0, n)).collect::<Vec<_>>()
        };
        let picks = vec![a1.clone(), b1.clone()];
        let once = vec![("checkout".to_owned(), 1), ("payments".to_owned(), 1)];
        assert_eq!(origins(&picks), once);
        {
            let asked = asked.lock().unwrap();
            assert_eq!(asked.len(), 1, "both traces in one statement");
            assert!(asked[0].contains("'a', 'b'"), "{}", asked[0]);
        }
        // The next pass picks the same requests: nothing is read.
        assert_eq!(origins(&picks), once);
        assert_eq!(asked.lock().unwrap().len(), 1);
        assert_eq!(book.counts(), (2, 2));
        // A later failing request of trace b reaches past what was read:
        // that trace alone is read again.
        let b2 = at("b", "b2", 50 * MIN);
        assert_eq!(origins(&[a1, b1, b2]), [("checkout".to_owned(), 2), ("payments".to_owned(), 1)]);
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        assert!(asked[1].contains("IN ('b')"), "{}", asked[1]);
        assert_eq!(book.counts(), (3, 3));
    }
}
