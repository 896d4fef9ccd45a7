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
    pub rule: Option<&'a str>,
    pub work_item: Option<&'a str>,
    /// `Incident`, `Event`, `Alert`.
    pub work_item_type: Option<&'a str>,
    /// The computer or resource the alert is about.
    pub computer: Option<&'a str>,
    pub http_status: Option<u16>,
    pub attempt: Option<u32>,
    pub duration_ms: Option<u64>,
}

/// The columns a row fills, looked up in the schema once: rows are made on the alert route.
struct Columns {
    time_generated: usize,
    status_log_time: usize,
    log_type: usize,
    message: usize,
    exception: usize,
    connection: usize,
    status: usize,
    action_status: usize,
    alert_id: usize,
    rule: usize,
    work_item: usize,
    work_item_type: usize,
    computer: usize,
    operation: usize,
    error_code: usize,
    http_status: usize,
    attempt: usize,
    duration: usize,
}

fn columns() -> &'static Columns {
    static COLUMNS: std::sync::OnceLock<Columns> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| {
        let schema = schema::service_desk_log();
        Columns {
            time_generated: schema.index("TimeGenerated"),
            status_log_time: schema.index("StatusLogTime_t"),
            log_type: schema.index("LogType_s"),
            message: schema.index("Message"),
            exception: schema.index("ExceptionMessage_s"),
            connection: schema.index("ServiceDeskConnectionName_s"),
            status: schema.index("Status_b"),
            action_status: schema.index("ActionStatus_d"),
            alert_id: schema.index("AlertId_s"),
            rule: schema.index("AlertRule_s"),
            work_item: schema.index("WorkItemId_s"),
            work_item_type: schema.index("WorkItemType_s"),
            computer: schema.index("Computer"),
            operation: schema.index("Operation_s"),
            error_code: schema.index("ErrorCode_s"),
            http_status: schema.index("HttpStatus_d"),
            attempt: schema.index("Attempt_d"),
            duration: schema.index("DurationMs_d"),
        }
    })
}

#[derive(Default)]
pub struct ConnectorLog {
    rows: Mutex<VecDeque<Row>>,
}

impl ConnectorLog {
    pub fn record(&self, event: Event<'_>) {
        let c = columns();
        let mut row = schema::service_desk_log().row();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        row.set(c.time_generated, &now);
        row.set(c.status_log_time, &now);
        row.set(c.log_type, if event.success { "INFO" } else { "ERROR" });
        row.set(c.message, &event.message);
        row.set(c.exception, event.error.as_deref().unwrap_or_default());
        row.set(c.connection, event.connection);
        row.set_bool(c.status, event.success);
        row.set_number(c.action_status, if event.success { 1.0 } else { 0.0 });
        row.set(c.alert_id, event.alert_id.unwrap_or_default());
        row.set(c.rule, event.rule.unwrap_or_default());
        row.set(c.work_item, event.work_item.unwrap_or_default());
        row.set(c.work_item_type, event.work_item_type.unwrap_or_default());
        row.set(c.computer, event.computer.unwrap_or_default());
        row.set(c.operation, event.operation);
        row.set(c.error_code, event.error_code.unwrap_or_default());
        if let Some(status) = event.http_status {
            row.set_number(c.http_status, f64::from(status));
        }
        if let Some(attempt) = event.attempt {
            row.set_number(c.attempt, f64::from(attempt));
        }
        if let Some(ms) = event.duration_ms {
            row.set_number(c.duration, ms as f64);
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
        let mut batches: Vec<_> = rows.iter().filter_map(|row| batcher.push(row)).collect();
        batches.extend(batcher.take());
        // Batches hold the rows in order: `from` is the first row of the batch being sent.
        let (mut sent, mut from) = (0, 0);
        for batch in &batches {
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
            from += batch.rows;
        }
        Ok(sent)
    }
}
