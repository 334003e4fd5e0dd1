//! OTLP/HTTP receiver rules from the OTLP specification, against the real binary.

use std::io::Write;
use std::time::Duration;

use andon_ingest::rpc::{RetryInfo, RpcStatus};
use andon_tests::Server;
use andon_tests::otlp::{self, hex};
use andon_tests::reqwest::blocking_client;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde_json::json;

fn post(
    server: &Server,
    content_type: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> andon_tests::reqwest::BlockingResponse {
    let mut req = blocking_client().post(server.http_url("/v1/traces")).header("content-type", content_type).body(body);
    for (k, v) in extra {
        req = req.header(k, v);
    }
    req.send().expect("otlp/http answers")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn protobuf_gzip_and_json_exports_come_back_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let now = otlp::now_ns();
    let proto = otlp::request("cart", 1, 20, now).encode_to_vec();
    let resp = post(&server, "application/x-protobuf", proto.clone(), &[]);
    assert_eq!(resp.status(), 200);
    let decoded = ExportTraceServiceResponse::decode(resp.body.as_slice()).unwrap();
    assert_eq!(decoded.partial_success, None, "a full success has no partial_success");

    let zipped = otlp::request("checkout", 2, 30, now).encode_to_vec();
    let resp = post(&server, "application/x-protobuf", gzip(&zipped), &[("content-encoding", "gzip")]);
    assert_eq!(resp.status(), 200);

    let json = serde_json::to_vec(&otlp::request("search", 3, 10, now)).unwrap();
    let resp = post(&server, "application/json", json, &[]);
    assert_eq!(resp.status(), 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap(), serde_json::json!({}));

    let rows = server.query("SELECT service_name, count(*), min(http_route), max(http_response_status_code) FROM spans GROUP BY 1 ORDER BY 1");
    assert_eq!(
        rows,
        vec![
            vec![json!("cart"), json!(20), json!("/cart"), json!(200)],
            vec![json!("checkout"), json!(30), json!("/cart"), json!(200)],
            vec![json!("search"), json!(10), json!("/cart"), json!(200)],
        ]
    );
    let id = hex(&otlp::trace_id(1, 4));
    let rows =
        server.query(&format!("SELECT span_id, kind, service_version, session_id FROM spans WHERE trace_id = '{id}'"));
    assert_eq!(rows, vec![vec![json!(hex(&otlp::span_id(4))), json!("server"), json!("1.2.3"), json!("s4")]]);
}

#[test]
fn json_follows_the_otlp_json_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let start = otlp::now_ns();
    // Hex ids, integer enums, 64-bit integers as strings and as numbers, unknown
    // fields at every level, lowerCamelCase keys.
    let body = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}], "futureField": 1},
            "scopeSpans": [{
                "scope": {"name": "manual", "version": "0.1"},
                "spans": [
                    {
                        "traceId": "5b8efff798038103d269b633813fc60c",
                        "spanId": "eee19b7ec3c1b174",
                        "parentSpanId": "eee19b7ec3c1b173",
                        "name": "POST /orders",
                        "kind": 3,
                        "startTimeUnixNano": start.to_string(),
                        "endTimeUnixNano": start + 1_500,
                        "attributes": [
                            {"key": "http.request.resend_count", "value": {"intValue": "2"}},
                            {"key": "browser.mobile", "value": {"boolValue": true}},
                            {"key": "custom.ratio", "value": {"doubleValue": 0.5}},
                            {"key": "custom.list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": 3}]}}}
                        ],
                        "events": [{"timeUnixNano": (start + 10).to_string(), "name": "exception",
                                    "attributes": [{"key": "exception.type", "value": {"stringValue": "TimeoutError"}},
                                                   {"key": "exception.message", "value": {"stringValue": "upstream timed out"}}]}],
                        "links": [{"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
                                   "attributes": [{"key": "link.kind", "value": {"stringValue": "retry-of"}}]}],
                        "status": {"code": 2, "message": "timeout"},
                        "someNewSpanField": {"nested": [1, 2, 3]}
                    }
                ]
            }]
        }],
        "unknownTopLevel": "ignored"
    });
    let resp = post(&server, "application/json; charset=utf-8", serde_json::to_vec(&body).unwrap(), &[]);
    assert_eq!(resp.status(), 200, "{}", resp.text());
    let rows = server.query(
        "SELECT trace_id, span_id, parent_span_id, kind, status_code, status_message, duration_ns, \
         http_request_resend_count, browser_mobile, attributes['custom.ratio'], attributes['custom.list'], \
         exception_type, exception_message, scope_name, links[1]['trace_id'], links[1]['attributes']['link.kind'] FROM spans",
    );
    assert_eq!(
        rows,
        vec![vec![
            json!("5b8efff798038103d269b633813fc60c"),
            json!("eee19b7ec3c1b174"),
            json!("eee19b7ec3c1b173"),
            json!("client"),
            json!("error"),
            json!("timeout"),
            json!(1_500),
            json!(2),
            json!(true),
            json!("0.5"),
            json!("[\"a\",3]"),
            json!("TimeoutError"),
            json!("upstream timed out"),
            json!("manual"),
            json!("0102030405060708090a0b0c0d0e0f10"),
            json!("retry-of"),
        ]]
    );
}

