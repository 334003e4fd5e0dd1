//! `sessions`: each session's calls kept as spans arrive, so that the drop-off,
//! retry and silent-recovery detectors read one row per session and operation
//! instead of every span of their range.
//!
//! A session is open while its spans arrive. It holds its segment values (the
//! person's device, OS and region from the spans that start its traces, as
//! `span_metrics` takes them), its server calls (by trace and span id, so a
//! span noted twice counts once), the root client spans of its traces (a
//! browser's or an app's page loads) and the traces its client sent again by
//! itself (`http.request.resend_count`). It is finalized once it has been
//! quiet for the session timeout: no span of it ended within the timeout of
//! the newest span of its tenant, or none arrived within the timeout on the
//! wall clock. The open sessions' calls are bounded ([`SessionBook::max_open_calls`]):
//! past the bound, a flush also finalizes the sessions that received a span
//! longest ago, until a quarter of the bound is free.
//!
//! A row of `sessions` is one session's calls of one operation (the
//! detectors' definition) with one set of segment values, in one minute (so
//! that a pass whose windows start and end on whole minutes counts exactly
//! the calls inside them, as it would from spans): when it first and last
//! called it, when it first requested it as a page (a root server span,
//! or one directly under a root client span), its calls and failures, and
//! its calls in order: a retry follows a failure of the same operation
//! within the retry interval, automatic when the client resent it; a retry
//! that succeeded recovers the session, silently when the person sent it and
//! the session went on after it.
//!
//! Durability follows the segments'. At each flush, before the checkpoint,
//! the sessions finalized since the last one are written to
//! `sessions/<tenant>/<flush>-h<first hour>-h<last hour>.parquet` (the hours of
//! its first and last minute), and the
//! open ones to `sessions/open/<flush>.json`. On start, files of flushes after
//! the checkpoint are deleted, the open sessions of the checkpoint's flush are
//! read back, and the WAL replay notes its spans again (a call noted twice
//! counts once). A store whose segments predate sessions rebuilds them from
//! its segments in the background (`Store::rebuild_sessions`). With a bucket,
//! every file is also uploaded before the checkpoint that commits it (see
//! `remote`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use andon_model::Tenant;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::change_log::ChangeLog;
use crate::dedup::IdBuild;
use crate::error::StoreError;
use crate::rollup::{Interned, keep_max};
use crate::sql::SegmentColumn;
use crate::wal::sync_dir;
use crate::{RollupSpec, Store};

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;
const NANOS_PER_MINUTE: i64 = 60_000_000_000;

/// What sessions are kept by: the rollups' segment columns, the session
/// timeout and the retry interval (the detectors').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub segments: Vec<SegmentColumn>,
    pub timeout_secs: u64,
    pub retry_secs: u64,
}

impl SessionSpec {
    pub fn new(rollups: &RollupSpec, timeout_secs: u64, retry_secs: u64) -> Self {
        Self { segments: rollups.segments.clone(), timeout_secs, retry_secs }
    }

    fn timeout_ns(&self) -> i64 {
        i64::try_from(self.timeout_secs).unwrap_or(i64::MAX / 2_000_000_000).saturating_mul(1_000_000_000)
    }

    fn retry_ns(&self) -> i64 {
        i64::try_from(self.retry_secs).unwrap_or(i64::MAX / 2_000_000_000).saturating_mul(1_000_000_000)
    }

    /// The schema of `sessions`.
    pub fn schema(&self) -> SchemaRef {
        let ts = andon_model::schema::timestamp_type;
        let mut fields = vec![
            Field::new("session_id", DataType::Utf8, false),
            Field::new("session_start", ts(), false),
            Field::new("session_end", ts(), false),
            // Nullable: files written before it existed read as null.
            Field::new("seen_end", ts(), true),
            Field::new("minute", ts(), false),
            Field::new("service_name", DataType::Utf8, false),
            Field::new("operation", DataType::Utf8, false),
            Field::new("route", DataType::Utf8, true),
            Field::new("span_name", DataType::Utf8, false),
        ];
        for s in &self.segments {
            let ty = if s.boolean { DataType::Boolean } else { DataType::Utf8 };
            fields.push(Field::new(s.column, ty, true));
        }
        fields.extend([
            Field::new("first_call", ts(), false),
            Field::new("last_call", ts(), false),
            Field::new("first_page", ts(), true),
            Field::new("calls", DataType::Int64, false),
            Field::new("errors", DataType::Int64, false),
            Field::new("retries", DataType::Int64, false),
            Field::new("auto_retries", DataType::Int64, false),
            Field::new("retried_ok", DataType::Int64, false),
            Field::new("recovered", DataType::Int64, false),
            Field::new("auto_recovered", DataType::Int64, false),
            // Nullable: none without a recovery, and files written before it
            // existed read as null.
            Field::new("recovered_end", ts(), true),
            Field::new("open", DataType::Boolean, false),
        ]);
        Arc::new(Schema::new(fields))
    }
}

/// What a call has in common with the other calls of its operation, kept
/// once for every call of the tenant's open sessions that shares it
/// ([`Names::named`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Named {
    service: Arc<str>,
    operation: Arc<str>,
    route: Option<Arc<str>>,
    span_name: Arc<str>,
    /// The span's own values of the segment columns that describe the
    /// process (`service.version`); `None` for the session's columns.
    own: Box<[Option<Arc<str>>]>,
}

/// A [`Named`] borrowed from a span's columns: hashes as the `Named` it
/// equals (the fields in the same order), so that one already kept is found
/// without allocating.
#[derive(Hash)]
struct NamedRef<'a> {
    service: &'a str,
    operation: &'a str,
    route: Option<&'a str>,
    span_name: &'a str,
    own: &'a [Option<&'a str>],
}

impl hashbrown::Equivalent<Arc<Named>> for NamedRef<'_> {
    fn equivalent(&self, n: &Arc<Named>) -> bool {
        self.service == &*n.service
            && self.operation == &*n.operation
            && self.route == n.route.as_deref()
            && self.span_name == &*n.span_name
            && self.own.len() == n.own.len()
            && self.own.iter().zip(&n.own).all(|(a, b)| *a == b.as_deref())
    }
}

/// One server call of a session. What it shares with its operation's other
/// calls is kept once ([`Named`]), and the ids only as the keys they are
/// looked up by: an open session's memory is mostly its calls, 56 bytes
/// each and their key's 8.
#[derive(Debug, Clone)]
struct Call {
    named: Arc<Named>,
    /// [`trace_key`] of its trace.
    trace: u64,
    /// [`span_key`] of its parent span.
    parent: Option<u64>,
    start: i64,
    end: i64,
    err: bool,
}

/// A call as written in the open sessions' file.
#[derive(Serialize)]
struct CallOut<'a> {
    service: &'a str,
    operation: &'a str,
    route: Option<&'a str>,
    span_name: &'a str,
    trace: u64,
    parent: Option<u64>,
    start: i64,
    end: i64,
    err: bool,
    own: Vec<Option<&'a str>>,
}

impl Serialize for Call {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = &*self.named;
        CallOut {
            service: &n.service,
            operation: &n.operation,
            route: n.route.as_deref(),
            span_name: &n.span_name,
            trace: self.trace,
            parent: self.parent,
            start: self.start,
            end: self.end,
            err: self.err,
            own: n.own.iter().map(Option::as_deref).collect(),
        }
        .serialize(s)
    }
}

/// A key as written: the number, or (files written before ids were kept as
/// keys) the id's text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Key {
    Number(u64),
    Text(String),
}

/// A call as read back: ids as keys, or as text in files written before.
#[derive(Deserialize)]
struct CallIn {
    service: String,
    operation: String,
    route: Option<String>,
    span_name: String,
    trace: Key,
    parent: Option<Key>,
    start: i64,
    end: i64,
    err: bool,
    own: Vec<Option<String>>,
}

impl<'de> Deserialize<'de> for Call {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = CallIn::deserialize(d)?;
        let parent = match (c.parent, &c.trace) {
            (None, _) => None,
            (Some(Key::Number(k)), _) => Some(k),
            (Some(Key::Text(p)), Key::Text(t)) => Some(span_key(&mut String::new(), t, &p)),
            (Some(Key::Text(_)), Key::Number(_)) => {
                return Err(serde::de::Error::custom("a call's parent as text and its trace as a key"));
            }
        };
        let trace = match &c.trace {
            Key::Number(k) => *k,
            Key::Text(t) => trace_key(t),
        };
        // Shared with the other calls once restored ([`Names::share`]).
        let named = Arc::new(Named {
            service: c.service.into(),
            operation: c.operation.into(),
            route: c.route.map(Into::into),
            span_name: c.span_name.into(),
            own: c.own.into_iter().map(|v| v.map(Into::into)).collect(),
        });
        Ok(Call { named, trace, parent, start: c.start, end: c.end, err: c.err })
    }
}

