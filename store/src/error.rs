use datafusion::error::DataFusionError;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("wal: {0}")]
    Wal(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("data directory {0} is in use by another andon process")]
    Locked(String),
    #[error("store is closed")]
    Closed,
    #[error("query: {0}")]
    Query(#[from] DataFusionError),
    #[error("{0}")]
    Refused(String),
    /// The object store refused or failed a request.
    #[error("object store: {0}")]
    Remote(String),
    /// A batch's span ids do not fit the compact layout of a segment.
    #[error("span ids that are not 16 lowercase hex digits")]
    TextIds,
    #[error("query exceeded its time limit of {0:?}")]
    Timeout(std::time::Duration),
    /// Every query slot is taken; retry shortly.
    #[error("{0} queries are already running; retry shortly")]
    Busy(usize),
    /// The query needs more memory than the query budget allows, even spilling.
    #[error(
        "query needs more memory than the query budget of {budget_mb} MB (or more spill space than allowed): {detail}"
    )]
    TooBig { budget_mb: usize, detail: String },
}
