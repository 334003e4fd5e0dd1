//! `google.rpc.Status` and `google.rpc.RetryInfo`, the error bodies OTLP uses over
//! both transports.

use std::time::Duration;

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// gRPC status codes used here.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAUTHENTICATED: i32 = 16;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// A `RetryInfo` detail suggesting `delay`.
pub fn retry_info(delay: Duration) -> ProtoAny {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    ProtoAny { type_url: RETRY_INFO_TYPE.into(), value: info.encode_to_vec() }
}

impl RpcStatus {
    /// The OTLP/JSON form: `{"code": 3, "message": "...", "details": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let details: Vec<serde_json::Value> = self
            .details
            .iter()
            .map(|d| {
                let mut obj = serde_json::json!({ "@type": d.type_url });
                if d.type_url == RETRY_INFO_TYPE
                    && let Ok(info) = RetryInfo::decode(d.value.as_slice())
                    && let Some(delay) = info.retry_delay
                {
                    obj["retryDelay"] = serde_json::Value::String(format!("{}s", delay.seconds));
                }
                obj
            })
            .collect();
        serde_json::json!({ "code": self.code, "message": self.message, "details": details })
    }
}
