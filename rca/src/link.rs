//! Linking the incident to a change: deploys of the suspects' services near the
//! onset, from the lineage (posted) and from the spans (a `service.version`
//! first seen in the range, commit and PR from `vcs.*`), each scored on three
//! counts a person can check: how close it came before the onset, how strongly
//! its service is suspected, and whether requests served by the new version are
//! worse than requests served by the old one at the same time.

use std::collections::BTreeMap;

use std::sync::Arc;

use andon_model::format::ms;
use andon_model::statistics as stats;
use andon_model::{ChangeEvent, ImplicatedChange, Suspect, SuspectCause, Tenant, TimeWindow};
use andon_store::QueryEngine;
use andon_store::sql::{self, Rows, lit};
use chrono::{DateTime, Duration, Utc};

use crate::localize::Channel;
use crate::onset::subject_filter;
use crate::{ChangeFilter, ChangesDb, RcaError};

/// How far around the onset a change may lie to be linked.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// A deploy this long before the onset can still have caused it.
    pub before: Duration,
    /// Clocks and rollouts: a deploy recorded this long after the onset still counts.
    pub after: Duration,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { before: Duration::minutes(60), after: Duration::minutes(5) }
    }
}

/// Versions first seen in spans in `[from, to)` that did not serve in the
/// `lookback` before `from` (of `services`, or of every service): these are
/// deploys, whether or not a pipeline reported them. Each is recorded in the
/// lineage as inferred, unless that version is already there.
pub async fn infer_versions(
    engine: &QueryEngine,
    tenant: &Tenant,
    changes: &Arc<ChangesDb>,
    services: Option<&[String]>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    lookback: Duration,
) -> Result<(String, Vec<String>), RcaError> {
    let only = services
        .map(|list| {
            let list = list.iter().map(|s| lit(s)).collect::<Vec<_>>().join(", ");
            format!(" AND service_name IN ({list})")
        })
        .unwrap_or_default();
    let q = format!(
        "WITH seen AS (\n    SELECT service_name AS service, service_version AS version, min(start_time) AS first_seen,\n           \
         max(vcs_ref_head_revision) AS commit, max(vcs_change_id) AS pr, max(vcs_repository_url_full) AS repository\n    \
         FROM spans\n    WHERE start_time >= {from} AND start_time < {to} AND service_version IS NOT NULL{only}\n    \
         GROUP BY service_name, service_version\n), before AS (\n    \
         SELECT DISTINCT service_name AS service, service_version AS version FROM spans\n    \
         WHERE start_time >= {back} AND start_time < {from} AND service_version IS NOT NULL{only}\n)\n\
         SELECT seen.service, seen.version, CAST(seen.first_seen AS BIGINT) AS first_seen, seen.commit, seen.pr, seen.repository\n\
         FROM seen LEFT JOIN before ON seen.service = before.service AND seen.version = before.version\n\
         WHERE before.service IS NULL",
        from = sql::ts(from),
        to = sql::ts(to),
        back = sql::ts(from - lookback),
    );
    if services.is_some_and(<[String]>::is_empty) {
        return Ok((q, Vec::new()));
    }
    let mut events = Vec::new();
    let out = engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
    // A version serving from the first minute of the range may be older than
    // the data (the lookback can reach before the first span): not a deploy.
    let settled = from + Duration::minutes(1);
    for r in Rows::new(out.batches).iter() {
        let (Some(service), Some(version), Some(first)) = (r.str("service"), r.str("version"), r.i64("first_seen"))
        else {
            continue;
        };
        if DateTime::from_timestamp_nanos(first) <= settled {
            continue;
        }
        let commit = r.str("commit").filter(|c| c.len() >= 7 && c.bytes().all(|b| b.is_ascii_hexdigit()));
        let pr = r.str("pr").and_then(|p| p.trim_start_matches('#').parse().ok());
        let repository = r.str("repository").filter(|u| u.starts_with("https://") || u.starts_with("http://"));
        let event = ChangeEvent {
            service,
            version,
            environment: None,
            deployed_at: DateTime::from_timestamp_nanos(first),
            commit,
            repository,
            pr,
            title: None,
            author: None,
            gates: Vec::new(),
        };
        events.push(event);
    }
    // A malformed inference is skipped, not fatal to the analysis.
    let (db, t) = (Arc::clone(changes), tenant.clone());
    let recorded = crate::blocking(move || {
        Ok(events.into_iter().filter_map(|event| db.infer(&t, event).ok().flatten()).collect::<Vec<_>>())
    })
    .await?;
    Ok((q, recorded))
}

