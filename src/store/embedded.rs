//! The embedded store: itsmc's state in one redb file, for a single instance with a local disk.
//!
//! It implements [`Store`] (tables of JSON values with etags, conditional insert and compare-and-swap)
//! over `<ITSMC_DATA_DIR>/itsmc.redb`. Each itsmc table is a redb table of key -> record, where a record
//! is a format byte, the etag as a big-endian `u64` and the JSON bytes. Etags come from one counter
//! stored in the same transactions as the data, so they never repeat, even across restarts, and a
//! compare-and-swap can never be fooled by a value that was deleted and written again (ABA).
//!
//! Writes must be durable before they are acknowledged: a claim that is acknowledged and then lost
//! in a crash would let a second work item be opened for the same alert. A durable redb commit is an
//! fsync, a few milliseconds on real disks, and the alert path makes about three conditional writes
//! per alert, so one commit per write would cap itsmc at a few hundred alerts per second. Hence
//! **group commit** (in [`writer`]): callers send their operation to one writer thread, which takes
//! everything queued, applies it in one write transaction in arrival order (each condition sees the
//! earlier operations of the batch), commits once and answers every caller. Under load one commit
//! carries every write queued while the previous one was syncing (up to 1,024); alone, a write waits
//! for exactly one commit, as it would anyway.
//!
//! Reads do not queue behind the writer: redb readers see the last commit through their own
//! transactions (MVCC), concurrently with the writer.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Entry, Filter, Insert, Page, Store, StoreError, Swap, Table};
use writer::{Applied, Op, Request};

/// The database file inside the data directory.
const FILE_NAME: &str = "itsmc.redb";

/// Bookkeeping beside the data tables: the last version number used (etags are version numbers).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VERSION: &str = "last_version";

/// The state is small (links of open work items and the delivery outbox); redb's default cache cap of
/// 1 GiB would let a long-running instance grow towards a small container's memory limit.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A store in one redb file, with a group-commit writer thread.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// `None` only while dropping: closing the channel is what tells the writer to finish.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// What readers and the writer share.
struct Shared {
    dir: PathBuf,
    path: PathBuf,
    /// `None` while the writer reopens the file after a failed commit, and after shutdown. Readers
    /// only hold the lock while beginning a transaction, never an `Arc` clone, so the writer can always
    /// take the database back to close it.
    db: RwLock<Option<Arc<Database>>>,
}

impl EmbeddedStore {
    /// Open (creating if needed) the store in `dir`, holding it exclusively until dropped.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError::Unavailable(format!("cannot create the data directory {}: {err}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_database(&path)?;
        let last_version = prepare(&db, &path)?;
        let shared = Arc::new(Shared { dir: dir.to_path_buf(), path, db: RwLock::new(Some(Arc::new(db))) });
        let (requests, inbox) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("itsmc-store-writer".into())
                .spawn(move || writer::run(&shared, &inbox, last_version))
                .map_err(|err| StoreError::Unavailable(format!("cannot start the store writer thread: {err}")))?
        };
        Ok(EmbeddedStore { shared, requests: Some(requests), writer: Some(writer) })
    }

    /// Queue a write for the writer thread and wait for its commit.
    async fn write(&self, table: Table, key: &str, op: Op) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { table, key: key.to_owned(), op, reply };
        let stopped = || StoreError::Unavailable("the store writer thread has stopped".into());
        self.requests.as_ref().ok_or_else(stopped)?.send(request).map_err(|_| stopped())?;
        // The reply sender is only dropped unanswered if the writer thread panicked.
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The writer drains what is already queued (std mpsc delivers queued messages before reporting
        // the disconnect), answers it, then closes the database. Joining makes the file free to reopen
        // as soon as the store is gone; it waits at most for one commit.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.shared.path.display(), "the store writer thread panicked");
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError> {
        // Runs on the calling task, not through spawn_blocking: a get is one B-tree lookup, almost always
        // from redb's page cache. Measured on a 2-core VM (benches/store.rs, 64,000 entries): 2.8 µs per
        // get inline, while the spawn_blocking round trip alone costs 21 µs, several times the read.
        // Even a cold lookup is a few page reads, well within what a tokio task may block.
        self.shared.get(table, key)
    }

    async fn insert(&self, table: Table, key: &str, value: &Value) -> Result<Insert, StoreError> {
        // Serialized here, on the caller's thread, so the single writer thread only does B-tree work.
        let json = to_json(value)?;
        match self.write(table, key, Op::Insert { json }).await? {
            Applied::Written(etag) => Ok(Insert::Inserted { etag: format_etag(etag) }),
            Applied::Unchanged(Some((etag, json))) => Ok(Insert::Conflict(entry(table, key, etag, &json)?)),
            other => Err(unexpected("insert", &other)),
        }
    }

    async fn replace(&self, table: Table, key: &str, value: &Value, if_match: &str) -> Result<Swap, StoreError> {
        let json = to_json(value)?;
        let op = Op::Replace { json, if_match: parse_etag(if_match) };
        match self.write(table, key, op).await? {
            Applied::Written(etag) => Ok(Swap::Replaced { etag: format_etag(etag) }),
            Applied::Unchanged(Some((etag, json))) => Ok(Swap::Stale(Some(entry(table, key, etag, &json)?))),
            Applied::Unchanged(None) => Ok(Swap::Stale(None)),
            other => Err(unexpected("replace", &other)),
        }
    }

    async fn delete(&self, table: Table, key: &str, if_match: &str) -> Result<bool, StoreError> {
        let op = Op::Delete { if_match: parse_etag(if_match) };
        match self.write(table, key, op).await? {
            Applied::Deleted => Ok(true),
            Applied::Unchanged(_) => Ok(false),
            other => Err(unexpected("delete", &other)),
        }
    }

    async fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // Unlike a get, a scan may walk a whole table (a filter that matches little), so it leaves the
        // async runtime.
        let shared = self.shared.clone();
        let filter = filter.map(|f| (f.field.to_owned(), f.value.to_owned()));
        let after = continuation.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let filter = filter.as_ref().map(|(field, value)| Filter { field, value });
            shared.scan(table, filter, after.as_deref(), limit)
        })
        .await
        .map_err(|err| StoreError::Unavailable(format!("a store scan failed: {err}")))?
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.shared.dir.display())
    }
}

