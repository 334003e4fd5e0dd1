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

/// Renders a session detector's query: `over_sessions` when the pass reads
/// `sessions`, else `template`, which reads `calls.sql` (each session's calls
/// in order) from spans.
pub fn session_calls_query(template: &str, over_sessions: &str, ctx: &Ctx, filter: &str) -> String {
    if ctx.sessioned() {
        return sql::render(over_sessions, &ctx.session_vars(filter));
    }
    let mut vars = ctx.vars(filter);
    let calls = sql::render(include_str!("calls.sql"), &vars);
    vars.push(("calls", calls));
    sql::render(template, &vars)
}

/// Periods of the current window's length, before the baseline's end, that
/// show how steady a measure is from one window to the next (more when the
/// baseline is longer).
pub const HISTORY_WINDOWS: i64 = 8;

/// The fewest periods, each with `segment_min_samples` samples, that estimate
/// the window-to-window variation; with fewer, a change is judged against the
/// baseline alone.
pub const MIN_PERIODS: usize = 4;

/// How far back before the baseline's end the window-to-window variation is
/// read: [`HISTORY_WINDOWS`] windows, or the baseline when it is longer.
pub fn history_look(ctx: &Ctx) -> chrono::Duration {
    let window = (ctx.end - ctx.split).num_seconds().max(1);
    (ctx.baseline_end - ctx.baseline_start).max(chrono::Duration::seconds(window * HISTORY_WINDOWS))
}

/// A pass's context for a detector's unit tests: every window starts and ends
/// now, so only the configuration and the segments matter.
#[cfg(test)]
pub(crate) fn test_ctx(config: AnalysisConfig) -> Ctx {
    #[allow(clippy::unwrap_used)]
    let segments = Segments::new(&config.segments).unwrap();
    let t = chrono::Utc::now();
    Ctx {
        baseline_start: t,
        baseline_end: t,
        split: t,
        end: t,
        segments,
        config,
        lean: false,
        rollups: false,
        sessions: false,
        settled: None,
    }
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
    let (min, min_segment) = (ctx.config.min_samples, ctx.config.segment_min_samples);
    let enough = |b: &M, c: &M| b.samples() >= min_segment && c.samples() >= min_segment;
    let test = |keep: &dyn Fn(&[Option<String>]) -> bool, segment: BTreeMap<String, Value>| -> Option<Test> {
        let (b, c) = subject.sides(keep);
        if !enough(&b, &c) || segment.is_empty() && (b.samples() < min || c.samples() < min) {
            return None;
        }
        let follow_up = b.samples() < min || c.samples() < min;
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
            follow_up,
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
            if t.judgement.material && !t.follow_up {
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
            let Some(t) = test(&keep, segment) else { continue };
            // A pair explains an effect only when neither of its values shows
            // it outside the pair: a fault on every mobile client also shows
            // in mobile ∧ us-east-2, whose rest (desktop, and mobile elsewhere)
            // dilutes it, but mobile elsewhere shows it whole.
            let outside = |a: usize, va: &String, b: usize, vb: &String| {
                let (rb, rc) = subject.sides(|s| s[a].as_ref() == Some(va) && s[b].as_ref() != Some(vb));
                enough(&rb, &rc).then(|| judge(&rb, &rc)).flatten().is_some_and(|r| shows_as_much(&r, &t.judgement))
            };
            if outside(i, vi, j, vj) || outside(j, vj, i, vi) {
                continue;
            }
            out.push(t);
        }
    }
    out
}

/// The p-value at which another value of a segment's attribute counts as
/// showing the effect too (with a material effect at least half the size).
const SIBLING_SHOWS_EFFECT: f64 = 0.05;

/// `other` shows an effect comparable to `t`'s: material, nominally
/// significant, and at least half the size.
fn shows_as_much(other: &Judgement, t: &Judgement) -> bool {
    other.material && other.p_value <= SIBLING_SHOWS_EFFECT && other.size >= 0.5 * t.size
}

