//! The kinds of problem Andon's detectors report.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a finding claims, named by the detector that makes it; part of its
/// fingerprint. The five built-in kinds are constants here; a detector added
/// later names its own kind with [`FindingKind::new`], and nothing outside its
/// file needs to know the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FindingKind(&'static str);

// The built-in kinds read like the variants they once were, and still work as
// match patterns.
#[allow(non_upper_case_globals)]
impl FindingKind {
    pub const LatencyRegression: FindingKind = FindingKind("latency_regression");
    pub const ErrorRateRegression: FindingKind = FindingKind("error_rate_regression");
    pub const Retry: FindingKind = FindingKind("retry");
    pub const DropOff: FindingKind = FindingKind("drop_off");
    pub const SilentRecovery: FindingKind = FindingKind("silent_recovery");

    /// The built-in kinds, in the order the API documents them.
    pub const ALL: [FindingKind; 5] = [
        FindingKind::LatencyRegression,
        FindingKind::ErrorRateRegression,
        FindingKind::Retry,
        FindingKind::DropOff,
        FindingKind::SilentRecovery,
    ];
}

/// Kinds read back from storage that no built-in constant names (a detector's
/// own kind), interned once each so that a kind stays `Copy`.
static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

impl FindingKind {
    /// A detector's kind: a lowercase `snake_case` name.
    pub const fn new(name: &'static str) -> Self {
        FindingKind(name)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Makes a detector's own kind known to [`str::parse`] (the API's `kind`
    /// filter).
    pub fn register(self) {
        let _ = Self::stored(self.0);
    }

    /// The kind of a stored finding: a built-in one, or one interned on first
    /// sight. Only storage Andon wrote reaches here; a client's text goes
    /// through [`str::parse`], which knows only the built-in kinds.
    fn stored(name: &str) -> Self {
        if let Some(k) = Self::ALL.into_iter().find(|k| k.0 == name) {
            return k;
        }
        let mut interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = interned.iter().find(|k| **k == name) {
            return FindingKind(k);
        }
        // Each distinct name is leaked once; names come from detectors and from
        // findings they stored, a handful in all.
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        interned.push(leaked);
        FindingKind(leaked)
    }
}

impl Serialize for FindingKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for FindingKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(serde::de::Error::custom(format!("invalid finding kind {name:?}")));
        }
        Ok(Self::stored(&name))
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FindingKind {
    type Err = String;

    /// A built-in kind, or one a detector registered or storage holds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(k) = Self::ALL.into_iter().find(|k| k.0 == s) {
            return Ok(k);
        }
        let interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interned.iter().find(|k| **k == s).map(|k| FindingKind(k)).ok_or_else(|| format!("unknown finding kind {s:?}"))
    }
}

/// How bad a finding is, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    pub const ALL: [Severity; 4] = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];

    /// The factor impact multiplies affected sessions by.
    pub fn weight(self) -> f64 {
        match self {
            Severity::Critical => 8.0,
            Severity::High => 4.0,
            Severity::Medium => 2.0,
            Severity::Low => 1.0,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown severity {s:?}; expected critical, high, medium or low"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Open,
    Resolved,
}

impl FindingState {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingState::Open => "open",
            FindingState::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Affected {
    pub requests: u64,
    pub sessions: u64,
}

/// The change a finding is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRef {
    pub service: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    /// When the version first served traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<DateTime<Utc>>,
}

/// A finding linked under another because it only follows from it (the callers
/// of a slow leaf, the errors behind a drop-off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkedFinding {
    pub kind: FindingKind,
    pub service: String,
    pub operation: String,
    pub segment: BTreeMap<String, Value>,
    pub summary: String,
    pub p_value: f64,
    pub why: String,
}

/// What proves a finding: the SQL that reproduces its numbers and traces that show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Evidence {
    pub query: String,
    pub exemplar_trace_ids: Vec<String>,
    /// The statistical test behind `p_value`.
    pub test: String,
    /// Confidence interval of the effect, when the test gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_ci: Option<[f64; 2]>,
    /// When the metric changed, from change-point detection on per-minute values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<DateTime<Utc>>,
    /// Where the failures start, when it is not the reported operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<ServiceOperation>,
    /// Symptoms of this finding that are not reported on their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<LinkedFinding>,
    /// Everything else a detector measured, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Value>,
}