impl Shared {
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let db = db.as_ref().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{} is being reopened after a failed write, or the store is shutting down",
                self.path.display()
            ))
        })?;
        db.begin_read().map_err(|err| self.failure("reading", err))
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.begin_read()?;
        let rows = txn.open_table(definition(table)).map_err(|err| self.failure("reading", err))?;
        let Some(record) = rows.get(key).map_err(|err| self.failure("reading", err))? else {
            return Ok(None);
        };
        let (etag, json) = decode_record(table, key, record.value())?;
        entry(table, key, etag, json).map(Some)
    }

    fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        use std::ops::Bound;
        // A zero limit would return an empty page that continues where it started, forever.
        let limit = limit.max(1);
        let txn = self.begin_read()?;
        let rows = txn.open_table(definition(table)).map_err(|err| self.failure("reading", err))?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = rows.range::<&str>((lower, Bound::Unbounded)).map_err(|err| self.failure("reading", err))?;
        let mut page = Page::default();
        for row in range {
            let (key, record) = row.map_err(|err| self.failure("reading", err))?;
            let key = key.value();
            if page.entries.len() == limit {
                // There is at least one more row, so a next page may have entries: continue after the
                // last one returned. Without this peek a full last page would cost an empty extra one.
                page.continuation = page.entries.last().map(|e| e.key.clone());
                break;
            }
            // A record that cannot be read fails the scan rather than being skipped: skipping would
            // silently drop, say, a pending delivery from the outbox.
            let (etag, json) = decode_record(table, key, record.value())?;
            let entry = entry(table, key, etag, json)?;
            let keep = filter.is_none_or(|f| entry.value.get(f.field).and_then(Value::as_str) == Some(f.value));
            if keep {
                page.entries.push(entry);
            }
        }
        Ok(page)
    }

    /// A redb error while using the file: `Corrupt` when redb says the file is damaged, otherwise
    /// `Unavailable` naming the file and the cause (an I/O error such as a full disk).
    fn failure(&self, doing: &str, err: impl Into<redb::Error>) -> StoreError {
        failure(&self.path, doing, err.into())
    }
}

fn failure(path: &Path, doing: &str, err: redb::Error) -> StoreError {
    match err {
        redb::Error::Corrupted(detail) => StoreError::Corrupt(format!("{}: {detail}", path.display())),
        err => StoreError::Unavailable(cause(path, doing, &err)),
    }
}