/// A detail a test may carry: `false` when its effect is probably past the
/// detector's floor but its interval reaches below it. Such a test is not
/// reported, but still counts as showing the effect when it is the rest of
/// the data or a sibling.
pub const CLEARS_FLOOR: &str = "interval_clears_floor";

fn clears_floor(j: &Judgement) -> bool {
    j.details.get(CLEARS_FLOOR).and_then(Value::as_bool).unwrap_or(true)
}

/// A finding before enrichment: where, what, and the test that carries it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub test: Test,
}

/// Another value of one of `t`'s attributes shows an effect of comparable
/// size (iOS, when Android is the candidate and every mobile client is hit):
/// the rest's test dilutes such a sibling in everything else (every desktop
/// session) and can miss it.
fn sibling_shows(pool: &[&Test], t: &Test) -> bool {
    pool.iter().any(|u| {
        u.segment.len() == 1
            && u.segment.iter().all(|(a, v)| t.segment.get(a).is_some_and(|mine| mine != v))
            && shows_as_much(&u.judgement, &t.judgement)
    })
}

/// The rest of the data (outside `t`'s segment) shows no effect: none that
/// is significant, and none of comparable size that is nominally so. A rest
/// with fewer sessions (mobile, beside desktop) can miss significance early in
/// a problem while plainly showing the same effect; that is not "none".
fn rest_shows_none(t: &Test, fdr: f64) -> bool {
    t.complement.as_ref().is_some_and(|c| {
        let significant = c.material && c.p_value <= fdr;
        !significant && !shows_as_much(c, &t.judgement)
    })
}

/// Picks, per subject, the narrowest segment that explains the effect: a value
/// whose own test is significant while the rest of the data shows no effect.
/// With none, the overall test if it is significant; with neither, nothing.
///
/// Once discovery has found a problem in a subject, a segment too thin to
/// take part in discovery (a follow-up test) may narrow it: when its own
/// effect is material and significant at `fdr` on its own, the rest of the
/// data shows none, and no sibling value shows one of comparable size. That is
/// a second, confirmatory test within a problem already found (Android's
/// payments, inside the mobile sessions discovery could see), and the
/// candidate keeps the q-value of the discovery.
pub fn choose_segments(tests: &[Test], fdr: f64) -> Vec<Candidate> {
    let mut by_subject: BTreeMap<(FindingKind, &str, &str), Vec<&Test>> = BTreeMap::new();
    for t in tests {
        by_subject.entry((t.kind, &t.service, &t.operation)).or_default().push(t);
    }
    let mut out = Vec::new();
    for (_, all) in by_subject {
        let (tests, thin): (Vec<&Test>, Vec<&Test>) = all.iter().partition(|t| !t.follow_up);
        let significant = |t: &Test| t.judgement.material && clears_floor(&t.judgement) && t.q_value <= fdr;
        let overall = tests.iter().find(|t| t.segment.is_empty() && significant(t));
        // The rest of the data shows none, and no sibling shows a comparable
        // effect. The fewest sessions; among equals, the fewest attributes.
        let explaining = tests
            .iter()
            .filter(|t| !t.segment.is_empty() && significant(t))
            .filter(|t| rest_shows_none(t, fdr))
            .filter(|t| !sibling_shows(&tests, t))
            .min_by_key(|t| (t.judgement.current_samples, t.segment.len()));
        let chosen = match (explaining, overall) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(t),
            (None, None) => tests.iter().filter(|t| significant(t)).min_by(|a, b| a.q_value.total_cmp(&b.q_value)),
        };
        let Some(chosen) = chosen else { continue };
        let narrower = thin
            .iter()
            .filter(|t| t.judgement.material && clears_floor(&t.judgement) && t.judgement.p_value <= fdr)
            .filter(|t| t.judgement.current_samples < chosen.judgement.current_samples)
            .filter(|t| rest_shows_none(t, fdr))
            .filter(|t| !sibling_shows(&all, t))
            .min_by_key(|t| (t.judgement.current_samples, t.segment.len()));
        let test = match narrower {
            Some(t) => Test { q_value: chosen.q_value, ..Test::clone(t) },
            None => Test::clone(chosen),
        };
        out.push(Candidate { test });
    }
    out
}

