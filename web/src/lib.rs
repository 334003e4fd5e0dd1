//! What the API port serves, over the library crates: the REST API ([`api`],
//! one module per resource), the web UI ([`ui`]), the one [`router`] that
//! merges them, the state they share ([`app`]), and the after-pass
//! [`pipeline`] that continuous detection, backtests and the demo all hand
//! their findings to. The `andon` binary wires this to the receivers and the
//! store.

pub mod api;
pub mod app;
pub mod auth;
pub mod ingest_history;
pub mod investigate;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod router;
pub mod rows;
pub mod ui;

pub use app::AppState;
pub use pipeline::Pipeline;
pub use router::router;
