//! State: the one trait every store implements, and how the rest of itsmc uses it.
//!
//! The store is a set of tables of JSON values under string keys, each with an etag. Two primitives carry
//! all concurrency: `insert` fails with `Conflict` when the key exists (a claim), and `replace` with an
//! `if_match` etag fails with `Stale` when someone else wrote first (compare-and-swap). These are exactly
//! Azure Table Storage's conditional insert (409) and `If-Match` (412), so the embedded store here and the
//! Table Storage store of issue 3 pass the same test suite.

mod embedded;
mod table;

pub use table::TableStore;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;
use serde_json::Value;

/// The tables itsmc keeps. Keys never contain `/ \ # ?` (Table Storage forbids them); callers use hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Correlation key -> the work item it is linked to (and its lifecycle state).
    Links,
    /// Delivery id -> the operation, its attempts, lease and outcome. Pending ones are the outbox.
    Deliveries,
    /// The sync's state: watermarks per connection and kind, the run lease, batches Logs Ingestion refused.
    Sync,
    /// Without a Logs Ingestion endpoint: the `ServiceDesk_CL` rows that would have been sent, latest per
    /// work item.
    ServiceDesk,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Links, Table::Deliveries, Table::Sync, Table::ServiceDesk];

    pub fn name(self) -> &'static str {
        match self {
            Table::Links => "links",
            Table::Deliveries => "deliveries",
            Table::Sync => "sync",
            Table::ServiceDesk => "servicedesk",
        }
    }
}

/// A stored value with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub etag: String,
    pub value: Value,
}

/// Outcome of a conditional insert.
#[derive(Debug, Clone, PartialEq)]
pub enum Insert {
    Inserted {
        etag: String,
    },
    /// The key already existed; this is what is stored now.
    Conflict(Entry),
}

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq)]
pub enum Swap {
    Replaced {
        etag: String,
    },
    /// The etag did not match; this is what is stored now (`None`: the key is gone).
    Stale(Option<Entry>),
}

/// One page of a scan, in key order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass back to continue after the last entry; `None` when the scan is complete.
    pub continuation: Option<String>,
}

/// Only entries whose top-level string field `field` equals `value` (Table Storage: `field eq 'value'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    pub field: &'a str,
    pub value: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or written (disk full, server down). Nothing was changed.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// The store does not take this key or value (too large, characters it forbids). Nothing was written, and
    /// trying again cannot help.
    #[error("the state store refuses this: {0}")]
    Refused(String),
    /// Stored data could not be read back (a bug, or a file from an incompatible version).
    #[error("the state store holds data it cannot read: {0}")]
    Corrupt(String),
}

/// Insert, or replace whatever is there: for values whose last writer wins (a cache, the local rows). A
/// concurrent writer of the same key is retried against a few times. Answers the value replaced, if any.
pub async fn upsert(store: &dyn Store, table: Table, key: &str, value: &Value) -> Result<Option<Value>, StoreError> {
    let mut current = match store.insert(table, key, value).await? {
        Insert::Inserted { .. } => return Ok(None),
        Insert::Conflict(entry) => entry,
    };
    for _ in 0..5 {
        match store.replace(table, key, value, &current.etag).await? {
            Swap::Replaced { .. } => return Ok(Some(current.value)),
            Swap::Stale(Some(now)) => current = now,
            Swap::Stale(None) => {
                if let Insert::Inserted { .. } = store.insert(table, key, value).await? {
                    return Ok(None);
                }
            }
        }
    }
    Err(StoreError::Unavailable(format!("{key} kept changing while it was written")))
}

/// Every entry of `table` (optionally filtered), in key order, a page at a time.
pub async fn for_each(
    store: &dyn Store,
    table: Table,
    filter: Option<Filter<'_>>,
    mut each: impl FnMut(Entry),
) -> Result<(), StoreError> {
    let mut continuation: Option<String> = None;
    loop {
        let page = store.scan(table, filter, continuation.as_deref(), 1000).await?;
        page.entries.into_iter().for_each(&mut each);
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(()),
        }
    }
}

/// Read, change and write back one value, trying again when someone else wrote it in between (for values
/// several writers add to, such as a count). `change` gets `Value::Null` when the key is absent.
pub async fn update(store: &dyn Store, table: Table, key: &str, change: impl Fn(&mut Value)) -> Result<(), StoreError> {
    for attempt in 0..20u32 {
        if attempt > 0 {
            // Writers that collided try again at different moments.
            let wait = rand::random_range(0..5 * attempt as u64);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        let written = match store.get(table, key).await? {
            Some(entry) => {
                let mut value = entry.value;
                change(&mut value);
                matches!(store.replace(table, key, &value, &entry.etag).await?, Swap::Replaced { .. })
            }
            None => {
                let mut value = Value::Null;
                change(&mut value);
                matches!(store.insert(table, key, &value).await?, Insert::Inserted { .. })
            }
        };
        if written {
            return Ok(());
        }
    }
    Err(StoreError::Unavailable(format!("{key} kept changing while it was written")))
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Insert when the key is absent; never overwrites.
    async fn insert(&self, table: Table, key: &str, value: &Value) -> Result<Insert, StoreError>;
    /// Insert when the key is absent: its etag, or `None` when the key exists. Unlike `insert` it does not
    /// read what is there, which costs Table Storage a second request.
    async fn claim(&self, table: Table, key: &str, value: &Value) -> Result<Option<String>, StoreError> {
        Ok(match self.insert(table, key, value).await? {
            Insert::Inserted { etag } => Some(etag),
            Insert::Conflict(_) => None,
        })
    }
    /// Replace when the stored etag is `if_match`.
    async fn replace(&self, table: Table, key: &str, value: &Value, if_match: &str) -> Result<Swap, StoreError>;
    /// Delete when the stored etag is `if_match`; `Ok(false)` when it did not match or the key was absent.
    async fn delete(&self, table: Table, key: &str, if_match: &str) -> Result<bool, StoreError>;
    /// Entries in key order after `continuation`, at most `limit`, optionally filtered.
    async fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// A short description for the health route, e.g. `embedded (./itsmc-data)`. Never contains secrets.
    fn describe(&self) -> String;
}
