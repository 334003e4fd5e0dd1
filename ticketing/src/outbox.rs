//! The outbox worker and the loop that notices closed issues.
//!
//! Deliveries are taken oldest first. Each attempt is recorded before its
//! request goes out; a create always asks the sink first whether the issue
//! exists (by the fingerprint marker in its body), and a retried comment
//! whether it landed, so a request that timed out after the tracker acted is
//! not repeated. Transient failures wait for the tracker's `Retry-After` or
//! rate-limit reset, else back off exponentially; while a tracker is
//! rate-limited nothing else is sent to it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use andon_model::{Finding, Incident, LoggedStep, Priority, RunLog, Tenant, Ticket, TicketOpening, TicketState};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::TicketError;
use crate::config::{Settings, SinkKind};
use crate::db::TicketDb;
use crate::draft::Drafter;
use crate::observe::{Observed, Openings};
use crate::queue::{Delivery, Job};
use crate::redact::Redactor;
use crate::sink::{FileSink, GitHubSink, SinkError, TicketSink, WebhookSink};

/// Findings resolved because their issue was closed, per tenant.
pub type Resolved = Vec<(Tenant, Vec<String>)>;

/// Called with the finding ids of each ticket whose issue was closed.
pub type OnResolved = Arc<dyn Fn(&Tenant, &[String]) + Send + Sync>;

/// Tickets end to end: drafting, the gate, delivery and closing the loop.
#[derive(Debug)]
pub struct Ticketing {
    db: TicketDb,
    drafter: Drafter,
    sink: Option<Arc<dyn TicketSink>>,
    /// No request goes to the sink before this (a rate limit's reset).
    paused_until: Mutex<Option<DateTime<Utc>>>,
    /// Where the last poll of changed issues started.
    polled: Mutex<Option<DateTime<Utc>>>,
    /// The flight recorder: each gate decision and delivery is appended to
    /// the run that made the ticket's latest draft.
    runs: Option<Arc<dyn RunLog>>,
}

/// The sink the settings name; secrets are read from the environment here.
pub fn build_sink(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn TicketSink>>, TicketError> {
    Ok(match &settings.sink {
        SinkKind::None => None,
        SinkKind::File(p) => Some(Arc::new(FileSink::new(p.clone()))),
        SinkKind::GitHub { api_url, owner, repo, token_env } => {
            let token = env(token_env).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                TicketError::Config(format!(
                    "tickets.sink = \"github\" needs a token in the environment variable {token_env}"
                ))
            })?;
            Some(Arc::new(GitHubSink::new(api_url, owner, repo, token, settings.request_timeout)?))
        }
        SinkKind::Webhook { url, secret_env } => {
            let secret = env(secret_env).filter(|s| !s.is_empty());
            if secret.is_none() {
                warn!(variable = %secret_env, "webhook deliveries will not be signed: the secret variable is not set");
            }
            let redactor = Redactor::new(&settings.redact_attributes);
            Some(Arc::new(WebhookSink::new(url, secret, settings.request_timeout, redactor)?))
        }
    })
}

impl Ticketing {
    /// Opens the tickets tables in `db_path` and builds the configured sink.
    pub fn open(db_path: &Path, settings: Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, TicketError> {
        let sink = build_sink(&settings, env)?;
        Ok(Self::with_sink(TicketDb::open(db_path)?, settings, sink))
    }

    pub fn with_sink(db: TicketDb, settings: Settings, sink: Option<Arc<dyn TicketSink>>) -> Self {
        Self {
            db,
            drafter: Drafter::new(settings),
            sink,
            paused_until: Mutex::new(None),
            polled: Mutex::new(None),
            runs: None,
        }
    }

    /// The same, appending each gate decision and delivery to the run of
    /// its ticket's latest draft.
    pub fn recording(mut self, runs: Arc<dyn RunLog>) -> Self {
        self.runs = Some(runs);
        self
    }

    /// Appends a step to `t`'s run, when it has one and a recorder is set.
    fn log(&self, tenant: &Tenant, t: &Ticket, kind: &str, name: &str, input: serde_json::Value, summary: String) {
        let (Some(runs), Some(run)) = (&self.runs, &t.run_id) else { return };
        let output = serde_json::json!({
            "ticket": t.id, "state": t.state.as_str(), "priority": t.priority.as_str(),
            "reviewer": t.reviewer, "external": t.external, "last_error": t.last_error,
        });
        runs.append(tenant, run, LoggedStep { kind: kind.to_owned(), name: name.to_owned(), input, output, summary });
    }

    pub fn db(&self) -> &TicketDb {
        &self.db
    }

    pub fn drafter(&self) -> &Drafter {
        &self.drafter
    }

    pub fn sink_system(&self) -> Option<&'static str> {
        self.sink.as_ref().map(|s| s.system())
    }

    /// Drafts and recurrences for a pass's findings.
    pub fn observe(&self, tenant: &Tenant, findings: &[Finding]) -> Result<Observed, TicketError> {
        self.observe_with(tenant, findings, &Openings::new())
    }

