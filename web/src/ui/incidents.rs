//! `/incidents` and `/incidents/{id}`: the RCA report with a timeline chart of
//! the signature's metric, its onset and the linked deploy, then the report's
//! suspects, change lineage, gate analysis and remediation.

use std::fmt::Write;
use std::sync::Arc;

use andon_model::IncidentState;
use andon_rca::report::{self, Links};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::chart::{self, Band, Marker, Series};
use super::{Nav, UiError, Viewer, ago, badge, esc, page, time, url_encode};
use crate::app::{AppState, blocking};

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
}

pub async fn list(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Query(p): Query<ListParams>,
) -> Result<Response, UiError> {
    let state = match p.state.as_deref() {
        None | Some("") => None,
        Some("open") => Some(IncidentState::Open),
        Some("resolved") => Some(IncidentState::Resolved),
        Some(other) => return Err(UiError(StatusCode::BAD_REQUEST, format!("no such state {other:?}"))),
    };
    let (incidents, t) = (Arc::clone(&app.incidents), viewer.tenant.clone());
    let list = blocking(move || incidents.list(&t, state)).await?;
    let mut b = String::from("<h1>Incidents</h1>");
    if list.is_empty() {
        b.push_str(
            "<p class=\"muted\">No incidents. Critical and high findings open them, or run \
             <code>andon incidents open --start … --end …</code>.</p>",
        );
    } else {
        b.push_str(
            "<table><tr><th>state</th><th>incident</th><th>culprit</th><th>change</th><th class=\"num\">confidence</th>\
             <th>opened by</th><th>opened</th></tr>",
        );
        for i in &list {
            let culprit = i
                .suspects
                .first()
                .map_or(String::new(), |s| format!("{} <code>{}</code>", esc(&s.service), esc(&s.operation)));
            let change = i.change.as_ref().map_or(String::from("<span class=\"muted\">none linked</span>"), |c| {
                format!(
                    "{} {}{}",
                    esc(&c.event.service),
                    esc(&c.event.version),
                    c.event.pr.map_or(String::new(), |p| format!(" (PR #{p})"))
                )
            });
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/incidents/{}\">{}</a></td><td>{culprit}</td><td>{change}</td>\
                 <td class=\"num\">{:.2}</td><td>{}</td><td>{}</td></tr>",
                badge(i.state.as_str(), i.state.as_str()),
                url_encode(&i.id),
                esc(&i.title),
                i.confidence,
                esc(&i.opened_by),
                ago(i.created_at),
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, "Incidents", Nav::Incidents, &b))
}

#[derive(Debug, Deserialize)]
struct Point {
    at: DateTime<Utc>,
    value: f64,
}

pub async fn detail(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let (incidents, t) = (Arc::clone(&app.incidents), viewer.tenant.clone());
    let inc = blocking(move || incidents.get(&t, &id)).await?.ok_or_else(|| UiError::not_found("incident"))?;
    let inc = app.redacted(inc);

    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/incidents\">Incidents</a> / <span class=\"mono\">{}</span> · \
         <a href=\"/api/v1/incidents/{id}/report.md\">Markdown</a> · <a href=\"/api/v1/incidents/{id}/report.html\">HTML</a> · \
         <a href=\"/api/v1/incidents/{id}\">JSON</a>{run}</p><h1>{}</h1>",
        esc(&inc.id),
        esc(&inc.title),
        id = url_encode(&inc.id),
        run = inc
            .run_id
            .as_ref()
            .map_or(String::new(), |r| format!(" · <a href=\"/runs/{}\">how Andon got here</a>", url_encode(r))),
    );

    // The timeline: the metric the RCA measured over both windows, its onset and
    // the deploy it linked.
    let points: Vec<Point> =
        inc.details.get("series").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    if let Some(sig) = &inc.signature {
        let (label, unit, scale) = match sig.metric.as_str() {
            "error_rate" => ("error rate", "%", 100.0),
            andon_rca::onset::NEW_VERSION_SHARE => ("share served by the new version", "%", 100.0),
            _ => ("p95", "ms", 1.0),
        };
        let series = vec![Series {
            label: format!("{label} of {} {}", sig.service, sig.operation),
            points: points.iter().map(|p| (p.at, p.value * scale)).collect(),
        }];
        let mut markers = Vec::new();
        if let Some(c) = &inc.change {
            markers.push(Marker {
                at: c.event.deployed_at,
                label: format!("deploy {} {}", c.event.service, c.event.version),
                class: "marker",
            });
        }
        if let Some(onset) = sig.onset {
            markers.push(Marker { at: onset, label: "onset".into(), class: "onset" });
        }
        let bands = vec![
            Band { start: inc.baseline_window.start, end: inc.baseline_window.end, label: "baseline".into() },
            Band { start: inc.window.start, end: inc.window.end, label: "incident".into() },
        ];
        b.push_str("<h2>Timeline</h2>");
        b.push_str(&chart::time_chart(&format!("{label} over time"), &series, unit, &markers, &bands));
        let mut events: Vec<(DateTime<Utc>, String)> = vec![
            (inc.baseline_window.start, "baseline window starts".into()),
            (inc.window.start, "incident window starts".into()),
            (inc.window.end, "incident window ends".into()),
        ];
        if let Some(c) = &inc.change {
            events.push((
                c.event.deployed_at,
                format!(
                    "{} {} deployed{}",
                    c.event.service,
                    c.event.version,
                    c.event.pr.map_or(String::new(), |p| format!(" (PR #{p})"))
                ),
            ));
        }
        if let Some(onset) = sig.onset {
            events.push((onset, format!("onset: {label} starts to rise on {} {}", sig.service, sig.operation)));
        }
        events.sort_by_key(|e| e.0);
        b.push_str("<ol class=\"timeline\">");
        for (at, what) in events {
            let _ = write!(b, "<li><span class=\"muted\">{}</span> {}</li>", time(at), esc(&what));
        }
        b.push_str("</ol>");
    }
    if !inc.finding_ids.is_empty() {
        let links: Vec<String> = inc
            .finding_ids
            .iter()
            .map(|f| format!("<a class=\"mono\" href=\"/findings/{}\">{}</a>", url_encode(f), esc(f)))
            .collect();
        let _ = write!(b, "<p>Findings: {}</p>", links.join(", "));
    }
    b.push_str(&report::html_body(&inc, Some(Links { trace: "/traces/", incident: "/incidents/" })));
    Ok(page(&viewer, &inc.title, Nav::Incidents, &b))
}
