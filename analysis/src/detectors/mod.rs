//! The detectors, one file each, and what they share. Each has its SQL in a
//! `.sql` file beside it; the SQL aggregates per operation, side (baseline or
//! current) and segment, and the detector turns those cells into tests.
//! Segment search, false-discovery control and the choice of segment are
//! shared, here.
//!
//! A new detector is a file here that implements [`Detector`] and one line in
//! the registry below.

/// Declares each detector's module and lists the detectors in the order a
/// pass runs them.
macro_rules! registry {
    ($($module:ident => $detector:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every detector, in the order a pass runs them.
        pub fn registry() -> Vec<std::sync::Arc<dyn Detector>> {
            vec![$(std::sync::Arc::new($module::$detector)),*]
        }
    };
}

registry! {
    latency_regression => LatencyRegression,
    error_rate_regression => ErrorRateRegression,
    retry => Retry,
    silent_recovery => SilentRecovery,
    drop_off => DropOff,
}

use std::collections::BTreeMap;

use andon_model::FindingKind;
use serde_json::Value;

use crate::config::AnalysisConfig;
use crate::detector::{Ctx, Detector, Judgement, Test};
use crate::sql::{self, Segments};
use andon_store::sql::Row;

/// Renders a template that reads `calls.sql` (each session's calls in order).
pub fn session_calls_query(template: &str, ctx: &Ctx, filter: &str) -> String {
    let mut vars = ctx.vars(filter);
    let calls = sql::render(include_str!("calls.sql"), &vars);
    vars.push(("calls", calls));
    sql::render(template, &vars)
}

/// One side of a comparison, as a detector measures it.
pub trait Metric: Clone + Default {
    fn add(&mut self, other: &Self);
    /// How many samples the comparison rests on.
    fn samples(&self) -> u64;
}

/// Cells of one (service, operation): side, segment values, measurement.
#[derive(Debug, Clone)]
pub struct Subject<M> {
    pub service: String,
    pub operation: String,
    pub cells: Vec<(bool, Vec<Option<String>>, M)>,
}

impl<M: Metric> Subject<M> {
    fn sides(&self, keep: impl Fn(&[Option<String>]) -> bool) -> (M, M) {
        let (mut b, mut c) = (M::default(), M::default());
        for (cur, segs, m) in &self.cells {
            if keep(segs) {
                if *cur { c.add(m) } else { b.add(m) }
            }
        }
        (b, c)
    }
}

/// Groups rows into subjects keyed by (service, operation), cells by side and
/// segment values.
pub fn subjects<M: Metric>(
    rows: &sql::Rows,
    segments: &Segments,
    key: impl Fn(&Row<'_>) -> Option<(String, String)>,
    measure: impl Fn(&Row<'_>) -> M,
) -> Vec<Subject<M>> {
    type Cells<M> = BTreeMap<(bool, Vec<Option<String>>), M>;
    let mut by_key: BTreeMap<(String, String), Cells<M>> = BTreeMap::new();
    for row in rows.iter() {
        let Some(k) = key(&row) else { continue };
        let cur = row.i64("cur").unwrap_or(0) == 1;
        let segs: Vec<Option<String>> = (0..segments.columns.len()).map(|i| row.str(&format!("seg{i}"))).collect();
        by_key.entry(k).or_default().entry((cur, segs)).or_default().add(&measure(&row));
    }
    by_key
        .into_iter()
        .map(|((service, operation), cells)| Subject {
            service,
            operation,
            cells: cells.into_iter().map(|((cur, segs), m)| (cur, segs, m)).collect(),
        })
        .collect()
}

/// Singles that may combine into a conjunction: at most this many, the
/// strongest, so that the search stays small.
const CONJUNCTION_SEEDS: usize = 6;

/// Every test for a subject: overall, then each value of each segment attribute
/// with enough samples on both sides, then conjunctions of two values of
/// different attributes where both values show the effect on their own (an
/// effect confined to `os.type=android` in `cloud.region=eu-west-1` dilutes
/// into both singles, and only the pair explains it).
pub fn segment_tests<M: Metric>(
    kind: FindingKind,
    subject: &Subject<M>,
    ctx: &Ctx,
    judge: impl Fn(&M, &M) -> Option<Judgement>,
) -> Vec<Test> {
    let min = ctx.config.min_samples;
    let enough = |b: &M, c: &M| b.samples() >= min && c.samples() >= min;
    let test = |keep: &dyn Fn(&[Option<String>]) -> bool, segment: BTreeMap<String, Value>| -> Option<Test> {
        let (b, c) = subject.sides(keep);
        if !enough(&b, &c) {
            return None;
        }
        let j = judge(&b, &c)?;
        let complement = if segment.is_empty() {
            None
        } else {
            let (rb, rc) = subject.sides(|s| !keep(s));
            if enough(&rb, &rc) { judge(&rb, &rc) } else { None }
        };
        Some(Test {
            kind,
            service: subject.service.clone(),
            operation: subject.operation.clone(),
            segment,
            judgement: j,
            complement,
            q_value: 1.0,
        })
    };
    let mut out: Vec<Test> = test(&|_| true, BTreeMap::new()).into_iter().collect();
    let mut seeds: Vec<(usize, &String, f64)> = Vec::new();
    for (i, col) in ctx.segments.columns.iter().enumerate() {
        let mut values: Vec<&String> =
            subject.cells.iter().filter(|(cur, _, _)| *cur).filter_map(|(_, s, _)| s[i].as_ref()).collect();
        values.sort();
        values.dedup();
        if values.len() < 2 {
            continue;
        }
        for v in values {
            let segment = BTreeMap::from([(col.attribute.clone(), ctx.segments.json_value(i, v))]);
            let Some(t) = test(&|s| s[i].as_ref() == Some(v), segment) else { continue };
            if t.judgement.material {
                seeds.push((i, v, t.judgement.p_value));
            }
            out.push(t);
        }
    }
    seeds.sort_by(|a, b| a.2.total_cmp(&b.2));
    seeds.truncate(CONJUNCTION_SEEDS);
    for (x, &(i, vi, _)) in seeds.iter().enumerate() {
        for &(j, vj, _) in &seeds[x + 1..] {
            if i == j {
                continue;
            }
            let segment = BTreeMap::from([
                (ctx.segments.columns[i].attribute.clone(), ctx.segments.json_value(i, vi)),
                (ctx.segments.columns[j].attribute.clone(), ctx.segments.json_value(j, vj)),
            ]);
            let keep = |s: &[Option<String>]| s[i].as_ref() == Some(vi) && s[j].as_ref() == Some(vj);
            // A pair that is one of its values under another name (every
            // Android session is mobile) adds nothing.
            let (_, pair) = subject.sides(keep);
            let (_, single_i) = subject.sides(|s| s[i].as_ref() == Some(vi));
            let (_, single_j) = subject.sides(|s| s[j].as_ref() == Some(vj));
            if pair.samples() == single_i.samples() || pair.samples() == single_j.samples() {
                continue;
            }
            out.extend(test(&keep, segment));
        }
    }
    out
}

/// The p-value at which another value of a segment's attribute counts as
/// showing the effect too (with a material effect at least half the size).
const SIBLING_SHOWS_EFFECT: f64 = 0.05;

/// A finding before enrichment: where, what, and the test that carries it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub test: Test,
}

/// Picks, per subject, the narrowest segment that explains the effect: a value
/// whose own test is significant while the rest of the data shows no effect.
/// With none, the overall test if it is significant; with neither, nothing.
pub fn choose_segments(tests: Vec<Test>, fdr: f64) -> Vec<Candidate> {
    let mut by_subject: BTreeMap<(FindingKind, String, String), Vec<Test>> = BTreeMap::new();
    for t in tests {
        by_subject.entry((t.kind, t.service.clone(), t.operation.clone())).or_default().push(t);
    }
    let mut out = Vec::new();
    for (_, tests) in by_subject {
        let significant = |t: &Test| t.judgement.material && t.q_value <= fdr;
        let overall = tests.iter().find(|t| t.segment.is_empty() && significant(t));
        // The rest of the data shows none, and no other value of one of its
        // attributes shows an effect of comparable size (iOS, when Android is
        // the candidate and every mobile client is hit): the rest's test
        // dilutes such a sibling in everything else (every desktop session)
        // and can miss it. The fewest sessions; among equals, the fewest
        // attributes.
        let sibling_shows = |t: &Test| {
            tests.iter().any(|u| {
                u.segment.len() == 1
                    && u.segment.iter().all(|(a, v)| t.segment.get(a).is_some_and(|mine| mine != v))
                    && u.judgement.material
                    && u.judgement.p_value <= SIBLING_SHOWS_EFFECT
                    && u.judgement.size >= 0.5 * t.judgement.size
            })
        };
        let explaining = tests
            .iter()
            .filter(|t| !t.segment.is_empty() && significant(t))
            .filter(|t| t.complement.as_ref().is_some_and(|c| !(c.material && c.p_value <= fdr)))
            .filter(|t| !sibling_shows(t))
            .min_by_key(|t| (t.judgement.current_samples, t.segment.len()));
        let chosen = match (explaining, overall) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(t),
            (None, None) => tests.iter().filter(|t| significant(t)).min_by(|a, b| a.q_value.total_cmp(&b.q_value)),
        };
        if let Some(t) = chosen {
            out.push(Candidate { test: t.clone() });
        }
    }
    out
}

pub(crate) fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Rounds for display in JSON: 4 significant decimals is plenty for a person.
pub(crate) fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Judges a rate that should not rise: `x/n` baseline against current.
pub(crate) fn judge_rate(
    cfg: &AnalysisConfig,
    (xb, nb): (u64, u64),
    (xc, nc): (u64, u64),
    names: (&str, &str, &str),
) -> Option<Judgement> {
    let t = andon_model::statistics::proportion_greater(xb, nb, xc, nc)?;
    let delta = t.current - t.baseline;
    let material = delta >= cfg.rate_min_delta && t.current >= cfg.rate_min_ratio * t.baseline && xc >= 5;
    let (count, total, rate) = names;
    let side = |x: u64, n: u64, r: f64| {
        BTreeMap::from([
            (count.to_owned(), Value::from(x)),
            (total.to_owned(), Value::from(n)),
            (rate.to_owned(), num(round(r, 5))),
        ])
    };
    Some(Judgement {
        p_value: t.p_value,
        effect: delta,
        size: delta,
        ci: None,
        test: t.test,
        material,
        baseline: side(xb, nb, t.baseline),
        current: side(xc, nc, t.current),
        details: BTreeMap::new(),
        current_samples: nc,
    })
}
