//! The embedded store: itsmc's state in memory, made durable by an append-only log, for a single
//! instance with a local disk.
//!
//! It implements [`Store`] (tables of JSON values with etags, conditional insert and compare-and-swap)
//! under `<ITSMC_DATA_DIR>`: every live key is held in memory, in a hash map per table with its keys also
//! kept in order for scans, and every change is appended to `itsmc.log` before it is acknowledged.
//! Opening the store reads the log back. This is the Bitcask design, and it fits the workload: the alert
//! path makes about four conditional writes per alert to randomly keyed entries. Small values (the sync's
//! watermarks: up to [`HELD_MAX`] bytes of JSON) are held in memory with their key; a larger one (a
//! delivery, which carries the alert's raw body, typically 2-10 KB; a link; a finished delivery) is not: its slot holds where its JSON
//! lies in the log, and a read copies it out of the file (from the page cache, normally). That keeps
//! memory proportional to the number of keys rather than to the size of the outbox: 100,000 pending
//! deliveries of 4 KB take about 25 MB rather than 450 (`cargo bench --bench outbox_memory`).
//!
//! A B-tree file (redb, before) rewrites whole 4 KiB pages for each commit of randomly keyed entries and
//! cost about 90 µs of CPU per alert; appending only the changed entries costs about 40 to 46 (at 5,000
//! alerts/s on a 2-core VM), most of it in the kernel's write and fsync.
//!
//! Writes must be durable before they are acknowledged: a claim that is acknowledged and then lost in
//! a crash would let a second work item be opened for the same alert. An fsync takes milliseconds on
//! real disks, so one per write would cap itsmc at a few hundred alerts per second. Hence **group
//! commit** (in [`writer`]): callers send their operation to one writer thread, which takes everything
//! queued, evaluates it in arrival order (each condition sees the earlier operations of the batch),
//! appends the changes as one record, fsyncs once, and only then applies them to the maps and answers
//! every caller. Under load one fsync carries every write queued since the previous one (up to 1,024),
//! and commits are paced to one per 2 ms so that each carries many even when the disk syncs fast
//! (`COMMIT_INTERVAL` in [`writer`]); alone, a write waits for one fsync, as it would anyway.
//!
//! Reads never wait for the writer: they take a read lock on the maps, which hold only what is durable,
//! copy out the slot (a held value's bytes are shared, a logged one's location is copied), and release
//! the lock before they read a logged value from the file (`pread`, which any number of threads may do
//! at once). Held values are kept as their JSON bytes, which the caller has already serialized for the
//! log: holding them parsed would cost a deep copy of every value written (about as much as parsing a
//! small one) and three to four times the memory, to save a parse per read on a path that reads once
//! per alert.
//!
//! The log only grows, so once it is larger than twice the live data plus 8 MiB the writer thread
//! rewrites it as one put per live entry ([`log::rewrite`]), between batches, streaming logged values
//! from the old file into the new one. Once the new file is in place, every logged slot is pointed into
//! it under the write lock, all at once. A location carries a handle to its file (`Arc<File>`), so a
//! reader that copied a location into the old file just before reads it there, whole: the old file is
//! unlinked by the rename but stays readable until its last handle is dropped. Etags are one counter,
//! never reused (a compare-and-swap must not be fooled by a value deleted and written again: ABA): the
//! log holds the etag of every change, and a compacted log starts with the counter it was written at.
//!
//! The record format, and how a torn tail left by a crash is told from damage, are in [`log`].

mod log;
mod writer;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Entry, Filter, Insert, Page, Store, StoreError, Swap, Table};
use writer::{Applied, Op, Request, Writer};

/// The log inside the data directory.
const LOG_FILE: &str = "itsmc.log";
/// Locked while a store has the directory open, so that two instances never append to one log.
const LOCK_FILE: &str = "itsmc.lock";
/// How long opening waits for the directory's lock before concluding that another process has it.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);
/// Dead bytes the log may hold beyond the live ones before it is compacted: small enough not to matter on
/// disk, large enough that a small state is not rewritten every few seconds.
const COMPACTION_SLACK: u64 = 8 * 1024 * 1024;

