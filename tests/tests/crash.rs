//! Kill -9 in the middle of a stream of exports, again and again: every
//! acknowledged span must be there afterwards, exactly once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, otlp};
use prost::Message;

const SPANS_PER_REQUEST: u64 = 200;
const KILLS: u64 = 8;

#[test]
fn every_acknowledged_span_survives_kill_dash_nine_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent flushes so kills land during segment writes and checkpoints too.
    let env = [("ANDON_STORAGE_FLUSH_INTERVAL_SECS", "1"), ("ANDON_STORAGE_FLUSH_BYTES", "65536")];
    let mut server = Server::start_with_env(dir.path(), &env);
    let endpoint = Arc::new(Mutex::new(server.http_url("/v1/traces")));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));

    let client = {
        let (endpoint, stop, acked) = (Arc::clone(&endpoint), Arc::clone(&stop), Arc::clone(&acked));
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut retries = 0u64;
            while !stop.load(Ordering::Acquire) {
                let body = otlp::request("crashy", n, SPANS_PER_REQUEST, otlp::now_ns()).encode_to_vec();
                // A retrying exporter: the same request until it is acknowledged.
                loop {
                    let url = endpoint.lock().unwrap().clone();
                    let resp = blocking_client()
                        .post(url)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send();
                    match resp {
                        Ok(r) if r.status() == 200 => break,
                        Ok(r) => assert!(matches!(r.status().as_u16(), 429 | 503), "not retryable: {}", r.status()),
                        Err(_) => {}
                    }
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                acked.fetch_add(1, Ordering::AcqRel);
                n += 1;
            }
            (n, retries)
        })
    };

    for round in 0..KILLS {
        let before = acked.load(Ordering::Acquire);
        // Kill after a varying number of acknowledged exports, so kills land in
        // different phases: mid-append, mid-flush, mid-checkpoint.
        let wanted = before + 2 + (round * 7) % 11;
        assert!(
            andon_tests::wait_for(Duration::from_secs(60), || acked.load(Ordering::Acquire) >= wanted),
            "exports stalled in round {round}"
        );
        server.kill();
        server.respawn();
        *endpoint.lock().unwrap() = server.http_url("/v1/traces");
    }
    let before = acked.load(Ordering::Acquire);
    assert!(andon_tests::wait_for(Duration::from_secs(60), || acked.load(Ordering::Acquire) >= before + 5));
    stop.store(true, Ordering::Release);
    let (requests, retries) = client.join().unwrap();
    eprintln!("{requests} requests acknowledged, {retries} retries across {KILLS} kills");
    assert!(retries > 0, "the kills must have interrupted exports");

    let expected = (requests * SPANS_PER_REQUEST) as i64;
    let check = |server: &Server| {
        let rows = server
            .query("SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans WHERE service_name = 'crashy'");
        assert_eq!(rows[0][0], serde_json::json!(expected), "every acknowledged span is stored, once");
        assert_eq!(rows[0][1], serde_json::json!(expected));
    };
    check(&server);
    // And after a clean restart, from segments alone.
    server.restart();
    check(&server);
}
