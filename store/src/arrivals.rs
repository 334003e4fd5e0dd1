//! When each recent trace last received a span, by the wall clock of this
//! server. A trace whose spans are still arriving is incomplete: its caller's
//! client span may be here while its callee's server span is still in an
//! exporter's batch, and a pass that judged it would charge the callee's time
//! to the caller. Continuous detection leaves such traces out; the SQL table
//! `arriving_traces` shows them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;

use andon_model::Tenant;

use crate::StoreError;
use crate::query::ExtraTable;

/// How long a trace's last arrival is remembered: the longest settle delay a
/// pass can ask for.
pub const HORIZON_SECS: i64 = 300;

/// How many traces [`Arrivals`] remembers at most, over every tenant. A
/// client sending a new trace id with every span could otherwise grow it
/// for [`HORIZON_SECS`] at whatever rate the receivers take (3M traces
/// hold about 100 MB of table). Past it the older half is forgotten: those
/// traces count as settled sooner than their delay.
pub const MAX_TRACES: usize = 3_000_000;

/// A trace id as two words: a `u128` key would be aligned to 16 bytes, and
/// each entry would take 32 bytes instead of 24.
type Key = [u64; 2];

fn key(id: u128) -> Key {
    [(id >> 64) as u64, id as u64]
}

fn id(key: &Key) -> u128 {
    (u128::from(key[0]) << 64) | u128::from(key[1])
}

/// Last arrival per trace (the 16-byte id), per tenant, in Unix nanoseconds.
#[derive(Debug)]
pub struct Arrivals {
    by_tenant: Mutex<HashMap<Tenant, HashMap<Key, i64>>>,
    max_traces: usize,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self::with_max_traces(MAX_TRACES)
    }
}

impl Arrivals {
    /// Remembering at most `max_traces` traces over every tenant.
    pub fn with_max_traces(max_traces: usize) -> Self {
        Self { by_tenant: Mutex::default(), max_traces: max_traces.max(2) }
    }

    /// Notes that `batch`'s traces received spans at `now_ns`.
    pub fn note(&self, tenant: &Tenant, batch: &RecordBatch, now_ns: i64) {
        let Ok(i) = batch.schema().index_of("trace_id") else { return };
        let Some(ids) = batch.column(i).as_string_opt::<i32>() else { return };
        let mut last: Option<&str> = None;
        let mut fresh: Vec<u128> = Vec::new();
        for r in 0..ids.len() {
            if ids.is_null(r) {
                continue;
            }
            let id = ids.value(r);
            // Spans of one trace usually sit together in a batch.
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if let Ok(v) = u128::from_str_radix(id, 16) {
                fresh.push(v);
            }
        }
        let mut by_tenant = self.by_tenant.lock();
        let map = by_tenant.entry(tenant.clone()).or_default();
        for v in fresh {
            map.insert(key(v), now_ns);
        }
        if by_tenant.values().map(HashMap::len).sum::<usize>() > self.max_traces {
            forget_older_half(&mut by_tenant, self.max_traces);
        }
    }

    /// Forgets arrivals older than [`HORIZON_SECS`] before `now_ns`.
    pub fn prune(&self, now_ns: i64) {
        let cutoff = now_ns - HORIZON_SECS * 1_000_000_000;
        let mut by_tenant = self.by_tenant.lock();
        by_tenant.retain(|_, m| {
            m.retain(|_, at| *at >= cutoff);
            !m.is_empty()
        });
    }

    /// The traces of `tenant` whose last span arrived after `after_ns`, with
    /// that arrival, in no order: what a reader holding traces read at some
    /// moment needs, without listing (and sorting) every recent trace.
    pub fn after(&self, tenant: &Tenant, after_ns: i64) -> Vec<(u128, i64)> {
        let by_tenant = self.by_tenant.lock();
        by_tenant
            .get(tenant)
            .map(|m| m.iter().filter(|(_, at)| **at > after_ns).map(|(k, v)| (id(k), *v)).collect())
            .unwrap_or_default()
    }

