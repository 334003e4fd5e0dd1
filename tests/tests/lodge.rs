//! Detection on the lodging system (`fixtures/lodge/`), the way a user runs
//! it: the recording of real Flask services, instrumented by the official
//! OpenTelemetry libraries with faults injected for real, is imported into a
//! server with `andon import`, and a backtest over the whole recording replays
//! continuous detection (`POST /api/v1/analyze {from, to}`).
//!
//! The recording's faults last 120 s with 120 s of quiet between them, so the
//! server runs at that timescale: a pass every 30 s judging the last 120 s
//! against the 120 s before it, sessions over after 30 s of quiet, and a
//! finding not seen for 5 minutes resolved.
//! Everything else is the default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use andon_tests::{Server, andon_bin, workspace_root};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

/// The current window of a pass, in seconds.
const WINDOW_SECS: u64 = 120;

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&Utc)
}

fn describe(f: &Value) -> String {
    format!(
        "{} {} {} {} first seen {}, cause {} ({}), change {}",
        f["kind"],
        f["service"],
        f["operation"],
        f["segment"],
        f["first_seen"],
        f["evidence"]["cause"],
        f["evidence"]["details"]["cause_reason"],
        f["change"]
    )
}

/// Every fault is found with its kind, where users feel it (or naming the
/// service as the cause) and its narrowest segment, first seen while a pass
/// holds it; nothing is first seen outside the faults.
#[test]
fn every_fault_of_the_lodging_system_is_found_by_a_replayed_backtest_and_nothing_else_is() {
    every_fault_is_found_and_nothing_else_is("fixtures/lodge/recording");
}

/// A release of `rates` whose quotes come out negative, fast and with status
/// 200: no span fails or slows, and the shoppers shown a negative price stop
/// booking. It is found where they leave, while it runs, blamed on `rates`
/// and on its release (version, commit and PR from the spans' `vcs.*`); an
/// incident opened over it through the API names the same.
#[test]
fn a_release_that_returns_wrong_values_is_found_as_the_drop_off_it_causes() {
    let (server, truth, _dir) = every_fault_is_found_and_nothing_else_is("fixtures/lodge/recording/release");
    let fault = &truth["faults"][0];
    let deploy = &fault["deploy"];
    let (status, inc) = server.post_json(
        "/api/v1/incidents",
        &json!({"start": fault["start"], "end": fault["end"], "title": "fewer bookings"}),
    );
    assert_eq!(status, 201, "{inc}");
    eprintln!("{}\n{}\n{:#}", inc["title"], inc["narrative"], inc["remediation"]);
    let top = &inc["suspects"][0];
    assert_eq!(top["service"], deploy["service"], "{:#}", inc["suspects"]);
    assert_eq!(top["cause"], "release", "{top:#}");
    assert_eq!(top["version"], deploy["version"], "{top:#}");
    let change = &inc["change"];
    assert_eq!(change["service"], deploy["service"], "{inc:#}");
    assert_eq!(change["version"], deploy["version"], "{change:#}");
    assert_eq!(change["commit"], deploy["commit"], "{change:#}");
    assert_eq!(change["pr"], deploy["pr"], "{change:#}");
    let onset = time(&inc["signature"]["onset"]);
    let at = time(&fault["start"]);
    assert!((onset - at).num_seconds().abs() <= 15, "onset {onset} against the switch at {at}");
}

