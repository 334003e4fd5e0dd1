//! The API port's one router: the REST API and the web UI over one state, with
//! the auth layer every request passes, the body limit and the JSON 404 every
//! unknown path gets.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::app::{ApiError, AppState};

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .merge(crate::api::routes())
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), crate::auth::layer))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(app)
}
