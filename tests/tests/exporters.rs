//! Real OpenTelemetry exporters (Rust, Python, Node) send spans with attributes,
//! events and links; every span comes back through the query API intact.

use std::process::Command;

use andon_tests::Server;
use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceFlags, TraceState, Tracer, TracerProvider};
use opentelemetry::{KeyValue, SpanId, TraceId};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;

const LINKED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const LINKED_SPAN: &str = "b7ad6b7169203331";

fn provider(exporter: SpanExporter, service: &str) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attributes([KeyValue::new("service.version", "4.2.0"), KeyValue::new("cloud.region", "eu-west-1")])
        .build();
    SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()
}

/// Emits a parent server span with three children, each with attributes, one with
/// an exception event and one with a link.
fn emit(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("andon-e2e");
    let link_ctx = SpanContext::new(
        TraceId::from_hex(LINKED_TRACE).unwrap(),
        SpanId::from_hex(LINKED_SPAN).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    tracer.in_span("GET /orders/{id}", |cx| {
        let span = opentelemetry::trace::TraceContextExt::span(&cx);
        span.set_attributes([
            KeyValue::new("http.route", "/orders/{id}"),
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 500_i64),
            KeyValue::new("session.id", "sess-42"),
            KeyValue::new("app.cart.items", 3_i64),
        ]);
        for i in 0..3_i64 {
            let mut builder = tracer
                .span_builder(format!("SELECT orders {i}"))
                .with_kind(SpanKind::Client)
                .with_attributes([KeyValue::new("db.system.name", "postgresql"), KeyValue::new("app.step", i)]);
            if i == 2 {
                builder = builder.with_links(vec![Link::with_context(link_ctx.clone())]);
            }
            let mut child = opentelemetry::trace::Tracer::build_with_context(&tracer, builder, &cx);
            if i == 1 {
                use opentelemetry::trace::Span as _;
                child.add_event(
                    "exception",
                    vec![
                        KeyValue::new("exception.type", "PoolTimeout"),
                        KeyValue::new("exception.message", "no connection in 5s"),
                    ],
                );
                child.set_status(Status::error("pool exhausted"));
            }
            opentelemetry::trace::Span::end(&mut child);
        }
        span.set_status(Status::error("internal"));
    });
}

/// Everything the emitted spans must show when read back.
fn assert_round_trip(server: &Server, service: &str) {
    let rows = server.query(&format!(
        "SELECT name, kind, status_code, service_version, cloud_region, parent_span_id IS NULL AS root \
         FROM spans WHERE service_name = '{service}' ORDER BY name"
    ));
    assert_eq!(
        rows,
        vec![
            vec![
                json!("GET /orders/{id}"),
                json!("internal"),
                json!("error"),
                json!("4.2.0"),
                json!("eu-west-1"),
                json!(true)
            ],
            vec![
                json!("SELECT orders 0"),
                json!("client"),
                json!("unset"),
                json!("4.2.0"),
                json!("eu-west-1"),
                json!(false)
            ],
            vec![
                json!("SELECT orders 1"),
                json!("client"),
                json!("error"),
                json!("4.2.0"),
                json!("eu-west-1"),
                json!(false)
            ],
            vec![
                json!("SELECT orders 2"),
                json!("client"),
                json!("unset"),
                json!("4.2.0"),
                json!("eu-west-1"),
                json!(false)
            ],
        ],
        "spans of {service}"
    );
    let root = server.query(&format!(
        "SELECT http_route, http_request_method, http_response_status_code, session_id, attributes['app.cart.items'], \
         trace_id, span_id FROM spans WHERE service_name = '{service}' AND parent_span_id IS NULL"
    ));
    let root = &root[0];
    assert_eq!(&root[..5], &[json!("/orders/{id}"), json!("GET"), json!(500), json!("sess-42"), json!("3")]);
    let (trace, root_id) = (root[5].as_str().unwrap(), root[6].as_str().unwrap());
    assert_eq!(trace.len(), 32);
    let children = server.count(&format!(
        "SELECT count(*) FROM spans WHERE trace_id = '{trace}' AND parent_span_id = '{root_id}' AND attributes['db.system.name'] = 'postgresql'"
    ));
    assert_eq!(children, 3, "children keep their parent and attributes");
    let ex = server.query(&format!(
        "SELECT exception_type, exception_message, status_message, events[1]['name'] FROM spans \
         WHERE service_name = '{service}' AND name = 'SELECT orders 1'"
    ));
    assert_eq!(
        ex,
        vec![vec![json!("PoolTimeout"), json!("no connection in 5s"), json!("pool exhausted"), json!("exception")]]
    );
    let link = server.query(&format!(
        "SELECT links[1]['trace_id'], links[1]['span_id'] FROM spans WHERE service_name = '{service}' AND name = 'SELECT orders 2'"
    ));
    assert_eq!(link, vec![vec![json!(LINKED_TRACE), json!(LINKED_SPAN)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_exporter_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let exporter = SpanExporter::builder().with_tonic().with_endpoint(server.grpc_url()).build().unwrap();
    let provider = provider(exporter, "rust-grpc");
    emit(&provider);
    let provider = tokio::task::spawn_blocking(move || {
        provider.force_flush().unwrap();
        provider
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        provider.shutdown().unwrap();
        assert_round_trip(&server, "rust-grpc");
    })
    .await
    .unwrap();
}

#[test]
fn rust_exporter_over_http_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let exporter = SpanExporter::builder()
        .with_http()
        // The batch processor exports from its own thread, without a Tokio
        // runtime: name the blocking client rather than rely on which reqwest
        // client features the workspace happens to enable.
        .with_http_client({
            andon_model::install_tls_provider();
            ::reqwest::blocking::Client::new()
        })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(server.http_url("/v1/traces"))
        .build()
        .unwrap();
    let provider = provider(exporter, "rust-http");
    emit(&provider);
    provider.force_flush().unwrap();
    provider.shutdown().unwrap();
    assert_round_trip(&server, "rust-http");
}

/// The interpreter or module path CI provides; outside CI a missing one skips.
fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(std::env::var_os("CI").is_none(), "{var} must be set in CI (.ci/run installs it)");
            eprintln!("skipping: {var} is not set (run .ci/run to install it)");
            None
        }
    }
}

fn run_script(cmd: &mut Command) {
    let out = cmd.output().expect("script runs");
    assert!(
        out.status.success(),
        "script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_sdk_exporters_over_http_and_grpc() {
    let Some(python) = external("ANDON_TEST_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let script = andon_tests::workspace_root().join("tests/python/export_spans.py");
    run_script(Command::new(&python).arg(&script).args(["http", &server.http_url("/v1/traces"), "py-http"]));
    run_script(Command::new(&python).arg(&script).args(["grpc", &server.grpc.clone(), "py-grpc"]));
    assert_round_trip(&server, "py-http");
    assert_round_trip(&server, "py-grpc");
}

#[test]
fn node_sdk_exporters_over_http_and_grpc() {
    let Some(modules) = external("ANDON_TEST_NODE_MODULES") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let script = andon_tests::workspace_root().join("tests/node/export_spans.js");
    for (proto, url, service) in
        [("http", server.http_url("/v1/traces"), "node-http"), ("grpc", server.grpc_url(), "node-grpc")]
    {
        run_script(Command::new("node").arg(&script).args([proto, &url, service]).env("NODE_PATH", &modules));
    }
    assert_round_trip(&server, "node-http");
    assert_round_trip(&server, "node-grpc");
}
