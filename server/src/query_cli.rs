//! `andon query "SQL"`: runs SQL on a server and prints a table, JSON or CSV.

use std::fmt::Write as _;

use serde_json::Value;

use crate::client::Remote;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// A read-only SQL query over `spans`.
    pub sql: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub remote: Remote,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

pub fn render(format: Format, columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = String::new();
    match format {
        Format::Json => {
            let objects: Vec<Value> =
                rows.iter().map(|r| Value::Object(columns.iter().cloned().zip(r.iter().cloned()).collect())).collect();
            out = serde_json::to_string_pretty(&objects).unwrap_or_default();
            out.push('\n');
        }
        Format::Csv => {
            let _ = writeln!(out, "{}", columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            for r in rows {
                let _ = writeln!(out, "{}", r.iter().map(|v| csv_field(&text(v))).collect::<Vec<_>>().join(","));
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(text).collect()).collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.chars().count()]).max().unwrap_or(0))
                .collect();
            let rule = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
            let line = |vals: &[String]| {
                let parts: Vec<String> = vals
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!(" {v}{} ", " ".repeat(w - v.chars().count())))
                    .collect();
                format!("|{}|\n", parts.join("|"))
            };
            out.push_str(&rule);
            out.push_str(&line(columns));
            out.push_str(&rule);
            for r in &cells {
                out.push_str(&line(r));
            }
            out.push_str(&rule);
        }
    }
    out
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let body = args.remote.api()?.post("/api/v1/query", &serde_json::json!({ "sql": args.sql })).await?;
    let columns: Vec<String> = body["columns"].as_array().into_iter().flatten().map(text).collect();
    let rows: Vec<Vec<Value>> =
        body["rows"].as_array().into_iter().flatten().map(|r| r.as_array().cloned().unwrap_or_default()).collect();
    print!("{}", render(args.format, &columns, &rows));
    if matches!(args.format, Format::Table) {
        let truncated = if body["truncated"].as_bool() == Some(true) { ", truncated" } else { "" };
        eprintln!("({} rows{truncated}, {:.1} ms)", rows.len(), body["elapsed_ms"].as_f64().unwrap_or(0.0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_and_csv_render_every_cell() {
        let cols = vec!["service".to_owned(), "n".to_owned()];
        let rows = vec![vec![json!("cart"), json!(12)], vec![json!("a,b"), Value::Null]];
        let t = render(Format::Table, &cols, &rows);
        assert!(t.contains("| cart    | 12 |"), "{t}");
        let c = render(Format::Csv, &cols, &rows);
        assert_eq!(c, "service,n\ncart,12\n\"a,b\",\n");
    }
}
