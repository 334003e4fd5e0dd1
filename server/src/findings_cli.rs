//! `andon analyze` and `andon findings`: clients of a running server's
//! `/api/v1/analyze` and `/api/v1/findings`.

use serde_json::Value;

use crate::client::{Remote, encode, with_query};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// One block per finding: its summary and where it is.
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Start of the range (RFC 3339).
    #[arg(long)]
    pub from: String,
    /// End of the range (RFC 3339).
    #[arg(long)]
    pub to: String,
    /// Start of an explicit baseline for one comparison; without one, the range
    /// is replayed as continuous detection would have run over it.
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
    let mut body = serde_json::json!({ "from": args.from, "to": args.to });
    if let (Some(bf), Some(bt)) = (&args.baseline_from, &args.baseline_to) {
        body["baseline_from"] = Value::from(bf.clone());
        body["baseline_to"] = Value::from(bt.clone());
    }
    let answer = args.remote.api()?.post("/api/v1/analyze", &body).await?;
    print(&answer, args.format)
}

pub async fn findings(args: FindingsArgs) -> anyhow::Result<()> {
    let path = match &args.id {
        Some(id) => format!("/api/v1/findings/{}", encode(id)),
        None => "/api/v1/findings".to_owned(),
    };
    let path = with_query(
        &path,
        &[
            ("kind", args.kind.as_deref()),
            ("service", args.service.as_deref()),
            ("state", args.state.as_deref()),
            ("since", args.since.as_deref()),
            ("until", args.until.as_deref()),
        ],
    );
    let answer = args.remote.api()?.get(&path).await?;
    print(&answer, args.format)
}
