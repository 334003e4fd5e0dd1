//! Tickets against a GitHub API twin: the human gate, exactly-once delivery
//! through outages, rate limits and timeouts, recurrences that comment instead
//! of duplicating, closing the loop, and PII planted in spans that never
//! reaches the tracker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use andon_model::{
    Affected, Evidence, Finding, FindingKind, FindingState, Priority, Severity, Tenant, TicketState, TimeWindow,
    Trouble, Wording,
};
use andon_tests::github_twin::{Failure, GitHubTwin};
use andon_tests::{Server, wait_for};
use andon_ticketing::{TicketError, Ticketing, TicketingConfig};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config(twin: &GitHubTwin) -> TicketingConfig {
    TicketingConfig {
        sink: "github".into(),
        github_api_url: twin.url.clone(),
        github_repo: "acme/shop".into(),
        github_token_env: "TWIN_TOKEN".into(),
        request_timeout_secs: 2,
        max_backoff_secs: 1,
        ..TicketingConfig::default()
    }
}

/// Octocrab's client starts its worker on the runtime current when it is built.
fn open(rt: &tokio::runtime::Runtime, db: &Path, twin: &GitHubTwin, cfg: TicketingConfig) -> Ticketing {
    let _entered = rt.enter();
    let settings = cfg.validate(db.parent().unwrap()).unwrap();
    let token = twin.token.clone();
    Ticketing::open(db, settings, &move |k| (k == "TWIN_TOKEN").then(|| token.clone())).unwrap()
}

/// An error-rate finding for `operation`; `n` tells passes apart, `start` is
/// its current window's start.
fn finding(operation: &str, n: u32, start: DateTime<Utc>) -> Finding {
    let segment = BTreeMap::new();
    let fingerprint = Finding::fingerprint_of(FindingKind::ErrorRateRegression, "inventory", operation, &segment);
    let map = |v: Value| serde_json::from_value::<BTreeMap<String, Value>>(v).unwrap();
    Finding {
        id: format!("{fingerprint}-{n}"),
        fingerprint,
        kind: FindingKind::ErrorRateRegression,
        service: "inventory".into(),
        operation: operation.into(),
        segment,
        window: TimeWindow { start, end: start + chrono::Duration::minutes(30) },
        baseline_window: TimeWindow { start: start - chrono::Duration::hours(3), end: start },
        baseline: map(json!({"errors": 3, "requests": 2004, "error_rate": 0.0015})),
        current: map(json!({"errors": 134, "requests": 1362, "error_rate": 0.0984})),
        p_value: 1e-30,
        effect: 0.097,
        affected: Affected { requests: 134, sessions: 120 },
        impact: 480.0,
        severity: Severity::High,
        summary: format!("`{operation}` in inventory fails 9.8% of requests (baseline 0.15%)."),
        wording: Wording {
            kind: "error-rate regression".into(),
            title: "{operation} in {service} fails 9.8% of requests{segment} (was 0.15%)".into(),
            effect: "+9.7 percentage points".into(),
        },
        trouble: Trouble::Failures,
        evidence: Evidence {
            query: "SELECT 1".into(),
            exemplar_trace_ids: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
            test: "two-proportion z-test".into(),
            ..Evidence::default()
        },
        change: None,
        state: FindingState::Open,
        first_seen: start,
        last_seen: start,
        run_id: None,
    }
}

