//! The login page: with auth on, a browser gives a token once and gets a
//! session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS); the
//! token itself is never stored in the browser. Logging out ends the session.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Nav, esc, html_response, layout, see_other};
use crate::app::AppState;
use crate::auth::{SESSION_COOKIE, cookie};

#[derive(Debug, Default, Deserialize)]
pub struct LoginParams {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Only a path on this server: never another site (`//host`, `https://...`).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/",
    }
}

fn form_page(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>{error}<p class=\"muted\">Paste an Andon token with the <code>read</code>, \
         <code>approve</code> or <code>admin</code> role. The browser keeps a session, not the token.</p>\
         <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Token <input type=\"password\" name=\"token\" required autocomplete=\"current-password\" \
         maxlength=\"4096\"></label> <button class=\"primary\" type=\"submit\">Log in</button></form>",
        esc(next)
    );
    layout("Log in", Nav::None, &body, "", None)
}

pub async fn form(State(app): State<Arc<AppState>>, Query(p): Query<LoginParams>) -> Response {
    if !app.auth.enabled() {
        return see_other(safe_next(p.next.as_deref()));
    }
    html_response(&form_page(safe_next(p.next.as_deref()), None), &[])
}

pub async fn submit(State(app): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref()).to_owned();
    if !app.auth.enabled() {
        return see_other(&next);
    }
    let value = format!("Bearer {}", f.token.trim());
    let principal = match app.auth.authenticate(Some(value.as_bytes())) {
        Ok(Some(p)) => p,
        _ => {
            let mut r = html_response(&form_page(&next, Some("That token is not known here.")), &[]);
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    };
    let id = match app.sessions.open(principal) {
        Ok(id) => id,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let mut r = see_other(&next);
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        app.sessions.close(id);
    }
    let mut r = see_other(if app.auth.enabled() { "/login" } else { "/" });
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("andon_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_login_a_browser_goes_only_to_a_page_of_this_server() {
        assert_eq!(safe_next(Some("/tickets/t-1")), "/tickets/t-1");
        for bad in ["//evil.example/x", "https://evil.example", "/\\evil.example", "tickets"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