/// The names the calls of a tenant's open sessions hold, and what calls of
/// one operation share ([`Named`]), each once.
#[derive(Debug, Default)]
struct Names {
    names: Interned,
    named: hashbrown::HashSet<Arc<Named>>,
}

impl Names {
    /// Past this many [`Named`], the set starts again (the calls keep theirs);
    /// the names likewise ([`Interned`]).
    const MOST: usize = 100_000;

    fn get(&mut self, name: &str) -> Arc<str> {
        self.names.get(name)
    }

    /// The [`Named`] equal to `r`, kept once.
    fn named(&mut self, r: &NamedRef<'_>) -> Arc<Named> {
        if let Some(n) = self.named.get(r) {
            return Arc::clone(n);
        }
        if self.named.len() >= Self::MOST {
            self.named.clear();
        }
        let n = Arc::new(Named {
            service: self.get(r.service),
            operation: self.get(r.operation),
            route: r.route.map(|v| self.get(v)),
            span_name: self.get(r.span_name),
            own: r.own.iter().map(|v| v.map(|v| self.get(v))).collect(),
        });
        self.named.insert(Arc::clone(&n));
        n
    }

    /// `n` as kept once: a call read back shares it with the others.
    fn share(&mut self, n: &Arc<Named>) -> Arc<Named> {
        let own: Vec<Option<&str>> = n.own.iter().map(Option::as_deref).collect();
        self.named(&NamedRef {
            service: &n.service,
            operation: &n.operation,
            route: n.route.as_deref(),
            span_name: &n.span_name,
            own: &own,
        })
    }
}

/// A session still receiving spans.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Open {
    /// Per segment column: the largest value among the spans that start its
    /// traces, and among all its spans.
    root: Box<[Option<Arc<str>>]>,
    any: Box<[Option<Arc<str>>]>,
    /// The latest end of any of its spans.
    last_seen: i64,
    /// Per minute its spans started in, the latest end of those spans.
    #[serde(default)]
    ends: BTreeMap<i64, i64>,
    /// When it last received a span, on the wall clock.
    noted: i64,
    /// Server calls by [`span_key`].
    #[serde(deserialize_with = "by_span_key")]
    calls: HashMap<u64, Call, IdBuild>,
    /// `trace_id/span_id` of the root client spans of its traces.
    #[serde(deserialize_with = "span_keys")]
    root_clients: HashSet<u64, IdBuild>,
    /// [`trace_key`]s of the traces its client sent again by itself.
    #[serde(deserialize_with = "trace_keys")]
    resent: HashSet<u64, IdBuild>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TenantBook {
    open: HashMap<String, Open>,
    /// The latest span end seen (capped near the wall clock).
    watermark: i64,
    #[serde(skip)]
    names: Names,
}

/// Sessions taken from the open ones once quiet, until their rows are written.
#[derive(Debug, Default)]
pub struct Quiet(Vec<(Tenant, Vec<(String, Open)>)>);

impl Quiet {
    /// Per tenant, the earliest first minute of its sessions.
    pub(crate) fn first_minutes(&self) -> FirstMinutes {
        self.0
            .iter()
            .filter_map(|(t, sessions)| Some((t.clone(), sessions.iter().map(|(_, s)| s.first_minute()).min()?)))
            .collect()
    }
}

impl Open {
    /// The first minute it has a span in (Unix ns); the earliest time there
    /// is when it does not know (a session restored from an older file).
    fn first_minute(&self) -> i64 {
        self.ends.keys().next().copied().unwrap_or(i64::MIN)
    }
}

/// What a flush writes of the open sessions.
#[derive(Debug, Default, Deserialize)]
struct OpenFile {
    tenants: BTreeMap<String, TenantBook>,
}

/// [`OpenFile`] as written, borrowing the book.
#[derive(Serialize)]
struct OpenFileRef<'a> {
    tenants: BTreeMap<&'a str, &'a TenantBook>,
}

/// A span's key in a session: the hash of `trace_id/span_id`, built in `buf`
/// (reused, so noting a span allocates nothing for it).
pub(crate) fn span_key(buf: &mut String, trace: &str, span: &str) -> u64 {
    buf.clear();
    buf.push_str(trace);
    buf.push('/');
    buf.push_str(span);
    xxhash_rust::xxh3::xxh3_64(buf.as_bytes())
}

/// A key as written: the number, or the `trace_id/span_id` it hashes (files
/// written before keys were hashed).
fn read_span_key(k: &str) -> u64 {
    k.parse().unwrap_or_else(|_| xxhash_rust::xxh3::xxh3_64(k.as_bytes()))
}

fn by_span_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<u64, Call, IdBuild>, D::Error> {
    let m = HashMap::<String, Call>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, c)| (read_span_key(&k), c)).collect())
}

/// The key a trace is looked up by.
fn trace_key(trace: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(trace.as_bytes())
}

fn trace_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashSet<u64, IdBuild>, D::Error> {
    keys(d, trace_key)
}

fn span_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashSet<u64, IdBuild>, D::Error> {
    keys(d, read_span_key)
}

/// A set of keys as written: numbers, or texts made keys by `of_text`.
fn keys<'de, D: serde::Deserializer<'de>>(d: D, of_text: fn(&str) -> u64) -> Result<HashSet<u64, IdBuild>, D::Error> {
    let keys = Vec::<Key>::deserialize(d)?;
    Ok(keys
        .into_iter()
        .map(|k| match k {
            Key::Number(n) => n,
            Key::Text(t) => of_text(&t),
        })
        .collect())
}

fn text_column(batch: &RecordBatch, name: &str) -> Option<ArrayRef> {
    let c = batch.column_by_name(name)?;
    arrow::compute::cast(c, &DataType::Utf8).ok()
}

fn str_at(a: &Option<ArrayRef>, r: usize) -> Option<&str> {
    let a = a.as_ref()?;
    (!a.is_null(r)).then(|| a.as_string::<i32>().value(r))
}

/// Every tenant's open sessions.
#[derive(Debug)]
pub struct SessionBook {
    spec: SessionSpec,
    /// The most calls the open sessions hold ([`Self::take_quiet`]).
    max_open_calls: usize,
    by_tenant: Mutex<HashMap<Tenant, TenantBook>>,
    /// The open sessions' rows by tenant, as [`Self::open_rows`] last built
    /// them; cleared by every change to the open sessions. A detection pass
    /// scans `sessions` several times, and a backtest many times between
    /// changes.
    open_cache: Mutex<Option<HashMap<Tenant, RecordBatch>>>,
    /// Counts the changes to what `sessions` shows: every change to the open
    /// sessions, and every finalized file added or removed
    /// ([`Store::sessions_version`](crate::Store::sessions_version)), with
    /// the first minute of the sessions each changed
    /// ([`Store::sessions_changed_since`](crate::Store::sessions_changed_since)).
    versions: Mutex<(u64, ChangeLog)>,
}

/// Per tenant, the earliest first minute of some sessions.
pub(crate) type FirstMinutes = BTreeMap<Tenant, i64>;

/// The open sessions' calls a store holds by default: an open session's
/// memory is mostly its calls, 64 bytes each in their hash table, about 100
/// with the table's spare room (estimated, not measured: about 100 MB at
/// this bound); the simulated
/// shop's sessions make about 30 calls each.
pub const MAX_OPEN_CALLS: usize = 1_000_000;

impl SessionBook {
    #[cfg(test)]
    pub fn new(spec: SessionSpec) -> Self {
        Self::with_max_open_calls(spec, MAX_OPEN_CALLS)
    }

    /// A book whose open sessions hold at most `max_open_calls` calls at each
    /// [`Self::take_quiet`].
    pub fn with_max_open_calls(spec: SessionSpec, max_open_calls: usize) -> Self {
        Self {
            spec,
            max_open_calls: max_open_calls.max(1),
            by_tenant: Mutex::default(),
            open_cache: Mutex::default(),
            versions: Mutex::default(),
        }
    }

    /// The most calls the open sessions hold after a [`Self::take_quiet`].
    pub fn max_open_calls(&self) -> usize {
        self.max_open_calls
    }

