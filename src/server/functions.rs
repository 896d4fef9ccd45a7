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
use crate::sync::{self, Syncer};

/// `function-sync`'s timer: drain the outbox, sync the connections into Log Analytics, and refresh the
/// connections' configuration once a day.
pub async fn timer(State(intake): State<Arc<Intake>>, State(syncer): State<Arc<Syncer>>, body: Bytes) -> Response {
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
    match outbox::prune(&intake, intake.config.outbox.keep_done, 5_000).await {
        Ok(0) => {}
        Ok(pruned) => logs.push(format!("outbox: {pruned} finished deliveries past their keeping time deleted")),
        Err(e) => logs.push(format!("outbox: finished deliveries could not be pruned: {e}")),
    }
    if past_due {
        logs.push("timer was past due".into());
    }
    let sync = match syncer.run(&sync::Request::default(), &|_| {}).await {
        Ok(sync) => sync,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "sync_failed", e),
    };
    if let Some(why) = &sync.skipped {
        logs.push(format!("sync: skipped, {why}"));
    }
    for run in &sync.runs {
        let stopped = run.error.as_deref().map(|e| format!("; stopped: {e}")).unwrap_or_default();
        logs.push(format!("sync {run}{stopped}"));
    }
    for refreshed in crate::connections::refresh_due(&intake).await {
        logs.push(format!(
            "configuration of {}: {} choice lists, {} templates; {}",
            refreshed.connection,
            refreshed.configuration.choices.len(),
            refreshed.configuration.templates.len(),
            refreshed.diagnosis.message
        ));
    }
    axum::Json(json!({
        "Outputs": {},
        "Logs": logs,
        "ReturnValue": json!({ "outbox": report, "sync": sync }).to_string(),
    }))
    .into_response()
}