/// A scan copies this many entries at a time out of the maps, so that a scan of a large table never
/// holds the lock for long: the writer needs it to publish every batch.
const SCAN_CHUNK: usize = 256;

/// The largest JSON value held in memory; a larger one is read from the log when it is needed. The sync's
/// watermarks and summaries are below it: small, and read on every sync. Everything whose number grows with
/// the alerts is above it: deliveries carry the alert's body (2-10 KB, up to 1 MiB) until they are done,
/// their outcome after (300-700 bytes), and every work item has a link (300-600 bytes). An alert storm
/// leaves one of each per alert: with 100,000 alerts, held in memory these took itsmc to 205 MB (the
/// backlog of `benches/storm.rs`), where a slot with a location costs some 40 bytes beside the key and the
/// maps' own cost per entry (about 150). A read from the log is a read from the page cache: a system call
/// of about a microsecond, less than parsing the value it reads.
const HELD_MAX: usize = 256;

/// A stored value: its etag and its JSON, shared with (or located for) the readers that copy it out.
#[derive(Debug, Clone)]
struct Slot {
    etag: u64,
    json: Json,
}

/// Where a value's JSON is.
#[derive(Debug, Clone)]
enum Json {
    /// In memory: values of up to [`HELD_MAX`] bytes.
    Held(Arc<[u8]>),
    /// In the log: larger values.
    Logged(Location),
}

/// Where a value's JSON lies in a log file: `len` bytes at `offset` (an absolute position in the file).
#[derive(Debug, Clone)]
struct Location {
    /// The file the offset is in. A compaction points every location into its new file, but a reader
    /// that copied one out before keeps the old file readable (on Unix, an unlinked file lives on while
    /// it is open).
    file: Arc<File>,
    offset: u64,
    len: u32,
}

impl Json {
    /// `json`, which the writer has just made durable at `offset` of `file`, as a slot keeps it.
    fn new(json: Arc<[u8]>, file: &Arc<File>, offset: u64) -> Json {
        if json.len() <= HELD_MAX {
            Json::Held(json)
        } else {
            // MAX_OP_BYTES keeps the length within u32.
            Json::Logged(Location { file: file.clone(), offset, len: json.len() as u32 })
        }
    }

    /// `json`, read back from `offset` of `file` at open, as a slot keeps it.
    fn read_back(json: &[u8], file: &Arc<File>, offset: u64) -> Json {
        if json.len() <= HELD_MAX {
            Json::Held(Arc::from(json))
        } else {
            Json::Logged(Location { file: file.clone(), offset, len: json.len() as u32 })
        }
    }

    fn len(&self) -> usize {
        match self {
            Json::Held(json) => json.len(),
            Json::Logged(at) => at.len as usize,
        }
    }

    /// The bytes: borrowed when held, read from the file when logged. Never call it with the maps' lock
    /// held: it may wait for the disk.
    fn bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Json::Held(json) => Ok(Cow::Borrowed(json)),
            Json::Logged(at) => {
                let mut buf = vec![0; at.len as usize];
                read_at(&at.file, &mut buf, at.offset)?;
                Ok(Cow::Owned(buf))
            }
        }
    }
}

