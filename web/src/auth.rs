//! Who calls the API port, and on which tenant: the one layer every request
//! passes through before a handler runs.
//!
//! A request carries `Authorization: Bearer <token>`, or a browser carries the
//! session cookie the login page gave it. The route decides the permission it
//! needs ([`needed`]); the [`Verifier`] shared with the OTLP ports decides
//! whether the caller has it on the tenant it names. The tenant the caller may
//! act on is then the request's `X-Scope-OrgID`, so every handler reads the
//! authorized tenant the way it always has, and the caller goes into the
//! request's extensions ([`Caller`]) for the handlers that record who acted.
//!
//! Requests that change state must also say `Content-Type: application/json`
//! (API) or carry the page's CSRF token (UI forms), and come from this origin
//! or none; `Host` must be one this server answers to, so a page on another
//! site cannot drive the API on loopback, directly or by DNS rebinding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use andon_model::TENANT_HEADER;
use andon_model::auth::{AuthError, Permission, Principal, Verifier};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::app::{ApiError, AppState};

/// The cookie that names a browser's session.
pub const SESSION_COOKIE: &str = "andon_session";

/// How long a UI session lasts without use.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept; the least recently used go first.
const MAX_SESSIONS: usize = 10_000;

/// The caller of a request, once authorized (absent with auth off).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Principal>);

impl Caller {
    /// Who acted, for the audit trail: the token's name with auth on.
    pub fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|p| p.name.as_str())
    }
}

/// The UI's logged-in browsers: a random id (the cookie) → the token's principal.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl Sessions {
    /// A new session for `p`; returns its id.
    pub fn open(&self, p: Principal) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session: {e}"))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, (_, used)| now.duration_since(*used) < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (p, now));
        Ok(id)
    }

    /// The principal of a live session, whose use is recorded.
    pub fn get(&self, id: &str) -> Option<Principal> {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (p, used) = map.get_mut(id)?;
        if now.duration_since(*used) >= SESSION_IDLE {
            map.remove(id);
            return None;
        }
        *used = now;
        Some(p.clone())
    }

    pub fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What a route needs; `None` for the ones anyone may reach.
pub fn needed(method: &Method, path: &str) -> Option<Permission> {
    match path {
        // Liveness for orchestrators, the login page itself, the stylesheet,
        // and GitHub's webhook, which its signature authenticates.
        "/healthz" | "/readyz" | "/login" | "/logout" | "/ui/style.css" | "/api/v1/webhooks/github" => None,
        _ if method == Method::GET || method == Method::HEAD => Some(Permission::Read),
        // SQL is a read, whatever its verb.
        "/api/v1/query" => Some(Permission::Read),
        "/api/v1/changes" => Some(Permission::Ingest),
        // Deciding tickets, opening incidents, running analyses.
        _ => Some(Permission::Decide),
    }
}

