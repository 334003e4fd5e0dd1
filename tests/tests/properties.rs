//! Property-based tests of what a client reaches: OTLP/HTTP bodies (protobuf
//! and JSON, plain and gzip, arbitrary and mutated from valid requests) through
//! the real receiver and store, WAL files of arbitrary content through the
//! store's replay, and arbitrary JSON bodies on every API endpoint that takes
//! one, through the real binary. Nothing may panic, malformed input gets a
//! 4xx answer, and the server goes on serving.
//!
//! `ANDON_PROPTEST_CASES` sets the cases per property (64 by default, as in
//! `tests/run`); `RELIABILITY.md` reports a long run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;

use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_store::{Durability, Store, StoreConfig};
use andon_tests::{Server, otlp};
use axum::body::Body;
use http::Request;
use proptest::prelude::*;
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

fn cases() -> u32 {
    std::env::var("ANDON_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The OTLP/HTTP receiver over a real store, in process.
struct Receiver {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

impl Receiver {
    fn new() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.durability = Durability::None;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store = rt.block_on(async { Store::open(cfg) }).unwrap();
        let config = IngestConfig { max_request_bytes: 256 << 10, ..IngestConfig::default() };
        let ingestor = Arc::new(Ingestor::new(Arc::new(store), Arc::new(SystemClock), config));
        Receiver { _dir: dir, rt, router: andon_ingest::http::router(ingestor) }
    }

    fn post(&self, content_type: &str, gzipped: bool, body: Vec<u8>) -> u16 {
        let mut req = Request::post("/v1/traces").header("content-type", content_type);
        if gzipped {
            req = req.header("content-encoding", "gzip");
        }
        let req = req.body(Body::from(body)).unwrap();
        self.rt.block_on(self.router.clone().oneshot(req)).unwrap().status().as_u16()
    }
}

/// A valid request, encoded, with some of its bytes overwritten.
fn mutated(encoded: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = encoded.len();
    prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |edits| {
        let mut b = encoded.clone();
        for (i, v) in edits {
            b[i] = v;
        }
        b
    })
}

fn answered(status: u16) -> bool {
    // 200 (whole or partial success), or a client error OTLP defines.
    matches!(status, 200 | 400 | 413 | 415)
}

#[test]
fn otlp_http_bodies_never_panic_and_get_a_client_answer() {
    let rx = Receiver::new();
    let valid = otlp::request("cart", 3, 6, otlp::now_ns());
    let proto = valid.encode_to_vec();
    let json_body = serde_json::to_vec(&valid).unwrap();
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(bytes in prop::collection::vec(any::<u8>(), 0..4096),
                        flipped in mutated(proto.clone()),
                        json_flipped in mutated(json_body.clone()),
                        gz in any::<bool>())| {
        let wrap = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        for (ct, body) in [
            ("application/x-protobuf", wrap(bytes.clone())),
            ("application/json", wrap(bytes.clone())),
            ("application/x-protobuf", wrap(flipped.clone())),
            ("application/json", wrap(json_flipped.clone())),
        ] {
            let status = rx.post(ct, gz, body);
            prop_assert!(answered(status), "{ct}: {status}");
        }
        // Claimed gzip that is not: a client error, not a crash.
        let status = rx.post("application/x-protobuf", true, bytes.clone());
        prop_assert!(answered(status), "bad gzip: {status}");
    });
    // After all that, a valid request is still stored.
    assert_eq!(rx.post("application/x-protobuf", false, proto), 200);
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("2026-11-20T12:00:00Z"),
            Just("yesterday"),
            Just("SELECT 1"),
            Just("latency_regression"),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,12}",
                    Just("from".to_owned()),
                    Just("to".to_owned()),
                    Just("sql".to_owned()),
                    Just("start".to_owned()),
                    Just("end".to_owned()),
                    Just("version".to_owned()),
                    Just("service".to_owned())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn api_json_bodies_never_get_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_API_OPENED_PER_MINUTE", "0")]);
    let client = andon_tests::reqwest::blocking_client();
    let endpoints = [
        "/api/v1/query",
        "/api/v1/analyze",
        "/api/v1/incidents",
        "/api/v1/changes",
        "/api/v1/tickets/t-nope/approve",
        "/api/v1/tickets/t-nope/reject",
    ];
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(body in json_value(), raw in "\\PC{0,200}", which in 0..endpoints.len())| {
        let url = server.api_url(endpoints[which]);
        for payload in [serde_json::to_vec(&body).unwrap(), raw.clone().into_bytes()] {
            let resp = client
                .post(url.clone())
                .header("content-type", "application/json")
                .body(payload.clone())
                .send()
                .unwrap();
            let status = resp.status().as_u16();
            // A well-formed analysis or query may be slow or refused for its
            // size; nothing a client sends may be an internal error.
            prop_assert!(status < 500 || status == 503, "{} {} -> {status} {}",
                endpoints[which], String::from_utf8_lossy(&payload), resp.text());
            if status >= 400 {
                let err: Value = resp.json().unwrap_or(Value::Null);
                prop_assert!(err["error"].is_string(), "{} -> {status} without an error message", endpoints[which]);
            }
        }
    });
    let (status, _) = server.get_json("/api/v1/findings");
    assert_eq!(status, 200, "the server still serves");
}

#[test]
fn wal_files_of_any_content_never_stop_the_store_from_opening() {
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(tail in prop::collection::vec(any::<u8>(), 0..2048), magic in 0..3u8, framed in any::<bool>())| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        let mut bytes = match magic {
            0 => Vec::new(),
            1 => b"ANDNWAL1".to_vec(),
            _ => b"ANDNWAL2".to_vec(),
        };
        if framed {
            // A record whose checksum holds: a logged request of any content,
            // which replay converts again.
            let tenant = andon_model::Tenant::default_tenant();
            let mut payload = 1u64.to_le_bytes().to_vec();
            payload.extend_from_slice(&(tenant.as_str().len() as u16).to_le_bytes());
            payload.extend_from_slice(tenant.as_str().as_bytes());
            payload.push(1);
            // The receivers' recipe (no limits), all rows new, and the body.
            payload.extend_from_slice(&26u16.to_le_bytes());
            payload.push(1);
            payload.extend_from_slice(&[0u8; 25]);
            payload.extend_from_slice(&0u32.to_le_bytes());
            payload.extend_from_slice(&tail);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        } else {
            bytes.extend_from_slice(&tail);
        }
        std::fs::write(dir.path().join("wal").join("00000000000000000001.wal"), &bytes).unwrap();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.durability = Durability::None;
        cfg.reconvert = Some(Arc::new(andon_ingest::OtlpReconvert));
        let store = Store::open(cfg);
        prop_assert!(store.is_ok(), "{:?}", store.err());
    });
}