#[test]
fn empty_requests_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let resp = post(&server, "application/x-protobuf", Vec::new(), &[]);
    assert_eq!(resp.status(), 200);
    assert!(resp.body.is_empty(), "an empty ExportTraceServiceResponse encodes to nothing");
    let resp = post(&server, "application/json", b"{}".to_vec(), &[]);
    assert_eq!(resp.status(), 200);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 0);
}

#[test]
fn malformed_payloads_get_400_with_a_status_in_the_request_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let resp = post(&server, "application/x-protobuf", vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 1, 2], &[]);
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(resp.body.as_slice()).expect("google.rpc.Status body");
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let resp = post(&server, "application/json", b"{\"resourceSpans\": [ {".to_vec(), &[]);
    assert_eq!(resp.status(), 400);
    let body = resp.json().unwrap();
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("json"), "{body}");

    let resp = post(
        &server,
        "application/json",
        b"{\"resourceSpans\": [{\"scopeSpans\": [{\"spans\": [{\"traceId\": \"zz\"}]}]}]}".to_vec(),
        &[],
    );
    assert_eq!(resp.status(), 400, "a non-hex id is malformed JSON");

    let resp = post(&server, "application/x-protobuf", b"not gzip".to_vec(), &[("content-encoding", "gzip")]);
    assert_eq!(resp.status(), 400);

    let resp = post(&server, "text/plain", b"hello".to_vec(), &[]);
    assert_eq!(resp.status(), 415);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 0, "nothing malformed was stored");
}

#[test]
fn bodies_over_the_limit_after_decompression_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_OTLP_MAX_REQUEST_BYTES", "65536")]);
    // 1 MiB of zeros gzips to about a kilobyte: small on the wire, large inside.
    let bomb = gzip(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 65_536);
    let resp = post(&server, "application/x-protobuf", bomb, &[("content-encoding", "gzip")]);
    assert_eq!(resp.status(), 413);
    let status = RpcStatus::decode(resp.body.as_slice()).unwrap();
    assert_eq!(status.code, 8, "RESOURCE_EXHAUSTED");
    assert!(status.details.is_empty(), "no RetryInfo: not retryable");
    assert!(resp.headers.get("retry-after").is_none());

    let plain = vec![0u8; 70_000];
    let resp = post(&server, "application/x-protobuf", plain, &[]);
    assert_eq!(resp.status(), 413);

    let ok = otlp::request("cart", 9, 10, otlp::now_ns()).encode_to_vec();
    assert_eq!(post(&server, "application/x-protobuf", ok, &[]).status(), 200, "the server still works");
}

/// Decode amplification: each row copies its resource's attributes, so a
/// request small on the wire can decode into far more memory than the whole
/// in-flight budget. It is refused as too large (not retryable), by what it
/// would build, as is a request with more spans than a request may carry.
#[test]
fn a_request_that_decodes_into_more_than_the_budget_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_OTLP_MAX_REQUEST_SPANS", "5000")]);
    let mut req = otlp::request("cart", 11, 2000, otlp::now_ns());
    // 40 kB of resource attributes, copied into 2000 rows: 80 MB decoded.
    req.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(otlp::kv("k8s.pod.annotations", &"x".repeat(40_000)));
    let body = req.encode_to_vec();
    assert!(body.len() < 1 << 20, "{} bytes on the wire", body.len());
    let resp = post(&server, "application/x-protobuf", body, &[]);
    assert_eq!(resp.status(), 413);
    let status = RpcStatus::decode(resp.body.as_slice()).unwrap();
    assert_eq!(status.code, 8, "RESOURCE_EXHAUSTED");
    assert!(status.message.contains("decoded"), "{}", status.message);

    let many = otlp::request("cart", 12, 5001, otlp::now_ns()).encode_to_vec();
    let resp = post(&server, "application/x-protobuf", many, &[]);
    assert_eq!(resp.status(), 413);
    let status = RpcStatus::decode(resp.body.as_slice()).unwrap();
    assert!(status.message.contains("5001 spans"), "{}", status.message);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 0);

    let ok = otlp::request("cart", 13, 5000, otlp::now_ns()).encode_to_vec();
    assert_eq!(post(&server, "application/x-protobuf", ok, &[]).status(), 200);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 5000);
}

