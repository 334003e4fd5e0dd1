//! A window's call trees reduced to what localization compares: per
//! (service, operation), its own time, the hops to the services it calls and
//! the dependencies without a traced server, per call, with failures and the
//! traces that show them.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Span {
    pub(super) id: Arc<str>,
    pub(super) parent: Option<Arc<str>>,
    pub(super) service: Arc<str>,
    pub(super) operation: Arc<str>,
    pub(super) kind: Kind,
    /// `service.version` of the process that recorded it.
    pub(super) version: Option<Arc<str>>,
    pub(super) err: bool,
    pub(super) t0: i64,
    pub(super) t1: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Server,
    Client,
    /// Sends a message another process consumes, perhaps long after.
    Producer,
    /// Handles a message; its parent is the producer when the context travels
    /// with the message, and it may start after that parent has ended.
    Consumer,
    Other,
}

/// Where a part of a request's time or failures is charged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    /// A span's own work.
    Own { service: Arc<str>, operation: Arc<str> },
    /// Waiting on a dependency that has no traced server.
    Dependency { service: Arc<str>, operation: Arc<str> },
    /// The hop of a client span in `caller` to `callee`'s server span, or of
    /// a message from its producer to its consumer (the time in the queue).
    Hop { caller: Arc<str>, callee: Arc<str>, operation: Arc<str>, queued: bool },
}

#[derive(Debug, Default, Clone)]
pub(super) struct Stat {
    pub(super) calls: u64,
    pub(super) sum_ms: f64,
    pub(super) sum_sq: f64,
    pub(super) hist: Histogram,
    pub(super) errors: u64,
    /// The largest values seen, with their trace.
    pub(super) top: Vec<(f64, u32)>,
}

impl Stat {
    pub(super) fn add(&mut self, ms: f64, trace: u32) {
        self.calls += 1;
        self.sum_ms += ms;
        self.sum_sq += ms * ms;
        *self.hist.entry(bucket(ms)).or_default() += 1;
        if self.top.len() < 3 || ms > self.top[self.top.len() - 1].0 {
            if self.top.iter().all(|(_, t)| *t != trace) {
                self.top.push((ms, trace));
            }
            self.top.sort_by(|a, b| b.0.total_cmp(&a.0));
            self.top.truncate(3);
        }
    }

    pub(super) fn mean(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.sum_ms / self.calls as f64 }
    }

    /// The sample variance of a call's time.
    pub(super) fn variance(&self) -> f64 {
        if self.calls < 2 {
            return 0.0;
        }
        let n = self.calls as f64;
        ((self.sum_sq - self.sum_ms * self.sum_ms / n) / (n - 1.0)).max(0.0)
    }
}

/// Log-spaced buckets about 5% apart; 0 for anything under 10 µs.
pub(super) fn bucket(ms: f64) -> i64 {
    if ms < 0.01 { 0 } else { ((ms * 100.0).ln() * 20.0).round() as i64 + 1 }
}

/// The time a bucket stands for, in ms.
pub(super) fn bucket_ms(b: i64) -> f64 {
    if b <= 0 { 0.0 } else { ((b - 1) as f64 / 20.0).exp() / 100.0 }
}

impl Stat {
    /// The `q` quantile of a call's time, in ms (to the bucket's 5%).
    pub(super) fn quantile(&self, q: f64) -> f64 {
        stats::hist_quantile(&self.hist, q).map_or(0.0, bucket_ms)
    }
}

/// One window's traces, broken down by where their time and failures go.
#[derive(Debug, Default)]
pub struct Profile {
    pub traces: usize,
    pub(super) trace_ids: Vec<String>,
    pub(super) stats: BTreeMap<Key, Stat>,
    pub(super) root: Stat,
    /// (caller, callee) services seen calling each other.
    pub(super) edges: std::collections::BTreeSet<(Arc<str>, Arc<str>)>,
    /// Per (service, version): the traces that version served (a server or
    /// consumer span of the service ran it).
    pub(super) served: BTreeMap<Release, Served>,
    /// Per service: the traces it served, whatever the version.
    pub(super) serving: BTreeMap<Arc<str>, u64>,
    /// Requests by what they asked for: the root span's (service, operation).
    pub(super) entries: BTreeMap<(Arc<str>, Arc<str>), u64>,
}

/// A version of a service: (service, version).
pub(super) type Release = (Arc<str>, Arc<str>);

/// The traces one version of a service served.
#[derive(Debug, Default, Clone)]
pub(super) struct Served {
    pub(super) traces: u64,
    /// Its operations, by the traces they served.
    pub(super) operations: BTreeMap<Arc<str>, u64>,
    /// The first few traces, as indices into the profile's trace ids.
    pub(super) exemplars: Vec<u32>,
}

/// A sample whose columns are not what the query selects.
fn schema_err(e: impl ToString) -> AnalysisError {
    AnalysisError::Query { message: e.to_string(), sql: String::new() }
}

impl Profile {
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Self, AnalysisError> {
        Ok(Self::from_traces(spans_by_trace(batches)?.iter().map(|(t, s)| (t.as_str(), s.as_slice()))))
    }

