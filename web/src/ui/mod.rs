//! The web UI on the API port: server-rendered HTML with SVG charts drawn here,
//! and no JavaScript at all. Pages read the same stores the REST API does.
//!
//! Safety rules every page follows:
//! - every string that came from spans, findings, tickets or a person goes
//!   through [`esc`] (text and attribute values alike);
//! - the content security policy allows no script, and styles only from
//!   `/ui/style.css`, so an escaping slip still cannot run code;
//! - every state-changing form carries a CSRF token that must match the
//!   `andon_csrf` cookie (`SameSite=Strict`), and a cross-origin `Origin` is
//!   refused.

mod agents;
mod chart;
mod findings;
mod incidents;
mod login;
mod overview;
mod sql;
mod tickets;
pub(crate) mod traces;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use andon_model::Tenant;
use andon_store::QueryOutput;
use axum::Router;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::AppState;

pub use andon_model::html::esc;

const STYLE: &str = include_str!("style.css");

/// No script at all; styles only from our stylesheet; forms post only here.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(overview::show))
        .route("/findings", get(findings::list))
        .route("/findings/{id}", get(findings::detail))
        .route("/tickets", get(tickets::list))
        .route("/tickets/{id}", get(tickets::detail))
        .route("/tickets/{id}/approve", post(tickets::approve))
        .route("/tickets/{id}/reject", post(tickets::reject))
        .route("/incidents", get(incidents::list))
        .route("/incidents/{id}", get(incidents::detail))
        .route("/investigations", get(agents::list).post(agents::ask))
        .route("/investigations/{id}", get(agents::detail))
        .route("/runs/{id}", get(agents::run))
        .route("/traces", get(traces::lookup))
        .route("/traces/{id}", get(traces::page_of))
        .route("/sql", get(sql::page_of))
        .route("/ui/style.css", get(style))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], STYLE).into_response()
}

/// Who is looking: the tenant and the CSRF token of this browser.
pub struct Viewer {
    pub tenant: Tenant,
    pub csrf: String,
    /// Who is logged in, with auth on.
    pub caller: Option<andon_model::auth::Principal>,
    /// Cookies to set with the response.
    set_cookies: Vec<String>,
}

use crate::auth::cookie;

/// The tenant a page asks for: a `tenant` parameter switches it, then the one
/// the browser remembers. (Then a proxy's `X-Scope-OrgID`, then `default`.)
pub fn requested_tenant(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    let params: HashMap<String, String> = Query::try_from_uri(uri).map(|Query(p)| p).unwrap_or_default();
    params
        .get("tenant")
        .filter(|t| !t.is_empty())
        .cloned()
        .or_else(|| cookie(headers, "andon_tenant").map(str::to_owned))
}

fn new_token() -> Result<String, UiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| UiError::internal(format!("no randomness for a csrf token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut set_cookies = Vec::new();
        let csrf = match cookie(&parts.headers, "andon_csrf").filter(|t| t.len() == 32) {
            Some(t) => t.to_owned(),
            None => {
                let t = new_token()?;
                set_cookies.push(format!("andon_csrf={t}; Path=/; HttpOnly; SameSite=Strict"));
                t
            }
        };
        // The tenant: a `tenant` parameter switches it (and is remembered), then
        // the remembered one, then a proxy's `X-Scope-OrgID`, then `default`;
        // the auth layer has already checked the caller may see it, and says
        // which it is.
        let params: HashMap<String, String> = Query::try_from_uri(&parts.uri).map(|Query(p)| p).unwrap_or_default();
        let chosen = params.get("tenant").filter(|t| !t.is_empty());
        let tenant = match parts.extensions.get::<Tenant>() {
            Some(t) => t.clone(),
            None => {
                let raw = requested_tenant(&parts.uri, &parts.headers);
                let raw = raw
                    .as_deref()
                    .or_else(|| parts.headers.get(andon_model::TENANT_HEADER).and_then(|v| v.to_str().ok()));
                Tenant::from_header(raw)
                    .map_err(|e| UiError(StatusCode::BAD_REQUEST, format!("invalid tenant: {e}")))?
            }
        };
        if chosen.is_some() {
            set_cookies.push(format!("andon_tenant={}; Path=/; SameSite=Strict", tenant.as_str()));
        }
        let caller = parts.extensions.get::<crate::auth::Caller>().and_then(|c| c.0.clone());
        Ok(Viewer { tenant, csrf, set_cookies, caller })
    }
}

impl Viewer {
    /// A hidden form field with this browser's CSRF token.
    pub fn csrf_field(&self) -> String {
        format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&self.csrf))
    }

    /// Refuses a form post whose token is not this browser's, or that comes from
    /// another origin.
    pub fn check_post(&self, headers: &HeaderMap, token: &str) -> Result<(), UiError> {
        let forbidden = |why: &str| Err(UiError(StatusCode::FORBIDDEN, why.to_owned()));
        if self.set_cookies.iter().any(|c| c.starts_with("andon_csrf=")) {
            return forbidden("this form has expired: reload the page and try again");
        }
        let (a, b) = (token.as_bytes(), self.csrf.as_bytes());
        let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if !same {
            return forbidden("the form's csrf token does not match: reload the page and try again");
        }
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            if origin == "null" {
                return forbidden("form posts from an opaque origin are refused");
            }
            if origin.split_once("://").map_or(origin, |(_, h)| h) != host {
                return forbidden("cross-origin form posts are refused");
            }
        }
        Ok(())
    }
}

