//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::sync::Arc;

use andon_model::Tenant;
use andon_model::auth::AuthError;
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{CompressionEncoding, DecodeBuf, EncodeBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

use crate::rpc::{RpcStatus, retry_info};
use crate::{IngestError, Ingestor};

#[derive(Debug, Clone)]
pub struct TraceReceiver {
    ingestor: Arc<Ingestor>,
}

/// The gRPC status for an ingest error, with `RetryInfo` when the client should retry.
pub fn to_status(e: &IngestError) -> Status {
    let code = match e {
        IngestError::Malformed(_)
        | IngestError::Tenant(_)
        | IngestError::UnsupportedMediaType(_)
        | IngestError::UnsupportedEncoding(_) => Code::InvalidArgument,
        IngestError::Auth(a) if a.unauthenticated() => Code::Unauthenticated,
        IngestError::Auth(AuthError::BadTenant(_)) => Code::InvalidArgument,
        IngestError::Auth(_) => Code::PermissionDenied,
        IngestError::TooLarge { .. } | IngestError::Amplified(_) => Code::ResourceExhausted,
        IngestError::SlowBody { .. } => Code::DeadlineExceeded,
        IngestError::Overloaded { .. } | IngestError::Unavailable(_) => Code::Unavailable,
        IngestError::Internal(_) => Code::Internal,
    };
    match e.retry_after() {
        Some(delay) => {
            let details = RpcStatus { code: code as i32, message: e.to_string(), details: vec![retry_info(delay)] };
            Status::with_details(code, e.to_string(), details.encode_to_vec().into())
        }
        None => Status::new(code, e.to_string()),
    }
}

impl TraceReceiver {
    async fn export(&self, request: Request<Bytes>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let ing = &self.ingestor;
        let result = async {
            // The interceptor (`service`) checked the caller before decoding.
            let tenant = match request.extensions().get::<Tenant>() {
                Some(t) => t.clone(),
                None => tenant_of(ing, request.metadata())?,
            };
            // `Reserve` held memory for the body before it was decoded; what
            // decompression added is held here.
            let size = request.get_ref().len();
            let body = request.extensions().get::<Reserved>().map_or(0, |r| r.0);
            let permit = if size > body { Some(ing.reserve(size - body)?) } else { None };
            let held = ing.held_for(body.max(size));
            ing.stats().add_request(size as u64);
            let out = ing.export_bytes(&tenant, request.into_inner(), held).await;
            drop(permit);
            out
        }
        .await;
        match result {
            Ok(out) => {
                let partial_success = (out.rejected > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: i64::try_from(out.rejected).unwrap_or(i64::MAX),
                    error_message: out.error_message.unwrap_or_default(),
                });
                Ok(Response::new(ExportTraceServiceResponse { partial_success }))
            }
            Err(e) => {
                ing.record_refused(&e);
                if matches!(e, IngestError::Internal(_)) {
                    tracing::error!(error = %e, "otlp/grpc export failed");
                }
                Err(to_status(&e))
            }
        }
    }
}

/// The codec of `TraceService/Export`: the request's message as it came, for
/// the converter to read in place, and the response through prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportCodec;

/// Encodes `ExportTraceServiceResponse`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseEncoder;

