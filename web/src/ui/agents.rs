//! `/investigations`: ask the investigation agent a question and read its
//! answers, each with the tool results it cites; `/runs/{id}`: how Andon got
//! here, a run of the flight recorder as a timeline of its steps.

use std::fmt::Write;
use std::sync::Arc;

use andon_model::InvestigationState;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::{Nav, UiError, Viewer, ago, badge, esc, page, see_other, sql_href, trace_link, url_encode};
use crate::app::{AppState, blocking};

fn state_badge(s: InvestigationState) -> String {
    badge(s.as_str(), s.as_str())
}

pub async fn list(State(app): State<Arc<AppState>>, viewer: Viewer) -> Result<Response, UiError> {
    let (db, t) = (Arc::clone(&app.investigations), viewer.tenant.clone());
    let list = blocking(move || db.list(&t, 200)).await?;
    let mut b = String::from("<h1>Investigations</h1>");
    if app.llm.is_none() {
        b.push_str(
            "<p class=\"muted\">Investigations need a model: configure <code>[llm]</code> in andon.toml. \
             Every answer is checked against what Andon's own tools returned before it is shown.</p>",
        );
    } else {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/investigations\">{}<label>Question <input name=\"question\" size=\"80\" \
             maxlength=\"2000\" placeholder=\"why is checkout slow for android users since 14:00?\"></label> \
             <button type=\"submit\">Ask</button></form>",
            viewer.csrf_field()
        );
    }
    if !list.is_empty() {
        b.push_str("<table><tr><th>state</th><th>question</th><th>asked</th></tr>");
        for i in &list {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/investigations/{}\">{}</a></td><td>{}</td></tr>",
                state_badge(i.state),
                url_encode(&i.id),
                esc(&i.question),
                ago(i.created_at)
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, "Investigations", Nav::Investigations, &b))
}

#[derive(Debug, Deserialize)]
pub struct AskForm {
    csrf: String,
    question: String,
}

pub async fn ask(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<AskForm>,
) -> Result<Response, UiError> {
    viewer.check_post(&headers, &form.csrf)?;
    let q = form.question.trim().to_owned();
    if q.is_empty() || q.len() > 2000 {
        return Err(UiError(axum::http::StatusCode::BAD_REQUEST, "a question is 1 to 2000 bytes".into()));
    }
    if app.limits.take(viewer.tenant.as_str(), crate::limits::Work::Investigations).is_err() {
        return Err(UiError(axum::http::StatusCode::TOO_MANY_REQUESTS, "too many investigations this minute".into()));
    }
    let inv = crate::investigate::start(&app, viewer.tenant.clone(), q).await?;
    Ok(see_other(&format!("/investigations/{}", url_encode(&inv.id))))
}

pub async fn detail(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let (db, t) = (Arc::clone(&app.investigations), viewer.tenant.clone());
    let inv = blocking(move || db.get(&t, &id)).await?.ok_or_else(|| UiError::not_found("investigation"))?;
    let mut b = String::new();
    if inv.state == InvestigationState::Running {
        // Reloads itself until the answer is in (no script: a refresh).
        b.push_str("<meta http-equiv=\"refresh\" content=\"2\">");
    }
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/investigations\">Investigations</a> / <span class=\"mono\">{}</span> · \
         <a href=\"/api/v1/investigations/{}\">JSON</a> · <a href=\"/runs/{}\">how Andon got here</a></p>\
         <h1>{}</h1><p>{} · {} steps · {} tokens</p>",
        esc(&inv.id),
        url_encode(&inv.id),
        url_encode(&inv.run_id),
        esc(&inv.question),
        state_badge(inv.state),
        inv.steps,
        inv.tokens
    );
    if let Some(a) = &inv.answer {
        let _ = write!(b, "<h2>Answer</h2><p>{}</p>", esc(a));
    }
    if let Some(r) = &inv.reason {
        let _ = write!(b, "<p class=\"muted\">{}</p>", esc(r));
    }
    if !inv.violations.is_empty() {
        b.push_str("<h2>Claims no tool result supported</h2><ul>");
        for v in &inv.violations {
            let _ = write!(b, "<li>“{}”: {}</li>", esc(&v.text), esc(&v.reason));
        }
        b.push_str("</ul>");
    }
    if !inv.citations.is_empty() {
        b.push_str("<h2>What the answer rests on</h2><table><tr><th>kind</th><th>source</th><th>excerpt</th></tr>");
        for c in &inv.citations {
            let source = match c.kind.as_str() {
                "query" => format!("<a href=\"{}\"><code>{}</code></a>", sql_href(&c.reference), esc(&c.reference)),
                "trace" => trace_link(&c.reference),
                "incident" => format!("<a href=\"/incidents/{}\">{}</a>", url_encode(&c.reference), esc(&c.reference)),
                "finding" => format!("<a href=\"/findings/{}\">{}</a>", url_encode(&c.reference), esc(&c.reference)),
                _ => esc(&c.reference),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{source}</td><td class=\"mono\">{}</td></tr>",
                esc(&c.kind),
                esc(&c.excerpt)
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, "Investigation", Nav::Investigations, &b))
}

pub async fn run(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let (db, t) = (Arc::clone(&app.runs), viewer.tenant.clone());
    let run = blocking(move || db.get(Some(&t), &id)).await?.ok_or_else(|| UiError::not_found("run"))?;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/api/v1/runs/{}\">JSON</a> · replay it with <code>andon replay {}</code></p>\
         <h1>How Andon got here</h1><p>{} run <span class=\"mono\">{}</span>: {}</p>",
        url_encode(&run.id),
        esc(&run.id),
        esc(&run.kind),
        esc(&run.id),
        esc(&run.subject)
    );
    b.push_str(
        "<table><tr><th class=\"num\">at</th><th>step</th><th>kind</th><th>name</th><th class=\"num\">took</th>\
         <th>after</th><th>summary</th><th>input · output</th></tr>",
    );
    for s in &run.steps {
        let _ = write!(
            b,
            "<tr><td class=\"num\">+{:.3} s</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{} ms</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{} · {}</td></tr>",
            (s.started_at - run.started_at).num_milliseconds() as f64 / 1e3,
            esc(&s.id),
            esc(&s.kind),
            esc(&s.name),
            (s.ended_at - s.started_at).num_milliseconds(),
            esc(&s.parents.join(", ")),
            esc(&s.summary),
            esc(&s.input_sha256[..12.min(s.input_sha256.len())]),
            esc(&s.output_sha256[..12.min(s.output_sha256.len())]),
        );
    }
    b.push_str("</table>");
    Ok(page(&viewer, "Run", Nav::Investigations, &b))
}
