//! The traces a pass sampled, kept for the next: consecutive passes slide
//! their windows by a minute, so most of the traces a candidate's sample
//! picks were read by the pass before. A trace's spans are those within
//! [`REACH`](super::scope::REACH) of its root, whatever the window, so the
//! book answers with exactly what reading them again would.
//!
//! Which traces are in a scope does not depend on the window either (a
//! span within reach of the root meets each condition), so the book keeps
//! them by the minute their root starts in ([`MinuteCells`], with a span
//! able to change the minutes up to a reach before it), and a pass reads
//! only the minutes it has not seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::minutes::{KeptTraces, MinuteCells, now_ns, whole_minutes};

use super::profile::{Span, spans_by_trace};
use super::scope::{conditions_query, picked_query, qualifying_query, spans_query, within_reach};
use super::*;

/// Each scope's conditions, by its key.
type Conditions = BTreeMap<String, Vec<String>>;

/// Spans of sampled traces by (tenant, trace id), with the turn that last
/// asked for each.
#[derive(Debug)]
pub struct TraceBook {
    inner: Mutex<Book>,
}

impl Default for TraceBook {
    fn default() -> Self {
        // A root in minute m brings traces in scope by spans up to a reach
        // after the minute ends.
        let reach = super::REACH.num_nanoseconds().unwrap_or(i64::MAX);
        TraceBook {
            inner: Mutex::new(Book {
                traces: KeptTraces::default(),
                scopes: MinuteCells::new(reach),
                hits: 0,
                reads: 0,
                scope_reads: 0,
            }),
        }
    }
}

#[derive(Debug)]
struct Book {
    traces: KeptTraces<Kept>,
    /// Per (tenant, traces a sample takes and scope): the traces in scope by
    /// the minute their root starts in.
    scopes: MinuteCells<String, InScope>,
    /// Lookups answered from the book and read from the store, since the start.
    hits: u64,
    reads: u64,
    /// Statements a scope read its traces with on its own ([`TraceBook::picked`]).
    scope_reads: u64,
}

/// One minute's traces in a scope: the first (by trace id) as many as a
/// sample takes, `(trace id, root start in Unix ns)`, since no more of one
/// minute can be among a window's first.
#[derive(Debug)]
struct InScope {
    traces: Vec<(String, i64)>,
    /// More traces were in scope than kept.
    truncated: bool,
}

#[derive(Debug)]
struct Kept {
    root_start: i64,
    spans: Arc<[Span]>,
}

