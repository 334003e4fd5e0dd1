//! Ticket bodies are what people read on their board: they are golden files
//! (`tests/snapshots/`), reviewed as diffs when they change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use andon_model::{
    Affected, ChangeRef, Evidence, Finding, FindingKind, FindingState, LinkedFinding, ServiceOperation, Severity,
    Tenant, TimeWindow, Trouble, Wording,
};
use andon_ticketing::{Drafter, TicketingConfig};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

fn t(h: u32, m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, h, m, 0).unwrap()
}

fn map(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn drafter(trace_url: &str) -> Drafter {
    let cfg = TicketingConfig { trace_url: trace_url.into(), ..TicketingConfig::default() };
    Drafter::new(cfg.validate(std::path::Path::new("/tmp")).unwrap())
}

fn latency() -> Finding {
    let segment = BTreeMap::new();
    let fingerprint = Finding::fingerprint_of(FindingKind::LatencyRegression, "pricing", "GET /v1/quote", &segment);
    Finding {
        id: format!("{fingerprint}-1763719200"),
        fingerprint,
        kind: FindingKind::LatencyRegression,
        service: "pricing".into(),
        operation: "GET /v1/quote".into(),
        segment,
        window: TimeWindow { start: t(10, 0), end: t(10, 30) },
        baseline_window: TimeWindow { start: t(7, 0), end: t(10, 0) },
        baseline: map(json!({"requests": 10450, "p50_ms": 11.8, "p95_ms": 16.0, "p99_ms": 21.3})),
        current: map(json!({"requests": 1822, "p50_ms": 71.0, "p95_ms": 112.4, "p99_ms": 140.9})),
        p_value: 1.3e-212,
        effect: 6.02,
        affected: Affected { requests: 1822, sessions: 1204 },
        impact: 4816.0,
        severity: Severity::High,
        summary: "p95 latency of `GET /v1/quote` in pricing rose from 16.0 ms to 112 ms since 10:04 UTC; requests are 6.0× slower at the median (95% CI 5.8–6.2×); 1,204 sessions affected.".into(),
        wording: Wording {
            kind: "latency regression".into(),
            title: "{operation} in {service} is 6.0× slower{segment} (p95 16.0 ms → 112 ms)".into(),
            effect: "6.02× at the median".into(),
        },
        trouble: Trouble::Latency,
        evidence: Evidence {
            query: "SELECT CASE WHEN start_time >= TIMESTAMP '2026-11-21T10:00:00Z' THEN 'current' ELSE 'baseline' END AS side,\n  approx_percentile_cont(duration_ns / 1e6, 0.95) AS p95_ms\nFROM spans WHERE service_name = 'pricing' AND kind = 'server' AND http_route = '/v1/quote'\nGROUP BY side".into(),
            exemplar_trace_ids: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into(), "not-a-trace-id".into()],
            test: "Mann-Whitney U (one-sided)".into(),
            effect_ci: Some([5.81, 6.24]),
            onset: Some(t(10, 4)),
            cause: None,
            linked: vec![LinkedFinding {
                kind: FindingKind::LatencyRegression,
                service: "checkout".into(),
                operation: "POST /v1/checkout".into(),
                segment: BTreeMap::new(),
                summary: "latency_regression on `POST /v1/checkout` in checkout: 2.1× slower at the median".into(),
                p_value: 1e-40,
                why: "waits on pricing `GET /v1/quote`, which takes 58 ms more of its own time per request".into(),
            }],
            details: map(json!({"q_value": 4.1e-210, "median_shift_ms": 59.2})),
        },
        change: Some(ChangeRef {
            service: "pricing".into(),
            version: "7.4.0".into(),
            commit: Some("9f8e7d6c5b4a39281706f5e4d3c2b1a098f7e6d5".into()),
            pr: Some(4417),
            first_seen: Some(t(9, 58)),
        }),
        state: FindingState::Open,
        first_seen: t(10, 31),
        last_seen: t(10, 45),
        run_id: None,
    }
}