    /// A profile of these traces, taken in trace id order (`(id, spans)`).
    pub(super) fn from_traces<'a>(traces: impl IntoIterator<Item = (&'a str, &'a [Span])>) -> Self {
        let mut p = Profile::default();
        for (n, (trace_id, spans)) in traces.into_iter().enumerate() {
            p.trace_ids.push(trace_id.to_owned());
            p.add_trace(spans, n as u32);
        }
        p.traces = p.trace_ids.len();
        p
    }
}

/// The spans of a sample's rows, by trace id (each trace's in the rows' order).
pub(super) fn spans_by_trace(batches: &[RecordBatch]) -> Result<BTreeMap<String, Vec<Span>>, AnalysisError> {
    let mut interner: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |s: &str| -> Arc<str> {
        if let Some(a) = interner.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        interner.insert(s.to_owned(), a.clone());
        a
    };
    let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for b in batches {
        let col = |name: &str| -> Result<arrow::array::ArrayRef, AnalysisError> {
            let i = b.schema().index_of(name).map_err(schema_err)?;
            Ok(b.column(i).clone())
        };
        let text = |name: &str| -> Result<arrow::array::ArrayRef, AnalysisError> {
            arrow::compute::cast(&col(name)?, &DataType::Utf8).map_err(schema_err)
        };
        let int = |name: &str| -> Result<arrow::array::ArrayRef, AnalysisError> {
            arrow::compute::cast(&col(name)?, &DataType::Int64).map_err(schema_err)
        };
        let (trace, id, parent, service, op, kind, status) = (
            text("trace_id")?,
            text("span_id")?,
            text("parent_span_id")?,
            text("service")?,
            text("operation")?,
            text("kind")?,
            text("status_code")?,
        );
        let (t0, t1) = (int("t0")?, int("t1")?);
        // A sample read before versions were selected has no such column.
        let version = match b.schema().index_of("version") {
            Ok(_) => Some(text("version")?),
            Err(_) => None,
        };
        let version = version.as_ref().map(|v| v.as_string::<i32>());
        let (trace, id, parent, service, op, kind, status) = (
            trace.as_string::<i32>(),
            id.as_string::<i32>(),
            parent.as_string::<i32>(),
            service.as_string::<i32>(),
            op.as_string::<i32>(),
            kind.as_string::<i32>(),
            status.as_string::<i32>(),
        );
        let (t0, t1) = (t0.as_primitive::<Int64Type>(), t1.as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            if trace.is_null(i) || id.is_null(i) || t0.is_null(i) || t1.is_null(i) {
                continue;
            }
            let parent = (!parent.is_null(i) && !parent.value(i).is_empty()).then(|| intern(parent.value(i)));
            let span = Span {
                id: intern(id.value(i)),
                parent,
                service: intern(if service.is_null(i) { "unknown" } else { service.value(i) }),
                operation: intern(if op.is_null(i) { "" } else { op.value(i) }),
                kind: match (!kind.is_null(i)).then(|| kind.value(i)) {
                    Some("server") => Kind::Server,
                    Some("client") => Kind::Client,
                    Some("producer") => Kind::Producer,
                    Some("consumer") => Kind::Consumer,
                    _ => Kind::Other,
                },
                version: version.filter(|v| !v.is_null(i) && !v.value(i).is_empty()).map(|v| intern(v.value(i))),
                err: !status.is_null(i) && status.value(i) == "error",
                t0: t0.value(i),
                t1: t1.value(i).max(t0.value(i)),
            };
            by_trace.entry(trace.value(i).to_owned()).or_default().push(span);
        }
    }
    // In time order, whatever order the rows came in, so that a trace adds
    // up the same however it was read.
    for spans in by_trace.values_mut() {
        spans.sort_by(|a, b| (a.t0, &a.id, a.t1).cmp(&(b.t0, &b.id, b.t1)));
    }
    Ok(by_trace)
}

