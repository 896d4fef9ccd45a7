//! The embedded stand-in for Log Analytics: with no Logs Ingestion endpoint configured, `ServiceDesk_CL`
//! rows are kept in the store (table `servicedesk`), the latest per work item, and `GET /api/servicedesk`
//! lists them. Log Analytics would keep every version; a newcomer wants to see the current one.
//! `ServiceDeskLog_CL` rows are not kept here: the same events are in the process log.

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{Batch, IngestError};
use crate::store::{Filter, Store, StoreError, Table, upsert};
use crate::sync::schema;

pub struct LocalRows {
    store: Arc<dyn Store>,
}

impl LocalRows {
    pub fn new(store: Arc<dyn Store>) -> LocalRows {
        LocalRows { store }
    }

    pub async fn send(&self, batch: &Batch) -> Result<(), IngestError> {
        if batch.schema.table != schema::service_desk().table {
            return Ok(());
        }
        let rows: Vec<Map<String, Value>> = serde_json::from_str(&batch.json)
            .map_err(|e| IngestError::Refused(format!("a batch that is not a JSON array of objects: {e}")))?;
        let mut writes = JoinSet::new();
        for row in rows {
            let store = Arc::clone(&self.store);
            writes.spawn(async move {
                upsert(store.as_ref(), Table::ServiceDesk, &row_key(&row), &Value::Object(row)).await
            });
        }
        while let Some(written) = writes.join_next().await {
            written.map_err(|e| IngestError::Unavailable { message: e.to_string(), retry_after: None })??;
        }
        Ok(())
    }

    /// The kept rows of one `ServiceDeskWorkItemType_s`, at most `limit`, in key order (which is no order a
    /// person would choose: callers sort).
    pub async fn rows(store: &dyn Store, kind: &str, limit: usize) -> Result<Vec<Value>, StoreError> {
        let filter = Filter { field: "ServiceDeskWorkItemType_s", value: kind };
        let mut rows = Vec::new();
        let mut continuation = None;
        loop {
            let page = store.scan(Table::ServiceDesk, Some(filter), continuation.as_deref(), 1000).await?;
            rows.extend(page.entries.into_iter().map(|e| e.value));
            continuation = page.continuation;
            if continuation.is_none() || rows.len() >= limit {
                rows.truncate(limit);
                return Ok(rows);
            }
        }
    }
}

/// One key per work item: connection, type and number, hashed into the hex the store's keys are.
fn row_key(row: &Map<String, Value>) -> String {
    let field = |name: &str| row.get(name).and_then(Value::as_str).unwrap_or_default();
    let mut hash = Sha256::new();
    for name in ["ServiceDeskConnectionName_s", "ServiceDeskWorkItemType_s", "ServiceDeskId_s"] {
        hash.update(field(name).as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}
