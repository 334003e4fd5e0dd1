//! Optional enrichment of changes from GitHub through octocrab: the pull request
//! a commit came from (number, title, author) and the commit's check runs as
//! gates. Only what the change lacks is filled in; a pipeline's own report wins.

use std::sync::Arc;
use std::time::Duration;

use andon_model::{ChangeEvent, Gate, GateKind, Tenant, Verdict};
use octocrab::Octocrab;
use serde_json::Value;

use crate::{ChangesDb, RcaError};

#[derive(Debug, Clone)]
pub struct GitHubEnricher {
    client: Octocrab,
    timeout: Duration,
}

/// `owner/name` from `owner/name` or a GitHub URL (`https://host/owner/name(.git)`).
pub fn slug(repository: &str) -> Option<(String, String)> {
    let path = match repository.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p)?,
        None => repository,
    };
    let mut parts = path.trim_matches('/').trim_end_matches(".git").split('/');
    let (owner, name) = (parts.next()?, parts.next()?);
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (ok(owner) && ok(name) && parts.next().is_none()).then(|| (owner.to_owned(), name.to_owned()))
}

/// A check run's conclusion as a gate verdict.
fn verdict(conclusion: Option<&str>) -> Verdict {
    match conclusion {
        Some("success") => Verdict::Pass,
        Some("failure" | "timed_out" | "cancelled" | "action_required" | "startup_failure") => Verdict::Fail,
        Some("skipped" | "neutral" | "stale") => Verdict::Skipped,
        _ => Verdict::NotApplicable,
    }
}

/// Which kind of gate a check run is, from its name.
fn kind(name: &str) -> GateKind {
    let n = name.to_ascii_lowercase();
    if ["perf", "bench", "load", "latency"].iter().any(|k| n.contains(k)) {
        GateKind::Perf
    } else if ["security", "codeql", "scan", "audit", "vuln"].iter().any(|k| n.contains(k)) {
        GateKind::Security
    } else {
        GateKind::Tests
    }
}

impl GitHubEnricher {
    /// A client for `api_url` (GitHub's, or an Enterprise `…/api/v3`), with
    /// `token` if given. Needs a tokio runtime.
    pub fn new(api_url: &str, token: Option<String>, timeout: Duration) -> Result<Self, RcaError> {
        let mut b = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| RcaError::Invalid(format!("github_api_url {api_url:?}: {e}")))?
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout));
        if let Some(t) = token {
            b = b.personal_token(t);
        }
        let client = b.build().map_err(|e| RcaError::Invalid(format!("building the github client: {e}")))?;
        Ok(Self { client, timeout })
    }

    async fn get(&self, route: &str) -> Result<Value, RcaError> {
        match tokio::time::timeout(self.timeout, self.client.get::<Value, _, ()>(route, None)).await {
            Err(_) => Err(RcaError::Query(format!("github {route}: no answer within {:?}", self.timeout))),
            Ok(Err(e)) => Err(RcaError::Query(format!("github {route}: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Fills in what `c` lacks from GitHub. Returns whether anything changed;
    /// a change with no repository or commit is left alone.
    pub async fn enrich(&self, c: &mut ChangeEvent) -> Result<bool, RcaError> {
        let (Some(repo), Some(commit)) = (c.repository.as_deref(), c.commit.as_deref()) else { return Ok(false) };
        let Some((owner, name)) = slug(repo) else { return Ok(false) };
        let base = format!("/repos/{owner}/{name}");
        let before = c.clone();
        if c.pr.is_none() || c.title.is_none() || c.author.is_none() {
            let pr = match c.pr {
                Some(n) => self.get(&format!("{base}/pulls/{n}")).await?,
                None => {
                    let list = self.get(&format!("{base}/commits/{commit}/pulls")).await?;
                    // The merged one, else the first.
                    let list = list.as_array().cloned().unwrap_or_default();
                    list.iter().find(|p| !p["merged_at"].is_null()).or(list.first()).cloned().unwrap_or(Value::Null)
                }
            };
            if let Some(n) = pr["number"].as_u64() {
                c.pr = c.pr.or(Some(n));
                c.title = c.title.take().or_else(|| pr["title"].as_str().map(str::to_owned));
                c.author = c.author.take().or_else(|| pr["user"]["login"].as_str().map(str::to_owned));
            }
        }
        let runs = self.get(&format!("{base}/commits/{commit}/check-runs")).await?;
        for run in runs["check_runs"].as_array().into_iter().flatten() {
            let Some(name) = run["name"].as_str().filter(|n| !n.is_empty() && n.len() <= 128) else { continue };
            if c.gates.iter().any(|g| g.name == name) || c.gates.len() >= 64 {
                continue;
            }
            let summary = run["output"]["title"].as_str().or(run["output"]["summary"].as_str()).map(str::to_owned);
            c.gates.push(Gate {
                name: name.to_owned(),
                kind: kind(name),
                verdict: verdict(run["conclusion"].as_str()),
                summary,
                metrics: Default::default(),
                url: run["html_url"].as_str().map(str::to_owned),
            });
        }
        Ok(*c != before)
    }
}

impl GitHubEnricher {
    /// Fills in changes from GitHub in the background; a failure is logged and
    /// the change stays as reported.
    pub fn spawn_for(self: Arc<Self>, changes: Arc<ChangesDb>, tenant: Tenant, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for id in ids {
                let (db, t, i) = (Arc::clone(&changes), tenant.clone(), id.clone());
                let stored = match tokio::task::spawn_blocking(move || db.get(&t, &i)).await {
                    Ok(Ok(Some(s))) => s,
                    _ => continue,
                };
                let mut change = stored.change;
                match self.enrich(&mut change).await {
                    Ok(true) => {
                        let (db, t) = (Arc::clone(&changes), tenant.clone());
                        let saved = tokio::task::spawn_blocking(move || db.enriched(&t, &id, &change)).await;
                        if let Ok(Err(e)) = saved {
                            tracing::warn!(error = %e, "storing an enriched change failed");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(change = %id, error = %e, "enriching a change from github failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_read_as_owner_and_name() {
        let s = |r: &str| slug(r).map(|(o, n)| format!("{o}/{n}"));
        assert_eq!(s("acme-shop/pricing").as_deref(), Some("acme-shop/pricing"));
        assert_eq!(s("https://github.com/acme-shop/pricing.git").as_deref(), Some("acme-shop/pricing"));
        assert_eq!(s("https://ghe.example.com/acme/pricing/").as_deref(), Some("acme/pricing"));
        assert_eq!(s("https://github.com/acme"), None);
        assert_eq!(s("acme/pricing/../x"), None);
        assert_eq!(kind("perf-staging"), GateKind::Perf);
        assert_eq!(kind("CodeQL"), GateKind::Security);
        assert_eq!(verdict(Some("timed_out")), Verdict::Fail);
    }
}
