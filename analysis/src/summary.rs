//! The pieces every detector's sentence shares (its own wording is its
//! detector's): the segment and the onset in words.

use std::collections::BTreeMap;

use andon_model::FindingKind;
use chrono::{DateTime, Utc};
use serde_json::Value;

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

/// The sessions a [`segment`] phrase names, as a sentence's subject:
/// `` `os.type=android` sessions ``, or `sessions` for every session.
pub fn sessions(segment_text: &str) -> String {
    match segment_text.strip_prefix(" for ") {
        Some(named) => named.to_owned(),
        None => "sessions".to_owned(),
    }
}

/// ` since 14:05 UTC`, or nothing.
pub fn since(onset: Option<DateTime<Utc>>) -> String {
    onset.map(|o| format!(" since {} UTC", o.format("%H:%M"))).unwrap_or_default()
}

/// A short line for a finding linked under another, around its detector's
/// few words on the effect.
pub fn linked(kind: FindingKind, service: &str, operation: &str, effect: &str) -> String {
    format!("{kind} on `{operation}` in {service}: {effect}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_read_as_sessions() {
        let s = BTreeMap::from([("browser.mobile".to_owned(), Value::Bool(true))]);
        assert_eq!(segment(&s), " for `browser.mobile=true` sessions");
        assert_eq!(sessions(&segment(&s)), "`browser.mobile=true` sessions");
        assert_eq!(sessions(&segment(&BTreeMap::new())), "sessions");
    }
}
