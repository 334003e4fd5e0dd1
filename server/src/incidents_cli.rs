//! `andon incidents`: open an incident (which runs its RCA), list incidents, or
//! show one's report, through a running server's `/api/v1/incidents`.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Api, Remote, encode, with_query};

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

async fn report(api: &Api, id: &str, format: ReportFormat) -> anyhow::Result<String> {
    let path = format!("/api/v1/incidents/{}", encode(id));
    match format {
        ReportFormat::Json => Ok(serde_json::to_string_pretty(&api.get(&path).await?)?),
        ReportFormat::Md => api.text(&format!("{path}/report.md")).await,
        ReportFormat::Html => api.text(&format!("{path}/report.html")).await,
    }
}

pub async fn run(args: IncidentsArgs) -> anyhow::Result<()> {
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
            let api = remote.api()?;
            let inc = api.post("/api/v1/incidents", &body).await?;
            let id = inc.get("id").and_then(Value::as_str).context("the server gave no incident id")?;
            eprintln!("opened {id}");
            print!("{}", report(&api, id, format).await?);
        }
        Some(IncidentAction::Show { id, format, remote }) => {
            print!("{}", report(&remote.api()?, &id, format).await?);
        }
        None => {
            let path = with_query("/api/v1/incidents", &[("state", args.state.as_deref())]);
            let body = args.remote.api()?.get(&path).await?;
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
