//! `andon import`: OTLP JSON lines, as the Collector's file exporter writes them.

use std::io::Write;
use std::process::Command;

use andon_tests::{Server, andon_bin, otlp};

fn import(server: &Server, files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new(andon_bin())
        .arg("import")
        .args(files)
        .args(["--endpoint", &format!("http://{}", server.http)])
        .output()
        .unwrap()
}

#[test]
fn json_lines_and_gzip_import_and_bad_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let now = otlp::now_ns();
    let plain = dir.path().join("a.jsonl");
    let mut f = std::fs::File::create(&plain).unwrap();
    writeln!(f, "{}", serde_json::to_string(&otlp::request("cart", 1, 40, now)).unwrap()).unwrap();
    writeln!(f, "{{\"resourceSpans\": [oops").unwrap();
    writeln!(f, "{}", serde_json::to_string(&otlp::request("cart", 2, 10, now)).unwrap()).unwrap();
    drop(f);
    let gz = dir.path().join("b.jsonl.gz");
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    writeln!(e, "{}", serde_json::to_string(&otlp::request("search", 3, 25, now)).unwrap()).unwrap();
    e.finish().unwrap();

    let out = import(&server, &[plain.clone(), gz]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad line makes the import fail");
    assert!(stderr.contains(&format!("{}:2:", plain.display())), "the bad line is named: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("imported 75 of 75 spans from 2 files"), "{stdout}");
    assert_eq!(
        server.count("SELECT count(*) FROM spans WHERE service_name = 'cart'"),
        50,
        "lines around the bad one still count"
    );
    assert_eq!(server.count("SELECT count(*) FROM spans WHERE service_name = 'search'"), 25);
}

/// The number of spans in an OTLP JSON lines file.
fn spans_in(path: &std::path::Path) -> i64 {
    use std::io::BufRead;
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()));
    let mut n = 0;
    for line in reader.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        for rs in v["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                n += ss["spans"].as_array().map_or(0, Vec::len) as i64;
            }
        }
    }
    n
}

#[test]
fn the_nezha_development_set_imports_cleanly() {
    let data = andon_tests::shared_dir().join("data/nezha-ob");
    if !data.exists() {
        assert!(std::env::var_os("CI").is_none(), "shared/data/nezha-ob is beside the repository in CI");
        eprintln!("skipping: {} not found", data.display());
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(data.join("traces")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.push(data.join("baseline/ob-2022-08-23-fault-free.otlp.jsonl.gz"));
    let expected: i64 = files.iter().map(|f| spans_in(f)).sum();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_STORAGE_DURABILITY", "none")]);
    let out = import(&server, &files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("imported {expected} of {expected} spans")), "{stdout}");
    assert!(stdout.contains("0 rejected, 0 unreadable lines"), "{stdout}");
    let rows = server.query("SELECT count(*), count(DISTINCT service_name), min(start_time) FROM spans");
    assert_eq!(rows[0][0], serde_json::json!(expected));
    assert_eq!(rows[0][1], serde_json::json!(10), "ten Online Boutique services");
    assert!(rows[0][2].as_str().unwrap().starts_with("2022-08-22T"), "{rows:?}");
}

/// The guard against tests that rot with the calendar: history with a fixed date,
/// years older than the default retention, stays in a test server through flushes
/// and retention passes, because every test server runs with retention off
/// unless the test sets it (`andon_tests::RETENTION_ENV`).
#[test]
fn fixed_date_history_outlives_retention_in_test_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    // 2022-08-22T00:00:00Z, the Nezha development set's day.
    let fixed_ns = 1_661_126_400u64 * 1_000_000_000;
    let file = dir.path().join("old.jsonl");
    std::fs::write(&file, format!("{}\n", serde_json::to_string(&otlp::request("cart", 1, 30, fixed_ns)).unwrap()))
        .unwrap();
    let out = import(&server, &[file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A clean stop flushes the spans into a segment of that hour; the restarted
    // server applies retention to its segments within its first second.
    server.restart();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(server.count("SELECT count(*) FROM spans"), 30, "retention deleted fixed-date test data");
}

#[test]
fn an_offline_import_larger_than_the_buffer_flushes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("many.jsonl");
    let now = otlp::now_ns();
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..40 {
        writeln!(f, "{}", serde_json::to_string(&otlp::request("cart", 100 + i, 50, now)).unwrap()).unwrap();
    }
    drop(f);
    // A buffer of a few kilobytes fills after every request or two.
    let out = Command::new(andon_bin())
        .args(["import", "--data-dir", data.to_str().unwrap(), file.to_str().unwrap()])
        .env("ANDON_STORAGE_MAX_BUFFER_BYTES", "4096")
        .env("ANDON_STORAGE_FLUSH_BYTES", "2048")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("imported 2000 of 2000 spans"), "{stdout}");
    // Rolled up again from the segments alone, the rollups count the same.
    let out =
        Command::new(andon_bin()).args(["rollup", "--data-dir", data.to_str().unwrap(), "--rebuild"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("rolled up"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("rolled up 0 "), "{stdout}");
    let server = Server::start(&data);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 2000);
    assert!(std::fs::read_dir(data.join("segments/default")).unwrap().count() >= 1);
    // Every span is rolled up once, in the segments' rollups.
    assert_eq!(server.count("SELECT sum(requests) FROM span_metrics"), 2000);
}
