//! Changes: deploys and the evidence their gates produced.
//!
//! A `ChangeEvent` is what a CI pipeline posts to `POST /api/v1/changes` when it
//! deploys, and what Andon infers when a new `service.version` first shows up in
//! spans. The RCA holds an incident against it: which change preceded the onset,
//! and what its gates claimed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One deploy of one service to one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent {
    pub service: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// When the rollout started; with a rolling deploy old and new versions
    /// serve side by side for a while after this.
    pub deployed_at: DateTime<Utc>,
    /// The full commit hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `owner/name` or the repository's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The pull request number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
}

/// What one gate (a test suite, a perf check, a review) said about a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub name: String,
    pub kind: GateKind,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Numbers the gate measured, such as `p95_delta_pct` or `tests_failed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    Tests,
    Perf,
    Security,
    Review,
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
    NotApplicable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_event_reads_the_contract_shape() {
        let json = r#"{
            "service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z",
            "commit": "9f8e7d6c", "repository": "acme-shop/pricing", "pr": 4417,
            "gates": [{"name": "perf", "kind": "perf", "verdict": "pass",
                       "summary": "p95 +0.8%", "metrics": {"p95_delta_pct": 0.8}}]
        }"#;
        let change: ChangeEvent = serde_json::from_str(json).unwrap();
        assert_eq!(change.pr, Some(4417));
        assert_eq!(change.gates[0].kind, GateKind::Perf);
        assert_eq!(change.gates[0].metrics["p95_delta_pct"], 0.8);
        let back: ChangeEvent = serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
        assert_eq!(back, change);
    }

    #[test]
    fn a_misspelt_field_is_an_error_not_a_silent_drop() {
        let json = r#"{"service": "a", "version": "1", "deployed_at": "2026-11-21T09:37:00Z", "comit": "x"}"#;
        let err = serde_json::from_str::<ChangeEvent>(json).unwrap_err().to_string();
        assert!(err.contains("comit"), "{err}");
    }
}
