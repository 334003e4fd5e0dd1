//! The validator: what a model wrote, checked claim by claim against the
//! evidence it was given, before anything uses it.
//!
//! A draft is read for the claims a reader would act on:
//!
//! - numbers, with their unit (ms, s, minutes, %, ×) and the rounding the
//!   writing allows (`89.5` may be written `89.5`, `90` or `89`, never `95`);
//!   percentages may restate a rate (0.37 as 37%) or a change between two
//!   numbers of the evidence (15.6 → 89.5 ms as +473%);
//! - clock times and dates, versions, commits (any prefix of 7 or more hex
//!   digits), pull-request numbers, trace and span ids, incident ids;
//! - services and operations: an HTTP route, anything in backticks, a name
//!   written as "the X service", a list of callers, and any service the
//!   system is known to run that the evidence does not involve;
//! - causal claims ("X caused Y", "Y because of X", "due to", "led to"): the
//!   cause must be a suspect or the linked change, the effect what the
//!   signature says happened, in that direction; or the sentence restates an
//!   explanation the evidence itself gives (why a gate missed it).
//!
//! Each claim without support is a [`Violation`] with the words that make it.
//! The same checks serve any agent's answer: [`Evidence`] is built from JSON
//! (an incident, or tool results), with the roles of cause and effect set by
//! whoever knows them.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use andon_model::{Incident, Violation};
use chrono::{DateTime, Timelike, Utc};
use regex::Regex;
use serde_json::Value;

#[allow(clippy::expect_used)]
fn re(s: &str) -> Regex {
    // Constant patterns, compiled by the unit tests.
    Regex::new(s).expect("validator pattern compiles")
}

static HTTP_OP: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(/[A-Za-z0-9_\-./{}:~%]*[A-Za-z0-9_}/])"));
static BACKTICK: LazyLock<Regex> = LazyLock::new(|| re(r"`([^`\n]{1,200})`"));
static TIME: LazyLock<Regex> = LazyLock::new(|| re(r"\b([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?\b"));
static DATE: LazyLock<Regex> = LazyLock::new(|| re(r"\b(\d{4})-(\d{2})-(\d{2})\b"));
static VERSION: LazyLock<Regex> = LazyLock::new(|| re(r"\bv?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?(?:\+[0-9A-Za-z.]+)?)"));
static HEX: LazyLock<Regex> = LazyLock::new(|| re(r"\b[0-9a-fA-F]{7,64}\b"));
static PR: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?:\bPR\s*#?\u{2060}?\s*|\bpull request\s*#?\u{2060}?\s*|#\u{2060}?)(\d+)\b"));
static ID: LazyLock<Regex> = LazyLock::new(|| re(r"\b(inc|fnd|tkt|run|inv|chg)-[0-9a-f]{6,}\b"));
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)([+\-−]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s*(?:(?:milliseconds?|millis|ms|µs|us|microseconds?|seconds?|secs?|s|minutes?|mins?|min|hours?|hrs?|h|percentage points?|pp|percent|x|times|fold)\b|%|×))?",
    )
});
const NUMBER_WORDS: &str = "zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|\
fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|\
million|billion";
/// A number written in words ("nine thousand", "forty-two"), with its unit
/// as [`NUMBER`] reads one.
static SPELLED: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i)\b((?:{NUMBER_WORDS})(?:(?:\s+and\s+|[\s-]+)(?:{NUMBER_WORDS}))*)\b(\s*(?:(?:milliseconds?|millis|ms|microseconds?|seconds?|secs?|minutes?|mins?|hours?|hrs?|percentage points?|percent|times|fold)\b|%))?"
    ))
});
/// Words that are a ratio: "twice as slow", "the p95 doubled".
static MULTIPLE: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\b(twice|thrice|doubled|tripled|quadrupled)\b"));
static SERVICE_WORD: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(?:the\s+)?`?([a-z][a-z0-9_.-]*)`?\s+(?:service|microservice|backend)\b"));
static CALLERS: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(?:callers?|callees?|upstreams?|downstreams?|dependents?)\b(?:\s+(?:such as|like|including|are|were|is))?\s*:?\s+",
    )
});
static WORD: LazyLock<Regex> = LazyLock::new(|| re(r"[A-Za-z0-9][A-Za-z0-9_.\-/{}]*"));

/// Markers whose cause comes after them ("Y because of X").
const BACKWARD: &[&str] = &[
    "was caused by",
    "is caused by",
    "are caused by",
    "were caused by",
    "caused by",
    "because of",
    "because",
    "due to",
    "as a result of",
    "the result of",
    "a result of",
    "owing to",
    "stems from",
    "stemmed from",
    "traced to",
    "attributable to",
    "driven by",
    "triggered by",
    "introduced by",
    "brought on by",
    "comes from",
    "came from",
    "resulted from",
    "results from",
    "resulting from",
];

/// Markers whose cause comes before them ("X caused Y").
const FORWARD: &[&str] = &[
    "is the root cause of",
    "was the root cause of",
    "is the cause of",
    "was the cause of",
    "is responsible for",
    "was responsible for",
    "are responsible for",
    "were responsible for",
    "caused",
    "causes",
    "causing",
    "led to",
    "leads to",
    "leading to",
    "resulted in",
    "results in",
    "resulting in",
    "triggered",
    "triggers",
    "introduced",
    "drove",
    "drives",
    "broke",
    "slowed down",
];

/// Words that refer to the linked change without naming it.
const CHANGE_WORDS: &[&str] =
    &["release", "deploy", "deployment", "rollout", "rolled", "change", "version", "commit", "pr", "pull", "upgrade"];

/// Words that say the trouble was failures.
const ERROR_WORDS: &[&str] =
    &["error", "errors", "fail", "fails", "failed", "failing", "failure", "failures", "5xx", "exception", "exceptions"];

/// Words that say the trouble was time.
const LATENCY_WORDS: &[&str] = &["latency", "slow", "slower", "slowdown", "p95", "p99", "p50", "timeouts", "timeout"];

