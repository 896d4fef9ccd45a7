//! The Azure Functions custom handler envelope for non-HTTP triggers: the host posts
//! `{"Data": {...}, "Metadata": {...}}` to `/{function name}` and expects `{"Outputs", "Logs", "ReturnValue"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error;
use crate::intake::Intake;
use crate::sync::Syncer;

/// `function-sync`'s timer: one [`crate::timer::tick`], answered in the host's envelope.
pub async fn timer(State(intake): State<Arc<Intake>>, State(syncer): State<Arc<Syncer>>, body: Bytes) -> Response {
    let envelope: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "not_json", format!("the invocation is not JSON: {e}")),
    };
    let past_due = envelope.pointer("/Data/timer/IsPastDue").and_then(Value::as_bool).unwrap_or(false);
    let mut tick = match crate::timer::tick(&intake, &syncer).await {
        Ok(tick) => tick,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "sync_failed", e),
    };
    if past_due {
        tick.logs.push("timer was past due".into());
    }
    axum::Json(json!({
        "Outputs": {},
        "ReturnValue": serde_json::to_string(&tick).unwrap_or_default(),
        "Logs": tick.logs,
    }))
    .into_response()
}
