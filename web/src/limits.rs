//! Per-tenant rate limits on the API calls that start work and queue it for
//! people: opening incidents (each runs an RCA and may draft a ticket) and
//! running analyses (each replays detection passes). A client in a loop can
//! neither flood the review queue nor keep the query engine busy for everyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::ApiError;

/// What is limited, per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    Incidents,
    Analyses,
    Investigations,
}

impl Work {
    fn as_str(self) -> &'static str {
        match self {
            Work::Incidents => "incidents",
            Work::Analyses => "analyses",
            Work::Investigations => "investigations",
        }
    }
}

/// A token bucket per (tenant, work): `per_minute` may be started in a burst,
/// and the bucket refills at `per_minute` a minute.
#[derive(Debug)]
pub struct RateLimits {
    per_minute: u32,
    buckets: Mutex<HashMap<(String, Work), (f64, Instant)>>,
}

impl RateLimits {
    /// `per_minute` of 0 turns the limits off.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::default() }
    }

    /// Takes one from `tenant`'s bucket for `work`, or says how long until one
    /// is there.
    pub fn take(&self, tenant: &str, work: Work) -> Result<(), Duration> {
        self.take_at(tenant, work, Instant::now())
    }

    fn take_at(&self, tenant: &str, work: Work, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = buckets.entry((tenant.to_owned(), work)).or_insert((cap, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }

    /// `take`, as the API answers it: the 429 with `Retry-After` to send when
    /// the bucket is empty, `None` when the work may start.
    pub fn refusal(&self, tenant: &str, work: Work) -> Option<Response> {
        self.take(tenant, work).err().map(|wait| {
            let secs = wait.as_secs().max(1);
            let mut r = ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many {} for tenant {tenant}: at most {} a minute; retry in {secs}s",
                    work.as_str(),
                    self.per_minute
                ),
            )
            .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_one_a_refill_and_tenants_do_not_share() {
        let limits = RateLimits::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limits.take_at("shop", Work::Incidents, t0).is_ok());
        }
        let wait = limits.take_at("shop", Work::Incidents, t0).unwrap_err();
        assert!((19.0..=20.5).contains(&wait.as_secs_f64()), "{wait:?}");
        // Another tenant, and another kind of work, have buckets of their own.
        assert!(limits.take_at("bank", Work::Incidents, t0).is_ok());
        assert!(limits.take_at("shop", Work::Analyses, t0).is_ok());
        // Twenty seconds later one more may start, and no second one.
        let later = t0 + Duration::from_secs(20);
        assert!(limits.take_at("shop", Work::Incidents, later).is_ok());
        assert!(limits.take_at("shop", Work::Incidents, later).is_err());
        assert!(RateLimits::new(0).take_at("shop", Work::Incidents, t0).is_ok(), "0 is off");
    }
}
