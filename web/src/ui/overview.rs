//! `/`: ingest rates, the services seen in the last hour, open findings by
//! severity, the tickets waiting at the gate and recent incidents.

use std::fmt::Write;
use std::sync::Arc;

use andon_analysis::FindingFilter;
use andon_model::{FindingState, IncidentState, Severity, TicketState};
use andon_store::sql::ts;
use axum::extract::State;
use axum::response::Response;
use chrono::{Duration, Utc};

use super::chart::{self, Series};
use super::{Nav, UiError, Viewer, ago, badge, esc, num, page, query, text};
use crate::app::{AppState, blocking};

pub async fn show(State(app): State<Arc<AppState>>, viewer: Viewer) -> Result<Response, UiError> {
    let tenant = viewer.tenant.clone();
    let now = Utc::now();
    let hour_ago = now - Duration::hours(1);

    let (findings_db, tickets, incidents_db, t) =
        (Arc::clone(&app.findings), Arc::clone(&app.tickets), Arc::clone(&app.incidents), tenant.clone());
    let (findings, pending, incidents) = blocking(move || {
        let findings = findings_db
            .list(&t, &FindingFilter { state: Some(FindingState::Open), ..Default::default() })
            .map_err(crate::app::internal)?;
        let pending = tickets.db().list(&t, Some(TicketState::Pending))?;
        let incidents = incidents_db.list(&t, None)?;
        Ok::<_, crate::app::ApiError>((findings, pending, incidents))
    })
    .await?;

    let services = query(
        &app,
        &tenant,
        &format!(
            "SELECT service_name, max(service_version) AS version, count(*) AS spans, \
             sum(CASE WHEN status_code = 'error' THEN 1 ELSE 0 END) AS errors, \
             approx_percentile_cont(duration_ns, 0.95) / 1e6 AS p95_ms, \
             max(end_time) AS last_seen \
             FROM spans WHERE start_time >= {} AND kind = 'server' GROUP BY service_name ORDER BY spans DESC",
            ts(hour_ago)
        ),
    )
    .await?;

    let mut b = String::new();
    b.push_str("<h1>Overview</h1>");
    let ingest = app.ingestor.stats().snapshot();
    let (accepted, rejected) = app.ingest_history.rates();
    let current = accepted.last().map_or(0.0, |p| p.1);
    let open_incidents = incidents.iter().filter(|i| i.state == IncidentState::Open).count();
    let _ = write!(
        b,
        "<div class=\"cards\">\
         <div class=\"card\"><div class=\"big\">{current:.0}</div><div class=\"label\">spans/s received now</div></div>\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">spans stored since start</div></div>\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">services in the last hour</div></div>\
         <div class=\"card\"><div class=\"big\"><a href=\"/findings?state=open\">{}</a></div><div class=\"label\">open findings</div></div>\
         <div class=\"card\"><div class=\"big\"><a href=\"/tickets\">{}</a></div><div class=\"label\">tickets waiting for review</div></div>\
         <div class=\"card\"><div class=\"big\"><a href=\"/incidents\">{open_incidents}</a></div><div class=\"label\">open incidents</div></div>\
         </div>",
        ingest.spans_accepted,
        services.len(),
        findings.len(),
        pending.len(),
    );

    b.push_str("<div class=\"grid2\"><section><h2>Ingest rate</h2>");
    let rejected_any = rejected.iter().any(|p| p.1 > 0.0);
    let mut series = vec![Series { label: "spans/s accepted".into(), points: accepted }];
    if rejected_any {
        series.push(Series { label: "spans/s rejected".into(), points: rejected });
    }
    b.push_str(&chart::time_chart("spans received per second", &series, "", &[], &[]));
    b.push_str("<p class=\"muted\">As received, sampled every 10 s over the last hour.</p></section>");

    b.push_str("<section><h2>Open findings by severity</h2>");
    let severities = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];
    let counts: Vec<f64> =
        severities.iter().map(|s| findings.iter().filter(|f| f.severity == *s).count() as f64).collect();
    let cats: Vec<String> = severities.iter().map(|s| s.as_str().to_owned()).collect();
    // Whole numbers on the axis: its top is a multiple of 4 (4 grid steps).
    let top = (counts.iter().copied().fold(0.0, f64::max) / 4.0).ceil().max(1.0) * 4.0;
    b.push_str(&chart::bars("open findings by severity", &cats, &[("findings".into(), counts)], "", Some(top)));
    b.push_str("</section></div>");

    b.push_str("<h2>Services (server spans, last hour)</h2>");
    if services.is_empty() {
        b.push_str("<p class=\"muted\">No spans in the last hour. Point an OTLP exporter at this server.</p>");
    } else {
        b.push_str(
            "<table><tr><th>service</th><th>version</th><th class=\"num\">spans</th><th class=\"num\">error %</th>\
             <th class=\"num\">p95</th><th>last span</th></tr>",
        );
        for r in &services {
            let spans = num(r, "spans");
            let svc = text(r, "service_name");
            let _ = write!(
                b,
                "<tr><td><a href=\"/findings?service={}\">{}</a></td><td>{}</td><td class=\"num\">{spans:.0}</td>\
                 <td class=\"num\">{:.2}</td><td class=\"num\">{:.1} ms</td><td>{}</td></tr>",
                super::url_encode(svc),
                esc(svc),
                esc(text(r, "version")),
                100.0 * num(r, "errors") / spans.max(1.0),
                num(r, "p95_ms"),
                super::parse_time(text(r, "last_seen")).map_or_else(|| esc(text(r, "last_seen")), ago),
            );
        }
        b.push_str("</table>");
    }

    b.push_str("<div class=\"grid2\"><section><h2>Tickets waiting for review</h2>");
    if pending.is_empty() {
        b.push_str("<p class=\"muted\">Nothing waits at the gate.</p>");
    } else {
        b.push_str("<table>");
        for t in pending.iter().take(10) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/tickets/{}\">{}</a></td><td class=\"muted\">{}</td></tr>",
                badge(&t.priority.to_string().to_lowercase(), &t.priority.to_string()),
                super::url_encode(&t.id),
                esc(&t.title),
                ago(t.created_at)
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section><section><h2>Recent incidents</h2>");
    if incidents.is_empty() {
        b.push_str("<p class=\"muted\">No incidents.</p>");
    } else {
        b.push_str("<table>");
        for i in incidents.iter().take(8) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/incidents/{}\">{}</a></td><td class=\"muted\">{}</td></tr>",
                badge(i.state.as_str(), i.state.as_str()),
                super::url_encode(&i.id),
                esc(&i.title),
                ago(i.created_at)
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section></div>");
    Ok(page(&viewer, "Overview", Nav::Overview, &b))
}
