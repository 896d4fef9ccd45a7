//! Where the sync's rows go: Azure Monitor's Logs Ingestion API ([`client`]), or, with no endpoint
//! configured (the embedded defaults), the local store ([`local`]), where `GET /api/servicedesk` shows what
//! would have been sent.
//!
//! Rows travel in [`Batch`]es: a JSON array under the API's 1 MB limit per call (which it applies to the
//! data before and after compression alike), built row by row by [`Batcher`].

pub mod client;
pub mod connector_log;
pub mod local;

use std::time::Duration;

use crate::store::StoreError;
use crate::sync::schema::{Row, Schema};

/// The Logs Ingestion API takes at most 1 MB per call; a little is kept back for the brackets.
pub const MAX_BATCH_BYTES: usize = 1_000_000 - 16;

/// `data` gzip-compressed as Logs Ingestion takes it (and as refused batches are kept). Level 1: JSON rows
/// still shrink about tenfold, at a fraction of the default level's CPU.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 6), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Rows for one stream, as the JSON array that is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub schema: &'static Schema,
    pub json: String,
    pub rows: usize,
}

/// Gathers rows into batches of at most `max_bytes` of JSON.
pub struct Batcher {
    schema: &'static Schema,
    max_bytes: usize,
    json: String,
    rows: usize,
    scratch: String,
    /// Buffers of sent batches, to build the next ones in: a megabyte allocated and freed per batch
    /// fragmented the heap until the peak memory of a long sync crept up.
    spare: Vec<String>,
}

impl Batcher {
    pub fn new(schema: &'static Schema, max_bytes: usize) -> Batcher {
        Batcher {
            schema,
            max_bytes,
            json: String::with_capacity(max_bytes + 2),
            rows: 0,
            scratch: String::new(),
            spare: Vec::new(),
        }
    }

    /// Adds a row; answers the batch it completed, when this row did not fit in it. A single row over the
    /// limit makes a batch of its own, which the API will refuse with a reason (it is kept, not lost).
    pub fn push(&mut self, row: &Row) -> Option<Batch> {
        self.scratch.clear();
        row.write_json(&mut self.scratch);
        let full = self.rows > 0 && self.json.len() + 1 + self.scratch.len() + 1 > self.max_bytes;
        let done = if full { self.take() } else { None };
        self.json.push(if self.rows == 0 { '[' } else { ',' });
        self.json.push_str(&self.scratch);
        self.rows += 1;
        done
    }

    /// The rows gathered so far, if any.
    pub fn take(&mut self) -> Option<Batch> {
        if self.rows == 0 {
            return None;
        }
        let next = self.spare.pop().unwrap_or_else(|| String::with_capacity(self.max_bytes + 2));
        let mut json = std::mem::replace(&mut self.json, next);
        json.push(']');
        let rows = std::mem::take(&mut self.rows);
        Some(Batch { schema: self.schema, json, rows })
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Takes back a sent batch's buffer for a later batch.
    pub fn recycle(&mut self, mut json: String) {
        if self.spare.len() < 4 {
            json.clear();
            self.spare.push(json);
        }
    }
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Throttled (429), a server error, no answer: send it again, after `retry_after` when the service said.
    #[error("{message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// The service refused this batch (400, 413): sending it again cannot help. It is kept for inspection.
    #[error("{0}")]
    Refused(String),
    /// The setup is wrong (no token, no role, unknown rule or stream): nothing can be sent until an operator
    /// fixes it; the message says what.
    #[error("{0}")]
    Setup(String),
}

impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> IngestError {
        match error {
            StoreError::Unavailable(message) => IngestError::Unavailable { message, retry_after: None },
            other => IngestError::Refused(other.to_string()),
        }
    }
}

/// The destination of the sync's batches.
pub enum Sink {
    LogsIngestion(Box<client::LogsIngestion>),
    Local(local::LocalRows),
}

impl Sink {
    pub async fn send(&self, batch: &Batch) -> Result<(), IngestError> {
        match self {
            Sink::LogsIngestion(client) => client.send(batch).await,
            Sink::Local(local) => local.send(batch).await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::LogsIngestion(client) => client.describe(),
            Sink::Local(_) => "local store (no ITSMC_LOGS_ENDPOINT; see GET /api/servicedesk)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::schema::service_desk;

    #[test]
    fn batches_stay_under_the_limit_and_keep_every_row() {
        let schema = service_desk();
        let title = schema.index("Title_s");
        let mut batcher = Batcher::new(schema, 1_000);
        let mut batches = Vec::new();
        for i in 0..100 {
            let mut row = schema.row();
            row.set(title, &format!("incident {i} {}", "x".repeat(i)));
            batches.extend(batcher.push(&row));
        }
        batches.extend(batcher.take());
        assert!(batcher.is_empty() && batcher.take().is_none());
        let mut seen = 0;
        for batch in &batches {
            assert!(batch.json.len() <= 1_000, "{} bytes", batch.json.len());
            let rows: Vec<serde_json::Value> = serde_json::from_str(&batch.json).unwrap();
            assert_eq!(rows.len(), batch.rows);
            for row in rows {
                assert!(row["Title_s"].as_str().unwrap().starts_with(&format!("incident {seen} ")));
                seen += 1;
            }
        }
        assert_eq!(seen, 100);
        assert!(batches.len() > 5);
    }
}
