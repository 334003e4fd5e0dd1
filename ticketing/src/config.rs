//! `[tickets]` in `andon.toml`.

use std::path::PathBuf;
use std::time::Duration;

use andon_model::{Priority, Severity};
use serde::{Deserialize, Serialize};

use crate::TicketError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketingConfig {
    /// Findings at or above this severity get a draft: `low`, `medium`, `high`
    /// or `critical`.
    pub draft_min_severity: String,
    /// Drafts at or above this severity are approved without a person; empty
    /// (the default) means every draft waits for a reviewer.
    pub auto_approve_min_severity: String,
    /// Where approved tickets go: `file`, `github`, `webhook` or `none`.
    pub sink: String,
    /// A link for each exemplar trace; `{trace_id}` and `{tenant}` are filled in
    /// (for example `http://jaeger:16686/trace/{trace_id}`). Empty: ids only.
    pub trace_url: String,
    /// Labels every ticket carries, besides `andon`, kind, service and severity.
    pub labels: Vec<String>,
    /// When a finding comes back after its issue was closed: `reopen` the issue
    /// and comment, or only `comment`.
    pub on_closed: String,
    /// Impact (affected sessions × severity weight) at which a ticket is P0, P1
    /// and P2; below the last it is P3.
    pub priority_impact: Vec<f64>,
    /// Attribute keys whose values are always masked, wherever they appear.
    pub redact_attributes: Vec<String>,
    /// The JSON-lines file of the `file` sink; empty means
    /// `<data_dir>/tickets.jsonl`.
    pub file_path: String,
    /// GitHub's API, or a GitHub Enterprise server's (`https://HOST/api/v3`).
    pub github_api_url: String,
    /// `owner/name` of the repository issues go to.
    pub github_repo: String,
    /// The environment variable holding the GitHub token (never the token).
    pub github_token_env: String,
    /// The environment variable holding the secret GitHub signs its webhook
    /// deliveries with; when set, `POST /api/v1/webhooks/github` accepts them.
    pub github_webhook_secret_env: String,
    pub webhook_url: String,
    /// The environment variable holding the key of the webhook sink's HMAC
    /// signature.
    pub webhook_secret_env: String,
    /// The longest a sink request may take.
    pub request_timeout_secs: u64,
    /// How often the outbox looks for due deliveries.
    pub outbox_interval_secs: u64,
    /// The longest wait between two attempts at a delivery.
    pub max_backoff_secs: u64,
    /// How often closed issues are looked for; 0 turns it off.
    pub poll_interval_secs: u64,
}

impl Default for TicketingConfig {
    fn default() -> Self {
        Self {
            draft_min_severity: "medium".into(),
            auto_approve_min_severity: String::new(),
            sink: "file".into(),
            trace_url: String::new(),
            labels: Vec::new(),
            on_closed: "reopen".into(),
            priority_impact: vec![2000.0, 400.0, 50.0],
            redact_attributes: [
                "user.id",
                "enduser.id",
                "user.email",
                "user.name",
                "user.full_name",
                "client.address",
                "http.request.header.authorization",
                "http.request.header.cookie",
                "http.response.header.set-cookie",
            ]
            .map(String::from)
            .to_vec(),
            file_path: String::new(),
            github_api_url: "https://api.github.com".into(),
            github_repo: String::new(),
            github_token_env: "GITHUB_TOKEN".into(),
            github_webhook_secret_env: "ANDON_GITHUB_WEBHOOK_SECRET".into(),
            webhook_url: String::new(),
            webhook_secret_env: "ANDON_WEBHOOK_SECRET".into(),
            request_timeout_secs: 10,
            outbox_interval_secs: 2,
            max_backoff_secs: 600,
            poll_interval_secs: 60,
        }
    }
}

/// What a recurrence does to a closed issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClosed {
    Reopen,
    Comment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    None,
    File(PathBuf),
    GitHub { api_url: String, owner: String, repo: String, token_env: String },
    Webhook { url: String, secret_env: String },
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub draft_min: Severity,
    pub auto_approve_min: Option<Severity>,
    pub sink: SinkKind,
    pub trace_url: String,
    pub labels: Vec<String>,
    pub on_closed: OnClosed,
    pub priority_impact: [f64; 3],
    pub redact_attributes: Vec<String>,
    pub github_webhook_secret_env: String,
    pub request_timeout: Duration,
    pub outbox_interval: Duration,
    pub max_backoff: Duration,
    pub poll_interval: Option<Duration>,
}

