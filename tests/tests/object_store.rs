//! Segments in S3-compatible storage: a real S3 API server (moto, from PyPI, in
//! server mode) stands in for the bucket. Spans go in over OTLP, their
//! segments land in the bucket, and a server killed with SIGKILL, whose local
//! copies of segments are then deleted, serves every span again from the bucket
//! alone. An outage of the bucket delays flushes and loses nothing. A server
//! started on an empty data directory over the bucket (a new machine) serves
//! the spans, rollups and sessions the bucket holds, and stores after them.

use std::path::Path;
use std::time::Duration;

use andon_tests::moto::{Moto, free_port, python_with_moto};
use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, otlp, simulate, wait_for};
use prost::Message;

const BUCKET: &str = "andon-spans";
const SPANS_PER_REQUEST: u64 = 300;

fn export(server: &Server, seed: u64) {
    let body = otlp::request("bucketed", seed, SPANS_PER_REQUEST, otlp::now_ns()).encode_to_vec();
    let r = blocking_client()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .expect("export answered");
    assert_eq!(r.status(), 200, "export acknowledged");
}

fn stored(server: &Server) -> (i64, i64) {
    let rows =
        server.query("SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans WHERE service_name = 'bucketed'");
    (rows[0][0].as_i64().unwrap_or(-1), rows[0][1].as_i64().unwrap_or(-1))
}

