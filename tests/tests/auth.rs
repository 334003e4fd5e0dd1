//! Auth and tenancy through the real binary: bearer tokens with roles and
//! pinned tenants on all three ports, as the contract's "Tenancy and auth"
//! section has them, and the API's defences against pages on other sites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use andon_tests::{Server, otlp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

const INGEST: &str = "ingest-secret-0123456789abcdef";
const READ: &str = "read-secret-0123456789abcdef";
const APPROVE: &str = "approve-secret-0123456789abcdef";
const ADMIN: &str = "admin-secret-0123456789abcdef";

const CONFIG: &str = r#"
[[auth.tokens]]
name = "ci-pipeline"
role = "ingest"
tenant = "shop"
token_env = "TEST_TOKEN_INGEST"

[[auth.tokens]]
name = "dashboards"
role = "read"
token_env = "TEST_TOKEN_READ"

[[auth.tokens]]
name = "Dana Reviewer"
role = "approve"
tenant = "shop"
token_env = "TEST_TOKEN_APPROVE"

[[auth.tokens]]
name = "operator"
role = "admin"
token_sha256 = "SHA"
"#;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn start(dir: &std::path::Path) -> Server {
    let config = CONFIG.replace("SHA", &sha256_hex(ADMIN));
    Server::start_with_config(
        &dir.join("data"),
        &config,
        &[("TEST_TOKEN_INGEST", INGEST), ("TEST_TOKEN_READ", READ), ("TEST_TOKEN_APPROVE", APPROVE)],
    )
}

