//! The simulated shop against the real server: every request it emits is
//! accepted whole, its attributes land in the contract's columns, and its CLI
//! sends through the real opentelemetry-otlp exporter over gRPC and HTTP.

use std::process::Command;

use andon_fixtures::generate;
use andon_model::ChangeEvent;
use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, andon_bin, fixtures_bin};
use chrono::{DurationRound, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

fn rejected_total(server: &Server) -> u64 {
    let text = blocking_client().get(server.api_url("/metrics")).send().unwrap().text();
    text.lines()
        .filter(|l| l.starts_with("andon_spans_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn every_emitted_request_is_accepted_without_rejected_spans() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let end = Utc::now().duration_trunc(chrono::Duration::seconds(1)).unwrap();
    let g = generate("all", 11, 1.5, 0.5, end).unwrap();
    assert!(g.spans > 20_000);
    let client = blocking_client();
    for (i, req) in g.requests.iter().enumerate() {
        // Every fifth request as OTLP JSON, the rest as protobuf.
        let resp = if i % 5 == 0 {
            client
                .post(server.http_url("/v1/traces"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(req).unwrap())
                .send()
                .unwrap()
        } else {
            client
                .post(server.http_url("/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(req.encode_to_vec())
                .send()
                .unwrap()
        };
        assert_eq!(resp.status().as_u16(), 200, "request {i}: {}", resp.text());
        if i % 5 != 0 {
            let answer = ExportTraceServiceResponse::decode(&resp.body[..]).unwrap();
            assert!(
                answer.partial_success.as_ref().is_none_or(|p| p.rejected_spans == 0),
                "request {i} had rejected spans: {answer:?}"
            );
        }
    }
    assert_eq!(rejected_total(&server), 0);
    assert_eq!(server.count("SELECT count(*) FROM spans"), g.spans as i64);

    // The semantic conventions land in their columns.
    assert_eq!(server.count("SELECT count(*) FROM spans WHERE session_id IS NULL"), 0);
    assert_eq!(server.count("SELECT count(DISTINCT service_name) FROM spans"), 11);
    assert_eq!(
        server.count(
            "SELECT count(*) FROM spans WHERE service_name = 'web' AND (browser_mobile IS NULL OR os_type IS NULL)"
        ),
        0
    );
    assert_eq!(
        server.count(
            "SELECT count(*) FROM spans WHERE kind = 'server' AND (http_route IS NULL OR cloud_region IS NULL \
             OR vcs_ref_head_revision IS NULL OR vcs_change_id IS NULL OR http_response_status_code IS NULL)"
        ),
        0
    );
    assert!(server.count("SELECT count(*) FROM spans WHERE http_request_resend_count > 0") > 0);
    assert!(server.count("SELECT count(*) FROM spans WHERE exception_type = 'CacheTimeoutException'") > 0);
    // Every deploy's new version shows up in the spans with its commit.
    for change in &g.truth.changes {
        let n = server.count(&format!(
            "SELECT count(*) FROM spans WHERE service_name = '{}' AND service_version = '{}' \
             AND vcs_ref_head_revision = '{}'",
            change.service,
            change.version,
            change.commit.as_deref().unwrap()
        ));
        assert!(n > 0, "{} {} not seen", change.service, change.version);
    }
}

/// Spans in an OTLP JSON lines file.
fn spans_in(path: &std::path::Path) -> i64 {
    let text = std::fs::read_to_string(path).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for rs in v["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                n += ss["spans"].as_array().unwrap().len() as i64;
            }
        }
    }
    n
}

fn simulate(args: &[&str]) {
    let out = Command::new(fixtures_bin()).arg("simulate").args(args).output().unwrap();
    assert!(out.status.success(), "andon-fixtures {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_cli_sends_through_the_otlp_exporter_over_grpc_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let end = Utc::now().to_rfc3339();
    for (protocol, endpoint, seed) in [("grpc", server.grpc_url(), "1"), ("http", server.http_url(""), "2")] {
        let out = dir.path().join(protocol);
        simulate(&[
            "--scenario",
            "retry",
            "--hours",
            "0.25",
            "--rate",
            "1",
            "--seed",
            seed,
            "--end",
            &end,
            "--endpoint",
            &endpoint,
            "--protocol",
            protocol,
            "--out",
            out.to_str().unwrap(),
            "--batch-ms",
            "30000",
        ]);
        let sent = spans_in(&out.join("spans.jsonl"));
        assert!(sent > 1000, "{protocol}: {sent} spans");
        let truth: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ground_truth.json")).unwrap()).unwrap();
        assert_eq!(truth["faults"][0]["kind"], "retry");
        assert_eq!(truth["faults"][0]["segment"]["os.type"], "android");
        let changes: Vec<ChangeEvent> =
            serde_json::from_str(&std::fs::read_to_string(out.join("changes.json")).unwrap()).unwrap();
        assert!(changes.iter().all(|c| c.commit.is_some() && c.pr.is_some() && !c.gates.is_empty()));
    }
    let total = spans_in(&dir.path().join("grpc/spans.jsonl")) + spans_in(&dir.path().join("http/spans.jsonl"));
    assert_eq!(server.count("SELECT count(*) FROM spans"), total);
    assert_eq!(rejected_total(&server), 0);

    // The JSON lines file is what `andon import` reads: replayed into another
    // tenant, it gives the same spans again.
    let file = dir.path().join("http/spans.jsonl");
    let out = Command::new(andon_bin())
        .args(["import", "--endpoint", &server.http_url(""), "--tenant", "replay", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.query_as(Some("replay"), "SELECT count(*) FROM spans")[0][0], spans_in(&file));
}

#[test]
fn the_cli_writes_identical_files_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        simulate(&[
            "--scenario",
            "mixed",
            "--hours",
            "0.5",
            "--seed",
            seed,
            "--end",
            "2026-11-20T10:00:00Z",
            "--out",
            out.to_str().unwrap(),
        ]);
        (std::fs::read(out.join("spans.jsonl")).unwrap(), std::fs::read(out.join("ground_truth.json")).unwrap())
    };
    let a = run("a", "9");
    let b = run("b", "9");
    let c = run("c", "10");
    assert!(a == b, "same seed, same bytes");
    assert!(a.0 != c.0, "another seed, other traffic");
}

#[test]
fn the_cli_refuses_bad_arguments_clearly() {
    for (args, expected) in [
        (vec!["--scenario", "nope", "--out", "/tmp/x"], "unknown scenario"),
        (vec!["--scenario", "clean"], "nothing to do"),
        (vec!["--scenario", "clean", "--out", "/tmp/x", "--end", "yesterday"], "not an RFC 3339 time"),
        (vec!["--scenario", "clean", "--out", "/tmp/x", "--rate", "0"], "rate must be a positive"),
    ] {
        let out = Command::new(fixtures_bin()).arg("simulate").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = Command::new(fixtures_bin())
        .args(["load", "--endpoint", "http://10.1.2.3:4318", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only targets loopback"));
}