    /// The traces of `tenant` (every tenant's when `None`) with their last
    /// arrival, oldest first.
    pub fn list(&self, tenant: Option<&Tenant>) -> Vec<(u128, i64)> {
        let by_tenant = self.by_tenant.lock();
        let mut out: Vec<(u128, i64)> = by_tenant
            .iter()
            .filter(|(t, _)| tenant.is_none_or(|x| x == *t))
            .flat_map(|(_, m)| m.iter().map(|(k, v)| (id(k), *v)))
            .collect();
        out.sort_unstable_by_key(|(k, at)| (*at, *k));
        out
    }
}

/// Forgets the traces that last received a span before the median arrival
/// of all ([`older_half_forgotten`]): called when there are more than
/// `max`, so its cost (one pass over the table) comes once every half of the
/// cap's new traces.
fn forget_older_half(by_tenant: &mut HashMap<Tenant, HashMap<Key, i64>>, max: usize) {
    let times: Vec<i64> = by_tenant.values().flat_map(|m| m.values().copied()).collect();
    let before = times.len();
    let keep = older_half_forgotten(times, max);
    by_tenant.retain(|_, m| {
        m.retain(|_, at| keep(*at));
        !m.is_empty()
    });
    let after: usize = by_tenant.values().map(HashMap::len).sum();
    tracing::warn!(
        forgotten = before - after,
        kept = after,
        "more recent traces than the arrivals table keeps: the older ones count as settled"
    );
}

/// Which of a table's entries, noted at `times`, to keep when there are more
/// than `max`: those noted at or after the median time (only after it, if
/// that still leaves more than `max`).
pub(crate) fn older_half_forgotten(mut times: Vec<i64>, max: usize) -> impl Fn(i64) -> bool {
    let mid = times.len() / 2;
    let cutoff = if times.is_empty() { i64::MIN } else { *times.select_nth_unstable(mid).1 };
    let at_or_after = times.iter().filter(|t| **t >= cutoff).count();
    move |at| if at_or_after > max { at > cutoff } else { at >= cutoff }
}

/// How long [`Appends`] can tell what was appended.
pub const APPENDS_HORIZON_SECS: i64 = 3_600;

/// Per tenant and wall-clock second of arrival, the earliest `start_time` of
/// the spans appended: a reader that keeps what it derived from a span range
/// learns which part of it the spans appended since may have changed.
#[derive(Debug, Default)]
pub struct Appends {
    by_tenant: Mutex<HashMap<Tenant, AppendLog>>,
    /// The second (Unix s) after the last removal of spans (retention).
    removed_at: Mutex<Option<i64>>,
}

#[derive(Debug, Default)]
struct AppendLog {
    /// (second, earliest start_time in Unix ns), oldest first.
    seconds: std::collections::VecDeque<(i64, i64)>,
    /// Before this second (Unix s) the log cannot tell: it was pruned, or
    /// spans were removed (retention).
    known_from: i64,
}

impl Appends {
    /// Notes that `batch` was appended for `tenant` at `now_ns`.
    pub fn note(&self, tenant: &Tenant, batch: &RecordBatch, now_ns: i64) {
        let Ok(i) = batch.schema().index_of("start_time") else { return };
        let Some(earliest) =
            batch.column(i).as_any().downcast_ref::<TimestampNanosecondArray>().and_then(arrow::compute::min)
        else {
            return;
        };
        let second = now_ns.div_euclid(1_000_000_000);
        let mut by_tenant = self.by_tenant.lock();
        let log = by_tenant.entry(tenant.clone()).or_default();
        match log.seconds.back_mut() {
            Some((s, e)) if *s == second => *e = (*e).min(earliest),
            _ => log.seconds.push_back((second, earliest)),
        }
        while log.seconds.front().is_some_and(|(s, _)| *s < second - APPENDS_HORIZON_SECS) {
            if let Some((s, _)) = log.seconds.pop_front() {
                log.known_from = log.known_from.max(s + 1);
            }
        }
    }

