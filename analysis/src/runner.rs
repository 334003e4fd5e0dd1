//! Continuous detection: every `interval_secs`, a pass per tenant over the
//! `window_secs` ending `settle_secs` ago, against the `baseline_secs` before
//! it, with traces still arriving left out of its trace samples. What follows a pass
//! (recording its findings, resolving those not seen for
//! `resolve_after_secs`, tickets and incidents) is the caller's [`AfterPass`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::warn;

use andon_model::{Finding, Tenant};

use crate::{Analyzer, Windows};

/// Handed each pass's findings and the cutoff before which findings not seen
/// again are resolved.
pub type AfterPass = Arc<
    dyn Fn(Tenant, Vec<Finding>, DateTime<Utc>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Counters of the continuous runner, for `/metrics`.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub passes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    pub findings: std::sync::atomic::AtomicU64,
    pub last_pass_ms: std::sync::atomic::AtomicU64,
}

/// Runs passes until `stop` turns true. Each pass's reads run on the query
/// engine's own runtime, so ingest is never blocked by detection.
pub async fn run(analyzer: Analyzer, stats: Arc<RunnerStats>, after_pass: AfterPass, mut stop: watch::Receiver<bool>) {
    use std::sync::atomic::Ordering::Relaxed;
    let cfg = analyzer.config().clone();
    if cfg.interval_secs == 0 {
        return;
    }
    // Passes a whole number of minutes apart run `settle_secs` past a minute,
    // so that their windows end on whole minutes and read the rollups.
    let period = Duration::from_secs(cfg.interval_secs);
    let first = if cfg.interval_secs.is_multiple_of(60) {
        let into =
            (Utc::now() - chrono::Duration::seconds(cfg.settle_secs as i64)).timestamp_millis().rem_euclid(60_000);
        tokio::time::Instant::now() + Duration::from_millis((60_000 - into as u64) % 60_000)
    } else {
        tokio::time::Instant::now()
    };
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Utc::now();
        // Judge what has settled: the window ends `settle_secs` ago, and traces
        // that received a span since are left out of its trace samples.
        let settled = now - chrono::Duration::seconds(cfg.settle_secs as i64);
        let end = if cfg.interval_secs.is_multiple_of(60) { crate::engine::floor_minute(settled) } else { settled };
        let windows = Windows::before(end - chrono::Duration::seconds(cfg.window_secs as i64), end, cfg.baseline_secs);
        let hours = (windows.baseline_start.timestamp().div_euclid(3600), now.timestamp().div_euclid(3600));
        for tenant in analyzer.engine().store().tenants(hours) {
            let started = std::time::Instant::now();
            match analyzer.continuous(&tenant, windows, Some(settled)).await {
                Ok(report) => {
                    stats.passes.fetch_add(1, Relaxed);
                    stats.last_pass_ms.store(started.elapsed().as_millis() as u64, Relaxed);
                    stats.findings.fetch_add(report.findings.len() as u64, Relaxed);
                    let cutoff = now - chrono::Duration::seconds(cfg.resolve_after_secs as i64);
                    if let Err(e) = after_pass(tenant.clone(), report.findings, cutoff).await {
                        warn!(tenant = %tenant.as_str(), error = %e, "recording a detection pass failed");
                    }
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Relaxed);
                    warn!(tenant = %tenant.as_str(), error = %e, "detection pass failed");
                }
            }
        }
    }
}
