//! Attributing a finding to a change: the version of the service where the
//! trouble starts that first served just before the onset.

use andon_model::ChangeRef;
use chrono::{DateTime, TimeZone, Utc};

use crate::detector::Ctx;
use crate::sql::{self, Rows};

/// When each version of each service first served in the pass's range.
pub fn versions_query(ctx: &Ctx) -> String {
    sql::render(include_str!("detectors/versions.sql"), &ctx.vars(""))
}

/// The change a finding follows: a version of the service where the trouble
/// starts that first served within 30 minutes before the onset (or, with no
/// onset, inside the current window).
pub fn attribute(versions: &Rows, service: &str, onset: Option<DateTime<Utc>>, ctx: &Ctx) -> Option<ChangeRef> {
    let settle = ctx.baseline_start + chrono::Duration::minutes(2);
    let mut best: Option<(DateTime<Utc>, ChangeRef)> = None;
    for r in versions.iter() {
        if r.str("service").as_deref() != Some(service) {
            continue;
        }
        let Some(first) = r.i64("first_seen").map(|ns| Utc.timestamp_nanos(ns)) else { continue };
        if first <= settle {
            continue;
        }
        let fits = match onset {
            Some(o) => first <= o + chrono::Duration::minutes(2) && first >= o - chrono::Duration::minutes(30),
            None => first >= ctx.split - chrono::Duration::minutes(30),
        };
        if !fits || best.as_ref().is_some_and(|(b, _)| *b > first) {
            continue;
        }
        best = Some((
            first,
            ChangeRef {
                service: service.to_owned(),
                version: r.str("version").unwrap_or_default(),
                commit: r.str("commit"),
                pr: r.str("pr").and_then(|p| p.trim_start_matches('#').parse().ok()),
                first_seen: Some(first),
            },
        ));
    }
    best.map(|(_, c)| c)
}