    /// The open sessions, to change them: forgets their cached rows. The
    /// caller notes what it changed ([`Self::changed`]) before letting go.
    fn edit(&self) -> parking_lot::MutexGuard<'_, HashMap<Tenant, TenantBook>> {
        let guard = self.by_tenant.lock();
        *self.open_cache.lock() = None;
        guard
    }

    /// Notes a change to what `sessions` shows: the rows of sessions whose
    /// first minute is, per tenant, at or after `from`'s (every row: `None`).
    pub(crate) fn changed(&self, from: Option<FirstMinutes>) {
        let mut v = self.versions.lock();
        v.0 += 1;
        let version = v.0;
        v.1.note(version, from);
    }

    /// How many changes `sessions` has seen.
    pub(crate) fn version(&self) -> u64 {
        self.versions.lock().0
    }

    /// The earliest first minute (Unix ns) of the sessions of `tenant`
    /// changed since version `since`: `Some(None)` when none, `None` when it
    /// cannot tell.
    pub(crate) fn changed_since(&self, tenant: &Tenant, since: u64) -> Option<Option<i64>> {
        let v = self.versions.lock();
        v.1.since(tenant, since, v.0)
    }

    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// Notes the spans of `batch` that belong to a session.
    pub fn note(&self, tenant: &Tenant, batch: &RecordBatch, wall_ns: i64) {
        let mut by_tenant = self.edit();
        let book = by_tenant.entry(tenant.clone()).or_default();
        let first = note_into(&self.spec, book, batch, wall_ns);
        self.changed(Some(first.map(|m| BTreeMap::from([(tenant.clone(), m)])).unwrap_or_default()));
    }

    /// Takes the sessions that have been quiet for the timeout.
    pub fn take_quiet(&self, wall_ns: i64) -> Quiet {
        let timeout = self.spec.timeout_ns();
        let mut done = Vec::new();
        let mut by_tenant = self.edit();
        for (tenant, book) in by_tenant.iter_mut() {
            let quiet_since = book.watermark.saturating_sub(timeout);
            let wall_since = wall_ns.saturating_sub(timeout);
            let ids: Vec<String> = book
                .open
                .iter()
                .filter(|(_, s)| s.last_seen < quiet_since || s.noted < wall_since)
                .map(|(id, _)| id.clone())
                .collect();
            if !ids.is_empty() {
                done.push((tenant.clone(), ids.into_iter().filter_map(|id| book.open.remove_entry(&id)).collect()));
            }
        }
        self.take_least_recent(&mut by_tenant, &mut done);
        by_tenant.retain(|_, b| !b.open.is_empty() || b.watermark > wall_ns.saturating_sub(timeout));
        let quiet = Quiet(done);
        self.changed(Some(quiet.first_minutes()));
        quiet
    }

    /// Past [`Self::max_open_calls`], takes into `done` the open sessions
    /// that received a span longest ago (on the wall clock, then by their
    /// last span's end), across tenants, until the calls left are three
    /// quarters of the bound: a client that opens sessions faster than they
    /// go quiet cannot grow the book without bound, and the sessions it
    /// finalizes early are those most likely over. One that goes on later
    /// opens again under the same id.
    fn take_least_recent(
        &self,
        by_tenant: &mut HashMap<Tenant, TenantBook>,
        done: &mut Vec<(Tenant, Vec<(String, Open)>)>,
    ) {
        let calls = |s: &Open| s.calls.len().max(1);
        let mut open: usize = by_tenant.values().flat_map(|b| b.open.values()).map(calls).sum();
        if open <= self.max_open_calls {
            return;
        }
        let before = open;
        let keep = self.max_open_calls - self.max_open_calls / 4;
        let mut order: Vec<(i64, i64, &Tenant, &String, usize)> = by_tenant
            .iter()
            .flat_map(|(t, b)| b.open.iter().map(move |(id, s)| (s.noted, s.last_seen, t, id, calls(s))))
            .collect();
        order.sort_unstable_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
        let mut taken: BTreeMap<Tenant, Vec<String>> = BTreeMap::new();
        for (_, _, t, id, n) in order {
            if open <= keep {
                break;
            }
            open -= n;
            taken.entry(t.clone()).or_default().push(id.clone());
        }
        let sessions: usize = taken.values().map(Vec::len).sum();
        for (tenant, ids) in taken {
            let Some(book) = by_tenant.get_mut(&tenant) else { continue };
            let sessions = ids.into_iter().filter_map(|id| book.open.remove_entry(&id));
            match done.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, into)) => into.extend(sessions),
                None => done.push((tenant, sessions.collect())),
            }
        }
        tracing::warn!(
            sessions,
            calls_before = before,
            calls_after = open,
            bound = self.max_open_calls,
            "open sessions past their bound of calls: the least recently active finalized before their timeout"
        );
    }

    /// The rows of sessions taken by [`Self::take_quiet`], by tenant.
    pub fn rows_of(&self, quiet: &Quiet) -> Result<Vec<(Tenant, RecordBatch)>, StoreError> {
        let mut out = Vec::new();
        for (tenant, sessions) in &quiet.0 {
            let mut rows = Rows::default();
            for (id, s) in sessions {
                rows.add(&self.spec, id, s, false);
            }
            let batch = rows.finish(&self.spec)?;
            if batch.num_rows() > 0 {
                out.push((tenant.clone(), batch));
            }
        }
        Ok(out)
    }

    /// Returns sessions taken by [`Self::take_quiet`] that could not be written.
    pub fn put_back(&self, quiet: Quiet) {
        let mut by_tenant = self.edit();
        self.changed(Some(quiet.first_minutes()));
        for (tenant, sessions) in quiet.0 {
            merge_book(
                by_tenant.entry(tenant).or_default(),
                TenantBook { open: sessions.into_iter().collect(), watermark: 0, names: Names::default() },
            );
        }
    }

    /// Takes the quiet sessions and returns their rows.
    #[cfg(test)]
    pub fn finalize(&self, wall_ns: i64) -> Result<Vec<(Tenant, RecordBatch)>, StoreError> {
        let quiet = self.take_quiet(wall_ns);
        self.rows_of(&quiet)
    }

    /// The rows of the sessions still open (every tenant's if `None`).
    pub fn open_rows(&self, tenant: Option<&Tenant>) -> Result<Vec<RecordBatch>, StoreError> {
        let by_tenant = self.by_tenant.lock();
        let mut cache = self.open_cache.lock();
        let built = match cache.as_mut() {
            Some(built) => built,
            None => {
                let mut built = HashMap::new();
                for (t, book) in by_tenant.iter() {
                    let mut rows = Rows::default();
                    for (id, s) in &book.open {
                        rows.add(&self.spec, id, s, true);
                    }
                    let batch = rows.finish(&self.spec)?;
                    if batch.num_rows() > 0 {
                        built.insert(t.clone(), batch);
                    }
                }
                cache.insert(built)
            }
        };
        Ok(built.iter().filter(|(t, _)| tenant.is_none_or(|x| x == *t)).map(|(_, b)| b.clone()).collect())
    }

    /// Writes every open session as JSON to `out`, as a flush writes them,
    /// in place under the lock: a copy of every open session first cost
    /// more than writing them out, and so did the whole file in memory (at
    /// the bound of open calls, by the calls' JSON, about 250 MB, and up to
    /// twice that while its buffer grew). Appends wait for the lock meanwhile, as they waited for the
    /// serialization before.
    fn write_json(&self, out: impl std::io::Write) -> Result<(), StoreError> {
        let by_tenant = self.by_tenant.lock();
        let file = OpenFileRef { tenants: by_tenant.iter().map(|(t, b)| (t.as_str(), b)).collect() };
        serde_json::to_writer(out, &file).map_err(|e| {
            if e.is_io() { StoreError::Io(e.into()) } else { StoreError::Corrupt(format!("open sessions: {e}")) }
        })
    }

    /// Adds open sessions read back from a flush's file: their calls join any
    /// already noted.
    fn restore(&self, from: impl std::io::Read) -> Result<(), StoreError> {
        let file: OpenFile =
            serde_json::from_reader(from).map_err(|e| StoreError::Corrupt(format!("open sessions: {e}")))?;
        let mut by_tenant = self.edit();
        self.changed(None);
        for (t, b) in file.tenants {
            let tenant = Tenant::new(&t).map_err(|e| StoreError::Corrupt(format!("open sessions: {e}")))?;
            let book = by_tenant.entry(tenant).or_default();
            merge_book(book, b);
            let TenantBook { open, names, .. } = book;
            for c in open.values_mut().flat_map(|s| s.calls.values_mut()) {
                c.named = names.share(&c.named);
            }
        }
        Ok(())
    }

    /// Forgets what the book holds of sessions already finalized (`ids` with
    /// their `session_end`), noted again from the spans they were built from:
    /// calls that ended by then go, and a session left with none.
    pub fn forget_finalized(&self, tenant: &Tenant, ids: &[(String, i64)]) {
        let mut by_tenant = self.edit();
        let Some(book) = by_tenant.get_mut(tenant) else { return };
        let first = ids.iter().filter_map(|(id, _)| book.open.get(id).map(Open::first_minute)).min();
        self.changed(Some(first.map(|m| BTreeMap::from([(tenant.clone(), m)])).unwrap_or_default()));
        for (id, end) in ids {
            let Some(s) = book.open.get_mut(id) else { continue };
            s.calls.retain(|_, c| c.end > *end);
            s.ends.retain(|_, e| *e > *end);
            if s.calls.is_empty() {
                book.open.remove(id);
            } else {
                s.last_seen = s.ends.values().copied().max().unwrap_or(s.last_seen);
            }
        }
    }

    /// Forgets every open session.
    fn clear(&self) {
        let mut by_tenant = self.edit();
        by_tenant.clear();
        self.changed(None);
    }

    /// Replaces every open session by `other`'s, keeping calls noted here
    /// that `other` lacks (a rebuild from segments while spans arrived).
    fn replace_with(&self, other: SessionBook) {
        let rebuilt = other.by_tenant.into_inner();
        let mut by_tenant = self.edit();
        self.changed(None);
        let live = std::mem::replace(&mut *by_tenant, rebuilt);
        for (t, b) in live {
            merge_book(by_tenant.entry(t).or_default(), b);
        }
    }
}

