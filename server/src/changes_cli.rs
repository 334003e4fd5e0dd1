//! `andon changes`: record a deploy and its gate evidence from a pipeline, or
//! list the change lineage, through a running server's `/api/v1/changes`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use crate::client::{Remote, with_query};
use crate::findings_cli::Output;

#[derive(Debug, clap::Args)]
pub struct ChangesArgs {
    #[command(subcommand)]
    pub action: Option<ChangeAction>,
    #[arg(long)]
    pub service: Option<String>,
    /// Changes deployed at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Output,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ChangeAction {
    /// Record a deploy: a ChangeEvent as JSON (a file, or - for stdin), or
    /// built from flags. A JSON array records each element.
    Add {
        /// A ChangeEvent JSON file (or an array of them), `-` for stdin.
        #[arg(long, conflicts_with_all = ["service", "version"])]
        file: Option<PathBuf>,
        #[arg(long, required_unless_present = "file")]
        service: Option<String>,
        #[arg(long, required_unless_present = "file")]
        version: Option<String>,
        /// When the rollout started (RFC 3339); now by default.
        #[arg(long)]
        deployed_at: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        commit: Option<String>,
        /// owner/name or a URL.
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        pr: Option<u64>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        author: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    match args.action {
        Some(ChangeAction::Add {
            file,
            service,
            version,
            deployed_at,
            environment,
            commit,
            repository,
            pr,
            title,
            author,
            remote,
        }) => {
            let events: Vec<Value> = match file {
                Some(path) => {
                    let text = if path.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
                    } else {
                        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
                    };
                    match serde_json::from_str::<Value>(&text).context("parsing the change JSON")? {
                        Value::Array(a) => a,
                        one => vec![one],
                    }
                }
                None => {
                    let mut v = serde_json::json!({
                        "service": service,
                        "version": version,
                        "deployed_at": deployed_at.unwrap_or_else(|| chrono::Utc::now().to_rfc3339()),
                    });
                    for (k, x) in [
                        ("environment", environment.map(Value::from)),
                        ("commit", commit.map(Value::from)),
                        ("repository", repository.map(Value::from)),
                        ("pr", pr.map(Value::from)),
                        ("title", title.map(Value::from)),
                        ("author", author.map(Value::from)),
                    ] {
                        if let Some(x) = x {
                            v[k] = x;
                        }
                    }
                    vec![v]
                }
            };
            let api = remote.api()?;
            for e in &events {
                let out = api.post("/api/v1/changes", e).await?;
                println!(
                    "{} {}",
                    out.get("id").and_then(Value::as_str).unwrap_or_default(),
                    if out.get("created") == Some(&Value::Bool(true)) { "recorded" } else { "updated" }
                );
            }
        }
        None => {
            let path = with_query(
                "/api/v1/changes",
                &[("service", args.service.as_deref()), ("since", args.since.as_deref())],
            );
            let body = args.remote.api()?.get(&path).await?;
            match args.format {
                Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
                Output::Text => {
                    let list = body.get("changes").and_then(Value::as_array).cloned().unwrap_or_default();
                    for c in &list {
                        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                        let pr = c.get("pr").and_then(Value::as_u64).map(|p| format!(" PR #{p}")).unwrap_or_default();
                        let gates: Vec<String> = c
                            .get("gates")
                            .and_then(Value::as_array)
                            .map(|g| {
                                g.iter()
                                    .map(|g| {
                                        format!(
                                            "{}={}",
                                            g["name"].as_str().unwrap_or(""),
                                            g["verdict"].as_str().unwrap_or("")
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        println!(
                            "{} {} {} {}{} {}{}",
                            s("deployed_at"),
                            s("service"),
                            s("version"),
                            s("commit").chars().take(12).collect::<String>(),
                            pr,
                            s("id"),
                            if gates.is_empty() { String::new() } else { format!("\n  gates: {}", gates.join(", ")) }
                        );
                    }
                    eprintln!("({} changes)", list.len());
                }
            }
        }
    }
    Ok(())
}
