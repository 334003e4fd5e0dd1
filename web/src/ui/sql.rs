//! `/sql`: the SQL console over `spans`, `findings` and `changes`, read-only
//! like `POST /api/v1/query`. A query is part of the URL, so a finding's
//! evidence links straight to its rerun and a result can be shared.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{Nav, UiError, Viewer, cell_text, esc, page};
use crate::app::AppState;

const EXAMPLE: &str = "SELECT service_name, count(*) AS spans,\n       approx_percentile_cont(duration_ns, 0.95) / 1e6 AS p95_ms\nFROM spans\nWHERE start_time > now() - INTERVAL '1 hour'\nGROUP BY 1 ORDER BY 2 DESC";

/// Rows shown on the page; the API returns up to its configured maximum.
const SHOWN_ROWS: usize = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    q: Option<String>,
}

pub async fn page_of(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Result<Response, UiError> {
    let sql = p.q.unwrap_or_default();
    let mut b = String::from("<h1>SQL</h1>");
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/sql\"><textarea name=\"q\" rows=\"8\" spellcheck=\"false\" class=\"mono\" \
         aria-label=\"sql\">{}</textarea><p><button class=\"primary\" type=\"submit\">Run</button> \
         <span class=\"muted\">Read-only, over <code>spans</code>, <code>findings</code> and <code>changes</code> of \
         tenant <code>{}</code>.</span></p></form>",
        esc(if sql.trim().is_empty() { EXAMPLE } else { &sql }),
        esc(viewer.tenant.as_str()),
    );
    if !sql.trim().is_empty() {
        match app.query.run(Some(viewer.tenant.clone()), &sql).await {
            Err(e) => {
                let e = crate::app::ApiError::from(e);
                let _ = write!(b, "<p class=\"error\">{}</p>", esc(&e.1));
            }
            Ok(out) => {
                let (columns, rows) = crate::rows::to_json(&out.schema, &out.batches);
                let _ = write!(
                    b,
                    "<p class=\"muted\">{} rows{} in {:.1} ms.</p><div class=\"scroll\"><table><tr>",
                    rows.len(),
                    if out.truncated { " (truncated by the row limit)" } else { "" },
                    out.elapsed.as_secs_f64() * 1e3
                );
                for c in &columns {
                    let _ = write!(b, "<th>{}</th>", esc(c));
                }
                b.push_str("</tr>");
                for r in rows.iter().take(SHOWN_ROWS) {
                    b.push_str("<tr>");
                    for (c, v) in columns.iter().zip(r) {
                        let shown = cell_text(v);
                        if c == "trace_id" && !shown.is_empty() {
                            let _ = write!(b, "<td>{}</td>", super::trace_link(&shown));
                        } else {
                            let _ = write!(b, "<td>{}</td>", esc(&shown));
                        }
                    }
                    b.push_str("</tr>");
                }
                b.push_str("</table></div>");
                if rows.len() > SHOWN_ROWS {
                    let _ = write!(b, "<p class=\"muted\">The first {SHOWN_ROWS} rows are shown.</p>");
                }
            }
        }
    }
    Ok(page(&viewer, "SQL", Nav::Sql, &b))
}