fn merge_book(into: &mut TenantBook, from: TenantBook) {
    into.watermark = into.watermark.max(from.watermark);
    let values = &mut into.names.names;
    for (id, s) in from.open {
        match into.open.get_mut(&id) {
            None => {
                into.open.insert(id, s);
            }
            Some(cur) => {
                for (slot, v) in cur.root.iter_mut().zip(&s.root).chain(cur.any.iter_mut().zip(&s.any)) {
                    if let Some(v) = v {
                        keep_max(slot, v, values);
                    }
                }
                cur.last_seen = cur.last_seen.max(s.last_seen);
                for (m, e) in s.ends {
                    let end = cur.ends.entry(m).or_insert(e);
                    *end = (*end).max(e);
                }
                cur.noted = cur.noted.max(s.noted);
                cur.calls.extend(s.calls);
                cur.root_clients.extend(s.root_clients);
                cur.resent.extend(s.resent);
            }
        }
    }
}

/// Notes `batch`'s spans into `book`; returns the earliest first minute of
/// the sessions they belong to.
fn note_into(spec: &SessionSpec, book: &mut TenantBook, batch: &RecordBatch, wall_ns: i64) -> Option<i64> {
    let mut first: Option<i64> = None;
    let Some(sessions) = text_column(batch, "session_id") else { return first };
    let sessions = Some(sessions);
    let col = |n: &str| text_column(batch, n);
    let (traces, spans, parents, kinds) = (col("trace_id"), col("span_id"), col("parent_span_id"), col("kind"));
    let (services, span_names, routes, methods, status) =
        (col("service_name"), col("name"), col("http_route"), col("http_request_method"), col("status_code"));
    let segs: Vec<Option<ArrayRef>> = spec.segments.iter().map(|s| text_column(batch, s.column)).collect();
    let time = |n: &str| batch.column_by_name(n).and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
    let (Some(start), Some(end)) = (time("start_time"), time("end_time")) else { return first };
    let resend = batch.column_by_name("http_request_resend_count").and_then(|c| c.as_primitive_opt::<Int64Type>());
    let width = spec.segments.len();
    // Spans stamped far ahead of the wall clock must not close every session.
    let cap = wall_ns.saturating_add(60_000_000_000);
    let (mut key_buf, mut op_buf) = (String::new(), String::new());
    let mut own: Vec<Option<&str>> = Vec::with_capacity(width);
    for r in 0..batch.num_rows() {
        let Some(sid) = str_at(&sessions, r) else { continue };
        if start.is_null(r) {
            continue;
        }
        let (t0, t1) = (start.value(r), if end.is_null(r) { start.value(r) } else { end.value(r) });
        book.watermark = book.watermark.max(t1.min(cap));
        if !book.open.contains_key(sid) {
            book.open.insert(
                sid.to_owned(),
                Open { root: vec![None; width].into(), any: vec![None; width].into(), ..Open::default() },
            );
        }
        let TenantBook { open, names, .. } = &mut *book;
        let Some(s) = open.get_mut(sid) else { continue };
        let values = &mut names.names;
        s.last_seen = s.last_seen.max(t1);
        let end = s.ends.entry(t0.div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE).or_insert(t1);
        *end = (*end).max(t1);
        let m = s.first_minute();
        first = Some(first.map_or(m, |f| f.min(m)));
        s.noted = s.noted.max(wall_ns);
        let parent = str_at(&parents, r).filter(|p| !p.is_empty());
        for (i, c) in spec.segments.iter().enumerate() {
            if !c.per_session {
                continue;
            }
            if let Some(v) = str_at(&segs[i], r) {
                keep_max(&mut s.any[i], v, values);
                if parent.is_none() {
                    keep_max(&mut s.root[i], v, values);
                }
            }
        }
        let (Some(trace), Some(span)) = (str_at(&traces, r), str_at(&spans, r)) else { continue };
        if resend.is_some_and(|a| !a.is_null(r) && a.value(r) > 0) {
            s.resent.insert(trace_key(trace));
        }
        match str_at(&kinds, r) {
            Some("client") if parent.is_none() => {
                s.root_clients.insert(span_key(&mut key_buf, trace, span));
            }
            Some("server") => {
                let key = span_key(&mut key_buf, trace, span);
                if s.calls.contains_key(&key) {
                    // Noted before (a WAL replayed, a restart's segments).
                    continue;
                }
                let span_name = str_at(&span_names, r).unwrap_or_default();
                let route = str_at(&routes, r);
                let operation = match (route, str_at(&methods, r)) {
                    (None, _) => span_name,
                    (Some(route), None) => route,
                    (Some(route), Some(method)) => {
                        op_buf.clear();
                        op_buf.push_str(method);
                        op_buf.push(' ');
                        op_buf.push_str(route);
                        &op_buf
                    }
                };
                own.clear();
                own.extend(
                    spec.segments.iter().zip(&segs).map(|(c, a)| if c.per_session { None } else { str_at(a, r) }),
                );
                let named = names.named(&NamedRef {
                    service: str_at(&services, r).unwrap_or("unknown_service"),
                    operation,
                    route,
                    span_name,
                    own: &own,
                });
                let parent = parent.map(|p| span_key(&mut key_buf, trace, p));
                s.calls.insert(
                    key,
                    Call {
                        named,
                        trace: trace_key(trace),
                        parent,
                        start: t0,
                        end: t1,
                        err: str_at(&status, r) == Some("error"),
                    },
                );
            }
            _ => {}
        }
    }
    first
}

type RowKey = (String, String, String, Vec<Option<String>>, i64);

/// A row's key borrowed from a session's call: it hashes as the [`RowKey`]
/// it equals, so a row already begun is found without allocating.
struct RowRef<'a> {
    id: &'a str,
    service: &'a str,
    operation: &'a str,
    segs: &'a [Option<&'a str>],
    minute: i64,
}

impl std::hash::Hash for RowRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the tuple `RowKey` hashes: each field in order, the values as a slice.
        self.id.hash(state);
        self.service.hash(state);
        self.operation.hash(state);
        self.segs.hash(state);
        self.minute.hash(state);
    }
}

impl hashbrown::Equivalent<RowKey> for RowRef<'_> {
    fn equivalent(&self, key: &RowKey) -> bool {
        self.minute == key.4
            && self.id == key.0
            && self.service == key.1
            && self.operation == key.2
            && self.segs.len() == key.3.len()
            && self.segs.iter().zip(&key.3).all(|(a, b)| *a == b.as_deref())
    }
}

#[derive(Debug, Clone)]
struct Row {
    session_start: i64,
    session_end: i64,
    seen_end: i64,
    route: Option<Arc<str>>,
    span_name: Arc<str>,
    first_call: i64,
    last_call: i64,
    first_page: Option<i64>,
    calls: i64,
    errors: i64,
    retries: i64,
    auto_retries: i64,
    retried_ok: i64,
    recovered: i64,
    auto_recovered: i64,
    /// The end of the row's first retry the person sent that succeeded,
    /// whether or not the session went on.
    recovered_end: Option<i64>,
    open: bool,
}

/// Rows being built, keyed by session, service, operation and segment values.
#[derive(Debug, Default)]
struct Rows {
    rows: hashbrown::HashMap<RowKey, Row>,
}