fn is_ui(path: &str) -> bool {
    !path.starts_with("/api/") && !matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn refuse(e: &AuthError, ui: bool, path: &str) -> Response {
    if ui && e.unauthenticated() {
        // A browser without a session goes to the login page, and back after.
        let back = if path.starts_with('/') && !path.starts_with("//") { path } else { "/" };
        return Redirect::to(&format!("/login?next={}", crate::ui::url_encode(back))).into_response();
    }
    let status = match e {
        e if e.unauthenticated() => StatusCode::UNAUTHORIZED,
        AuthError::BadTenant(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    let mut r = ApiError(status, e.to_string()).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The host part of a `Host` header or an origin, without the scheme.
fn host_of(v: &str) -> &str {
    v.split_once("://").map_or(v, |(_, h)| h).trim_end_matches('/')
}

/// Whether `host` is one this server answers to: a loopback or literal IP
/// address, or a name the operator listed. A name that merely resolves here (DNS
/// rebinding) is not.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || bare == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(bare))
}

/// Checks a state-changing request's origin and content type.
fn check_write(headers: &HeaderMap, path: &str) -> Result<(), &'static str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && (origin == "null" || host_of(origin) != host)
    {
        return Err("cross-origin requests that change state are refused");
    }
    if !is_ui(path) && path != "/api/v1/webhooks/github" {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err("requests that change state must be application/json");
        }
    }
    Ok(())
}

/// The layer: authenticates, authorizes the route on the tenant, and hands the
/// handler the authorized tenant and caller.
pub async fn layer(State(app): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !host.is_empty() && !host_allowed(host, &app.allowed_hosts) {
        return ApiError(StatusCode::MISDIRECTED_REQUEST, format!("this server does not answer to host {host:?}"))
            .into_response();
    }
    let writes = !(method == Method::GET || method == Method::HEAD || method == Method::OPTIONS);
    if writes && let Err(why) = check_write(req.headers(), &path) {
        return ApiError(StatusCode::FORBIDDEN, why.to_owned()).into_response();
    }
    let Some(need) = needed(&method, &path) else {
        req.extensions_mut().insert(Caller(None));
        return next.run(req).await;
    };
    let verifier: &Verifier = &app.auth;
    let ui = is_ui(&path);
    let principal = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => match verifier.authenticate(Some(v.as_bytes())) {
            Ok(p) => p,
            Err(e) => return refuse(&e, false, &path),
        },
        None if verifier.enabled() => match cookie(req.headers(), SESSION_COOKIE).and_then(|id| app.sessions.get(id)) {
            Some(p) => Some(p),
            None => return refuse(&AuthError::Missing, ui, &req.uri().to_string()),
        },
        None => None,
    };
    // The UI names its tenant in a parameter or a cookie; the API in the header.
    let named = if ui { crate::ui::requested_tenant(req.uri(), req.headers()) } else { None };
    let named = named.or_else(|| req.headers().get(TENANT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned));
    let tenant = match verifier.authorize(principal.as_ref(), need, named.as_deref()) {
        Ok(t) => t,
        Err(e) => return refuse(&e, false, &path),
    };
    match HeaderValue::from_str(tenant.as_str()) {
        Ok(v) => {
            req.headers_mut().insert(TENANT_HEADER, v);
        }
        Err(_) => return ApiError(StatusCode::BAD_REQUEST, "invalid tenant".into()).into_response(),
    }
    req.extensions_mut().insert(tenant);
    req.extensions_mut().insert(Caller(principal));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_their_verbs_and_paths_say() {
        assert_eq!(needed(&Method::GET, "/healthz"), None);
        assert_eq!(needed(&Method::GET, "/metrics"), Some(Permission::Read));
        assert_eq!(needed(&Method::GET, "/api/v1/findings"), Some(Permission::Read));
        assert_eq!(needed(&Method::POST, "/api/v1/query"), Some(Permission::Read));
        assert_eq!(needed(&Method::POST, "/api/v1/changes"), Some(Permission::Ingest));
        assert_eq!(needed(&Method::POST, "/api/v1/tickets/t-1/approve"), Some(Permission::Decide));
        assert_eq!(needed(&Method::POST, "/api/v1/analyze"), Some(Permission::Decide));
        assert_eq!(needed(&Method::POST, "/tickets/t-1/reject"), Some(Permission::Decide));
        assert_eq!(needed(&Method::DELETE, "/api/v1/anything"), Some(Permission::Decide));
    }

    #[test]
    fn only_addresses_and_listed_names_are_hosts_this_server_answers_to() {
        let listed = vec!["andon.internal".to_owned()];
        for ok in ["127.0.0.1:4380", "localhost:4380", "[::1]:4380", "10.0.0.7", "andon.internal:443", "ANDON.internal"]
        {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in ["attacker.example:4380", "andon.internal.attacker.example", "localhost.attacker.example"] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
    }

    #[test]
    fn a_cross_site_or_non_json_write_is_refused() {
        let h = |pairs: &[(header::HeaderName, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(k.clone(), HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")));
            }
            m
        };
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        let host = (header::HOST, "127.0.0.1:4380");
        assert!(check_write(&h(&[json.clone(), host.clone()]), "/api/v1/analyze").is_ok());
        assert!(check_write(&h(&[(header::CONTENT_TYPE, "text/plain"), host.clone()]), "/api/v1/analyze").is_err());
        let evil = (header::ORIGIN, "http://evil.example");
        assert!(check_write(&h(&[json.clone(), host.clone(), evil]), "/api/v1/analyze").is_err());
        let same = (header::ORIGIN, "http://127.0.0.1:4380");
        assert!(check_write(&h(&[json, host.clone(), same]), "/api/v1/analyze").is_ok());
        // UI forms are form-encoded; their CSRF token is checked by the form.
        assert!(
            check_write(&h(&[(header::CONTENT_TYPE, "application/x-www-form-urlencoded"), host]), "/tickets/t/approve")
                .is_ok()
        );
    }
}
