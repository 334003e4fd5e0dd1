//! The RCA of one incident, step by step: localize the culprit from the traces,
//! measure its signature and onset, link the change, hold the change's gates
//! against production, find similar incidents, suggest remediation and write
//! the narrative. Each step is recorded on the incident with what it ran.

use std::sync::Arc;
use std::time::Instant;

use andon_model::{
    Discrepancy, Incident, IncidentState, ModelExchange, NarrativeSource, RcaStep, SuspectCause, Tenant, TimeWindow,
};
use andon_store::QueryEngine;
use andon_store::sql::{self, Rows, lit};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::gates::{self, Observed};
use crate::incidents::IncidentsDb;
use crate::link::{self, Tolerance};
use crate::localize::{self, Channel, LocalizeLimits};
use crate::narrate::{Narrator, TemplateNarrator};
use crate::onset;
use crate::{ChangesDb, RcaError};

/// `POST /api/v1/incidents`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIncident {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub baseline_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub baseline_end: Option<DateTime<Utc>>,
    /// The service where the trouble was noticed; only traces through it are read.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// What detection adds when it opens an incident from findings.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    pub opened_by: String,
    pub finding_ids: Vec<String>,
    pub channel: Option<Channel>,
    /// The segment the findings are confined to, in words.
    pub segment: Option<String>,
    /// With the incident's `service`: the operation where detection saw the
    /// trouble start; only traces calling it are read.
    pub operation: Option<String>,
    /// The same segment as attributes and values: only its traces are read.
    pub segment_filter: std::collections::BTreeMap<String, serde_json::Value>,
    pub group_key: Option<String>,
    /// The findings are a change in what users do (a drop-off), not in time
    /// or failures.
    pub users_moved: bool,
}

impl OpenIncident {
    /// The windows, checked: a baseline defaults to the same length (at least 15
    /// minutes) just before the window.
    pub fn windows(&self) -> Result<(TimeWindow, TimeWindow), RcaError> {
        let bad = |m: &str| Err(RcaError::Invalid(format!("invalid incident: {m}")));
        if self.end <= self.start {
            return bad("end must be after start");
        }
        if self.end - self.start > Duration::days(7) {
            return bad("an incident window is at most 7 days");
        }
        let window = TimeWindow { start: self.start, end: self.end };
        let baseline = match (self.baseline_start, self.baseline_end) {
            (Some(s), Some(e)) => TimeWindow { start: s, end: e },
            (None, None) => {
                let len = (self.end - self.start).max(Duration::minutes(15));
                TimeWindow { start: self.start - len, end: self.start }
            }
            _ => return bad("give both baseline_start and baseline_end, or neither"),
        };
        if baseline.end <= baseline.start {
            return bad("baseline_end must be after baseline_start");
        }
        // Usually the minutes before; a fault-free recording from another
        // time serves too, before or after, as long as it is not the incident.
        if baseline.end > window.start && baseline.start < window.end {
            return bad("the baseline must not overlap the incident window");
        }
        if let Some(t) = &self.title
            && t.len() > 300
        {
            return bad("title is at most 300 bytes");
        }
        Ok((window, baseline))
    }
}

pub struct Rca {
    pub engine: QueryEngine,
    pub changes: Arc<ChangesDb>,
    pub incidents: Arc<IncidentsDb>,
    pub narrator: Arc<dyn Narrator>,
    pub limits: LocalizeLimits,
    pub tolerance: Tolerance,
    /// The flight recorder every RCA is recorded in, when there is one.
    pub recorder: Option<Arc<andon_analysis::recorder::RunsDb>>,
    /// One detection-driven opening at a time, so two passes reporting the same
    /// cause do not open two incidents.
    pub(crate) opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Rca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rca").finish_non_exhaustive()
    }
}

fn incident_id(tenant: &Tenant, w: &TimeWindow, now: DateTime<Utc>) -> String {
    let (start, end, at) =
        (w.start.to_rfc3339(), w.end.to_rfc3339(), now.timestamp_nanos_opt().unwrap_or(0).to_string());
    format!("inc-{}", andon_model::finding::stable_id(&[tenant.as_str(), &start, &end, &at]))
}

struct Steps(Vec<RcaStep>);

impl Steps {
    fn record(&mut self, step: &str, started: Instant, summary: String, queries: Vec<String>) {
        self.0.push(RcaStep {
            step: step.to_owned(),
            at: Utc::now(),
            took_ms: started.elapsed().as_millis() as u64,
            summary,
            queries: queries.into_iter().filter(|q| !q.is_empty()).collect(),
        });
    }
}

