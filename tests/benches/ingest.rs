//! Ingest benchmark: pre-encoded OTLP requests (500 spans each, about 350 bytes a
//! span with 8 span and 7 resource attributes) pushed at a running `andon serve`
//! with durability on, over OTLP/HTTP and then OTLP/gRPC.
//!
//! `cargo bench -p andon-tests --bench ingest [-- SECONDS [CONNECTIONS]]`
//!
//! Prints spans/s, spans per server CPU-second, export latency, the server's peak
//! RSS and Parquet bytes per span on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use andon_tests::Server;
use andon_tests::otlp::{kv, kv_int};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

const SPANS_PER_REQUEST: usize = 500;
const SERVICES: &[&str] = &["web", "api-gateway", "catalog", "search", "cart", "checkout", "payments", "inventory"];
const ROUTES: &[&str] =
    &["/", "/product/{id}", "/cart", "/cart/add", "/checkout/address", "/checkout/pay", "/search", "/order/{id}"];

/// A small deterministic generator, so every run sends the same bytes.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
}

fn make_request(n: u64, start_ns: u64) -> ExportTraceServiceRequest {
    let mut rng = Lcg(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let service = SERVICES[(n % SERVICES.len() as u64) as usize];
    let mut spans = Vec::with_capacity(SPANS_PER_REQUEST);
    let mut trace = [0u8; 16];
    let mut parent = Vec::new();
    for i in 0..SPANS_PER_REQUEST {
        if i.is_multiple_of(10) {
            trace[..8].copy_from_slice(&rng.next().to_be_bytes());
            trace[8..].copy_from_slice(&rng.next().to_be_bytes());
            parent.clear();
        }
        let span_id = rng.next().to_be_bytes().to_vec();
        let route = ROUTES[(rng.next() % ROUTES.len() as u64) as usize];
        let start = start_ns + (i as u64) * 2_000_000 + rng.next() % 1_000_000;
        let dur = 200_000 + (rng.next() % 50_000_000);
        let error = rng.next().is_multiple_of(50);
        spans.push(Span {
            trace_id: trace.to_vec(),
            span_id: span_id.clone(),
            parent_span_id: parent.clone(),
            name: format!("GET {route}"),
            kind: if parent.is_empty() { 2 } else { 3 },
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur,
            attributes: vec![
                kv("http.route", route),
                kv("http.request.method", "GET"),
                kv_int("http.response.status_code", if error { 500 } else { 200 }),
                kv("url.path", &route.replace("{id}", &(rng.next() % 10_000).to_string())),
                kv("session.id", &format!("{:016x}", rng.next() % 5_000)),
                kv("user.id", &format!("u{}", rng.next() % 2_000)),
                kv("server.address", "10.0.3.17"),
                kv_int("app.items", (rng.next() % 12) as i64),
            ],
            status: Some(Status { code: if error { 2 } else { 0 }, message: String::new() }),
            ..Default::default()
        });
        parent = span_id;
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service),
                    kv("service.version", "2.14.1"),
                    kv("deployment.environment.name", "production"),
                    kv("cloud.region", "eu-west-1"),
                    kv("host.name", "ip-10-0-3-17"),
                    kv("k8s.pod.name", &format!("{service}-7d9f8b6c4-x2x9q")),
                    kv("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &std::path::Path, ext: &str) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p, ext);
            } else if p.extension().is_some_and(|x| x == ext) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Http,
    Grpc,
}

async fn drive(
    transport: Transport,
    server: &Server,
    bodies: Arc<Vec<Vec<u8>>>,
    reqs: Arc<Vec<ExportTraceServiceRequest>>,
    secs: u64,
    conns: usize,
) -> (u64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (bodies, reqs) = (Arc::clone(&bodies), Arc::clone(&reqs));
        let url = server.http_url("/v1/traces");
        let grpc = server.grpc_url();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut sent = 0u64;
            let mut i = c;
            match transport {
                Transport::Http => {
                    let client = reqwest::Client::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = client
                            .post(&url)
                            .header("content-type", "application/x-protobuf")
                            .body(bodies[i % bodies.len()].clone())
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status().is_success()) {
                            lat.push(t.elapsed());
                            sent += SPANS_PER_REQUEST as u64;
                        }
                        i += conns;
                    }
                }
                Transport::Grpc => {
                    let mut client = TraceServiceClient::connect(grpc).await.expect("grpc connects");
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if client.export(reqs[i % reqs.len()].clone()).await.is_ok() {
                            lat.push(t.elapsed());
                            sent += SPANS_PER_REQUEST as u64;
                        }
                        i += conns;
                    }
                }
            }
            (sent, lat)
        }));
    }
    let mut total = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (s, l) = t.await.expect("load task");
        total += s;
        lat.extend(l);
    }
    lat.sort();
    (total, lat)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let now = andon_tests::otlp::now_ns();
    // Distinct ids per request; the pool is large enough that no span repeats.
    let pool = (secs as usize * 400).clamp(200, 12_000);
    let reqs: Vec<ExportTraceServiceRequest> =
        (0..pool as u64).map(|n| make_request(n, now - 600_000_000_000 + n * 1_000)).collect();
    let bodies: Vec<Vec<u8>> = reqs.iter().map(Message::encode_to_vec).collect();
    let avg = bodies.iter().map(Vec::len).sum::<usize>() as f64 / (bodies.len() * SPANS_PER_REQUEST) as f64;
    println!(
        "requests: {} spans each, {avg:.0} bytes/span encoded, {conns} connections, {secs}s per transport",
        SPANS_PER_REQUEST
    );
    let (reqs, bodies) = (Arc::new(reqs), Arc::new(bodies));
    for transport in [Transport::Http, Transport::Grpc] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(dir.path());
        let pid = server.pid();
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        let (spans, lat) = rt.block_on(drive(transport, &server, Arc::clone(&bodies), Arc::clone(&reqs), secs, conns));
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        let rss = peak_rss_mb(pid);
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        server.stop();
        let parquet = dir_bytes(&dir.path().join("segments"), "parquet");
        println!(
            "{transport:?}: {:.0} spans/s, {:.0} spans per server CPU-second, p50 {:.1} ms, p99 {:.1} ms, peak RSS {rss:.0} MB, {:.1} Parquet bytes/span ({spans} spans)",
            spans as f64 / wall,
            spans as f64 / cpu.max(1e-9),
            pct(0.5),
            pct(0.99),
            parquet as f64 / spans.max(1) as f64,
        );
    }
}
