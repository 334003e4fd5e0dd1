//! A day of clean traffic on the lodging system (`fixtures/lodge/`), judged
//! the way continuous detection would have judged it: every finding is a
//! false alarm.
//!
//! The clean recording (`fixtures/lodge/recording/clean.otlp.jsonl.gz`, real
//! services under load with no fault) is laid end to end until it covers
//! `HOURS` (24 by default), the last copy where the recording is (no span may
//! lie in the future): each copy shifted in time, with its own trace ids
//! and session ids, so no span or session repeats. It is imported into the
//! release `andon serve` with `andon import`, configured as the lodge test
//! runs it (a pass judging 120 s against the 120 s before it, sessions over
//! after 30 s quiet), and every hour is backtested with
//! `POST /api/v1/analyze {from, to}`, which replays a pass every
//! `interval_secs`.
//!
//! `cargo bench -p andon-tests --bench lodge_clean [-- HOURS [INTERVAL_SECS [WINDOW_SECS BASELINE_SECS]]]`

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::Command;
use std::time::Instant;

use andon_tests::{Server, andon_bin, workspace_root};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&Utc)
}

/// Shifts a copy of one OTLP JSON export: times by `shift_ns`, and trace and
/// session ids made the copy's own.
fn shift(export: &mut Value, copy: u32, shift_ns: i64) {
    // `get_mut` throughout: indexing a missing key would insert a null.
    let bump = |v: Option<&mut Value>| {
        if let Some(v) = v
            && let Some(n) = v.as_str().and_then(|s| s.parse::<i64>().ok())
        {
            *v = Value::String((n + shift_ns).to_string());
        }
    };
    // The copy's number in the first eight hex digits of a trace id.
    let retrace = |v: Option<&mut Value>| {
        if let Some(v) = v
            && let Some(t) = v.as_str()
        {
            *v = Value::String(format!("{copy:08x}{}", &t[8.min(t.len())..]));
        }
    };
    for rs in export.get_mut("resourceSpans").and_then(Value::as_array_mut).into_iter().flatten() {
        for ss in rs.get_mut("scopeSpans").and_then(Value::as_array_mut).into_iter().flatten() {
            for s in ss.get_mut("spans").and_then(Value::as_array_mut).into_iter().flatten() {
                bump(s.get_mut("startTimeUnixNano"));
                bump(s.get_mut("endTimeUnixNano"));
                for e in s.get_mut("events").and_then(Value::as_array_mut).into_iter().flatten() {
                    bump(e.get_mut("timeUnixNano"));
                }
                retrace(s.get_mut("traceId"));
                for l in s.get_mut("links").and_then(Value::as_array_mut).into_iter().flatten() {
                    retrace(l.get_mut("traceId"));
                }
                for a in s.get_mut("attributes").and_then(Value::as_array_mut).into_iter().flatten() {
                    if a["key"] == "session.id"
                        && let Some(v) = a["value"]["stringValue"].as_str()
                    {
                        a["value"]["stringValue"] = Value::String(format!("{v}-{copy}"));
                    }
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let hours: f64 = args.first().map_or(24.0, |h| h.parse().unwrap());
    let interval: u64 = args.get(1).map_or(60, |s| s.parse().unwrap());
    // The lodge test's windows by default; `WINDOW_SECS BASELINE_SECS` (for
    // example the server's defaults, 1800 10800) judge the day as a server
    // configured so would.
    let window: u64 = args.get(2).map_or(120, |s| s.parse().unwrap());
    let baseline: u64 = args.get(3).map_or(120, |s| s.parse().unwrap());
    let recording = workspace_root().join("fixtures/lodge/recording");
    let truth: Value = serde_json::from_slice(&std::fs::read(recording.join("clean.json")).unwrap()).unwrap();
    let (start, end) = (time(&truth["start"]), time(&truth["end"]));
    let length = end - start;
    let copies = ((hours * 3600.0) / length.num_seconds() as f64).ceil() as u32;
    let span_ns = length.num_nanoseconds().unwrap();

    let work = tempfile::tempdir().unwrap();
    let lines: Vec<String> = {
        let f = flate2::read::GzDecoder::new(std::fs::File::open(recording.join("clean.otlp.jsonl.gz")).unwrap());
        BufReader::new(f).lines().map(|l| l.unwrap()).collect()
    };
    // The copies end where the recording ends, so no span is in the future
    // (the receiver refuses those).
    let day_start = start - Duration::nanoseconds(i64::from(copies - 1) * span_ns);
    let day_end = end;
    let per_copy: u64 = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["resourceSpans"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
                .map(|ss| ss["spans"].as_array().map_or(0, Vec::len) as u64)
                .sum::<u64>()
        })
        .sum();
    eprintln!(
        "{copies} copies of {} s ({per_copy} spans) of clean traffic: {day_start} to {day_end}",
        length.num_seconds()
    );

    let server = Server::start_with_env(
        &work.path().join("data"),
        &[
            ("ANDON_STORAGE_DURABILITY", "none"),
            ("ANDON_ANALYSIS_INTERVAL_SECS", &interval.to_string()),
            ("ANDON_ANALYSIS_WINDOW_SECS", &window.to_string()),
            ("ANDON_ANALYSIS_BASELINE_SECS", &baseline.to_string()),
            ("ANDON_ANALYSIS_SESSION_TIMEOUT_SECS", "30"),
            ("ANDON_ANALYSIS_RESOLVE_AFTER_SECS", "300"),
            ("ANDON_ANALYSIS_REPLAY_MAX_PASSES", "100000"),
        ],
    );
    // One copy at a time through `andon import`: the whole day as one file
    // would take 7 GB of temporary disk.
    let t = Instant::now();
    let file = work.path().join("copy.otlp.jsonl");
    for copy in 0..copies {
        {
            let mut out = BufWriter::new(std::fs::File::create(&file).unwrap());
            for line in &lines {
                let mut v: Value = serde_json::from_str(line).unwrap();
                shift(&mut v, copy, -i64::from(copies - 1 - copy) * span_ns);
                serde_json::to_writer(&mut out, &v).unwrap();
                out.write_all(b"\n").unwrap();
            }
        }
        let out = Command::new(andon_bin())
            .args(["import", "--endpoint", &server.http_url(""), file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_file(&file).unwrap();
    let spans = server.query("SELECT count(*) FROM spans")[0][0].as_u64().unwrap_or(0);
    eprintln!("imported {spans} spans in {:.0} s", t.elapsed().as_secs_f64());
    assert_eq!(spans, per_copy * u64::from(copies), "every span of every copy is stored");

    let t = Instant::now();
    let (mut passes, mut found) = (0u64, Vec::new());
    // `ANDON_BENCH_FINDINGS=FILE` keeps every finding whole, one JSON a line.
    let mut dump = std::env::var_os("ANDON_BENCH_FINDINGS").map(|p| BufWriter::new(std::fs::File::create(p).unwrap()));
    let mut from = day_start;
    while from < day_end {
        let to = (from + Duration::hours(1)).min(day_end);
        let (status, body) =
            server.post_json("/api/v1/analyze", &json!({"from": from.to_rfc3339(), "to": to.to_rfc3339()}));
        assert_eq!(status, 200, "{body}");
        passes += body["passes"].as_u64().unwrap_or(0);
        for f in body["findings"].as_array().into_iter().flatten() {
            if let Some(d) = dump.as_mut() {
                serde_json::to_writer(&mut *d, f).unwrap();
                d.write_all(b"\n").unwrap();
            }
            found.push(format!(
                "{} {} {} {} first seen {}",
                f["kind"], f["service"], f["operation"], f["segment"], f["first_seen"]
            ));
        }
        eprintln!("{to}: {passes} passes, {} findings, {:.0} s", found.len(), t.elapsed().as_secs_f64());
        from = to;
    }
    println!(
        "lodge clean: {:.1} h, {spans} spans, {passes} passes every {interval} s in {:.0} s ({:.2} s a pass): {} findings",
        (day_end - day_start).num_seconds() as f64 / 3600.0,
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() / passes.max(1) as f64,
        found.len()
    );
    for f in &found {
        println!("  {f}");
    }
}
