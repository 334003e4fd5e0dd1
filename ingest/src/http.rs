//! OTLP/HTTP: `POST /v1/traces`, protobuf or JSON, optionally gzip or zstd.
//!
//! Every read is bounded: the body by the request limit, the decompressor by the
//! same limit after decompression, and the memory of all requests in flight by the
//! ingestor's semaphore.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use andon_model::auth::AuthError;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::rpc::{RpcStatus, code, retry_info};
use crate::{ExportOutcome, IngestError, Ingestor};
use tokio::sync::OwnedSemaphorePermit;

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(IngestError::UnsupportedMediaType(ct.to_owned())),
    }
}

/// Whether `content_encoding` leaves the body as sent.
fn is_identity(content_encoding: Option<&str>) -> bool {
    content_encoding.is_none_or(|e| {
        let e = e.trim();
        e.is_empty() || e.eq_ignore_ascii_case("identity")
    })
}

/// Decompresses `body` per `Content-Encoding`, refusing output beyond `limit` bytes.
pub fn decompress(content_encoding: Option<&str>, body: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    if is_identity(content_encoding) {
        if body.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        return Ok(body);
    }
    let enc = content_encoding.unwrap_or_default().trim().to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match enc.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body.as_ref())),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(body.as_ref())
                .map_err(|e| IngestError::Malformed(format!("zstd: {e}")))?,
        ),
        other => return Err(IngestError::UnsupportedEncoding(other.to_owned())),
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Malformed(format!("{enc} body does not decompress: {e}")))?;
    if read > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// OTLP/JSON to the protobuf encoding every request is converted from.
fn json_to_protobuf(body: &[u8]) -> Result<Bytes, IngestError> {
    let req: ExportTraceServiceRequest =
        serde_json::from_slice(body).map_err(|e| IngestError::Malformed(format!("json: {e}")))?;
    Ok(req.encode_to_vec().into())
}

fn status_of(e: &IngestError) -> (StatusCode, i32) {
    match e {
        IngestError::Malformed(_) | IngestError::Tenant(_) => (StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT),
        IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, code::INVALID_ARGUMENT)
        }
        IngestError::Auth(a) if a.unauthenticated() => (StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED),
        IngestError::Auth(AuthError::BadTenant(_)) => (StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT),
        IngestError::Auth(_) => (StatusCode::FORBIDDEN, code::PERMISSION_DENIED),
        IngestError::TooLarge { .. } | IngestError::Amplified(_) => {
            (StatusCode::PAYLOAD_TOO_LARGE, code::RESOURCE_EXHAUSTED)
        }
        IngestError::SlowBody { .. } => (StatusCode::REQUEST_TIMEOUT, code::DEADLINE_EXCEEDED),
        IngestError::Overloaded { .. } | IngestError::Unavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE)
        }
        IngestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL),
    }
}

/// The error response: a `google.rpc.Status` in the request's encoding, with
/// `Retry-After` when the client should retry.
fn error_response(e: &IngestError, encoding: Encoding) -> Response {
    let (status, grpc_code) = status_of(e);
    let mut rpc = RpcStatus { code: grpc_code, message: e.to_string(), details: Vec::new() };
    if let Some(delay) = e.retry_after() {
        rpc.details.push(retry_info(delay));
    }
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => rpc.to_json().to_string().into_bytes(),
    };
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    if let Some(delay) = e.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(delay.as_secs().max(1)));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn success_response(out: &ExportOutcome, encoding: Encoding) -> Response {
    let partial = (out.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(out.rejected).unwrap_or(i64::MAX),
        error_message: out.error_message.clone().unwrap_or_default(),
    });
    let body = match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse { partial_success: partial }.encode_to_vec(),
        Encoding::Json => match partial {
            Some(p) => serde_json::json!({
                "partialSuccess": { "rejectedSpans": p.rejected_spans, "errorMessage": p.error_message }
            })
            .to_string()
            .into_bytes(),
            None => b"{}".to_vec(),
        },
    };
    ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

async fn export(State(ing): State<Arc<Ingestor>>, headers: HeaderMap, body: Body) -> Response {
    let encoding = match encoding_of(&headers) {
        Ok(e) => e,
        Err(e) => {
            ing.record_refused(&e);
            // The client's encoding is unknown; answer in JSON, readable by anyone.
            return error_response(&e, Encoding::Json);
        }
    };
    match handle(&ing, &headers, encoding, body).await {
        Ok(out) => success_response(&out, encoding),
        Err(e) => {
            ing.record_refused(&e);
            if matches!(e, IngestError::Internal(_)) {
                tracing::error!(error = %e, "otlp/http export failed");
            }
            error_response(&e, encoding)
        }
    }
}

/// How long a client has to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`],
/// holding in-flight memory for what has arrived: a declared length up front,
/// a chunked body chunk by chunk. A client that sends slowly, or without a
/// length, cannot hold the budget of bytes it has not sent.
pub(crate) async fn read_body<B>(
    ing: &Ingestor,
    body: B,
    declared: Option<usize>,
    limit: usize,
) -> Result<(Bytes, OwnedSemaphorePermit), IngestError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    ing.admit().await?;
    let mut permit = ing.reserve(declared.unwrap_or(0))?;
    let mut held = declared.unwrap_or(0);
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(IngestError::SlowBody { secs: BODY_READ_TIMEOUT.as_secs() }),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(IngestError::Malformed(format!("reading body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        buf.extend_from_slice(&data);
        if buf.len() > held {
            permit.merge(ing.reserve(buf.len() - held)?);
            held = buf.len();
        }
    }
    Ok((buf.freeze(), permit))
}

async fn handle(
    ing: &Ingestor,
    headers: &HeaderMap,
    encoding: Encoding,
    body: Body,
) -> Result<ExportOutcome, IngestError> {
    let limit = ing.config().max_request_bytes;
    let tenant = ing.tenant_for(
        headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
        headers.get(andon_model::TENANT_HEADER).and_then(|v| v.to_str().ok()),
    )?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let (raw, mut permit) = read_body(ing, body, declared, limit).await?;
    ing.stats().add_request(raw.len() as u64);
    let content_encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let compressed = raw.len();
    // An uncompressed body is used as read: no work for the blocking pool,
    // whose threads each keep a heap of their own.
    let plain = if is_identity(content_encoding.as_deref()) {
        decompress(content_encoding.as_deref(), raw, limit)?
    } else {
        tokio::task::spawn_blocking(move || decompress(content_encoding.as_deref(), raw, limit))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??
    };
    if plain.len() > compressed {
        // Decompressed, the request holds more memory than was reserved for it.
        permit.merge(ing.reserve(plain.len() - compressed)?);
    }
    let body = match encoding {
        Encoding::Protobuf => plain,
        Encoding::Json => tokio::task::spawn_blocking(move || json_to_protobuf(&plain))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??,
    };
    let held = permit.num_permits();
    let out = ing.export_bytes(&tenant, body, held).await;
    drop(permit);
    out
}

/// The OTLP/HTTP routes.
pub fn router(ingestor: Arc<Ingestor>) -> Router {
    Router::new().route("/v1/traces", post(export)).with_state(ingestor)
}
