//! What a pass read, kept by (tenant, key, minute) for the passes after it.
//!
//! Consecutive passes slide their ranges by a minute, so a result that is a
//! merge of per-minute parts (the traces in a scope by the minute their root
//! starts in, the versions first serving in each minute) is read once a
//! minute instead of once a range. Each turn (a detection pass, or a pass's
//! last-minute judgement) forgets the minutes no recent turn asked for and
//! those the spans appended since they were last checked may have changed:
//! a minute `m` is stale once a span starting before `m + 1 min + reach` was
//! appended ([`andon_store::Store::earliest_appended_since`]), where `reach`
//! is how far after its minute a span can still change the minute's part.
//! In a backtest nothing is appended and nothing is dropped; while traffic
//! arrives, the last few minutes are.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use andon_model::Tenant;
use chrono::{DateTime, Utc};

/// A minute in Unix nanoseconds.
pub const MINUTE_NS: i64 = 60_000_000_000;

/// How many turns a minute stays without being asked for.
pub const KEPT_TURNS: u64 = 3;

/// The minutes starting in `[from, to)`, when both fall on a minute.
pub fn whole_minutes(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Vec<i64>> {
    let whole = |t: DateTime<Utc>| t.timestamp_nanos_opt().filter(|ns| ns.rem_euclid(MINUTE_NS) == 0);
    let (from, to) = (whole(from)?, whole(to)?);
    Some(minutes_in(from, to).collect())
}

/// The minutes starting in `[from, to)`, `from` on a minute.
fn minutes_in(from: i64, to: i64) -> impl Iterator<Item = i64> {
    (0..).map(move |i| from + i * MINUTE_NS).take_while(move |m| *m < to)
}

/// The current time in Unix nanoseconds (this server's clock).
pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Per-minute parts `V` by (tenant, key `K`).
#[derive(Debug)]
pub struct MinuteCells<K, V> {
    turn: u64,
    /// How far after its minute's end an appended span can change its part (ns).
    reach: i64,
    cells: HashMap<(Tenant, K), BTreeMap<i64, Cell<V>>>,
}

#[derive(Debug)]
struct Cell<V> {
    part: V,
    /// Spans appended since this moment (Unix ns, this server's clock) have
    /// not been checked against it: when its read began, then each turn's start.
    checked_from: i64,
    /// The turn that last asked for it.
    asked: u64,
}

impl<K: Eq + Hash + Clone, V> MinuteCells<K, V> {
    /// Cells whose part spans appended up to `reach` ns after the minute's end may change.
    pub fn new(reach: i64) -> Self {
        MinuteCells { turn: 0, reach, cells: HashMap::new() }
    }

    /// The current turn.
    pub fn current(&self) -> u64 {
        self.turn
    }

    /// Starts a turn for `tenant`: forgets what no recent turn asked for, and
    /// the tenant's minutes the spans appended since they were last checked
    /// may have changed (all of them when the store cannot tell).
    pub fn turn(&mut self, store: &andon_store::Store, tenant: &Tenant) {
        let now = now_ns();
        self.turn += 1;
        let oldest = self.turn.saturating_sub(KEPT_TURNS);
        let reach = self.reach;
        // The earliest start appended since each moment cells were last
        // checked from (most share one: the last turn's start).
        let mut appended: HashMap<i64, Option<Option<i64>>> = HashMap::new();
        self.cells.retain(|(t, _), minutes| {
            minutes.retain(|minute, cell| {
                if cell.asked < oldest {
                    return false;
                }
                if t != tenant {
                    return true;
                }
                let since = cell.checked_from;
                cell.checked_from = now;
                match *appended.entry(since).or_insert_with(|| store.earliest_appended_since(tenant, since)) {
                    None => false,
                    Some(None) => true,
                    Some(Some(earliest)) => minute.saturating_add(MINUTE_NS).saturating_add(reach) <= earliest,
                }
            });
            !minutes.is_empty()
        });
    }

    /// Marks the `wanted` minutes held as asked for this turn, and returns
    /// the runs `[a, z)` of those not held, each to be read in one statement.
    pub fn missing(&mut self, tenant: &Tenant, key: &K, wanted: &[i64]) -> Vec<(i64, i64)> {
        let turn = self.turn;
        let held = self.cells.entry((tenant.clone(), key.clone())).or_default();
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for m in wanted {
            match held.get_mut(m) {
                Some(cell) => cell.asked = turn,
                None => match runs.last_mut() {
                    Some(run) if run.1 == *m => run.1 = m + MINUTE_NS,
                    _ => runs.push((*m, m + MINUTE_NS)),
                },
            }
        }
        runs
    }

    /// Keeps what a read of the run `[a, z)` that began at `read_at` gave:
    /// `items` by the minute (Unix ns, any instant in it) each belongs to,
    /// each minute's made into its part by `part` (minutes without items too).
    pub fn fill<T>(
        &mut self,
        tenant: &Tenant,
        key: &K,
        (a, z): (i64, i64),
        read_at: i64,
        items: impl IntoIterator<Item = (i64, T)>,
        mut part: impl FnMut(Vec<T>) -> V,
    ) {
        let mut by_minute: BTreeMap<i64, Vec<T>> = minutes_in(a, z).map(|m| (m, Vec::new())).collect();
        for (at, item) in items {
            by_minute.entry(at.div_euclid(MINUTE_NS) * MINUTE_NS).or_default().push(item);
        }
        let turn = self.turn;
        let held = self.cells.entry((tenant.clone(), key.clone())).or_default();
        for (m, items) in by_minute {
            held.insert(m, Cell { part: part(items), checked_from: read_at, asked: turn });
        }
    }

    /// The parts of the `wanted` minutes, in order; `None` when one is not
    /// held (a turn began meanwhile and dropped it).
    pub fn parts(&self, tenant: &Tenant, key: &K, wanted: &[i64]) -> Option<Vec<&V>> {
        let held = self.cells.get(&(tenant.clone(), key.clone()))?;
        wanted.iter().map(|m| held.get(m).map(|c| &c.part)).collect()
    }
}

/// Whole traces a pass read, `V` by (tenant, trace id), for the passes after
/// it: a trace is kept while a recent turn asks for it and no span of it
/// arrived after it was read.
#[derive(Debug)]
pub struct KeptTraces<V> {
    turn: u64,
    traces: HashMap<(Tenant, String), KeptTrace<V>>,
}

#[derive(Debug)]
struct KeptTrace<V> {
    value: V,
    /// When its read began (Unix ns, this server's clock).
    read_at: i64,
    /// The turn that last asked for it.
    asked: u64,
}

impl<V> Default for KeptTraces<V> {
    fn default() -> Self {
        KeptTraces { turn: 0, traces: HashMap::new() }
    }
}

impl<V> KeptTraces<V> {
    /// Starts a turn for `tenant`: forgets the traces no recent turn asked
    /// for, and the tenant's traces that received a span after they were
    /// read. `arrivals` gives the traces (id, when) that received spans since
    /// a moment; it is asked only when the tenant has traces kept.
    pub fn turn(&mut self, tenant: &Tenant, arrivals: impl FnOnce(i64) -> Vec<(u128, i64)>) {
        self.turn += 1;
        // Only arrivals after the earliest read can make a kept trace stale.
        let earliest = self.traces.iter().filter(|((t, _), _)| t == tenant).map(|(_, k)| k.read_at).min();
        let late: HashMap<u128, i64> = earliest.map(|at| arrivals(at - 1)).unwrap_or_default().into_iter().collect();
        let oldest = self.turn.saturating_sub(KEPT_TURNS);
        self.traces.retain(|(t, id), k| {
            if k.asked < oldest {
                return false;
            }
            if t != tenant {
                return true;
            }
            match u128::from_str_radix(id, 16).ok().and_then(|v| late.get(&v)) {
                Some(&at) => at < k.read_at,
                None => true,
            }
        });
    }

    /// The trace kept as `id`, marked as asked for this turn.
    pub fn get(&mut self, tenant: &Tenant, id: &str) -> Option<&V> {
        let turn = self.turn;
        let k = self.traces.get_mut(&(tenant.clone(), id.to_owned()))?;
        k.asked = turn;
        Some(&k.value)
    }

    /// Keeps `value` for the trace `id`, read from the moment `read_at`.
    pub fn insert(&mut self, tenant: &Tenant, id: String, value: V, read_at: i64) {
        let asked = self.turn;
        self.traces.insert((tenant.clone(), id), KeptTrace { value, read_at, asked });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_minutes_not_held_and_gives_them_back_in_order() {
        let t = Tenant::default_tenant();
        let mut cells: MinuteCells<(), Vec<i32>> = MinuteCells::new(0);
        let wanted: Vec<i64> = (0..5).map(|i| i * MINUTE_NS).collect();
        assert_eq!(cells.missing(&t, &(), &wanted), vec![(0, 5 * MINUTE_NS)]);
        cells.fill(&t, &(), (0, 3 * MINUTE_NS), now_ns(), [(MINUTE_NS + 5, 1), (5, 0), (MINUTE_NS, 2)], |v| v);
        assert_eq!(cells.missing(&t, &(), &wanted), vec![(3 * MINUTE_NS, 5 * MINUTE_NS)]);
        assert!(cells.parts(&t, &(), &wanted).is_none());
        let held = cells.parts(&t, &(), &wanted[..3]).unwrap();
        assert_eq!(held, vec![&vec![0], &vec![1, 2], &vec![]]);
        // Another tenant holds nothing.
        let other = Tenant::new("other").unwrap();
        assert_eq!(cells.missing(&other, &(), &wanted[..1]), vec![(0, MINUTE_NS)]);
        assert_eq!(
            whole_minutes(DateTime::from_timestamp_nanos(0), DateTime::from_timestamp_nanos(MINUTE_NS * 2)),
            Some(vec![0, MINUTE_NS])
        );
        assert_eq!(
            whole_minutes(DateTime::from_timestamp_nanos(1), DateTime::from_timestamp_nanos(MINUTE_NS * 2)),
            None
        );
    }
}