    /// Spans of every tenant may have been removed at `now_ns`: what was
    /// derived before cannot be trusted.
    pub fn removed(&self, now_ns: i64) {
        let second = now_ns.div_euclid(1_000_000_000) + 1;
        let mut removed = self.removed_at.lock();
        *removed = Some(removed.map_or(second, |r| r.max(second)));
    }

    /// The earliest `start_time` among the spans appended for `tenant` at or
    /// after `since_ns` (to the second, so perhaps a little before): `Some(None)`
    /// when none was, `None` when the log cannot tell.
    pub fn earliest_since(&self, tenant: &Tenant, since_ns: i64) -> Option<Option<i64>> {
        let second = since_ns.div_euclid(1_000_000_000);
        if self.removed_at.lock().is_some_and(|r| r > second) {
            return None;
        }
        let by_tenant = self.by_tenant.lock();
        let Some(log) = by_tenant.get(tenant) else { return Some(None) };
        if log.known_from > second {
            return None;
        }
        Some(log.seconds.iter().rev().take_while(|(s, _)| *s >= second).map(|(_, e)| *e).min())
    }
}

/// The SQL table `arriving_traces (trace_id, last_arrival)`: traces that
/// received a span in the last [`HORIZON_SECS`], when they last did.
#[derive(Debug)]
pub(crate) struct ArrivingTraces(pub(crate) Arc<Arrivals>);

impl ExtraTable for ArrivingTraces {
    fn name(&self) -> &str {
        "arriving_traces"
    }

    fn provider(&self, tenant: Option<&Tenant>) -> Result<Arc<dyn TableProvider>, StoreError> {
        Ok(Arc::new(ArrivingScan { arrivals: Arc::clone(&self.0), tenant: tenant.cloned() }))
    }
}

fn arriving_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("last_arrival", andon_model::schema::timestamp_type(), false),
    ]))
}

/// One statement's view of the arrivals, read when the statement scans the
/// table: every statement registers the table, and most never read it.
#[derive(Debug)]
struct ArrivingScan {
    arrivals: Arc<Arrivals>,
    tenant: Option<Tenant>,
}

