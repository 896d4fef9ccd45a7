//! The connector log: one `ServiceDeskLog_CL` row per alert operation and per sync run, in ITSMC's columns
//! (`LogType_s`, `Message`, `Status_b`, ...) and itsmc's own (`Operation_s`, `WorkItemId_s`, `DurationMs_d`,
//! ...), so the workspace shows what the connector did and why it failed, next to the work items.
//!
//! Rows are buffered in memory and flushed through the sync's [`Sink`]: at the end of each timer
//! invocation, every few seconds while serving, and at shutdown. A flush that fails keeps its rows for the
//! next one; past [`MAX_BUFFERED`] the oldest are dropped (they are in the process log too).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Batcher, IngestError, MAX_BATCH_BYTES, Sink};
use crate::sync::schema::{self, Row};

pub const MAX_BUFFERED: usize = 20_000;

/// What happened, for one row.
#[derive(Debug, Default)]
pub struct Event<'a> {
    pub connection: &'a str,
    /// `created`, `updated`, `resolved`, `queued`, `dead-lettered`, `sync Incident`, ...
    pub operation: &'a str,
    pub success: bool,
    pub message: String,
    pub error: Option<String>,
    /// A stable code for the error (`itsm_rejected`, `ingest_refused`, ...).
    pub error_code: Option<&'a str>,
    pub alert_id: Option<&'a str>,
    pub work_item: Option<&'a str>,
    pub http_status: Option<u16>,
    pub attempt: Option<u32>,
    pub duration_ms: Option<u64>,
}

#[derive(Default)]
pub struct ConnectorLog {
    rows: Mutex<VecDeque<Row>>,
}

impl ConnectorLog {
    pub fn record(&self, event: Event<'_>) {
        let schema = schema::service_desk_log();
        let mut row = schema.row();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        row.set(schema.index("TimeGenerated"), now.as_str());
        row.set(schema.index("StatusLogTime_t"), &now);
        row.set(schema.index("LogType_s"), if event.success { "INFO" } else { "ERROR" });
        row.set(schema.index("Message"), &event.message);
        row.set(schema.index("ExceptionMessage_s"), event.error.as_deref().unwrap_or_default());
        row.set(schema.index("ServiceDeskConnectionName_s"), event.connection);
        row.set_bool(schema.index("Status_b"), event.success);
        row.set_number(schema.index("ActionStatus_d"), if event.success { 1.0 } else { 0.0 });
        row.set(schema.index("AlertId_s"), event.alert_id.unwrap_or_default());
        row.set(schema.index("WorkItemId_s"), event.work_item.unwrap_or_default());
        row.set(schema.index("Operation_s"), event.operation);
        row.set(schema.index("ErrorCode_s"), event.error_code.unwrap_or_default());
        if let Some(status) = event.http_status {
            row.set_number(schema.index("HttpStatus_d"), f64::from(status));
        }
        if let Some(attempt) = event.attempt {
            row.set_number(schema.index("Attempt_d"), f64::from(attempt));
        }
        if let Some(ms) = event.duration_ms {
            row.set_number(schema.index("DurationMs_d"), ms as f64);
        }
        if let Ok(mut rows) = self.rows.lock() {
            if rows.len() == MAX_BUFFERED {
                rows.pop_front();
            }
            rows.push_back(row);
        }
    }

    pub fn len(&self) -> usize {
        self.rows.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends what is buffered; the number of rows sent. Rows of a batch that failed go back to the buffer,
    /// except when the service refused them for good (then they would fail forever).
    pub async fn flush(&self, sink: &Sink) -> Result<usize, IngestError> {
        let rows: Vec<Row> = match self.rows.lock() {
            Ok(mut rows) => rows.drain(..).collect(),
            Err(_) => return Ok(0),
        };
        let mut batcher = Batcher::new(schema::service_desk_log(), MAX_BATCH_BYTES);
        let mut batches = Vec::new();
        let mut cut = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(batch) = batcher.push(row) {
                batches.push(batch);
                cut.push(i);
            }
        }
        batches.extend(batcher.take());
        cut.push(rows.len());
        let mut sent = 0;
        let mut from = 0;
        for (batch, to) in batches.iter().zip(cut) {
            match sink.send(batch).await {
                Ok(()) => sent += batch.rows,
                Err(IngestError::Refused(reason)) => {
                    tracing::error!(rows = batch.rows, %reason, "Logs Ingestion refused connector log rows; they are dropped");
                }
                Err(error) => {
                    if let Ok(mut buffer) = self.rows.lock() {
                        for row in rows[from..].iter().rev() {
                            if buffer.len() < MAX_BUFFERED {
                                buffer.push_front(row.clone());
                            }
                        }
                    }
                    return Err(error);
                }
            }
            from = to;
        }
        Ok(sent)
    }
}
