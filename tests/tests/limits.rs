//! Limits that hold under hostile input, through the real binary: a query
//! that would need gigabytes is refused within the query memory budget and
//! the server goes on serving; clients that send their headers or bodies
//! slowly, or without a length, hold up no other exporter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use andon_tests::Server;
use andon_tests::reqwest::blocking_client;

/// The process's peak resident memory, in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

#[test]
fn a_query_that_needs_gigabytes_is_refused_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget_mb = 64;
    let server = Server::start_with_env(
        dir.path(),
        &[
            ("ANDON_API_QUERY_MEMORY_BYTES", &(budget_mb << 20).to_string()),
            ("ANDON_API_QUERY_SPILL_BYTES", &(32u64 << 20).to_string()),
            ("ANDON_API_QUERY_TIMEOUT_SECS", "300"),
        ],
    );
    assert_eq!(server.export_spans(1, 5).0, 200);
    let before = peak_rss_mb(server.pid());
    // Forty million distinct 1.6 kB strings: about 64 GB to count them.
    let sql = "SELECT count(DISTINCT repeat(CAST(value AS VARCHAR), 200)) FROM generate_series(1, 40000000)";
    let (status, body) = server.query_raw(None, sql);
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("more memory than the query budget of 64 MB"), "{error}");
    // Nothing of its spill files is left behind.
    let spill = dir.path().join("spill");
    fn bytes(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .map(|e| if e.path().is_dir() { bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
                .sum()
        })
    }
    let gone = andon_tests::wait_for(Duration::from_secs(20), || bytes(&spill) == 0);
    assert!(gone, "{} bytes of spill files left in {}", bytes(&spill), spill.display());
    let peak = peak_rss_mb(server.pid());
    eprintln!("peak RSS {before} MB before the query, {peak} MB after");
    assert!(peak < before + budget_mb + 256, "the process grew to {peak} MB (from {before} MB)");
    // And the server goes on serving, queries included.
    assert_eq!(server.export_spans(2, 5).0, 200);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 10);
}

#[test]
fn a_query_answer_is_cut_at_its_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_API_QUERY_MAX_RESPONSE_BYTES", "1048576")]);
    // A thousand rows of 10 kB each: ten times the limit, well under the row cap.
    let (status, body) = server.query_raw(None, "SELECT repeat('x', 10000) AS pad FROM generate_series(1, 1000)");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], true, "{}", body["truncated"]);
    let rows = body["rows"].as_array().unwrap().len();
    assert!(rows > 0 && rows <= 105, "{rows} rows of 10 kB under a 1 MB limit");
}

#[test]
fn slow_clients_hold_up_no_other_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // Bodies without a length that never finish: before, each held the whole
    // request limit of in-flight memory, and one made every exporter get 503.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&server.http).unwrap();
            write!(
                s,
                "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
                 Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n",
                server.http
            )
            .unwrap();
            s
        })
        .collect();
    // Headers that never finish.
    let mut half = TcpStream::connect(&server.http).unwrap();
    write!(half, "POST /v1/traces HTTP/1.1\r\nHost: {}\r\n", server.http).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for seed in 0..5 {
        assert_eq!(server.export_spans(seed, 5).0, 200, "an exporter beside the slow clients was refused");
    }

    // The half-sent headers are cut off after the header deadline.
    half.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = half.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(started.elapsed() < Duration::from_secs(15), "the connection stayed open {:?}", started.elapsed());
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // The stalled bodies are answered 408 once the body deadline passes.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let metrics = blocking_client().get(server.api_url("/metrics")).send().unwrap().text();
    let line = r#"andon_export_requests_refused_total{reason="timeout"} 8"#;
    assert!(
        metrics.contains(line),
        "{}",
        metrics.lines().filter(|l| l.contains("refused")).collect::<Vec<_>>().join("\n")
    );
}
