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
use crate::outbox;

/// `function-sync`'s timer: drain the outbox. The ITSM-to-Log-Analytics sync is issue 4's work.
pub async fn timer(State(intake): State<Arc<Intake>>, body: Bytes) -> Response {
    let envelope: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "not_json", format!("the invocation is not JSON: {e}")),
    };
    let past_due = envelope.pointer("/Data/timer/IsPastDue").and_then(Value::as_bool).unwrap_or(false);
    let report = outbox::drain(&intake).await;
    let mut logs = vec![format!(
        "outbox: {} pending, {} attempted, {} succeeded, {} requeued, {} dead-lettered",
        report.pending, report.attempted, report.succeeded, report.requeued, report.dead
    )];
    if past_due {
        logs.push("timer was past due".into());
    }
    logs.push("sync to Log Analytics: not implemented yet".into());
    axum::Json(json!({
        "Outputs": {},
        "Logs": logs,
        "ReturnValue": json!({ "outbox": report }).to_string(),
    }))
    .into_response()
}