#[test]
fn invalid_spans_are_reported_as_partial_success() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut req = otlp::request("cart", 4, 5, otlp::now_ns());
    let spans = &mut req.resource_spans[0].scope_spans[0].spans;
    spans[1].trace_id = vec![0; 16];
    spans[3].span_id = vec![1, 2, 3];
    let resp = post(&server, "application/x-protobuf", req.encode_to_vec(), &[]);
    assert_eq!(resp.status(), 200);
    let partial = ExportTraceServiceResponse::decode(resp.body.as_slice()).unwrap().partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("trace_id") && partial.error_message.contains("span_id"),
        "{}",
        partial.error_message
    );

    let resp = post(&server, "application/json", serde_json::to_vec(&req).unwrap(), &[("x-scope-orgid", "json")]);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json().unwrap()["partialSuccess"]["rejectedSpans"], 2);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 3);
}

#[test]
fn retried_spans_are_stored_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let req = otlp::request("cart", 5, 50, otlp::now_ns()).encode_to_vec();
    for _ in 0..3 {
        assert_eq!(post(&server, "application/x-protobuf", req.clone(), &[]).status(), 200);
    }
    assert_eq!(server.count("SELECT count(*) FROM spans"), 50);
    assert_eq!(server.count("SELECT count(DISTINCT span_id) FROM spans"), 50);
    let metrics = blocking_client().get(server.api_url("/metrics")).send().unwrap().text();
    assert!(metrics.contains("andon_spans_accepted_total 50\n"), "{metrics}");
    assert!(metrics.contains("andon_spans_rejected_total{reason=\"duplicate\"} 100\n"), "{metrics}");
}

