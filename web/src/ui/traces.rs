//! `/traces/{id}`: a trace as a waterfall, each span with its attributes,
//! resource attributes and events; `/traces` looks one up, and lists recent
//! failing and slow traces to start from.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use andon_store::sql::ts;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Nav, UiError, Viewer, cell_text, esc, num, page, parse_time, query, see_other, text, trace_link};
use crate::app::AppState;

/// Spans shown of one trace; a bigger trace is cut, and says so.
const MAX_SPANS: usize = 2000;

/// Columns shown apart from a span's other columns: its head (ids, name, kind,
/// times, status) and its nested attributes, events and links.
fn shown_apart(column: &str) -> bool {
    andon_model::schema::HEAD_COLUMNS.contains(&column)
        || ["service_name", "resource_attributes", "attributes", "events", "links"].contains(&column)
}

#[derive(Debug, Default, Deserialize)]
pub struct LookupParams {
    id: Option<String>,
}

/// A trace id as the store keeps it: 32 lowercase hex digits.
pub(crate) fn normalize(id: &str) -> Option<String> {
    let id = id.trim().to_ascii_lowercase();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

pub async fn lookup(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Query(p): Query<LookupParams>,
) -> Result<Response, UiError> {
    if let Some(raw) = p.id.as_deref().filter(|s| !s.trim().is_empty()) {
        let id = normalize(raw)
            .ok_or_else(|| UiError(StatusCode::BAD_REQUEST, "a trace id is 32 hexadecimal digits".into()))?;
        return Ok(see_other(&format!("/traces/{id}")));
    }
    let since = Utc::now() - Duration::hours(1);
    let sql = format!(
        "SELECT trace_id, service_name, name, duration_ns / 1e6 AS ms, status_code, start_time FROM spans \
         WHERE start_time >= {} AND (parent_span_id IS NULL OR parent_span_id = '') \
         ORDER BY CASE WHEN status_code = 'error' THEN 0 ELSE 1 END, duration_ns DESC LIMIT 25",
        ts(since)
    );
    let rows = query(&app, &viewer.tenant, &sql).await?;
    let mut b = String::from(
        "<h1>Traces</h1><form class=\"filters\" method=\"get\" action=\"/traces\">\
         <label>trace id<input name=\"id\" size=\"36\" placeholder=\"32 hexadecimal digits\"></label>\
         <button type=\"submit\">Open</button></form><h2>Failing and slowest traces of the last hour</h2>",
    );
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No traces in the last hour.</p>");
    } else {
        b.push_str(
            "<table><tr><th>trace</th><th>root</th><th class=\"num\">duration</th><th>status</th><th>started</th></tr>",
        );
        for r in &rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} <code>{}</code></td><td class=\"num\">{:.1} ms</td><td>{}</td><td>{}</td></tr>",
                trace_link(text(r, "trace_id")),
                esc(text(r, "service_name")),
                esc(text(r, "name")),
                num(r, "ms"),
                esc(text(r, "status_code")),
                parse_time(text(r, "start_time")).map_or_else(|| esc(text(r, "start_time")), super::ago),
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, "Traces", Nav::Traces, &b))
}

struct Span {
    row: Map<String, Value>,
    id: String,
    parent: String,
    start_ns: i64,
    duration_ns: i64,
}

/// Spans in depth-first order under their parents (children by start time),
/// with their depths; spans whose parent is missing start new roots.
fn tree(spans: &[Span]) -> Vec<(usize, usize)> {
    let ids: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match ids.get(s.parent.as_str()) {
            Some(&p) if p != i && !s.parent.is_empty() => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    for c in children.values_mut() {
        c.sort_by_key(|&k| spans[k].start_ns);
    }
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        if let Some(c) = children.get(&i) {
            for &k in c.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    // A cycle of parents leaves spans unvisited: show them as roots.
    for (i, s) in seen.iter().enumerate() {
        if !s {
            order.push((i, 0));
        }
    }
    order
}

fn kv_table(title: &str, map: Option<&Value>) -> String {
    let Some(Value::Object(m)) = map else { return String::new() };
    if m.is_empty() {
        return String::new();
    }
    let mut o = format!("<h3>{}</h3><table class=\"kv\">", esc(title));
    for (k, v) in m {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&cell_text(v)));
    }
    o.push_str("</table>");
    o
}

