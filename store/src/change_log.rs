//! What each version of a table kept by minute may have changed
//! ([`crate::Store::metrics_changed_since`], [`crate::Store::sessions_changed_since`]).
//!
//! Each version notes, per tenant, the earliest start (Unix ns) whose minute
//! may show otherwise than at the version before; a change it cannot bound
//! (retention, a table dropped or rebuilt) is noted for every minute of every
//! tenant. A reader that keeps rows by minute reads again only the minutes
//! from the earliest start noted since it read them.
//!
//! `span_metrics`: a cell is one minute of spans by their start. Buffered
//! spans are rolled up when a query reads them, with what the spans that
//! arrived so far say of their sessions and failed children, so a span that
//! arrives may change the cells of any buffered span of its tenant, and a
//! flush fixes the buffered spans' cells as they are then: spans buffered
//! note the earliest start buffered for the tenant, a flush the earliest
//! start flushed, a compaction the start of the hour merged.
//!
//! `sessions`: a row is one minute of a session's calls of an operation, and
//! carries what the session says as a whole (its segment values, when it was
//! last seen), so a change to a session may change every row of it: the
//! change notes the first minute of each session it changed.

use std::collections::{BTreeMap, VecDeque};

use andon_model::Tenant;

/// How many versions are remembered; a reader further behind reads again.
const KEPT: usize = 4096;

/// Since which start each version may have changed a table.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    /// `(version, change)`, oldest first; `None` for a change to every minute of every tenant.
    changes: VecDeque<(u64, Option<BTreeMap<Tenant, i64>>)>,
}

impl ChangeLog {
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
        // Every version after `since` up to `now` must be remembered.
        let remembered = |(first, last): (u64, u64)| first <= since + 1 && last >= now;
        let span = self.changes.front().map(|c| c.0).zip(self.changes.back().map(|c| c.0));
        if !span.is_some_and(remembered) || since > now {
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
        let mut log = ChangeLog::default();
        log.note(1, Some(BTreeMap::from([(a.clone(), 500)])));
        log.note(2, Some(BTreeMap::from([(b.clone(), 100)])));
        log.note(3, Some(BTreeMap::from([(a.clone(), 300), (b.clone(), 900)])));
        assert_eq!(log.since(&a, 0, 3), Some(Some(300)));
        assert_eq!(log.since(&a, 1, 2), Some(None), "only b changed in version 2");
        assert_eq!(log.since(&b, 2, 3), Some(Some(900)));
        assert_eq!(log.since(&a, 3, 3), Some(None));
        assert_eq!(log.since(&a, 2, 4), None, "version 4 is not noted yet");
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
