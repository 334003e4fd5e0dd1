//! The signature and the onset: the culprit's metric before and during the
//! incident, and when it changed (change-point detection on a series over both
//! windows, walked back to where the rise begins, so a rolling deploy's onset
//! is its first minutes rather than the middle of the ramp).

use andon_model::statistics as stats;
use andon_model::{FindingKind, Signature, Suspect, SuspectCause, Tenant, TimeWindow};
use andon_store::QueryEngine;
use andon_store::sql::{self, lit};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::RcaError;
use crate::localize::Channel;

/// The spans whose metric the signature follows, as a SQL condition on `s`.
pub fn subject_filter(suspect: &Suspect) -> String {
    let (svc, op) = (lit(&suspect.service), lit(&suspect.operation));
    match suspect.cause {
        // The hop shows in the callers' client spans around the suspect's server spans.
        SuspectCause::Network => format!(
            "s.kind = 'client' AND s.span_id IN (SELECT parent_span_id FROM spans s WHERE s.service_name = {svc} \
             AND {} = {op} AND s.kind = 'server')",
            sql::OPERATION
        ),
        _ => format!("s.service_name = {svc} AND {} = {op}", sql::OPERATION),
    }
}

/// The metric of a release's signature: the share of the suspect operation's
/// requests that the new version serves.
pub const NEW_VERSION_SHARE: &str = "new_version_share";

/// The kind of a release's signature.
pub const RELEASE: FindingKind = FindingKind::new("release");

/// One point of the series.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub requests: u64,
    /// p95 latency in ms, or the error rate.
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Measured {
    pub signature: Signature,
    pub series: Vec<Point>,
    pub bucket_secs: i64,
    pub queries: Vec<String>,
}

/// The `q` quantile of sorted values (nearest rank); 0 when there are none.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures the top suspect's metric in both windows and over the range.
pub async fn measure(
    engine: &QueryEngine,
    tenant: &Tenant,
    top: &Suspect,
    channel: Channel,
    baseline: &TimeWindow,
    incident: &TimeWindow,
) -> Result<Measured, RcaError> {
    let filter = subject_filter(top);
    // The series runs from the baseline through the incident when the one
    // leads into the other; a baseline from another time (a fault-free
    // recording) is read for its numbers only.
    let leads_in = baseline.end <= incident.start && incident.start - baseline.end <= incident.end - incident.start;
    let from = if leads_in { baseline.start } else { incident.start };
    let to = incident.end;
    let span_secs = (to - from).num_seconds().max(60);
    // About 60 points, at least 5 s each.
    let bucket_secs = (span_secs / 60).max(5);
    let q = format!(
        "SELECT CAST(s.start_time AS BIGINT) AS t, s.duration_ns, CASE WHEN s.status_code = 'error' THEN 1 ELSE 0 END AS err,\n       \
         {new} AS new\n\
         FROM spans s\nWHERE ((s.start_time >= {} AND s.start_time < {}) OR (s.start_time >= {} AND s.start_time < {}))\n  \
         AND {filter}\nLIMIT 500000",
        sql::ts(baseline.start),
        sql::ts(baseline.end),
        sql::ts(from),
        sql::ts(to),
        new = match &top.version {
            Some(v) if top.cause == SuspectCause::Release => {
                format!("CASE WHEN s.service_version = {} THEN 1 ELSE 0 END", lit(v))
            }
            _ => "0".to_owned(),
        },
    );
    // A release changed neither time nor failures: its signature is how much
    // of the operation the new version serves, which rises at its rollout.
    let release = top.cause == SuspectCause::Release;
    let out = engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
    let rows = andon_store::sql::Rows::new(out.batches);
    let inside = |w: &TimeWindow, t: i64| {
        t >= w.start.timestamp_nanos_opt().unwrap_or(i64::MIN) && t < w.end.timestamp_nanos_opt().unwrap_or(i64::MAX)
    };
    let from_ns = from.timestamp_nanos_opt().unwrap_or(0);
    let n_buckets = (span_secs / bucket_secs + 1) as usize;
    let mut buckets: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); n_buckets];
    let (mut base, mut cur) = ((Vec::new(), 0u64), (Vec::new(), 0u64));
    for r in rows.iter() {
        let (Some(t), Some(d)) = (r.i64("t"), r.i64("duration_ns")) else { continue };
        let ms = d as f64 / 1e6;
        // What the metric counts: failures, or requests on the new version.
        let err = r.i64(if release { "new" } else { "err" }).unwrap_or(0) as u64;
        for (w, side) in [(baseline, &mut base), (incident, &mut cur)] {
            if inside(w, t) {
                side.0.push(ms);
                side.1 += err;
            }
        }
        let i = (t - from_ns) / 1_000_000_000 / bucket_secs;
        if let Some(b) = usize::try_from(i).ok().and_then(|i| buckets.get_mut(i)) {
            b.0.push(ms);
            b.1 += err;
        }
    }
    let value = |v: &mut Vec<f64>, errors: u64| match channel {
        _ if release => errors as f64 / v.len().max(1) as f64,
        Channel::Latency => {
            v.sort_by(f64::total_cmp);
            quantile(v, 0.95)
        }
        Channel::Errors => errors as f64 / v.len().max(1) as f64,
    };
    let series: Vec<Point> = buckets
        .iter_mut()
        .enumerate()
        .filter(|(_, b)| !b.0.is_empty())
        .map(|(i, b)| Point {
            at: from + Duration::seconds(i as i64 * bucket_secs),
            requests: b.0.len() as u64,
            value: value(&mut b.0, b.1),
        })
        .collect();
    let onset = find_onset(&series, baseline, incident);
    let (kind, metric) = match channel {
        _ if release => (RELEASE, NEW_VERSION_SHARE),
        Channel::Latency => (FindingKind::LatencyRegression, "p95_ms"),
        Channel::Errors => (FindingKind::ErrorRateRegression, "error_rate"),
    };
    let signature = Signature {
        kind,
        service: top.service.clone(),
        operation: top.operation.clone(),
        metric: metric.to_owned(),
        baseline_value: round(value(&mut base.0, base.1)),
        incident_value: round(value(&mut cur.0, cur.1)),
        onset,
        observed_at: (top.cause == SuspectCause::Network).then(|| "the callers' client spans".to_owned()),
    };
    Ok(Measured { signature, series, bucket_secs, queries: vec![q] })
}