pub async fn page_of(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(raw): Path<String>,
) -> Result<Response, UiError> {
    let id = normalize(&raw)
        .ok_or_else(|| UiError(StatusCode::BAD_REQUEST, "a trace id is 32 hexadecimal digits".into()))?;
    let sql = format!("SELECT * FROM spans WHERE trace_id = '{id}' ORDER BY start_time LIMIT {}", MAX_SPANS + 1);
    let mut rows = query(&app, &viewer.tenant, &sql).await?;
    if rows.is_empty() {
        return Err(UiError(StatusCode::NOT_FOUND, format!("no spans of trace {id} are stored for this tenant")));
    }
    let cut = rows.len() > MAX_SPANS;
    rows.truncate(MAX_SPANS);
    let spans: Vec<Span> = rows
        .into_iter()
        .map(|row| {
            let start_ns =
                parse_time(text(&row, "start_time")).and_then(|t| t.timestamp_nanos_opt()).unwrap_or_default();
            Span {
                id: text(&row, "span_id").to_owned(),
                parent: text(&row, "parent_span_id").to_owned(),
                duration_ns: num(&row, "duration_ns") as i64,
                start_ns,
                row,
            }
        })
        .collect();
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.start_ns + s.duration_ns).max().unwrap_or(t0 + 1);
    let total = (t1 - t0).max(1) as f64;
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| text(&s.row, "service_name")).collect();
    let errors = spans.iter().filter(|s| text(&s.row, "status_code") == "error").count();
    let order = tree(&spans);

    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/traces\">Traces</a></p><h1>Trace <span class=\"mono\">{id}</span></h1>\
         <p>{} spans across {} services · {:.2} ms · {} failing spans · started {}{}</p>\
         <p><a href=\"{}\">These spans in the SQL console</a></p>",
        spans.len(),
        services.len(),
        total / 1e6,
        errors,
        parse_time(text(&spans[order[0].0].row, "start_time"))
            .map_or_else(|| esc(text(&spans[order[0].0].row, "start_time")), super::time),
        if cut { format!(" · only the first {MAX_SPANS} spans are shown") } else { String::new() },
        esc(&super::sql_href(&format!(
            "SELECT service_name, name, kind, start_time, duration_ns, status_code FROM spans WHERE trace_id = '{id}' ORDER BY start_time"
        ))),
    );
    b.push_str(
        "<table class=\"waterfall\"><tr><th>span</th><th>service</th><th class=\"num\">duration</th>\
         <th class=\"num\">offset</th><th>timeline</th></tr>",
    );
    for &(i, depth) in &order {
        let s = &spans[i];
        let x = (s.start_ns - t0) as f64 / total * 1000.0;
        let w = (s.duration_ns as f64 / total * 1000.0).max(1.5);
        let err = text(&s.row, "status_code") == "error";
        let _ = write!(
            b,
            "<tr><td class=\"name ind{}\"><a href=\"#span-{}\">{}</a>{}</td><td>{}</td><td class=\"num\">{:.2} ms</td>\
             <td class=\"num\">{:.2} ms</td><td><svg viewBox=\"0 0 1000 14\" preserveAspectRatio=\"none\">\
             <rect class=\"{}\" x=\"{x:.1}\" y=\"2\" width=\"{w:.1}\" height=\"10\"/></svg></td></tr>",
            depth.min(8),
            esc(&s.id),
            esc(text(&s.row, "name")),
            if depth > 8 { format!(" <span class=\"muted\">(depth {depth})</span>") } else { String::new() },
            esc(text(&s.row, "service_name")),
            s.duration_ns as f64 / 1e6,
            (s.start_ns - t0) as f64 / 1e6,
            if err { "err" } else { "ok" },
        );
    }
    b.push_str("</table><h2>Spans</h2>");
    for &(i, _) in &order {
        let s = &spans[i];
        let _ = write!(
            b,
            "<details class=\"span\" id=\"span-{}\"><summary><b>{}</b> {} · {} · {} · <span class=\"mono\">{}</span></summary>",
            esc(&s.id),
            esc(text(&s.row, "service_name")),
            esc(text(&s.row, "name")),
            esc(text(&s.row, "kind")),
            esc(text(&s.row, "status_code")),
            esc(&s.id),
        );
        b.push_str("<table class=\"kv\">");
        for k in [
            "span_id",
            "parent_span_id",
            "trace_state",
            "kind",
            "start_time",
            "end_time",
            "status_code",
            "status_message",
        ] {
            let v = s.row.get(k).map(cell_text).unwrap_or_default();
            if !v.is_empty() {
                let _ = write!(b, "<tr><td>{k}</td><td>{}</td></tr>", esc(&v));
            }
        }
        for (k, v) in &s.row {
            if shown_apart(k) || v.is_null() {
                continue;
            }
            let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&cell_text(v)));
        }
        b.push_str("</table>");
        b.push_str(&kv_table("Attributes", s.row.get("attributes")));
        b.push_str(&kv_table("Resource attributes", s.row.get("resource_attributes")));
        if let Some(Value::Array(events)) = s.row.get("events")
            && !events.is_empty()
        {
            b.push_str("<h3>Events</h3><table><tr><th>time</th><th>name</th><th>attributes</th></tr>");
            for e in events {
                let attrs = match e.get("attributes") {
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| format!("<b>{}</b>: {}", esc(k), esc(&cell_text(v))))
                        .collect::<Vec<_>>()
                        .join("<br>"),
                    _ => String::new(),
                };
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{attrs}</td></tr>",
                    esc(&e.get("time").map(cell_text).unwrap_or_default()),
                    esc(&e.get("name").map(cell_text).unwrap_or_default()),
                );
            }
            b.push_str("</table>");
        }
        b.push_str("</details>");
    }
    Ok(page(&viewer, &format!("Trace {id}"), Nav::Traces, &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: i64) -> Span {
        Span { row: Map::new(), id: id.into(), parent: parent.into(), start_ns: start, duration_ns: 1 }
    }

    #[test]
    fn children_follow_their_parents_and_orphans_become_roots() {
        let spans =
            vec![span("a", "", 0), span("c", "a", 5), span("b", "a", 1), span("d", "b", 2), span("x", "gone", 3)];
        let order: Vec<(&str, usize)> = tree(&spans).into_iter().map(|(i, d)| (spans[i].id.as_str(), d)).collect();
        // Children by start time, each followed by its own children.
        assert_eq!(order, vec![("a", 0), ("b", 1), ("d", 2), ("c", 1), ("x", 0)]);
    }

    #[test]
    fn a_parent_cycle_still_shows_every_span() {
        let spans = vec![span("a", "b", 0), span("b", "a", 1)];
        assert_eq!(tree(&spans).len(), 2);
    }

    #[test]
    fn trace_ids_are_checked() {
        assert_eq!(normalize(" 5B8EFFF798038103D269B633813FC60C "), Some("5b8efff798038103d269b633813fc60c".into()));
        assert_eq!(normalize("5b8e'; DROP"), None);
    }
}