/// Runs outbox rounds until `done` or `timeout`.
fn drain(rt: &tokio::runtime::Runtime, t: &Ticketing, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        rt.block_on(t.deliver_due()).unwrap();
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn posts_to_issues(twin: &GitHubTwin) -> usize {
    twin.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/issues")).count()
}

#[test]
fn pending_tickets_post_nothing_and_approval_posts_exactly_one_issue() {
    let twin = GitHubTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = open(&rt, &dir.path().join("andon.db"), &twin, config(&twin));
    let tenant = Tenant::default_tenant();
    let f = finding("POST /v1/reservations", 1, Utc::now());
    let seen = t.observe(&tenant, std::slice::from_ref(&f)).unwrap();
    assert_eq!(seen.drafted, 1);
    let pending = t.db().list(&tenant, Some(TicketState::Pending)).unwrap();
    assert_eq!(pending.len(), 1);
    let id = pending[0].id.clone();
    assert_eq!(pending[0].finding_ids, std::slice::from_ref(&f.id));

    // A pending draft reaches nobody, however long the outbox runs.
    for _ in 0..5 {
        rt.block_on(t.deliver_due()).unwrap();
    }
    assert!(twin.requests().is_empty(), "{:?}", twin.requests());

    let approved = t.approve(&tenant, &id, "alice", Some("real, affects checkout"), Some(Priority::P1)).unwrap();
    assert_eq!(approved.state, TicketState::Approved);
    assert!(drain(&rt, &t, Duration::from_secs(10), || !twin.issues().is_empty()));
    for _ in 0..3 {
        rt.block_on(t.deliver_due()).unwrap();
    }
    let issues = twin.issues();
    assert_eq!(issues.len(), 1);
    assert_eq!(posts_to_issues(&twin), 1);
    let posted = t.db().get(&tenant, &id).unwrap().unwrap();
    assert_eq!(posted.state, TicketState::Posted);
    assert_eq!(issues[0].title, posted.title);
    assert_eq!(issues[0].title, "POST /v1/reservations in inventory fails 9.8% of requests (was 0.15%)");
    assert_eq!(issues[0].body, posted.body);
    assert!(
        issues[0].body.starts_with(&format!("<!-- andon:fingerprint={} tenant=default ticket={id} -->", f.fingerprint))
    );
    assert_eq!(issues[0].labels, ["andon", "kind:error_rate_regression", "service:inventory", "severity:high", "P1"]);
    assert_eq!(posted.external.as_ref().and_then(|e| e.number), Some(1));
    let auth = twin.requests()[0].authorization.clone().unwrap();
    assert!(auth.ends_with(&twin.token), "{auth}");
    let actions: Vec<(String, String)> = t.db().audit(&id).unwrap().into_iter().map(|a| (a.actor, a.action)).collect();
    assert_eq!(
        actions,
        [("andon", "drafted"), ("alice", "approved"), ("outbox", "posted")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // The gate is one-way: a posted ticket cannot be approved or rejected again.
    assert!(matches!(t.approve(&tenant, &id, "bob", None, None), Err(TicketError::Conflict(_))));
    assert!(matches!(t.reject(&tenant, &id, "bob", "too late"), Err(TicketError::Conflict(_))));

    // A rejected draft is never posted, and its fingerprint stays quiet.
    let g = finding("GET /v1/stock", 1, Utc::now());
    t.observe(&tenant, std::slice::from_ref(&g)).unwrap();
    let gid = andon_ticketing::draft::ticket_id(&tenant, &g.fingerprint);
    t.reject(&tenant, &gid, "alice", "known, tracked elsewhere").unwrap();
    t.observe(&tenant, &[finding("GET /v1/stock", 2, Utc::now())]).unwrap();
    for _ in 0..3 {
        rt.block_on(t.deliver_due()).unwrap();
    }
    assert_eq!(twin.issues().len(), 1);
    assert_eq!(t.db().get(&tenant, &gid).unwrap().unwrap().state, TicketState::Rejected);
}

#[test]
fn a_recurring_finding_comments_instead_of_duplicating() {
    let twin = GitHubTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("andon.db");
    let rt = rt();
    let tenant = Tenant::default_tenant();
    let op = "POST /v1/reservations";
    let t0 = Utc::now() - chrono::Duration::hours(2);
    let id = {
        let t = open(&rt, &db, &twin, config(&twin));
        t.observe(&tenant, &[finding(op, 1, t0)]).unwrap();
        let id = t.db().list(&tenant, None).unwrap()[0].id.clone();
        t.approve(&tenant, &id, "alice", None, None).unwrap();
        assert!(drain(&rt, &t, Duration::from_secs(10), || twin.issues().len() == 1));
        // The same open finding in later passes: nothing to say.
        t.observe(&tenant, &[finding(op, 1, t0)]).unwrap();
        // The finding resolved and came back: a comment, not a second issue.
        t.observe(&tenant, &[finding(op, 2, t0)]).unwrap();
        assert!(drain(&rt, &t, Duration::from_secs(10), || twin.comments().len() == 1));
        id
    };
    // After a restart the ticket is still known.
    let t = open(&rt, &db, &twin, config(&twin));
    t.observe(&tenant, &[finding(op, 3, t0)]).unwrap();
    assert!(drain(&rt, &t, Duration::from_secs(10), || twin.comments().len() == 2));
    assert_eq!(twin.issues().len(), 1);
    assert!(twin.comments().iter().all(|c| c.issue == 1 && c.body.contains("Seen again")));

    // A person closes the issue: the ticket and its findings resolve.
    twin.close(1, "bob");
    let resolved = rt.block_on(t.poll()).unwrap();
    assert_eq!(resolved.len(), 1);
    let ids = &resolved[0].1;
    assert_eq!(ids.len(), 3, "{ids:?}");
    let ticket = t.db().get(&tenant, &id).unwrap().unwrap();
    assert_eq!(ticket.state, TicketState::Resolved);
    let closer = t.db().audit(&id).unwrap().into_iter().find(|a| a.action == "resolved").unwrap();
    assert_eq!(closer.actor, "github:bob");

    // Evidence that still overlaps the time before the close is not a recurrence.
    t.observe(&tenant, &[finding(op, 4, t0)]).unwrap();
    rt.block_on(t.deliver_due()).unwrap();
    assert_eq!(twin.comments().len(), 2);
    // Evidence entirely after the close is: the issue is reopened and commented.
    t.observe(&tenant, &[finding(op, 4, Utc::now() + chrono::Duration::seconds(1))]).unwrap();
    assert!(drain(&rt, &t, Duration::from_secs(10), || twin.comments().len() == 3));
    assert!(twin.issues()[0].open);
    assert!(twin.comments()[2].body.contains("Andon reopened it"));
    assert_eq!(t.db().get(&tenant, &id).unwrap().unwrap().state, TicketState::Posted);

    // With on_closed = "comment", a recurrence after a close comments only.
    drop(t);
    let t = open(&rt, &db, &twin, TicketingConfig { on_closed: "comment".into(), ..config(&twin) });
    twin.close(1, "bob");
    rt.block_on(t.poll()).unwrap();
    t.observe(&tenant, &[finding(op, 5, Utc::now() + chrono::Duration::seconds(1))]).unwrap();
    assert!(drain(&rt, &t, Duration::from_secs(10), || twin.comments().len() == 4));
    assert!(!twin.issues()[0].open);

    // Even with Andon's database lost, the fingerprint in the issue body
    // finds the existing issue: the new ticket comments there.
    let fresh = dir.path().join("fresh.db");
    let t = open(&rt, &fresh, &twin, config(&twin));
    t.observe(&tenant, &[finding(op, 6, Utc::now())]).unwrap();
    t.approve(&tenant, &id, "alice", None, None).unwrap();
    assert!(drain(&rt, &t, Duration::from_secs(10), || twin.comments().len() == 5));
    assert_eq!(twin.issues().len(), 1);
    assert_eq!(posts_to_issues(&twin), 1);
    assert!(twin.issues()[0].open, "reopened, as on_closed defaults to reopen");
}

#[test]
fn outages_rate_limits_and_timeouts_deliver_each_ticket_exactly_once() {
    let twin = GitHubTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("andon.db");
    let rt = rt();
    let tenant = Tenant::default_tenant();
    let approve = |t: &Ticketing, op: &str| {
        let f = finding(op, 1, Utc::now());
        t.observe(&tenant, std::slice::from_ref(&f)).unwrap();
        let id = andon_ticketing::draft::ticket_id(&tenant, &f.fingerprint);
        t.approve(&tenant, &id, "alice", None, None).unwrap();
        id
    };

    // 502s, then recovery.
    let t = open(&rt, &db, &twin, config(&twin));
    for op in ["GET /a", "GET /b", "GET /c"] {
        approve(&t, op);
    }
    twin.fail_next(4, Failure::Status(502));
    assert!(drain(&rt, &t, Duration::from_secs(30), || twin.issues().len() == 3));
    assert_eq!(posts_to_issues(&twin), 3);
    let retried = t
        .db()
        .list(&tenant, None)
        .unwrap()
        .into_iter()
        .filter(|x| t.db().audit(&x.id).unwrap().iter().any(|a| a.action == "retrying"));
    assert!(retried.count() >= 1);

    // The primary rate limit: nothing is sent again before the reset.
    approve(&t, "GET /d");
    let n0 = twin.requests().len();
    twin.fail_next(1, Failure::RateLimit { reset_in_secs: 2 });
    assert!(drain(&rt, &t, Duration::from_secs(30), || twin.issues().len() == 4));
    let reqs = &twin.requests()[n0..];
    assert!(reqs[0].refused);
    assert_eq!(reqs.iter().filter(|r| r.refused).count(), 1, "came back before the reset");
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(900), "{:?}", reqs[1].at - reqs[0].at);

    // A secondary rate limit with Retry-After.
    approve(&t, "GET /e");
    let n0 = twin.requests().len();
    twin.fail_next(1, Failure::RetryAfter { secs: 1 });
    assert!(drain(&rt, &t, Duration::from_secs(30), || twin.issues().len() == 5));
    let reqs = &twin.requests()[n0..];
    assert!(reqs[0].refused && !reqs[1].refused);
    assert!(reqs[1].at - reqs[0].at >= Duration::from_secs(1), "{:?}", reqs[1].at - reqs[0].at);

    // The tracker creates the issue, then answers only after the client gave
    // up (2 s): the retry finds the issue by its marker and does not post again.
    let id = approve(&t, "GET /f");
    let posts_before = posts_to_issues(&twin);
    twin.fail_next(1, Failure::TimeoutAfterWrite(Duration::from_secs(4)));
    assert!(drain(&rt, &t, Duration::from_secs(30), || {
        t.db().get(&tenant, &id).unwrap().unwrap().state == TicketState::Posted
    }));
    assert_eq!(twin.issues().len(), 6);
    assert_eq!(posts_to_issues(&twin) - posts_before, 1, "the create was repeated");
    let audit = t.db().audit(&id).unwrap();
    assert!(audit.iter().any(|a| a.action == "retrying"), "{audit:?}");
    assert!(audit.iter().any(|a| a.action == "posted" && a.detail.contains("already had it")), "{audit:?}");

    // An outage across a restart.
    let id = approve(&t, "GET /g");
    twin.fail_next(1000, Failure::Status(503));
    for _ in 0..3 {
        rt.block_on(t.deliver_due()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(t.db().get(&tenant, &id).unwrap().unwrap().state, TicketState::Approved);
    drop(t);
    twin.recover();
    let t = open(&rt, &db, &twin, config(&twin));
    assert!(drain(&rt, &t, Duration::from_secs(30), || twin.issues().len() == 7));
    for _ in 0..3 {
        rt.block_on(t.deliver_due()).unwrap();
    }
    let titles: Vec<String> = twin.issues().into_iter().map(|i| i.title).collect();
    let mut unique = titles.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), titles.len(), "{titles:?}");
    assert_eq!(titles.len(), 7);
}

/// A route an attacker shaped: an email, HTML, a Markdown link and a mention.
const PLANTED_ROUTE: &str =
    "/v1/users/alice@example.com/<img src=x onerror=alert(1)>/[x](https://evil.example)/@octocat";

fn span(trace: u64, start: DateTime<Utc>, failed: bool) -> Value {
    let start_ns = start.timestamp_nanos_opt().unwrap();
    let attr = |k: &str, v: Value| json!({"key": k, "value": v});
    json!({
        "traceId": format!("{:032x}", 0xabc0_0000_0000_0000u64 as u128 * 65_536 + u128::from(trace)),
        "spanId": format!("{:016x}", trace + 1),
        "name": format!("GET {PLANTED_ROUTE}"),
        "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": (start_ns + 8_000_000).to_string(),
        "attributes": [
            attr("http.request.method", json!({"stringValue": "GET"})),
            attr("http.route", json!({"stringValue": PLANTED_ROUTE})),
            attr("http.response.status_code", json!({"intValue": if failed { "500" } else { "200" }})),
            attr("session.id", json!({"stringValue": format!("session-{}", trace % 400)})),
            attr("user.id", json!({"stringValue": "u-8812"})),
            attr("enduser.id", json!({"stringValue": "bob@example.com"})),
        ],
        "status": {"code": if failed { 2 } else { 1 }, "message": if failed { "card 4111 1111 1111 1111 declined" } else { "" }},
    })
}

/// Three hours of healthy traffic on the planted route, then half an hour in
/// which a third of the requests fail.
fn export_planted(server: &Server, now: DateTime<Utc>) {
    let client = andon_tests::reqwest::blocking_client();
    let mut spans = Vec::new();
    for i in 0..600u64 {
        let at = now - chrono::Duration::minutes(210) + chrono::Duration::seconds(i as i64 * 17);
        spans.push(span(i, at, false));
    }
    for i in 0..400u64 {
        let at = now - chrono::Duration::minutes(29) + chrono::Duration::seconds(i as i64 * 4);
        spans.push(span(10_000 + i, at, i % 3 == 0));
    }
    for chunk in spans.chunks(250) {
        let body = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "profile"}},
                {"key": "service.version", "value": {"stringValue": "1.4.0"}},
            ]},
            "scopeSpans": [{"spans": chunk}],
        }]});
        let resp = client
            .post(server.http_url("/v1/traces"))
            .header("content-type", "application/json")
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text());
    }
}