/// Words a causal sentence may use without the evidence containing them:
/// they name no mechanism.
const GENERIC: &[&str] = &[
    "code",
    "version",
    "versions",
    "release",
    "released",
    "update",
    "updated",
    "rollout",
    "deploy",
    "deployed",
    "deployment",
    "shipped",
    "merged",
    "service",
    "services",
    "request",
    "requests",
    "call",
    "calls",
    "latency",
    "error",
    "errors",
    "failure",
    "failures",
    "failing",
    "slow",
    "slower",
    "slowdown",
    "slowness",
    "time",
    "regression",
    "regressed",
    "traffic",
    "users",
    "user",
    "increase",
    "increased",
    "rise",
    "rose",
    "grew",
    "growth",
    "spike",
    "jump",
    "jumped",
    "drop",
    "dropped",
    "percent",
    "percentage",
    "point",
    "points",
    "rate",
    "endpoint",
    "route",
    "operation",
    "incident",
    "problem",
    "issue",
    "trouble",
    "degradation",
    "itself",
    "work",
    "likely",
    "most",
    "directly",
    "clearly",
    "entirely",
    "mostly",
    "handler",
    "went",
    "began",
    "started",
    "since",
    "after",
    "before",
    "same",
    "minute",
    "minutes",
    "seconds",
    "hour",
    "hours",
    "each",
    "every",
    "production",
    "change",
    "changes",
];

/// A crude stem: a word without a plural `s`, cut to 6 letters, so that
/// `evaluates` meets `evaluate` and `deployed` meets `deployment`.
fn stem(w: &str) -> String {
    let w = w.to_ascii_lowercase();
    let w = if w.len() > 4 { w.trim_end_matches('s') } else { w.as_str() };
    w.chars().take(6).collect()
}

/// Words that never name a service in a list of callers.
const STOP: &[&str] = &[
    "a",
    "all",
    "also",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "both",
    "but",
    "by",
    "each",
    "for",
    "from",
    "in",
    "is",
    "it",
    "its",
    "of",
    "on",
    "only",
    "or",
    "other",
    "so",
    "such",
    "that",
    "the",
    "their",
    "them",
    "then",
    "these",
    "they",
    "this",
    "those",
    "to",
    "upstream",
    "downstream",
    "wait",
    "waiting",
    "was",
    "were",
    "which",
    "who",
    "whose",
    "with",
    "slow",
    "slower",
    "see",
    "saw",
    "show",
    "shows",
    "time",
    "times",
    "more",
    "most",
    "none",
    "no",
    "not",
    "calls",
    "call",
    "requests",
    "are,",
];

/// How a number was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    None,
    Ms,
    Seconds,
    Minutes,
    Hours,
    Percent,
    Points,
    Times,
    Micros,
}

fn unit_of(s: &str) -> Unit {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "" => Unit::None,
        "ms" | "millis" | "millisecond" | "milliseconds" => Unit::Ms,
        "µs" | "us" | "microsecond" | "microseconds" => Unit::Micros,
        "s" | "sec" | "secs" | "second" | "seconds" => Unit::Seconds,
        "min" | "mins" | "minute" | "minutes" => Unit::Minutes,
        "h" | "hr" | "hrs" | "hour" | "hours" => Unit::Hours,
        "%" | "percent" => Unit::Percent,
        "pp" | "percentage point" | "percentage points" => Unit::Points,
        _ => Unit::Times,
    }
}

/// A number as written: its value, the digits after the point, and its unit.
#[derive(Debug, Clone, Copy)]
struct Quantity {
    value: f64,
    decimals: i32,
    unit: Unit,
}

/// The numbers in `text`, skipping digits that are part of a word (`p95`,
/// `v1`, `us-east-1`, `5xx`) or of a route.
fn quantities(text: &str) -> Vec<(std::ops::Range<usize>, Quantity)> {
    let mut out = Vec::new();
    for c in NUMBER.captures_iter(text) {
        let (Some(all), Some(int)) = (c.get(0), c.get(2)) else { continue };
        let before = text[..int.start()].chars().next_back();
        let sign = c.get(1).map(|m| m.as_str()).unwrap_or("");
        if let Some(b) = before
            && sign.is_empty()
            && (b.is_alphanumeric() || matches!(b, '_' | '/' | '.' | '-' | '#' | '{' | '\u{2060}'))
        {
            continue;
        }
        if !sign.is_empty()
            && let Some(b) = text[..all.start()].chars().next_back()
            && (b.is_alphanumeric() || b == '_' || b == '/' || b == '.')
        {
            continue;
        }
        let unit_text = c.get(4).map(|m| m.as_str()).unwrap_or("");
        let end = all.end();
        let after = text[end..].chars().next();
        if let Some(a) = after
            && (a.is_alphanumeric() || a == '_')
        {
            // `5xx`, `3rd`, `2fa`: a number inside a word. A unit written
            // without a space and followed by letters is no unit either.
            continue;
        }
        if let Some(a) = after
            && a == '.'
            && text[end + 1..].chars().next().is_some_and(|n| n.is_ascii_digit())
        {
            continue; // 7.4.0: a version, read elsewhere
        }
        let digits: String = int.as_str().chars().filter(|c| c.is_ascii_digit()).collect();
        let frac = c.get(3).map(|m| m.as_str()).unwrap_or("");
        let Ok(value) = format!("{digits}.{}", if frac.is_empty() { "0" } else { frac }).parse::<f64>() else {
            continue;
        };
        let value = if matches!(sign, "-" | "−") { -value } else { value };
        out.push((all.start()..end, Quantity { value, decimals: frac.len() as i32, unit: unit_of(unit_text) }));
    }
    out.extend(spelled(text));
    out
}