fn drop_off() -> Finding {
    let segment = map(json!({"browser.mobile": true}));
    let fingerprint = Finding::fingerprint_of(FindingKind::DropOff, "frontend", "POST /checkout/payment", &segment);
    Finding {
        id: format!("{fingerprint}-1763719200"),
        fingerprint,
        kind: FindingKind::DropOff,
        service: "frontend".into(),
        operation: "POST /checkout/payment".into(),
        segment,
        window: TimeWindow { start: t(10, 0), end: t(10, 30) },
        baseline_window: TimeWindow { start: t(7, 0), end: t(10, 0) },
        baseline: map(json!({"sessions_reached": 868, "sessions_continued": 798, "sessions_left": 70, "conversion": 0.91935, "left_after_error": 3})),
        current: map(json!({"sessions_reached": 894, "sessions_continued": 462, "sessions_left": 432, "conversion": 0.51678, "left_after_error": 371})),
        p_value: 2.2e-80,
        effect: 0.4379,
        affected: Affected { requests: 894, sessions: 350 },
        impact: 2800.0,
        severity: Severity::Critical,
        summary: "Conversion from `POST /checkout/payment` to `GET /checkout/confirmation` drops 44% for `browser.mobile=true` sessions (92% → 52%) since 10:05 UTC; 350 more sessions left than the baseline rate; 86% of those leaving hit an error there, which starts in payments `POST /v1/authorize`.".into(),
        wording: Wording {
            kind: "funnel drop-off".into(),
            title: "Conversion after {operation} drops 44%{segment} (92% → 52%)".into(),
            effect: "conversion down 44%".into(),
        },
        trouble: Trouble::Failures,
        evidence: Evidence {
            query: "SELECT 1".into(),
            exemplar_trace_ids: vec!["0af7651916cd43dd8448eb211c80319c".into()],
            test: "two-proportion z-test".into(),
            effect_ci: None,
            onset: Some(t(10, 5)),
            cause: Some(ServiceOperation { service: "payments".into(), operation: "POST /v1/authorize".into() }),
            linked: Vec::new(),
            details: map(json!({"next_step": "GET /checkout/confirmation", "cause_reason": "the failures start there: 371 of 432 sessions that left saw `POST /v1/authorize` fail"})),
        },
        change: None,
        state: FindingState::Open,
        first_seen: t(10, 31),
        last_seen: t(10, 31),
        run_id: None,
    }
}

/// A finding over traffic an attacker shaped: PII, secrets and markup in the
/// route, a segment value and the evidence.
fn hostile() -> Finding {
    let op = "GET /u/alice@example.com/<img src=x onerror=alert(1)>/[pwn](https://evil.example)/@octocat`|";
    let segment = map(json!({"os.type": "android ![x](https://evil.example/t.png)", "user.id": "u-8812"}));
    let fingerprint = Finding::fingerprint_of(FindingKind::ErrorRateRegression, "profile", op, &segment);
    Finding {
        id: format!("{fingerprint}-1763719200"),
        fingerprint,
        kind: FindingKind::ErrorRateRegression,
        service: "profile <b>svc</b>".into(),
        operation: op.into(),
        segment,
        window: TimeWindow { start: t(10, 0), end: t(10, 30) },
        baseline_window: TimeWindow { start: t(7, 0), end: t(10, 0) },
        baseline: map(json!({"errors": 3, "requests": 2004, "error_rate": 0.0015})),
        current: map(json!({"errors": 134, "requests": 1362, "error_rate": 0.0984})),
        p_value: 3e-40,
        effect: 0.0969,
        affected: Affected { requests: 134, sessions: 120 },
        impact: 480.0,
        severity: Severity::High,
        summary: format!(
            "`{op}` in profile fails 9.8% of requests (baseline 0.15%); card 4111 1111 1111 1111 with Authorization: Bearer abcdefghijklmnop; @octocat <script>alert(1)</script>"
        ),
        wording: Wording {
            kind: "error-rate regression".into(),
            title: "{operation} in {service} fails 9.8% of requests{segment} (was 0.15%)".into(),
            effect: "+9.7 percentage points".into(),
        },
        trouble: Trouble::Failures,
        evidence: Evidence {
            query: format!(
                "SELECT count(*) FROM spans WHERE name = '{op}' AND attributes['api_key'] = 'api_key=sk_live_4eC39HqLyjWDarjtT1zdp7dc'\n```\n# injected heading"
            ),
            exemplar_trace_ids: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
            test: "two-proportion z-test".into(),
            effect_ci: None,
            onset: None,
            cause: None,
            linked: Vec::new(),
            details: map(
                json!({"user.email": "bob@example.com", "note": "token=ghp_abcdefghijklmnopqrstuvwxyz0123456789"}),
            ),
        },
        change: Some(ChangeRef {
            service: "profile".into(),
            version: "1.2.3 [x](https://evil.example)".into(),
            commit: None,
            pr: Some(12),
            first_seen: None,
        }),
        state: FindingState::Open,
        first_seen: t(10, 31),
        last_seen: t(10, 31),
        run_id: None,
    }
}