/// Fill `buf` from `offset` of `file`. Positional, so readers and the writer share one open file without
/// a cursor to fight over.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Write all of `bytes` at `offset` of `file`, positionally (see [`read_at`]).
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < bytes.len() {
            match std::os::windows::fs::FileExt::seek_write(file, &bytes[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Every live entry of one table.
#[derive(Default)]
struct Rows {
    /// What every get and every write looks up: a hash lookup, where an ordered map compares the key
    /// with dozens of others, each behind a pointer (measured: 0.3 against 0.7 µs at 20,000 entries, 0.7
    /// against 2.1 at a million; the writer thread makes two lookups per write).
    slots: HashMap<Arc<str>, Slot>,
    /// The same keys in order, for scans only: touched when a key comes or goes, not when it is replaced.
    order: BTreeSet<Arc<str>>,
}

impl Rows {
    fn get(&self, key: &str) -> Option<&Slot> {
        self.slots.get(key)
    }

    /// Store `slot` under `key`; what it replaced.
    fn put(&mut self, key: &str, slot: Slot) -> Option<Slot> {
        if let Some(current) = self.slots.get_mut(key) {
            return Some(std::mem::replace(current, slot));
        }
        let key: Arc<str> = Arc::from(key);
        self.order.insert(key.clone());
        self.slots.insert(key, slot);
        None
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.order.remove(key);
        Some(slot)
    }

    /// Up to `limit` entries in key order after `after`.
    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Arc<str>, Slot)> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let keys = self.order.range::<str, _>((lower, Bound::Unbounded));
        // Every ordered key has a slot: only `put` and `remove` change either.
        keys.take(limit).filter_map(|key| Some((key.clone(), self.slots.get(key)?.clone()))).collect()
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Slot)> {
        self.slots.iter()
    }
}

#[derive(Default)]
struct Tables([Rows; Table::ALL.len()]);

impl Tables {
    fn of(&self, table: Table) -> &Rows {
        &self.0[table as usize]
    }

    fn of_mut(&mut self, table: Table) -> &mut Rows {
        &mut self.0[table as usize]
    }

    /// Point every logged slot into `file`, which [`log::rewrite`] wrote from these tables unchanged:
    /// `moved` holds, per table, each logged entry's key and its new offset, in the order the tables
    /// iterated them then.
    fn repoint(&mut self, file: &Arc<File>, moved: Vec<Vec<(Arc<str>, u64)>>) {
        for (table, moved) in Table::ALL.into_iter().zip(moved) {
            let slots = &mut self.of_mut(table).slots;
            // An unchanged hash map iterates in the same order every time, so this is one pass, with
            // the keys checked on the way (by pointer: they are the same `Arc`s).
            let mut expected = moved.iter();
            let mut in_order = true;
            for (key, slot) in slots.iter_mut() {
                if let Json::Logged(at) = &mut slot.json {
                    match expected.next() {
                        Some((moved_key, offset)) if Arc::ptr_eq(moved_key, key) => {
                            *at = Location { file: file.clone(), offset: *offset, len: at.len };
                        }
                        _ => {
                            in_order = false;
                            break;
                        }
                    }
                }
            }
            if !in_order || expected.next().is_some() {
                // Not expected; correct either way, one lookup per entry.
                for (key, offset) in moved {
                    if let Some(Slot { json: Json::Logged(at), .. }) = slots.get_mut(&key) {
                        *at = Location { file: file.clone(), offset, len: at.len };
                    }
                }
            }
        }
    }
}

/// A store in memory over one log file, with a group-commit writer thread.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// `None` only while dropping: closing the channel is what tells the writer to finish.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    /// Holds the directory's lock until the store is dropped, after the writer has finished.
    _lock: File,
}

/// What readers and the writer share.
struct Shared {
    dir: PathBuf,
    path: PathBuf,
    /// Only the writer thread takes it for writing, and never while it waits for the disk.
    tables: RwLock<Tables>,
    /// How many times a compaction has replaced the log since the store was opened (for the tests).
    compactions: AtomicU64,
}

impl Shared {
    // A panic while the lock was held (none is expected) leaves the maps as they were between two
    // complete entries; every entry in them is durable either way.
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EmbeddedStore {
    /// Open (creating if needed) the store in `dir`, holding it exclusively until dropped.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with_compaction_threshold(dir, COMPACTION_SLACK)
    }