impl Rows {
    /// Adds the rows of one session.
    fn add(&mut self, spec: &SessionSpec, id: &str, s: &Open, open: bool) {
        let Some(session_start) = s.calls.values().map(|c| c.start).min() else { return };
        let retry = spec.retry_ns();
        let values: Vec<Option<&str>> = s.root.iter().zip(&s.any).map(|(r, a)| r.as_deref().or(a.as_deref())).collect();
        let mut segs: Vec<Option<&str>> = Vec::with_capacity(spec.segments.len());
        // Each operation's calls in order of start.
        let mut by_op: BTreeMap<(&str, &str), Vec<(&u64, &Call)>> = BTreeMap::new();
        for (k, c) in &s.calls {
            by_op.entry((&*c.named.service, &*c.named.operation)).or_default().push((k, c));
        }
        for ((service, operation), mut calls) in by_op {
            calls.sort_by(|a, b| (a.1.start, a.1.end, a.0).cmp(&(b.1.start, b.1.end, b.0)));
            let mut prev: Option<&Call> = None;
            for (_, c) in calls {
                segs.clear();
                segs.extend(spec.segments.iter().enumerate().map(|(i, col)| {
                    let own = c.named.own.get(i).and_then(Option::as_deref);
                    if col.per_session { values.get(i).copied().flatten().or(own) } else { own }
                }));
                let minute = c.start.div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE;
                let key = RowRef { id, service, operation, segs: &segs, minute };
                if !self.rows.contains_key(&key) {
                    let owned = (
                        id.to_owned(),
                        service.to_owned(),
                        operation.to_owned(),
                        segs.iter().map(|v| v.map(str::to_owned)).collect(),
                        minute,
                    );
                    self.rows.insert(
                        owned,
                        Row {
                            session_start,
                            session_end: s.last_seen,
                            seen_end: seen_end(s, minute),
                            route: c.named.route.clone(),
                            span_name: c.named.span_name.clone(),
                            first_call: c.start,
                            last_call: c.start,
                            first_page: None,
                            calls: 0,
                            errors: 0,
                            retries: 0,
                            auto_retries: 0,
                            retried_ok: 0,
                            recovered: 0,
                            auto_recovered: 0,
                            recovered_end: None,
                            open,
                        },
                    );
                }
                let Some(row) = self.rows.get_mut(&key) else { continue };
                if row.route.is_none() {
                    row.route = c.named.route.clone();
                }
                if c.named.span_name < row.span_name {
                    row.span_name = c.named.span_name.clone();
                }
                row.first_call = row.first_call.min(c.start);
                row.last_call = row.last_call.max(c.start);
                let page = c.parent.is_none_or(|p| s.root_clients.contains(&p));
                if page {
                    row.first_page = Some(row.first_page.map_or(c.start, |f| f.min(c.start)));
                }
                row.calls += 1;
                row.errors += i64::from(c.err);
                let auto = s.resent.contains(&c.trace);
                if let Some(p) = prev
                    && p.err
                    && c.start <= p.end.saturating_add(retry)
                {
                    row.retries += 1;
                    row.auto_retries += i64::from(auto);
                    if !c.err {
                        row.retried_ok = 1;
                        if auto {
                            row.auto_recovered = 1;
                        } else {
                            row.recovered_end = Some(row.recovered_end.map_or(c.end, |e| e.min(c.end)));
                            if s.last_seen > c.end {
                                row.recovered = 1;
                            }
                        }
                    }
                }
                prev = Some(c);
            }
        }
    }

    fn finish(self, spec: &SessionSpec) -> Result<RecordBatch, StoreError> {
        let mut rows: Vec<(RowKey, Row)> = self.rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampNanosecondArray::from(v).with_timezone("UTC")) };
        let int = |f: fn(&Row) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from(rows.iter().map(|r| f(&r.1)).collect::<Vec<_>>()))
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.0.as_str()).collect::<Vec<_>>())),
            ts(rows.iter().map(|r| r.1.session_start).collect()),
            ts(rows.iter().map(|r| r.1.session_end).collect()),
            ts(rows.iter().map(|r| r.1.seen_end).collect()),
            ts(rows.iter().map(|r| r.0.4).collect()),
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.1.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.2.as_str()).collect::<Vec<_>>())),
            Arc::new(rows.iter().map(|r| r.1.route.as_deref()).collect::<StringArray>()),
            Arc::new(StringArray::from(rows.iter().map(|r| &*r.1.span_name).collect::<Vec<_>>())),
        ];
        for (i, s) in spec.segments.iter().enumerate() {
            let values = rows.iter().map(|r| r.0.3[i].as_deref());
            if s.boolean {
                columns
                    .push(Arc::new(values.map(|v| v.and_then(|v| v.parse::<bool>().ok())).collect::<BooleanArray>()));
            } else {
                columns.push(Arc::new(values.collect::<StringArray>()));
            }
        }
        columns.push(ts(rows.iter().map(|r| r.1.first_call).collect()));
        columns.push(ts(rows.iter().map(|r| r.1.last_call).collect()));
        columns.push(Arc::new(
            TimestampNanosecondArray::from(rows.iter().map(|r| r.1.first_page).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        columns.push(int(|r| r.calls));
        columns.push(int(|r| r.errors));
        columns.push(int(|r| r.retries));
        columns.push(int(|r| r.auto_retries));
        columns.push(int(|r| r.retried_ok));
        columns.push(int(|r| r.recovered));
        columns.push(int(|r| r.auto_recovered));
        columns.push(Arc::new(
            TimestampNanosecondArray::from(rows.iter().map(|r| r.1.recovered_end).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        columns.push(Arc::new(BooleanArray::from(rows.iter().map(|r| r.1.open).collect::<Vec<_>>())));
        Ok(RecordBatch::try_new(spec.schema(), columns)?)
    }
}

/// The latest end of the session's spans that started before the end of
/// `minute`: what a pass whose range ends after that minute could have seen
/// of the session, where `session_end` is all it ever saw.
fn seen_end(s: &Open, minute: i64) -> i64 {
    s.ends.range(..=minute).map(|(_, e)| *e).max().unwrap_or(s.last_seen)
}

/// A file of finalized sessions: its tenant, the flush that wrote it and the
/// hours its sessions started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFile {
    pub path: PathBuf,
    pub tenant: Tenant,
    /// The last flush whose sessions it holds, and the first (a compaction's
    /// output holds those of a run of flushes).
    pub flush: u64,
    pub first: u64,
    pub hours: (i64, i64),
    pub bytes: u64,
}

fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("sessions")
}

fn open_dir(data_dir: &Path) -> PathBuf {
    root(data_dir).join("open")
}

/// `<flush>-h<lo>-h<hi>.parquet`, or `<last>-h<lo>-h<hi>-c<first>.parquet`
/// for a compaction of flushes `first..=last`.
fn parse_name(name: &str) -> Option<(u64, i64, i64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let flush = parts.next()?.parse().ok()?;
    let lo = parts.next()?.strip_prefix('h')?.parse().ok()?;
    let hi = parts.next()?.strip_prefix('h')?.parse().ok()?;
    let first = match parts.next() {
        None => flush,
        Some(c) => c.strip_prefix('c')?.parse().ok()?,
    };
    parts.next().is_none().then_some((flush, lo, hi, first))
}

/// The hours of the first and last minute in `batch`.
fn hours_of(batch: &RecordBatch) -> (i64, i64) {
    let starts = batch.column(3).as_primitive::<TimestampNanosecondType>();
    let lo = starts.iter().flatten().min().unwrap_or(0);
    let hi = starts.iter().flatten().max().unwrap_or(0);
    (lo.div_euclid(NANOS_PER_HOUR), hi.div_euclid(NANOS_PER_HOUR))
}

/// Writes finalized sessions durably, as the flush `flush` of `tenant`.
pub fn write_sessions(
    data_dir: &Path,
    tenant: &Tenant,
    flush: u64,
    batch: &RecordBatch,
    fsync: bool,
) -> Result<SessionFile, StoreError> {
    write_file(data_dir, tenant, (flush, flush), batch, fsync)
}

/// The order of a sessions file's rows ([`write_file`]).
const FILE_ORDER: [&str; 2] = ["minute", "session_id"];

/// Merges the files of a run of flushes into one, streaming: each input is
/// already in [`FILE_ORDER`], so the merge holds a batch of each at a time
/// whatever their size. Every file is read as `schema` (the `sessions`
/// table's), as queries read it: a column a file written before it existed
/// lacks reads as null, and none is dropped.
pub fn compact_files(
    data_dir: &Path,
    inputs: &[SessionFile],
    schema: SchemaRef,
    fsync: bool,
) -> Result<SessionFile, StoreError> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(StoreError::Corrupt("no sessions files to compact".into()));
    };
    let hours =
        (inputs.iter().map(|f| f.hours.0).min().unwrap_or(0), inputs.iter().map(|f| f.hours.1).max().unwrap_or(0));
    let files: Vec<(PathBuf, u64)> = inputs.iter().map(|f| (f.path.clone(), f.bytes)).collect();
    let merged = crate::query::merged_small_files(files, Arc::clone(&schema), &FILE_ORDER)?;
    let path = file_path(data_dir, &first.tenant, (first.first, last.flush), hours);
    let bytes = crate::rollup::write_small_parquet_batches(&path, schema, merged, fsync)?;
    Ok(SessionFile { path, tenant: first.tenant.clone(), flush: last.flush, first: first.first, hours, bytes })
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef, StoreError> {
    batch.column_by_name(name).cloned().ok_or_else(|| StoreError::Corrupt(format!("sessions rows without {name}")))
}

/// Where the sessions of the flushes `first..=flush` of `tenant`, starting in
/// `hours`, are kept.
fn file_path(data_dir: &Path, tenant: &Tenant, (first, flush): (u64, u64), hours: (i64, i64)) -> PathBuf {
    let name = if first == flush {
        format!("{flush:020}-h{}-h{}.parquet", hours.0, hours.1)
    } else {
        format!("{flush:020}-h{}-h{}-c{first:020}.parquet", hours.0, hours.1)
    };
    root(data_dir).join(tenant.as_str()).join(name)
}

fn write_file(
    data_dir: &Path,
    tenant: &Tenant,
    (first, flush): (u64, u64),
    batch: &RecordBatch,
    fsync: bool,
) -> Result<SessionFile, StoreError> {
    let hours = hours_of(batch);
    let path = file_path(data_dir, tenant, (first, flush), hours);
    // By minute, so that a query of a few hours of a file that spans a day
    // reads only their row groups and pages (by their statistics).
    let order = arrow::compute::lexsort_to_indices(
        &FILE_ORDER
            .iter()
            .map(|c| Ok(arrow::compute::SortColumn { values: column(batch, c)?, options: None }))
            .collect::<Result<Vec<_>, StoreError>>()?,
        None,
    )?;
    let sorted = arrow::compute::take_record_batch(batch, &order)?;
    let bytes = crate::rollup::write_small_parquet(&path, &sorted, fsync)?;
    Ok(SessionFile { path, tenant: tenant.clone(), flush, first, hours, bytes })
}

/// Writes the open sessions as of the flush `flush`; returns the file.
pub fn write_open(data_dir: &Path, book: &SessionBook, flush: u64, fsync: bool) -> Result<PathBuf, StoreError> {
    let dir = open_dir(data_dir);
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{flush:020}.json"));
    let tmp = dir.join(format!("{flush:020}.json.tmp"));
    // Streamed to the file: the open sessions are never all in memory twice.
    let mut file = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    book.write_json(&mut file)?;
    let file = file.into_inner().map_err(|e| StoreError::Io(e.into_error()))?;
    if fsync {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, &path)?;
    if fsync {
        sync_dir(&dir)?;
    }
    Ok(path)
}

/// The flush a file of sessions (finalized, or a snapshot of the open ones)
/// was written by, from its name.
pub fn flush_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    match name.strip_suffix(".json") {
        Some(seq) => seq.parse().ok(),
        None => parse_name(name).map(|(flush, ..)| flush),
    }
}

