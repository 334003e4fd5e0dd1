//! What Andon's agents leave behind: an investigation (a question, its
//! validated answer and the tool results it rests on), and the flight
//! recorder's runs, each a DAG of steps whose inputs and outputs are stored
//! by content hash.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::incident::Violation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvestigationState {
    Running,
    /// The answer passed the validator.
    Answered,
    /// The agent could not conclude: out of steps, tokens or time, or every
    /// answer it gave claimed what its tools did not return.
    Inconclusive,
    /// No model could be asked.
    Failed,
}

impl InvestigationState {
    pub fn as_str(self) -> &'static str {
        match self {
            InvestigationState::Running => "running",
            InvestigationState::Answered => "answered",
            InvestigationState::Inconclusive => "inconclusive",
            InvestigationState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Answered, Self::Inconclusive, Self::Failed].into_iter().find(|k| k.as_str() == s)
    }
}

/// A tool result an answer rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// `query`, `trace`, `finding`, `incident` or `change`.
    pub kind: String,
    /// The SQL, or the id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// What the tool returned, shortened.
    pub excerpt: String,
}

/// `POST /api/v1/investigations`: a question put to the investigation agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Investigation {
    pub id: String,
    pub question: String,
    pub state: InvestigationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default)]
    pub citations: Vec<Citation>,
    /// Why the agent did not conclude, or what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The claims of the last answer the validator rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// Model turns and tool calls it took.
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub tokens: u64,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A run of the flight recorder: one detection pass, RCA or investigation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    /// `rca` or `investigation` (the kind of work recorded).
    pub kind: String,
    /// What it was about (an incident id, a question).
    pub subject: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub steps: Vec<RunStep>,
}

/// One recorded step, with the steps whose outputs it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStep {
    pub id: String,
    pub parents: Vec<String>,
    /// `model`, `validate`, `tool`, `stage`, `decision`.
    pub kind: String,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub input_sha256: String,
    pub output_sha256: String,
    pub summary: String,
}

/// `value` as bytes that do not depend on how it was built: object keys
/// sorted at every depth, no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // With `preserve_order` on, a map keeps insertion order: sorting first
    // makes the bytes the same either way.
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_hashes_ignore_key_order_but_not_values() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        assert_eq!(sha256_hex(&canonical_json(&a)), sha256_hex(&canonical_json(&b)));
        let c = json!({"a": {"x": "s", "y": [2, 1]}, "b": 1});
        assert_ne!(sha256_hex(&canonical_json(&a)), sha256_hex(&canonical_json(&c)));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "the empty input's well-known digest"
        );
    }
}

/// A step that follows a recorded run after it ended: a ticket's draft, the
/// gate's decision on it, its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedStep {
    pub kind: String,
    pub name: String,
    pub input: Value,
    pub output: Value,
    pub summary: String,
}

/// Where such steps go: the flight recorder appends each to its run, after
/// the run's latest step.
pub trait RunLog: Send + Sync + std::fmt::Debug {
    fn append(&self, tenant: &crate::Tenant, run_id: &str, step: LoggedStep);
}

/// One request to a model and its answer, as the flight recorder keeps it:
/// what was sent (redacted), what came back, and the validator's verdict on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelExchange {
    /// `narrate`, `ticket` or `investigate`.
    pub task: String,
    /// The model that answered (empty when none did).
    pub model: String,
    /// The messages sent, as `[{role, content}]`.
    pub sent: Value,
    pub reply: String,
    pub tokens: u64,
    /// The claims of the reply the evidence does not support.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Why there was no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
