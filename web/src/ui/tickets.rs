//! `/tickets`: the human gate. The queue of drafts, each draft's rendered body,
//! approve and reject forms that take the reviewer's name and a note, and the
//! ticket's audit trail and deliveries.

use std::fmt::Write;
use std::sync::Arc;

use andon_model::{Priority, TicketState};
use andon_ticketing::TicketError;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
use serde::Deserialize;

use super::{Nav, UiError, Viewer, ago, badge, esc, page, see_other, time, url_encode};
use crate::app::{AppState, blocking};

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
}

/// A link target that cannot run anything: http(s), mailto, or within the page.
fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("https://")
        || lower.starts_with("http://")
        || lower.starts_with("mailto:")
        || lower.starts_with('#')
}

/// A ticket body (Markdown) as HTML. Raw HTML in it shows as text, images
/// become links, and links that are not http(s) or mailto go nowhere.
pub fn render_markdown(md: &str) -> String {
    let events = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let dest_url = if safe_url(&dest_url) { dest_url } else { CowStr::Borrowed("#") };
            Event::Start(Tag::Link { link_type, dest_url, title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            let dest_url = if safe_url(&dest_url) { dest_url } else { CowStr::Borrowed("#") };
            Event::Start(Tag::Link { link_type, dest_url, title, id })
        }
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

pub async fn list(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Query(p): Query<ListParams>,
) -> Result<Response, UiError> {
    let state = match p.state.as_deref() {
        None => Some(TicketState::Pending),
        Some("") | Some("all") => None,
        Some(s) => Some(s.parse::<TicketState>().map_err(|e| UiError(StatusCode::BAD_REQUEST, e))?),
    };
    let (tickets, t) = (Arc::clone(&app.tickets), viewer.tenant.clone());
    let list = blocking(move || tickets.db().list(&t, state)).await?;
    let mut b = String::from("<h1>Tickets</h1><p>");
    let current = state.map_or("all", TicketState::as_str);
    for s in ["pending", "approved", "posted", "rejected", "failed", "resolved", "all"] {
        if s == current {
            let _ = write!(b, "<b>{s}</b> · ");
        } else {
            let _ = write!(b, "<a href=\"/tickets?state={s}\">{s}</a> · ");
        }
    }
    b.truncate(b.len() - " · ".len());
    b.push_str("</p>");
    if state == Some(TicketState::Pending) {
        b.push_str(
            "<p class=\"muted\">Drafts wait here until a person approves them; only then are they posted. \
             Highest priority first.</p>",
        );
    }
    let mut list = list;
    list.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.updated_at.cmp(&a.updated_at)));
    if list.is_empty() {
        let _ = write!(b, "<p class=\"muted\">No {current} tickets.</p>");
    } else {
        b.push_str(
            "<table><tr><th>priority</th><th>title</th><th>state</th><th>severity</th><th class=\"num\">seen</th>\
             <th>labels</th><th>updated</th></tr>",
        );
        for t in &list {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/tickets/{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                badge("", &t.priority.to_string()),
                url_encode(&t.id),
                esc(&t.title),
                badge(t.state.as_str(), t.state.as_str()),
                badge(t.severity.as_str(), t.severity.as_str()),
                t.occurrences,
                t.labels.iter().map(|l| format!("<code>{}</code>", esc(l))).collect::<Vec<_>>().join(" "),
                ago(t.updated_at),
            );
        }
        b.push_str("</table>");
        if state == Some(TicketState::Pending) {
            b.push_str("<h2>The drafts</h2>");
            for t in &list {
                let _ = write!(
                    b,
                    "<details class=\"span\"><summary>{} <b>{}</b> · <a href=\"/tickets/{}\">review</a></summary>\
                     <div class=\"body\">{}</div></details>",
                    badge("", &t.priority.to_string()),
                    esc(&t.title),
                    url_encode(&t.id),
                    render_markdown(andon_ticketing::db::strip_marker(&t.body)),
                );
            }
        }
    }
    Ok(page(&viewer, "Tickets", Nav::Tickets, &b))
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailParams {
    done: Option<String>,
}

pub async fn detail(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(p): Query<DetailParams>,
) -> Result<Response, UiError> {
    let (tickets, t) = (Arc::clone(&app.tickets), viewer.tenant.clone());
    let found = blocking(move || -> Result<_, TicketError> {
        let Some(ticket) = tickets.db().get(&t, &id)? else { return Ok(None) };
        let audit = tickets.db().audit(&ticket.id)?;
        let deliveries = tickets.db().deliveries(&ticket.id)?;
        Ok(Some((ticket, audit, deliveries)))
    })
    .await?;
    let (t, audit, deliveries) = found.ok_or_else(|| UiError::not_found("ticket"))?;

    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/tickets\">Tickets</a> / <span class=\"mono\">{}</span></p><h1>{}</h1>\
         <p>{} {} {} · seen {} · drafted {}</p>",
        esc(&t.id),
        esc(&t.title),
        badge(t.state.as_str(), t.state.as_str()),
        badge("", &t.priority.to_string()),
        badge(t.severity.as_str(), t.severity.as_str()),
        if t.occurrences == 1 { "once".to_owned() } else { format!("{} times", t.occurrences) },
        time(t.created_at),
    );
    match p.done.as_deref() {
        Some("approved") => b.push_str("<p class=\"notice\">Approved. The outbox posts it to the ticket sink.</p>"),
        Some("rejected") => b.push_str("<p class=\"notice\">Rejected. Its fingerprint stays quiet.</p>"),
        _ => {}
    }
    if let Some(ext) = &t.external {
        let _ = write!(b, "<p>Posted to {}: ", esc(&ext.system));
        if ext.url.starts_with("https://") || ext.url.starts_with("http://") {
            let _ = write!(b, "<a href=\"{u}\">{u}</a>", u = esc(&ext.url));
        } else {
            let _ = write!(b, "<code>{}</code>", esc(&ext.url));
        }
        b.push_str("</p>");
    }
    let links: Vec<String> = t
        .finding_ids
        .iter()
        .map(|f| format!("<a class=\"mono\" href=\"/findings/{}\">{}</a>", url_encode(f), esc(f)))
        .chain(
            t.incident_id
                .iter()
                .map(|i| format!("incident <a class=\"mono\" href=\"/incidents/{}\">{}</a>", url_encode(i), esc(i))),
        )
        .collect();
    if !links.is_empty() {
        let run = t
            .run_id
            .as_ref()
            .map_or(String::new(), |r| format!(" · <a href=\"/runs/{}\">how Andon got here</a>", url_encode(r)));
        let _ = write!(b, "<p>From {}{run}</p>", links.join(", "));
    }
    if let Some(o) = &t.opening {
        b.push_str(&opening_note(o));
    }
    if t.state == TicketState::Pending {
        let priorities = ["P0", "P1", "P2", "P3"];
        let mut options = String::new();
        for pr in priorities {
            let sel = if pr == t.priority.to_string() { " selected" } else { "" };
            let _ = write!(options, "<option{sel}>{pr}</option>");
        }
        // With auth on, the reviewer is whoever logged in.
        let reviewer = match &viewer.caller {
            Some(p) => format!("<p class=\"muted\">Deciding as <b>{}</b>.</p>", esc(&p.name)),
            None => {
                "<label>Reviewer <input name=\"reviewer\" required maxlength=\"100\" autocomplete=\"name\"></label>"
                    .to_owned()
            }
        };
        let _ = write!(
            b,
            "<div class=\"decide\">\
             <form method=\"post\" action=\"/tickets/{id}/approve\" id=\"approve\">{csrf}\
             <h3>Approve and post</h3>\
             {reviewer}\
             <label>Priority <select name=\"priority\">{options}</select></label>\
             <label>Note <textarea name=\"note\" rows=\"2\" maxlength=\"4096\"></textarea></label>\
             <button class=\"primary\" type=\"submit\">Approve</button></form>\
             <form method=\"post\" action=\"/tickets/{id}/reject\" id=\"reject\">{csrf}\
             <h3>Reject</h3>\
             {reviewer}\
             <label>Reason <textarea name=\"reason\" rows=\"2\" required maxlength=\"4096\"></textarea></label>\
             <button class=\"danger\" type=\"submit\">Reject</button></form></div>",
            id = url_encode(&t.id),
            csrf = viewer.csrf_field(),
        );
    } else if let Some(r) = &t.reviewer {
        let _ = write!(
            b,
            "<p>Decided by <b>{}</b>{}.</p>",
            esc(r),
            t.note.as_deref().map_or(String::new(), |n| format!(": “{}”", esc(n)))
        );
    }
    let labels: Vec<String> = t.labels.iter().map(|l| format!("<code>{}</code>", esc(l))).collect();
    let _ = write!(b, "<p>Labels: {}</p>", labels.join(" "));
    b.push_str("<h2>The ticket as it will be posted</h2><div class=\"body\">");
    b.push_str(&render_markdown(andon_ticketing::db::strip_marker(&t.body)));
    b.push_str("</div>");

    b.push_str("<h2>Audit trail</h2><ol class=\"timeline\">");
    for a in &audit {
        let _ = write!(
            b,
            "<li><b>{}</b> by {} <span class=\"muted\">{}</span>{}</li>",
            esc(&a.action),
            esc(&a.actor),
            time(a.at),
            if a.detail.is_empty() { String::new() } else { format!("<br>{}", esc(&a.detail)) }
        );
    }
    b.push_str("</ol>");
    if !deliveries.is_empty() {
        b.push_str(
            "<h2>Deliveries</h2><table><tr><th>action</th><th>state</th><th class=\"num\">attempts</th>\
             <th>next attempt</th><th>last error</th></tr>",
        );
        for d in &deliveries {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.action),
                esc(&d.state),
                d.attempts,
                time(d.next_attempt_at),
                esc(d.last_error.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table>");
    }
    Ok(page(&viewer, &t.title, Nav::Tickets, &b))
}

#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    csrf: String,
    #[serde(default)]
    reviewer: String,
    note: Option<String>,
    reason: Option<String>,
    priority: Option<String>,
}