/// A backtest of the last 30 minutes against the three hours before them, as
/// one comparison (a backtest without a baseline replays every pass instead).
fn one_comparison(now: DateTime<Utc>) -> Value {
    let from = now - chrono::Duration::minutes(30);
    json!({
        "from": from.to_rfc3339(),
        "to": now.to_rfc3339(),
        "baseline_from": (from - chrono::Duration::hours(3)).to_rfc3339(),
        "baseline_to": from.to_rfc3339(),
    })
}

fn get(server: &Server, path: &str) -> Value {
    let resp = andon_tests::reqwest::blocking_client().get(server.api_url(path)).send().unwrap();
    assert!(resp.status().is_success(), "{path}: {} {}", resp.status(), resp.text());
    resp.json().unwrap()
}

#[test]
fn through_the_server_planted_pii_never_reaches_github_and_closing_the_issue_resolves_the_finding() {
    let twin = GitHubTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec-test-0001";
    let mut server = Server::start_with_env(
        dir.path(),
        &[
            ("ANDON_ANALYSIS_INTERVAL_SECS", "0"),
            ("ANDON_TICKETS_SINK", "github"),
            ("ANDON_TICKETS_GITHUB_API_URL", &twin.url),
            ("ANDON_TICKETS_GITHUB_REPO", "acme/shop"),
            ("ANDON_TICKETS_GITHUB_TOKEN_ENV", "ANDON_TEST_GITHUB_TOKEN"),
            ("ANDON_TEST_GITHUB_TOKEN", &twin.token),
            ("ANDON_TICKETS_OUTBOX_INTERVAL_SECS", "1"),
            ("ANDON_TICKETS_POLL_INTERVAL_SECS", "1"),
            ("ANDON_GITHUB_WEBHOOK_SECRET", secret),
        ],
    );
    let now = Utc::now();
    export_planted(&server, now);
    let client = andon_tests::reqwest::blocking_client();
    let resp = client.post(server.api_url("/api/v1/analyze")).json(&one_comparison(now)).send().unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text());
    let findings = resp.json().unwrap()["findings"].as_array().unwrap().clone();
    let finding = findings
        .iter()
        .find(|f| f["kind"] == "error_rate_regression" && f["service"] == "profile")
        .unwrap_or_else(|| panic!("no error-rate finding on the planted route: {findings:#?}"));
    assert_eq!(finding["operation"], format!("GET {PLANTED_ROUTE}"));

    // One pending draft; nothing reaches GitHub while it waits.
    let pending = get(&server, "/api/v1/tickets?state=pending")["tickets"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(pending[0]["finding_ids"], json!([finding["id"]]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(twin.requests().is_empty(), "{:?}", twin.requests());

    // Bad decisions get clear errors.
    let resp = client
        .post(server.api_url(&format!("/api/v1/tickets/{id}/approve")))
        .json(&json!({"reviewer": ""}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400, "{}", resp.text());
    let resp = client
        .post(server.api_url("/api/v1/tickets/tk-nope/approve"))
        .json(&json!({"reviewer": "alice"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Approve from the CLI.
    let out = std::process::Command::new(andon_tests::andon_bin())
        .args(["tickets", "approve", &id, "--reviewer", "alice", "--note", "planted test", "--server"])
        .arg(server.api_url(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(Duration::from_secs(20), || twin.issues().len() == 1), "{:?}", twin.requests());
    let issue = twin.issues().remove(0);
    let sent: Vec<String> = twin.requests().iter().map(|r| r.body.to_string()).collect();
    for planted in ["alice@example.com", "u-8812", "bob@example.com", "4111 1111 1111 1111"] {
        assert!(!issue.title.contains(planted) && !issue.body.contains(planted), "{planted} reached github");
        assert!(sent.iter().all(|b| !b.contains(planted)), "{planted} reached github");
    }
    assert!(issue.title.contains("[email]"), "{}", issue.title);
    // Where the route appears in prose or tables it is inside code spans.
    let mut fenced = false;
    for line in issue.body.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if let Some(at) = line.find("onerror").filter(|_| !fenced) {
            assert!(line[..at].matches('`').count() % 2 == 1, "markup outside code: {line}");
        }
    }
    let ticket = get(&server, &format!("/api/v1/tickets/{id}"));
    assert_eq!(ticket["state"], "posted");
    assert_eq!(ticket["reviewer"], "alice");
    assert_eq!(ticket["external"]["number"], 1);
    assert_eq!(issue.body, ticket["body"].as_str().unwrap());
    let actions: Vec<&str> =
        ticket["audit"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["drafted", "approved", "posted"]);

    // A restart keeps the ticket, and analyzing again does not draft another.
    server.restart();
    let resp = client.post(server.api_url("/api/v1/analyze")).json(&one_comparison(now)).send().unwrap();
    assert_eq!(resp.status(), 200);
    // The serious finding also opened an incident, whose RCA ticket waits at
    // the gate, redacted like the finding's.
    let rca_ticket =
        || get(&server, "/api/v1/tickets")["tickets"].as_array().unwrap().iter().any(|t| t["incident_id"].is_string());
    assert!(wait_for(Duration::from_secs(60), rca_ticket), "no rca ticket");
    let tickets = get(&server, "/api/v1/tickets")["tickets"].as_array().unwrap().clone();
    let (rca, finding_tickets): (Vec<&Value>, Vec<&Value>) = tickets.iter().partition(|t| t["incident_id"].is_string());
    assert_eq!(finding_tickets.len(), 1, "{tickets:#?}");
    assert_eq!(rca.len(), 1, "{tickets:#?}");
    for t in &rca {
        assert_eq!(t["state"], "pending");
        for planted in ["alice@example.com", "u-8812", "bob@example.com", "4111 1111 1111 1111"] {
            assert!(!t["body"].as_str().unwrap().contains(planted), "{planted} in the rca ticket");
        }
    }

    // Closing the issue on GitHub resolves the ticket and its finding.
    twin.close(1, "carol");
    let fid = finding["id"].as_str().unwrap();
    assert!(wait_for(Duration::from_secs(20), || get(&server, &format!("/api/v1/tickets/{id}"))["state"] == "resolved"));
    assert_eq!(get(&server, &format!("/api/v1/findings/{fid}"))["state"], "resolved");

    // GitHub's webhook: unsigned deliveries are refused; a signed reopen is applied.
    let event = json!({"action": "reopened", "issue": {"number": 1, "state": "open"},
                       "repository": {"full_name": "acme/shop"}, "sender": {"login": "carol"}});
    let body = serde_json::to_vec(&event).unwrap();
    let resp = client
        .post(server.api_url("/api/v1/webhooks/github"))
        .header("x-github-event", "issues")
        .header("x-hub-signature-256", "sha256=00")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(server.api_url("/api/v1/webhooks/github"))
        .header("x-github-event", "issues")
        .header("x-hub-signature-256", &andon_ticketing::sink::signature(secret.as_bytes(), &body))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text());
    let ticket = get(&server, &format!("/api/v1/tickets/{id}"));
    assert_eq!(ticket["state"], "posted");
    assert!(
        ticket["audit"].as_array().unwrap().iter().any(|a| a["actor"] == "github:carol" && a["action"] == "reopened")
    );
}

/// A webhook request as received: headers and body.
type Delivered = (http::HeaderMap, Vec<u8>);

#[test]
fn file_and_webhook_sinks_deliver_signed_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let tenant = Tenant::default_tenant();

    // The file sink: one line per ticket, even when the outbox runs again
    // after a crash between writing the line and recording it.
    let path = dir.path().join("tickets.jsonl");
    let cfg =
        TicketingConfig { sink: "file".into(), file_path: path.display().to_string(), ..TicketingConfig::default() };
    let settings = cfg.validate(dir.path()).unwrap();
    let t = Ticketing::open(&dir.path().join("file.db"), settings, &|_| None).unwrap();
    let f = finding("GET /v1/stock", 1, Utc::now());
    t.observe(&tenant, std::slice::from_ref(&f)).unwrap();
    let id = andon_ticketing::draft::ticket_id(&tenant, &f.fingerprint);
    rt.block_on(t.deliver_due()).unwrap();
    assert!(!path.exists(), "a pending ticket was written");
    t.approve(&tenant, &id, "alice", None, None).unwrap();
    rt.block_on(t.deliver_due()).unwrap();
    let lines: Vec<Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "created");
    assert_eq!(lines[0]["ticket"]["id"], id.as_str());
    assert_eq!(lines[0]["ticket"]["reviewer"], "alice");
    let posted = t.db().get(&tenant, &id).unwrap().unwrap();
    assert_eq!(posted.external.unwrap().url, format!("file://{}#L1", path.display()));

    // The webhook sink: a signed JSON POST with a stable delivery id.
    let received: std::sync::Arc<std::sync::Mutex<Vec<Delivered>>> = Default::default();
    let sink_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = sink_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let store = std::sync::Arc::clone(&received);
    let fail_first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let store = std::sync::Arc::clone(&store);
            let fail_first = std::sync::Arc::clone(&fail_first);
            async move {
                store.lock().unwrap().push((headers, body.to_vec()));
                if fail_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    sink_rt.spawn(async move { axum::serve(listener, app).await });
    let cfg = TicketingConfig {
        sink: "webhook".into(),
        webhook_url: url,
        webhook_secret_env: "HOOK_SECRET".into(),
        max_backoff_secs: 1,
        ..TicketingConfig::default()
    };
    let settings = cfg.validate(dir.path()).unwrap();
    let t =
        Ticketing::open(&dir.path().join("hook.db"), settings, &|k| (k == "HOOK_SECRET").then(|| "s3cret".to_owned()))
            .unwrap();
    t.observe(&tenant, std::slice::from_ref(&f)).unwrap();
    // The reviewer's note quotes a customer: the webhook gets it masked.
    let note = "customer alice@example.com (+44 20 7946 0958) saw this from 198.51.100.23";
    t.approve(&tenant, &id, "alice", Some(note), None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.db().get(&tenant, &id).unwrap().unwrap().state != TicketState::Posted && Instant::now() < deadline {
        rt.block_on(t.deliver_due()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 503, then the retry");
    for (headers, body) in &got {
        let sig = headers["x-andon-signature-256"].to_str().unwrap();
        assert_eq!(sig, andon_ticketing::sink::signature(b"s3cret", body));
        assert_eq!(headers["x-andon-delivery"], got[0].0["x-andon-delivery"], "the retry keeps its delivery id");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "ticket.created");
        assert_eq!(v["ticket"]["fingerprint"], f.fingerprint.as_str());
        let text = String::from_utf8_lossy(body);
        assert!(text.contains("customer [email] ([phone]) saw this from [ip]"), "{text}");
        for planted in ["alice@example.com", "7946 0958", "198.51.100.23"] {
            assert!(!text.contains(planted), "{planted} reached the webhook");
        }
    }
}
