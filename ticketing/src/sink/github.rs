//! GitHub issues through octocrab: its client (auth, base URI for GitHub
//! Enterprise, timeouts) and its models. Status codes and rate-limit headers
//! are read here, because the outbox, not the client, decides when to retry.

use std::time::Duration;

use andon_model::{ExternalRef, Tenant};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use octocrab::models::issues::{Comment, Issue};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Existing, IssueState, SinkError, TicketSink};
use crate::db::{ApprovedTicket, PostedTicket};
use crate::draft::{ANDON_LABEL, parse_marker};

/// How many pages of Andon's issues `find` reads, newest first.
const FIND_PAGES: u32 = 10;
/// Bodies are bounded: GitHub's own limit on an issue body.
const MAX_BODY: usize = 65_536;
/// Responses larger than this are refused rather than read.
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug)]
pub struct GitHubSink {
    client: Octocrab,
    owner: String,
    repo: String,
    timeout: Duration,
}

impl GitHubSink {
    /// `token` comes from the environment variable the config names; it is
    /// only ever handed to octocrab.
    pub fn new(api_url: &str, owner: &str, repo: &str, token: String, timeout: Duration) -> Result<Self, SinkError> {
        let client = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| SinkError::Permanent(format!("github_api_url {api_url:?}: {e}")))?
            .personal_token(token)
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout))
            .build()
            .map_err(|e| SinkError::Permanent(format!("building the github client: {e}")))?;
        Ok(Self { client, owner: owner.to_owned(), repo: repo.to_owned(), timeout })
    }

    fn path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", self.owner, self.repo)
    }

    /// Sends a request and reads its JSON answer, mapping statuses and rate
    /// limits to [`SinkError`].
    async fn call<T: DeserializeOwned>(&self, what: &str, req: Req<'_>) -> Result<T, SinkError> {
        let send = async {
            match req {
                Req::Get(p) => self.client._get(p).await,
                Req::Post(p, b) => self.client._post(p, Some(b)).await,
                Req::Patch(p, b) => self.client._patch(p, Some(b)).await,
            }
        };
        let resp = match tokio::time::timeout(self.timeout, send).await {
            Err(_) => {
                return Err(SinkError::transient(format!("{what}: no answer from github within {:?}", self.timeout)));
            }
            Ok(Err(e)) => return Err(SinkError::transient(format!("{what}: {}", transport_message(&e)))),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let bytes = match tokio::time::timeout(self.timeout, body.collect()).await {
            Err(_) => {
                return Err(SinkError::transient(format!(
                    "{what}: github's answer did not finish within {:?}",
                    self.timeout
                )));
            }
            Ok(Err(e)) => {
                return Err(SinkError::transient(format!(
                    "{what}: reading github's answer: {}",
                    transport_message(&e)
                )));
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        if bytes.len() > MAX_RESPONSE {
            return Err(SinkError::Permanent(format!("{what}: github's answer is larger than {MAX_RESPONSE} bytes")));
        }
        if !parts.status.is_success() {
            return Err(classify(what, parts.status, &parts.headers, &bytes, Utc::now()));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            SinkError::Permanent(format!(
                "{what}: github answered {} with a body octocrab cannot read: {e}",
                parts.status
            ))
        })
    }

    fn external(&self, issue: &Issue) -> ExternalRef {
        ExternalRef { system: "github".into(), url: issue.html_url.to_string(), number: Some(issue.number) }
    }
}

enum Req<'a> {
    Get(String),
    Post(String, &'a serde_json::Value),
    Patch(String, &'a serde_json::Value),
}

/// A transport error without anything secret in it: octocrab's errors name
/// the URL at most, never the token.
fn transport_message(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Turns a GitHub error answer into a retry decision: `Retry-After` first,
/// then an exhausted `x-ratelimit-remaining` with its `x-ratelimit-reset`;
/// 5xx, 408 and 429 are transient; other 4xx are permanent.
pub fn classify(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> SinkError {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let message = format!("{what}: github answered {status}: {message}");
    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let reset = header("x-ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|reset| Duration::from_secs(u64::try_from(reset - now.timestamp()).unwrap_or(0).max(1)));
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted));
    if rate_limited {
        let wait = retry_after.or(if exhausted { reset } else { None }).or(Some(Duration::from_secs(60)));
        return SinkError::Transient { message, retry_after: wait };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return SinkError::Transient { message, retry_after };
    }
    SinkError::Permanent(message)
}

fn bounded(body: &str) -> String {
    if body.len() <= MAX_BODY {
        return body.to_owned();
    }
    let mut cut = MAX_BODY - 64;
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n\n*(cut to fit GitHub's limit)*", &body[..cut])
}

#[async_trait]
impl TicketSink for GitHubSink {
    fn system(&self) -> &'static str {
        "github"
    }

    async fn find(&self, tenant: &Tenant, fingerprint: &str) -> Result<Option<Existing>, SinkError> {
        for page in 1..=FIND_PAGES {
            let issues: Vec<Issue> = self
                .call(
                    "listing andon issues",
                    Req::Get(self.path(&format!(
                        "/issues?state=all&labels={ANDON_LABEL}&sort=created&direction=desc&per_page=100&page={page}"
                    ))),
                )
                .await?;
            for issue in &issues {
                let Some((fp, t, ticket_id)) = issue.body.as_deref().and_then(parse_marker) else { continue };
                if fp == fingerprint && t == tenant.as_str() {
                    let open = matches!(issue.state, octocrab::models::IssueState::Open);
                    return Ok(Some(Existing { external: self.external(issue), ticket_id, open }));
                }
            }
            if issues.len() < 100 {
                break;
            }
        }
        Ok(None)
    }

    async fn create(&self, ticket: &ApprovedTicket) -> Result<ExternalRef, SinkError> {
        let t = ticket.ticket();
        let body = json!({ "title": t.title, "body": bounded(&t.body), "labels": t.labels });
        let issue: Issue = self.call("creating the issue", Req::Post(self.path("/issues"), &body)).await?;
        Ok(self.external(&issue))
    }

    async fn has_comment(&self, ticket: &PostedTicket, marker: &str, since: DateTime<Utc>) -> Result<bool, SinkError> {
        let Some(n) = ticket.external().number else { return Ok(false) };
        let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let comments: Vec<Comment> = self
            .call("listing comments", Req::Get(self.path(&format!("/issues/{n}/comments?since={since}&per_page=100"))))
            .await?;
        Ok(comments.iter().any(|c| c.body.as_deref().is_some_and(|b| b.lines().next() == Some(marker))))
    }

    async fn comment(&self, ticket: &PostedTicket, body: &str) -> Result<(), SinkError> {
        let Some(n) = ticket.external().number else {
            return Err(SinkError::Permanent("the ticket's issue has no number".into()));
        };
        let body = json!({ "body": bounded(body) });
        let _: Comment = self.call("commenting", Req::Post(self.path(&format!("/issues/{n}/comments")), &body)).await?;
        Ok(())
    }

    async fn reopen(&self, ticket: &PostedTicket) -> Result<(), SinkError> {
        let Some(n) = ticket.external().number else {
            return Err(SinkError::Permanent("the ticket's issue has no number".into()));
        };
        let body = json!({ "state": "open" });
        let _: Issue = self.call("reopening the issue", Req::Patch(self.path(&format!("/issues/{n}")), &body)).await?;
        Ok(())
    }

    async fn changed_since(&self, since: DateTime<Utc>) -> Result<Vec<IssueState>, SinkError> {
        let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut out = Vec::new();
        for page in 1..=FIND_PAGES {
            let issues: Vec<Issue> = self
                .call(
                    "listing changed issues",
                    Req::Get(self.path(&format!(
                        "/issues?state=all&labels={ANDON_LABEL}&since={since}&sort=updated&direction=asc&per_page=100&page={page}"
                    ))),
                )
                .await?;
            out.extend(issues.iter().map(|i| IssueState {
                number: i.number,
                open: matches!(i.state, octocrab::models::IssueState::Open),
                closed_at: i.closed_at,
                actor: i.closed_by.as_ref().map(|a| a.login.clone()),
            }));
            if issues.len() < 100 {
                break;
            }
        }
        Ok(out)
    }
}

/// What a delivery of GitHub's `issues` webhook asks of Andon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueEvent {
    /// GitHub checking the hook.
    Ping,
    /// An event, action or repository Andon does not act on, and why.
    Ignored(String),
    /// An issue closed (`open: false`) or reopened.
    Changed { number: u64, open: bool, at: DateTime<Utc>, actor: String },
}

/// Why a webhook delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid or missing x-hub-signature-256")]
    Unsigned,
    #[error("{0}")]
    Malformed(String),
}

/// Verifies a delivery's `X-Hub-Signature-256` under `secret` (in constant time)
/// and reads what it says. `repo` (owner, name) ignores deliveries about
/// other repositories.
pub fn issue_event(
    secret: &[u8],
    signature: &str,
    event: &str,
    body: &[u8],
    repo: Option<(&str, &str)>,
) -> Result<IssueEvent, WebhookError> {
    let want = super::signature(secret, body);
    let same = signature.len() == want.len()
        && signature.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(WebhookError::Unsigned);
    }
    match event {
        "ping" => return Ok(IssueEvent::Ping),
        "issues" => {}
        other => return Ok(IssueEvent::Ignored(other.to_owned())),
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(format!("invalid json: {e}")))?;
    let (Some(action), Some(number)) = (
        v.get("action").and_then(serde_json::Value::as_str),
        v.pointer("/issue/number").and_then(serde_json::Value::as_u64),
    ) else {
        return Err(WebhookError::Malformed("an issues event needs action and issue.number".into()));
    };
    if let Some((owner, name)) = repo {
        let full = v.pointer("/repository/full_name").and_then(serde_json::Value::as_str).unwrap_or_default();
        if !full.eq_ignore_ascii_case(&format!("{owner}/{name}")) {
            return Ok(IssueEvent::Ignored("another repository".into()));
        }
    }
    let open = match action {
        "closed" => false,
        "reopened" => true,
        other => return Ok(IssueEvent::Ignored(other.to_owned())),
    };
    let at = v
        .pointer("/issue/closed_at")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let actor =
        format!("github:{}", v.pointer("/sender/login").and_then(serde_json::Value::as_str).unwrap_or("unknown"));
    Ok(IssueEvent::Changed { number, open, at, actor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap_or_else(|_| http::HeaderValue::from_static("")));
        }
        h
    }

    #[test]
    fn rate_limits_and_outages_say_when_to_come_back() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let wait = |e: SinkError| match e {
            SinkError::Transient { retry_after, .. } => retry_after,
            SinkError::Permanent(m) => panic!("expected a retry, got a permanent error: {m}"),
        };
        let h = headers(&[("retry-after", "17")]);
        assert_eq!(wait(classify("x", StatusCode::FORBIDDEN, &h, b"{}", now)), Some(Duration::from_secs(17)));
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000042")]);
        assert_eq!(wait(classify("x", StatusCode::FORBIDDEN, &h, b"{}", now)), Some(Duration::from_secs(42)));
        assert_eq!(
            wait(classify("x", StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"", now)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(wait(classify("x", StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"", now)), None);
        let e = classify("creating", StatusCode::NOT_FOUND, &HeaderMap::new(), br#"{"message":"Not Found"}"#, now);
        assert!(matches!(&e, SinkError::Permanent(m) if m.contains("404") && m.contains("Not Found")), "{e}");
        // A 403 without rate-limit headers is a permission problem, not a wait.
        let h = headers(&[("x-ratelimit-remaining", "4999")]);
        assert!(matches!(classify("x", StatusCode::FORBIDDEN, &h, b"{}", now), SinkError::Permanent(_)));
    }
}
#[cfg(test)]
mod webhook_tests {
    use super::*;

    #[test]
    fn a_delivery_is_read_only_under_its_signature() {
        let body = br#"{"action":"closed","issue":{"number":7,"closed_at":"2026-11-20T10:00:00Z"},
            "repository":{"full_name":"Shop/Web"},"sender":{"login":"ana"}}"#;
        let sig = crate::sink::signature(b"s3cret", body);
        assert_eq!(issue_event(b"other", &sig, "issues", body, None), Err(WebhookError::Unsigned));
        assert_eq!(issue_event(b"s3cret", "", "issues", body, None), Err(WebhookError::Unsigned));
        let IssueEvent::Changed { number, open, actor, .. } =
            issue_event(b"s3cret", &sig, "issues", body, Some(("shop", "web"))).unwrap()
        else {
            panic!("a closed issue changes its ticket");
        };
        assert_eq!((number, open, actor.as_str()), (7, false, "github:ana"));
        assert_eq!(
            issue_event(b"s3cret", &sig, "issues", body, Some(("shop", "api"))).unwrap(),
            IssueEvent::Ignored("another repository".into())
        );
        assert_eq!(issue_event(b"s3cret", &sig, "push", body, None).unwrap(), IssueEvent::Ignored("push".into()));
    }
}