pub async fn approve(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, UiError> {
    viewer.check_post(&headers, &form.csrf)?;
    let note = form.note.filter(|n| !n.trim().is_empty());
    // With auth on, the reviewer is who logged in, not what the form says.
    let reviewer = viewer.caller.as_ref().map_or(form.reviewer, |p| p.name.clone());
    let priority = form
        .priority
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<Priority>())
        .transpose()
        .map_err(|e| UiError(StatusCode::BAD_REQUEST, e))?;
    let (tickets, t, tid) = (Arc::clone(&app.tickets), viewer.tenant.clone(), id.clone());
    blocking(move || tickets.approve(&t, &tid, &reviewer, note.as_deref(), priority)).await?;
    Ok(see_other(&format!("/tickets/{}?done=approved", url_encode(&id))))
}

pub async fn reject(
    State(app): State<Arc<AppState>>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, UiError> {
    viewer.check_post(&headers, &form.csrf)?;
    // The gate refuses an empty reason and a bad reviewer name itself.
    let reason = form.reason.or(form.note).unwrap_or_default();
    let reviewer = viewer.caller.as_ref().map_or(form.reviewer, |p| p.name.clone());
    let (tickets, t, tid) = (Arc::clone(&app.tickets), viewer.tenant.clone(), id.clone());
    blocking(move || tickets.reject(&t, &tid, &reviewer, &reason)).await?;
    Ok(see_other(&format!("/tickets/{}?done=rejected", url_encode(&id))))
}

/// Who wrote the ticket's opening paragraph, and what the validator said.
fn opening_note(o: &andon_model::TicketOpening) -> String {
    let v = o.narrative_validation.as_ref();
    match o.narrative_source {
        andon_model::NarrativeSource::Llm => format!(
            "<p class=\"muted\">A model wrote the opening paragraph; every number, name and cause in it was \
             checked against the finding's evidence{}.</p>",
            v.filter(|v| v.attempts > 0).map_or(String::new(), |v| format!(" (accepted after {} drafts)", v.attempts))
        ),
        andon_model::NarrativeSource::Template => {
            let mut out = String::from("<p class=\"muted\">The opening paragraph is the detector's summary");
            match v {
                Some(v) if !v.violations.is_empty() => {
                    let _ = write!(out, ": the model's last draft claimed what the evidence does not support.</p><ul>");
                    for x in &v.violations {
                        let _ = write!(out, "<li>“{}”: {}</li>", esc(&x.text), esc(&x.reason));
                    }
                    out.push_str("</ul>");
                }
                Some(v) => {
                    let why = v.error.as_deref().unwrap_or("no model answered");
                    let _ = write!(out, ": {}.</p>", esc(why));
                }
                None => out.push_str(".</p>"),
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render_markdown;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("ANDON_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    }

    fn unescape(html: &str) -> String {
        html.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a span or a person wrote, escaped as prose, renders as
        /// one paragraph of exactly that text: no tag, link, list or heading.
        #[test]
        fn escaped_prose_renders_as_itself(s in "[ -~]{0,80}") {
            let s = s.trim();
            let html = render_markdown(&andon_model::markdown::text(s));
            let inner = html.trim_end().strip_prefix("<p>").and_then(|h| h.strip_suffix("</p>")).unwrap_or(&html);
            prop_assert!(s.is_empty() || !inner.contains('<'), "{s:?} -> {html:?}");
            prop_assert_eq!(unescape(inner).replace('\u{2060}', ""), s);
        }

        /// A code span or a fenced block holds anything, and nothing in it runs.
        #[test]
        fn code_holds_anything(s in "\\PC{0,80}") {
            for md in [andon_model::markdown::code(&s), andon_model::markdown::fenced("", &s)] {
                let html = render_markdown(&md);
                let tags: Vec<&str> = html.split('<').skip(1).map(|t| t.split(['>', ' ']).next().unwrap_or("")).collect();
                prop_assert!(tags.iter().all(|t| ["p", "/p", "code", "/code", "pre", "/pre"].contains(t)), "{s:?} -> {html:?}");
            }
        }
    }

    #[test]
    fn raw_html_in_a_body_shows_as_text() {
        let html = render_markdown("hello <script>alert(1)</script> and <img src=x onerror=alert(1)>");
        assert!(!html.contains("<script") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn links_that_could_run_code_go_nowhere() {
        let html = render_markdown("[click](javascript:alert(1)) and [ok](https://example.com) ![i](https://x/y.png)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.com\""), "{html}");
        assert!(!html.contains("<img"), "{html}");
    }
}
