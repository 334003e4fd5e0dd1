//! `/findings` (a filtered list) and `/findings/{id}`: a finding's numbers,
//! charts drawn from the spans (latency percentiles or error rate over time
//! with deploy markers, step conversion by segment, attempt distributions), its
//! evidence with the SQL to rerun, and its exemplar traces.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use andon_analysis::FindingFilter;
use andon_model::{Finding, FindingKind, FindingState, Trouble};
use andon_store::sql::{OPERATION, lit, segment_column, ts};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::chart::{self, Band, Marker, Series};
use super::{Nav, UiError, Viewer, badge, esc, figure, num, page, query, sql_href, text, time, trace_link, url_encode};
use crate::app::{AppState, blocking, internal};

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    kind: Option<String>,
    service: Option<String>,
    state: Option<String>,
    severity: Option<String>,
}

fn segment_text(f: &Finding) -> String {
    if f.segment.is_empty() {
        return "all traffic".to_owned();
    }
    f.segment.iter().map(|(k, v)| format!("{k}={}", super::cell_text(v))).collect::<Vec<_>>().join(", ")
}

/// A p-value as people read it; a test can underflow to 0.
fn p_value(p: f64) -> String {
    if p < 1e-300 {
        "< 1e-300".to_owned()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn select(name: &str, current: &str, options: &[&str]) -> String {
    let mut o = format!("<label>{name}<select name=\"{name}\"><option value=\"\">any</option>");
    for v in options {
        let sel = if *v == current { " selected" } else { "" };
        let _ = write!(o, "<option value=\"{v}\"{sel}>{v}</option>");
    }
    o.push_str("</select></label>");
    o
}

pub async fn list(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Query(p): Query<ListParams>,
) -> Result<Response, UiError> {
    let kind = p.kind.as_deref().filter(|k| !k.is_empty());
    let state = p.state.as_deref().filter(|k| !k.is_empty());
    let severity = p.severity.as_deref().filter(|k| !k.is_empty());
    let service = p.service.clone().filter(|s| !s.is_empty());
    let filter = FindingFilter {
        kind: kind.map(str::parse::<FindingKind>).transpose().map_err(|e| UiError(StatusCode::BAD_REQUEST, e))?,
        service: service.clone(),
        state: match state {
            None => None,
            Some("open") => Some(FindingState::Open),
            Some("resolved") => Some(FindingState::Resolved),
            Some(other) => return Err(UiError(StatusCode::BAD_REQUEST, format!("no such state {other:?}"))),
        },
        ..Default::default()
    };
    let (db, t) = (Arc::clone(&app.findings), viewer.tenant.clone());
    let mut findings = blocking(move || db.list(&t, &filter).map_err(internal)).await?;
    if let Some(s) = severity {
        findings.retain(|f| f.severity.as_str() == s);
    }

    let mut b = String::from("<h1>Findings</h1><form class=\"filters\" method=\"get\" action=\"/findings\">");
    b.push_str(&select(
        "kind",
        kind.unwrap_or(""),
        &["latency_regression", "error_rate_regression", "retry", "drop_off", "silent_recovery"],
    ));
    let _ = write!(
        b,
        "<label>service<input name=\"service\" value=\"{}\" size=\"12\"></label>",
        esc(service.as_deref().unwrap_or(""))
    );
    b.push_str(&select("severity", severity.unwrap_or(""), &["critical", "high", "medium", "low"]));
    b.push_str(&select("state", state.unwrap_or(""), &["open", "resolved"]));
    b.push_str("<button type=\"submit\">Filter</button></form>");
    if findings.is_empty() {
        b.push_str("<p class=\"muted\">No findings match.</p>");
    } else {
        let _ = write!(b, "<p class=\"muted\">{} findings, most recent first.</p>", findings.len());
        b.push_str(
            "<table><tr><th>severity</th><th>finding</th><th>kind</th><th>where</th><th>segment</th>\
             <th class=\"num\">sessions</th><th class=\"num\">p-value</th><th>state</th><th>last seen</th></tr>",
        );
        for f in &findings {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/findings/{}\">{}</a></td><td>{}</td><td>{} <code>{}</code></td>\
                 <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                badge(f.severity.as_str(), f.severity.as_str()),
                url_encode(&f.id),
                esc(&f.summary),
                f.kind.as_str(),
                esc(&f.service),
                esc(&f.operation),
                esc(&segment_text(f)),
                f.affected.sessions,
                p_value(f.p_value),
                badge(f.state.as_str(), f.state.as_str()),
                time(f.last_seen),
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, "Findings", Nav::Findings, &b))
}

/// The spans of the finding's operation on its service, in SQL.
fn subject_filter(f: &Finding) -> String {
    format!("s.service_name = {} AND ({OPERATION}) = {}", lit(&f.service), lit(&f.operation))
}

/// SQL conditions for a finding's segment (each segment attribute has a column
/// of its own). A session's segment (a
/// browser's `browser.mobile`, say) is on the session's client spans, not on the
/// server spans being charted, so a span matches when it carries the value or
/// belongs to a session with a span that does.
fn segment_filter(f: &Finding, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let mut o = String::new();
    for (k, v) in &f.segment {
        let Some(equals) = segment_column(k).ok().and_then(|c| c.equals(v)) else { continue };
        let _ = write!(
            o,
            " AND ({equals} OR s.session_id IN (SELECT DISTINCT s.session_id FROM spans s \
             WHERE {equals} AND s.session_id IS NOT NULL AND s.start_time >= {} AND s.start_time < {}))",
            ts(from),
            ts(to)
        );
    }
    o
}

/// About 60 buckets over the range, in whole seconds.
fn bucket_secs(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    ((to - from).num_seconds() / 60).max(10)
}

fn series_sql(f: &Finding, from: DateTime<Utc>, to: DateTime<Utc>, segment: bool) -> String {
    let secs = bucket_secs(from, to);
    format!(
        "SELECT date_bin(INTERVAL '{secs} seconds', s.start_time, {origin}) AS t, count(*) AS requests, \
         approx_percentile_cont(s.duration_ns, 0.5) / 1e6 AS p50_ms, \
         approx_percentile_cont(s.duration_ns, 0.95) / 1e6 AS p95_ms, \
         approx_percentile_cont(s.duration_ns, 0.99) / 1e6 AS p99_ms, \
         avg(CASE WHEN s.status_code = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate \
         FROM spans s WHERE s.start_time >= {from_} AND s.start_time < {to_} AND {subject}{seg} \
         GROUP BY 1 ORDER BY 1",
        origin = ts(from),
        from_ = ts(from),
        to_ = ts(to),
        subject = subject_filter(f),
        seg = if segment { segment_filter(f, from, to) } else { String::new() },
    )
}

/// Deploys over the chart's range of the finding's service, of the service
/// where its trouble starts, and of the service its change belongs to.
async fn deploy_markers(
    app: &AppState,
    viewer: &Viewer,
    f: &Finding,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Marker>, UiError> {
    let mut services: BTreeSet<String> = BTreeSet::from([f.service.clone()]);
    services.extend(f.evidence.cause.as_ref().map(|c| c.service.clone()));
    services.extend(f.change.as_ref().map(|c| c.service.clone()));
    let (changes, t) = (Arc::clone(&app.changes), viewer.tenant.clone());
    let list = blocking(move || {
        let mut all = Vec::new();
        for service in services {
            let filter = andon_rca::ChangeFilter { service: Some(service), since: Some(from) };
            all.extend(changes.list(Some(&t), &filter)?);
        }
        Ok::<_, andon_rca::RcaError>(all)
    })
    .await?;
    let mut markers: Vec<Marker> = list
        .into_iter()
        .map(|(_, c)| c.change)
        .filter(|c| c.deployed_at >= from && c.deployed_at <= to)
        .map(|c| Marker { at: c.deployed_at, label: format!("deploy {} {}", c.service, c.version), class: "marker" })
        .collect();
    markers.sort_by_key(|m| m.at);
    if let Some(onset) = f.evidence.onset.filter(|o| *o >= from && *o <= to) {
        markers.push(Marker { at: onset, label: "onset".into(), class: "onset" });
    }
    Ok(markers)
}

async fn time_charts(app: &AppState, viewer: &Viewer, f: &Finding) -> Result<String, UiError> {
    let (from, to) = (f.baseline_window.start.min(f.window.start), f.window.end.max(f.baseline_window.end));
    let sql = series_sql(f, from, to, true);
    let rows = query(app, &viewer.tenant, &sql).await?;
    let markers = deploy_markers(app, viewer, f, from, to).await?;
    let bands = vec![
        Band { start: f.baseline_window.start, end: f.baseline_window.end, label: "baseline".into() },
        Band { start: f.window.start, end: f.window.end, label: "current".into() },
    ];
    let point = |k: &str| -> Vec<(DateTime<Utc>, f64)> {
        rows.iter().filter_map(|r| Some((super::parse_time(text(r, "t"))?, num(r, k)))).collect()
    };
    let mut o = String::new();
    let seg = segment_text(f);
    match f.trouble {
        Trouble::Latency => {
            o.push_str(&format!("<h2>Latency of {} over time ({})</h2>", esc(&f.operation), esc(&seg)));
            let series = vec![
                Series { label: "p50".into(), points: point("p50_ms") },
                Series { label: "p95".into(), points: point("p95_ms") },
                Series { label: "p99".into(), points: point("p99_ms") },
            ];
            o.push_str(&chart::time_chart("latency percentiles", &series, "ms", &markers, &bands));
        }
        _ => {
            o.push_str(&format!("<h2>Error rate of {} over time ({})</h2>", esc(&f.operation), esc(&seg)));
            let series = vec![Series { label: "share of calls failing".into(), points: point("error_rate") }];
            o.push_str(&chart::time_chart("error rate", &series, "", &markers, &bands));
        }
    }
    let _ = write!(
        o,
        "<p class=\"muted\">Buckets of {} s. <a href=\"{}\">The query behind this chart</a>.</p>",
        bucket_secs(from, to),
        esc(&sql_href(&sql))
    );
    Ok(o)
}

/// Attempts per logical call (1 + `http.request.resend_count`), baseline against
/// current.
async fn attempts_chart(app: &AppState, viewer: &Viewer, f: &Finding) -> Result<String, UiError> {
    let sql = format!(
        "SELECT CASE WHEN s.start_time >= {cur} THEN 'current' ELSE 'baseline' END AS side, \
         least(coalesce(s.http_request_resend_count, 0), 4) AS resends, count(*) AS calls \
         FROM spans s WHERE ((s.start_time >= {bs} AND s.start_time < {be}) OR (s.start_time >= {cur} AND s.start_time < {ce})) \
         AND s.kind IN ('client', 'server') AND {subject}{seg} GROUP BY 1, 2 ORDER BY 1, 2",
        cur = ts(f.window.start),
        ce = ts(f.window.end),
        bs = ts(f.baseline_window.start),
        be = ts(f.baseline_window.end),
        subject = subject_filter(f),
        seg = segment_filter(f, f.baseline_window.start, f.window.end),
    );
    let rows = query(app, &viewer.tenant, &sql).await?;
    let cats: Vec<String> =
        ["first try", "1st retry", "2nd retry", "3rd retry", "4th or later"].map(String::from).to_vec();
    let mut series = Vec::new();
    for side in ["baseline", "current"] {
        let total: f64 = rows.iter().filter(|r| text(r, "side") == side).map(|r| num(r, "calls")).sum();
        let shares = (0..5)
            .map(|k| {
                rows.iter()
                    .filter(|r| text(r, "side") == side && num(r, "resends") as i64 == k)
                    .map(|r| num(r, "calls"))
                    .sum::<f64>()
                    / total.max(1.0)
            })
            .collect();
        series.push((format!("{side} ({total:.0} spans)"), shares));
    }
    let mut o = format!("<h2>Attempts of {} ({})</h2>", esc(&f.operation), esc(&segment_text(f)));
    o.push_str(&chart::bars("share of spans by attempt", &cats, &series, "", Some(1.0)));
    let _ = write!(o, "<p class=\"muted\"><a href=\"{}\">The query behind this chart</a>.</p>", esc(&sql_href(&sql)));
    Ok(o)
}

/// The session dimensions the step conversion is broken down by, as they are
/// read from a session's spans.
const DIMENSIONS: &[(&str, &str)] = &[
    ("browser.mobile", "max(CAST(browser_mobile AS VARCHAR))"),
    ("os.type", "max(os_type)"),
    ("cloud.region", "max(cloud_region)"),
];

/// The share of sessions that went on from the finding's step to the next, for
/// each value of each session dimension, baseline against current.
async fn funnel_chart(app: &AppState, viewer: &Viewer, f: &Finding) -> Result<String, UiError> {
    let Some(next) = f.evidence.details.get("next_step").and_then(Value::as_str) else {
        return Ok(String::new());
    };
    let (bs, cs, ce) = (ts(f.baseline_window.start), ts(f.window.start), ts(f.window.end));
    let dims: String = DIMENSIONS.iter().enumerate().map(|(i, (_, e))| format!(", {e} AS d{i}")).collect();
    let dim_cols: String = (0..DIMENSIONS.len()).map(|i| format!(", seg.d{i}")).collect();
    let sql = format!(
        "WITH seg AS (SELECT session_id{dims} FROM spans WHERE start_time >= {bs} AND start_time < {ce} \
         AND session_id IS NOT NULL GROUP BY session_id), \
         a AS (SELECT s.session_id, min(s.start_time) AS t FROM spans s WHERE s.kind = 'server' \
         AND s.service_name = {svc} AND ({OPERATION}) = {step} AND s.session_id IS NOT NULL \
         AND ((s.start_time >= {bs} AND s.start_time < {be}) OR (s.start_time >= {cs} AND s.start_time < {ce})) \
         GROUP BY s.session_id), \
         b AS (SELECT s.session_id, max(s.start_time) AS t FROM spans s WHERE s.kind = 'server' \
         AND ({OPERATION}) = {next} AND s.session_id IS NOT NULL AND s.start_time >= {bs} AND s.start_time < {ce} \
         GROUP BY s.session_id) \
         SELECT CASE WHEN a.t >= {cs} THEN 'current' ELSE 'baseline' END AS side{dim_cols}, count(*) AS reached, \
         sum(CASE WHEN b.t >= a.t THEN 1 ELSE 0 END) AS continued \
         FROM a LEFT JOIN b ON a.session_id = b.session_id LEFT JOIN seg ON a.session_id = seg.session_id \
         GROUP BY 1{dim_groups} ORDER BY 1",
        be = ts(f.baseline_window.end),
        svc = lit(&f.service),
        step = lit(&f.operation),
        next = lit(next),
        dim_groups = (0..DIMENSIONS.len()).map(|i| format!(", {}", i + 2)).collect::<String>(),
    );
    let rows = query(app, &viewer.tenant, &sql).await?;
    // (dimension=value) -> [baseline, current] of (reached, continued)
    let mut by_segment: BTreeMap<String, [(f64, f64); 2]> = BTreeMap::new();
    for r in &rows {
        let side = usize::from(text(r, "side") == "current");
        for (i, (name, _)) in DIMENSIONS.iter().enumerate() {
            let v = r.get(&format!("d{i}")).map(super::cell_text).unwrap_or_default();
            if v.is_empty() {
                continue;
            }
            let e = by_segment.entry(format!("{name}={v}")).or_default();
            e[side].0 += num(r, "reached");
            e[side].1 += num(r, "continued");
        }
    }
    // Segments too small to say anything are left out.
    by_segment.retain(|_, v| v[0].0 >= 20.0 && v[1].0 >= 5.0);
    let cats: Vec<String> = by_segment.keys().cloned().collect();
    let conv = |side: usize| -> Vec<f64> { by_segment.values().map(|v| v[side].1 / v[side].0.max(1.0)).collect() };
    let series = vec![("baseline".to_owned(), conv(0)), ("current".to_owned(), conv(1))];
    let mut o = format!("<h2>Conversion from {} to {} by segment</h2>", esc(&f.operation), esc(next));
    o.push_str(&chart::bars("share of sessions going on to the next step", &cats, &series, "", Some(1.0)));
    let _ = write!(
        o,
        "<p class=\"muted\">Sessions that reached the step, by the session's segment; those still active at the \
         window's end count as not going on. <a href=\"{}\">The query behind this chart</a>.</p>",
        esc(&sql_href(&sql))
    );
    Ok(o)
}

fn numbers_table(f: &Finding) -> String {
    let keys: BTreeSet<&String> = f.baseline.keys().chain(f.current.keys()).collect();
    let mut o =
        String::from("<table><tr><th>measure</th><th class=\"num\">baseline</th><th class=\"num\">current</th></tr>");
    for k in keys {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(k),
            esc(&f.baseline.get(k).map(figure).unwrap_or_default()),
            esc(&f.current.get(k).map(figure).unwrap_or_default()),
        );
    }
    o.push_str("</table>");
    o
}

pub async fn detail(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let (db, t, fid) = (Arc::clone(&app.findings), viewer.tenant.clone(), id.clone());
    let f = blocking(move || db.get(&t, &fid).map_err(internal)).await?.ok_or_else(|| UiError::not_found("finding"))?;

    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/findings\">Findings</a> / <span class=\"mono\">{}</span></p>\
         <h1>{} {}</h1>\
         <p>{} on <b>{}</b> <code>{}</code>, {} · {} · first seen {} · last seen {}</p>",
        esc(&f.id),
        badge(f.severity.as_str(), f.severity.as_str()),
        esc(&f.summary),
        f.kind.as_str(),
        esc(&f.service),
        esc(&f.operation),
        esc(&segment_text(&f)),
        badge(f.state.as_str(), f.state.as_str()),
        time(f.first_seen),
        time(f.last_seen),
    );
    let _ = write!(
        b,
        "<div class=\"cards\">\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">sessions affected</div></div>\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">requests affected</div></div>\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">p-value ({})</div></div>\
         <div class=\"card\"><div class=\"big\">{}</div><div class=\"label\">effect{}</div></div>\
         <div class=\"card\"><div class=\"big\">{:.0}</div><div class=\"label\">impact</div></div>\
         </div>",
        f.affected.sessions,
        f.affected.requests,
        p_value(f.p_value),
        esc(&f.evidence.test),
        esc(&figure(&Value::from(f.effect))),
        f.evidence.effect_ci.map_or(String::new(), |[lo, hi]| format!(" (95% CI {lo:.3} to {hi:.3})")),
        f.impact,
    );
    let _ = write!(
        b,
        "<p class=\"muted\">Current window {} to {}; baseline {} to {}.</p>",
        time(f.window.start),
        time(f.window.end),
        time(f.baseline_window.start),
        time(f.baseline_window.end)
    );

    match f.kind {
        FindingKind::Retry => b.push_str(&attempts_chart(&app, &viewer, &f).await?),
        FindingKind::DropOff => {
            b.push_str(&funnel_chart(&app, &viewer, &f).await?);
            b.push_str(&time_charts(&app, &viewer, &f).await?);
        }
        _ => b.push_str(&time_charts(&app, &viewer, &f).await?),
    }

    b.push_str("<div class=\"grid2\"><section><h2>Baseline against current</h2>");
    b.push_str(&numbers_table(&f));
    b.push_str("</section><section><h2>Cause and change</h2>");
    match &f.evidence.cause {
        Some(c) => {
            let _ =
                write!(b, "<p>Trouble starts at <b>{}</b> <code>{}</code>.</p>", esc(&c.service), esc(&c.operation));
        }
        None => b.push_str("<p>Trouble starts at this operation itself.</p>"),
    }
    match &f.change {
        Some(c) => {
            let _ = write!(
                b,
                "<p>Attributed to <b>{} {}</b>{}{}{}.</p>",
                esc(&c.service),
                esc(&c.version),
                c.commit.as_deref().map_or(String::new(), |s| format!(", commit <code>{}</code>", esc(s))),
                c.pr.map_or(String::new(), |p| format!(", PR #{p}")),
                c.first_seen.map_or(String::new(), |t| format!(", first seen {}", time(t))),
            );
        }
        None => b.push_str("<p class=\"muted\">No change is attributed.</p>"),
    }
    if !f.evidence.linked.is_empty() {
        b.push_str("<h3>Symptoms linked to it</h3><ul>");
        for l in &f.evidence.linked {
            let _ = write!(b, "<li>{} <code>{}</code>: {}</li>", esc(&l.service), esc(&l.operation), esc(&l.summary));
        }
        b.push_str("</ul>");
    }
    b.push_str("</section></div>");

    b.push_str("<h2>Evidence</h2>");
    let _ = write!(
        b,
        "<p>The query that reproduces the numbers: <a href=\"{}\"><button type=\"button\">Run this query</button></a></p>\
         <details><summary>Show the query ({} lines)</summary><pre>{}</pre></details>",
        esc(&sql_href(&f.evidence.query)),
        f.evidence.query.lines().count(),
        esc(&f.evidence.query)
    );
    if !f.evidence.details.is_empty() {
        b.push_str("<table class=\"kv\">");
        for (k, v) in &f.evidence.details {
            let shown = match v {
                Value::Object(_) | Value::Array(_) => {
                    format!("<code>{}</code>", esc(&serde_json::to_string(v).unwrap_or_default()))
                }
                other => esc(&figure(other)),
            };
            let _ = write!(b, "<tr><td>{}</td><td>{shown}</td></tr>", esc(k));
        }
        b.push_str("</table>");
    }
    b.push_str("<h2>Example traces</h2>");
    if f.evidence.exemplar_trace_ids.is_empty() {
        b.push_str("<p class=\"muted\">None recorded.</p>");
    } else {
        b.push_str("<ul>");
        for id in &f.evidence.exemplar_trace_ids {
            let _ = write!(b, "<li>{}</li>", trace_link(id));
        }
        b.push_str("</ul>");
    }
    Ok(page(&viewer, &f.summary, Nav::Findings, &b))
}