/// What the candidates were and why the best one won.
#[derive(Debug, Clone)]
pub struct Linked {
    pub change: Option<ImplicatedChange>,
    /// Every candidate considered, with its confidence.
    pub considered: Vec<(String, String, f64)>,
    pub queries: Vec<String>,
}

/// The new version against the others on the suspect's own spans: at the same
/// time when both served, else the new one in the incident against the
/// baseline. `Some(true)` when the new version is significantly worse.
async fn version_evidence(
    engine: &QueryEngine,
    tenant: &Tenant,
    suspect: &Suspect,
    channel: Channel,
    version: &str,
    baseline: &TimeWindow,
    incident: &TimeWindow,
) -> Result<(Option<bool>, String, String), RcaError> {
    let q = format!(
        "SELECT CASE WHEN s.start_time >= {i0} THEN 1 ELSE 0 END AS cur, s.service_version AS version, s.duration_ns,\n       \
         CASE WHEN s.status_code = 'error' THEN 1 ELSE 0 END AS err\nFROM spans s\n\
         WHERE ((s.start_time >= {b0} AND s.start_time < {b1}) OR (s.start_time >= {i0} AND s.start_time < {i1})) AND {f}\n\
         LIMIT 500000",
        i0 = sql::ts(incident.start),
        i1 = sql::ts(incident.end),
        b0 = sql::ts(baseline.start),
        b1 = sql::ts(baseline.end),
        f = subject_filter(suspect)
    );
    let out = engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
    /// Latency histogram, failures, requests and durations of one cell.
    #[derive(Default)]
    struct Cell(stats::Histogram, u64, u64, Vec<f64>);
    // (new version?, incident window?) -> cell
    let mut cells: BTreeMap<(bool, bool), Cell> = BTreeMap::new();
    for r in Rows::new(out.batches).iter() {
        let new = r.str("version").as_deref() == Some(version);
        let cur = r.i64("cur") == Some(1);
        let d = r.i64("duration_ns").unwrap_or(0) as f64 / 1e6;
        let c = cells.entry((new, cur)).or_default();
        *c.0.entry((d.max(0.001).ln() * 20.0).round() as i64).or_default() += 1;
        c.1 += r.i64("err").unwrap_or(0) as u64;
        c.2 += 1;
        c.3.push(d);
    }
    let (old_key, how) = if cells.get(&(false, true)).is_some_and(|c| c.2 >= 20) {
        ((false, true), "served at the same time")
    } else {
        ((false, false), "in the baseline")
    };
    let (Some(new), Some(old)) = (cells.get(&(true, true)), cells.get(&old_key)) else {
        return Ok((None, String::new(), q));
    };
    if new.2 < 10 || old.2 < 10 {
        return Ok((None, String::new(), q));
    }
    let p95 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        crate::onset::quantile(&v, 0.95)
    };
    Ok(match channel {
        Channel::Latency => {
            let t = stats::mann_whitney(&old.0, &new.0, 0.95);
            let worse = t.is_some_and(|t| t.p_value < 0.001);
            let text = format!(
                "{} requests on {version} have p95 {} against {} on the version it replaced ({how})",
                new.2,
                ms(p95(&new.3)),
                ms(p95(&old.3))
            );
            (Some(worse), text, q)
        }
        Channel::Errors => {
            let t = stats::proportion_greater(old.1, old.2, new.1, new.2);
            let worse = t.is_some_and(|t| t.p_value < 0.001);
            let text = format!(
                "{:.1}% of {} requests on {version} fail against {:.1}% on the version it replaced ({how})",
                new.1 as f64 * 100.0 / new.2 as f64,
                new.2,
                old.1 as f64 * 100.0 / old.2 as f64
            );
            (Some(worse), text, q)
        }
    })
}

/// The version of `service` that served most in the hour before `at`.
async fn previous_version(
    engine: &QueryEngine,
    tenant: &Tenant,
    service: &str,
    version: &str,
    at: DateTime<Utc>,
) -> Result<Option<String>, RcaError> {
    let q = format!(
        "SELECT service_version AS version, count(*) AS n FROM spans\n\
         WHERE service_name = {} AND start_time >= {} AND start_time < {} AND service_version IS NOT NULL \
         AND service_version <> {}\nGROUP BY 1 ORDER BY 2 DESC LIMIT 1",
        lit(service),
        sql::ts(at - Duration::hours(1)),
        sql::ts(at),
        lit(version)
    );
    let out = engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
    Ok(Rows::new(out.batches).iter().next().and_then(|r| r.str("version")))
}

