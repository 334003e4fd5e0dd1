//! The `andon` command line: `--version`, `query` in every format, config errors.

use std::process::Command;

use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, andon_bin, otlp};
use prost::Message;

fn andon(args: &[&str]) -> std::process::Output {
    Command::new(andon_bin()).args(args).output().unwrap()
}

#[test]
fn version_and_help() {
    let out = andon(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("andon {}", env!("CARGO_PKG_VERSION")));
    let out = andon(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--data-dir", "--otlp-grpc-addr", "--otlp-http-addr", "--api-addr", "--listen"] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn query_prints_table_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let body = otlp::request("cart", 1, 3, otlp::now_ns()).encode_to_vec();
    let resp = blocking_client()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let api = format!("http://{}", server.api);
    let sql = "SELECT service_name, count(*) AS n FROM spans GROUP BY 1";
    let out = andon(&["query", "--server", &api, sql]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| service_name | n |") && table.contains("| cart         | 3 |"), "{table}");
    let out = andon(&["query", "--server", &api, "--format", "csv", sql]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "service_name,n\ncart,3\n");
    let out = andon(&["query", "--server", &api, "--format", "json", sql]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows, serde_json::json!([{"service_name": "cart", "n": 3}]));

    let out = andon(&["query", "--server", &api, "DELETE FROM spans"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "), "the server's error is shown");
}

#[test]
fn a_bad_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("andon.toml");
    std::fs::write(&cfg, "[storage]\ndurability = \"maybe\"\n").unwrap();
    let out =
        andon(&["serve", "--config", cfg.to_str().unwrap(), "--data-dir", dir.path().join("d").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.durability"), "{err}");
    assert!(!dir.path().join("d").exists(), "nothing was created");
}
