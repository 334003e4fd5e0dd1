//! The REST API on the API port, one module per resource: `/api/v1/query`,
//! `/api/v1/findings` and `/api/v1/analyze`, `/api/v1/tickets` (the human
//! gate), `/api/v1/changes`, `/api/v1/incidents` (with their RCA reports),
//! `/api/v1/investigations` (the agent), `/api/v1/runs` (the flight recorder),
//! `/api/v1/webhooks/github`, and `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::Router;

use crate::app::AppState;

mod changes;
mod findings;
mod incidents;
mod investigations;
mod ops;
mod query;
mod runs;
mod tickets;
mod webhooks;

/// Every API route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .merge(query::routes())
        .merge(findings::routes())
        .merge(changes::routes())
        .merge(incidents::routes())
        .merge(investigations::routes())
        .merge(runs::routes())
        .merge(tickets::routes())
        .merge(webhooks::routes())
        .merge(ops::routes())
}
