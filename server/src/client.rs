//! The CLI's one client of a running server's API: which server and tenant
//! (`--server`, `--tenant`), the tenant header and the bearer token
//! (`ANDON_TOKEN`), and the check every answer
//! gets (a non-2xx answer becomes its `{"error": ...}` message).

use andon_model::TENANT_HEADER;
use anyhow::{Context, bail};
use serde_json::Value;

/// Which server, and as which tenant.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Base URL of the server's API.
    #[arg(long, default_value = "http://127.0.0.1:4380", env = "ANDON_SERVER")]
    pub server: String,
    /// Tenant (sent as X-Scope-OrgID).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Bearer token, when the server has auth on (read from the environment
    /// only, so it never shows in `ps`).
    #[arg(skip = std::env::var("ANDON_TOKEN").ok().filter(|t| !t.is_empty()))]
    pub token: Option<String>,
}

/// Requests to one server as one tenant.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    tenant: Option<String>,
    token: Option<String>,
}

impl Remote {
    pub fn api(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.server.trim_end_matches('/').to_owned(),
            tenant: self.tenant.clone(),
            token: self.token.clone(),
        }
    }
}

/// Percent-encodes a path segment or query parameter value.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path` with the parameters that are set, encoded.
pub fn with_query(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = params.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v)))).collect();
    if q.is_empty() { path.to_owned() } else { format!("{path}?{}", q.join("&")) }
}

impl Api {
    /// `GET path`, answered with JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.http.get(self.url(path)), path).await
    }

    /// `POST path` with a JSON body, answered with JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.http.post(self.url(path)).json(body), path).await
    }

    /// `GET path`, answered with text (a report).
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        self.send(self.http.get(self.url(path)), path).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn json(&self, req: reqwest::RequestBuilder, path: &str) -> anyhow::Result<Value> {
        let text = self.send(req, path).await?;
        serde_json::from_str(&text).context("reading the server's answer")
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> anyhow::Result<String> {
        // The server records incidents this client opens as opened from the CLI.
        let mut req = req.header("x-andon-client", "cli");
        if let Some(t) = &self.tenant {
            req = req.header(TENANT_HEADER, t);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let url = self.url(path);
        let resp = req.send().await.with_context(|| format!("connecting to {url}"))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the server's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("{status}: {text}"));
            bail!("{msg}");
        }
        Ok(text)
    }
}