/// The value of a number in words: "two hundred and five" is 205.
fn spelled_value(words: &str) -> Option<f64> {
    let (mut total, mut current) = (0.0, 0.0);
    for w in words.to_ascii_lowercase().split(|c: char| c.is_whitespace() || c == '-').filter(|w| !w.is_empty()) {
        let small = NUMBER_WORDS.split('|').position(|n| n == w);
        match (w, small) {
            ("and", _) => {}
            ("hundred", _) => current = if current == 0.0 { 100.0 } else { current * 100.0 },
            ("thousand" | "million" | "billion", _) => {
                let m = match w {
                    "thousand" => 1e3,
                    "million" => 1e6,
                    _ => 1e9,
                };
                total += if current == 0.0 { m } else { current * m };
                current = 0.0;
            }
            (_, Some(i)) if i < 20 => current += i as f64,
            (_, Some(i)) if i < 28 => current += (i as f64 - 18.0) * 10.0,
            _ => return None,
        }
    }
    Some(total + current)
}

/// Numbers written in words. A bare one below ten ("two callers", "one in
/// eight") counts things the prose names rather than claims a measurement,
/// and is left alone; with a unit, or from ten up, it is checked like digits.
fn spelled(text: &str) -> Vec<(std::ops::Range<usize>, Quantity)> {
    let mut out = Vec::new();
    for c in SPELLED.captures_iter(text) {
        let (Some(all), Some(words)) = (c.get(0), c.get(1)) else { continue };
        let Some(value) = spelled_value(words.as_str()) else { continue };
        let unit = unit_of(c.get(2).map(|m| m.as_str()).unwrap_or(""));
        if unit == Unit::None && value < 10.0 {
            continue;
        }
        out.push((all.start()..all.end(), Quantity { value, decimals: 0, unit }));
    }
    for m in MULTIPLE.find_iter(text) {
        let value = match m.as_str().to_ascii_lowercase().as_str() {
            "twice" | "doubled" => 2.0,
            "thrice" | "tripled" => 3.0,
            _ => 4.0,
        };
        out.push((m.start()..m.end(), Quantity { value, decimals: 0, unit: Unit::Times }));
    }
    out
}

fn lower_words(s: &str) -> Vec<String> {
    WORD.find_iter(s).map(|m| m.as_str().trim_end_matches(['.', '-', '/']).to_ascii_lowercase()).collect()
}

/// What a draft may claim: every number, time, id and name of the evidence,
/// what it may call a cause and what an effect.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Numbers without a known unit, as given and as written in its text.
    numbers: Vec<f64>,
    /// Durations, in milliseconds.
    ms: Vec<f64>,
    /// Values a draft may write as percentages (rates as 0–100, changes).
    percents: Vec<f64>,
    /// Differences in percentage points.
    points: Vec<f64>,
    /// Ratios ("6×").
    ratios: Vec<f64>,
    /// Durations between two times of the evidence, in minutes.
    minutes: Vec<f64>,
    times: BTreeSet<String>,
    dates: BTreeSet<String>,
    versions: BTreeSet<String>,
    hexes: BTreeSet<String>,
    prs: BTreeSet<u64>,
    ids: BTreeSet<String>,
    operations: BTreeSet<String>,
    services: BTreeSet<String>,
    /// Every string of the evidence, lowercased.
    texts: Vec<String>,
    /// Every word of the evidence, lowercased.
    words: BTreeSet<String>,
    /// The stems of the evidence's words and of its JSON keys.
    stems: BTreeSet<String>,
    /// Services of the system the evidence does not involve.
    others: BTreeSet<String>,
    /// Names a causal claim may give as the cause (suspects, the change).
    causes: BTreeSet<String>,
    /// Names it may give as the effect (the signature, its callers).
    effects: BTreeSet<String>,
    /// Whether a change is linked (the cause may be "the release").
    change: bool,
    /// What the trouble was: `Some(true)` latency, `Some(false)` failures.
    latency: Option<bool>,
    /// Explanations the evidence itself gives, as word sets.
    explanations: Vec<BTreeSet<String>>,
    /// Whether the evidence puts the lost time on the network (its top
    /// suspect's cause), not inside a service.
    network: bool,
}

