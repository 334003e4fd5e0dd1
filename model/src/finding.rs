//! The kinds of problem Andon's detectors report.

use std::fmt;

use serde::{Deserialize, Serialize};

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
