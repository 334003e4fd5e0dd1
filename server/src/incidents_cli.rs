//! `andon incidents`: open an incident (which runs its RCA), list incidents, or
//! show one's report, through a running server's `/api/v1/incidents`.

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::findings_cli::{Remote, call, encode};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    /// The report as Markdown.
    Md,
    Html,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct IncidentsArgs {
    #[command(subcommand)]
    pub action: Option<IncidentAction>,
    /// open or resolved.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum IncidentAction {
    /// Open an incident for a window and print its RCA report.
    Open {
        /// Start of the incident window (RFC 3339).
        #[arg(long)]
        start: String,
        /// End of the window (RFC 3339); now by default.
        #[arg(long)]
        end: Option<String>,
        /// The baseline window; by default as long as the incident (at least 15
        /// minutes) just before it.
        #[arg(long, requires = "baseline_end")]
        baseline_start: Option<String>,
        #[arg(long, requires = "baseline_start")]
        baseline_end: Option<String>,
        /// Where the trouble was noticed: only traces through this service are read.
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one incident's report.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        #[command(flatten)]
        remote: Remote,
    },
}

async fn report(client: &reqwest::Client, remote: &Remote, id: &str, format: ReportFormat) -> anyhow::Result<String> {
    let base = format!("{}/api/v1/incidents/{}", remote.server.trim_end_matches('/'), encode(id));
    let url = match format {
        ReportFormat::Json => {
            let body = call(client.get(&base), remote.tenant.as_deref(), &base).await?;
            return Ok(serde_json::to_string_pretty(&body)?);
        }
        ReportFormat::Md => format!("{base}/report.md"),
        ReportFormat::Html => format!("{base}/report.html"),
    };
    let mut req = client.get(&url);
    if let Some(t) = &remote.tenant {
        req = req.header("x-scope-orgid", t);
    }
    let resp = req.send().await.with_context(|| format!("connecting to {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the server's answer")?;
    if !status.is_success() {
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        bail!("{msg}");
    }
    Ok(text)
}

pub async fn run(args: IncidentsArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match args.action {
        Some(IncidentAction::Open { start, end, baseline_start, baseline_end, service, title, format, remote }) => {
            let mut body = json!({
                "start": start,
                "end": end.unwrap_or_else(|| chrono::Utc::now().to_rfc3339()),
            });
            for (k, v) in [
                ("baseline_start", baseline_start),
                ("baseline_end", baseline_end),
                ("service", service),
                ("title", title),
            ] {
                if let Some(v) = v {
                    body[k] = Value::from(v);
                }
            }
            let url = format!("{}/api/v1/incidents", remote.server.trim_end_matches('/'));
            let inc =
                call(client.post(&url).header("x-andon-client", "cli").json(&body), remote.tenant.as_deref(), &url)
                    .await?;
            let id = inc.get("id").and_then(Value::as_str).context("the server gave no incident id")?;
            eprintln!("opened {id}");
            print!("{}", report(&client, &remote, id, format).await?);
        }
        Some(IncidentAction::Show { id, format, remote }) => {
            print!("{}", report(&client, &remote, &id, format).await?);
        }
        None => {
            let mut url = format!("{}/api/v1/incidents", args.remote.server.trim_end_matches('/'));
            if let Some(s) = &args.state {
                url.push_str(&format!("?state={}", encode(s)));
            }
            let body = call(client.get(&url), args.remote.tenant.as_deref(), &url).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let list = body.get("incidents").and_then(Value::as_array).cloned().unwrap_or_default();
            for i in &list {
                let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                let top = i["suspects"].get(0).map(|t| {
                    format!("{} {}", t["service"].as_str().unwrap_or(""), t["operation"].as_str().unwrap_or(""))
                });
                let change = i["change"]
                    .as_object()
                    .map(|c| {
                        format!(
                            " change {} {}",
                            c["service"].as_str().unwrap_or(""),
                            c["version"].as_str().unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{} {} {} [{}]\n  suspect: {}{change} (confidence {:.2})",
                    s("id"),
                    s("state"),
                    s("title"),
                    s("opened_by"),
                    top.unwrap_or_else(|| "none".to_owned()),
                    i["confidence"].as_f64().unwrap_or(0.0)
                );
            }
            eprintln!("({} incidents)", list.len());
        }
    }
    Ok(())
}
