//! pyarrow, polars and DuckDB read the Parquet segments directly and count the same
//! spans per service as the SQL API.

use std::collections::BTreeMap;
use std::process::Command;

use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, otlp};
use prost::Message;

#[test]
fn python_readers_agree_with_sql_per_service() {
    let python = match std::env::var("ANDON_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            assert!(std::env::var_os("CI").is_none(), "ANDON_TEST_PYTHON must be set in CI");
            eprintln!("skipping: ANDON_TEST_PYTHON is not set");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let now = otlp::now_ns();
    let hour = 3_600 * 1_000_000_000;
    // Spread over two hours and two tenants, so there are several segment files.
    for (i, (svc, n, tenant, start)) in [
        ("cart", 120, "default", now - hour),
        ("search", 300, "default", now),
        ("cart", 30, "default", now),
        ("payments", 77, "other", now),
    ]
    .into_iter()
    .enumerate()
    {
        let body = otlp::request(svc, 100 + i as u64, n, start).encode_to_vec();
        let resp = blocking_client()
            .post(server.http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-scope-orgid", tenant)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A clean stop flushes everything into segments.
    server.restart();
    let mut sql: BTreeMap<String, i64> = BTreeMap::new();
    for tenant in ["default", "other"] {
        for row in server.query_as(Some(tenant), "SELECT service_name, count(*) FROM spans GROUP BY 1") {
            *sql.entry(row[0].as_str().unwrap().to_owned()).or_default() += row[1].as_i64().unwrap();
        }
    }
    assert_eq!(sql.values().sum::<i64>(), 527);

    let script = andon_tests::workspace_root().join("tests/python/interop.py");
    let out = Command::new(&python).arg(script).arg(dir.path().join("segments")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readers: BTreeMap<String, BTreeMap<String, i64>> = serde_json::from_slice(&out.stdout).unwrap();
    for reader in ["pyarrow", "polars", "duckdb"] {
        assert_eq!(readers.get(reader), Some(&sql), "{reader} disagrees with the SQL API");
    }
}
