//! Incidents through the real binary: the shop's deploy-latency run is
//! imported and its deploys posted with `andon changes add`; `andon incidents
//! open` runs the RCA and prints the report, which blames pricing (not its
//! callers), names 7.4.0 and its PR and sets the perf gate's claim beside
//! production; the API serves the incident, its Markdown and its HTML; the RCA
//! ticket waits at the gate; a backtest's serious finding opens an incident on
//! its own, once per cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration as StdDuration, Instant};

use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, andon_bin};
use chrono::Duration;
use serde_json::{Value, json};

#[test]
fn an_incident_is_traced_to_the_deploy_its_pr_and_the_gate_that_missed_it() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    let server = Server::start_with_env(&dir.path().join("data"), &[("ANDON_ANALYSIS_INTERVAL_SECS", "0")]);
    // The deploy's PR title names the person who reported the problem, and
    // their address: neither may leave the server.
    let (truth, start, end) = andon_tests::latency_shop(&server, &shop);
    let at = |f: f64| (start + Duration::seconds(((end - start).num_seconds() as f64 * f) as i64)).to_rfc3339();
    let pr = truth["faults"][0]["change"]["pr"].as_u64().unwrap();

    // The CLI opens it and prints the report.
    let out = Command::new(andon_bin())
        .args(["incidents", "open", "--server", &server.api_url(""), "--start", &at(0.5), "--end", &end.to_rfc3339()])
        .args(["--baseline-start", &at(0.1), "--baseline-end", &at(0.45)])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(md.starts_with("# pricing GET /v1/quote: p95"), "{md}");
    assert!(md.contains(&format!("PR #\u{2060}{pr}")) && md.contains("## Gate analysis"), "{md}");
    let id = String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("opened ").to_owned();
    // The title is shown, masked (Markdown escapes the masks' brackets).
    assert!(md.contains("Cache quotes") && md.contains("email") && md.contains("ip"), "{md}");

    // The API has it, as JSON per the contract.
    let (status, inc) = server.get_json(&format!("/api/v1/incidents/{id}"));
    assert_eq!(status, 200, "{inc}");
    assert_eq!(inc["opened_by"], "cli");
    assert_eq!(inc["suspects"][0]["service"], "pricing", "{inc:#}");
    assert_eq!(inc["suspects"][0]["operation"], "GET /v1/quote");
    assert!(
        inc["suspects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["service"] == "pricing" || s["score"].as_f64() < Some(0.1))
    );
    assert_eq!(inc["change"]["version"], "7.4.0");
    assert_eq!(inc["change"]["pr"], pr);
    assert_eq!(inc["signature"]["kind"], "latency_regression");
    let perf = inc["gate_analysis"].as_array().unwrap().iter().find(|g| g["kind"] == "perf").unwrap();
    assert_eq!(perf["discrepancy"], "environment_or_payload", "{perf:#}");
    assert!(perf["claimed"].as_str().unwrap().contains("+1.5%"));
    assert_eq!(inc["narrative_source"], "template");
    for k in ["why_missed", "narrative"] {
        assert!(!inc[k].as_str().unwrap().is_empty(), "{k}");
    }
    assert!(inc["remediation"][0].as_str().unwrap().starts_with("Roll back pricing from 7.4.0"), "{inc:#}");
    let (_, list) = server.get_json("/api/v1/incidents?state=open");
    assert!(list["incidents"].as_array().unwrap().iter().any(|i| i["id"] == id.as_str()));

    // The HTML report is a page with everything escaped and nothing to run.
    let resp = blocking_client().get(server.api_url(&format!("/api/v1/incidents/{id}/report.html"))).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers.get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(csp.as_deref(), Some("default-src 'none'; style-src 'unsafe-inline'"));
    let html = resp.text();
    assert!(html.contains("<h2>Gate analysis</h2>") && !html.contains("<script"));
    let json = inc.to_string();
    for planted in ["jane.doe@example.com", "203.0.113.7"] {
        assert!(
            !md.contains(planted) && !html.contains(planted) && !json.contains(planted),
            "{planted} left the server"
        );
    }

    // Its RCA ticket waits at the human gate.
    let (_, tickets) = server.get_json("/api/v1/tickets?state=pending");
    let rca = tickets["tickets"].as_array().unwrap().iter().find(|t| t["incident_id"] == id.as_str());
    let rca = rca.unwrap_or_else(|| panic!("no rca ticket: {tickets:#}"));
    assert!(rca["title"].as_str().unwrap().starts_with("RCA: pricing"), "{rca}");
    assert!(rca["labels"].as_array().unwrap().iter().any(|l| l == "kind:rca"));

    // Bad requests are refused clearly.
    let (status, err) = server.post_json("/api/v1/incidents", &json!({"start": end.to_rfc3339(), "end": at(0.5)}));
    assert_eq!(status, 400);
    assert_eq!(err["error"], "invalid incident: end must be after start");
    let (status, err) = server
        .post_json("/api/v1/incidents", &json!({"start": at(0.5), "end": end.to_rfc3339(), "baseline_start": at(0.1)}));
    assert_eq!(status, 400, "{err}");
    assert_eq!(server.get_json("/api/v1/incidents/inc-nope").0, 404);

    // A backtest's serious finding opens an incident by itself, grouped by cause:
    // a second backtest adds nothing new.
    let analyze =
        json!({"from": at(0.8), "to": end.to_rfc3339(), "baseline_from": start.to_rfc3339(), "baseline_to": at(0.35)});
    let (status, body) = server.post_json("/api/v1/analyze", &analyze);
    assert_eq!(status, 200, "{body}");
    let serious: Vec<&Value> = body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "critical" || f["severity"] == "high")
        .collect();
    assert!(!serious.is_empty(), "the pricing regression is serious: {body:#}");
    let deadline = Instant::now() + StdDuration::from_secs(120);
    let auto = loop {
        let (_, list) = server.get_json("/api/v1/incidents");
        if let Some(i) = list["incidents"].as_array().unwrap().iter().find(|i| i["opened_by"] == "detection") {
            break i.clone();
        }
        assert!(Instant::now() < deadline, "no incident opened from findings: {list:#}");
        std::thread::sleep(StdDuration::from_millis(300));
    };
    assert!(auto["finding_ids"].as_array().unwrap().iter().any(|f| *f == serious[0]["id"]), "{auto:#}");
    assert_eq!(auto["suspects"][0]["service"], "pricing");
    assert_eq!(auto["change"]["version"], "7.4.0");
    // This one is similar to the incident opened by hand.
    assert!(auto["similar_incidents"].as_array().unwrap().iter().any(|s| s["id"] == id.as_str()), "{auto:#}");
    let (status, _) = server.post_json("/api/v1/analyze", &analyze);
    assert_eq!(status, 200);
    std::thread::sleep(StdDuration::from_secs(2));
    let (_, list) = server.get_json("/api/v1/incidents");
    let detected = list["incidents"].as_array().unwrap().iter().filter(|i| i["opened_by"] == "detection").count();
    assert_eq!(detected, 1, "{list:#}");
}