fn round(v: f64) -> f64 {
    if v.abs() >= 1.0 { (v * 100.0).round() / 100.0 } else { (v * 10_000.0).round() / 10_000.0 }
}

/// The change point of the series, walked back to where the rise begins. The
/// split must raise the level (a fall is not an incident's onset) and lie
/// after the baseline.
pub fn find_onset(series: &[Point], baseline: &TimeWindow, incident: &TimeWindow) -> Option<DateTime<Utc>> {
    let values: Vec<f64> = series.iter().map(|p| p.value).collect();
    let k = stats::change_point(&values, 0.2)?;
    let before = values[..k].iter().sum::<f64>() / k as f64;
    let after = values[k..].iter().sum::<f64>() / (values.len() - k) as f64;
    if after <= before {
        return None;
    }
    let level = before + 0.25 * (after - before);
    let mut i = k;
    while i > 0 && values[i - 1] > level && series[i - 1].at >= baseline.end.min(incident.start) {
        i -= 1;
    }
    Some(series[i].at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_onset_is_where_a_ramp_begins_not_its_middle() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-21T09:00:00Z").unwrap().with_timezone(&Utc);
        let at = |m: i64| t0 + Duration::minutes(m);
        // Flat at 10 until minute 40, a ramp to 80 over 10 minutes, then flat.
        let series: Vec<Point> = (0..80)
            .map(|m| {
                let v = match m {
                    ..40 => 10.0 + (m % 3) as f64,
                    40..50 => 10.0 + 7.0 * (m - 39) as f64,
                    _ => 80.0 + (m % 2) as f64,
                };
                Point { at: at(m), requests: 100, value: v }
            })
            .collect();
        let baseline = TimeWindow { start: at(0), end: at(30) };
        let incident = TimeWindow { start: at(30), end: at(80) };
        let onset = find_onset(&series, &baseline, &incident).unwrap();
        assert!(onset >= at(39) && onset <= at(42), "{onset}");
        // A fall is not an onset.
        let falling: Vec<Point> = series.iter().map(|p| Point { value: 100.0 - p.value, ..p.clone() }).collect();
        assert_eq!(find_onset(&falling, &baseline, &incident), None);
    }
}
