//! Localization: which (service, operation) the incident's extra time or extra
//! failures come from, read from the call trees of sampled traces.
//!
//! Every span's time is split three ways and each part is charged to whoever
//! spends it:
//! - **self time**: a span's duration minus the union of its children's
//!   intervals (clipped to it, so parallel calls are not counted twice). A slow
//!   callee's time is its own; the callers waiting on it only carry it in their
//!   children, so they are not blamed.
//! - **network**: a client span's duration minus its server child's: the hop.
//!   The hop's growth is charged to the endpoint all of whose hops grew (the
//!   callee when every caller waits longer for it, the caller when every call it
//!   makes is slower), which tells a slow network path apart from a slow service.
//! - **dependencies**: a client span with no traced server beneath it (a
//!   database, an external API) is time the calling service spends waiting on it.
//!
//! Failures start at an error span with no failing span beneath it.
//!
//! Each (service, operation) is compared per call between the baseline and the
//! incident (Mann–Whitney on self time, a proportion test on failures), scaled by
//! how often a request calls it, so a suspect's score is the share of the extra
//! time (or failures) per request it explains.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use andon_model::format::ms;
use andon_model::statistics::{self as stats, Histogram};
use andon_model::{Suspect, SuspectCause, Tenant, TimeWindow};
use andon_store::QueryEngine;
use andon_store::sql::{self, lit};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use chrono::{DateTime, Duration, Utc};

use crate::AnalysisError;

mod book;
mod profile;
mod scope;

pub use book::TraceBook;
pub use profile::Profile;
use profile::{Key, Stat};
pub use scope::{Failures, REACH, Scope, failures_query, picked_query, sample_query};

/// How much of each window to read.
#[derive(Debug, Clone, Copy)]
pub struct LocalizeLimits {
    /// Traces sampled per window.
    pub traces: usize,
    /// Significance a change must reach (after Benjamini–Hochberg) to count.
    pub fdr: f64,
}

impl Default for LocalizeLimits {
    fn default() -> Self {
        Self { traces: 2000, fdr: 0.01 }
    }
}

/// The operation of a caller blamed for its slow outgoing hops.
pub const OUTGOING: &str = "(outgoing calls)";

/// Which channel the incident shows in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Latency,
    Errors,
}

/// The suspects, and what the requests as a whole did.
#[derive(Debug, Clone)]
pub struct Localization {
    pub channel: Channel,
    pub suspects: Vec<Suspect>,
    /// Mean request (root span) duration, baseline and incident, in ms.
    pub root_ms: (f64, f64),
    /// Share of requests whose root span failed, baseline and incident.
    pub root_error_rate: (f64, f64),
    pub traces: (usize, usize),
    /// (caller, callee) services in the incident's traces.
    pub edges: Vec<(String, String)>,
}

impl Localization {
    /// Every service downstream of `service` in the incident's traces.
    pub fn callees_of(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![service.to_owned()];
        while let Some(s) = frontier.pop() {
            for (caller, callee) in &self.edges {
                if *caller == s && callee != service && !out.contains(callee) {
                    out.push(callee.clone());
                    frontier.push(callee.clone());
                }
            }
        }
        out
    }

