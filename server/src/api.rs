//! The REST API on the API port: `/api/v1/query`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use andon_ingest::Ingestor;
use andon_model::Tenant;
use andon_store::{QueryEngine, Store, StoreError};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::metrics;

#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub query: QueryEngine,
    pub ingestor: Arc<Ingestor>,
    pub ready: AtomicBool,
    pub started: Instant,
}

/// A JSON error: `{"error": "..."}` with a lowercase message.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Query(_) | StoreError::Refused(_) => StatusCode::BAD_REQUEST,
            StoreError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = e.to_string();
        // DataFusion capitalises some messages; ours are lowercase.
        let mut chars = msg.chars();
        let msg = chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
        ApiError(status, msg)
    }
}

fn tenant_of(headers: &HeaderMap) -> Result<Tenant, ApiError> {
    Tenant::from_header(headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid x-scope-orgid: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

/// One cell as JSON: numbers as numbers, timestamps as RFC 3339 strings, lists,
/// structs and maps as JSON arrays and objects.
fn cell(array: &dyn Array, i: usize, fmt: &FormatOptions<'_>) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(i))
        };
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => serde_json::Number::from_f64(f64::from(array.as_primitive::<Float32Type>().value(i)))
            .map_or(Value::Null, Value::Number),
        DataType::Float64 => serde_json::Number::from_f64(array.as_primitive::<Float64Type>().value(i))
            .map_or(Value::Null, Value::Number),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_owned()),
        DataType::List(_) => {
            let v = array.as_list::<i32>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::LargeList(_) => {
            let v = array.as_list::<i64>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(
                fields.iter().zip(s.columns()).map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i, fmt))).collect(),
            )
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let key = |j| match cell(keys.as_ref(), j, fmt) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Value::Object((0..entries.len()).map(|j| (key(j), cell(values.as_ref(), j, fmt))).collect())
        }
        _ => match ArrayFormatter::try_new(array, fmt) {
            Ok(f) => Value::String(f.value(i).to_string()),
            Err(_) => Value::Null,
        },
    }
}

/// `{"columns": [...], "rows": [[...]]}` for a query result.
pub fn to_json(schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) -> (Vec<String>, Vec<Vec<Value>>) {
    let fmt = FormatOptions::default().with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.fZ"));
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push(b.columns().iter().map(|c| cell(c.as_ref(), i, &fmt)).collect());
        }
    }
    (columns, rows)
}

async fn query(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&headers)?;
    let req: QueryRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body must be {{\"sql\": \"...\"}}: {e}")))?;
    if req.sql.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "sql is empty".into()));
    }
    let out = app.query.run(Some(tenant), &req.sql).await?;
    let (columns, rows) = to_json(&out.schema, &out.batches);
    Ok(Json(json!({
        "columns": columns,
        "rows": rows,
        "truncated": out.truncated,
        "elapsed_ms": out.elapsed.as_secs_f64() * 1e3,
    }))
    .into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_handler(State(app): State<Arc<AppState>>) -> Response {
    let app2 = Arc::clone(&app);
    // Sizing the WAL directory touches the disk.
    let store = tokio::task::spawn_blocking(move || app2.store.snapshot_stats()).await.unwrap_or_default();
    let stats = app.store.stats();
    let text = metrics::render(&metrics::Readings {
        ingest: app.ingestor.stats().snapshot(),
        store,
        fsync: stats.fsync_latency.snapshot(),
        flush: stats.flush_latency.snapshot(),
        query: stats.query_latency.snapshot(),
        uptime_secs: app.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/query", post(query))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(app)
}