#[allow(clippy::too_many_arguments)]
pub async fn link(
    engine: &QueryEngine,
    tenant: &Tenant,
    changes: &Arc<ChangesDb>,
    suspects: &[Suspect],
    channel: Channel,
    onset: Option<DateTime<Utc>>,
    resolution: Duration,
    baseline: &TimeWindow,
    incident: &TimeWindow,
    tol: Tolerance,
) -> Result<Linked, RcaError> {
    let anchor = onset.unwrap_or(incident.start);
    let mut services: Vec<String> = Vec::new();
    for s in suspects {
        if !services.contains(&s.service) && services.len() < 3 {
            services.push(s.service.clone());
        }
    }
    let mut queries = vec![
        infer_versions(
            engine,
            tenant,
            changes,
            Some(&services),
            anchor - tol.before - Duration::minutes(10),
            incident.end,
            Duration::hours(1),
        )
        .await?
        .0,
    ];
    let mut considered = Vec::new();
    let mut best: Option<ImplicatedChange> = None;
    for service in &services {
        let share: f64 = suspects.iter().filter(|s| &s.service == service).map(|s| s.score).sum::<f64>().min(1.0);
        let Some(top) = suspects.iter().find(|s| &s.service == service) else { continue };
        let f = ChangeFilter { service: Some(service.clone()), since: Some(anchor - tol.before) };
        let (db, t) = (Arc::clone(changes), tenant.clone());
        for (_, stored) in crate::blocking(move || db.list(Some(&t), &f)).await? {
            let c = &stored.change;
            let lead = anchor - c.deployed_at;
            if lead < -tol.after {
                continue;
            }
            let lead_min = lead.num_seconds() as f64 / 60.0;
            let time_score = if lead_min <= 0.0 { 0.8 } else { (-lead_min / 20.0).exp() };
            let (evidence, evidence_text, q) = if top.cause == SuspectCause::Network {
                (None, String::new(), String::new())
            } else if top.cause == SuspectCause::Release {
                // The suspect is a version: the change either is it or is not.
                let is = top.version.as_deref() == Some(c.version.as_str());
                let text = if is {
                    format!("{} is the version the incident's traces newly run", c.version)
                } else {
                    String::new()
                };
                (Some(is), text, String::new())
            } else {
                version_evidence(engine, tenant, top, channel, &c.version, baseline, incident).await?
            };
            if !q.is_empty() {
                queries.push(q);
            }
            let version_score = match evidence {
                Some(true) => 1.0,
                Some(false) => 0.0,
                None => 0.5,
            };
            let confidence = ((0.35 * time_score + 0.35 * version_score + 0.3 * share) * 100.0).round() / 100.0;
            considered.push((stored.id.clone(), format!("{} {}", c.service, c.version), confidence));
            if best.as_ref().is_some_and(|b| b.confidence >= confidence) || confidence < 0.4 {
                continue;
            }
            let when = if lead.abs() <= resolution {
                format!("at the onset (the series has {} s points)", resolution.num_seconds())
            } else if lead_min >= 0.0 {
                format!("{} before the onset", minutes(lead_min))
            } else {
                format!("{} after the onset it is recorded at (within the tolerance)", minutes(-lead_min))
            };
            let mut why = format!(
                "{} {} began rolling out at {}, {when}; {} is the {} suspect (score {:.2})",
                c.service,
                c.version,
                c.deployed_at.format("%H:%M UTC"),
                c.service,
                if suspects.first().is_some_and(|s| &s.service == service) { "top" } else { "a" },
                share
            );
            if !evidence_text.is_empty() {
                why.push_str(&format!("; {evidence_text}"));
                if evidence == Some(false) {
                    why.push_str(", which does not set it apart");
                }
            }
            let previous = previous_version(engine, tenant, &c.service, &c.version, c.deployed_at).await?;
            best = Some(ImplicatedChange {
                id: stored.id.clone(),
                event: c.clone(),
                confidence,
                why,
                previous_version: previous,
                inferred: stored.inferred,
            });
        }
    }
    considered.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(Linked { change: best, considered, queries })
}

fn minutes(m: f64) -> String {
    if m < 1.0 {
        format!("{:.0} s", m * 60.0)
    } else if (m - 1.0).abs() < 0.5 {
        "1 minute".to_owned()
    } else {
        format!("{:.0} minutes", m)
    }
}