impl Rca {
    pub fn new(engine: QueryEngine, changes: Arc<ChangesDb>, incidents: Arc<IncidentsDb>) -> Self {
        Self {
            engine,
            changes,
            incidents,
            narrator: Arc::new(TemplateNarrator),
            limits: LocalizeLimits::default(),
            tolerance: Tolerance::default(),
            recorder: None,
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// Opens an incident, runs its RCA and stores it.
    pub async fn open(&self, tenant: &Tenant, req: &OpenIncident, hints: Hints) -> Result<Incident, RcaError> {
        let started = Utc::now();
        let mut inc = self.fresh(tenant, req, &hints, started)?;
        let exchanges = self.analyze_with(tenant, &mut inc, &hints, self.narrator.as_ref()).await?;
        if let Some(runs) = &self.recorder {
            inc.run_id = Some(crate::record::record(runs, tenant, req, &hints, &inc, &exchanges, started));
        }
        let (db, owner, i, key) = (Arc::clone(&self.incidents), tenant.clone(), inc.clone(), hints.group_key.clone());
        crate::blocking(move || db.save(&owner, &i, key.as_deref())).await?;
        Ok(inc)
    }

    /// Runs the RCA of `req` as [`Rca::open`] would, without storing or
    /// recording it (a replay, an agent's look).
    pub async fn dry_run(&self, tenant: &Tenant, req: &OpenIncident, hints: &Hints) -> Result<Incident, RcaError> {
        let mut inc = self.fresh(tenant, req, hints, Utc::now())?;
        // A model is not asked again: its narrative is in the recording.
        self.analyze_with(tenant, &mut inc, hints, &TemplateNarrator).await?;
        Ok(inc)
    }

    /// A new incident over `req`'s windows, not yet analyzed.
    fn fresh(
        &self,
        tenant: &Tenant,
        req: &OpenIncident,
        hints: &Hints,
        now: DateTime<Utc>,
    ) -> Result<Incident, RcaError> {
        let (window, baseline) = req.windows()?;
        Ok(Incident {
            id: incident_id(tenant, &window, now),
            title: req.title.clone().unwrap_or_default(),
            window,
            baseline_window: baseline,
            state: IncidentState::Open,
            service: req.service.clone(),
            opened_by: if hints.opened_by.is_empty() { "api".to_owned() } else { hints.opened_by.clone() },
            finding_ids: hints.finding_ids.clone(),
            signature: None,
            suspects: Vec::new(),
            change: None,
            gate_analysis: Vec::new(),
            why_missed: String::new(),
            remediation: Vec::new(),
            similar_incidents: Vec::new(),
            narrative: String::new(),
            narrative_source: NarrativeSource::Template,
            narrative_validation: None,
            run_id: None,
            confidence: 0.0,
            steps: Vec::new(),
            details: Default::default(),
            created_at: now,
            updated_at: now,
        })
    }

    /// Runs (or re-runs) the RCA on an incident's windows.
    pub async fn analyze(&self, tenant: &Tenant, inc: &mut Incident, hints: &Hints) -> Result<(), RcaError> {
        self.analyze_with(tenant, inc, hints, self.narrator.as_ref()).await.map(drop)
    }

    async fn analyze_with(
        &self,
        tenant: &Tenant,
        inc: &mut Incident,
        hints: &Hints,
        narrator: &dyn Narrator,
    ) -> Result<Vec<ModelExchange>, RcaError> {
        let mut steps = Steps(Vec::new());
        let (baseline, window) = (inc.baseline_window, inc.window);

        let t = Instant::now();
        let scope = localize::Scope {
            through: inc.service.clone(),
            operation: inc.service.as_ref().and(hints.operation.clone()),
            segment: hints.segment_filter.clone(),
            settled: None,
            users_moved: hints.users_moved,
        };
        let (loc, queries) =
            localize::localize(&self.engine, tenant, &baseline, &window, &scope, hints.channel, &self.limits).await?;
        steps.record(
            "localize",
            t,
            format!(
                "read {} baseline and {} incident traces; requests took {:.1} ms on average against {:.1} ms and \
                 failed {:.2}% against {:.2}%; {} suspects, {}",
                loc.traces.0,
                loc.traces.1,
                loc.root_ms.1,
                loc.root_ms.0,
                loc.root_error_rate.1 * 100.0,
                loc.root_error_rate.0 * 100.0,
                loc.suspects.len(),
                loc.suspects
                    .first()
                    .map(|s| format!("top {} {} ({:.2})", s.service, s.operation, s.score))
                    .unwrap_or_else(|| "none".to_owned())
            ),
            queries,
        );
        inc.suspects = loc.suspects.clone();
        inc.details.insert("traces".into(), serde_json::json!({"baseline": loc.traces.0, "incident": loc.traces.1}));
        inc.details.insert(
            "requests".into(),
            serde_json::json!({
                "mean_ms": {"baseline": loc.root_ms.0, "incident": loc.root_ms.1},
                "error_rate": {"baseline": loc.root_error_rate.0, "incident": loc.root_error_rate.1},
            }),
        );

        let Some(top) = loc.suspects.first().cloned() else {
            inc.why_missed = gates::why_missed(None, &[]);
            inc.remediation = vec![
                "Widen the window or pick a quieter baseline: the traces show no significant change to act on."
                    .to_owned(),
            ];
            return self.finish(tenant, inc, steps, narrator).await;
        };

        let t = Instant::now();
        let measured = onset::measure(&self.engine, tenant, &top, loc.channel, &baseline, &window).await?;
        let sig = measured.signature.clone();
        steps.record(
            "onset",
            t,
            format!(
                "{} of {} went from {} to {}; onset {}",
                sig.metric,
                sig.operation,
                sig.baseline_value,
                sig.incident_value,
                sig.onset.map(|o| o.to_rfc3339()).unwrap_or_else(|| "not found".to_owned())
            ),
            measured.queries.clone(),
        );
        inc.details.insert("series".into(), serde_json::to_value(&measured.series).unwrap_or_default());
        inc.details.insert("series_bucket_secs".into(), measured.bucket_secs.into());
        let waiting: Vec<String> = loc
            .callers_of(&top.service)
            .into_iter()
            .filter(|c| !inc.suspects.iter().any(|s| &s.service == c && s.score >= 0.1))
            .collect();
        inc.details.insert("waiting_callers".into(), serde_json::to_value(&waiting).unwrap_or_default());
        inc.signature = Some(sig.clone());

        let t = Instant::now();
        let linked = link::link(
            &self.engine,
            tenant,
            &self.changes,
            &inc.suspects,
            loc.channel,
            sig.onset,
            Duration::seconds(measured.bucket_secs),
            &baseline,
            &window,
            self.tolerance,
        )
        .await?;
        steps.record(
            "link",
            t,
            match &linked.change {
                Some(c) => format!(
                    "{} {} (confidence {:.2}) out of {} candidates",
                    c.event.service,
                    c.event.version,
                    c.confidence,
                    linked.considered.len()
                ),
                None => format!("no change linked; {} candidates considered", linked.considered.len()),
            },
            linked.queries.clone(),
        );
        inc.details.insert(
            "changes_considered".into(),
            serde_json::to_value(
                linked
                    .considered
                    .iter()
                    .map(|(id, what, c)| serde_json::json!({"id": id, "change": what, "confidence": c}))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default(),
        );
        inc.change = linked.change;

        let t = Instant::now();
        let (exception, q) = self.exception(tenant, &top, &window).await?;
        let observed = Observed { signature: sig.clone(), segment: hints.segment.clone(), exception };
        if let Some(c) = &inc.change {
            inc.gate_analysis = gates::analyze(&c.event, &observed);
        }
        inc.why_missed = gates::why_missed(inc.change.as_ref().map(|c| &c.event), &inc.gate_analysis);
        steps.record(
            "gates",
            t,
            format!(
                "{} gates assessed; {} missed it",
                inc.gate_analysis.len(),
                inc.gate_analysis.iter().filter(|g| g.discrepancy != Discrepancy::NotApplicable).count()
            ),
            vec![q],
        );

        inc.remediation = remediation(inc, &observed);
        let t = Instant::now();
        let (db, owner, id, signature) = (Arc::clone(&self.incidents), tenant.clone(), inc.id.clone(), sig.clone());
        inc.similar_incidents = crate::blocking(move || db.similar(&owner, &id, &signature)).await?;
        steps.record("similar", t, format!("{} similar past incidents", inc.similar_incidents.len()), Vec::new());

        let top_score = top.score;
        inc.confidence = match &inc.change {
            Some(c) => 0.5 * top_score + 0.5 * c.confidence,
            None => 0.8 * top_score,
        };
        inc.confidence = (inc.confidence * 100.0).round() / 100.0;
        if inc.title.is_empty() {
            inc.title = title(inc);
        }
        self.finish(tenant, inc, steps, narrator).await
    }

    async fn finish(
        &self,
        tenant: &Tenant,
        inc: &mut Incident,
        mut steps: Steps,
        narrator: &dyn Narrator,
    ) -> Result<Vec<ModelExchange>, RcaError> {
        if inc.title.is_empty() {
            inc.title = format!(
                "Incident {} – {} UTC",
                inc.window.start.format("%Y-%m-%d %H:%M"),
                inc.window.end.format("%H:%M")
            );
        }
        let t = Instant::now();
        let (services, q) =
            if narrator.checks_claims() { self.services(tenant, inc).await? } else { (Vec::new(), String::new()) };
        let n = narrator.narrate(inc, &services).await?;
        inc.narrative = n.text;
        inc.narrative_source = n.source;
        let summary = match &n.validation {
            Some(v) if v.attempts == 0 => format!(
                "{} narrator; the model gave no draft: {}",
                source_name(n.source),
                v.error.as_deref().unwrap_or("no answer")
            ),
            Some(v) => format!(
                "{} narrator; {} model draft{} {}",
                source_name(n.source),
                v.attempts,
                if v.attempts == 1 { "" } else { "s" },
                if v.accepted {
                    "checked, the last accepted".to_owned()
                } else {
                    format!("rejected ({} unsupported claims in the last)", v.violations.len())
                }
            ),
            None => format!("{} narrator", source_name(n.source)),
        };
        inc.narrative_validation = n.validation;
        steps.record("narrate", t, summary, vec![q]);
        inc.steps = steps.0;
        inc.updated_at = Utc::now();
        Ok(n.exchanges)
    }

    /// The services that ran in the incident's baseline and window.
    async fn services(&self, tenant: &Tenant, inc: &Incident) -> Result<(Vec<String>, String), RcaError> {
        let from = inc.baseline_window.start.min(inc.window.start);
        let q = format!(
            "SELECT DISTINCT service_name AS s FROM spans WHERE start_time >= {} AND start_time < {}",
            sql::ts(from),
            sql::ts(inc.window.end)
        );
        let out = self.engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
        Ok((Rows::new(out.batches).iter().filter_map(|r| r.str("s")).collect(), q))
    }

    /// The most common exception type on the suspect's failing spans.
    async fn exception(
        &self,
        tenant: &Tenant,
        top: &andon_model::Suspect,
        w: &TimeWindow,
    ) -> Result<(Option<String>, String), RcaError> {
        if top.cause != SuspectCause::Errors {
            return Ok((None, String::new()));
        }
        let q = format!(
            "SELECT s.exception_type AS t, count(*) AS n FROM spans s\nWHERE s.start_time >= {} AND s.start_time < {} \
             AND s.service_name = {} AND {} = {} AND s.status_code = 'error' AND s.exception_type IS NOT NULL\n\
             GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
            sql::ts(w.start),
            sql::ts(w.end),
            lit(&top.service),
            sql::OPERATION,
            lit(&top.operation)
        );
        let out = self.engine.collect(Some(tenant.clone()), &q).await.map_err(|e| RcaError::Query(e.to_string()))?;
        Ok((Rows::new(out.batches).iter().next().and_then(|r| r.str("t")), q))
    }
}

fn title(inc: &Incident) -> String {
    let Some(sig) = &inc.signature else { return String::new() };
    let since = sig.onset.map(|o| format!(" since {} UTC", o.format("%H:%M"))).unwrap_or_default();
    match sig.metric.as_str() {
        onset::NEW_VERSION_SHARE => format!(
            "{} {}: {} serves {:.0}% of requests (was {:.0}%){since}",
            sig.service,
            sig.operation,
            inc.suspects.first().and_then(|s| s.version.as_deref()).unwrap_or("a new version"),
            sig.incident_value * 100.0,
            sig.baseline_value * 100.0
        ),
        "error_rate" => format!(
            "{} {}: {:.1}% of calls fail (was {:.1}%){since}",
            sig.service,
            sig.operation,
            sig.incident_value * 100.0,
            sig.baseline_value * 100.0
        ),
        _ => {
            let pct =
                if sig.baseline_value > 0.0 { (sig.incident_value / sig.baseline_value - 1.0) * 100.0 } else { 0.0 };
            format!("{} {}: p95 {pct:+.0}%{since}", sig.service, sig.operation)
        }
    }
}

/// What to do now: roll back, fix forward where the traces point, fix the gates.
fn remediation(inc: &Incident, o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let sig = &o.signature;
    let top = inc.suspects.first();
    if let Some(c) = &inc.change {
        let e = &c.event;
        match &c.previous_version {
            Some(prev) => out.push(format!(
                "Roll back {} from {} to {prev}, the version that served before {}; the regression began with {}.",
                e.service,
                e.version,
                e.deployed_at.format("%H:%M UTC"),
                e.version
            )),
            None => out.push(format!(
                "Roll back {} {} to the version before it; the regression began with {}.",
                e.service, e.version, e.version
            )),
        }
    }
    if let Some(t) = top {
        let trace = t.exemplar_trace_ids.first().map(|id| format!(" Start from trace {id}.")).unwrap_or_default();
        let scope = o.segment.as_deref().map(|s| format!(", for {s}")).unwrap_or_default();
        let what = match t.cause {
            SuspectCause::SelfTime => format!("the work {} does itself in {}{scope}", t.service, t.operation),
            SuspectCause::Errors => format!(
                "the failures that start in {} {}{scope}{}",
                t.service,
                t.operation,
                o.exception.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            SuspectCause::Network => format!("the network path to {} ({}){scope}", t.service, t.operation),
            SuspectCause::Release => format!(
                "what {} {} returns from {}{scope} (its spans show no failure or slowdown: compare its responses with \
                 the previous version's)",
                t.service,
                t.version.as_deref().unwrap_or("(its new version)"),
                t.operation
            ),
        };
        let change = inc
            .change
            .as_ref()
            .map(|c| {
                let pr = c.event.pr.map(|p| format!(" (PR #{p})")).unwrap_or_default();
                format!(" in what {} {}{pr} changed", c.event.service, c.event.version)
            })
            .unwrap_or_default();
        out.push(format!("Fix forward: {what}{change}; the callers need no change.{trace}"));
        if inc.change.is_none() {
            out.push(format!(
                "No deploy of {} precedes the onset: check its infrastructure (CPU, memory, node, network) and \
                 dependencies around {}.",
                sig.service,
                sig.onset.unwrap_or(inc.window.start).format("%H:%M UTC")
            ));
        }
    }
    for g in &inc.gate_analysis {
        if g.discrepancy != Discrepancy::NotApplicable && !g.recommendation.is_empty() {
            out.push(format!("Gate: {}.", g.recommendation));
        }
    }
    out
}

/// `[rca]` in `andon.toml`.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RcaConfig {
    /// Traces sampled per window for localization.
    pub traces_per_window: usize,
    /// A change this many minutes before the onset can still be linked.
    pub link_before_minutes: u64,
    /// A change recorded this many minutes after the onset still counts.
    pub link_after_minutes: u64,
    /// Fill in a change's PR, title, author and check runs from GitHub.
    pub github_enrich: bool,
    pub github_api_url: String,
    /// The variable holding the token (public repositories need none).
    pub github_token_env: String,
}

impl Default for RcaConfig {
    fn default() -> Self {
        Self {
            traces_per_window: 2000,
            link_before_minutes: 60,
            link_after_minutes: 5,
            github_enrich: false,
            github_api_url: "https://api.github.com".to_owned(),
            github_token_env: "GITHUB_TOKEN".to_owned(),
        }
    }
}

impl RcaConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=100_000).contains(&self.traces_per_window) {
            return Err("rca.traces_per_window must be 100 to 100000".into());
        }
        if self.link_before_minutes == 0 || self.link_before_minutes > 7 * 24 * 60 {
            return Err("rca.link_before_minutes must be 1 to 10080".into());
        }
        if !(self.github_api_url.starts_with("https://") || self.github_api_url.starts_with("http://")) {
            return Err(format!("rca.github_api_url must be an http(s) URL, not {:?}", self.github_api_url));
        }
        Ok(())
    }

    pub fn apply(&self, rca: &mut Rca) {
        rca.limits.traces = self.traces_per_window;
        rca.tolerance = Tolerance {
            before: Duration::minutes(self.link_before_minutes as i64),
            after: Duration::minutes(self.link_after_minutes as i64),
        };
    }
}

fn source_name(s: NarrativeSource) -> &'static str {
    match s {
        NarrativeSource::Template => "template",
        NarrativeSource::Llm => "llm",
    }
}
