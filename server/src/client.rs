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

/// The variable that names a PEM file of CA certificates to trust besides the
/// system's, for a server whose certificate a private CA signed.
pub const CA_FILE_ENV: &str = "ANDON_CA_FILE";

/// The variables that name the PEM certificate and key the CLI presents when
/// the server asks for one (mutual TLS on the OTLP ports, for `import`).
pub const CLIENT_CERT_ENV: &str = "ANDON_CLIENT_CERT_FILE";
pub const CLIENT_KEY_ENV: &str = "ANDON_CLIENT_KEY_FILE";

fn env_file(var: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match std::env::var_os(var).filter(|p| !p.is_empty()) {
        Some(path) => Ok(Some(std::fs::read(&path).with_context(|| format!("{var}: reading {}", path.display()))?)),
        None => Ok(None),
    }
}

/// The HTTP client of every command that calls a server (the API, or OTLP/HTTP
/// for `import`): HTTPS trusts the system's roots and those in `$ANDON_CA_FILE`,
/// and presents the client certificate in `$ANDON_CLIENT_CERT_FILE` and
/// `$ANDON_CLIENT_KEY_FILE` when both are set.
pub fn http_client(timeout: Option<std::time::Duration>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    if let Some(pem) = env_file(CA_FILE_ENV)? {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
        if certs.is_empty() {
            bail!("{CA_FILE_ENV}: the file holds no PEM certificate");
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (env_file(CLIENT_CERT_ENV)?, env_file(CLIENT_KEY_ENV)?) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            let identity = reqwest::Identity::from_pem(&cert).map_err(|e| {
                anyhow::anyhow!("{CLIENT_CERT_ENV} and {CLIENT_KEY_ENV}: not a PEM certificate and key: {e}")
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => bail!("set both {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV}, or neither"),
    }
    builder.build().context("building the HTTP client")
}

impl Remote {
    pub fn api(&self) -> anyhow::Result<Api> {
        Ok(Api {
            http: http_client(None)?,
            base: self.server.trim_end_matches('/').to_owned(),
            tenant: self.tenant.clone(),
            token: self.token.clone(),
        })
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