#[async_trait]
impl TableProvider for ArrivingScan {
    fn schema(&self) -> SchemaRef {
        arriving_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let rows = self.arrivals.list(self.tenant.as_ref());
        let schema = arriving_schema();
        let ids = StringArray::from(rows.iter().map(|(k, _)| format!("{k:032x}")).collect::<Vec<_>>());
        let at = TimestampNanosecondArray::from(rows.iter().map(|(_, t)| *t).collect::<Vec<_>>()).with_timezone("UTC");
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ids), Arc::new(at)])?;
        MemTable::try_new(schema, vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("trace_id", DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap()
    }

    #[test]
    fn keeps_the_last_arrival_per_trace_and_tenant_and_forgets_old_ones() {
        let a = Arrivals::default();
        let (t1, t2) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let x = "0af7651916cd43dd8448eb211c80319c";
        let y = "00000000000000000000000000000001";
        a.note(&t1, &batch(&[x, x, y]), 1_000);
        a.note(&t1, &batch(&[x]), 5_000);
        a.note(&t2, &batch(&[y]), 2_000);
        assert_eq!(a.list(Some(&t1)), vec![(1, 1_000), (u128::from_str_radix(x, 16).unwrap(), 5_000)]);
        assert_eq!(a.list(None).len(), 3);
        // The cutoff falls at 2 µs: the first arrival of `y` in tenant a is forgotten.
        a.prune(HORIZON_SECS * 1_000_000_000 + 2_000);
        assert_eq!(a.list(None), vec![(1, 2_000), (u128::from_str_radix(x, 16).unwrap(), 5_000)]);
        // Only the arrivals after a moment, of one tenant.
        assert_eq!(a.after(&t1, 4_999), vec![(u128::from_str_radix(x, 16).unwrap(), 5_000)]);
        assert!(a.after(&t1, 5_000).is_empty());
        assert_eq!(a.after(&t2, 0), vec![(1, 2_000)]);
        assert!(a.after(&Tenant::new("c").unwrap(), 0).is_empty());
    }

    #[test]
    fn past_the_cap_the_traces_that_arrived_last_are_kept() {
        let a = Arrivals::with_max_traces(10);
        let (t1, t2) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        for i in 0..25u128 {
            let id = format!("{:032x}", (i << 64) | (i + 1));
            a.note(if i % 2 == 0 { &t1 } else { &t2 }, &batch(&[&id]), 1_000 + i as i64);
            let all = a.list(None);
            assert!(all.len() <= 10, "after trace {i}: {} kept", all.len());
            assert_eq!(all.last(), Some(&(((i << 64) | (i + 1)), 1_000 + i as i64)), "the newest is kept");
            // What is kept is the latest arrivals, with no gap.
            let oldest = 1_000 + i as i64 + 1 - all.len() as i64;
            assert_eq!(all.first().map(|(_, at)| *at), Some(oldest), "after trace {i}");
        }
        // One batch of more traces than the cap, all at one moment: the cap
        // still holds (none of them is kept), and the next arrival is.
        let ids: Vec<String> = (100..130u128).map(|i| format!("{i:032x}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        a.note(&t1, &batch(&refs), 9_000);
        assert!(a.list(None).len() <= 10);
        a.note(&t1, &batch(&["000000000000000000000000000000ff"]), 9_001);
        assert_eq!(a.list(None).last(), Some(&(0xff, 9_001)));
    }

    fn starts(ns: &[i64]) -> RecordBatch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("start_time", andon_model::schema::timestamp_type(), false)]));
        let at = TimestampNanosecondArray::from(ns.to_vec()).with_timezone("UTC");
        RecordBatch::try_new(schema, vec![Arc::new(at)]).unwrap()
    }

    #[test]
    fn tells_the_earliest_start_appended_since_a_moment_per_tenant_until_it_cannot() {
        const S: i64 = 1_000_000_000;
        let a = Appends::default();
        let (t1, t2) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        a.note(&t1, &starts(&[500 * S, 400 * S]), 1_000 * S);
        a.note(&t1, &starts(&[900 * S]), 1_010 * S + 3);
        a.note(&t2, &starts(&[100 * S]), 1_020 * S);
        // Since a moment before both appends of tenant a, and between them.
        assert_eq!(a.earliest_since(&t1, 999 * S), Some(Some(400 * S)));
        assert_eq!(a.earliest_since(&t1, 1_005 * S), Some(Some(900 * S)));
        // To the second: an append in the same second counts.
        assert_eq!(a.earliest_since(&t1, 1_010 * S + 500), Some(Some(900 * S)));
        assert_eq!(a.earliest_since(&t1, 1_011 * S), Some(None));
        assert_eq!(a.earliest_since(&t2, 1_000 * S), Some(Some(100 * S)));
        assert_eq!(a.earliest_since(&Tenant::new("c").unwrap(), 0), Some(None));
        // An hour later the first seconds are forgotten: since then, it cannot tell.
        a.note(&t1, &starts(&[2_000 * S]), (1_010 + APPENDS_HORIZON_SECS) * S);
        assert_eq!(a.earliest_since(&t1, 999 * S), None);
        assert_eq!(a.earliest_since(&t1, 1_010 * S), Some(Some(900 * S)));
        // Spans removed: nothing before that can be told.
        a.removed(5_000 * S);
        assert_eq!(a.earliest_since(&t1, 4_999 * S), None);
        assert_eq!(a.earliest_since(&t2, 5_001 * S), Some(None));
    }
}