impl Profile {
    pub(super) fn add_trace(&mut self, spans: &[Span], trace: u32) {
        let index: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (&*s.id, i)).collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            match s.parent.as_deref().and_then(|p| index.get(p)) {
                Some(&p) if p != i => children[p].push(i),
                _ => roots.push(i),
            }
        }
        // A failure starts at an error span with no failing span beneath it.
        let mut failing_below = vec![false; spans.len()];
        let mut order = Vec::with_capacity(spans.len());
        let mut stack: Vec<usize> = roots.clone();
        let mut seen = vec![false; spans.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(i);
            stack.extend(children[i].iter().copied());
        }
        // A span leaves its process when it is a call out (client, producer) or
        // something beneath it is, or runs in another service.
        let mut leaves = vec![false; spans.len()];
        for &i in order.iter().rev() {
            failing_below[i] = children[i].iter().any(|&c| spans[c].err || failing_below[c]);
            leaves[i] = matches!(spans[i].kind, Kind::Client | Kind::Producer)
                || children[i].iter().any(|&c| leaves[c] || spans[c].service != spans[i].service);
        }
        // How long each span's call lasts: a producer's lasts until the
        // consumers of its message are done (a caller that waits for the
        // result waits that long; one that does not has ended by then and
        // nothing is charged to it).
        let callees: Vec<Vec<usize>> = (0..spans.len())
            .map(|i| {
                let kind = match spans[i].kind {
                    Kind::Client => Kind::Server,
                    Kind::Producer => Kind::Consumer,
                    _ => return Vec::new(),
                };
                children[i].iter().copied().filter(|&c| spans[c].kind == kind).collect()
            })
            .collect();
        let extent: Vec<(i64, i64)> = (0..spans.len())
            .map(|i| {
                let s = &spans[i];
                let end = match s.kind {
                    Kind::Producer => callees[i].iter().map(|&c| spans[c].t1).fold(s.t1, i64::max),
                    _ => s.t1,
                };
                (s.t0, end)
            })
            .collect();
        // While a sibling's call out is in flight, a span whose work stays in
        // its process (a reactive handler, a controller awaiting the client
        // call beside it) is waiting, not working: that time is not its own.
        // What its ancestors wait on, it waits on too.
        let mut waiting: Vec<Vec<(i64, i64)>> = vec![Vec::new(); spans.len()];
        for &i in &order {
            if leaves[i] {
                continue;
            }
            let mut w = Vec::new();
            if let Some(p) = spans[i].parent.as_deref().and_then(|p| index.get(p)).copied().filter(|p| *p != i) {
                w.extend(waiting[p].iter().copied());
                w.extend(children[p].iter().filter(|&&j| j != i && leaves[j]).map(|&j| extent[j]));
            }
            waiting[i] = w;
        }
        for &r in &roots {
            if spans[r].parent.is_none() {
                let s = &spans[r];
                self.root.add((s.t1 - s.t0) as f64 / 1e6, trace);
                *self.entries.entry((s.service.clone(), s.operation.clone())).or_default() += 1;
                if s.err {
                    self.root.errors += 1;
                }
            }
        }
        let mut ran: BTreeMap<Release, std::collections::BTreeSet<Arc<str>>> = BTreeMap::new();
        let mut services: std::collections::BTreeSet<Arc<str>> = std::collections::BTreeSet::new();
        for s in spans.iter().filter(|s| matches!(s.kind, Kind::Server | Kind::Consumer)) {
            services.insert(s.service.clone());
            if let Some(v) = &s.version {
                ran.entry((s.service.clone(), v.clone())).or_default().insert(s.operation.clone());
            }
        }
        for s in services {
            *self.serving.entry(s).or_default() += 1;
        }
        for (key, operations) in ran {
            let served = self.served.entry(key).or_default();
            served.traces += 1;
            for op in operations {
                *served.operations.entry(op).or_default() += 1;
            }
            if served.exemplars.len() < 3 {
                served.exemplars.push(trace);
            }
        }
        for (i, s) in spans.iter().enumerate() {
            for &c in &children[i] {
                if spans[c].service != s.service {
                    self.edges.insert((s.service.clone(), spans[c].service.clone()));
                }
            }
        }
        for &i in &order {
            let s = &spans[i];
            let origin = s.err && !failing_below[i];
            if let Some(&first) = callees[i].first() {
                let (t0, t1) = extent[i];
                let waited = covered((t0, t1), callees[i].iter().map(|&c| (spans[c].t0, spans[c].t1)));
                let hop_ms = ((t1 - t0) - waited).max(0) as f64 / 1e6;
                let callee = &spans[first];
                let key = Key::Hop {
                    caller: s.service.clone(),
                    callee: callee.service.clone(),
                    operation: callee.operation.clone(),
                    queued: s.kind == Kind::Producer,
                };
                let st = self.stats.entry(key).or_default();
                st.add(hop_ms, trace);
                if origin {
                    st.errors += 1;
                }
                continue;
            }
            let busy = children[i].iter().map(|&c| extent[c]).chain(waiting[i].iter().copied());
            let own = ((s.t1 - s.t0) - covered((s.t0, s.t1), busy)).max(0) as f64 / 1e6;
            let key = if matches!(s.kind, Kind::Client | Kind::Producer) {
                Key::Dependency { service: s.service.clone(), operation: s.operation.clone() }
            } else {
                Key::Own { service: s.service.clone(), operation: s.operation.clone() }
            };
            let st = self.stats.entry(key).or_default();
            st.add(own, trace);
            if origin {
                st.errors += 1;
            }
        }
    }
}

/// How much of the interval `(t0, t1)` (a parent's) the intervals given
/// cover, clipped to it (children that start before it or outlive it),
/// overlaps merged.
pub(super) fn covered((t0, t1): (i64, i64), intervals: impl Iterator<Item = (i64, i64)>) -> i64 {
    let mut iv: Vec<(i64, i64)> = intervals.map(|(a, b)| (a.max(t0), b.min(t1))).filter(|(a, b)| b > a).collect();
    iv.sort_unstable();
    let (mut total, mut end) = (0i64, i64::MIN);
    for (a, b) in iv {
        let a = a.max(end);
        if b > a {
            total += b - a;
        }
        end = end.max(b);
    }
    total
}