#[test]
fn latency_ticket_reads_like_an_sre_wrote_it() {
    let d = drafter("http://jaeger.internal:16686/trace/{trace_id}").draft(&Tenant::default_tenant(), &latency());
    assert_eq!(d.title, "GET /v1/quote in pricing is 6.0× slower (p95 16.0 ms → 112 ms)");
    assert_eq!(d.labels, ["andon", "kind:latency_regression", "service:pricing", "severity:high", "P0"]);
    insta::assert_snapshot!("latency_body", d.body);
}

#[test]
fn drop_off_ticket_names_the_segment_and_where_it_starts() {
    let d = drafter("").draft(&Tenant::default_tenant(), &drop_off());
    assert_eq!(d.title, "Conversion after POST /checkout/payment drops 44% for browser.mobile=true (92% → 52%)");
    assert_eq!(d.priority, andon_model::Priority::P0);
    insta::assert_snapshot!("drop_off_body", d.body);
}

#[test]
fn planted_pii_and_markup_stay_inert() {
    let d = drafter("").draft(&Tenant::default_tenant(), &hostile());
    for secret in [
        "alice@example.com",
        "4111 1111 1111 1111",
        "abcdefghijklmnop",
        "sk_live_",
        "u-8812",
        "bob@example.com",
        "ghp_",
    ] {
        assert!(!d.body.contains(secret) && !d.title.contains(secret), "{secret} leaked:\n{}\n{}", d.title, d.body);
    }
    // Nothing outside code spans and the SQL block can render as markup.
    let prose = andon_ticketing_test_prose(&d.body);
    for bad in ["<img", "<script", "<b>", "](http", "![", "@octocat"] {
        assert!(!prose.contains(bad), "{bad} renders in:\n{prose}");
    }
    // The SQL block cannot be closed early by a fence in the query.
    assert!(d.body.contains("````sql\n"), "{}", d.body);
    assert!(d.labels.iter().all(|l| l.len() <= 50 && !l.contains('<')), "{:?}", d.labels);
    insta::assert_snapshot!("hostile_body", d.body);
}

/// The body with code spans and fenced blocks removed, and backslash escapes
/// applied: what GitHub would treat as Markdown and HTML.
fn andon_ticketing_test_prose(body: &str) -> String {
    let mut out = String::new();
    let mut in_block: Option<String> = None;
    for line in body.lines() {
        let ticks: String = line.chars().take_while(|c| *c == '`').collect();
        if let Some(fence) = &in_block {
            if line.trim() == fence {
                in_block = None;
            }
            continue;
        }
        if ticks.len() >= 3 {
            in_block = Some(ticks);
            continue;
        }
        if line.starts_with("<!-- andon:") {
            continue;
        }
        // Drop code spans: a run of n backticks up to the next run of exactly n.
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '\\' && i + 1 < chars.len() {
                // An escaped character is literal text: keep a placeholder.
                out.push('·');
                i += 2;
                continue;
            }
            if chars[i] == '`' {
                let n = chars[i..].iter().take_while(|c| **c == '`').count();
                let mut j = i + n;
                let mut closed = None;
                while j < chars.len() {
                    if chars[j] == '`' {
                        let m = chars[j..].iter().take_while(|c| **c == '`').count();
                        if m == n {
                            closed = Some(j + m);
                            break;
                        }
                        j += m;
                    } else {
                        j += 1;
                    }
                }
                if let Some(end) = closed {
                    i = end;
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        out.push('\n');
    }
    out
}
