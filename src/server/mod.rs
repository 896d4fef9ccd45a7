//! The HTTP face of itsmc: one axum router for the Azure Functions host (custom handler with request
//! forwarding), local use and, later, AWS Lambda.
//!
//! Routes: `GET /` and `GET /api/health` (readiness), `POST /api/alert` (function-alert),
//! `POST /function-sync` (the timer, in the Functions invocation envelope), `GET /api/workitems`.

mod alert;
pub mod entra;
mod functions;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::intake::Intake;
use crate::store::{Filter, Table};

/// A JSON error answer: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message.into() } }))).into_response()
}

/// The routes; with `entra`, the alert route takes only Secure Webhook calls with a valid token.
pub fn router(intake: Arc<Intake>, entra: Option<Arc<entra::EntraValidator>>) -> Router {
    let mut alert = post(alert::post_alert);
    if let Some(validator) = entra {
        alert = alert.route_layer(axum::middleware::from_fn_with_state(validator, entra::require_token));
    }
    Router::new()
        .route("/", get(health))
        .route("/api/health", get(health))
        .route("/api/alert", alert)
        .route("/function-sync", post(functions::timer))
        .route("/api/workitems", get(workitems))
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(intake)
}

async fn health(axum::extract::State(intake): axum::extract::State<Arc<Intake>>) -> Response {
    let mut warnings = Vec::new();
    let connections: Vec<_> = intake
        .config
        .connections
        .iter()
        .map(|c| {
            let credentials = intake.connection(&c.name).and_then(|(_, connector)| connector.credentials_status());
            if credentials.as_ref().is_some_and(|s| s["refreshTokenExpiresSoon"] == true) {
                warnings.push(format!(
                    "connection '{}': the OAuth refresh token runs out at {}; itsmc will sign in with the password then",
                    c.name,
                    credentials.as_ref().map_or("", |s| s["refreshTokenEndsAt"].as_str().unwrap_or_default())
                ));
            }
            json!({
                "name": c.name,
                "product": c.product.name(),
                "workItemType": c.work_item_type,
                "grouping": c.grouping,
                "credentials": credentials,
            })
        })
        .collect();
    axum::Json(json!({
        "status": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "store": intake.store.describe(),
        "connections": connections,
        "warnings": warnings,
    }))
    .into_response()
}

/// Recent operations (this instance, newest first), pending and dead-lettered deliveries (all
/// instances, from the store), and what dry-run connections would have sent.
async fn workitems(axum::extract::State(intake): axum::extract::State<Arc<Intake>>) -> Response {
    let mut lists = serde_json::Map::new();
    for state in ["pending", "dead"] {
        let mut rows = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = match intake
                .store
                .scan(Table::Deliveries, Some(Filter { field: "state", value: state }), continuation.as_deref(), 1000)
                .await
            {
                Ok(page) => page,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
            };
            for entry in page.entries {
                let v = &entry.value;
                rows.push(json!({
                    "delivery": entry.key,
                    "connection": v["connection"],
                    "rule": v["rule"],
                    "condition": v["condition"],
                    "attempts": v["attempts"],
                    "firstSeenAt": v["firstSeenAt"],
                    "nextAttemptAt": v["nextAttemptAt"],
                    "lastError": v["lastError"],
                }));
            }
            match page.continuation {
                Some(c) if rows.len() < 10_000 => continuation = Some(c),
                _ => break,
            }
        }
        lists.insert(state.to_string(), rows.into());
    }
    axum::Json(json!({
        "recent": intake.recent(),
        "pending": lists.remove("pending"),
        "deadLetters": lists.remove("dead"),
        "dryRun": intake.journal.recent(),
    }))
    .into_response()
}