/// The sessions a file finalized: their ids and `session_end`.
pub fn finalized_in(path: &Path) -> Result<Vec<(String, i64)>, StoreError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?;
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["session_id", "session_end"]);
    let mut out = Vec::new();
    for b in builder.with_projection(mask).build()? {
        let b = b?;
        let ids = column(&b, "session_id")?;
        let ends = column(&b, "session_end")?;
        let (Some(ids), Some(ends)) = (ids.as_string_opt::<i32>(), ends.as_primitive_opt::<TimestampNanosecondType>())
        else {
            return Err(StoreError::Corrupt(format!("{}: session columns", path.display())));
        };
        for r in 0..b.num_rows() {
            out.push((ids.value(r).to_owned(), ends.value(r)));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Deletes the open sessions of flushes before `flush` (once `flush` is
/// checkpointed); returns the files deleted.
pub fn forget_open_before(data_dir: &Path, flush: u64) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(open_dir(data_dir)) else { return Vec::new() };
    let mut gone = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let seq = name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok());
        if seq.is_some_and(|s| s < flush) && fs::remove_file(e.path()).is_ok() {
            gone.push(e.path());
        }
    }
    gone
}

/// What a start finds of the sessions.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The files of finalized sessions up to the checkpoint (later ones, and
    /// temporary files, are deleted).
    pub files: Vec<SessionFile>,
    /// Whether sessions were kept at all.
    pub kept: bool,
    /// The flush whose open sessions were read back into the book: the spans
    /// of later flushes are not in it yet.
    pub snapshot: Option<u64>,
}

/// Reads back the sessions as of the checkpoint: the finalized ones' files,
/// and the latest open sessions written at or before it into `book`.
pub fn load_sessions(data_dir: &Path, book: &SessionBook, checkpoint: u64) -> Result<Loaded, StoreError> {
    let dir = root(data_dir);
    if !dir.exists() {
        return Ok(Loaded::default());
    }
    let mut files = Vec::new();
    for tenant_dir in fs::read_dir(&dir)? {
        let tenant_dir = tenant_dir?.path();
        let Some(name) = tenant_dir.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if !tenant_dir.is_dir() || name == "open" {
            continue;
        }
        let Ok(tenant) = Tenant::new(&name) else { continue };
        for e in fs::read_dir(&tenant_dir)? {
            let path = e?.path();
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match parse_name(&file_name) {
                Some((flush, lo, hi, first)) if flush <= checkpoint => {
                    let bytes = fs::metadata(&path)?.len();
                    files.push(SessionFile { path, tenant: tenant.clone(), flush, first, hours: (lo, hi), bytes });
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing sessions of a flush that was never checkpointed");
                    fs::remove_file(&path)?;
                }
            }
        }
    }
    let open = open_dir(data_dir);
    let mut snapshot = None;
    if open.exists() {
        let mut written = Vec::new();
        for e in fs::read_dir(&open)? {
            let path = e?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                Some(seq) if seq <= checkpoint => written.push((seq, path)),
                // Temporary, or of a flush that was never checkpointed.
                _ => fs::remove_file(&path)?,
            }
        }
        written.sort();
        if let Some((seq, path)) = written.pop() {
            book.restore(std::io::BufReader::with_capacity(1 << 20, File::open(&path)?))?;
            snapshot = Some(seq);
        }
        for (_, path) in written {
            fs::remove_file(&path)?;
        }
    }
    // The inputs of a compaction that finished writing its output.
    let covered: Vec<(Tenant, u64, u64)> =
        files.iter().filter(|f| f.first < f.flush).map(|f| (f.tenant.clone(), f.first, f.flush)).collect();
    let mut kept = Vec::new();
    for f in files {
        let inside = covered
            .iter()
            .any(|(t, lo, hi)| *t == f.tenant && *lo <= f.first && f.flush <= *hi && (f.first, f.flush) != (*lo, *hi));
        if inside {
            tracing::info!(path = %f.path.display(), "removing sessions already compacted");
            fs::remove_file(&f.path)?;
        } else {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| (f.tenant.clone(), f.flush));
    Ok(Loaded { files: kept, kept: true, snapshot })
}

