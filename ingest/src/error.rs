use std::time::Duration;

use andon_model::auth::AuthError;
use andon_model::{SinkError, TenantError};

/// Why an export was not (fully) accepted. The receivers turn these into HTTP
/// statuses and gRPC codes; nothing else does.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Small on the wire, too large once decoded: too many spans, or
    /// attributes every row copies.
    #[error("request too large: {0}")]
    Amplified(String),
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}: use gzip, zstd or identity")]
    UnsupportedEncoding(String),
    #[error("invalid X-Scope-OrgID: {0}")]
    Tenant(#[from] TenantError),
    /// Not authenticated (401, `UNAUTHENTICATED`) or not allowed (403,
    /// `PERMISSION_DENIED`); a bad tenant header is a `Tenant`-like 400.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The body did not arrive in time: a client this slow would hold memory
    /// others need.
    #[error("request body not received within {secs} s")]
    SlowBody { secs: u64 },
    #[error("server is busy, retry after {}s", retry_after.as_secs())]
    Overloaded { retry_after: Duration },
    #[error("storage unavailable, retry later: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IngestError {
    /// How long a client should wait before retrying, when it should.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Overloaded { retry_after } => Some(*retry_after),
            IngestError::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<SinkError> for IngestError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Overloaded { retry_after } => IngestError::Overloaded { retry_after },
            SinkError::Unavailable(m) => IngestError::Unavailable(m),
            SinkError::ShuttingDown => IngestError::Unavailable("server is shutting down".into()),
        }
    }
}