    /// Every service upstream of `service` in the incident's traces, nearest first.
    pub fn callers_of(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![service.to_owned()];
        while let Some(s) = frontier.pop() {
            for (caller, callee) in &self.edges {
                if *callee == s && caller != service && !out.contains(caller) {
                    out.push(caller.clone());
                    frontier.insert(0, caller.clone());
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Delta {
    key: Key,
    /// Extra ms (or failures) per request explained here.
    per_request: f64,
    /// What suspects are ranked and scored by: for time, the extra per request
    /// that is beyond this operation's own noise (the per-call shift less two
    /// standard errors of it, and no more than its percentiles moved, so a
    /// frequent, heavy-tailed call whose mean wobbles counts for little); for
    /// failures, `per_request`.
    strength: f64,
    p: f64,
    base: f64,
    cur: f64,
    calls: (u64, u64),
    exemplars: Vec<String>,
}

/// Ranks suspects from the two windows' profiles. `channel` forces the metric
/// (from the finding that opened the incident); otherwise the requests decide.
pub fn rank(
    base: &Profile,
    cur: &Profile,
    failures: Option<(&Failures, &Failures)>,
    channel: Option<Channel>,
    limits: &LocalizeLimits,
    users_moved: bool,
) -> Localization {
    let root_ms = (base.root.mean(), cur.root.mean());
    let rate = |s: &Stat| if s.calls == 0 { 0.0 } else { s.errors as f64 / s.calls as f64 };
    let (base_roots, cur_roots) = match failures {
        Some((b, c)) => (&b.root, &c.root),
        None => (&base.root, &cur.root),
    };
    let root_error_rate = (rate(base_roots), rate(cur_roots));
    let per_trace = |calls: u64| calls as f64 / cur.traces.max(1) as f64;
    let exemplars = |st: &Stat| st.top.iter().map(|(_, t)| cur.trace_ids[*t as usize].clone()).collect::<Vec<_>>();
    let empty = Stat::default();
    let mut latency = Vec::new();
    let mut errors = Vec::new();
    // Failures: exact counts when given, else the sample's.
    let (fb, fc, per_root): (&BTreeMap<Key, Stat>, &BTreeMap<Key, Stat>, f64) = match failures {
        Some((b, c)) => (&b.stats, &c.stats, 1.0 / c.root.calls.max(1) as f64),
        None => (&base.stats, &cur.stats, 1.0 / cur.traces.max(1) as f64),
    };
    for (key, c) in fc {
        if c.errors == 0 {
            continue;
        }
        let b = fb.get(key).unwrap_or(&empty);
        let p = stats::proportion_greater(b.errors, b.calls.max(1), c.errors, c.calls).map_or(1.0, |t| t.p_value);
        let exemplars = cur.stats.get(key).map(exemplars).unwrap_or_default();
        let per_request = (rate(c) - rate(b)) * c.calls as f64 * per_root;
        errors.push(Delta {
            key: key.clone(),
            per_request,
            strength: per_request,
            p,
            base: rate(b),
            cur: rate(c),
            calls: (b.calls, c.calls),
            exemplars,
        });
    }
    // A slowdown every service shares (a busy host, a noisy neighbour, the
    // machine-wide side of CPU contention in one process) is the environment,
    // not a culprit: each operation is judged by how much it slowed beyond it.
    // Hops are judged against the slowdown every hop shares, for the same
    // reason: on a starved machine every client and proxy takes longer to
    // send and hand over a call.
    let (common_own, common_hop) = common_slowdown(base, cur);
    for (key, c) in &cur.stats {
        let b = base.stats.get(key).unwrap_or(&empty);
        let common = match key {
            Key::Hop { .. } => common_hop,
            _ => common_own,
        };
        // Time: per call, scaled by calls per request.
        let p = if b.calls == 0 {
            if c.calls >= 5 { 0.0 } else { 1.0 }
        } else {
            stats::mann_whitney(&b.hist, &c.hist, 0.95).map_or(1.0, |t| t.p_value)
        };
        let shift = c.mean() - b.mean();
        let se = (b.variance() / b.calls.max(1) as f64 + c.variance() / c.calls.max(1) as f64).sqrt();
        // A mean moved by a heavy tail alone (a sub-millisecond statement with
        // rare slow calls) is noise unless the body of the distribution moved
        // too: the shift counts up to the largest shift of its 50th, 75th or
        // 90th percentile, which a fault on one call in ten still moves.
        let body = if b.calls == 0 {
            c.quantile(0.5)
        } else {
            [0.5, 0.75, 0.9].iter().map(|q| c.quantile(*q) - b.quantile(*q) * common).fold(0.0, f64::max)
        };
        let beyond = shift - b.mean() * (common - 1.0);
        latency.push(Delta {
            key: key.clone(),
            per_request: shift * per_trace(c.calls),
            strength: (beyond - 2.0 * se).min(body).max(0.0) * per_trace(c.calls),
            p,
            base: b.mean(),
            cur: c.mean(),
            calls: (b.calls, c.calls),
            exemplars: exemplars(c),
        });
    }
    // Significant after Benjamini–Hochberg and beyond its own noise, strongest
    // first. When nothing is, but something moved beyond its noise, the
    // strongest few are kept as weaker suspects (`tentative`): a short baseline
    // leaves little power, and naming the likeliest place beats naming none.
    let root_slower = stats::mann_whitney(&base.root.hist, &cur.root.hist, 0.95)
        .is_some_and(|t| t.p_value < 0.05 && root_ms.1 > root_ms.0);
    let root_failing = root_error_rate.1 > root_error_rate.0;
    let significant = |v: Vec<Delta>, moved: bool| -> (Vec<Delta>, bool) {
        let q = stats::benjamini_hochberg(&v.iter().map(|d| d.p).collect::<Vec<_>>());
        let by_strength = |v: &mut Vec<Delta>| v.sort_by(|a, b| b.strength.total_cmp(&a.strength));
        let mut keep: Vec<Delta> =
            v.iter().zip(&q).filter(|(d, q)| **q < limits.fdr && d.strength > 0.0).map(|(d, _)| d.clone()).collect();
        by_strength(&mut keep);
        if !keep.is_empty() || !moved {
            return (keep, false);
        }
        let mut weak: Vec<Delta> = v.into_iter().filter(|d| d.strength > 0.0 && d.p < 0.05).collect();
        by_strength(&mut weak);
        weak.truncate(3);
        (weak, true)
    };
    let (latency, latency_tentative) = significant(latency, root_slower);
    let (errors, errors_tentative) = significant(errors, root_failing);
    // The requests decide the channel unless the opener did: slower requests
    // make it a latency incident, otherwise failures that rose do.
    let channel = channel.unwrap_or_else(|| {
        let slower = stats::mann_whitney(&base.root.hist, &cur.root.hist, 0.95)
            .is_some_and(|t| t.p_value < 1e-3 && root_ms.1 > root_ms.0 * 1.1);
        if !slower && !errors.is_empty() { Channel::Errors } else { Channel::Latency }
    });
    let hops = hop_owners(base, cur, &latency);
    let (primary, secondary) = match channel {
        Channel::Latency => ((&latency, latency_tentative), (&errors, errors_tentative)),
        Channel::Errors => ((&errors, errors_tentative), (&latency, latency_tentative)),
    };
    let mut suspects: BTreeMap<(String, String), Suspect> = BTreeMap::new();
    for ((deltas, tentative), weight, is_latency) in
        [(primary, 1.0, channel == Channel::Latency), (secondary, 0.3, channel == Channel::Errors)]
    {
        let total: f64 = deltas.iter().map(|d| d.strength).sum();
        if total <= 0.0 {
            continue;
        }
        // A tentative reading counts for half: the data did not clear the bar.
        let weight = if tentative { weight * 0.5 } else { weight };
        // Parts of one suspect in this channel add up (a caller's slow hops to
        // several services); the reason shown is the largest part's.
        let mut parts: BTreeMap<(String, String), Suspect> = BTreeMap::new();
        for d in deltas {
            let share = d.strength / total * weight;
            let mut s = suspect(d, share, is_latency, &hops, cur);
            if tentative {
                s.reason.push_str(
                    "; tentative: no operation's change was significant once every operation compared was \
                     accounted for, and this is the largest beyond its own variability",
                );
                s.numbers.insert("tentative".into(), 1.0);
            }
            let k = (s.service.clone(), s.operation.clone());
            match parts.get_mut(&k) {
                Some(prev) => {
                    let sum = round2((prev.score + s.score).min(1.0));
                    if s.score > prev.score {
                        *prev = s;
                    }
                    prev.score = sum;
                }
                None => {
                    parts.insert(k, s);
                }
            }
        }
        // Across channels, the stronger reading of a suspect stands.
        for (k, s) in parts {
            match suspects.get(&k) {
                Some(prev) if prev.score >= s.score => {}
                _ => {
                    suspects.insert(k, s);
                }
            }
        }
    }
    let mut suspects: Vec<Suspect> = suspects.into_values().collect();
    if suspects.is_empty() {
        let moved = if users_moved { Some(String::new()) } else { mix_moved(base, cur, limits) };
        if let Some(how) = moved {
            suspects = releases(base, cur, limits, &how);
        }
    }
    suspects.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.service.cmp(&b.service)));
    suspects.truncate(10);
    let edges = cur.edges.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Localization { channel, suspects, root_ms, root_error_rate, traces: (base.traces, cur.traces), edges }
}

/// Whether users ask for different things than in the baseline: the share of
/// requests of some entry operation (a root span's) moved, significantly
/// after Benjamini–Hochberg across the entries (two-sided proportion tests).
/// Returns, in words, the entry among those whose share changed by the
/// largest factor.
fn mix_moved(base: &Profile, cur: &Profile, limits: &LocalizeLimits) -> Option<String> {
    let (nb, nc) = (base.entries.values().sum::<u64>(), cur.entries.values().sum::<u64>());
    if nb == 0 || nc == 0 {
        return None;
    }
    let mut keys: Vec<&(Arc<str>, Arc<str>)> = base.entries.keys().chain(cur.entries.keys()).collect();
    keys.sort();
    keys.dedup();
    let count = |p: &Profile, k: &(Arc<str>, Arc<str>)| p.entries.get(k).copied().unwrap_or(0);
    let p: Vec<f64> = keys
        .iter()
        .map(|k| {
            let (b, c) = (count(base, k), count(cur, k));
            let up = stats::proportion_greater(b, nb, c, nc).map_or(1.0, |t| t.p_value);
            let down = stats::proportion_greater(c, nc, b, nb).map_or(1.0, |t| t.p_value);
            (2.0 * up.min(down)).min(1.0)
        })
        .collect();
    let q = stats::benjamini_hochberg(&p);
    // Of those that moved, the one whose share changed by the largest factor.
    let factor = |k: &(Arc<str>, Arc<str>)| {
        let share = |p: &Profile, n: u64| (count(p, k) as f64 + 0.5) / n as f64;
        (share(cur, nc) / share(base, nb)).ln().abs()
    };
    let (i, _) = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| q[*i] < limits.fdr)
        .max_by(|a, b| factor(a.1).total_cmp(&factor(b.1)))?;
    let k = keys[i];
    Some(format!(
        "; users ask for different things: {} `{}` went from {:.1}% to {:.1}% of requests",
        k.0,
        k.1,
        count(base, k) as f64 * 100.0 / nb as f64,
        count(cur, k) as f64 * 100.0 / nc as f64
    ))
}

/// When neither time nor failures point anywhere: the versions that serve the
/// incident's traces and served none of the baseline's, though the service
/// did. A release whose bug shows only in what users do (a wrong price, a
/// changed page) leaves the spans' durations and statuses as they were; the
/// release is then what changed. A version counts as new when its absence from
/// the baseline's traces through its service is significant at the
/// localization's level, so a canary too small for the baseline's sample to
/// show is not taken for one. Each counts for half its share of the incident's
/// traces, as a tentative reading does: nothing in the spans measured it.
/// Only asked when users changed what they do (`how`, in words): a release
/// that changed nothing users do is no suspect, however new.
fn releases(base: &Profile, cur: &Profile, limits: &LocalizeLimits, how: &str) -> Vec<Suspect> {
    let mut out = Vec::new();
    for ((service, version), served) in &cur.served {
        if base.served.contains_key(&(service.clone(), version.clone())) {
            continue;
        }
        let before = base.serving.get(service).copied().unwrap_or(0);
        let now = cur.serving.get(service).copied().unwrap_or(0);
        let p = stats::proportion_greater(0, before, served.traces, now).map_or(1.0, |t| t.p_value);
        if before == 0 || p >= limits.fdr {
            continue;
        }
        let Some((operation, _)) = served.operations.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
            continue;
        };
        let previous: Vec<&str> = base.served.keys().filter(|(s, _)| s == service).map(|(_, v)| &**v).collect();
        let share = served.traces as f64 / cur.traces.max(1) as f64;
        let mut numbers = BTreeMap::new();
        numbers.insert("traces_incident".to_owned(), served.traces as f64);
        numbers.insert("service_traces_incident".to_owned(), now as f64);
        numbers.insert("service_traces_baseline".to_owned(), before as f64);
        numbers.insert("p_value".to_owned(), p);
        out.push(Suspect {
            service: service.to_string(),
            operation: operation.to_string(),
            score: round2(0.5 * share),
            reason: format!(
                "{service} {version} served {} of the {} incident traces through {service} and none of the {before} \
                 baseline ones{}, while no operation's time or failures changed measurably: the release is what \
                 changed, and its effect is not in the spans' durations or statuses{how}",
                served.traces,
                now,
                if previous.is_empty() { String::new() } else { format!(" (served by {})", previous.join(", ")) },
            ),
            cause: SuspectCause::Release,
            version: Some(version.to_string()),
            numbers,
            exemplar_trace_ids: served.exemplars.iter().map(|t| cur.trace_ids[*t as usize].clone()).collect(),
        });
    }
    out
}

/// The factors by which the typical service's own time, and the typical
/// service's outgoing hops, grew; 1 when they did not grow. For each service
/// (each caller, for hops) with enough calls in both windows, the median ratio
/// of its operations' median time, weighted by calls; then the median over
/// services (callers). Each needs three, so that one faulty service among them
/// cannot set it.
fn common_slowdown(base: &Profile, cur: &Profile) -> (f64, f64) {
    const MIN_CALLS: u64 = 10;
    let mut own: BTreeMap<(&str, &str), Vec<(f64, u64)>> = BTreeMap::new();
    let mut hop: BTreeMap<(&str, &str), Vec<(f64, u64)>> = BTreeMap::new();
    for (key, c) in &cur.stats {
        let group = match key {
            Key::Own { service, .. } => own.entry((service.as_ref(), "")),
            // By caller: a caller starved of CPU slows all its own outgoing
            // hops, and is one vote however many services it calls.
            Key::Hop { caller, .. } => hop.entry((caller.as_ref(), "")),
            Key::Dependency { .. } => continue,
        };
        let Some(b) = base.stats.get(key) else { continue };
        let (qb, qc) = (b.quantile(0.5), c.quantile(0.5));
        if b.calls < MIN_CALLS || c.calls < MIN_CALLS || qb <= 0.0 || !qc.is_finite() {
            continue;
        }
        group.or_default().push((qc / qb, c.calls));
    }
    let weighted_median = |mut v: Vec<(f64, u64)>| -> f64 {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let half = v.iter().map(|x| x.1).sum::<u64>() as f64 / 2.0;
        let mut seen = 0.0;
        for (r, n) in &v {
            seen += *n as f64;
            if seen >= half {
                return *r;
            }
        }
        v.last().map_or(1.0, |x| x.0)
    };
    let common = |groups: BTreeMap<(&str, &str), Vec<(f64, u64)>>| -> f64 {
        let each: Vec<(f64, u64)> = groups.into_values().map(|v| (weighted_median(v), 1)).collect();
        if each.len() < 3 { 1.0 } else { weighted_median(each).max(1.0) }
    };
    (common(own), common(hop))
}

/// For each service, the share of its hops (by calls) whose time grew
/// significantly: incoming as a callee, outgoing as a caller; and how much each
/// hop grew per call. A hop's growth is charged to the endpoint whose other
/// hops grew as much, else to the endpoint whose hops all grew.
#[derive(Debug, Default)]
struct HopOwners {
    inbound: HashMap<Arc<str>, f64>,
    outbound: HashMap<Arc<str>, f64>,
    /// How many distinct services on the other end of a service's grown hops.
    peers: HashMap<(bool, Arc<str>), usize>,
    /// Every hop of the incident: (caller, callee, calls, growth per call in
    /// ms, 0 where it did not grow significantly).
    hops: Vec<(Arc<str>, Arc<str>, u64, f64)>,
}

impl HopOwners {
    /// How much, per call, the hops on one side of a service grew, leaving out
    /// those to or from `except`; `None` when it has no others.
    fn others(&self, outgoing: bool, service: &Arc<str>, except: &Arc<str>) -> Option<f64> {
        let (mut calls, mut growth) = (0u64, 0.0);
        for (caller, callee, n, g) in &self.hops {
            let (mine, other) = if outgoing { (caller, callee) } else { (callee, caller) };
            if mine == service && other != except {
                calls += n;
                growth += *n as f64 * g;
            }
        }
        (calls > 0).then(|| growth / calls as f64)
    }