/// What went wrong, naming the file: "committing to /data/itsmc.redb failed: I/O error: No space left
/// on device (os error 28)".
fn cause(path: &Path, doing: &str, err: &redb::Error) -> String {
    format!("{doing} {} failed: {err}", path.display())
}

/// The message inside a `StoreError`, to build another one from without repeating its prefix.
fn detail(err: StoreError) -> String {
    match err {
        StoreError::Unavailable(detail) | StoreError::Corrupt(detail) => detail,
    }
}

/// Open the file, turning "someone else has it" into advice for the operator.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|err| match err {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::Unavailable(format!(
                "{} is already open in another process: another itsmc may be running with the same \
                     ITSMC_DATA_DIR; stop it, or give this instance its own data directory",
                path.display()
            ))
        }
        redb::DatabaseError::UpgradeRequired(format) => StoreError::Corrupt(format!(
            "{} is in redb file format {format}, which this version of itsmc cannot read",
            path.display()
        )),
        redb::DatabaseError::Storage(redb::StorageError::Io(err)) if err.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt(format!("{} is not an itsmc database: {err}", path.display()))
        }
        err => failure(path, "opening", err.into()),
    })
}

/// Make sure every table exists (readers then never meet a missing one) and read the version counter.
fn prepare(db: &Database, path: &Path) -> Result<u64, StoreError> {
    let fail = |err: redb::Error| failure(path, "preparing", err);
    let ready = {
        let txn = db.begin_read().map_err(|err| fail(err.into()))?;
        let tables_exist = Table::ALL.iter().all(|&t| txn.open_table(definition(t)).is_ok());
        match txn.open_table(META) {
            Ok(meta) if tables_exist => Some(read_last_version(&meta).map_err(|err| fail(err.into()))?),
            _ => None,
        }
    };
    if let Some(last) = ready {
        return Ok(last);
    }
    let txn = db.begin_write().map_err(|err| fail(err.into()))?;
    for table in Table::ALL {
        txn.open_table(definition(table)).map_err(|err| fail(err.into()))?;
    }
    let last =
        read_last_version(&txn.open_table(META).map_err(|err| fail(err.into()))?).map_err(|err| fail(err.into()))?;
    txn.commit().map_err(|err| fail(err.into()))?;
    Ok(last)
}

fn read_last_version(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, redb::StorageError> {
    Ok(meta.get(LAST_VERSION)?.map_or(0, |v| v.value()))
}

/// Record layout version; a file from an incompatible future layout reads as `Corrupt`, never as data.
const RECORD_FORMAT: u8 = 1;
const RECORD_HEADER: usize = 1 + 8;

fn encode_record(etag: u64, json: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER + json.len());
    record.push(RECORD_FORMAT);
    record.extend_from_slice(&etag.to_be_bytes());
    record.extend_from_slice(json);
    record
}

fn decode_record<'a>(table: Table, key: &str, record: &'a [u8]) -> Result<(u64, &'a [u8]), StoreError> {
    match record.split_first() {
        Some((&RECORD_FORMAT, rest)) if rest.len() >= 8 => {
            let (etag, json) = rest.split_at(8);
            Ok((u64::from_be_bytes(etag.try_into().expect("8 bytes")), json))
        }
        _ => Err(StoreError::Corrupt(format!(
            "{}/{key}: the record is not in a format this version of itsmc writes",
            table.name()
        ))),
    }
}

fn entry(table: Table, key: &str, etag: u64, json: &[u8]) -> Result<Entry, StoreError> {
    let value = serde_json::from_slice(json)
        .map_err(|err| StoreError::Corrupt(format!("{}/{key}: the stored value is not JSON: {err}", table.name())))?;
    Ok(Entry { key: key.to_owned(), etag: format_etag(etag), value })
}

fn to_json(value: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Corrupt(format!("the value cannot be serialized: {err}")))
}

fn format_etag(etag: u64) -> String {
    format!("{etag:016x}")
}

/// `None` for an etag this store never issued: it matches nothing, and the caller gets `Stale`.
fn parse_etag(etag: &str) -> Option<u64> {
    // The round trip rejects spellings `from_str_radix` tolerates ("+..", upper case): only the exact
    // string handed out matches.
    u64::from_str_radix(etag, 16).ok().filter(|&n| format_etag(n) == etag)
}

fn unexpected(doing: &str, applied: &Applied) -> StoreError {
    StoreError::Unavailable(format!("the store writer answered {doing} with {applied:?}"))
}