impl TraceBook {
    /// Starts a turn for `tenant`: forgets what no recent turn asked for, the
    /// traces that received a span after they were read, and the minutes of
    /// scopes the spans appended since they were last checked may have changed.
    pub fn turn(&self, store: &andon_store::Store, tenant: &Tenant) {
        let mut b = self.book();
        b.traces.turn(tenant, |after| store.arrivals_after(tenant, after));
        b.scopes.turn(store, tenant);
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the minutes of `windows` the book does not hold for each of
    /// `scopes` (a pass's candidates, about to be sampled), scopes missing
    /// the same minutes in one statement ([`conditions_query`]) instead of
    /// one each. Windows that do not begin and end on a minute, and scopes
    /// without a condition (every trace), are left to [`Self::picked`].
    pub async fn prefill(
        &self,
        engine: &QueryEngine,
        tenant: &Tenant,
        windows: &[TimeWindow],
        traces: usize,
        scopes: &[&Scope],
    ) -> Result<(), AnalysisError> {
        let mut wanted: Vec<i64> = windows.iter().filter_map(|w| whole_minutes(w.start, w.end)).flatten().collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        // Per scope key: its conditions, and the runs of minutes it misses.
        let mut by_runs: BTreeMap<Vec<(i64, i64)>, Conditions> = BTreeMap::new();
        {
            let mut b = self.book();
            for scope in scopes.iter().filter(|s| !s.conditions().is_empty()) {
                let key = format!("{traces}\n{}", scope.key());
                let runs = b.scopes.missing(tenant, &key, &wanted);
                if !runs.is_empty() {
                    by_runs.entry(runs).or_default().insert(key, scope.conditions());
                }
            }
        }
        for (runs, keys) in by_runs {
            let mut conditions: Vec<&String> = keys.values().flatten().collect();
            conditions.sort_unstable();
            conditions.dedup();
            let owned: Vec<String> = conditions.iter().map(|c| (*c).clone()).collect();
            for (a, z) in runs {
                let at = DateTime::from_timestamp_nanos;
                let read_at = now_ns();
                let rows = andon_store::sql::Rows::new(
                    collect(engine, tenant, &conditions_query(at(a), at(z), &owned)).await?,
                );
                // Each root, with the conditions it meets.
                let roots: Vec<(String, i64, Vec<bool>)> = rows
                    .iter()
                    .filter_map(|r| {
                        let met = (0..owned.len()).map(|i| r.i64(&format!("c{i}")) == Some(1)).collect();
                        Some((r.str("trace_id")?, r.i64("root_start")?, met))
                    })
                    .collect();
                let mut b = self.book();
                for (key, own) in &keys {
                    let needed: Vec<usize> = own.iter().filter_map(|c| conditions.binary_search(&c).ok()).collect();
                    let read = roots
                        .iter()
                        .filter(|(_, _, met)| needed.iter().all(|i| met[*i]))
                        .map(|(id, root, _)| (*root, (id.clone(), *root)));
                    b.scopes.fill(tenant, key, (a, z), read_at, read, |mut list| {
                        list.sort_unstable();
                        let truncated = list.len() > traces;
                        list.truncate(traces);
                        InScope { traces: list, truncated }
                    });
                }
            }
        }
        Ok(())
    }

    /// The first `traces` by trace id of the traces in `scope` whose root
    /// starts in `w` ([`picked_query`]): from the minutes the book holds for
    /// the scope, reading the others.
    pub(crate) async fn picked(
        &self,
        engine: &QueryEngine,
        tenant: &Tenant,
        w: &TimeWindow,
        traces: usize,
        scope: &Scope,
    ) -> Result<Vec<(String, i64)>, AnalysisError> {
        let Some(wanted) = whole_minutes(w.start, w.end) else {
            // A window that does not begin and end on a minute (not a pass's).
            let q = picked_query(w, traces, scope);
            return Ok(rows(&collect(engine, tenant, &q).await?));
        };
        let key = format!("{traces}\n{}", scope.key());
        // Runs of minutes the book does not hold, each read in one statement.
        let runs = self.book().scopes.missing(tenant, &key, &wanted);
        self.book().scope_reads += runs.len() as u64;
        for (a, z) in runs {
            let at = DateTime::from_timestamp_nanos;
            let read_at = now_ns();
            let read = rows(&collect(engine, tenant, &qualifying_query(at(a), at(z), scope)).await?);
            let read = read.into_iter().map(|(id, root)| (root, (id, root)));
            self.book().scopes.fill(tenant, &key, (a, z), read_at, read, |mut list| {
                list.sort_unstable();
                let truncated = list.len() > traces;
                list.truncate(traces);
                InScope { traces: list, truncated }
            });
        }
        let arriving = crate::requests::arriving(engine.store(), tenant, scope.settled);
        let held: Option<Vec<(String, i64)>> = {
            let b = self.book();
            b.scopes.parts(tenant, &key, &wanted).and_then(|parts| {
                let mut roots: Vec<(&str, i64)> = Vec::new();
                for cell in parts {
                    if arriving.is_empty() {
                        roots.extend(cell.traces.iter().map(|(id, root)| (id.as_str(), *root)));
                        continue;
                    }
                    for (id, root) in &cell.traces {
                        if crate::requests::is_arriving(&arriving, id) {
                            // The traces kept of a full minute are no longer
                            // its first that have settled.
                            if cell.truncated {
                                return None;
                            }
                            continue;
                        }
                        roots.push((id.as_str(), *root));
                    }
                }
                Some(first_traces(roots, traces))
            })
        };
        match held {
            Some(picked) => Ok(picked),
            None => {
                self.book().scope_reads += 1;
                // A turn began meanwhile and dropped minutes, or a full
                // minute holds traces still arriving: read the window whole.
                let q = picked_query(w, traces, scope);
                Ok(rows(&collect(engine, tenant, &q).await?))
            }
        }
    }

    /// Statements a scope read its traces with on its own since the book
    /// began, not in a [`Self::prefill`] for many.
    pub fn scope_reads(&self) -> u64 {
        self.book().scope_reads
    }

    /// (answered from the book, read from the store) since the book began.
    pub fn counts(&self) -> (u64, u64) {
        let b = self.book();
        (b.hits, b.reads)
    }

    /// The profile of `w`'s sample ([`sample_query`]), reading from the store
    /// only the picked traces the book does not hold.
    pub(super) async fn sample(
        &self,
        engine: &QueryEngine,
        tenant: &Tenant,
        w: &TimeWindow,
        traces: usize,
        scope: &Scope,
    ) -> Result<Profile, AnalysisError> {
        let picked = self.picked(engine, tenant, w, traces, scope).await?;
        let mut found: HashMap<String, Arc<[Span]>> = HashMap::new();
        let missing: Vec<(String, i64)> = {
            let mut b = self.book();
            let mut missing = Vec::new();
            for (id, root) in &picked {
                match b.traces.get(tenant, id) {
                    Some(k) if k.root_start == *root => {
                        found.insert(id.clone(), Arc::clone(&k.spans));
                    }
                    _ => missing.push((id.clone(), *root)),
                }
            }
            b.hits += found.len() as u64;
            b.reads += missing.len() as u64;
            missing
        };
        if let Some(q) = spans_query(&missing) {
            let read_at = now_ns();
            let mut read = spans_by_trace(&collect(engine, tenant, &q).await?)?;
            let mut b = self.book();
            for (id, root) in missing {
                let spans: Arc<[Span]> = read
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|s| within_reach(root, s.t0))
                    .collect::<Vec<_>>()
                    .into();
                b.traces.insert(tenant, id.clone(), Kept { root_start: root, spans: Arc::clone(&spans) }, read_at);
                found.insert(id, spans);
            }
        }
        let mut ids: Vec<&String> = found.keys().filter(|id| !found[*id].is_empty()).collect();
        ids.sort();
        Ok(Profile::from_traces(ids.into_iter().map(|id| (id.as_str(), &*found[id]))))
    }
}