/// Imports the recording in `dir` (`lodge.otlp.jsonl.gz`, `truth.json`),
/// replays continuous detection over it, and checks each fault of the truth.
fn every_fault_is_found_and_nothing_else_is(dir: &str) -> (Server, Value, tempfile::TempDir) {
    let recording = workspace_root().join(dir);
    let truth: Value = serde_json::from_slice(&std::fs::read(recording.join("truth.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[
            ("ANDON_ANALYSIS_INTERVAL_SECS", "30"),
            ("ANDON_ANALYSIS_WINDOW_SECS", &WINDOW_SECS.to_string()),
            ("ANDON_ANALYSIS_BASELINE_SECS", "120"),
            ("ANDON_ANALYSIS_SESSION_TIMEOUT_SECS", "30"),
            ("ANDON_ANALYSIS_RESOLVE_AFTER_SECS", "300"),
        ],
    );
    let file = recording.join("lodge.otlp.jsonl.gz");
    let out = Command::new(andon_bin())
        .args(["import", "--endpoint", &server.http_url(""), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (start, end) = (time(&truth["start"]), time(&truth["end"]));
    let (status, body) =
        server.post_json("/api/v1/analyze", &json!({"from": start.to_rfc3339(), "to": end.to_rfc3339()}));
    assert_eq!(status, 200, "{body}");
    let findings = body["findings"].as_array().unwrap();
    let all: Vec<String> = findings.iter().map(describe).collect();
    eprintln!("{} passes, {} findings:\n{}", body["passes"], findings.len(), all.join("\n"));

    // Where users feel each fault: the faulty service's own operations, except
    // for network delay on the hop into a service, which its callers' client
    // spans measure (the service's own spans do not move).
    let expected = |kind: &str| match kind {
        "exception" => ("error_rate_regression", false),
        "network_delay" => ("latency_regression", true),
        // Payments that fail for one kind of client: those users stop there.
        "client_failure" => ("drop_off", false),
        // A wrong price, shown fast and with status 200: shoppers stop booking.
        "wrong_value" => ("drop_off", false),
        _ => ("latency_regression", false),
    };
    // The services whose spans call into a service, as the traces show them.
    let callers = |service: &str| -> Vec<Value> {
        server
            .query(&format!(
                "SELECT DISTINCT p.service_name FROM spans c JOIN spans p \
                 ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
                 WHERE c.service_name = '{service}' AND p.service_name <> '{service}'"
            ))
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    };
    let faults = truth["faults"].as_array().unwrap();
    // A pass holds a fault while its current window overlaps it: up to a
    // window's length after the fault ends.
    let held = Duration::seconds(WINDOW_SECS as i64);
    let mut misses = Vec::new();
    for fault in faults {
        let (kind, service) = (fault["kind"].as_str().unwrap(), fault["service"].as_str().unwrap());
        let (fs, fe) = (time(&fault["start"]), time(&fault["end"]));
        let (want, by_caller) = expected(kind);
        // The clients a fault is confined to (none: every device alike).
        let segment = fault.get("segment").cloned().unwrap_or_else(|| json!({}));
        let hit = findings.iter().any(|f| {
            let during = time(&f["first_seen"]) >= fs && time(&f["first_seen"]) <= fe + held;
            // A drop-off is where users leave the journey, whichever service failed them;
            // a slowdown is found where it is measured and names its cause (a service
            // slow to take requests slows only its callers' client spans).
            let place = want == "drop_off"
                || f["service"] == service
                || f["evidence"]["cause"]["service"] == service
                || by_caller && callers(service).contains(&f["service"]);
            let narrowest = f["segment"].as_object().map_or(json!({}), |s| json!(s)) == segment;
            // A fault shipped as a release is blamed on its service and on the
            // release itself.
            let blamed = match fault.get("deploy") {
                Some(d) => {
                    f["evidence"]["cause"]["service"] == service
                        && f["change"]["version"] == d["version"]
                        && f["change"]["pr"] == d["pr"]
                }
                None => true,
            };
            f["kind"] == want && during && place && narrowest && blamed
        });
        if !hit {
            misses.push(format!("{kind} in {service} from {fs}"));
        }
    }
    assert!(misses.is_empty(), "faults not found: {misses:#?}\nfindings:\n{}", all.join("\n"));

    // Nothing is reported outside the faults: every finding is first seen while
    // a pass's current window overlaps one.
    let stray: Vec<&String> = findings
        .iter()
        .zip(&all)
        .filter(|(f, _)| {
            let t = time(&f["first_seen"]);
            !faults.iter().any(|x| t >= time(&x["start"]) && t <= time(&x["end"]) + held)
        })
        .map(|(_, d)| d)
        .collect();
    assert!(stray.is_empty(), "findings outside every fault: {stray:#?}");
    (server, truth, dir)
}