/// Hands over a request's message bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl tonic::codec::Codec for ExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// The path of the one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `TraceService`, served with [`ExportCodec`]: its size limit, gzip accepted
/// and sent.
#[derive(Debug, Clone)]
pub struct TraceServer {
    receiver: Arc<TraceReceiver>,
    max_message_bytes: usize,
}

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportMethod(Arc<TraceReceiver>);

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Self::Response>, Status>> + Send>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let receiver = Arc::clone(&self.0);
        Box::pin(async move { receiver.export(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let method = ExportMethod(Arc::clone(&self.receiver));
        let mut grpc = tonic::server::Grpc::new(ExportCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(self.max_message_bytes);
        Box::pin(async move { Ok(grpc.unary(method, req).await) })
    }
}

/// tonic answers errors it meets outside the handler with codes OTLP does not use:
/// a message over the size limit is `OUT_OF_RANGE` (OTLP: `RESOURCE_EXHAUSTED`,
/// not retried). The status comes in the headers or in the trailers; both are
/// mended. (A message that is not a valid request reaches the handler as bytes,
/// which answers `INVALID_ARGUMENT` itself.)
fn mend_status(headers: &mut http::HeaderMap) {
    // tonic percent-encodes spaces in grpc-message.
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").replace("%20", " ");
    let code = match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some("11") if message.contains("message length too large") => Some("8"),
        _ => None,
    };
    if let Some(code) = code {
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
    }
}

/// A response body that mends the status in its trailers.
#[derive(Debug)]
pub struct MendedBody<B> {
    inner: B,
}

impl<B> http_body::Body for MendedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|f| {
                f.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        mend_status(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Mends the status of a response, in its headers and its trailers.
pub fn otlp_status_codes<B>(resp: http::Response<B>) -> http::Response<MendedBody<B>> {
    let (mut parts, inner) = resp.into_parts();
    mend_status(&mut parts.headers);
    http::Response::from_parts(parts, MendedBody { inner })
}

fn tenant_of(ing: &Ingestor, metadata: &tonic::metadata::MetadataMap) -> Result<Tenant, IngestError> {
    let authorization = metadata.get("authorization").map(|v| v.as_bytes());
    ing.tenant_for(authorization, metadata.get(andon_model::TENANT_HEADER).and_then(|v| v.to_str().ok()))
}

/// The interceptor that checks the caller and its tenant from the metadata,
/// before the message is decoded, and hands the tenant to the handler.
#[derive(Debug, Clone)]
pub struct Authenticate {
    ingestor: Arc<Ingestor>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match tenant_of(&self.ingestor, request.metadata()) {
            Ok(tenant) => {
                request.extensions_mut().insert(tenant);
                Ok(request)
            }
            Err(e) => {
                self.ingestor.record_refused(&e);
                Err(to_status(&e))
            }
        }
    }
}

/// The gRPC service, with its size limit and gzip accepted, behind the
/// interceptor that checks who calls.
pub fn service(ingestor: Arc<Ingestor>) -> InterceptedService<TraceServer, Authenticate> {
    let max_message_bytes = ingestor.config().max_grpc_message_bytes;
    let auth = Authenticate { ingestor: Arc::clone(&ingestor) };
    let server = TraceServer { receiver: Arc::new(TraceReceiver { ingestor }), max_message_bytes };
    InterceptedService::new(server, auth)
}

/// The body bytes [`Reserve`] holds in-flight memory for, told to the handler.
#[derive(Debug, Clone, Copy)]
struct Reserved(usize);

/// Checks the caller, then reads a request's body while holding in-flight
/// memory for it, before tonic decodes anything: a client cannot make the
/// server build a message it has no budget for, and one that sends its body
/// slowly is cut off after [`crate::http::BODY_READ_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct Reserve<S> {
    inner: S,
    ingestor: Arc<Ingestor>,
}

/// The layer of [`Reserve`].
#[derive(Debug, Clone)]
pub struct ReserveLayer {
    ingestor: Arc<Ingestor>,
}

impl<S> tower::Layer<S> for ReserveLayer {
    type Service = Reserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Reserve { inner, ingestor: Arc::clone(&self.ingestor) }
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Reserve<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ing = Arc::clone(&self.ingestor);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
            if let Err(e) = tenant_of(&ing, &metadata) {
                ing.record_refused(&e);
                return Ok(to_status(&e).into_http());
            }
            // The message and its 5-byte gRPC frame header.
            let limit = ing.config().max_grpc_message_bytes.saturating_add(5);
            match crate::http::read_body(&ing, body, None, limit).await {
                Ok((bytes, permit)) => {
                    parts.extensions.insert(Reserved(bytes.len()));
                    let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
                    let resp = inner.call(http::Request::from_parts(parts, body)).await;
                    drop(permit);
                    resp
                }
                Err(e) => {
                    ing.record_refused(&e);
                    Ok(to_status(&e).into_http())
                }
            }
        })
    }
}

/// Streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Serves OTLP/gRPC on `incoming` (plain or TLS) until `shutdown` resolves,
/// then drains in-flight exports.
pub async fn serve(
    incoming: crate::listen::Incoming,
    ingestor: Arc<Ingestor>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(tower::util::MapResponseLayer::new(otlp_status_codes))
        .layer(ReserveLayer { ingestor: Arc::clone(&ingestor) })
        .add_service(service(ingestor))
        .serve_with_incoming_shutdown(incoming.into_stream(), shutdown)
        .await
}