    /// Whether the growth of the hop from `caller` to `callee`, `growth` ms per
    /// call, is the caller's. An endpoint whose other hops grew by at least half
    /// as much owns it (a slow caller delays every call it sends; a slow or
    /// delayed callee every call it receives), the larger growth when both did;
    /// when neither did, the hop itself is what slowed, and it is the callee's
    /// unless the callee has other callers and the caller no other callees.
    /// Without that evidence, more of the caller's outgoing hops grew than the
    /// callee's incoming ones, or as many, but towards more services.
    fn callers(&self, caller: &Arc<str>, callee: &Arc<str>, growth: f64) -> bool {
        let out = self.others(true, caller, callee);
        let inn = self.others(false, callee, caller);
        let alike = |g: Option<f64>| g.is_some_and(|g| growth > 0.0 && g >= 0.5 * growth);
        match (out, inn) {
            (o, i) if alike(o) || alike(i) => o.unwrap_or(0.0) > i.unwrap_or(0.0),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            _ => {
                let inbound = self.inbound.get(callee).copied().unwrap_or(0.0);
                let outbound = self.outbound.get(caller).copied().unwrap_or(0.0);
                let peers = |inbound: bool, s: &Arc<str>| self.peers.get(&(inbound, s.clone())).copied().unwrap_or(0);
                outbound > inbound + 1e-9
                    || ((outbound - inbound).abs() <= 1e-9 && peers(false, caller) > peers(true, callee))
            }
        }
    }
}

fn hop_owners(_base: &Profile, cur: &Profile, latency: &[Delta]) -> HopOwners {
    let grew: HashMap<&Key, f64> = latency.iter().map(|d| (&d.key, (d.cur - d.base).max(0.0))).collect();
    let mut totals: HashMap<(bool, Arc<str>), (u64, u64)> = HashMap::new();
    let mut peers: HashMap<(bool, Arc<str>), std::collections::HashSet<Arc<str>>> = HashMap::new();
    let mut owners = HopOwners::default();
    for (key, st) in &cur.stats {
        if let Key::Hop { caller, callee, .. } = key {
            let growth = grew.get(key).copied();
            owners.hops.push((caller.clone(), callee.clone(), st.calls, growth.unwrap_or(0.0)));
            let grown = growth.is_some();
            let g = if grown { st.calls } else { 0 };
            for (side, other) in [((true, callee.clone()), caller), ((false, caller.clone()), callee)] {
                if grown {
                    peers.entry(side.clone()).or_default().insert(other.clone());
                }
                let e = totals.entry(side).or_default();
                e.0 += g;
                e.1 += st.calls;
            }
        }
    }
    for ((inbound, service), (g, n)) in totals {
        let share = g as f64 / n.max(1) as f64;
        if inbound {
            owners.inbound.insert(service, share);
        } else {
            owners.outbound.insert(service, share);
        }
    }
    owners.peers = peers.into_iter().map(|(k, v)| (k, v.len())).collect();
    owners
}

fn suspect(d: &Delta, score: f64, latency: bool, hops: &HopOwners, cur: &Profile) -> Suspect {
    let mut numbers = BTreeMap::new();
    numbers.insert("calls_baseline".to_owned(), d.calls.0 as f64);
    numbers.insert("calls_incident".to_owned(), d.calls.1 as f64);
    numbers.insert("p_value".to_owned(), d.p);
    let per_req = d.calls.1 as f64 / cur.traces.max(1) as f64;
    numbers.insert("calls_per_request".to_owned(), per_req);
    let outgoing: Arc<str> = Arc::from(OUTGOING);
    let (service, operation, cause, reason) = match (&d.key, latency) {
        (Key::Own { service, operation }, true) => {
            numbers.insert("self_ms_baseline".into(), d.base);
            numbers.insert("self_ms_incident".into(), d.cur);
            (
                service,
                operation,
                SuspectCause::SelfTime,
                format!(
                    "its own time per call rose from {} to {} ({} calls per request), {} more per request; \
                     the time its callers wait on it is not counted against them",
                    ms(d.base),
                    ms(d.cur),
                    round2(per_req),
                    ms(d.per_request)
                ),
            )
        }
        (Key::Dependency { service, operation }, true) => {
            numbers.insert("wait_ms_baseline".into(), d.base);
            numbers.insert("wait_ms_incident".into(), d.cur);
            (
                service,
                operation,
                SuspectCause::SelfTime,
                format!(
                    "it waits on {operation}, a call with no traced server, {} per call instead of {}; {} more per request",
                    ms(d.cur),
                    ms(d.base),
                    ms(d.per_request)
                ),
            )
        }
        (Key::Hop { caller, callee, operation, queued }, true) => {
            numbers.insert("hop_ms_baseline".into(), d.base);
            numbers.insert("hop_ms_incident".into(), d.cur);
            let inbound = hops.inbound.get(callee).copied().unwrap_or(0.0);
            let outbound = hops.outbound.get(caller).copied().unwrap_or(0.0);
            numbers.insert("callee_hops_grown_share".into(), inbound);
            numbers.insert("caller_hops_grown_share".into(), outbound);
            let (out, inn) = (hops.others(true, caller, callee), hops.others(false, callee, caller));
            if let Some(g) = out {
                numbers.insert("caller_other_hops_growth_ms".into(), g);
            }
            if let Some(g) = inn {
                numbers.insert("callee_other_hops_growth_ms".into(), g);
            }
            // How the other hops of each end moved, as the reason states it.
            let other = |g: Option<f64>, whose: &str| match g {
                Some(g) => format!("{whose} other hops grew {} per call", ms(g)),
                None => format!("{whose} has no other hops"),
            };
            if *queued {
                // A message waits in a queue between producer and consumer:
                // the broker or the consumers' backlog, not either side's work.
                (
                    callee,
                    operation,
                    SuspectCause::Network,
                    format!(
                        "messages from {caller} wait {} in the queue before {callee} takes them, instead of {}, \
                         {} more per request, while neither side's own work grew: the queue into {callee} is slow \
                         (the broker, or too few consumers for the backlog)",
                        ms(d.cur),
                        ms(d.base),
                        ms(d.per_request),
                    ),
                )
            } else if hops.callers(caller, callee, d.cur - d.base) {
                (
                    caller,
                    &outgoing,
                    SuspectCause::Network,
                    format!(
                        "calls from {caller} to {callee} spend {} between client and server instead of {} \
                         while {callee} itself is no slower; {:.0}% of {caller}'s outgoing calls slowed this way, \
                         {:.0}% of {callee}'s incoming ones ({}; {}): the path out of {caller} is slow",
                        ms(d.cur),
                        ms(d.base),
                        outbound * 100.0,
                        inbound * 100.0,
                        other(out, &format!("{caller}'s")),
                        other(inn, &format!("{callee}'s")),
                    ),
                )
            } else {
                (
                    callee,
                    operation,
                    SuspectCause::Network,
                    format!(
                        "callers wait {} between their client span and its server span instead of {} \
                         ({caller} → {callee}), {} more per request; {:.0}% of the calls into {callee} slowed \
                         this way ({}; {}), so the hop to it is slow, not the callers",
                        ms(d.cur),
                        ms(d.base),
                        ms(d.per_request),
                        inbound * 100.0,
                        other(inn, &format!("{callee}'s")),
                        other(out, &format!("{caller}'s")),
                    ),
                )
            }
        }
        (Key::Own { service, operation } | Key::Dependency { service, operation }, false) => {
            numbers.insert("error_rate_baseline".into(), d.base);
            numbers.insert("error_rate_incident".into(), d.cur);
            (
                service,
                operation,
                SuspectCause::Errors,
                format!(
                    "failures start here: {:.1}% of its calls fail with nothing failing beneath them, against \
                     {:.1}% before",
                    d.cur * 100.0,
                    d.base * 100.0
                ),
            )
        }
        (Key::Hop { caller, callee, operation, .. }, false) => {
            numbers.insert("error_rate_baseline".into(), d.base);
            numbers.insert("error_rate_incident".into(), d.cur);
            (
                callee,
                operation,
                SuspectCause::Network,
                format!(
                    "{:.1}% of calls from {caller} fail on the way to {callee} while its server span succeeds \
                     (against {:.1}% before)",
                    d.cur * 100.0,
                    d.base * 100.0
                ),
            )
        }
    };
    Suspect {
        service: service.to_string(),
        operation: operation.to_string(),
        score: round2(score.clamp(0.0, 1.0)),
        reason,
        cause,
        version: None,
        numbers,
        exemplar_trace_ids: d.exemplars.clone(),
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Samples both windows and ranks suspects.
pub async fn localize(
    engine: &QueryEngine,
    tenant: &Tenant,
    baseline: &TimeWindow,
    incident: &TimeWindow,
    scope: &Scope,
    channel: Option<Channel>,
    limits: &LocalizeLimits,
) -> Result<(Localization, Vec<String>), AnalysisError> {
    localize_with(engine, tenant, baseline, incident, scope, channel, limits, None).await
}

/// [`localize`], reading the sampled traces `book` holds from it instead of
/// the store (and keeping the others there).
#[allow(clippy::too_many_arguments)]
pub async fn localize_with(
    engine: &QueryEngine,
    tenant: &Tenant,
    baseline: &TimeWindow,
    incident: &TimeWindow,
    scope: &Scope,
    channel: Option<Channel>,
    limits: &LocalizeLimits,
    book: Option<&TraceBook>,
) -> Result<(Localization, Vec<String>), AnalysisError> {
    let mut queries = Vec::new();
    let mut profiles = Vec::new();
    let mut failures = Vec::new();
    // A service hint narrows the sample to traces through that service; the
    // exact failure counts cover every trace of the scope's segment, not only
    // those, so they are read (and used) only without one.
    let exact_failures = scope.through.is_none();
    for w in [baseline, incident] {
        let q = sample_query(w, limits.traces, scope);
        let profile = match book {
            Some(book) => book.sample(engine, tenant, w, limits.traces, scope).await?,
            None => {
                let out = engine
                    .collect(Some(tenant.clone()), &q)
                    .await
                    .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: q.clone() })?;
                Profile::from_batches(&out.batches)?
            }
        };
        profiles.push(profile);
        queries.push(q);
        if exact_failures {
            let q = failures_query(w, scope);
            let out = engine
                .collect(Some(tenant.clone()), &q)
                .await
                .map_err(|e| AnalysisError::Query { message: e.to_string(), sql: q.clone() })?;
            failures.push(Failures::from_rows(&andon_store::sql::Rows::new(out.batches)));
            queries.push(q);
        }
    }
    let cur = profiles.pop().unwrap_or_default();
    let base = profiles.pop().unwrap_or_default();
    let exact = (failures.len() == 2).then(|| (&failures[0], &failures[1]));
    Ok((rank(&base, &cur, exact, channel, limits, scope.users_moved), queries))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::profile::{Kind, Span};
    use super::*;

    /// One request: `frontend` serves it and calls `pricing` (and `catalog`), and
    /// `checkout` calls `pricing` too. Times in ms: each service's own work, and
    /// the hop (client minus server) of each call.
    struct Shape {
        pricing_ms: f64,
        to_pricing_hop: f64,
        to_catalog_hop: f64,
        to_checkout_hop: f64,
        checkout_hop: f64,
    }

    fn add(p: &mut Profile, n: u32, shape: &Shape) {
        let a = |s: &str| -> Arc<str> { Arc::from(s) };
        let ns = |ms: f64| (ms * 1e6) as i64;
        for i in 0..n {
            // A little jitter so the tests have spread.
            let j = f64::from(i % 7) * 0.1;
            let mut spans = Vec::new();
            let mut span = |id: &str, parent: Option<&str>, svc: &str, op: &str, kind: Kind, t0: f64, t1: f64| {
                spans.push(Span {
                    id: a(id),
                    parent: parent.map(a),
                    service: a(svc),
                    operation: a(op),
                    kind,
                    version: None,
                    err: false,
                    t0: ns(t0),
                    t1: ns(t1),
                });
            };
            let pricing = shape.pricing_ms + j;
            let (h1, h2, h3) = (shape.to_pricing_hop + j, shape.to_catalog_hop + j, shape.checkout_hop + j);
            // frontend: 5 ms own, then pricing, then catalog (8 ms), then checkout.
            let c1 = 5.0;
            let c1_end = c1 + h1 + pricing;
            let c2_end = c1_end + h2 + 8.0;
            let h4 = shape.to_checkout_hop + j;
            let c3_end = c2_end + h4 + 3.0 + h3 + pricing + 1.0;
            span("f", None, "frontend", "GET /", Kind::Server, 0.0, c3_end + 1.0);
            span("c1", Some("f"), "frontend", "pricing.quote", Kind::Client, c1, c1_end);
            span("s1", Some("c1"), "pricing", "GET /v1/quote", Kind::Server, c1 + h1 / 2.0, c1_end - h1 / 2.0);
            span("c2", Some("f"), "frontend", "catalog.get", Kind::Client, c1_end, c2_end);
            span("s2", Some("c2"), "catalog", "GET /v1/products", Kind::Server, c1_end + h2 / 2.0, c2_end - h2 / 2.0);
            span("c3", Some("f"), "frontend", "checkout.place", Kind::Client, c2_end, c3_end);
            let s3 = c2_end + h4 / 2.0;
            span("s3", Some("c3"), "checkout", "POST /v1/orders", Kind::Server, s3, c3_end - h4 / 2.0);
            span("c4", Some("s3"), "checkout", "pricing.quote", Kind::Client, s3 + 3.0, s3 + 3.0 + h3 + pricing);
            span(
                "s4",
                Some("c4"),
                "pricing",
                "GET /v1/quote",
                Kind::Server,
                s3 + 3.0 + h3 / 2.0,
                s3 + 3.0 + h3 / 2.0 + pricing,
            );
            record(p, &spans);
        }
    }

    fn ranked(base: &Shape, cur: &Shape) -> Vec<Suspect> {
        let (mut b, mut c) = (Profile::default(), Profile::default());
        add(&mut b, 200, base);
        add(&mut c, 200, cur);
        rank(&b, &c, None, None, &LocalizeLimits::default(), false).suspects
    }

    const QUIET: Shape =
        Shape { pricing_ms: 10.0, to_pricing_hop: 1.0, to_catalog_hop: 1.0, to_checkout_hop: 2.0, checkout_hop: 1.0 };

    #[test]
    fn a_slow_callee_is_blamed_not_the_callers_waiting_on_it() {
        let s = ranked(&QUIET, &Shape { pricing_ms: 60.0, ..QUIET });
        assert_eq!(
            (s[0].service.as_str(), s[0].operation.as_str(), s[0].cause),
            ("pricing", "GET /v1/quote", SuspectCause::SelfTime),
            "{s:#?}"
        );
        assert!(s[0].score > 0.9, "{s:#?}");
        assert!(!s.iter().any(|x| x.service == "frontend" || x.service == "checkout"), "{s:#?}");
    }

    #[test]
    fn a_slow_hop_to_a_service_is_told_apart_from_a_slow_service() {
        // Every caller waits longer for pricing; pricing works as fast as before.
        let s = ranked(&QUIET, &Shape { to_pricing_hop: 30.0, checkout_hop: 30.0, ..QUIET });
        assert_eq!((s[0].service.as_str(), s[0].cause), ("pricing", SuspectCause::Network), "{s:#?}");
        assert!(!s.iter().any(|x| x.cause == SuspectCause::SelfTime && x.score > 0.1), "{s:#?}");
        // Every call frontend makes is slower, the same call from checkout is
        // not: the path out of frontend is slow.
        let s = ranked(&QUIET, &Shape { to_pricing_hop: 30.0, to_catalog_hop: 30.0, to_checkout_hop: 30.0, ..QUIET });
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("frontend", OUTGOING), "{s:#?}");
        assert_eq!(s[0].cause, SuspectCause::Network);
        assert!(s[0].score > 0.9, "{s:#?}");
    }

