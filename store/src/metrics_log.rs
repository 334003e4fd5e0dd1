//! What each change of `span_metrics` may have changed, by version
//! ([`crate::Store::metrics_changed_since`]).
//!
//! A cell of `span_metrics` is one minute of spans by their start. Buffered
//! spans are rolled up when a query reads them, with what the spans that
//! arrived so far say of their sessions and failed children, so a span that
//! arrives may change the cells of any buffered span of its tenant, and a
//! flush fixes the buffered spans' cells as they are then. Each version
//! notes, per tenant, the earliest start whose minute may show otherwise
//! since the version before: for spans buffered, the earliest start buffered
//! for the tenant; for a flush, the earliest start flushed; for a
//! compaction, the start of the hour merged. A change it cannot bound
//! (retention, rollups made or dropped) is noted for every tenant.

use std::collections::{BTreeMap, VecDeque};

use andon_model::Tenant;

/// How many versions are remembered; a reader further behind reads again.
const KEPT: usize = 4096;

/// Since which start each version may have changed `span_metrics`.
#[derive(Debug, Default)]
pub(crate) struct MetricsLog {
    /// `(version, change)`, oldest first; `None` for a change to every minute of every tenant.
    changes: VecDeque<(u64, Option<BTreeMap<Tenant, i64>>)>,
}

impl MetricsLog {
    /// Notes what `version` may have changed.
    pub(crate) fn note(&mut self, version: u64, change: Option<BTreeMap<Tenant, i64>>) {
        self.changes.push_back((version, change));
        while self.changes.len() > KEPT {
            self.changes.pop_front();
        }
    }

    /// The earliest start (Unix ns) whose minute of `tenant` may show
    /// otherwise at `now` than at version `since`: `Some(None)` when none,
    /// `None` when it cannot tell.
    pub(crate) fn since(&self, tenant: &Tenant, since: u64, now: u64) -> Option<Option<i64>> {
        if since == now {
            return Some(None);
        }
        // Every version after `since` must be remembered.
        if self.changes.front().is_none_or(|(v, _)| *v > since + 1) || since > now {
            return None;
        }
        let mut earliest: Option<i64> = None;
        for (_, change) in self.changes.iter().filter(|(v, _)| *v > since && *v <= now) {
            match change {
                None => return None,
                Some(by_tenant) => {
                    if let Some(at) = by_tenant.get(tenant) {
                        earliest = Some(earliest.map_or(*at, |e| e.min(*at)));
                    }
                }
            }
        }
        Some(earliest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_earliest_start_a_tenant_may_have_changed_since_a_version_until_it_cannot() {
        let (a, b) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let mut log = MetricsLog::default();
        log.note(1, Some(BTreeMap::from([(a.clone(), 500)])));
        log.note(2, Some(BTreeMap::from([(b.clone(), 100)])));
        log.note(3, Some(BTreeMap::from([(a.clone(), 300), (b.clone(), 900)])));
        assert_eq!(log.since(&a, 0, 3), Some(Some(300)));
        assert_eq!(log.since(&a, 1, 2), Some(None), "only b changed in version 2");
        assert_eq!(log.since(&b, 2, 3), Some(Some(900)));
        assert_eq!(log.since(&a, 3, 3), Some(None));
        log.note(4, None);
        assert_eq!(log.since(&a, 3, 4), None, "retention: every minute");
        assert_eq!(log.since(&a, 4, 4), Some(None));
        for v in 5..5 + KEPT as u64 {
            log.note(v, Some(BTreeMap::new()));
        }
        assert_eq!(log.since(&a, 3, 4 + KEPT as u64), None, "version 4 is forgotten");
        assert_eq!(log.since(&a, 4, 4 + KEPT as u64), Some(None));
    }
}