/// The first `n` traces by id, each with its earliest root start.
fn first_traces(mut roots: Vec<(&str, i64)>, n: usize) -> Vec<(String, i64)> {
    fn whole(mut v: Vec<(&str, i64)>) -> Vec<(&str, i64)> {
        v.sort_unstable();
        v.dedup_by(|later, first| later.0 == first.0);
        v
    }
    // The first n pairs hold the first n traces unless a trace holds two of them.
    if roots.len() > n && n > 0 {
        roots.select_nth_unstable(n - 1);
        let head = whole(roots[..n].to_vec());
        if head.len() == n {
            roots = head;
        } else {
            roots = whole(roots);
        }
    } else {
        roots = whole(roots);
    }
    roots.into_iter().take(n).map(|(id, root)| (id.to_owned(), root)).collect()
}

/// `(trace_id, root_start)` rows.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64)> {
    andon_store::sql::Rows::new(batches.to_vec())
        .iter()
        .filter_map(|r| Some((r.str("trace_id")?, r.i64("root_start")?)))
        .collect()
}

async fn collect(engine: &QueryEngine, tenant: &Tenant, q: &str) -> Result<Vec<RecordBatch>, AnalysisError> {
    Ok(engine
        .collect(Some(tenant.clone()), q)
        .await
        .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: q.to_owned() })?
        .batches)
}

#[cfg(test)]
mod tests {
    use super::first_traces;

    #[test]
    fn the_first_traces_by_id_each_once_with_its_earliest_root() {
        let roots = vec![("c", 5), ("a", 9), ("b", 2), ("a", 3), ("d", 1), ("b", 7)];
        let owned = |v: &[(&str, i64)]| v.iter().map(|(id, r)| (id.to_string(), *r)).collect::<Vec<_>>();
        assert_eq!(first_traces(roots.clone(), 2), owned(&[("a", 3), ("b", 2)]));
        assert_eq!(first_traces(roots.clone(), 3), owned(&[("a", 3), ("b", 2), ("c", 5)]));
        assert_eq!(first_traces(roots.clone(), 10), owned(&[("a", 3), ("b", 2), ("c", 5), ("d", 1)]));
        assert_eq!(first_traces(roots, 0), owned(&[]));
        let many: Vec<(String, i64)> = (0..1000).rev().map(|i| (format!("{i:04}"), i)).collect();
        let refs: Vec<(&str, i64)> = many.iter().map(|(id, r)| (id.as_str(), *r)).collect();
        let first = first_traces(refs, 5);
        assert_eq!(
            first.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["0000", "0001", "0002", "0003", "0004"]
        );
    }
}