/// Four clients push a burst many times the store's buffer: each export
/// waits for a flush to make room instead of being refused, and every span is
/// stored once. With the wait off (`otlp.overload_wait_ms = 0`) the same burst
/// is refused in part, as it was before exports waited.
#[test]
fn a_burst_past_the_store_buffer_waits_for_flushes_instead_of_being_refused() {
    let burst = |wait_ms: &str| -> (u64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with_env(
            dir.path(),
            &[
                ("ANDON_STORAGE_MAX_BUFFER_BYTES", "65536"),
                ("ANDON_STORAGE_FLUSH_BYTES", "65536"),
                ("ANDON_OTLP_OVERLOAD_WAIT_MS", wait_ms),
            ],
        );
        let refused: u64 = std::thread::scope(|s| {
            let clients: Vec<_> = (0..4u64)
                .map(|c| {
                    let server = &server;
                    s.spawn(move || {
                        let mut refused = 0;
                        for k in 0..10 {
                            let req = otlp::request("cart", 100 * c + k, 200, otlp::now_ns()).encode_to_vec();
                            match post(server, "application/x-protobuf", req, &[]).status().as_u16() {
                                200 => {}
                                503 => refused += 1,
                                other => panic!("export answered {other}"),
                            }
                        }
                        refused
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).sum()
        });
        (refused, server.count("SELECT count(*) FROM spans"))
    };
    assert_eq!(burst("2000"), (0, 40 * 200), "(refused exports, spans stored) with the wait");
    let (refused, stored) = burst("0");
    assert!(refused > 0, "without the wait the burst is refused in part");
    assert_eq!(stored, (40 - refused as i64) * 200, "what was taken is stored");
}

#[test]
fn overload_answers_503_with_retry_after_and_keeps_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_OTLP_MAX_INFLIGHT_BYTES", "4096")]);
    // A slow client holds most of the in-flight budget: it declares 1000 bytes and
    // sends a few.
    let mut slow = std::net::TcpStream::connect(&server.http).unwrap();
    write!(slow, "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n\n\x10").unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let req = otlp::request("cart", 6, 3, otlp::now_ns()).encode_to_vec();
    let resp = post(&server, "application/x-protobuf", req.clone(), &[]);
    assert_eq!(resp.status(), 503);
    assert!(resp.headers.get("retry-after").is_some(), "retryable: Retry-After is set");
    let status = RpcStatus::decode(resp.body.as_slice()).unwrap();
    assert_eq!(status.code, 14, "UNAVAILABLE");
    let info = status.details.iter().find(|d| d.type_url.ends_with("RetryInfo")).expect("RetryInfo detail");
    assert!(RetryInfo::decode(info.value.as_slice()).unwrap().retry_delay.is_some());
    assert_eq!(server.count("SELECT count(*) FROM spans"), 0);

    // Once the slow request goes away, the retry is accepted.
    drop(slow);
    assert!(andon_tests::wait_for(Duration::from_secs(10), || {
        post(&server, "application/x-protobuf", req.clone(), &[]).status() == 200
    }));
    assert_eq!(server.count("SELECT count(*) FROM spans"), 3);
}

#[test]
fn tenants_see_only_their_own_spans() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let now = otlp::now_ns();
    post(
        &server,
        "application/x-protobuf",
        otlp::request("a-svc", 7, 4, now).encode_to_vec(),
        &[("x-scope-orgid", "team-a")],
    );
    post(
        &server,
        "application/x-protobuf",
        otlp::request("b-svc", 8, 6, now).encode_to_vec(),
        &[("x-scope-orgid", "team-b")],
    );
    post(&server, "application/x-protobuf", otlp::request("d-svc", 9, 1, now).encode_to_vec(), &[]);
    assert_eq!(
        server.query_as(Some("team-a"), "SELECT tenant, service_name, count(*) FROM spans GROUP BY 1, 2"),
        vec![vec![json!("team-a"), json!("a-svc"), json!(4)]]
    );
    assert_eq!(server.query_as(Some("team-b"), "SELECT count(*) FROM spans"), vec![vec![json!(6)]]);
    assert_eq!(server.query("SELECT tenant, count(*) FROM spans GROUP BY 1"), vec![vec![json!("default"), json!(1)]]);
    let resp = post(&server, "application/x-protobuf", Vec::new(), &[("x-scope-orgid", "../etc")]);
    assert_eq!(resp.status(), 400, "tenant ids become directory names");
}

#[test]
fn the_query_api_is_read_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start_with_env(dir.path(), &[("ANDON_API_QUERY_MAX_ROWS", "7"), ("ANDON_API_QUERY_TIMEOUT_SECS", "1")]);
    post(&server, "application/x-protobuf", otlp::request("cart", 10, 20, otlp::now_ns()).encode_to_vec(), &[]);
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO spans SELECT * FROM spans",
        "DROP TABLE spans",
        "COPY (SELECT 1) TO '/tmp/andon-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let (status, body) = server.query_raw(None, sql);
        assert_eq!(status, 400, "{sql} must be refused, got {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "errors are lowercase: {msg}");
    }
    let (status, body) = server.query_raw(None, "SELECT * FROM nope");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = server.query_raw(None, "SELECT span_id FROM spans");
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().unwrap().len(), 7);
    assert_eq!(body["truncated"], true);

    let started = std::time::Instant::now();
    let (status, body) = server.query_raw(None, "SELECT sum(value) FROM generate_series(1, 100000000000)");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("time limit"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "the query was cut off");
    assert_eq!(server.count("SELECT count(*) FROM spans"), 20, "the server still answers");
}

#[test]
fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let get = |p: &str| blocking_client().get(server.api_url(p)).send().unwrap();
    assert_eq!(get("/healthz").status(), 200);
    assert_eq!(get("/readyz").status(), 200);
    post(&server, "application/x-protobuf", otlp::request("cart", 11, 5, otlp::now_ns()).encode_to_vec(), &[]);
    post(&server, "application/x-protobuf", vec![0xff], &[]);
    server.count("SELECT count(*) FROM spans");
    let m = get("/metrics").text();
    for needle in [
        "andon_spans_received_total 5\n",
        "andon_spans_accepted_total 5\n",
        "andon_export_requests_refused_total{reason=\"malformed\"} 1\n",
        "andon_wal_fsync_seconds_count ",
        "andon_query_seconds_count 1\n",
        "andon_wal_size_bytes ",
        "andon_segments ",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle:?}:\n{m}");
    }
}
