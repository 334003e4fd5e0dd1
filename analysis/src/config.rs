//! What the detectors compare and how sure they must be.

use serde::{Deserialize, Serialize};

/// A funnel: ordered steps, each matching a server span's `METHOD http.route`,
/// `http.route` or span name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Run a pass every this many seconds; 0 turns continuous detection off.
    pub interval_secs: u64,
    /// The current window of a continuous pass, ending now.
    pub window_secs: u64,
    /// The baseline window, just before the current one.
    pub baseline_secs: u64,
    /// A continuous pass also judges its last `recent_secs` against the same
    /// baseline, with the detectors that can judge so short a window (latency,
    /// error rate and retries, against at least 30 periods of its length), so that
    /// a fault that stands out within a minute is reported by the first pass
    /// after its onset instead of once it fills enough of `window_secs`. 0
    /// turns the short window off.
    pub recent_secs: u64,
    /// A continuous pass's current window ends this long before now, and its
    /// trace samples leave out traces that received a span in this time:
    /// exporters batch spans for seconds, so a trace still arriving is
    /// incomplete (a caller's span here, its callee's not yet).
    pub settle_secs: u64,
    /// Attributes findings are broken down by.
    pub segments: Vec<String>,
    /// Funnels for `drop_off`; empty means discover every journey enough
    /// sessions follow.
    pub flows: Vec<Flow>,
    /// A session with no request for this long has ended.
    pub session_timeout_secs: u64,
    /// A call of the same operation within this long after a failure is a retry.
    pub retry_interval_secs: u64,
    /// False discovery rate of a pass, over subjects (kind, service,
    /// operation) and within the selected ones (`statistics::two_level_fdr`).
    pub fdr: f64,
    /// Samples each side of a subject (an operation, a funnel step) needs
    /// before it is compared at all.
    pub min_samples: u64,
    /// Samples each side of one segment of a subject needs to be tested at
    /// all. Below `min_samples` such a segment is too thin to discover a
    /// problem in among every test of a pass, and is tested only to confirm
    /// what a problem already found does to users there (the drop-off at a
    /// step whose errors a well-sampled test found, on one client platform).
    pub segment_min_samples: u64,
    /// Latency: the Hodges–Lehmann shift's 95% confidence interval must lie at
    /// or above this factor (1.25 = +25%).
    pub latency_min_ratio: f64,
    /// Latency: and the median must rise by at least this many milliseconds.
    pub latency_min_ms: f64,
    /// Rates (errors, retries, recoveries): the current rate must be at least this
    /// many times the baseline rate...
    pub rate_min_ratio: f64,
    /// ...and at least this much higher in absolute terms (0.005 = half a point).
    pub rate_min_delta: f64,
    /// Drop-off: step conversion must fall by at least this fraction.
    pub drop_min_relative: f64,
    /// A drop-off falling by at least this fraction is reported as the finding,
    /// with the errors behind it linked under it; a smaller one is reported as the
    /// impact of the error regression that explains it.
    pub drop_headline_relative: f64,
    /// A finding not seen again for this long is resolved.
    pub resolve_after_secs: u64,
    /// Example trace ids per finding.
    pub exemplars: usize,
    /// A backtest replays passes every `interval_secs` (every minute when
    /// continuous detection is off), spaced further apart when the range would
    /// take more passes than this.
    pub replay_max_passes: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            window_secs: 1800,
            baseline_secs: 3 * 3600,
            recent_secs: 60,
            settle_secs: 10,
            segments: ["browser.mobile", "os.type", "cloud.region", "service.version"].map(str::to_owned).to_vec(),
            flows: Vec::new(),
            session_timeout_secs: 900,
            retry_interval_secs: 30,
            fdr: 0.01,
            min_samples: 40,
            segment_min_samples: 20,
            latency_min_ratio: 1.25,
            latency_min_ms: 2.0,
            rate_min_ratio: 2.0,
            rate_min_delta: 0.005,
            drop_min_relative: 0.08,
            drop_headline_relative: 0.2,
            resolve_after_secs: 3600,
            exemplars: 5,
            replay_max_passes: 48,
        }
    }
}

impl AnalysisConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window_secs == 0 || self.baseline_secs == 0 {
            return Err("analysis.window_secs and analysis.baseline_secs must be positive".into());
        }
        if self.recent_secs > self.window_secs {
            return Err("analysis.recent_secs must be at most analysis.window_secs".into());
        }
        if self.settle_secs > andon_store::ARRIVALS_HORIZON_SECS as u64 {
            return Err(format!(
                "analysis.settle_secs must be at most {} (how long arrivals are remembered)",
                andon_store::ARRIVALS_HORIZON_SECS
            ));
        }
        if self.replay_max_passes == 0 {
            return Err("analysis.replay_max_passes must be positive".into());
        }
        if self.segment_min_samples == 0 || self.segment_min_samples > self.min_samples {
            return Err("analysis.segment_min_samples must be between 1 and analysis.min_samples".into());
        }
        if !(0.0..1.0).contains(&self.fdr) || self.fdr == 0.0 {
            return Err("analysis.fdr must be between 0 and 1".into());
        }
        for s in &self.segments {
            crate::sql::segment_column(s)?;
        }
        for f in &self.flows {
            if f.steps.len() < 2 {
                return Err(format!("flow {:?} needs at least two steps", f.name));
            }
        }
        Ok(())
    }
}
