//! How far the sync got, per connection and kind, kept in the store's `sync` table.
//!
//! A watermark is a position in the ITSM tool's (update time, id) order: everything before it has been
//! accepted by Logs Ingestion. The next run starts a little earlier (the overlap), because a record can
//! be committed after a later-stamped one was read; `recent` remembers what was sent in that window, so
//! re-reading it sends only what is new. A watermark is only ever moved after a batch was accepted, and
//! written with compare-and-swap, so two instances never both move it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{Insert, Store, StoreError, Swap, Table};
use crate::sync::SyncKind;

/// At most this many fingerprints are kept for the overlap window; a burst beyond it keeps the newest.
const MAX_RECENT: usize = 20_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watermark {
    /// The update time of the last record accepted (the product's own UTC text).
    pub updated: String,
    /// Its id.
    pub id: String,
    /// Update time -> fingerprints of the records accepted with it, for the overlap window before `updated`.
    #[serde(default)]
    pub recent: BTreeMap<String, Vec<u64>>,
    /// Rows accepted since the sync of this kind started.
    #[serde(default)]
    pub sent: u64,
    /// When the last run ended (Unix milliseconds), and how.
    #[serde(default)]
    pub last_run_at: i64,
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Watermark {
    pub fn starting_at(updated: String) -> Watermark {
        Watermark { updated, ..Watermark::default() }
    }

    pub fn was_sent(&self, updated: &str, fingerprint: u64) -> bool {
        self.recent.get(updated).is_some_and(|prints| prints.contains(&fingerprint))
    }

    /// Remembers records accepted out of order (after a batch that failed) without moving the position: the
    /// next run reads them again and drops them.
    pub fn remember(&mut self, accepted: Vec<(String, u64)>) {
        self.sent += accepted.len() as u64;
        for (time, print) in accepted {
            self.recent.entry(time).or_default().push(print);
        }
    }

    /// Records that `rows` more were accepted, the last at (`updated`, `id`), with these fingerprints;
    /// forgets fingerprints older than `keep_from`.
    pub fn advance(&mut self, updated: &str, id: &str, accepted: Vec<(String, u64)>, keep_from: &str) {
        self.remember(accepted);
        self.updated = updated.to_string();
        self.id = id.to_string();
        self.recent = self.recent.split_off(keep_from);
        let mut total: usize = self.recent.values().map(Vec::len).sum();
        while total > MAX_RECENT {
            let Some((_, prints)) = self.recent.pop_first() else { break };
            total -= prints.len();
        }
    }
}

/// The store key of a connection's watermark for a kind.
pub fn key(connection: &str, kind: SyncKind) -> String {
    format!("wm-{}-{}", connection.to_ascii_lowercase(), kind.name())
}

/// The watermark and its etag, if the kind was synced before.
pub async fn load(store: &dyn Store, key: &str) -> Result<Option<(Watermark, String)>, StoreError> {
    let Some(entry) = store.get(Table::Sync, key).await? else { return Ok(None) };
    let watermark = serde_json::from_value(entry.value)
        .map_err(|e| StoreError::Corrupt(format!("the sync watermark {key} cannot be read: {e}")))?;
    Ok(Some((watermark, entry.etag)))
}

/// Each kind the connection syncs, with its watermark (`None`: not synced yet), for the health route and the
/// dashboard.
pub async fn of_connection(
    store: &dyn Store,
    defaults: &[SyncKind],
    connection: &crate::config::Connection,
) -> Vec<(SyncKind, Result<Option<Watermark>, StoreError>)> {
    let mut marks = Vec::new();
    for &kind in connection.sync_kinds.as_deref().unwrap_or(defaults) {
        let mark = load(store, &key(&connection.name, kind)).await.map(|found| found.map(|(mark, _)| mark));
        marks.push((kind, mark));
    }
    marks
}

/// Writes the watermark if it is still at `etag` (or absent, for `None`); the new etag, or `None` when
/// another run moved it first.
pub async fn save(
    store: &dyn Store,
    key: &str,
    watermark: &Watermark,
    etag: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let value = serde_json::to_value(watermark).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(match etag {
        None => match store.insert(Table::Sync, key, &value).await? {
            Insert::Inserted { etag } => Some(etag),
            Insert::Conflict(_) => None,
        },
        Some(etag) => match store.replace(Table::Sync, key, &value, etag).await? {
            Swap::Replaced { etag } => Some(etag),
            Swap::Stale(_) => None,
        },
    })
}

/// A record's fingerprint: its id and update time, hashed (the same record updated again is a new one).
pub fn fingerprint(id: &str, updated: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(id).chain_update([0]).chain_update(updated).finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_keeps_only_the_overlap_window() {
        let mut mark = Watermark::starting_at("2026-11-01 00:00:00".into());
        mark.advance(
            "2026-11-01 00:10:00",
            "b",
            vec![("2026-11-01 00:01:00".into(), 1), ("2026-11-01 00:10:00".into(), 2)],
            "2026-11-01 00:05:00",
        );
        assert_eq!((mark.updated.as_str(), mark.id.as_str(), mark.sent), ("2026-11-01 00:10:00", "b", 2));
        assert!(mark.was_sent("2026-11-01 00:10:00", 2));
        assert!(!mark.was_sent("2026-11-01 00:01:00", 1), "older than the window: forgotten");
    }
}
