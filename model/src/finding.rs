//! The kinds of problem Andon's detectors report.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a finding claims; part of its fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    LatencyRegression,
    ErrorRateRegression,
    Retry,
    DropOff,
    SilentRecovery,
}

impl FindingKind {
    pub const ALL: [FindingKind; 5] = [
        FindingKind::LatencyRegression,
        FindingKind::ErrorRateRegression,
        FindingKind::Retry,
        FindingKind::DropOff,
        FindingKind::SilentRecovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::LatencyRegression => "latency_regression",
            FindingKind::ErrorRateRegression => "error_rate_regression",
            FindingKind::Retry => "retry",
            FindingKind::DropOff => "drop_off",
            FindingKind::SilentRecovery => "silent_recovery",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FindingKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown finding kind {s:?}"))
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
    pub evidence: Evidence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeRef>,
    pub state: FindingState,
    /// When a pass first and last reported it.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl Finding {
    /// kind + service + operation + segment: the same problem in the same place
    /// has the same fingerprint across passes and restarts.
    pub fn fingerprint_of(
        kind: FindingKind,
        service: &str,
        operation: &str,
        segment: &BTreeMap<String, Value>,
    ) -> String {
        let mut key = format!("{kind}\u{1f}{service}\u{1f}{operation}");
        for (k, v) in segment {
            key.push('\u{1f}');
            key.push_str(k);
            key.push('=');
            key.push_str(&v.to_string());
        }
        format!("{:016x}", fnv1a(key.as_bytes()))
    }
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
