//! `andon ask`, `andon runs` and `andon replay`: the investigation agent and
//! the flight recorder, through a running server's `/api/v1/investigations`
//! and `/api/v1/runs`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Remote, encode};

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The question, in words ("why is checkout slow for android users since 14:00?").
    pub question: String,
    /// Print the investigation as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub action: Option<RunsAction>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// Show a run as a timeline of its steps.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The run to replay.
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let api = args.remote.api()?;
    let mut inv = api.post("/api/v1/investigations", &json!({"question": args.question})).await?;
    let id = s(&inv, "id").to_owned();
    if id.is_empty() {
        bail!("the server gave no investigation id");
    }
    eprintln!("investigating ({id}, run {})…", s(&inv, "run_id"));
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait_secs);
    while s(&inv, "state") == "running" {
        if std::time::Instant::now() >= deadline {
            bail!("no answer after {} s; see `andon runs show {}`", args.wait_secs, s(&inv, "run_id"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        inv = api.get(&format!("/api/v1/investigations/{}", encode(&id))).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inv)?);
        return Ok(());
    }
    println!("{} ({} steps, {} tokens)", s(&inv, "state"), inv["steps"], inv["tokens"]);
    if let Some(a) = inv["answer"].as_str() {
        println!("\n{a}\n");
    }
    if let Some(r) = inv["reason"].as_str() {
        println!("{r}");
    }
    for v in inv["violations"].as_array().into_iter().flatten() {
        println!("  unsupported: \"{}\": {}", s(v, "text"), s(v, "reason"));
    }
    let citations = inv["citations"].as_array().cloned().unwrap_or_default();
    if !citations.is_empty() {
        println!("Sources:");
        for c in &citations {
            println!("  [{}] {}\n      {}", s(c, "kind"), s(c, "ref"), s(c, "excerpt"));
        }
    }
    println!("How Andon got here: andon runs show {}", s(&inv, "run_id"));
    Ok(())
}

pub async fn runs(args: RunsArgs) -> anyhow::Result<()> {
    match args.action {
        Some(RunsAction::Show { id, json, remote }) => {
            let run = remote.api()?.get(&format!("/api/v1/runs/{}", encode(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
                return Ok(());
            }
            println!("{} {} — {}", s(&run, "id"), s(&run, "kind"), s(&run, "subject"));
            let start = chrono::DateTime::parse_from_rfc3339(s(&run, "started_at")).context("run start")?;
            for step in run["steps"].as_array().into_iter().flatten() {
                let at = chrono::DateTime::parse_from_rfc3339(s(step, "started_at")).unwrap_or(start);
                let end = chrono::DateTime::parse_from_rfc3339(s(step, "ended_at")).unwrap_or(at);
                let parents: Vec<&str> =
                    step["parents"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:>8.3}s {:>5} {:<9} {:<16} {:>7} ms  {}{}",
                    (at - start).num_milliseconds() as f64 / 1e3,
                    s(step, "id"),
                    s(step, "kind"),
                    s(step, "name"),
                    (end - at).num_milliseconds(),
                    s(step, "summary"),
                    if parents.is_empty() { String::new() } else { format!("  ← {}", parents.join(", ")) }
                );
            }
        }
        None => {
            let body = args.remote.api()?.get("/api/v1/runs").await?;
            let list = body["runs"].as_array().cloned().unwrap_or_default();
            for r in &list {
                println!(
                    "{} {:<13} {} {} steps  {}",
                    s(r, "id"),
                    s(r, "kind"),
                    s(r, "started_at"),
                    r["steps"],
                    s(r, "subject")
                );
            }
            eprintln!("({} runs)", list.len());
        }
    }
    Ok(())
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let api = args.remote.api()?;
    let report = api.post(&format!("/api/v1/runs/{}/replay", encode(&args.id)), &json!({})).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} steps re-executed, {} taken from the recording",
            s(&report, "run_id"),
            report["replayed"],
            report["from_recording"]
        );
        for d in report["differences"].as_array().into_iter().flatten() {
            println!("  differs: step {} ({}): {}", s(d, "step"), s(d, "name"), s(d, "reason"));
        }
    }
    let differences = report["differences"].as_array().map_or(0, Vec::len);
    if differences > 0 {
        bail!("{differences} steps differ from the recording");
    }
    println!("no differences");
    Ok(())
}