/// A gauge from `/metrics`.
fn gauge(server: &Server, name: &str) -> f64 {
    let text = blocking_client().get(server.api_url("/metrics")).send().map(|r| r.text()).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn local_parquet(dir: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

#[test]
fn segments_live_in_the_bucket_and_survive_a_kill_and_a_lost_cache() {
    let Some(python) = python_with_moto() else { return };
    let mut moto = Moto::start(&python, free_port());
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let aws = moto.env();
    let mut env = vec![
        ("ANDON_STORAGE_OBJECT_STORE", "s3://andon-spans/prod/eu"),
        // No cache to speak of: queries after the restart must read the bucket.
        ("ANDON_STORAGE_OBJECT_CACHE_BYTES", "0"),
        ("ANDON_STORAGE_FLUSH_INTERVAL_SECS", "1"),
    ];
    env.extend(aws.iter().map(|(k, v)| (*k, v.as_str())));
    let mut server = Server::start_with_env(&data, &env);

    // Flushed segments land in the bucket under the prefix, as Parquet.
    for seed in 0..4 {
        export(&server, seed);
    }
    let sent = |requests: u64| (requests * SPANS_PER_REQUEST) as i64;
    assert!(
        wait_for(Duration::from_secs(60), || gauge(&server, "andon_buffered_spans") == 0.0),
        "the exports are flushed"
    );
    let objects = moto.list(BUCKET, "prod/eu/segments/");
    assert!(objects.iter().all(|(k, _)| k.starts_with("prod/eu/segments/default/") && k.ends_with(".parquet")));
    assert!(objects.iter().all(|(_, size)| *size > 0));
    assert_eq!(stored(&server), (sent(4), sent(4)));

    assert!(gauge(&server, "andon_segment_cache_bytes") > 0.0, "fresh segments stay cached for their grace");

    // The bucket goes away for a while: exports are still acknowledged (the WAL
    // has them), and the flushes that fail meanwhile keep them.
    let port = moto.port;
    moto.kill();
    for seed in 4..8 {
        export(&server, seed);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored(&server), (sent(8), sent(8)), "spans are served from the buffer during the outage");
    assert_eq!(gauge(&server, "andon_buffered_spans"), sent(4) as f64, "no flush completes without the bucket");
    // Back, but empty (moto keeps its objects in memory): the segments of the
    // first four exports are gone with it, so this part counts what comes after.
    moto = Moto::start(&python, port);
    moto.create_bucket(BUCKET);
    assert!(
        wait_for(Duration::from_secs(240), || gauge(&server, "andon_buffered_spans") == 0.0),
        "the flush retried after the outage uploads the buffered spans"
    );
    assert!(!moto.list(BUCKET, "prod/eu/segments/").is_empty());
    for seed in 8..12 {
        export(&server, seed);
    }

    // SIGKILL, then the local copies of segments are lost too: only the WAL (for
    // whatever was not yet uploaded) and the bucket remain.
    server.kill();
    let cached = local_parquet(&data.join("segments"));
    assert!(cached > 0, "fresh segments were cached locally");
    std::fs::remove_dir_all(data.join("segments")).expect("local segments deleted");
    server.respawn();
    let bucketed = moto.list(BUCKET, "prod/eu/segments/");
    assert!(!bucketed.is_empty());
    // Everything acknowledged after the bucket came back is served, once,
    // with the spans of the outage: 8 of the 12 exports (the first four were
    // in the bucket that moto's restart emptied).
    assert!(
        wait_for(Duration::from_secs(60), || stored(&server) == (sent(8), sent(8))),
        "every span acknowledged since the bucket came back is served exactly once, got {:?}",
        stored(&server)
    );
    // And a lookup by trace id reads the bucket's footers and pages.
    let trace = otlp::hex(&otlp::trace_id(9, 7));
    let rows = server.query(&format!("SELECT count(*) FROM spans WHERE trace_id = '{trace}'"));
    assert_eq!(rows[0][0], serde_json::json!(1));
    // The replayed WAL was flushed into the bucket at the start.
    assert_eq!(gauge(&server, "andon_buffered_spans"), 0.0);
    server.stop();
}

/// Rows that must read the same from any machine serving the bucket: the
/// shop's spans, their rollups and their sessions. Rollups are counted by
/// cell key: compaction merges the cells a key has in several files, so how
/// many rows hold them depends on whether it has run yet.
fn shop_answers(server: &Server) -> Vec<Vec<serde_json::Value>> {
    [
        "SELECT count(*), count(DISTINCT trace_id) FROM spans WHERE service_name <> 'bucketed'",
        "SELECT count(*), sum(r), sum(e) FROM (SELECT minute, service_name, operation, kind, sum(requests) AS r, \
         sum(errors) AS e FROM span_metrics WHERE service_name <> 'bucketed' GROUP BY 1, 2, 3, 4)",
        "SELECT count(DISTINCT session_id), sum(calls), sum(errors), sum(retries) FROM sessions \
         WHERE service_name <> 'bucketed'",
    ]
    .into_iter()
    .map(|sql| server.query(sql).remove(0))
    .collect()
}

/// The flush numbers of the segments in the bucket (the first 20 digits of
/// each object's name).
fn flushes(moto: &Moto, prefix: &str) -> Vec<u64> {
    moto.list(BUCKET, &format!("{prefix}segments/"))
        .iter()
        .filter_map(|(k, _)| k.rsplit('/').next()?.get(..20)?.parse().ok())
        .collect()
}

#[test]
fn a_new_machine_serves_the_spans_rollups_and_sessions_in_the_bucket() {
    let Some(python) = python_with_moto() else { return };
    let moto = Moto::start(&python, free_port());
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    simulate(&shop, "clean", 1, 1, 7);
    let data = dir.path().join("data");
    let aws = moto.env();
    let mut env = vec![
        ("ANDON_STORAGE_OBJECT_STORE", "s3://andon-spans/fleet"),
        ("ANDON_STORAGE_FLUSH_INTERVAL_SECS", "1"),
        ("ANDON_STORAGE_SESSIONS_SNAPSHOT_SECS", "1"),
    ];
    env.extend(aws.iter().map(|(k, v)| (*k, v.as_str())));
    let mut server = Server::start_with_env(&data, &env);
    server.import(&shop.join("spans.jsonl"));
    assert!(
        wait_for(Duration::from_secs(120), || gauge(&server, "andon_buffered_spans") == 0.0),
        "the import is flushed"
    );
    let before = shop_answers(&server);
    assert!(before[0][0].as_i64().unwrap_or(0) > 100_000, "an hour of the shop is stored: {before:?}");
    assert!(before[2][0].as_i64().unwrap_or(0) > 1_000, "its sessions are kept: {before:?}");
    server.stop();

    // The rollups and sessions have their copies in the bucket, beside the
    // segments, under the same names as on local disk.
    let metrics = moto.list(BUCKET, "fleet/metrics/default/");
    let segments = moto.list(BUCKET, "fleet/segments/default/");
    assert_eq!(metrics.len(), segments.len(), "a rollup for every segment: {metrics:?}");
    for (k, _) in &metrics {
        let local = data.join(k.strip_prefix("fleet/").unwrap_or(k));
        assert!(local.exists(), "{k} mirrors a local rollup");
    }
    let sessions = moto.list(BUCKET, "fleet/sessions/");
    assert!(sessions.iter().any(|(k, _)| k.starts_with("fleet/sessions/default/") && k.ends_with(".parquet")));
    assert!(sessions.iter().any(|(k, _)| k.starts_with("fleet/sessions/open/") && k.ends_with(".json")));

    // A new machine: the same bucket, nothing on local disk.
    std::fs::remove_dir_all(&data).expect("data directory deleted");
    server.respawn();
    assert_eq!(shop_answers(&server), before, "the new machine serves what the old one did, from its first query");

    // It stores new spans after the bucket's flushes, never over them.
    let newest = flushes(&moto, "fleet/").into_iter().max().unwrap_or(0);
    export(&server, 1);
    assert!(
        wait_for(Duration::from_secs(60), || gauge(&server, "andon_buffered_spans") == 0.0),
        "the export is flushed"
    );
    assert_eq!(stored(&server), (SPANS_PER_REQUEST as i64, SPANS_PER_REQUEST as i64));
    let after = flushes(&moto, "fleet/");
    assert!(after.iter().any(|f| *f > newest), "the new segment's flush follows the bucket's newest, {newest}");
    assert_eq!(shop_answers(&server), before);
    server.stop();
}