    /// Adds one trace to a profile under a made-up trace id.
    fn record(p: &mut Profile, spans: &[Span]) {
        p.add_trace(spans, p.traces as u32);
        p.trace_ids.push(format!("{:032x}", p.traces));
        p.traces += 1;
    }

    /// A trace from `(id, parent, service, operation, kind, start ms, end ms)`.
    type Row<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, Kind, f64, f64);

    fn push(p: &mut Profile, rows: &[Row<'_>]) {
        push_versioned(p, rows, |_| None);
    }

    /// [`push`], each span's process at the version `version_of` its service gives.
    fn push_versioned<'v>(p: &mut Profile, rows: &[Row<'_>], version_of: impl Fn(&str) -> Option<&'v str>) {
        let spans: Vec<Span> = rows
            .iter()
            .map(|(id, parent, svc, op, kind, t0, t1)| Span {
                id: Arc::from(*id),
                parent: parent.map(Arc::from),
                service: Arc::from(*svc),
                operation: Arc::from(*op),
                kind: *kind,
                version: version_of(svc).map(Arc::from),
                err: false,
                t0: (t0 * 1e6) as i64,
                t1: (t1 * 1e6) as i64,
            })
            .collect();
        record(p, &spans);
    }

    /// A [`Row`] whose span ids are built at run time.
    type OwnedRow = (String, Option<String>, &'static str, &'static str, Kind, f64, f64);

    /// A small deterministic stream in [0, 1).
    fn noise(state: &mut u64) -> f64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn a_gateway_handler_waiting_beside_its_client_call_is_not_blamed() {
        // A reactive gateway: under its server span, an in-process handler span
        // with no children runs the whole time the sibling client span waits
        // on the backend. The backend slows; the handler's time is waiting.
        let build = |backend_ms: f64, n: u32| {
            let mut p = Profile::default();
            for i in 0..n {
                let j = f64::from(i % 5) * 0.2;
                let end = 2.0 + backend_ms + j + 1.0;
                push(
                    &mut p,
                    &[
                        ("s", None, "gateway", "GET /api/orders", Kind::Server, 0.0, end + 0.5),
                        ("h", Some("s"), "gateway", "OrdersHandler.handle", Kind::Other, 0.5, end),
                        ("c", Some("s"), "gateway", "GET", Kind::Client, 1.0, end - 0.2),
                        ("b", Some("c"), "orders", "GET /orders", Kind::Server, 1.5, 1.5 + backend_ms + j),
                    ],
                );
            }
            p
        };
        let s = rank(&build(10.0, 200), &build(60.0, 200), None, None, &LocalizeLimits::default(), false).suspects;
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("orders", "GET /orders"), "{s:#?}");
        assert!(!s.iter().any(|x| x.service == "gateway"), "the gateway only waits: {s:#?}");
    }

    /// A request that publishes a message and waits for its consumer (a
    /// Celery task's result, a reply queue): the consumer is a child of the
    /// producer and starts after the producer span has ended.
    fn queued(work_ms: f64, queue_ms: f64, n: u32) -> Profile {
        let mut p = Profile::default();
        for i in 0..n {
            let j = f64::from(i % 7) * 0.3;
            let c0 = 4.0 + queue_ms + j;
            let c1 = c0 + work_ms + j;
            push(
                &mut p,
                &[
                    ("s", None, "bookings", "GET /confirmation", Kind::Server, 0.0, c1 + 1.5),
                    ("q", Some("s"), "bookings", "SELECT", Kind::Client, 0.5, 1.5 + j / 3.0),
                    ("p", Some("s"), "bookings", "publish compose", Kind::Producer, 2.0, 4.0),
                    ("c", Some("p"), "mailer", "process compose", Kind::Consumer, c0, c1),
                    ("w", Some("c"), "mailer", "INSERT", Kind::Client, c0 + 0.5, c0 + 1.0),
                ],
            );
        }
        p
    }

    #[test]
    fn a_queue_consumer_that_slows_is_blamed_not_the_producer_waiting_for_it() {
        let s = rank(&queued(8.0, 5.0, 200), &queued(88.0, 5.0, 200), None, None, &LocalizeLimits::default(), false)
            .suspects;
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("mailer", "process compose"), "{s:#?}");
        assert_eq!(s[0].cause, SuspectCause::SelfTime, "{s:#?}");
        assert!(!s.iter().any(|x| x.service == "bookings"), "bookings only waits for the consumer: {s:#?}");
    }

    #[test]
    fn a_message_slow_to_leave_the_queue_is_charged_to_the_queue_not_either_side() {
        let s = rank(&queued(8.0, 5.0, 200), &queued(8.0, 65.0, 200), None, None, &LocalizeLimits::default(), false)
            .suspects;
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("mailer", "process compose"), "{s:#?}");
        assert_eq!(s[0].cause, SuspectCause::Network, "{s:#?}");
        assert!(s[0].reason.contains("in the queue"), "{s:#?}");
        assert!(!s.iter().any(|x| x.service == "bookings"), "{s:#?}");
    }

    #[test]
    fn a_noisy_frequent_call_does_not_outrank_the_service_that_slowed() {
        // `inventory` does its work twice as slowly (1 → 2 ms, once per request);
        // `accounts` runs a sub-millisecond SQL statement 20 times per request
        // (p95 five times its median) whose slow calls happen to be more and
        // slower in the incident: its mean rises by more per request than
        // inventory's, significantly, but its body does not move.
        let build = |inventory_ms: f64, tail: (f64, f64), seed: u64| {
            let mut p = Profile::default();
            let mut st = seed;
            for _ in 0..500 {
                let mut rows: Vec<OwnedRow> = Vec::new();
                let inv = inventory_ms * (0.9 + 0.2 * noise(&mut st));
                rows.push(("root".into(), None, "api", "GET /cart", Kind::Server, 0.0, 40.0));
                rows.push(("ci".into(), Some("root".into()), "api", "inventory.get", Kind::Client, 1.0, 2.0 + inv));
                rows.push(("si".into(), Some("ci".into()), "inventory", "GET /stock", Kind::Server, 1.2, 1.2 + inv));
                rows.push(("ca".into(), Some("root".into()), "api", "accounts.get", Kind::Client, 4.0, 39.0));
                rows.push(("sa".into(), Some("ca".into()), "accounts", "GET /account", Kind::Server, 4.2, 38.8));
                for k in 0..20 {
                    let u = noise(&mut st);
                    let ms = if u < tail.0 { tail.1 } else { 0.25 + 0.1 * noise(&mut st) };
                    let t0 = 5.0 + f64::from(k) * 1.5;
                    rows.push((
                        format!("q{k}"),
                        Some("sa".into()),
                        "accounts",
                        "SELECT accounts",
                        Kind::Client,
                        t0,
                        t0 + ms,
                    ));
                }
                let view: Vec<Row<'_>> = rows
                    .iter()
                    .map(|(id, parent, svc, op, kind, t0, t1)| {
                        (id.as_str(), parent.as_deref(), *svc, *op, *kind, *t0, *t1)
                    })
                    .collect();
                push(&mut p, &view);
            }
            p
        };
        let s = rank(
            &build(1.0, (0.05, 1.5), 1),
            &build(2.0, (0.08, 4.0), 2),
            None,
            None,
            &LocalizeLimits::default(),
            false,
        )
        .suspects;
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("inventory", "GET /stock"), "{s:#?}");
        assert!(s.iter().all(|x| x.operation != "SELECT accounts" || x.score < s[0].score), "{s:#?}");
    }

    /// Spans from owned rows, as [`push`] takes them.
    fn push_owned(p: &mut Profile, rows: &[OwnedRow]) {
        let view: Vec<Row<'_>> = rows
            .iter()
            .map(|(id, parent, svc, op, kind, t0, t1)| (id.as_str(), parent.as_deref(), *svc, *op, *kind, *t0, *t1))
            .collect();
        push(p, &view);
    }

    #[test]
    fn a_slowdown_every_service_shares_does_not_outrank_the_service_that_slowed() {
        // CPU contention in `billing`, called on one request in twenty, triples
        // its own time; the busy machine also makes every other service 30%
        // slower, which adds more per request than billing does, since each of
        // them is called on every request.
        let build = |common: f64, billing: f64, seed: u64| {
            let mut p = Profile::default();
            let mut st = seed;
            for i in 0..800 {
                let mut rows: Vec<OwnedRow> = Vec::new();
                let mut t = 1.0;
                let mut kids = Vec::new();
                for svc in ["rooms", "rates", "search", "reviews"] {
                    let own = 5.0 * common * (0.9 + 0.2 * noise(&mut st));
                    kids.push((svc, t, own));
                    t += own + 1.0;
                }
                if i % 20 == 0 {
                    let own = 10.0 * billing * (0.9 + 0.2 * noise(&mut st));
                    kids.push(("billing", t, own));
                    t += own + 1.0;
                }
                let end = t + 2.0 * common;
                rows.push(("root".into(), None, "gateway", "GET /stay", Kind::Server, 0.0, end));
                for (k, (svc, t0, own)) in kids.into_iter().enumerate() {
                    rows.push((
                        format!("c{k}"),
                        Some("root".into()),
                        "gateway",
                        "GET",
                        Kind::Client,
                        t0,
                        t0 + own + 0.4,
                    ));
                    rows.push((
                        format!("s{k}"),
                        Some(format!("c{k}")),
                        svc,
                        "handle",
                        Kind::Server,
                        t0 + 0.2,
                        t0 + 0.2 + own,
                    ));
                }
                push_owned(&mut p, &rows);
            }
            p
        };
        let s = rank(&build(1.0, 1.0, 1), &build(1.3, 3.0, 2), None, None, &LocalizeLimits::default(), false).suspects;
        assert_eq!(s[0].service, "billing", "{s:#?}");
    }

    #[test]
    fn a_slowdown_every_hop_shares_does_not_outrank_the_service_that_slowed() {
        // CPU contention in `billing`, called on one request in twenty, triples
        // its own time. On the starved machine every client and proxy is also
        // slower to hand over a call: each hop (half a millisecond each way)
        // more than doubles, from the app to the gateway, from the gateway to
        // each service and from `search` to `reviews`, on every request, which
        // adds more per request than billing does.
        let build = |gap: f64, billing: f64, seed: u64| {
            let mut p = Profile::default();
            let mut st = seed;
            for i in 0..800 {
                let mut rows: Vec<OwnedRow> = Vec::new();
                let mut g = || gap * (0.8 + 0.4 * noise(&mut st));
                let mut t = 1.0;
                let mut calls = Vec::new();
                for svc in ["rooms", "rates", "search"] {
                    calls.push((svc, t, 5.0));
                    t += 5.0 + 2.0 * gap + 1.0;
                }
                if i % 20 == 0 {
                    calls.push(("billing", t, 10.0 * billing));
                    t += 10.0 * billing + 2.0 * gap + 1.0;
                }
                let g0 = g();
                rows.push(("app".into(), None, "app", "GET /stay", Kind::Client, -g0, t + 2.0 + g0));
                rows.push(("root".into(), Some("app".into()), "gateway", "GET /stay", Kind::Server, 0.0, t + 2.0));
                for (k, (svc, t0, own)) in calls.into_iter().enumerate() {
                    let gk = g();
                    // `search` calls `reviews` for 2 ms of its 5.
                    let inner = if svc == "search" { 2.0 + 2.0 * gap } else { 0.0 };
                    let end = t0 + gk + own + inner;
                    rows.push((format!("c{k}"), Some("root".into()), "gateway", "GET", Kind::Client, t0, end + gk));
                    rows.push((format!("s{k}"), Some(format!("c{k}")), svc, "handle", Kind::Server, t0 + gk, end));
                    if svc == "search" {
                        let (a, gr) = (t0 + gk + 1.0, g());
                        rows.push((
                            "cr".into(),
                            Some(format!("s{k}")),
                            "search",
                            "GET",
                            Kind::Client,
                            a,
                            a + 2.0 + 2.0 * gr,
                        ));
                        rows.push((
                            "sr".into(),
                            Some("cr".into()),
                            "reviews",
                            "handle",
                            Kind::Server,
                            a + gr,
                            a + gr + 2.0,
                        ));
                    }
                }
                push_owned(&mut p, &rows);
            }
            p
        };
        let s = rank(&build(0.5, 1.0, 1), &build(1.2, 3.0, 2), None, None, &LocalizeLimits::default(), false).suspects;
        assert_eq!(s[0].service, "billing", "{s:#?}");
    }

    #[test]
    fn a_hop_that_alone_grew_is_the_callees_though_every_hop_of_the_caller_slowed_a_little() {
        // `rates` is slow to take calls (its server span starts 30 ms after the
        // client's); the gateway's call to `rooms` is a millisecond slower
        // too, on a busier machine. Every outgoing hop of the gateway grew, and
        // every incoming hop of rates: only the size says whose it is.
        let build = |rates_hop: f64, rooms_hop: f64, seed: u64| {
            let mut p = Profile::default();
            let mut st = seed;
            for _ in 0..400 {
                let (a, b) = (rooms_hop * (0.9 + 0.2 * noise(&mut st)), rates_hop * (0.9 + 0.2 * noise(&mut st)));
                let end = 4.0 + a.max(b) + 4.0;
                let rows: Vec<OwnedRow> = vec![
                    ("root".into(), None, "gateway", "GET /stay", Kind::Server, 0.0, end),
                    ("c1".into(), Some("root".into()), "gateway", "GET", Kind::Client, 1.0, 1.0 + a + 3.0),
                    ("s1".into(), Some("c1".into()), "rooms", "GET /rooms", Kind::Server, 1.0 + a, 1.0 + a + 3.0),
                    ("c2".into(), Some("root".into()), "gateway", "GET", Kind::Client, 1.0, 1.0 + b + 3.0),
                    ("s2".into(), Some("c2".into()), "rates", "GET /quote", Kind::Server, 1.0 + b, 1.0 + b + 3.0),
                ];
                push_owned(&mut p, &rows);
            }
            p
        };
        let s = rank(&build(2.0, 2.0, 1), &build(32.0, 3.0, 2), None, None, &LocalizeLimits::default(), false).suspects;
        assert_eq!((s[0].service.as_str(), s[0].cause), ("rates", SuspectCause::Network), "{s:#?}");
        assert!(s.iter().all(|x| x.service != "gateway" || x.score < s[0].score), "{s:#?}");
    }

    #[test]
    fn a_suspect_is_named_when_requests_slowed_on_a_short_baseline() {
        // Five requests on each side: every one slower because `search` is,
        // which no correction for the operations compared lets through.
        let build = |search_ms: f64| {
            let mut p = Profile::default();
            for i in 0..5 {
                let j = f64::from(i) * 0.1;
                let end = 3.0 + search_ms + j;
                push(
                    &mut p,
                    &[
                        ("r", None, "web", "GET /search", Kind::Server, 0.0, end + 1.0),
                        ("c", Some("r"), "web", "search.query", Kind::Client, 1.0, end),
                        ("s", Some("c"), "search", "POST /query", Kind::Server, 1.5, 1.5 + search_ms + j),
                        ("d", Some("s"), "search", "SELECT docs", Kind::Client, 1.6, 2.0),
                        ("e", Some("r"), "web", "render", Kind::Other, end, end + 0.8),
                    ],
                );
            }
            p
        };
        let s =
            rank(&build(10.0), &build(14.0), None, Some(Channel::Latency), &LocalizeLimits::default(), false).suspects;
        assert!(!s.is_empty(), "requests slowed: a suspect must be named");
        assert_eq!((s[0].service.as_str(), s[0].operation.as_str()), ("search", "POST /query"), "{s:#?}");
        assert_eq!(s[0].numbers.get("tentative"), Some(&1.0), "{s:#?}");
    }

    #[test]
    fn nothing_changed_means_no_suspect() {
        assert!(ranked(&QUIET, &QUIET).is_empty());
    }

    /// A page served by `web` that asks `rates` for a quote, with `rates` at
    /// `version`; the same times whatever the version.
    fn quote_page(p: &mut Profile, n: u32, version: &str) {
        for i in 0..n {
            let j = f64::from(i % 5) * 0.2;
            let rows: [Row<'_>; 3] = [
                ("w", None, "web", "GET /stays/{room}", Kind::Server, 0.0, 20.0 + j),
                ("c", Some("w"), "web", "GET", Kind::Client, 5.0, 15.0 + j),
                ("r", Some("c"), "rates", "GET /quote", Kind::Server, 6.0, 14.0 + j),
            ];
            push_versioned(p, &rows, |svc| Some(if svc == "rates" { version } else { "1.0.0" }));
        }
    }

    #[test]
    fn a_release_that_changes_neither_time_nor_failures_is_named_when_nothing_else_moved() {
        let (mut b, mut c) = (Profile::default(), Profile::default());
        quote_page(&mut b, 100, "0.9.4");
        quote_page(&mut c, 100, "0.9.5");
        // Users shown the wrong value stop booking: the opener saw it.
        let found = rank(&b, &c, None, None, &LocalizeLimits::default(), true).suspects;
        assert_eq!(found.len(), 1, "{found:?}");
        let top = &found[0];
        assert_eq!((top.service.as_str(), top.operation.as_str()), ("rates", "GET /quote"));
        assert_eq!(top.cause, SuspectCause::Release);
        assert_eq!(top.version.as_deref(), Some("0.9.5"));
        assert!(top.score > 0.0 && top.score <= 0.5, "{}", top.score);

        // The same versions on both sides: nothing changed, no suspect.
        let mut same = Profile::default();
        quote_page(&mut same, 100, "0.9.4");
        assert!(rank(&b, &same, None, None, &LocalizeLimits::default(), true).suspects.is_empty());
    }

    /// `n` bookings: requests to `web`'s `POST /holds` that reach `reservations`.
    fn bookings(p: &mut Profile, n: u32) {
        for i in 0..n {
            let j = f64::from(i % 5) * 0.2;
            push(
                p,
                &[
                    ("w", None, "web", "POST /holds", Kind::Server, 0.0, 12.0 + j),
                    ("c", Some("w"), "web", "POST", Kind::Client, 2.0, 10.0 + j),
                    ("r", Some("c"), "reservations", "POST /holds", Kind::Server, 3.0, 9.0 + j),
                ],
            );
        }
    }

    #[test]
    fn a_release_is_named_only_when_users_changed_what_they_do() {
        // A harmless release: users ask for the same things, nothing is blamed.
        let (mut b, mut c) = (Profile::default(), Profile::default());
        quote_page(&mut b, 200, "0.9.4");
        bookings(&mut b, 40);
        quote_page(&mut c, 200, "0.9.5");
        bookings(&mut c, 40);
        assert!(rank(&b, &c, None, None, &LocalizeLimits::default(), false).suspects.is_empty());
        // A release after which users stop booking: the requests' mix moved.
        let mut fewer = Profile::default();
        quote_page(&mut fewer, 200, "0.9.5");
        bookings(&mut fewer, 2);
        let found = rank(&b, &fewer, None, None, &LocalizeLimits::default(), false).suspects;
        let top = found.first().expect("the release is named");
        assert_eq!((top.service.as_str(), top.cause), ("rates", SuspectCause::Release), "{found:?}");
        assert!(top.reason.contains("`POST /holds` went from 16.7% to 1.0%"), "{}", top.reason);
    }

    #[test]
    fn a_version_already_serving_in_the_baseline_is_no_release() {
        // A canary: 0.9.5 served a tenth of the baseline, and all of the incident.
        let (mut b, mut c) = (Profile::default(), Profile::default());
        quote_page(&mut b, 90, "0.9.4");
        quote_page(&mut b, 10, "0.9.5");
        quote_page(&mut c, 100, "0.9.5");
        assert!(rank(&b, &c, None, None, &LocalizeLimits::default(), true).suspects.is_empty());
        // Too few incident traces on a new version to tell it from a canary
        // the baseline's sample missed.
        let (mut b, mut c) = (Profile::default(), Profile::default());
        quote_page(&mut b, 40, "0.9.4");
        quote_page(&mut c, 97, "0.9.4");
        quote_page(&mut c, 3, "0.9.5");
        assert!(rank(&b, &c, None, None, &LocalizeLimits::default(), true).suspects.is_empty());
    }

    #[test]
    fn a_release_is_not_named_over_an_operation_that_measurably_slowed() {
        // rates 0.9.5 ships while pricing, which it does not touch, slows: the
        // measured slowdown is the suspect, not the release beside it.
        let (mut b, mut c) = (Profile::default(), Profile::default());
        add(&mut b, 200, &QUIET);
        add(&mut c, 200, &Shape { pricing_ms: 30.0, ..QUIET });
        quote_page(&mut b, 100, "0.9.4");
        quote_page(&mut c, 100, "0.9.5");
        let found = rank(&b, &c, None, None, &LocalizeLimits::default(), true).suspects;
        assert_eq!(found.first().map(|s| s.service.as_str()), Some("pricing"), "{found:?}");
        assert!(found.iter().all(|s| s.cause != SuspectCause::Release), "{found:?}");
    }
}