    /// [`EmbeddedStore::open`] with the log compacted once it exceeds twice the live bytes plus `slack`
    /// bytes rather than 8 MiB: for tests that need compaction to happen.
    #[doc(hidden)]
    pub fn open_with_compaction_threshold(dir: &Path, slack: u64) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError::Unavailable(format!("cannot create the data directory {}: {err}", dir.display()))
        })?;
        let path = dir.join(LOG_FILE);
        let lock = lock(dir, &path)?;
        let mut opened = log::open(&path)?;
        let tables = RwLock::new(std::mem::take(&mut opened.tables));
        let shared = Arc::new(Shared { dir: dir.to_path_buf(), path, tables, compactions: AtomicU64::new(0) });
        let writer = Writer::new(shared.clone(), opened, slack);
        let (requests, inbox) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("itsmc-store-writer".into())
            .spawn(move || writer.run(&inbox))
            .map_err(|err| StoreError::Unavailable(format!("cannot start the store writer thread: {err}")))?;
        Ok(EmbeddedStore { shared, requests: Some(requests), writer: Some(writer), _lock: lock })
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

    fn to_json(key: &str, value: &Value) -> Result<Arc<[u8]>, StoreError> {
        let json = serde_json::to_vec(value)
            .map_err(|err| StoreError::Corrupt(format!("the value cannot be serialized: {err}")))?;
        if key.len() + json.len() > log::MAX_OP_BYTES {
            return Err(StoreError::Refused(format!(
                "{key}: a value of {} bytes is more than the embedded store takes ({} bytes)",
                json.len(),
                log::MAX_OP_BYTES
            )));
        }
        Ok(Arc::from(json))
    }
}

/// Take the directory's lock, turning "someone else has it" into advice for the operator.
fn lock(dir: &Path, log_path: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| StoreError::Unavailable(format!("cannot open {}: {err}", path.display())))?;
    // An advisory lock: the kernel releases it when the process dies, however it dies, so a crash never
    // leaves a stale lock behind. It belongs to the open file, though, and a process forked meanwhile
    // (any child process this one starts) shares it until that child execs: a store dropped and opened
    // again at that moment would find its own lock still held. Hence a few retries before giving up.
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is already open in another process (it holds {}): another itsmc may be running with \
                     the same ITSMC_DATA_DIR; stop it, or give this instance its own data directory",
                    log_path.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(err)) => {
                return Err(StoreError::Unavailable(format!("cannot lock {}: {err}", path.display())));
            }
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The writer drains what is already queued (std mpsc delivers queued messages before reporting
        // the disconnect), answers it, then closes the log. Joining before the lock file is closed (a
        // field, dropped after this) makes the directory free to reopen as soon as the store is gone; it
        // waits at most for one batch.
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
        // Runs on the calling task: a map lookup under a read lock the writer only holds to publish a
        // batch in memory. The lock is released before the JSON is parsed.
        let slot = self.shared.read().of(table).get(key).cloned();
        // A logged value is read after the lock is released.
        slot.map(|slot| entry(table, key.to_owned(), &slot)).transpose()
    }

    async fn insert(&self, table: Table, key: &str, value: &Value) -> Result<Insert, StoreError> {
        // Serialized here, on the caller's thread, so the single writer thread only copies bytes.
        let json = EmbeddedStore::to_json(key, value)?;
        match self.write(table, key, Op::Insert { json }).await? {
            Applied::Written(etag) => Ok(Insert::Inserted { etag: format_etag(etag) }),
            Applied::Unchanged(Some(slot)) => Ok(Insert::Conflict(entry(table, key.to_owned(), &slot)?)),
            other => Err(unexpected("insert", &other)),
        }
    }

    async fn replace(&self, table: Table, key: &str, value: &Value, if_match: &str) -> Result<Swap, StoreError> {
        let json = EmbeddedStore::to_json(key, value)?;
        let op = Op::Replace { json, if_match: parse_etag(if_match) };
        match self.write(table, key, op).await? {
            Applied::Written(etag) => Ok(Swap::Replaced { etag: format_etag(etag) }),
            Applied::Unchanged(Some(slot)) => Ok(Swap::Stale(Some(entry(table, key.to_owned(), &slot)?))),
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
        // Unlike a get, a scan may parse a whole table (a filter that matches little), so it leaves the
        // async runtime.
        let shared = self.shared.clone();
        let filter = filter.map(|f| (f.field.to_owned(), f.value.to_owned()));
        let after = continuation.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let filter = filter.as_ref().map(|(field, value)| Filter { field, value });
            shared.scan(table, filter, after, limit)
        })
        .await
        .map_err(|err| StoreError::Unavailable(format!("a store scan failed: {err}")))?
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.shared.dir.display())
    }
}

