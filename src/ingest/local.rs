//! The embedded stand-in for Log Analytics: with no Logs Ingestion endpoint configured, `ServiceDesk_CL`
//! rows are kept in the store (table `servicedesk`), the latest per work item, and `GET /api/servicedesk`
//! lists them. Log Analytics would keep every version; a newcomer wants to see the current one.
//! `ServiceDeskLog_CL` rows are not kept here: the same events are in the process log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{Batch, IngestError};
use crate::store::{Filter, Store, StoreError, Table, for_each, update, upsert};
use crate::sync::schema;

pub struct LocalRows {
    store: Arc<dyn Store>,
    /// Whether the summary counts every kept row: [`UNKNOWN`] until the first batch finds it (none: rows kept by an
    /// earlier version were never counted), and not after a write of it failed (the rows of that batch were kept
    /// uncounted). A summary not [`TRUSTED`] is counted again from the rows.
    summary: AtomicU8,
}

impl LocalRows {
    pub fn new(store: Arc<dyn Store>) -> LocalRows {
        LocalRows { store, summary: AtomicU8::new(UNKNOWN) }
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
                let counted = Counted::of(&row);
                let replaced = upsert(store.as_ref(), Table::ServiceDesk, &row_key(&row), &Value::Object(row)).await?;
                Ok::<_, StoreError>((replaced.as_ref().and_then(Value::as_object).map(Counted::of), counted))
            });
        }
        // Every row written is counted, also when another failed (the batch is sent again, and then its written rows
        // are replaced by themselves, which counts nothing).
        let (mut changes, mut failed) = (Vec::new(), None);
        while let Some(written) = writes.join_next().await {
            match written.map_err(|e| StoreError::Unavailable(e.to_string())).and_then(|w| w) {
                Ok(change) => changes.push(change),
                Err(e) => failed = Some(e),
            }
        }
        let trusted = match self.summary.load(Ordering::Acquire) {
            UNKNOWN => self.store.get(Table::Sync, SUMMARY_KEY).await.is_ok_and(|found| found.is_some()),
            known => known == TRUSTED,
        };
        let counted = if trusted {
            update(self.store.as_ref(), Table::Sync, SUMMARY_KEY, |summary| {
                for (before, after) in &changes {
                    if let Some(before) = before {
                        before.add(summary, -1);
                    }
                    after.add(summary, 1);
                }
            })
            .await
        } else {
            self.recount().await
        };
        self.summary.store(if counted.is_ok() { TRUSTED } else { STALE }, Ordering::Release);
        match (failed, counted) {
            (Some(e), _) | (None, Err(e)) => Err(e.into()),
            (None, Ok(())) => Ok(()),
        }
    }

    /// The summary counted from the rows, when there is none or it is not trusted.
    async fn recount(&self) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        let mut summary = Value::Null;
        for_each(store, Table::ServiceDesk, None, |entry| {
            if let Some(row) = entry.value.as_object() {
                Counted::of(row).add(&mut summary, 1);
            }
        })
        .await?;
        upsert(store, Table::Sync, SUMMARY_KEY, &summary).await.map(|_| ())
    }

    /// How many rows are kept per work item type, and of them how many per state and per priority (kept by
    /// `send`, so a dashboard need not read a million rows to count them).
    pub async fn summary(store: &dyn Store) -> Result<Value, StoreError> {
        Ok(store.get(Table::Sync, SUMMARY_KEY).await?.map(|e| e.value).unwrap_or(Value::Null))
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

const SUMMARY_KEY: &str = "servicedesk-summary";
const UNKNOWN: u8 = 0;
const TRUSTED: u8 = 1;
const STALE: u8 = 2;

/// What the summary counts of one row: its type, state and priority.
struct Counted {
    kind: String,
    state: String,
    priority: String,
}

impl Counted {
    fn of(row: &Map<String, Value>) -> Counted {
        let field = |name: &str| row.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
        let named = |value: Option<&str>| value.unwrap_or("(none)").to_string();
        Counted {
            kind: named(field("ServiceDeskWorkItemType_s")),
            state: named(field("IncidentState_s").or_else(|| field("CRState_s"))),
            priority: named(field("Priority_s")),
        }
    }

    /// Adds `by` to this row's counts in `summary`: `{type: {"rows": n, "state": {..}, "priority": {..}}}`.
    fn add(&self, summary: &mut Value, by: i64) {
        if !summary.is_object() {
            *summary = json!({});
        }
        let kind = &mut summary[self.kind.as_str()];
        if !kind.is_object() {
            *kind = json!({});
        }
        let bump = |slot: &mut Value| *slot = json!(slot.as_i64().unwrap_or(0) + by);
        bump(&mut kind["rows"]);
        for (group, value) in [("state", &self.state), ("priority", &self.priority)] {
            if !kind[group].is_object() {
                kind[group] = json!({});
            }
            bump(&mut kind[group][value.as_str()]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn batch(rows: &[(&str, &str, &str)]) -> Batch {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(id, state, priority)| {
                json!({ "ServiceDeskConnectionName_s": "prod", "ServiceDeskWorkItemType_s": "Incident",
                        "ServiceDeskId_s": id, "IncidentState_s": state, "Priority_s": priority })
            })
            .collect();
        Batch { schema: schema::service_desk(), json: serde_json::to_string(&rows).unwrap(), rows: rows.len() }
    }

    /// A record synced again in another state moves from its old state's count to its new one; sending the same
    /// batch twice (a retried send) counts nothing twice.
    #[tokio::test]
    async fn the_summary_counts_each_record_once_in_its_latest_state() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let local = LocalRows::new(Arc::clone(&store));
        let first = batch(&[("INC1", "New", "1 - Critical"), ("INC2", "New", "3 - Moderate"), ("INC3", "", "")]);
        local.send(&first).await.unwrap();
        local.send(&first).await.unwrap();
        local.send(&batch(&[("INC1", "Resolved", "1 - Critical")])).await.unwrap();
        let expected = json!({
            "rows": 3,
            "state": { "New": 1, "Resolved": 1, "(none)": 1 },
            "priority": { "1 - Critical": 1, "3 - Moderate": 1, "(none)": 1 },
        });
        assert_eq!(LocalRows::summary(store.as_ref()).await.unwrap()["Incident"], expected);
        // Kept by a version that kept no summary: a new process counts the rows once, then goes on adding.
        store
            .delete(Table::Sync, SUMMARY_KEY, &store.get(Table::Sync, SUMMARY_KEY).await.unwrap().unwrap().etag)
            .await
            .unwrap();
        let restarted = LocalRows::new(Arc::clone(&store));
        restarted.send(&batch(&[("INC4", "New", "")])).await.unwrap();
        let summary = LocalRows::summary(store.as_ref()).await.unwrap();
        assert_eq!(summary["Incident"]["rows"], 4);
        assert_eq!(summary["Incident"]["state"]["New"], 2);
        assert_eq!(
            summary["Incident"],
            json!({
                "rows": 4,
                "state": { "New": 2, "Resolved": 1, "(none)": 1 },
                "priority": { "1 - Critical": 1, "3 - Moderate": 1, "(none)": 2 },
            })
        );
    }
}
