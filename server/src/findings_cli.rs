//! `andon analyze` and `andon findings`: clients of a running server's
//! `/api/v1/analyze` and `/api/v1/findings`.

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// One block per finding: its summary and where it is.
    Text,
    Json,
}

/// Which server, and as which tenant.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// Base URL of the server's API.
    #[arg(long, default_value = "http://127.0.0.1:4380", env = "ANDON_SERVER")]
    pub server: String,
    /// Tenant (sent as X-Scope-OrgID).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Start of the current window (RFC 3339).
    #[arg(long)]
    pub from: String,
    /// End of the current window (RFC 3339).
    #[arg(long)]
    pub to: String,
    /// Start of the baseline; by default `analysis.baseline_secs` before --from.
    #[arg(long, requires = "baseline_to")]
    pub baseline_from: Option<String>,
    #[arg(long, requires = "baseline_from")]
    pub baseline_to: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Output,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct FindingsArgs {
    /// latency_regression, error_rate_regression, retry, drop_off or silent_recovery.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    /// open or resolved.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Show one finding, in full.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Output,
    #[command(flatten)]
    pub remote: Remote,
}

pub async fn call(req: reqwest::RequestBuilder, tenant: Option<&str>, url: &str) -> anyhow::Result<Value> {
    let req = match tenant {
        Some(t) => req.header("x-scope-orgid", t),
        None => req,
    };
    let resp = req.send().await.with_context(|| format!("connecting to {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the server's answer")?;
    if !status.is_success() {
        bail!("{}", body.get("error").and_then(Value::as_str).unwrap_or("request failed"));
    }
    Ok(body)
}

fn text(findings: &[Value]) -> String {
    let mut out = String::new();
    for f in findings {
        let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let segment = f.get("segment").map(Value::to_string).unwrap_or_default();
        out.push_str(&format!(
            "{} [{}] {} {} {} {} {}\n  {}\n",
            s("id"),
            s("severity"),
            s("state"),
            s("kind"),
            s("service"),
            s("operation"),
            if segment == "{}" { String::new() } else { segment },
            s("summary"),
        ));
    }
    out
}

fn print(body: &Value, format: Output) -> anyhow::Result<()> {
    match format {
        Output::Json => println!("{}", serde_json::to_string_pretty(body)?),
        Output::Text => {
            let list: Vec<Value> = match body.get("findings").and_then(Value::as_array) {
                Some(l) => l.clone(),
                None => vec![body.clone()],
            };
            print!("{}", text(&list));
            eprintln!("({} findings)", list.len());
        }
    }
    Ok(())
}

pub async fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/analyze", args.remote.server.trim_end_matches('/'));
    let mut body = serde_json::json!({ "from": args.from, "to": args.to });
    if let (Some(bf), Some(bt)) = (&args.baseline_from, &args.baseline_to) {
        body["baseline_from"] = Value::from(bf.clone());
        body["baseline_to"] = Value::from(bt.clone());
    }
    let req = reqwest::Client::new().post(&url).json(&body);
    let answer = call(req, args.remote.tenant.as_deref(), &url).await?;
    print(&answer, args.format)
}

/// Percent-encodes a query parameter value.
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

pub async fn findings(args: FindingsArgs) -> anyhow::Result<()> {
    let base = args.remote.server.trim_end_matches('/');
    let url = match &args.id {
        Some(id) => format!("{base}/api/v1/findings/{id}"),
        None => format!("{base}/api/v1/findings"),
    };
    let mut params: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("kind", &args.kind),
        ("service", &args.service),
        ("state", &args.state),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let url = if query.is_empty() { url } else { format!("{url}?{}", query.join("&")) };
    let req = reqwest::Client::new().get(&url);
    let answer = call(req, args.remote.tenant.as_deref(), &url).await?;
    print(&answer, args.format)
}
