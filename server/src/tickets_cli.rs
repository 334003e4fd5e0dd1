//! `andon tickets`: the human gate from a terminal. Lists drafts, shows one
//! with its body and audit trail, and approves or rejects it through a running
//! server's `/api/v1/tickets`.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Remote, encode, with_query};
use crate::findings_cli::Output;

#[derive(Debug, clap::Args)]
pub struct TicketsArgs {
    #[command(subcommand)]
    pub action: Option<TicketAction>,
    /// pending, approved, rejected, posted, failed or resolved.
    #[arg(long)]
    pub state: Option<String>,
    /// Show one ticket in full: body, deliveries and audit trail.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Output,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum TicketAction {
    /// Approve a pending ticket; the outbox then posts it to the sink.
    Approve {
        id: String,
        /// Who approves (kept in the audit trail); defaults to $USER.
        #[arg(long, env = "USER")]
        reviewer: String,
        #[arg(long)]
        note: Option<String>,
        /// Change the priority on the way: P0, P1, P2 or P3.
        #[arg(long)]
        priority: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reject a pending ticket; later sightings of its finding stay quiet.
    Reject {
        id: String,
        #[arg(long, env = "USER")]
        reviewer: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn line(t: &Value) -> String {
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let ext = t.pointer("/external/url").and_then(Value::as_str).map(|u| format!("\n  {u}")).unwrap_or_default();
    format!("{} [{}] {} {}\n  {}{ext}\n", s("id"), s("priority"), s("state"), s("severity"), s("title"))
}

fn show(t: &Value, format: Output) -> anyhow::Result<()> {
    if let Output::Json = format {
        println!("{}", serde_json::to_string_pretty(t)?);
        return Ok(());
    }
    print!("{}", line(t));
    if let Some(labels) = t.get("labels").and_then(Value::as_array) {
        let l: Vec<&str> = labels.iter().filter_map(Value::as_str).collect();
        println!("  labels: {}", l.join(", "));
    }
    if let Some(body) = t.get("body").and_then(Value::as_str) {
        println!("\n{body}");
    }
    if let Some(audit) = t.get("audit").and_then(Value::as_array) {
        println!("audit:");
        for a in audit {
            let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or_default();
            println!("  {} {} {} {}", s("at"), s("actor"), s("action"), s("detail"));
        }
    }
    Ok(())
}

pub async fn run(args: TicketsArgs) -> anyhow::Result<()> {
    match args.action {
        Some(TicketAction::Approve { id, reviewer, note, priority, remote }) => {
            let body = json!({ "reviewer": reviewer, "note": note, "priority": priority });
            let t = remote.api()?.post(&format!("/api/v1/tickets/{}/approve", encode(&id)), &body).await?;
            print!("{}", line(&t));
            eprintln!("approved; the outbox posts it shortly (andon tickets --id {id} shows where)");
        }
        Some(TicketAction::Reject { id, reviewer, reason, remote }) => {
            let body = json!({ "reviewer": reviewer, "reason": reason });
            let t = remote.api()?.post(&format!("/api/v1/tickets/{}/reject", encode(&id)), &body).await?;
            print!("{}", line(&t));
        }
        None => {
            let api = args.remote.api()?;
            if let Some(id) = &args.id {
                let t = api.get(&format!("/api/v1/tickets/{}", encode(id))).await?;
                return show(&t, args.format);
            }
            let body = api.get(&with_query("/api/v1/tickets", &[("state", args.state.as_deref())])).await?;
            match args.format {
                Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
                Output::Text => {
                    let list = body.get("tickets").and_then(Value::as_array).cloned().unwrap_or_default();
                    for t in &list {
                        print!("{}", line(t));
                    }
                    eprintln!("({} tickets)", list.len());
                }
            }
        }
    }
    Ok(())
}