    /// Drafts and recurrences, a draft opening with the paragraph a model
    /// wrote for its finding when `openings` has one.
    pub fn observe_with(
        &self,
        tenant: &Tenant,
        findings: &[Finding],
        openings: &Openings,
    ) -> Result<Observed, TicketError> {
        self.db.observe(tenant, &self.drafter, findings, openings, Utc::now())
    }

    /// The findings whose tickets a pass would draft or refresh, with the
    /// opening each pending one has now.
    pub fn awaiting_openings<'f>(
        &self,
        tenant: &Tenant,
        findings: &'f [Finding],
    ) -> Result<Vec<(&'f Finding, Option<TicketOpening>)>, TicketError> {
        self.db.awaiting_openings(tenant, &self.drafter, findings)
    }

    /// Drafts (or refreshes) the RCA ticket of an incident.
    pub fn observe_incident(&self, tenant: &Tenant, inc: &Incident, report_md: &str) -> Result<Ticket, TicketError> {
        self.db.observe_incident(tenant, &self.drafter, inc, report_md, Utc::now())
    }

    pub fn approve(
        &self,
        tenant: &Tenant,
        id: &str,
        reviewer: &str,
        note: Option<&str>,
        priority: Option<Priority>,
    ) -> Result<Ticket, TicketError> {
        let t = self.db.approve(tenant, id, reviewer, note, priority, Utc::now())?;
        info!(ticket = %id, %reviewer, "ticket approved");
        let input = serde_json::json!({
            "ticket": id, "decision": "approve", "reviewer": reviewer, "note": note,
            "priority": priority.map(Priority::as_str),
        });
        self.log(tenant, &t, "decision", "gate", input, format!("{id} approved by {reviewer}"));
        Ok(t)
    }

    pub fn reject(&self, tenant: &Tenant, id: &str, reviewer: &str, reason: &str) -> Result<Ticket, TicketError> {
        let t = self.db.reject(tenant, id, reviewer, reason, Utc::now())?;
        info!(ticket = %id, %reviewer, "ticket rejected");
        let input = serde_json::json!({ "ticket": id, "decision": "reject", "reviewer": reviewer, "note": reason });
        self.log(tenant, &t, "decision", "gate", input, format!("{id} rejected by {reviewer}"));
        Ok(t)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let max = self.drafter.settings().max_backoff;
        let base = Duration::from_secs(1u64 << attempts.clamp(1, 16).saturating_sub(1).min(12));
        let jitter = 1.0 + f64::from(Utc::now().timestamp_subsec_nanos() % 200) / 1000.0;
        base.mul_f64(jitter).min(max)
    }

    /// Delivers every due delivery once; returns how many completed.
    pub async fn deliver_due(&self) -> Result<usize, TicketError> {
        let Some(sink) = self.sink.clone() else { return Ok(0) };
        let now = Utc::now();
        if self.paused_until.lock().is_some_and(|p| p > now) {
            return Ok(0);
        }
        let due = self.db.due(now, 50)?;
        let mut delivered = 0;
        for d in due {
            self.db.begin_attempt(d.id)?;
            let result = self.deliver(sink.as_ref(), &d).await;
            self.log_delivery(sink.system(), &d, &result);
            match result {
                Ok(()) => delivered += 1,
                Err(TicketError::Sink(SinkError::Transient { message, retry_after })) => {
                    let wait =
                        retry_after.map_or_else(|| self.backoff(d.attempts + 1), |w| w + Duration::from_millis(250));
                    let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    warn!(delivery = d.id, error = %message, retry_in = ?wait, "ticket delivery failed; will retry");
                    self.db.retry_later(&d, &message, next, Utc::now())?;
                    if retry_after.is_some() {
                        // The tracker asked for quiet: the rest wait too.
                        *self.paused_until.lock() = Some(next);
                        break;
                    }
                }
                Err(TicketError::Sink(SinkError::Permanent(message))) => {
                    warn!(delivery = d.id, error = %message, "ticket delivery refused; not retrying");
                    self.db.failed(&d, &message, Utc::now())?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(delivered)
    }

    /// Appends a delivery attempt, with its outcome, to its ticket's run.
    fn log_delivery(&self, system: &str, d: &Delivery, result: &Result<(), TicketError>) {
        if self.runs.is_none() {
            return;
        }
        let (tenant, id, action) = match &d.job {
            Job::Create(a) => (a.tenant(), a.ticket().id.as_str(), "create"),
            Job::Comment { ticket, reopen: true, .. } => {
                (&ticket.tenant, ticket.ticket.id.as_str(), "reopen and comment")
            }
            Job::Comment { ticket, .. } => (&ticket.tenant, ticket.ticket.id.as_str(), "comment"),
        };
        // The ticket as the delivery left it.
        let Ok(Some(t)) = self.db.get(tenant, id) else { return };
        let outcome = match result {
            Ok(()) => "delivered".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        let input = serde_json::json!({
            "ticket": id, "delivery": d.id, "attempt": d.attempts + 1, "action": action, "sink": system,
            "outcome": outcome,
        });
        let summary = format!("{action} to {system}, attempt {}: {outcome}", d.attempts + 1);
        self.log(tenant, &t, "delivery", &format!("deliver to {system}"), input, summary);
    }

    async fn deliver(&self, sink: &dyn TicketSink, d: &Delivery) -> Result<(), TicketError> {
        match &d.job {
            Job::Create(a) => {
                let t = a.ticket();
                match sink.find(a.tenant(), &t.fingerprint).await? {
                    // Attempts are recorded before they are sent: with none
                    // before this one, an issue with this ticket's marker came
                    // from an earlier database, not from this delivery.
                    Some(ex) if ex.ticket_id == t.id && d.attempts > 0 => {
                        info!(ticket = %t.id, url = %ex.external.url, "ticket's issue already exists; recorded, not posted again");
                        self.db.posted(d, &ex.external, true, Utc::now())
                    }
                    Some(ex) => {
                        info!(ticket = %t.id, url = %ex.external.url, "an issue for this fingerprint exists; commenting there");
                        self.db.adopt(d, &ex.external, ex.open, &self.drafter, Utc::now())
                    }
                    None => {
                        let ext = sink.create(a).await?;
                        info!(ticket = %t.id, url = %ext.url, "ticket posted");
                        self.db.posted(d, &ext, false, Utc::now())
                    }
                }
            }
            Job::Comment { ticket, body, reopen } => {
                let marker = body.lines().next().unwrap_or_default();
                let since = d.created_at - chrono::Duration::minutes(5);
                let landed = d.attempts > 0 && sink.has_comment(ticket, marker, since).await?;
                if !landed {
                    if *reopen {
                        sink.reopen(ticket).await?;
                    }
                    sink.comment(ticket, body).await?;
                }
                self.db.commented(d, *reopen, Utc::now())
            }
        }
    }

    /// Looks for issues closed (or reopened) in the tracker since the last
    /// poll; returns the findings of tickets it resolved.
    pub async fn poll(&self) -> Result<Resolved, TicketError> {
        let Some(sink) = self.sink.clone() else { return Ok(Vec::new()) };
        let started = Utc::now();
        let tickets = self.db.with_issues(sink.system())?;
        if tickets.is_empty() {
            return Ok(Vec::new());
        }
        let since =
            self.polled.lock().unwrap_or_else(|| tickets.iter().map(|(_, t)| t.created_at).min().unwrap_or(started));
        let changed = sink.changed_since(since - chrono::Duration::minutes(1)).await?;
        let mut resolved = Vec::new();
        for s in changed {
            for (tenant, t) in
                tickets.iter().filter(|(_, t)| t.external.as_ref().and_then(|e| e.number) == Some(s.number))
            {
                let actor = format!("{}:{}", sink.system(), s.actor.as_deref().unwrap_or("unknown"));
                resolved.extend(self.issue_changed(tenant, t, s.open, s.closed_at.unwrap_or(started), &actor)?);
            }
        }
        *self.polled.lock() = Some(started);
        Ok(resolved)
    }

    /// An issue was closed or reopened in the tracker (seen by a poll or a
    /// webhook from it).
    pub fn issue_changed(
        &self,
        tenant: &Tenant,
        t: &Ticket,
        open: bool,
        at: DateTime<Utc>,
        actor: &str,
    ) -> Result<Resolved, TicketError> {
        let now = Utc::now();
        match (open, t.state) {
            (false, TicketState::Posted) => {
                let ids = self.db.closed(tenant, &t.id, at, actor, now)?;
                info!(ticket = %t.id, findings = ids.len(), "issue closed; ticket resolved");
                Ok(vec![(tenant.clone(), ids)])
            }
            (true, TicketState::Resolved) => {
                self.db.reopened(tenant, &t.id, actor, now)?;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The ticket whose issue in `system` has `number`.
    pub fn by_issue(&self, system: &str, number: u64) -> Result<Option<(Tenant, Ticket)>, TicketError> {
        Ok(self
            .db
            .with_issues(system)?
            .into_iter()
            .find(|(_, t)| t.external.as_ref().and_then(|e| e.number) == Some(number)))
    }

    /// Delivers until `stop`; every `poll_interval`, also closes the loop,
    /// handing resolved findings to `on_resolved`.
    pub async fn run(self: Arc<Self>, on_resolved: OnResolved, mut stop: watch::Receiver<bool>) {
        let settings = self.drafter.settings().clone();
        let mut tick = tokio::time::interval(settings.outbox_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.deliver_due().await {
                warn!(error = %e, "outbox round failed");
            }
            let Some(every) = settings.poll_interval else { continue };
            if last_poll.is_some_and(|l| l.elapsed() < every) {
                continue;
            }
            last_poll = Some(tokio::time::Instant::now());
            match self.poll().await {
                Ok(resolved) => {
                    for (tenant, ids) in resolved {
                        on_resolved(&tenant, &ids);
                    }
                }
                Err(e) => warn!(error = %e, "polling the tracker for closed issues failed"),
            }
        }
    }
}