impl Evidence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything an incident's report says, but its narrative, the steps'
    /// SQL, its series and the similar incidents' contents (their ids stay):
    /// a number from another incident is not evidence for this one.
    pub fn of_incident(inc: &Incident) -> Self {
        let mut e = Self::new();
        e.add_incident(inc);
        e
    }

    /// Everything a finding says but its SQL and its wording templates: what
    /// a finding's ticket may claim. The cause it may name is where its
    /// trouble starts (when that is not the operation itself) and its linked
    /// change; its effects are its own operation and its linked symptoms.
    pub fn of_finding(f: &andon_model::Finding) -> Self {
        let mut e = Self::new();
        e.add_json(&finding_evidence_json(f));
        let mut pairs: Vec<(f64, f64, bool)> = Vec::new();
        for (k, b) in &f.baseline {
            if let (Some(b), Some(c)) = (b.as_f64(), f.current.get(k).and_then(Value::as_f64)) {
                if k.ends_with("_ms") {
                    e.ms.extend([b, c]);
                }
                pairs.push((b, c, !(k.ends_with("_ms") || k.ends_with("_us") || k.ends_with("_ns"))));
            }
        }
        e.allow_effect(&f.service);
        e.allow_effect(&f.operation);
        for l in &f.evidence.linked {
            e.allow_effect(&l.service);
            e.allow_effect(&l.operation);
        }
        e.latency = match f.trouble {
            andon_model::Trouble::Latency => Some(true),
            andon_model::Trouble::Failures => Some(false),
            _ => None,
        };
        if let Some(c) = &f.evidence.cause {
            e.allow_cause(&c.service);
            e.allow_cause(&c.operation);
        }
        let mut spans = vec![
            (f.window.end, f.window.start),
            (f.baseline_window.end, f.baseline_window.start),
            (f.window.start, f.baseline_window.end),
        ];
        if let Some(o) = f.evidence.onset {
            spans.push((f.window.end, o));
        }
        if let Some(c) = &f.change {
            e.allow_change(&c.service, &c.version, c.commit.as_deref(), c.pr);
            if let Some(t) = c.first_seen {
                spans.push((f.window.end, t));
                if let Some(o) = f.evidence.onset {
                    spans.push((o, t));
                }
            }
        }
        e.derive_numbers(pairs, spans);
        e
    }

    /// Adds what an incident's report says, with its causes and effects.
    pub fn add_incident(&mut self, inc: &Incident) {
        for s in &inc.similar_incidents {
            self.ids.insert(s.id.clone());
        }
        self.add_json(&evidence_json(inc));
        self.derive_from(inc);
    }

    /// Adds every number, string and time of `v`.
    pub fn add_json(&mut self, v: &Value) {
        self.walk(None, v);
    }

    /// Adds what `text` says (its numbers, times, ids and names).
    pub fn add_text(&mut self, text: &str) {
        self.string(None, text);
    }

    /// Services of the system beyond the evidence: naming one of these is
    /// naming something the evidence does not involve.
    pub fn with_known_services(mut self, services: impl IntoIterator<Item = String>) -> Self {
        for s in services {
            let s = s.to_ascii_lowercase();
            if !self.services.contains(&s) {
                self.others.insert(s);
            }
        }
        self
    }

    /// Names a causal claim may give as its cause.
    pub fn allow_cause(&mut self, name: &str) {
        if !name.is_empty() {
            self.causes.insert(name.to_ascii_lowercase());
        }
    }

    /// A linked change: a causal claim may blame it by its service,
    /// version, commit or pull request.
    fn allow_change(&mut self, service: &str, version: &str, commit: Option<&str>, pr: Option<u64>) {
        self.change = true;
        self.allow_cause(service);
        self.allow_cause(version);
        if let Some(commit) = commit {
            self.allow_cause(commit);
        }
        if let Some(pr) = pr {
            self.prs.insert(pr);
            self.allow_cause(&format!("#{pr}"));
        }
    }

    /// Names a causal claim may give as its effect.
    pub fn allow_effect(&mut self, name: &str) {
        if !name.is_empty() {
            self.effects.insert(name.to_ascii_lowercase());
        }
    }

    /// Adds a service the evidence involves.
    pub fn add_service(&mut self, name: &str) {
        let n = name.to_ascii_lowercase();
        self.others.remove(&n);
        self.words.insert(n.clone());
        self.services.insert(n);
    }

    fn walk(&mut self, key: Option<&str>, v: &Value) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    self.number(key, f);
                }
            }
            Value::String(s) => self.string(key, s),
            Value::Array(a) => {
                self.numbers.push(a.len() as f64);
                for x in a {
                    self.walk(key, x);
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    self.walk(Some(k), x);
                }
            }
            _ => {}
        }
    }

    fn number(&mut self, key: Option<&str>, f: f64) {
        let key = key.unwrap_or("");
        if key.ends_with("_ms") || key == "ms" {
            self.ms.push(f);
        }
        if key.ends_with("_secs") || key.ends_with("_s") {
            self.ms.push(f * 1000.0);
        }
        if key.ends_with("_us") {
            self.ms.push(f / 1e3);
        }
        if key.ends_with("_ns") {
            self.ms.push(f / 1e6);
        }
        if (0.0..=1.0).contains(&f) {
            self.percents.push(f * 100.0);
        }
        self.numbers.push(f);
    }

    fn string(&mut self, key: Option<&str>, s: &str) {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            self.time(t.with_timezone(&Utc));
        }
        let lower = s.to_ascii_lowercase();
        for w in lower_words(s) {
            for part in w.split(['-', '_', '/', '.']) {
                self.stems.insert(stem(part));
            }
            self.words.insert(w);
        }
        for part in key.unwrap_or("").split('_') {
            self.stems.insert(stem(part));
        }
        match key {
            Some("service") => self.add_service(s),
            Some("operation") | Some("observed_at") => {
                self.operations.insert(s.to_owned());
            }
            Some("version" | "previous_version") => {
                self.versions.insert(s.trim_start_matches('v').to_owned());
            }
            Some("commit") => {
                self.hexes.insert(lower.clone());
            }
            _ => {}
        }
        for c in HTTP_OP.captures_iter(s) {
            self.operations.insert(format!("{} {}", &c[1], &c[2]));
        }
        for c in VERSION.captures_iter(s) {
            self.versions.insert(c[1].to_owned());
        }
        for m in HEX.find_iter(s) {
            self.hexes.insert(m.as_str().to_ascii_lowercase());
        }
        for c in PR.captures_iter(s) {
            if let Ok(n) = c[1].parse() {
                self.prs.insert(n);
            }
        }
        for m in ID.find_iter(s) {
            self.ids.insert(m.as_str().to_owned());
        }
        for c in TIME.captures_iter(s) {
            self.times.insert(format!("{:02}:{}", c[1].parse::<u32>().unwrap_or(0), &c[2]));
        }
        for c in DATE.captures_iter(s) {
            self.dates.insert(c[0].to_owned());
        }
        for (_, q) in quantities(&masked(s)) {
            self.quantity(q);
        }
        if s.split_whitespace().count() >= 5 {
            self.explanations.push(content_words(s));
        }
        self.texts.push(lower);
    }

    fn quantity(&mut self, q: Quantity) {
        let v = q.value.abs();
        match q.unit {
            Unit::Ms => self.ms.push(v),
            Unit::Micros => self.ms.push(v / 1000.0),
            Unit::Seconds => self.ms.push(v * 1000.0),
            Unit::Minutes => self.minutes.push(v),
            Unit::Hours => self.minutes.push(v * 60.0),
            Unit::Percent => self.percents.push(v),
            Unit::Points => self.points.push(v),
            Unit::Times => self.ratios.push(v),
            Unit::None => self.numbers.push(v),
        }
    }

    fn time(&mut self, t: DateTime<Utc>) {
        self.times.insert(t.format("%H:%M").to_string());
        self.times.insert(t.format("%H:%M:%S").to_string());
        if t.second() >= 30 {
            self.times.insert((t + chrono::Duration::seconds(30)).format("%H:%M").to_string());
        }
        self.dates.insert(t.format("%Y-%m-%d").to_string());
    }

    /// The numbers a reader computes from the evidence: changes between a
    /// baseline and an incident value, minutes between its times, the roles
    /// of its names.
    fn derive_from(&mut self, inc: &Incident) {
        let mut pairs: Vec<(f64, f64, bool)> = Vec::new();
        if let Some(sig) = &inc.signature {
            let ms = sig.metric.ends_with("_ms");
            if ms {
                self.ms.extend([sig.baseline_value, sig.incident_value]);
            }
            pairs.push((sig.baseline_value, sig.incident_value, !ms));
            self.allow_effect(&sig.service);
            self.allow_effect(&sig.operation);
            if let Some(o) = &sig.observed_at {
                self.allow_effect(o);
            }
            // A release changed what users see, neither time nor failures.
            self.latency = match sig.kind {
                andon_model::FindingKind::ErrorRateRegression => Some(false),
                k if k == crate::onset::RELEASE => None,
                _ => Some(true),
            };
        }
        let top = inc.suspects.first().map(|s| s.score).unwrap_or(0.0);
        self.network = inc.suspects.first().is_some_and(|s| s.cause == andon_model::SuspectCause::Network);
        for (i, s) in inc.suspects.iter().enumerate() {
            // The suspects the RCA blames: the first, and any that explains
            // a share of the trouble near it. A minor suspect is evidence,
            // not a cause.
            if i == 0 || s.score >= 0.25 * top.max(f64::EPSILON) && s.score >= 0.1 {
                self.allow_cause(&s.service);
                self.allow_cause(&s.operation);
                if let Some(v) = &s.version {
                    self.allow_cause(v);
                }
            }
            for (k, base) in &s.numbers {
                if let Some(stem) = k.strip_suffix("_baseline")
                    && let Some(cur) = s.numbers.get(&format!("{stem}_incident"))
                {
                    pairs.push((*base, *cur, !stem.ends_with("ms")));
                }
            }
        }
        if let Some(Value::Object(r)) = inc.details.get("requests") {
            for m in r.values() {
                if let (Some(b), Some(i)) =
                    (m.get("baseline").and_then(Value::as_f64), m.get("incident").and_then(Value::as_f64))
                {
                    pairs.push((b, i, true));
                }
            }
        }
        if let Some(Value::Array(callers)) = inc.details.get("waiting_callers") {
            for c in callers.iter().filter_map(Value::as_str) {
                self.add_service(c);
                self.allow_effect(c);
            }
        }
        // Durations a reader states: the windows' lengths, and how far apart
        // the onset, the deploy and the window's end lie.
        let mut spans = vec![
            (inc.window.end, inc.window.start),
            (inc.baseline_window.end, inc.baseline_window.start),
            (inc.window.start, inc.baseline_window.end),
        ];
        let onset = inc.signature.as_ref().and_then(|s| s.onset);
        if let Some(o) = onset {
            spans.push((inc.window.end, o));
        }
        if let Some(c) = &inc.change {
            let e = &c.event;
            spans.push((inc.window.end, e.deployed_at));
            if let Some(o) = onset {
                spans.push((o, e.deployed_at));
            }
            self.allow_change(&e.service, &e.version, e.commit.as_deref(), e.pr);
        }
        self.derive_numbers(pairs, spans);
    }

    /// The numbers a reader derives: changes between a baseline and a
    /// current value (as percentages, ratios, differences and points), and
    /// the minutes between two times.
    fn derive_numbers(&mut self, pairs: Vec<(f64, f64, bool)>, spans: Vec<(DateTime<Utc>, DateTime<Utc>)>) {
        for (b, i, rate) in pairs {
            if b.abs() > f64::EPSILON {
                self.percents.push(((i - b) / b * 100.0).abs());
                self.ratios.push(i / b);
            }
            self.ms.push((i - b).abs());
            self.numbers.push((i - b).abs());
            if rate {
                self.points.push(((i - b) * 100.0).abs());
            }
        }
        for (a, b) in spans {
            let secs = (a - b).num_seconds().abs() as f64;
            self.minutes.extend([(secs / 60.0).floor(), (secs / 60.0).round(), secs / 60.0]);
            self.ms.push(secs * 1000.0);
        }
    }

    /// Every claim of `draft` the evidence does not support.
    pub fn check(&self, draft: &str) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut v = |text: &str, reason: String| {
            let text = text.trim().to_owned();
            if !out.iter().any(|x: &Violation| x.text == text && x.reason == reason) {
                out.push(Violation { text, reason });
            }
        };
        for c in BACKTICK.captures_iter(draft) {
            let inner = c[1].trim();
            if !self.knows(inner) {
                v(&c[0], format!("`{inner}` does not appear in the evidence"));
            }
        }
        for c in HTTP_OP.captures_iter(draft) {
            let op = format!("{} {}", &c[1], c[2].trim_end_matches(['.', ':']));
            if !self.operations.contains(&op) {
                v(&c[0], format!("operation {op} is not in the evidence"));
            }
        }
        for c in VERSION.captures_iter(draft) {
            if !self.versions.contains(&c[1]) {
                v(&c[0], format!("version {} is not in the evidence", &c[1]));
            }
        }
        for m in HEX.find_iter(draft) {
            let h = m.as_str().to_ascii_lowercase();
            let has_letter = h.chars().any(|c| c.is_ascii_alphabetic());
            let has_digit = h.chars().any(|c| c.is_ascii_digit());
            if !(has_digit && (has_letter || h.len() >= 16)) {
                continue;
            }
            if !self.hexes.iter().any(|k| k == &h || (h.len() >= 7 && k.starts_with(&h))) {
                let what = if h.len() >= 32 {
                    "trace id"
                } else if h.len() == 16 {
                    "span or trace id"
                } else {
                    "commit"
                };
                v(m.as_str(), format!("{what} {h} is not in the evidence"));
            }
        }
        for c in PR.captures_iter(draft) {
            if let Ok(n) = c[1].parse::<u64>()
                && !self.prs.contains(&n)
            {
                v(&c[0], format!("pull request #{n} is not in the evidence"));
            }
        }
        for m in ID.find_iter(draft) {
            if !self.ids.contains(m.as_str()) && !self.texts.iter().any(|t| t.contains(m.as_str())) {
                v(m.as_str(), format!("{} is not in the evidence", m.as_str()));
            }
        }
        for c in TIME.captures_iter(draft) {
            let hhmm = format!("{:02}:{}", c[1].parse::<u32>().unwrap_or(0), &c[2]);
            let ok = match c.get(3) {
                Some(s) => self.times.contains(&format!("{hhmm}:{}", s.as_str())),
                None => self.times.contains(&hhmm),
            };
            if !ok {
                v(&c[0], format!("the time {} is not one of the evidence's", &c[0]));
            }
        }
        for c in DATE.captures_iter(draft) {
            if !self.dates.contains(&c[0]) {
                v(&c[0], format!("the date {} is not one of the evidence's", &c[0]));
            }
        }
        let plain = masked(draft);
        for (span, q) in quantities(&plain) {
            if !self.supports(q) {
                v(&draft[span.clone()], format!("{} is not a number the evidence gives or implies", &draft[span]));
            }
        }
        for name in self.named_services(draft) {
            if !self.services.contains(&name) && !self.words.contains(&name) {
                v(&name, format!("service {name} is not in the evidence"));
            }
        }
        for w in lower_words(draft) {
            if self.others.contains(&w) {
                v(&w, format!("service {w} runs in the system but the evidence does not involve it"));
            }
        }
        for sentence in sentences(draft) {
            if let Some(reason) = self.causal(sentence) {
                v(sentence, reason);
            }
        }
        out
    }

    /// Whether backticked text names something of the evidence.
    fn knows(&self, inner: &str) -> bool {
        let l = inner.to_ascii_lowercase();
        let l = l.trim_start_matches('#');
        self.services.contains(l)
            || self.operations.iter().any(|o| o.eq_ignore_ascii_case(inner))
            || self.versions.contains(l.trim_start_matches('v'))
            || self.hexes.iter().any(|h| l.len() >= 7 && h.starts_with(l))
            || self.words.contains(l)
            || self.texts.iter().any(|t| t == l)
            || (l.contains(' ') || l.contains('=')) && self.texts.iter().any(|t| t.contains(l))
    }

    fn supports(&self, q: Quantity) -> bool {
        let v = q.value.abs();
        // A number rounds to what was written when it lies within half of
        // the last digit written.
        let tol = 0.5 * 10f64.powi(-q.decimals) + 1e-9 * v.max(1.0);
        let near = |facts: &[f64], scale: f64| facts.iter().any(|f| (f.abs() * scale - v).abs() <= tol);
        match q.unit {
            Unit::Ms => near(&self.ms, 1.0),
            Unit::Micros => near(&self.ms, 1000.0),
            Unit::Seconds => near(&self.ms, 0.001) || near(&self.minutes, 60.0),
            Unit::Minutes => near(&self.minutes, 1.0) || near(&self.ms, 1.0 / 60_000.0),
            Unit::Hours => near(&self.minutes, 1.0 / 60.0),
            Unit::Percent => near(&self.percents, 1.0) || near(&self.points, 1.0),
            Unit::Points => near(&self.points, 1.0) || near(&self.percents, 1.0),
            Unit::Times => near(&self.ratios, 1.0),
            Unit::None => {
                (q.decimals == 0 && v <= 1.0)
                    || near(&self.numbers, 1.0)
                    || near(&self.ms, 1.0)
                    || near(&self.percents, 1.0)
                    || near(&self.ratios, 1.0)
                    || near(&self.minutes, 1.0)
            }
        }
    }

    /// Names the draft writes as services: "the X service", "service X",
    /// and lists of callers.
    fn named_services(&self, draft: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in SERVICE_WORD.captures_iter(draft) {
            let n = c[1].to_ascii_lowercase();
            if !STOP.contains(&n.as_str()) && !is_common(&n) {
                out.push(n);
            }
        }
        for m in CALLERS.find_iter(draft) {
            let rest = &draft[m.end()..];
            let mut at = 0;
            loop {
                let tail = &rest[at..];
                let Some(w) = WORD.find(tail) else { break };
                let gap = &tail[..w.start()];
                if !gap.chars().all(|c| c == '`' || c.is_whitespace()) {
                    break;
                }
                let name = w.as_str().trim_end_matches(['.', '-']).to_ascii_lowercase();
                if STOP.contains(&name.as_str()) || is_common(&name) {
                    break;
                }
                out.push(name);
                let after = &tail[w.end()..];
                let after = after.trim_start_matches('`');
                let sep = ["and ", ", and ", ", ", " and ", ",and "].iter().find(|s| after.starts_with(**s));
                match sep {
                    Some(s) => at += w.end() + (tail[w.end()..].len() - after.len()) + s.len(),
                    None => break,
                }
            }
        }
        out
    }

    /// What is wrong with a sentence's causal claim, if it makes one.
    fn causal(&self, sentence: &str) -> Option<String> {
        let lower = sentence.to_ascii_lowercase();
        let (cause, effect) = split_causal(&lower)?;
        if self.restates_explanation(&cause) {
            return None;
        }
        let cause_names = self.names_in(&cause);
        let effect_names = self.names_in(&effect);
        let refers_to_change = lower_words(&cause).iter().any(|w| CHANGE_WORDS.contains(&w.as_str()));
        // The direction: the change is a cause, never an effect of the trouble.
        let change_in_effect = effect_names.iter().any(|n| self.is_change_name(n));
        if change_in_effect && !cause_names.iter().any(|n| self.is_change_name(n)) && !refers_to_change {
            return Some("puts the change as an effect of the trouble: the evidence has it the other way round".into());
        }
        let cause_ok: Vec<&String> = cause_names.iter().filter(|n| self.causes.contains(*n)).collect();
        if let Some(bad) = cause_names.iter().find(|n| !self.causes.contains(*n)) {
            return Some(format!(
                "gives {bad} as a cause, but the evidence blames only {}",
                self.blamed().unwrap_or_else(|| "nothing".into())
            ));
        }
        if !self.network && lower_words(&cause).iter().any(|w| w == "network" || w == "congestion" || w == "packet") {
            return Some(format!(
                "blames the network; the evidence puts the trouble inside {}",
                self.blamed().unwrap_or_else(|| "its suspects".into())
            ));
        }
        if refers_to_change && !self.change {
            return Some("blames a change, but no change is linked to this incident".into());
        }
        if cause_ok.is_empty() && !(refers_to_change && self.change) {
            return Some(format!(
                "states a cause the evidence does not show; it blames only {}",
                self.blamed().unwrap_or_else(|| "nothing".into())
            ));
        }
        if let Some(bad) = effect_names.iter().find(|n| !self.effects.contains(*n) && !self.causes.contains(*n)) {
            return Some(format!("says {bad} was affected, which the evidence does not show"));
        }
        // How the cause did it: words of the cause, and of "by ..." after the
        // effect, must come from the evidence (or say nothing particular).
        let by = effect.split_once(" by ").map(|(_, m)| m).unwrap_or("");
        let named: Vec<String> = cause_names.iter().flat_map(|n| lower_words(n)).collect();
        let unsupported: Vec<String> = content_words(&format!("{cause} {by}"))
            .into_iter()
            .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
            .filter(|w| !named.contains(w) && !CHANGE_WORDS.contains(&w.as_str()))
            .filter(|w| !self.stems.contains(&stem(w)) && !GENERIC.iter().any(|g| stem(g) == stem(w)))
            .collect();
        if !unsupported.is_empty() {
            return Some(format!(
                "explains how with words the evidence does not contain ({}): a mechanism it does not state",
                unsupported.join(", ")
            ));
        }
        let effect_words = lower_words(&effect);
        match self.latency {
            Some(true) if effect_words.iter().any(|w| ERROR_WORDS.contains(&w.as_str())) => {
                Some("says it caused failures; the evidence shows a latency regression".into())
            }
            Some(false) if effect_words.iter().any(|w| LATENCY_WORDS.contains(&w.as_str())) => {
                Some("says it made requests slow; the evidence shows an error-rate regression".into())
            }
            _ => None,
        }
    }

    fn is_change_name(&self, n: &str) -> bool {
        self.causes.contains(n)
            && (self.versions.contains(n) || self.hexes.iter().any(|h| h.starts_with(n)) || n.starts_with('#'))
    }

    fn blamed(&self) -> Option<String> {
        let mut c: Vec<&str> = self.causes.iter().map(String::as_str).collect();
        c.truncate(6);
        (!c.is_empty()).then(|| c.join(", "))
    }

    /// The services, operations, versions, commits and PRs a clause names.
    fn names_in(&self, clause: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in HTTP_OP.captures_iter(clause) {
            out.push(format!("{} {}", &c[1], c[2].trim_end_matches(['.', ':'])).to_ascii_lowercase());
        }
        let without_ops = HTTP_OP.replace_all(clause, " ");
        for w in lower_words(&without_ops) {
            let w = w.trim_start_matches('v').to_owned();
            if self.services.contains(&w) || self.others.contains(&w) || self.versions.contains(&w) {
                out.push(w);
            } else if w.len() >= 7 && w.chars().all(|c| c.is_ascii_hexdigit()) && w.chars().any(|c| c.is_ascii_digit())
            {
                if let Some(full) = self.causes.iter().find(|c| c.starts_with(&w)) {
                    out.push(full.clone());
                } else {
                    out.push(w);
                }
            }
        }
        for c in PR.captures_iter(clause) {
            out.push(format!("#{}", &c[1]));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether a clause says what one of the evidence's own explanations says
    /// (why a gate missed it, why a suspect), most of its words the same.
    fn restates_explanation(&self, clause: &str) -> bool {
        let words = content_words(clause);
        if words.len() < 3 {
            return false;
        }
        self.explanations.iter().any(|e| {
            let shared = words.iter().filter(|w| e.contains(*w)).count();
            shared as f64 >= 0.7 * words.len() as f64
        })
    }
}

/// What an incident's evidence is, as JSON: its report without the narrative,
/// the steps' SQL and timings, the onset series (hundreds of numbers no
/// sentence would quote) and the similar incidents' contents (their ids
/// stay): a number from another incident is no evidence for this one. This
/// is also what a model is shown.
pub fn evidence_json(inc: &Incident) -> Value {
    let mut v = serde_json::to_value(inc).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        for k in ["narrative", "narrative_source", "narrative_validation", "created_at", "updated_at"] {
            o.remove(k);
        }
        if let Some(Value::Array(similar)) = o.get_mut("similar_incidents") {
            for s in similar.iter_mut() {
                let id = s.get("id").cloned().unwrap_or(Value::Null);
                *s = serde_json::json!({ "id": id });
            }
        }
        if let Some(Value::Array(steps)) = o.get_mut("steps") {
            for s in steps {
                if let Some(s) = s.as_object_mut() {
                    s.remove("queries");
                    s.remove("at");
                    s.remove("took_ms");
                }
            }
        }
        if let Some(Value::Object(d)) = o.get_mut("details") {
            d.remove("series");
            d.remove("series_bucket_secs");
        }
    }
    v
}