/// The share of a drop-off's leavers who hit an error at the step, above
/// which the errors explain the drop-off.
const ERRORS_EXPLAIN: f64 = 0.5;

/// Drop-offs that an error regression already found explains: at the step
/// (service and operation) and in the segment of an error-rate candidate, a
/// material fall in conversion whose leavers mostly hit the error there. The
/// error regression established the problem across the pass's tests; the
/// drop-off is what it does to users, tested on its own at `fdr`, so it is
/// reported (with the errors as its cause) even when the pass-wide correction
/// leaves it short, as it does where few sessions take the journey.
pub fn drop_offs_errors_explain(tests: &[Test], chosen: &[Candidate], fdr: f64) -> Vec<Candidate> {
    let explained = |u: &Test| {
        u.kind == FindingKind::DropOff
            && u.judgement.material
            && u.judgement.p_value <= fdr
            && u.judgement.details.get("left_after_error_share").and_then(Value::as_f64).unwrap_or(0.0) > ERRORS_EXPLAIN
    };
    let mut out: Vec<Candidate> = Vec::new();
    for c in chosen.iter().filter(|c| c.test.kind == FindingKind::ErrorRateRegression) {
        let at_step =
            |u: &&Test| u.service == c.test.service && u.operation == c.test.operation && u.segment == c.test.segment;
        let already = |k: &Candidate| {
            k.test.kind == FindingKind::DropOff
                && k.test.service == c.test.service
                && k.test.operation == c.test.operation
        };
        if chosen.iter().chain(&out).any(already) {
            continue;
        }
        if let Some(u) = tests
            .iter()
            .filter(at_step)
            .filter(|u| explained(u))
            .min_by(|a, b| a.judgement.p_value.total_cmp(&b.judgement.p_value))
        {
            out.push(Candidate { test: u.clone() });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, Clone, Copy, Default)]
    struct Rate {
        x: u64,
        n: u64,
    }

    impl Metric for Rate {
        fn add(&mut self, o: &Self) {
            self.x += o.x;
            self.n += o.n;
        }
        fn samples(&self) -> u64 {
            self.n
        }
    }

    fn ctx() -> Ctx {
        test_ctx(AnalysisConfig { segments: vec!["os.type".into()], ..AnalysisConfig::default() })
    }

    /// (failed, calls)
    type Counts = (u64, u64);

    /// Failures per OS: (os, baseline, current).
    fn subject(cells: &[(&str, Counts, Counts)]) -> Subject<Rate> {
        let mut out = Vec::new();
        for (os, b, c) in cells {
            out.push((false, vec![Some((*os).to_owned())], Rate { x: b.0, n: b.1 }));
            out.push((true, vec![Some((*os).to_owned())], Rate { x: c.0, n: c.1 }));
        }
        Subject { service: "reservations".into(), operation: "POST /pay".into(), cells: out }
    }

    fn tests_of(s: &Subject<Rate>) -> Vec<Test> {
        let ctx = ctx();
        let mut tests = segment_tests(FindingKind::ErrorRateRegression, s, &ctx, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        let found: Vec<usize> = (0..tests.len()).filter(|i| !tests[*i].follow_up).collect();
        let q = andon_model::statistics::benjamini_hochberg(
            &found.iter().map(|i| tests[*i].judgement.p_value).collect::<Vec<_>>(),
        );
        for (i, q) in found.into_iter().zip(q) {
            tests[i].q_value = q;
        }
        tests
    }

    #[test]
    fn a_platform_too_thin_for_discovery_narrows_a_problem_discovery_found() {
        // Android holds 25 of 145 calls a side: fewer than `min_samples`, as
        // many as `segment_min_samples`. Half its calls fail; nobody else's do.
        let s = subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 60), (0, 60)), ("windows", (0, 60), (0, 60))]);
        let tests = tests_of(&s);
        let android = tests.iter().find(|t| t.segment.get("os.type") == Some(&Value::from("android"))).unwrap();
        assert!(android.follow_up && android.judgement.material && android.judgement.p_value < 1e-4);
        assert_eq!(android.q_value, 1.0, "left out of the pass-wide correction");
        let overall_q = tests.iter().find(|t| t.segment.is_empty()).unwrap().q_value;
        // Discovery finds the operation failing; the thin segment narrows it.
        let chosen = choose_segments(&tests, 0.01);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment, BTreeMap::from([("os.type".to_owned(), Value::from("android"))]));
        assert_eq!(chosen[0].test.q_value, overall_q, "the discovery's q-value");

        // iOS failing as often: the problem is not Android's alone.
        let both =
            subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 25), (11, 25)), ("windows", (0, 95), (0, 95))]);
        let chosen = choose_segments(&tests_of(&both), 0.01);
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].test.segment.is_empty(), "{:?}", chosen[0].test.segment);

        // Early in a problem, the larger segment (desktop) reaches significance
        // while the smaller rest (mobile) shows the same effect short of it:
        // the problem is everyone's, not desktop's.
        let early =
            subject(&[("windows", (0, 400), (14, 400)), ("android", (0, 60), (3, 60)), ("ios", (0, 60), (2, 60))]);
        let tests = tests_of(&early);
        let windows = tests.iter().find(|t| t.segment.get("os.type") == Some(&Value::from("windows"))).unwrap();
        let rest = windows.complement.as_ref().unwrap();
        assert!(rest.p_value > 0.01 && rest.p_value <= 0.05, "the rest short of significance: {}", rest.p_value);
        let chosen = choose_segments(&tests, 0.01);
        assert_eq!(chosen.len(), 1);
        assert!(chosen[0].test.segment.is_empty(), "{:?}", chosen[0].test.segment);

        // A thin segment never discovers a problem on its own.
        let thin = subject(&[("android", (0, 25), (12, 25)), ("ios", (0, 10), (0, 10))]);
        let tests = tests_of(&thin);
        assert!(!tests.is_empty() && tests.iter().all(|t| t.follow_up));
        assert!(choose_segments(&tests, 0.01).is_empty());
    }

    /// Failures per OS and region: (os, region, baseline, current), judged
    /// and corrected as a pass does.
    fn by_os_and_region(cells: &[(&str, &str, Counts, Counts)]) -> Vec<Candidate> {
        let ctx = test_ctx(AnalysisConfig {
            segments: vec!["os.type".into(), "cloud.region".into()],
            ..AnalysisConfig::default()
        });
        let mut out = Vec::new();
        for (os, region, b, c) in cells {
            let segs = vec![Some((*os).to_owned()), Some((*region).to_owned())];
            out.push((false, segs.clone(), Rate { x: b.0, n: b.1 }));
            out.push((true, segs, Rate { x: c.0, n: c.1 }));
        }
        let s = Subject { service: "reservations".into(), operation: "POST /pay".into(), cells: out };
        let mut tests = segment_tests(FindingKind::ErrorRateRegression, &s, &ctx, |b, c| {
            judge_rate(&ctx.config, (b.x, b.n), (c.x, c.n), ("errors", "requests", "error_rate"))
        });
        let q =
            andon_model::statistics::benjamini_hochberg(&tests.iter().map(|t| t.judgement.p_value).collect::<Vec<_>>());
        for (t, q) in tests.iter_mut().zip(q) {
            t.q_value = q;
        }
        choose_segments(&tests, 0.01)
    }

    #[test]
    fn a_pair_of_values_is_reported_only_when_neither_value_shows_the_effect_outside_it() {
        // Every Android client fails, in both regions. Android in eu-west-1 has
        // fewer calls than Android, and its rest (Android in us-east-2, a few
        // calls, and every iOS call) dilutes the effect short of significance;
        // but Android outside eu-west-1 shows it whole.
        let chosen = by_os_and_region(&[
            ("android", "eu-west-1", (1, 200), (60, 200)),
            ("android", "us-east-2", (0, 30), (9, 30)),
            ("ios", "eu-west-1", (2, 400), (2, 400)),
            ("ios", "us-east-2", (2, 400), (2, 400)),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment, BTreeMap::from([("os.type".to_owned(), Value::from("android"))]));

        // Only Android in eu-west-1 fails: the pair explains it, and neither
        // Android nor eu-west-1 alone does as narrowly.
        let chosen = by_os_and_region(&[
            ("android", "eu-west-1", (1, 200), (60, 200)),
            ("android", "us-east-2", (0, 200), (0, 200)),
            ("ios", "eu-west-1", (2, 400), (2, 400)),
            ("ios", "us-east-2", (2, 400), (2, 400)),
        ]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(
            chosen[0].test.segment,
            BTreeMap::from([
                ("cloud.region".to_owned(), Value::from("eu-west-1")),
                ("os.type".to_owned(), Value::from("android"))
            ])
        );
    }

    #[test]
    fn an_effect_whose_interval_reaches_below_the_floor_is_not_reported() {
        let latency = |clears: bool| {
            let mut t = test(FindingKind::LatencyRegression, "POST /checkout/guest", "ios", 1e-6, 1e-5, 0.0);
            t.follow_up = false;
            t.complement = Some(Judgement { material: false, p_value: 0.5, ..t.judgement.clone() });
            t.judgement.details = BTreeMap::from([(CLEARS_FLOOR.to_owned(), Value::Bool(clears))]);
            t
        };
        assert!(choose_segments(&[latency(false)], 0.01).is_empty(), "probably past the floor, not known to be");
        let chosen = choose_segments(&[latency(true)], 0.01);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test.segment["os.type"], "ios");
        // As the rest of the data, the same test still shows the effect: too
        // few requests to be sure is not evidence of none.
        let mut narrow = latency(true);
        narrow.complement = Some(Judgement { material: true, p_value: 0.02, ..latency(false).judgement });
        assert!(!rest_shows_none(&narrow, 0.01));
    }

    fn test(kind: FindingKind, operation: &str, os: &str, p: f64, q: f64, left_after_error: f64) -> Test {
        Test {
            kind,
            service: "gateway".into(),
            operation: operation.into(),
            segment: BTreeMap::from([("os.type".to_owned(), Value::from(os))]),
            judgement: Judgement {
                p_value: p,
                effect: 0.37,
                size: 0.37,
                ci: None,
                test: "two_proportion_z",
                material: true,
                baseline: BTreeMap::new(),
                current: BTreeMap::new(),
                details: BTreeMap::from([("left_after_error_share".to_owned(), Value::from(left_after_error))]),
                current_samples: 28,
            },
            complement: None,
            q_value: q,
            follow_up: true,
        }
    }

    #[test]
    fn a_drop_off_that_errors_explain_is_reported_though_the_pass_wide_correction_leaves_it_short() {
        let errors = Candidate {
            test: test(FindingKind::ErrorRateRegression, "POST /checkout/pay", "android", 1e-7, 1e-5, 0.0),
        };
        let drop = |os: &str, p: f64, share: f64| test(FindingKind::DropOff, "POST /checkout/pay", os, p, 0.06, share);
        let promoted = |tests: Vec<Test>| drop_offs_errors_explain(&tests, std::slice::from_ref(&errors), 0.01);

        let found = promoted(vec![drop("android", 0.002, 0.8)]);
        assert_eq!(found.len(), 1, "the users leaving after the failures are the finding");
        assert_eq!(found[0].test.kind, FindingKind::DropOff);
        assert_eq!(found[0].test.segment["os.type"], "android");

        assert!(promoted(vec![drop("android", 0.002, 0.3)]).is_empty(), "most who left never saw the error");
        assert!(promoted(vec![drop("android", 0.04, 0.8)]).is_empty(), "not significant even on its own");
        assert!(promoted(vec![drop("ios", 0.002, 0.8)]).is_empty(), "another segment than the errors'");
        let elsewhere = test(FindingKind::DropOff, "POST /checkout/guest", "android", 0.002, 0.06, 0.8);
        assert!(promoted(vec![elsewhere]).is_empty(), "another step than the errors'");
    }
}