/// Deletes every file of sessions (before a rebuild).
pub fn remove_all(data_dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(root(data_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Forgets every open session of `book`.
pub fn clear(book: &SessionBook) {
    book.clear();
}

/// Moves the rebuilt book's open sessions into the live one.
pub fn adopt(live: &SessionBook, rebuilt: SessionBook) {
    live.replace_with(rebuilt);
}

/// The SQL table `sessions` of one tenant (every tenant's for operators): the
/// finalized sessions' files and the open sessions at the time of the scan.
#[derive(Debug)]
pub(crate) struct SessionsTable {
    pub(crate) store: Store,
    pub(crate) tenant: Option<Tenant>,
}

#[async_trait]
impl TableProvider for SessionsTable {
    fn schema(&self) -> SchemaRef {
        self.store.sessions().spec().schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut hours = (i64::MIN, i64::MAX);
        for f in filters {
            crate::table::narrow("minute", f, &mut hours);
        }
        let files = self.store.session_files(self.tenant.as_ref(), hours);
        let open = self
            .store
            .sessions()
            .open_rows(self.tenant.as_ref())
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        crate::table::files_and_memory(state, self.schema(), &files, &[open], projection, limit, None, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Builder;

    fn spec() -> SessionSpec {
        let rollups = RollupSpec::new(&["os.type".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        SessionSpec::new(&rollups, 900, 30)
    }

    /// Spans of one session: (trace, span, parent, kind, route, start s, end s, error, resend, os, version).
    #[allow(clippy::type_complexity)]
    fn spans(rows: &[(&str, &str, &str, &str, &str, i64, i64, bool, i64, Option<&str>, &str)]) -> RecordBatch {
        // The spans' columns, every one nullable: the book reads them by name.
        let schema = Arc::new(Schema::new(
            andon_model::span_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let n = rows.len();
        let mut cols: Vec<ArrayRef> = Vec::new();
        for f in schema.fields() {
            let text = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
            let c: ArrayRef = match f.name().as_str() {
                "trace_id" => text(rows.iter().map(|r| Some(r.0)).collect()),
                "span_id" => text(rows.iter().map(|r| Some(r.1)).collect()),
                "parent_span_id" => text(rows.iter().map(|r| (!r.2.is_empty()).then_some(r.2)).collect()),
                "kind" => text(rows.iter().map(|r| Some(r.3)).collect()),
                "http_route" => text(rows.iter().map(|r| (r.3 == "server").then_some(r.4)).collect()),
                "http_request_method" => text(rows.iter().map(|r| (r.3 == "server").then_some("GET")).collect()),
                "name" => text(rows.iter().map(|r| Some(r.4)).collect()),
                "service_name" => {
                    text(rows.iter().map(|r| Some(if r.3 == "server" { "shop" } else { "web" })).collect())
                }
                "status_code" => text(rows.iter().map(|r| Some(if r.7 { "error" } else { "ok" })).collect()),
                "session_id" => text(vec![Some("s1"); n]),
                "os_type" => text(rows.iter().map(|r| r.9).collect()),
                "service_version" => text(rows.iter().map(|r| (r.3 == "server").then_some(r.10)).collect()),
                "start_time" | "end_time" => {
                    let secs = |r: &(&str, &str, &str, &str, &str, i64, i64, bool, i64, Option<&str>, &str)| {
                        if f.name() == "start_time" { r.5 } else { r.6 }
                    };
                    Arc::new(
                        TimestampNanosecondArray::from(
                            rows.iter().map(|r| secs(r) * 1_000_000_000).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    )
                }
                "http_request_resend_count" => {
                    let mut b = Int64Builder::new();
                    for r in rows {
                        if r.8 > 0 { b.append_value(r.8) } else { b.append_null() }
                    }
                    Arc::new(b.finish())
                }
                _ => arrow::array::new_null_array(f.data_type(), n),
            };
            cols.push(c);
        }
        RecordBatch::try_new(schema, cols).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `(operation, os, calls, errors, retries, auto retries, recovered, page)` of a row.
    type Seen = (String, String, i64, i64, i64, i64, i64, bool);

    fn rows(book: &SessionBook) -> Vec<Seen> {
        let batches = book.open_rows(None).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        for b in batches {
            let s =
                |n: &str| b.column_by_name(n).map(|c| c.as_string::<i32>().clone()).unwrap_or_else(|| panic!("{n}"));
            let i = |n: &str| {
                b.column_by_name(n).map(|c| c.as_primitive::<Int64Type>().clone()).unwrap_or_else(|| panic!("{n}"))
            };
            let (op, os) = (s("operation"), s("os_type"));
            let (calls, errors, retries, auto, recovered) =
                (i("calls"), i("errors"), i("retries"), i("auto_retries"), i("recovered"));
            let page = b.column_by_name("first_page").unwrap_or_else(|| panic!("first_page"));
            for r in 0..b.num_rows() {
                out.push((
                    op.value(r).to_owned(),
                    os.value(r).to_owned(),
                    calls.value(r),
                    errors.value(r),
                    retries.value(r),
                    auto.value(r),
                    recovered.value(r),
                    !page.is_null(r),
                ));
            }
        }
        out
    }

    #[test]
    fn a_session_counts_retries_recoveries_and_pages_whatever_order_its_spans_arrive_in() {
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        // The browser's page load of /pay fails; the person sends it again 5 s
        // later and it succeeds; then a page of /done. The backend's call under
        // /pay is no page. The browser's root spans carry the OS.
        let browser = spans(&[
            ("t1", "c1", "", "client", "GET /pay", 100, 101, true, 0, Some("android"), ""),
            ("t2", "c2", "", "client", "GET /pay", 106, 107, false, 0, Some("android"), ""),
            ("t3", "c3", "", "client", "GET /done", 120, 121, false, 0, Some("android"), ""),
        ]);
        let backend = spans(&[
            ("t3", "s3", "c3", "server", "/done", 120, 121, false, 0, Some("linux"), "2.0"),
            ("t2", "s2", "c2", "server", "/pay", 106, 107, false, 0, Some("linux"), "2.0"),
            ("t1", "s1", "c1", "server", "/pay", 100, 101, true, 0, Some("linux"), "2.0"),
            ("t1", "s4", "s1", "server", "/inner", 100, 101, true, 0, Some("linux"), "2.0"),
        ]);
        // The backend's spans arrive first, and one of them twice.
        book.note(&t, &backend, 1);
        book.note(&t, &backend.slice(1, 1), 1);
        book.note(&t, &browser, 1);
        let mut got = rows(&book);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("GET /done".to_owned(), "android".to_owned(), 1, 0, 0, 0, 0, true),
                ("GET /inner".to_owned(), "android".to_owned(), 1, 1, 0, 0, 0, false),
                ("GET /pay".to_owned(), "android".to_owned(), 2, 1, 1, 0, 1, true),
            ]
        );
        // The recovery ended at 107 s, so a pass that saw the session's spans
        // up to then (and no later) does not know yet that it went on.
        let batches = book.open_rows(None).unwrap_or_else(|e| panic!("{e}"));
        let mut ends = Vec::new();
        for b in &batches {
            let op = b.column_by_name("operation").unwrap_or_else(|| panic!("operation")).as_string::<i32>().clone();
            let end = b
                .column_by_name("recovered_end")
                .unwrap_or_else(|| panic!("recovered_end"))
                .as_primitive::<TimestampNanosecondType>()
                .clone();
            for r in 0..b.num_rows() {
                ends.push((op.value(r).to_owned(), (!end.is_null(r)).then(|| end.value(r) / 1_000_000_000)));
            }
        }
        ends.sort();
        assert_eq!(
            ends,
            vec![("GET /done".to_owned(), None), ("GET /inner".to_owned(), None), ("GET /pay".to_owned(), Some(107))]
        );
    }

    #[test]
    fn a_resent_request_is_an_automatic_retry_and_a_late_one_no_retry() {
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        book.note(
            &t,
            &spans(&[
                ("t1", "c1", "", "client", "GET /pay", 100, 101, true, 0, None, ""),
                ("t1", "s1", "c1", "server", "/pay", 100, 101, true, 0, None, "1"),
                ("t2", "c2", "", "client", "GET /pay", 102, 103, false, 1, None, ""),
                ("t2", "s2", "c2", "server", "/pay", 102, 103, false, 0, None, "1"),
                // A failure, then a call 60 s later: past the retry interval.
                ("t3", "c3", "", "client", "GET /cart", 110, 111, true, 0, None, ""),
                ("t3", "s3", "c3", "server", "/cart", 110, 111, true, 0, None, "1"),
                ("t4", "c4", "", "client", "GET /cart", 171, 172, false, 0, None, ""),
                ("t4", "s4", "c4", "server", "/cart", 171, 172, false, 0, None, "1"),
            ]),
            1,
        );
        let got = rows(&book);
        let pay = got.iter().find(|r| r.0 == "GET /pay").unwrap_or_else(|| panic!("{got:?}"));
        assert_eq!((pay.4, pay.5, pay.6), (1, 1, 0), "an automatic retry recovers no one silently");
        let cart = got.iter().find(|r| r.0 == "GET /cart").unwrap_or_else(|| panic!("{got:?}"));
        assert_eq!((cart.3, cart.4), (1, 0));
    }

    #[test]
    fn a_row_says_what_was_seen_of_its_session_by_the_end_of_its_minute_and_never_later() {
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        // Calls in minutes 0 and 1, a browser span in minute 1 that ends in
        // minute 2, and a last call in minute 20.
        book.note(
            &t,
            &spans(&[
                ("t1", "s1", "", "server", "/a", 10, 11, false, 0, None, "1"),
                ("t2", "s2", "", "server", "/b", 70, 71, false, 0, None, "1"),
                ("t3", "c3", "", "client", "GET /c", 100, 130, false, 0, None, ""),
                ("t4", "s4", "", "server", "/a", 1_200, 1_201, false, 0, None, "1"),
            ]),
            2_000 * 1_000_000_000,
        );
        let batches = book.open_rows(None).unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        for b in &batches {
            let col = |n: &str| {
                b.column_by_name(n)
                    .map(|c| c.as_primitive::<TimestampNanosecondType>().clone())
                    .unwrap_or_else(|| panic!("{n}"))
            };
            let (minute, seen, end) = (col("minute"), col("seen_end"), col("session_end"));
            for r in 0..b.num_rows() {
                got.push((
                    minute.value(r) / 1_000_000_000,
                    seen.value(r) / 1_000_000_000,
                    end.value(r) / 1_000_000_000,
                ));
            }
        }
        got.sort();
        assert_eq!(got, vec![(0, 11, 1_201), (60, 130, 1_201), (1_200, 1_201, 1_201)]);
    }

    #[test]
    fn open_sessions_written_with_text_span_keys_read_back_and_a_span_noted_again_counts_once() {
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        // As flushes wrote them before span keys were hashed: `trace/span`.
        let written = r#"{"tenants":{"default":{"watermark":101000000000,"open":{"s1":{
            "root":[null],"any":[null],"last_seen":101000000000,"noted":1,
            "calls":{"t1/s1":{"service":"shop","operation":"GET /pay","route":"/pay","span_name":"/pay",
                "trace":"t1","parent":"c1","start":100000000000,"end":101000000000,"err":true,"own":[null]}},
            "root_clients":["t1/c1"],"resent":[]}}}}}"#;
        book.restore(written.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        // The server span again (the WAL replayed); its page comes from the
        // root client span read back.
        book.note(&t, &spans(&[("t1", "s1", "c1", "server", "/pay", 100, 101, true, 0, None, "2.0")]), 1);
        assert_eq!(rows(&book), vec![("GET /pay".to_owned(), String::new(), 1, 1, 0, 0, 0, true)]);
    }

    #[test]
    fn the_open_sessions_rows_follow_every_span_noted_after_they_were_read() {
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        let call = |trace: &str, start: i64, err: bool| {
            spans(&[(trace, "x", "", "server", "/a", start, start + 1, err, 0, None, "1")])
        };
        let wall = 2_000 * 1_000_000_000;
        let counts = |book: &SessionBook| rows(book).iter().map(|r| (r.2, r.3)).collect::<Vec<_>>();
        book.note(&t, &call("t1", 0, true), wall);
        assert_eq!(counts(&book), vec![(1, 1)]);
        assert_eq!(counts(&book), vec![(1, 1)], "read again, unchanged");
        book.note(&t, &call("t2", 5, false), wall);
        assert_eq!(counts(&book), vec![(2, 1)], "a call noted after a read counts");
        book.clear();
        assert!(counts(&book).is_empty(), "forgotten");
    }

    /// One server call of session `id`, at `start` seconds.
    fn call_of(id: &str, trace: &str, start: i64) -> RecordBatch {
        let b = spans(&[(trace, "x", "", "server", "/a", start, start + 1, false, 0, None, "1")]);
        let mut c = b.columns().to_vec();
        let i = b.schema().index_of("session_id").unwrap_or_else(|e| panic!("{e}"));
        c[i] = Arc::new(StringArray::from(vec![id]));
        RecordBatch::try_new(b.schema(), c).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn calls_of_one_operation_share_what_they_have_in_common_also_once_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        let wall = 2_000 * 1_000_000_000;
        for (i, id) in ["s1", "s2"].into_iter().enumerate() {
            book.note(&t, &call_of(id, &format!("t{i}"), 1_000 + i as i64), wall);
        }
        let shared = |book: &SessionBook| {
            let by_tenant = book.by_tenant.lock();
            let calls: Vec<Arc<Named>> =
                by_tenant[&t].open.values().flat_map(|s| s.calls.values().map(|c| Arc::clone(&c.named))).collect();
            assert_eq!(calls.len(), 2);
            assert_eq!(&*calls[0].operation, "GET /a");
            Arc::ptr_eq(&calls[0], &calls[1])
        };
        assert!(shared(&book));
        write_open(dir.path(), &book, 7, false).unwrap_or_else(|e| panic!("{e}"));
        let again = SessionBook::new(spec());
        load_sessions(dir.path(), &again, 7).unwrap_or_else(|e| panic!("{e}"));
        assert!(shared(&again), "read back, the calls share one again");
        assert_eq!(rows(&again), rows(&book));
    }

    #[test]
    fn past_the_bound_of_open_calls_the_least_recently_active_sessions_are_finalized() {
        let book = SessionBook::with_max_open_calls(spec(), 8);
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        let u = Tenant::new("other").unwrap_or_else(|e| panic!("{e}"));
        let s = 1_000_000_000;
        let wall = 2_000 * s;
        // Ten sessions of one call each, noted one second of wall clock
        // apart, alternating between two tenants; none quiet for the timeout.
        for i in 0..10i64 {
            let tenant = if i % 2 == 0 { &t } else { &u };
            book.note(tenant, &call_of(&format!("s{i}"), &format!("t{i}"), 1_000 + i), wall + i * s);
        }
        let quiet = book.take_quiet(wall + 10 * s);
        let mut taken: Vec<String> =
            quiet.0.iter().flat_map(|(_, sessions)| sessions.iter().map(|(id, _)| id.clone())).collect();
        taken.sort();
        // Down to three quarters of the bound: the four noted first go.
        assert_eq!(taken, ["s0", "s1", "s2", "s3"]);
        assert_eq!(quiet.0.len(), 2, "one entry per tenant: {:?}", quiet.0.iter().map(|q| &q.0).collect::<Vec<_>>());
        let open: usize = book.open_rows(None).unwrap_or_else(|e| panic!("{e}")).iter().map(|b| b.num_rows()).sum();
        assert_eq!(open, 6);
        // Their rows are written as any finalized session's.
        let rows: usize =
            book.rows_of(&quiet).unwrap_or_else(|e| panic!("{e}")).iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(rows, 4);

        // Within the bound nothing more is taken before its timeout; a span
        // for a session taken early opens it again.
        book.note(&t, &call_of("s0", "t0b", 1_020), wall + 11 * s);
        assert!(book.take_quiet(wall + 12 * s).0.is_empty());
        let open: usize = book.open_rows(None).unwrap_or_else(|e| panic!("{e}")).iter().map(|b| b.num_rows()).sum();
        assert_eq!(open, 7);
    }

    #[test]
    fn a_session_is_finalized_after_the_timeout_of_quiet_and_open_sessions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let book = SessionBook::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        let one =
            |trace: &str, start: i64| spans(&[(trace, "x", "", "server", "/a", start, start + 1, false, 0, None, "1")]);
        // The wall clock, near the spans' times.
        let wall = 2_000 * 1_000_000_000;
        book.note(&t, &one("t1", 0), wall);
        assert!(book.finalize(wall).unwrap_or_else(|e| panic!("{e}")).is_empty(), "quiet for less than the timeout");
        write_open(dir.path(), &book, 7, false).unwrap_or_else(|e| panic!("{e}"));
        // A later span of another session moves the tenant's clock past the timeout.
        let mut other = one("t2", 1_000);
        other = RecordBatch::try_new(other.schema(), {
            let mut c = other.columns().to_vec();
            let i = other.schema().index_of("session_id").unwrap_or_else(|e| panic!("{e}"));
            c[i] = Arc::new(StringArray::from(vec!["s2"]));
            c
        })
        .unwrap_or_else(|e| panic!("{e}"));
        book.note(&t, &other, wall);
        let done = book.finalize(wall).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.num_rows(), 1);
        assert_eq!(
            book.open_rows(None).unwrap_or_else(|e| panic!("{e}")).iter().map(|b| b.num_rows()).sum::<usize>(),
            1
        );

        // The open sessions of the checkpointed flush come back; a span noted
        // again (the WAL replayed) counts once.
        let again = SessionBook::new(spec());
        let loaded = load_sessions(dir.path(), &again, 7).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.kept && loaded.files.is_empty() && loaded.snapshot == Some(7));
        again.note(&t, &one("t1", 0), wall);
        let got = rows(&again);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, 1, "{got:?}");
    }
}