/// What a finding's evidence is, as JSON: the finding without its SQL (whose
/// constants are no claims), its wording templates and its bookkeeping. This
/// is also what a model writing its ticket's opening is shown.
pub fn finding_evidence_json(f: &andon_model::Finding) -> Value {
    let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        for k in ["wording", "state", "first_seen", "last_seen", "run_id", "fingerprint"] {
            o.remove(k);
        }
        if let Some(Value::Object(ev)) = o.get_mut("evidence") {
            ev.remove("query");
        }
    }
    v
}

/// Words that are ordinary English, not names of services.
fn is_common(w: &str) -> bool {
    matches!(
        w,
        "this"
            | "that"
            | "same"
            | "new"
            | "old"
            | "whole"
            | "entire"
            | "affected"
            | "calling"
            | "called"
            | "failing"
            | "one"
            | "every"
            | "another"
            | "your"
            | "our"
            | "upstream"
            | "downstream"
            | "slowest"
            | "first"
            | "last"
            | "many"
            | "several"
            | "few"
            | "some"
    )
}

/// Content words of a clause: lowercase words of 4 letters or more.
fn content_words(s: &str) -> BTreeSet<String> {
    const FILLER: &[&str] = &[
        "with", "which", "that", "this", "does", "from", "were", "have", "been", "into", "than", "then", "they",
        "their", "there", "what", "when", "where", "only", "also", "because", "since", "about", "after", "before",
        "while", "would", "could", "should", "will", "just", "very", "more", "most", "some", "such", "them", "these",
        "those", "other",
    ];
    lower_words(s)
        .into_iter()
        .filter(|w| w.len() >= 4 && w.chars().any(|c| c.is_alphabetic()) && !FILLER.contains(&w.as_str()))
        .collect()
}

