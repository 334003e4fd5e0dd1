//! One sentence per finding, specific and quantified, the way an SRE writes it.

use std::collections::BTreeMap;

use andon_model::{Affected, FindingKind};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::detectors::Judgement;

use andon_model::format::ms;
pub use andon_model::format::{count, pct};

/// ` for `os.type=android` sessions`, or nothing.
pub fn segment(segment: &BTreeMap<String, Value>) -> String {
    if segment.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = segment
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("`{k}={v}`")
        })
        .collect();
    format!(" for {} sessions", parts.join(", "))
}

fn since(onset: Option<DateTime<Utc>>) -> String {
    onset.map(|o| format!(" since {} UTC", o.format("%H:%M"))).unwrap_or_default()
}

fn get(m: &BTreeMap<String, Value>, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
pub fn sentence(
    kind: FindingKind,
    service: &str,
    operation: &str,
    seg: &str,
    j: &Judgement,
    baseline: &BTreeMap<String, Value>,
    current: &BTreeMap<String, Value>,
    onset: Option<DateTime<Utc>>,
    affected: &Affected,
    cause: &(String, String),
) -> String {
    let when = since(onset);
    let sessions = count(affected.sessions);
    match kind {
        FindingKind::LatencyRegression => {
            let ci = j.ci.map(|c| format!(" (95% CI {:.1}–{:.1}×)", c[0], c[1])).unwrap_or_default();
            format!(
                "p95 latency of `{operation}` in {service}{seg} rose from {} to {}{when}; requests are {:.1}× slower at the median{ci}; {sessions} sessions affected.",
                ms(get(baseline, "p95_ms")),
                ms(get(current, "p95_ms")),
                j.effect,
            )
        }
        FindingKind::ErrorRateRegression => format!(
            "`{operation}` in {service} fails {} of requests{seg}{when} (baseline {}); {} failed requests, {sessions} sessions hit the error.",
            pct(get(current, "error_rate")),
            pct(get(baseline, "error_rate")),
            count(affected.requests),
        ),
        FindingKind::Retry => format!(
            "Clients{seg} retry `{operation}` ({service}) {:.1} times on average before success (baseline {:.2}){when}; {} of sessions calling it retried (baseline {}), {} of retries automatic.",
            get(current, "attempts_when_retried"),
            get(baseline, "attempts_when_retried").max(1.0),
            pct(get(current, "retrying_share")),
            pct(get(baseline, "retrying_share")),
            pct(j.details.get("automatic_share").and_then(Value::as_f64).unwrap_or(0.0)),
        ),
        FindingKind::SilentRecovery => format!(
            "{} of sessions{seg} calling `{operation}` in {service} hit a failure that succeeded when sent again (baseline {}){when}; {} of the sessions that hit it recovered this way, so success rates hide it; {sessions} sessions affected.",
            pct(get(current, "recovered_share")),
            pct(get(baseline, "recovered_share")),
            pct(get(current, "recovered_of_failed")),
        ),
        FindingKind::DropOff => {
            let next = j.details.get("next_step").and_then(Value::as_str).unwrap_or("the next step");
            let err = j.details.get("left_after_error_share").and_then(Value::as_f64).unwrap_or(0.0);
            let cause_text = if (cause.0.as_str(), cause.1.as_str()) != (service, operation) && err > 0.0 {
                format!("; {} of those leaving hit an error there, which starts in {} `{}`", pct(err), cause.0, cause.1)
            } else if err > 0.0 {
                format!("; {} of those leaving hit an error there", pct(err))
            } else {
                String::new()
            };
            format!(
                "Conversion from `{operation}` to `{next}` drops {}{seg} ({} → {}){when}; {sessions} more sessions left than the baseline rate{cause_text}.",
                pct(j.effect),
                pct(get(baseline, "conversion")),
                pct(get(current, "conversion")),
            )
        }
    }
}

/// A short line for a finding linked under another.
pub fn short(kind: FindingKind, service: &str, operation: &str, j: &Judgement) -> String {
    let metric = match kind {
        FindingKind::LatencyRegression => format!("{:.1}× slower at the median", j.effect),
        FindingKind::ErrorRateRegression => {
            format!("error rate {} → {}", pct(get(&j.baseline, "error_rate")), pct(get(&j.current, "error_rate")))
        }
        FindingKind::Retry => format!(
            "sessions retrying {} → {}",
            pct(get(&j.baseline, "retrying_share")),
            pct(get(&j.current, "retrying_share"))
        ),
        FindingKind::SilentRecovery => format!(
            "sessions recovering by resending {} → {}",
            pct(get(&j.baseline, "recovered_share")),
            pct(get(&j.current, "recovered_share"))
        ),
        FindingKind::DropOff => format!("step conversion down {}", pct(j.effect)),
    };
    format!("{kind} on `{operation}` in {service}: {metric}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_read_as_sessions() {
        let s = BTreeMap::from([("browser.mobile".to_owned(), Value::Bool(true))]);
        assert_eq!(segment(&s), " for `browser.mobile=true` sessions");
    }
}