fn client() -> reqwest::blocking::Client {
    andon_model::install_tls_provider();
    reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn export_http(server: &Server, token: Option<&str>, tenant: Option<&str>, seed: u64) -> reqwest::blocking::Response {
    let body = otlp::request("cart", seed, 5, otlp::now_ns()).encode_to_vec();
    let mut req = client().post(server.http_url("/v1/traces")).header("content-type", "application/x-protobuf");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(t) = tenant {
        req = req.header("x-scope-orgid", t);
    }
    req.body(body).send().unwrap()
}

fn sql(server: &Server, token: &str, tenant: Option<&str>, q: &str) -> (StatusCode, Value) {
    let mut req = client().post(server.api_url("/api/v1/query")).bearer_auth(token).json(&json!({ "sql": q }));
    if let Some(t) = tenant {
        req = req.header("x-scope-orgid", t);
    }
    let resp = req.send().unwrap();
    (resp.status(), resp.json().unwrap())
}

#[test]
fn every_port_checks_the_token_its_role_and_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    // OTLP/HTTP: no token or an unknown one is 401 with a Bearer challenge; a
    // token of another role or for another tenant is 403; the ingest token
    // lands its spans in its own tenant.
    let none = export_http(&server, None, None, 1);
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(export_http(&server, Some("not-a-known-token-at-all"), None, 1).status(), StatusCode::UNAUTHORIZED);
    assert_eq!(export_http(&server, Some(READ), None, 1).status(), StatusCode::FORBIDDEN);
    assert_eq!(export_http(&server, Some(INGEST), Some("bank"), 1).status(), StatusCode::FORBIDDEN);
    assert_eq!(export_http(&server, Some(INGEST), None, 2).status(), StatusCode::OK);
    assert_eq!(export_http(&server, Some(INGEST), Some("shop"), 3).status(), StatusCode::OK);
    // The admin is unpinned: it takes the header.
    assert_eq!(export_http(&server, Some(ADMIN), Some("bank"), 4).status(), StatusCode::OK);

    // OTLP/gRPC: the same rules, as gRPC codes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
        let req = |token: Option<&str>, tenant: Option<&str>, seed: u64| {
            let mut r = tonic::Request::new(otlp::request("cart", seed, 5, otlp::now_ns()));
            if let Some(t) = token {
                r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            if let Some(t) = tenant {
                r.metadata_mut().insert("x-scope-orgid", t.parse().unwrap());
            }
            r
        };
        assert_eq!(c.export(req(None, None, 5)).await.unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(
            c.export(req(Some("nope-nope-nope-nope"), None, 5)).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(c.export(req(Some(APPROVE), None, 5)).await.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(c.export(req(Some(INGEST), Some("bank"), 5)).await.unwrap_err().code(), Code::PermissionDenied);
        assert!(c.export(req(Some(INGEST), None, 6)).await.is_ok());
    });

    // What went where: three exports of 5 spans in "shop", one in "bank",
    // nothing in "default". The pinned reader of "shop" sees its own only.
    let count = |token: &str, tenant: Option<&str>| -> (StatusCode, Value) {
        sql(&server, token, tenant, "SELECT count(*) FROM spans")
    };
    assert_eq!(count(APPROVE, None).1["rows"][0][0], 15, "the pinned token's tenant when no header");
    assert_eq!(count(ADMIN, Some("bank")).1["rows"][0][0], 5);
    assert_eq!(count(READ, None).1["rows"][0][0], 0, "an unpinned token without a header reads default");
    let (status, err) = count(APPROVE, Some("bank"));
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(err["error"].as_str().unwrap().contains("shop only"), "{err}");
    let (status, _) = count(INGEST, None);
    assert_eq!(status, StatusCode::FORBIDDEN, "the ingest role cannot read");

    // The API: reads need a token (health checks do not), decisions need the
    // approve role.
    let get = |path: &str, token: Option<&str>| {
        let mut r = client().get(server.api_url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status()
    };
    assert_eq!(get("/healthz", None), StatusCode::OK);
    assert_eq!(get("/api/v1/findings", None), StatusCode::UNAUTHORIZED);
    assert_eq!(get("/metrics", None), StatusCode::UNAUTHORIZED);
    assert_eq!(get("/metrics", Some(READ)), StatusCode::OK);
    assert_eq!(get("/api/v1/findings", Some(READ)), StatusCode::OK);
    let now = chrono::Utc::now();
    let range = json!({"from": (now - chrono::Duration::minutes(10)).to_rfc3339(), "to": now.to_rfc3339()});
    let analyze = |token: &str| {
        client().post(server.api_url("/api/v1/analyze")).bearer_auth(token).json(&range).send().unwrap().status()
    };
    assert_eq!(analyze(READ), StatusCode::FORBIDDEN);
    assert_eq!(analyze(APPROVE), StatusCode::OK);
    let change = json!({"service": "cart", "version": "1.2.3", "deployed_at": now.to_rfc3339()});
    let post_change =
        |token: &str| client().post(server.api_url("/api/v1/changes")).bearer_auth(token).json(&change).send().unwrap();
    assert_eq!(post_change(READ).status(), StatusCode::FORBIDDEN);
    let resp = post_change(INGEST);
    assert!(resp.status().is_success(), "{:?}", resp.text());
}

/// Every role against every port and kind of request: the whole matrix, each
/// cell the answer the contract gives (an allowed request succeeds, a refused
/// one is 403 / `PERMISSION_DENIED`, never 401: the token is known).
#[test]
fn every_role_against_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = chrono::Utc::now();
    let range = json!({"from": (now - chrono::Duration::minutes(10)).to_rfc3339(), "to": now.to_rfc3339()});
    let change = json!({"service": "cart", "version": "9.9.9", "deployed_at": now.to_rfc3339()});

    // What each request needs: ingest (export, post a change), read (traces,
    // findings, SQL, metrics, the UI) or decide (run an analysis).
    let roles = [("ingest", INGEST), ("read", READ), ("approve", APPROVE), ("admin", ADMIN)];
    let allowed = |role: &str, needs: &str| match role {
        "admin" => true,
        "approve" => needs == "read" || needs == "decide",
        other => other == needs,
    };
    let mut seed = 100;
    let mut wrong = Vec::new();
    for (role, token) in roles {
        let mut check = |what: &str, needs: &str, ok: bool, refused: bool| {
            let want = allowed(role, needs);
            if ok != want || refused == want {
                wrong.push(format!("{role} → {what}: allowed {ok}, refused {refused}, want allowed {want}"));
            }
        };
        seed += 1;
        let status = export_http(&server, Some(token), None, seed).status();
        check("OTLP/HTTP export", "ingest", status == StatusCode::OK, status == StatusCode::FORBIDDEN);
        seed += 1;
        let grpc = rt.block_on(async {
            let mut c = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
            let mut r = tonic::Request::new(otlp::request("cart", seed, 5, otlp::now_ns()));
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            c.export(r).await.map(|_| ()).map_err(|e| e.code())
        });
        check("OTLP/gRPC export", "ingest", grpc.is_ok(), grpc == Err(Code::PermissionDenied));
        for path in ["/api/v1/findings", "/api/v1/tickets", "/api/v1/incidents", "/metrics", "/", "/findings"] {
            let status = client().get(server.api_url(path)).bearer_auth(token).send().unwrap().status();
            check(&format!("GET {path}"), "read", status == StatusCode::OK, status == StatusCode::FORBIDDEN);
        }
        let (status, _) = sql(&server, token, None, "SELECT count(*) FROM spans");
        check("SQL", "read", status == StatusCode::OK, status == StatusCode::FORBIDDEN);
        let post = |path: &str, body: &Value| {
            client().post(server.api_url(path)).bearer_auth(token).json(body).send().unwrap().status()
        };
        let status = post("/api/v1/changes", &change);
        check("POST /api/v1/changes", "ingest", status.is_success(), status == StatusCode::FORBIDDEN);
        let status = post("/api/v1/analyze", &range);
        check("POST /api/v1/analyze", "decide", status == StatusCode::OK, status == StatusCode::FORBIDDEN);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_page_on_another_site_cannot_drive_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let now = chrono::Utc::now();
    let range = json!({"from": (now - chrono::Duration::minutes(10)).to_rfc3339(), "to": now.to_rfc3339()});
    // A cross-site form post sends text/plain, which the API refuses even with
    // a good token (a browser would add the cookie, never the header).
    let resp = client()
        .post(server.api_url("/api/v1/analyze"))
        .bearer_auth(APPROVE)
        .header("content-type", "text/plain")
        .body(range.to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = client()
        .post(server.api_url("/api/v1/analyze"))
        .bearer_auth(APPROVE)
        .header("origin", "http://evil.example")
        .json(&range)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A name that resolves here (DNS rebinding) is not a host this server
    // answers to.
    let resp = client()
        .get(server.api_url("/api/v1/findings"))
        .bearer_auth(READ)
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[test]
fn the_ui_asks_for_a_token_once_and_keeps_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // No session: to the login page, and back afterwards.
    let resp = client().get(server.api_url("/tickets")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/login?next=%2Ftickets");
    let page = client().get(server.api_url("/login?next=%2Ftickets")).send().unwrap().text().unwrap();
    assert!(page.contains("type=\"password\""), "{page}");
    // A wrong token is refused; the right one gives a session cookie.
    let login = |token: &str| {
        client()
            .post(server.api_url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&next=%2Ftickets"))
            .send()
            .unwrap()
    };
    assert_eq!(login("wrong-token-wrong-token").status(), StatusCode::UNAUTHORIZED);
    let ok = login(APPROVE);
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()["location"], "/tickets");
    let set = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(APPROVE), "the cookie is a session, not the token");
    let session = set.split(';').next().unwrap().to_owned();
    let page = client().get(server.api_url("/tickets")).header("cookie", &session).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let text = page.text().unwrap();
    assert!(text.contains("Dana Reviewer") && text.contains("log out"), "{text}");
    // The session is pinned like its token: another tenant is refused.
    let other = client().get(server.api_url("/tickets?tenant=bank")).header("cookie", &session).send().unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    // A session without the ingest role never exports, and logging out ends it.
    let out = client().post(server.api_url("/logout")).header("cookie", &session).send().unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = client().get(server.api_url("/tickets")).header("cookie", &session).send().unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session ended");
}

#[test]
fn incidents_and_analyses_opened_through_the_api_are_rate_limited_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&dir.path().join("data"), &[("ANDON_API_OPENED_PER_MINUTE", "2")]);
    let now = chrono::Utc::now();
    let range = json!({"from": (now - chrono::Duration::minutes(10)).to_rfc3339(), "to": now.to_rfc3339()});
    let analyze = |tenant: &str| {
        client().post(server.api_url("/api/v1/analyze")).header("x-scope-orgid", tenant).json(&range).send().unwrap()
    };
    assert_eq!(analyze("shop").status(), StatusCode::OK);
    assert_eq!(analyze("shop").status(), StatusCode::OK);
    let third = analyze("shop");
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = third.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    // Another tenant has its own allowance.
    assert_eq!(analyze("bank").status(), StatusCode::OK);
    // Incidents are counted apart from analyses.
    let incident = json!({"start": (now - chrono::Duration::minutes(5)).to_rfc3339(), "end": now.to_rfc3339()});
    let open = || {
        client()
            .post(server.api_url("/api/v1/incidents"))
            .header("x-scope-orgid", "shop")
            .json(&incident)
            .send()
            .unwrap()
    };
    assert_ne!(open().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(open().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(open().status(), StatusCode::TOO_MANY_REQUESTS);
    // An analysis over more than the configured range (a week) is refused.
    let month = json!({"from": (now - chrono::Duration::days(30)).to_rfc3339(), "to": now.to_rfc3339()});
    let resp =
        client().post(server.api_url("/api/v1/analyze")).header("x-scope-orgid", "zoo").json(&month).send().unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().unwrap().contains("at most 168 hours"));
}