impl Shared {
    fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // A zero limit would return an empty page that continues where it started, forever.
        let limit = limit.max(1);
        let mut page = Page::default();
        let mut cursor = after;
        loop {
            // Without a filter, one more than the page needs is enough: the extra one says whether
            // there is a next page.
            let wanted = if filter.is_some() { SCAN_CHUNK } else { (limit - page.entries.len() + 1).min(SCAN_CHUNK) };
            let chunk = self.read().of(table).page(cursor.as_deref(), wanted);
            let end_of_table = chunk.len() < wanted;
            cursor = chunk.last().map(|(key, _)| key.to_string());
            for (key, slot) in chunk {
                if page.entries.len() == limit {
                    // There is at least one more entry, so a next page may have some: continue after
                    // the last one returned. Without this peek a full last page would cost an empty one.
                    page.continuation = page.entries.last().map(|e| e.key.clone());
                    return Ok(page);
                }
                // A value that cannot be read fails the scan rather than being skipped: skipping would
                // silently drop, say, a pending delivery from the outbox.
                // Outside the lock: the chunk holds copies of the slots, and a logged value is read from
                // the file once, for the filter and the entry both.
                let json = slot.json.bytes().map_err(|err| unreadable(table, &key, &err))?;
                if let Some(filter) = filter
                    && !matches(&json, filter).map_err(|err| not_json(table, &key, &err))?
                {
                    continue;
                }
                page.entries.push(parse(table, key.to_string(), slot.etag, &json)?);
            }
            if end_of_table {
                return Ok(page);
            }
        }
    }
}

/// Whether `json` is an object whose top-level field `filter.field` is the string `filter.value`,
/// without building the document: the outbox's rescan filters every delivery, most of which do not
/// match, and a full parse would allocate every string and map of each.
fn matches(json: &[u8], filter: Filter<'_>) -> Result<bool, serde_json::Error> {
    struct Probe<'f>(Filter<'f>);

    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut found = false;
            while let Some(is_field) = map.next_key_seed(KeyIs(self.0.field))? {
                if is_field {
                    // The last occurrence counts, as it does in a parsed `Value`.
                    found = map.next_value::<Value>()?.as_str() == Some(self.0.value);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    struct KeyIs<'f>(&'f str);

    impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
        type Value = bool;

        fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for KeyIs<'_> {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E>(self, key: &str) -> Result<bool, E> {
            Ok(key == self.0)
        }
    }

    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object, so no fields; still parsed, so that bytes which are not JSON fail the scan.
        return serde_json::from_slice::<IgnoredAny>(json).map(|_| false);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let found = serde::Deserializer::deserialize_map(&mut deserializer, Probe(filter))?;
    deserializer.end()?;
    Ok(found)
}

/// The entry `slot` holds; reads a logged value from the file, so never with the maps' lock held.
fn entry(table: Table, key: String, slot: &Slot) -> Result<Entry, StoreError> {
    let json = slot.json.bytes().map_err(|err| unreadable(table, &key, &err))?;
    parse(table, key, slot.etag, &json)
}

fn parse(table: Table, key: String, etag: u64, json: &[u8]) -> Result<Entry, StoreError> {
    let value = serde_json::from_slice(json).map_err(|err| not_json(table, &key, &err))?;
    Ok(Entry { key, etag: format_etag(etag), value })
}

fn unreadable(table: Table, key: &str, err: &io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}/{key}: the value cannot be read from the log: {err}", table.name()))
}

fn not_json(table: Table, key: &str, err: &serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{}/{key}: the stored value is not JSON: {err}", table.name()))
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

#[cfg(all(test, unix))]
mod tests;