/// An error shown as a page.
#[derive(Debug)]
pub struct UiError(pub StatusCode, pub String);

impl UiError {
    pub fn internal(msg: impl Into<String>) -> Self {
        UiError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
    }

    pub fn not_found(what: &str) -> Self {
        UiError(StatusCode::NOT_FOUND, format!("no such {what}"))
    }
}

impl From<crate::app::ApiError> for UiError {
    fn from(e: crate::app::ApiError) -> Self {
        UiError(e.0, e.1)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = format!(
            "<h1>{} {}</h1><p class=\"error\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
            self.0.as_u16(),
            esc(self.0.canonical_reason().unwrap_or("")),
            esc(&self.1)
        );
        let mut r = html_response(&layout("Error", Nav::None, &body, "", None), &[]);
        *r.status_mut() = self.0;
        r
    }
}

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Findings,
    Tickets,
    Incidents,
    Investigations,
    Traces,
    Sql,
    None,
}

fn layout(title: &str, nav: Nav, body: &str, tenant: &str, who: Option<&str>) -> String {
    let mut o = String::with_capacity(body.len() + 2048);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Andon</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body>\
         <header><a class=\"brand\" href=\"/\">Andon</a><nav>",
        esc(title)
    );
    for (n, href, label) in [
        (Nav::Overview, "/", "Overview"),
        (Nav::Findings, "/findings", "Findings"),
        (Nav::Tickets, "/tickets", "Tickets"),
        (Nav::Incidents, "/incidents", "Incidents"),
        (Nav::Investigations, "/investigations", "Ask"),
        (Nav::Traces, "/traces", "Traces"),
        (Nav::Sql, "/sql", "SQL"),
    ] {
        let class = if n == nav { " class=\"active\"" } else { "" };
        let _ = write!(o, "<a href=\"{href}\"{class}>{label}</a>");
    }
    o.push_str("</nav>");
    if !tenant.is_empty() {
        let _ = write!(
            o,
            "<form class=\"tenant\" method=\"get\" action=\"/\"><label>tenant \
             <input name=\"tenant\" value=\"{}\" size=\"10\" aria-label=\"tenant\"></label></form>",
            esc(tenant)
        );
    }
    if let Some(who) = who {
        let _ = write!(
            o,
            "<form class=\"tenant\" method=\"post\" action=\"/logout\"><span class=\"muted\">{}</span> \
             <button type=\"submit\">log out</button></form>",
            esc(who)
        );
    }
    let _ = write!(o, "</header><main>{body}</main></body></html>");
    o
}

fn html_response(html: &str, cookies: &[String]) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html.to_owned()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A whole page for `viewer`.
pub fn page(viewer: &Viewer, title: &str, nav: Nav, body: &str) -> Response {
    let who = viewer.caller.as_ref().map(|p| p.name.as_str());
    html_response(&layout(title, nav, body, viewer.tenant.as_str(), who), &viewer.set_cookies)
}

/// A redirect after a form post (303, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// A time as people read it in UTC, to the second.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A timestamp cell of a query result (RFC 3339, or naive and in UTC).
pub fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc()))
}

/// A short relative age, such as `5 min ago`.
pub fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds();
    match s {
        s if s < 0 => "in the future".to_owned(),
        s if s < 90 => format!("{s} s ago"),
        s if s < 90 * 60 => format!("{} min ago", s / 60),
        s if s < 36 * 3600 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// A percent-encoded query-string value.
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// A link to the SQL console with `sql` filled in and run.
pub fn sql_href(sql: &str) -> String {
    format!("/sql?q={}", url_encode(sql))
}

/// A trace id as a link to its waterfall.
pub fn trace_link(id: &str) -> String {
    format!("<a class=\"mono\" href=\"/traces/{}\">{}</a>", url_encode(id), esc(id))
}

/// A cell of a query result as text.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows of a query as JSON objects keyed by column name.
pub fn rows(out: &QueryOutput) -> Vec<serde_json::Map<String, Value>> {
    let (columns, rows) = crate::rows::to_json(&out.schema, &out.batches);
    rows.into_iter().map(|r| columns.iter().cloned().zip(r).collect()).collect()
}

/// Runs one of the UI's own read-only queries.
pub async fn query(app: &AppState, tenant: &Tenant, sql: &str) -> Result<Vec<serde_json::Map<String, Value>>, UiError> {
    let out = app.query.run(Some(tenant.clone()), sql).await.map_err(crate::app::ApiError::from)?;
    Ok(rows(&out))
}

/// A number from a query row.
pub fn num(row: &serde_json::Map<String, Value>, k: &str) -> f64 {
    match row.get(k) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A string from a query row.
pub fn text<'a>(row: &'a serde_json::Map<String, Value>, k: &str) -> &'a str {
    row.get(k).and_then(Value::as_str).unwrap_or("")
}

/// A value as a figure: integers plainly, other numbers to 4 significant places.
pub fn figure(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f != 0.0 && f.abs() < 0.001 { format!("{f:.2e}") } else { format!("{}", (f * 1e4).round() / 1e4) }
        }
        other => cell_text(other),
    }
}

/// A severity badge.
pub fn badge(class: &str, label: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(label))
}