/// A draft with its routes, versions, ids and times blanked out, so their
/// digits are not read as numbers (byte offsets kept).
fn masked(s: &str) -> String {
    let mut out = s.to_owned();
    for r in [&*HTTP_OP, &*BACKTICK, &*VERSION, &*TIME, &*DATE, &*PR, &*ID] {
        let spans: Vec<(usize, usize)> = r.find_iter(&out).map(|m| (m.start(), m.end())).collect();
        for (a, b) in spans {
            out.replace_range(a..b, &"_".repeat(b - a));
        }
    }
    let spans: Vec<(usize, usize)> = HEX
        .find_iter(&out)
        .filter(|m| m.as_str().chars().any(|c| c.is_ascii_alphabetic()) || m.as_str().len() >= 16)
        .map(|m| (m.start(), m.end()))
        .collect();
    for (a, b) in spans {
        out.replace_range(a..b, &"_".repeat(b - a));
    }
    out
}

/// Sentences, split at `.`, `;`, `!` or `?` before whitespace (not in
/// numbers or versions).
fn sentences(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = s.as_bytes();
    for i in 0..b.len() {
        if matches!(b[i], b'.' | b';' | b'!' | b'?') && (i + 1 == b.len() || b[i + 1].is_ascii_whitespace()) {
            let piece = s[start..=i].trim();
            if !piece.is_empty() {
                out.push(piece);
            }
            start = i + 1;
        }
    }
    let rest = s[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// A causal sentence as (cause, effect), or `None` when it claims no cause.
fn split_causal(lower: &str) -> Option<(String, String)> {
    let find = |m: &str| {
        let mut from = 0;
        while let Some(i) = lower[from..].find(m) {
            let at = from + i;
            let before_ok = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
            let end = at + m.len();
            let after_ok = end == lower.len() || !lower.as_bytes()[end].is_ascii_alphanumeric();
            if before_ok && after_ok {
                return Some(at);
            }
            from = at + m.len();
        }
        None
    };
    let back = BACKWARD.iter().filter_map(|m| find(m).map(|i| (i, *m))).min_by_key(|(i, m)| (*i, usize::MAX - m.len()));
    let fwd = FORWARD.iter().filter_map(|m| find(m).map(|i| (i, *m))).min_by_key(|(i, m)| (*i, usize::MAX - m.len()));
    match (back, fwd) {
        (Some((bi, bm)), f) if f.is_none_or(|(fi, _)| bi <= fi) => {
            let after = &lower[bi + bm.len()..];
            if lower[..bi].trim().is_empty() {
                // "Because X, Y."
                let (c, e) = after.split_once(',').unwrap_or((after, ""));
                Some((c.to_owned(), e.to_owned()))
            } else {
                Some((after.to_owned(), lower[..bi].to_owned()))
            }
        }
        (_, Some((fi, fm))) => Some((lower[..fi].to_owned(), lower[fi + fm.len()..].to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile_and_numbers_skip_words() {
        let q: Vec<f64> = quantities("p95 went from 15.6 ms to 89.5 ms, +473%, us-east-1, 5xx, 2,000 requests")
            .into_iter()
            .map(|(_, q)| q.value)
            .collect();
        assert_eq!(q, vec![15.6, 89.5, 473.0, 2000.0]);
        // A count followed by a word starting like a unit is still a count;
        // numbers in words are read, small bare ones left to the prose.
        let q: Vec<(f64, Unit)> = quantities(
            "412 sessions, 3 hosts, two hundred and five ms, forty-two requests, two callers, one minute, it doubled",
        )
        .into_iter()
        .map(|(_, q)| (q.value, q.unit))
        .collect();
        assert_eq!(
            q,
            vec![
                (412.0, Unit::None),
                (3.0, Unit::None),
                (205.0, Unit::Ms),
                (42.0, Unit::None),
                (1.0, Unit::Minutes),
                (2.0, Unit::Times)
            ]
        );
        for r in [&*HTTP_OP, &*BACKTICK, &*TIME, &*DATE, &*VERSION, &*HEX, &*PR, &*ID, &*NUMBER, &*SERVICE_WORD] {
            assert!(!r.as_str().is_empty());
        }
    }

    #[test]
    fn causal_sentences_split_by_direction() {
        let (c, e) = split_causal("the slowdown on get /quote was caused by pricing 7.4.0").unwrap();
        assert!(c.contains("pricing") && e.contains("slowdown"));
        let (c, e) = split_causal("pricing 7.4.0 caused the slowdown").unwrap();
        assert!(c.contains("pricing") && e.contains("slowdown"));
        let (c, e) = split_causal("because pricing changed, checkout waits").unwrap();
        assert!(c.contains("pricing") && e.contains("checkout"));
        assert!(split_causal("its p95 went from 15.6 ms to 89.5 ms").is_none());
    }
}
