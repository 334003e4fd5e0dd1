//! OTLP/gRPC receiver rules, against the real binary with a tonic client.

use std::io::Write;
use std::time::Duration;

use andon_tests::{Server, otlp};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

async fn client(server: &Server) -> TraceServiceClient<Channel> {
    TraceServiceClient::connect(server.grpc_url()).await.expect("grpc connects")
}

fn with_tenant(req: ExportTraceServiceRequest, tenant: &str) -> tonic::Request<ExportTraceServiceRequest> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert("x-scope-orgid", tenant.parse().unwrap());
    r
}

#[tokio::test]
async fn exports_partial_success_empty_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut c = client(&server).await.send_compressed(CompressionEncoding::Gzip);
    let now = otlp::now_ns();

    let resp = c.export(otlp::request("cart", 1, 25, now)).await.unwrap().into_inner();
    assert_eq!(resp.partial_success, None);

    let resp = c.export(ExportTraceServiceRequest::default()).await.unwrap().into_inner();
    assert_eq!(resp.partial_success, None, "an empty request succeeds");

    let mut bad = otlp::request("cart", 2, 4, now);
    bad.resource_spans[0].scope_spans[0].spans[0].span_id.clear();
    let resp = c.export(with_tenant(bad, "grpc-team")).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("span_id"));

    let rows = tokio::task::spawn_blocking(move || {
        let a = server.query("SELECT count(*) FROM spans");
        let b = server.query_as(Some("grpc-team"), "SELECT count(*) FROM spans");
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(rows.0, vec![vec![serde_json::json!(25)]]);
    assert_eq!(rows.1, vec![vec![serde_json::json!(3)]]);
}

#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    /// Field 1 of ExportTraceServiceRequest is a message; a varint there cannot decode.
    #[prost(uint64, tag = "1")]
    resource_spans: u64,
}

#[tokio::test]
async fn malformed_and_oversize_messages_are_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_OTLP_MAX_GRPC_MESSAGE_BYTES", "65536")]);
    let channel = Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    let codec: tonic_prost::ProstCodec<WrongWireType, WrongWireType> = tonic_prost::ProstCodec::default();
    let err = grpc
        .unary(tonic::Request::new(WrongWireType { resource_spans: 7 }), path, codec)
        .await
        .expect_err("malformed protobuf is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let mut c = TraceServiceClient::new(channel);
    let big = otlp::request("cart", 3, 2_000, otlp::now_ns());
    let err = c.export(big).await.expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.details().is_empty(), "no RetryInfo: the client must not retry");

    let small = otlp::request("cart", 4, 10, otlp::now_ns());
    c.export(small).await.expect("the server still accepts");
}

#[tokio::test]
async fn overload_is_unavailable_with_retry_info() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_OTLP_MAX_INFLIGHT_BYTES", "8192")]);
    // A stalled OTLP/HTTP upload holds the shared in-flight budget.
    let mut slow = std::net::TcpStream::connect(&server.http).unwrap();
    write!(
        slow,
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 2000\r\n\r\n\n"
    )
    .unwrap();
    slow.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut c = client(&server).await;
    let req = otlp::request("cart", 5, 10, otlp::now_ns());
    let err = c.export(req.clone()).await.expect_err("overloaded");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.details().is_empty(), "RetryInfo tells the client when to retry");

    drop(slow);
    let mut ok = false;
    for _ in 0..100 {
        if c.export(req.clone()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "accepted once the budget is free");
}
