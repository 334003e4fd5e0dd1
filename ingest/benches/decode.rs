//! The receiver's work on a request before storage, without a server:
//! decoding OTLP protobuf and converting it to an Arrow span batch, on the
//! simulated shop's traffic in requests of 500 spans.
//!
//! `cargo bench --workspace --bench decode -- [SPANS] [ROUNDS]` (defaults
//! 200,000 and 7) prints each round and the median, in nanoseconds a span
//! and spans a second on one thread: the receiver's path (`convert_bytes`,
//! which reads the protobuf in place), and beside it what prost alone takes
//! to decode the same requests into structs, before any conversion. It also
//! prints the bytes a converted span holds in memory, what the store's buffer
//! counts against its flush size (with `DECODE_COLUMNS=1`, column by column).
//! The bench runs on the system allocator, not the server's mimalloc.

#![allow(clippy::expect_used)]

use std::time::Instant;

use andon_fixtures::load::encode_pool;
use andon_ingest::{SpanLimits, convert_bytes};
use andon_model::Tenant;
use arrow::ipc::writer::StreamWriter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let spans: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let pool = encode_pool(spans, 500, 7).expect("simulated traffic");
    let total: usize = pool.iter().map(|e| e.spans).sum();
    let bytes: usize = pool.iter().map(|e| e.body.len()).sum();
    println!("{} requests, {total} spans, {:.1} B a span encoded", pool.len(), bytes as f64 / total as f64);
    let tenant = Tenant::default_tenant();
    let batches: Vec<_> = pool
        .iter()
        .map(|e| convert_bytes(&e.body, &tenant, 0, SpanLimits::NONE).expect("converts").batch.expect("spans"))
        .collect();
    // What the store's buffer counts against its flush size.
    let held: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    println!("converted batches hold {:.0} B a span in memory", held as f64 / total as f64);
    if std::env::var_os("DECODE_COLUMNS").is_some() {
        let schema = batches[0].schema();
        for (i, f) in schema.fields().iter().enumerate() {
            let b: usize = batches.iter().map(|b| b.column(i).get_array_memory_size()).sum();
            println!("  {:<32} {:>7.1} B a span", f.name(), b as f64 / total as f64);
        }
    }
    let (mut decode_only, mut whole, mut ipc) = (Vec::new(), Vec::new(), Vec::new());
    let mut ipc_bytes = 0;
    for round in 1..=rounds {
        let t = Instant::now();
        let mut n = 0;
        for e in &pool {
            let req = ExportTraceServiceRequest::decode(&e.body[..]).expect("decodes");
            n += req.resource_spans.len();
        }
        let d = t.elapsed().as_secs_f64();
        std::hint::black_box(n);
        let t = Instant::now();
        let mut rows = 0;
        for e in &pool {
            let c = convert_bytes(&e.body, &tenant, 0, SpanLimits::NONE).expect("converts");
            rows += c.accepted();
        }
        let w = t.elapsed().as_secs_f64();
        assert_eq!(rows, total, "every span converts");
        // What a WAL record of the converted batch costs on top: its Arrow IPC stream.
        let t = Instant::now();
        ipc_bytes = 0;
        for b in &batches {
            let mut buf = Vec::with_capacity(b.get_array_memory_size() / 2 + 64);
            let mut wr = StreamWriter::try_new(&mut buf, &b.schema()).expect("ipc");
            wr.write(b).expect("ipc");
            wr.finish().expect("ipc");
            drop(wr);
            ipc_bytes += buf.len();
        }
        let i = t.elapsed().as_secs_f64();
        ipc.push(i * 1e9 / total as f64);
        println!(
            "round {round}: prost decode alone {:.0} ns a span; convert_bytes (decode and convert) {:.0} ns a span ({:.0} spans/s)",
            d * 1e9 / total as f64,
            w * 1e9 / total as f64,
            total as f64 / w
        );
        println!("round {round}: Arrow IPC of the converted batches {:.0} ns a span", i * 1e9 / total as f64);
        decode_only.push(d * 1e9 / total as f64);
        whole.push(w * 1e9 / total as f64);
    }
    let (d, w) = (median(decode_only), median(whole));
    println!(
        "median of {rounds}: prost decode alone {d:.0} ns a span; convert_bytes (decode and convert) {w:.0} ns a span ({:.0} spans/s)",
        1e9 / w
    );
    println!(
        "median of {rounds}: Arrow IPC of the converted batches {:.0} ns a span, {:.1} B a span (the request: {:.1} B)",
        median(ipc),
        ipc_bytes as f64 / total as f64,
        bytes as f64 / total as f64
    );
}
