//! Incidents opened by detection: critical and high findings that share a cause
//! open one incident between them, which later findings of that cause join
//! while it is going; the RCA reads the traces through the operation where
//! detection saw the trouble start, in the findings' segment.

use std::collections::BTreeMap;
use std::sync::Arc;

use andon_model::{Finding, FindingState, Incident, IncidentState, Severity, Tenant, TimeWindow, Trouble};

use crate::localize::Channel;
use crate::{Hints, OpenIncident, Rca, RcaError};

/// An open incident whose cause has not been reported for this long is over:
/// the next finding with the same cause opens a new one.
pub const QUIET_HOURS: i64 = 6;

/// Whether a finding is serious enough to open an incident.
pub fn opens_incident(f: &Finding) -> bool {
    matches!(f.severity, Severity::Critical | Severity::High)
}

/// Findings that share this key share a cause: the change they are attributed
/// to, else where their trouble starts.
pub fn group_key(f: &Finding) -> String {
    match &f.change {
        Some(c) => format!("change\u{1f}{}\u{1f}{}", c.service, c.version),
        None => {
            let (s, o) = f.evidence.cause.as_ref().map_or((&f.service, &f.operation), |c| (&c.service, &c.operation));
            format!("cause\u{1f}{s}\u{1f}{o}")
        }
    }
}

/// The trouble an RCA follows for a finding, as its detector judged it: extra
/// time, or failures back to where they start; when neither explains it, the
/// RCA looks for whatever changed.
fn channel(f: &Finding) -> Option<Channel> {
    match f.trouble {
        Trouble::Latency => Some(Channel::Latency),
        Trouble::Failures => Some(Channel::Errors),
        Trouble::Unclear => None,
    }
}

/// The incident a group of findings with one cause asks for, or none when
/// their windows leave no baseline before the trouble.
fn plan(key: String, group: &[&Finding]) -> Option<(OpenIncident, Hints)> {
    let first = group.iter().min_by_key(|f| f.window.start).copied()?;
    let start = first.evidence.onset.unwrap_or(first.window.start).min(first.window.start);
    let end = group.iter().map(|f| f.window.end).max().unwrap_or(first.window.end);
    let baseline = TimeWindow { start: first.baseline_window.start, end: first.baseline_window.end.min(start) };
    if baseline.end <= baseline.start || end <= start {
        return None;
    }
    let segment = (!first.segment.is_empty()).then(|| {
        first
            .segment
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let origin =
        first.evidence.cause.as_ref().map_or((&first.service, &first.operation), |c| (&c.service, &c.operation));
    let req = OpenIncident {
        start,
        end,
        baseline_start: Some(baseline.start),
        baseline_end: Some(baseline.end),
        // Detection already found where the trouble starts: the RCA reads the
        // traces that call that operation, and digs beneath it.
        service: Some(origin.0.clone()),
        title: None,
    };
    let hints = Hints {
        opened_by: "detection".to_owned(),
        finding_ids: group.iter().map(|f| f.id.clone()).collect(),
        channel: channel(first),
        segment,
        operation: Some(origin.1.clone()),
        segment_filter: first.segment.clone(),
        group_key: Some(key),
        users_moved: first.trouble == Trouble::Unclear,
    };
    Some((req, hints))
}

impl Rca {
    /// Opens an incident for each group of open critical and high findings that
    /// share a cause, unless one is already going for it (then the findings
    /// join it). Returns the incidents opened.
    pub async fn open_for_findings(&self, tenant: &Tenant, findings: &[Finding]) -> Result<Vec<Incident>, RcaError> {
        let _one = self.opening.lock().await;
        let mut groups: BTreeMap<String, Vec<&Finding>> = BTreeMap::new();
        for f in findings {
            if f.state == FindingState::Open && opens_incident(f) {
                groups.entry(group_key(f)).or_default().push(f);
            }
        }
        let mut opened = Vec::new();
        for (key, group) in groups {
            let now = chrono::Utc::now();
            let (db, t, k) = (Arc::clone(&self.incidents), tenant.clone(), key.clone());
            if let Some(mut inc) = crate::blocking(move || db.open_for_key(&t, &k)).await? {
                if now - inc.updated_at <= chrono::Duration::hours(QUIET_HOURS) {
                    // Still going: the findings join it, and it was seen now.
                    for f in &group {
                        if !inc.finding_ids.contains(&f.id) {
                            inc.finding_ids.push(f.id.clone());
                        }
                    }
                    inc.updated_at = now;
                    self.save(tenant, inc, &key).await?;
                    continue;
                }
                // Quiet for hours, then back: the old incident is over, this is a new one.
                inc.state = IncidentState::Resolved;
                inc.updated_at = now;
                self.save(tenant, inc, &key).await?;
            }
            if let Some((req, hints)) = plan(key, &group) {
                opened.push(self.open(tenant, &req, hints).await?);
            }
        }
        Ok(opened)
    }

    async fn save(&self, tenant: &Tenant, inc: Incident, key: &str) -> Result<(), RcaError> {
        let (db, t, k) = (Arc::clone(&self.incidents), tenant.clone(), key.to_owned());
        crate::blocking(move || db.save(&t, &inc, Some(&k))).await
    }
}