/// Where a finding's trouble is followed in the traces (by the detector's
/// sampling and by the RCA of its incident): extra time, or failures back to
/// where they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trouble {
    Latency,
    Failures,
    /// Neither explains it (sessions that leave without an error): the RCA
    /// looks for whatever changed.
    #[default]
    Unclear,
}

/// How a finding reads where its kind is not known in advance (a ticket, a
/// linked line), written by the detector that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Wording {
    /// The kind of problem in words: `latency regression`.
    pub kind: String,
    /// A title, with `{operation}`, `{service}` and `{segment}` (` for k=v`, or
    /// nothing) where the names go, so a ticket can redact them first.
    pub title: String,
    /// The effect with its unit: `1.80× at the median`.
    pub effect: String,
}

impl Wording {
    /// The title with the names filled in, in one pass: a name that itself
    /// reads `{service}` stays as it is.
    pub fn title_for(&self, service: &str, operation: &str, segment: &str) -> String {
        let mut out = String::with_capacity(self.title.len() + service.len() + operation.len() + segment.len());
        let mut rest = self.title.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let hole = [("{operation}", operation), ("{service}", service), ("{segment}", segment)]
                .into_iter()
                .find(|(p, _)| rest.starts_with(p));
            match hole {
                Some((p, v)) => {
                    out.push_str(v);
                    rest = &rest[p.len()..];
                }
                None => {
                    out.push('{');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOperation {
    pub service: String,
    pub operation: String,
}

/// A claim that users struggle somewhere, with the evidence for it. The JSON shape
/// is part of the API contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub fingerprint: String,
    pub kind: FindingKind,
    pub service: String,
    pub operation: String,
    pub segment: BTreeMap<String, Value>,
    pub window: TimeWindow,
    pub baseline_window: TimeWindow,
    pub baseline: BTreeMap<String, Value>,
    pub current: BTreeMap<String, Value>,
    pub p_value: f64,
    pub effect: f64,
    pub affected: Affected,
    pub impact: f64,
    pub severity: Severity,
    pub summary: String,
    /// The kind, title and effect in words, for readers that do not know the kind.
    #[serde(default)]
    pub wording: Wording,
    /// What the trouble is followed by in the traces.
    #[serde(default)]
    pub trouble: Trouble,
    pub evidence: Evidence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeRef>,
    pub state: FindingState,
    /// When a pass first and last reported it.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The flight recorder's run of the pass that reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Finding {
    /// kind + service + operation + segment (without `service.version`): the
    /// same problem in the same place has the same fingerprint across passes,
    /// restarts and releases.
    pub fn fingerprint_of(
        kind: FindingKind,
        service: &str,
        operation: &str,
        segment: &BTreeMap<String, Value>,
    ) -> String {
        let mut key = format!("{kind}\u{1f}{service}\u{1f}{operation}");
        // Releases come and go: a problem that lasts from one release to the
        // next, or is first seen in the release that brought it and then in
        // the whole operation once it is rolled out, is the same problem.
        for (k, v) in segment.iter().filter(|(k, _)| k.as_str() != "service.version") {
            key.push('\u{1f}');
            key.push_str(k);
            key.push('=');
            key.push_str(&v.to_string());
        }
        format!("{:016x}", fnv1a(key.as_bytes()))
    }
}

/// An id for a record that names its tenant among its `parts`: 128 bits of
/// SHA-256 in hex. Unlike FNV, no one can craft a key in their own tenant
/// whose id is another tenant's, so an upsert by id never crosses tenants.
pub fn stable_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 64 bits: stable across releases and platforms, so ids derived from
/// it survive upgrades.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_filled_once() {
        let w = Wording { title: "{operation} in {service}{segment} {x}".into(), ..Wording::default() };
        assert_eq!(
            w.title_for("{operation}", "GET /{service}", " for a=b"),
            "GET /{service} in {operation} for a=b {x}"
        );
    }

    #[test]
    fn kinds_round_trip_and_a_detector_kind_is_known_once_registered() {
        let k: FindingKind = serde_json::from_str("\"drop_off\"").unwrap();
        assert_eq!(k, FindingKind::DropOff);
        assert!("queue_backlog".parse::<FindingKind>().is_err());
        FindingKind::new("queue_backlog").register();
        assert_eq!("queue_backlog".parse::<FindingKind>().unwrap().as_str(), "queue_backlog");
        assert!(serde_json::from_str::<FindingKind>("\"Drop Off\"").is_err());
    }
}