impl Settings {
    pub fn priority(&self, impact: f64) -> Priority {
        let t = &self.priority_impact;
        if impact >= t[0] {
            Priority::P0
        } else if impact >= t[1] {
            Priority::P1
        } else if impact >= t[2] {
            Priority::P2
        } else {
            Priority::P3
        }
    }
}

impl TicketingConfig {
    /// Checks every value; `data_dir` places the default ticket file.
    pub fn validate(&self, data_dir: &std::path::Path) -> Result<Settings, TicketError> {
        let bad = |m: String| TicketError::Config(m);
        let severity = |field: &str, v: &str| v.parse::<Severity>().map_err(|e| bad(format!("tickets.{field}: {e}")));
        let draft_min = severity("draft_min_severity", &self.draft_min_severity)?;
        let auto_approve_min = match self.auto_approve_min_severity.trim() {
            "" | "off" => None,
            v => Some(severity("auto_approve_min_severity", v)?),
        };
        let sink = match self.sink.as_str() {
            "none" => SinkKind::None,
            "file" => SinkKind::File(if self.file_path.is_empty() {
                data_dir.join("tickets.jsonl")
            } else {
                PathBuf::from(&self.file_path)
            }),
            "github" => {
                let (owner, repo) = self
                    .github_repo
                    .split_once('/')
                    .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
                    .ok_or_else(|| {
                        bad(format!("tickets.github_repo must be owner/name, not {:?}", self.github_repo))
                    })?;
                if !(self.github_api_url.starts_with("http://") || self.github_api_url.starts_with("https://")) {
                    return Err(bad(format!(
                        "tickets.github_api_url must be an http(s) URL, not {:?}",
                        self.github_api_url
                    )));
                }
                if self.github_token_env.trim().is_empty() {
                    return Err(bad("tickets.github_token_env must name an environment variable".into()));
                }
                SinkKind::GitHub {
                    api_url: self.github_api_url.trim_end_matches('/').to_owned(),
                    owner: owner.to_owned(),
                    repo: repo.to_owned(),
                    token_env: self.github_token_env.clone(),
                }
            }
            "webhook" => {
                if !(self.webhook_url.starts_with("http://") || self.webhook_url.starts_with("https://")) {
                    return Err(bad(format!("tickets.webhook_url must be an http(s) URL, not {:?}", self.webhook_url)));
                }
                SinkKind::Webhook { url: self.webhook_url.clone(), secret_env: self.webhook_secret_env.clone() }
            }
            other => return Err(bad(format!("tickets.sink must be file, github, webhook or none, not {other:?}"))),
        };
        let on_closed = match self.on_closed.as_str() {
            "reopen" => OnClosed::Reopen,
            "comment" => OnClosed::Comment,
            other => return Err(bad(format!("tickets.on_closed must be reopen or comment, not {other:?}"))),
        };
        let priority_impact: [f64; 3] = self
            .priority_impact
            .clone()
            .try_into()
            .ok()
            .filter(|t: &[f64; 3]| t[0] >= t[1] && t[1] >= t[2] && t[2] >= 0.0)
            .ok_or_else(|| bad("tickets.priority_impact must be three falling thresholds, for P0, P1 and P2".into()))?;
        if !self.trace_url.is_empty() && !self.trace_url.contains("{trace_id}") {
            return Err(bad("tickets.trace_url must contain {trace_id}".into()));
        }
        for l in &self.labels {
            if l.trim().is_empty() || l.chars().count() > 50 {
                return Err(bad(format!("tickets.labels: {l:?} must be 1 to 50 characters")));
            }
        }
        if self.request_timeout_secs == 0 || self.outbox_interval_secs == 0 {
            return Err(bad("tickets.request_timeout_secs and tickets.outbox_interval_secs must be at least 1".into()));
        }
        Ok(Settings {
            draft_min,
            auto_approve_min,
            sink,
            trace_url: self.trace_url.clone(),
            labels: self.labels.clone(),
            on_closed,
            priority_impact,
            redact_attributes: self.redact_attributes.clone(),
            github_webhook_secret_env: self.github_webhook_secret_env.clone(),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            outbox_interval: Duration::from_secs(self.outbox_interval_secs),
            max_backoff: Duration::from_secs(self.max_backoff_secs.max(1)),
            poll_interval: (self.poll_interval_secs > 0).then(|| Duration::from_secs(self.poll_interval_secs)),
        })
    }
}
