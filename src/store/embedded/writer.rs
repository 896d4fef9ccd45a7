//! The group-commit writer thread: the only code that writes the log or changes the tables.
//!
//! One thread owns all writes, so conditions are evaluated in one total order (arrival order) without
//! any locking between writers. It is a plain thread rather than a tokio task because it blocks on
//! fsync for milliseconds, which must not stall a runtime worker.
//!
//! A batch goes through three steps. Its conditions are evaluated against the committed tables plus the
//! earlier ops of the same batch (an overlay), and the ops that pass are encoded into one record. The
//! record is appended and synced. Only then are the tables changed, under the write lock, and the
//! callers answered: readers never see a write that a crash could still take back. A large value is
//! published as where it now lies in the log (the offset the record was written at, plus the value's
//! place in the record), not as its bytes.
//!
//! A write that fails (typically a full disk) is cut back off the file and its callers are told that
//! nothing changed; the tables were not touched, so they never run ahead of the disk, and the next batch
//! is written where the failed one began, which is how the store recovers by itself once there is
//! space again.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::log::{self, Record};
use super::{Json, Shared, Slot, write_at};
use crate::store::{StoreError, Table};

/// Most operations one batch carries, and the size at which the writer stops adding more. They bound
/// how long the last caller of a large backlog waits and how much one record holds.
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The shortest time between the starts of two commits, under load. An fsync costs the writer thread
/// 60-90 µs of CPU however little it carries (measured on a 2-core VM), and on a disk that syncs in
/// 150 µs a writer that commits as soon as anything is queued makes thousands of small commits a
/// second. The price is latency: a write waits up to this long for its batch to start, and the create
/// path waits for two commits. Measured at 1,000 alerts/s (`cargo bench --bench loadgen`): 2 ms gave p99
/// 4.9-13.8 ms, 1 ms 3.3-7.3 ms, 500 µs 3.1-4.9 ms (p50 1.2 ms), with throughput and CPU per alert the same
/// within the noise of the machine.
const COMMIT_INTERVAL: Duration = Duration::from_micros(500);

/// Batches that are not paced: one op is a caller alone, who would only wait longer for the same
/// fsync, and a batch this large already spreads its fsync thin.
const PACED_BATCH: std::ops::Range<usize> = 2..64;

/// How far ahead of the last record the file is written with zeros (see [`log::write_zeros`]).
const WRITE_AHEAD: u64 = 1024 * 1024;

/// One conditional write; values arrive already serialized.
pub(super) enum Op {
    Insert { json: Arc<[u8]> },
    Replace { json: Arc<[u8]>, if_match: Option<u64> },
    Delete { if_match: Option<u64> },
}

pub(super) struct Request {
    pub table: Table,
    pub key: String,
    pub op: Op,
    pub reply: oneshot::Sender<Answer>,
}

type Answer = Result<Applied, StoreError>;

impl Request {
    fn bytes(&self) -> usize {
        self.key.len()
            + match &self.op {
                Op::Insert { json } | Op::Replace { json, .. } => json.len(),
                Op::Delete { .. } => 0,
            }
    }
}

/// What a committed operation did.
#[derive(Debug)]
pub(super) enum Applied {
    /// Inserted or replaced, with the new etag.
    Written(u64),
    Deleted,
    /// The condition failed; what is stored now.
    Unchanged(Option<Slot>),
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    /// Shared with the slots of the values logged in it.
    file: Arc<File>,
    /// The length of the log up to its last durable record: where the next record goes.
    len: u64,
    /// The length of the file, past `len` by the zeros written ahead.
    allocated: u64,
    last_etag: u64,
    /// What the live entries would take in a compacted log.
    live_bytes: u64,
    /// The log is compacted once it is longer than twice the live bytes plus this.
    compaction_slack: u64,
    /// After a failed compaction, the length the log must reach before the next attempt.
    next_compaction_at: u64,
    /// A failed write could not be cut off. Its record may be whole in the file, and its callers were
    /// told it failed, so it must not come back at the next open: nothing is written until it is cut off.
    truncate_pending: bool,
    /// A compaction replaced the log, but its directory entry may not be durable yet.
    dir_sync_pending: bool,
    record: Record,
}

impl Writer {
    /// A writer for the log as [`log::open`] read it back.
    pub(super) fn new(shared: Arc<Shared>, opened: log::Opened, compaction_slack: u64) -> Writer {
        Writer {
            shared,
            file: opened.file,
            len: opened.len,
            allocated: opened.allocated,
            last_etag: opened.last_etag,
            live_bytes: opened.live_bytes,
            compaction_slack,
            next_compaction_at: 0,
            truncate_pending: false,
            dir_sync_pending: false,
            record: Record::default(),
        }
    }

    /// Serve requests until every sender is gone.
    pub(super) fn run(mut self, inbox: &Receiver<Request>) {
        let mut batch = Vec::new();
        let mut next_commit = Instant::now();
        // std's mpsc hands out everything queued before it reports that the senders are gone, so
        // dropping the store answers every request it accepted.
        while let Ok(first) = inbox.recv() {
            // Sleeping rather than waiting on the channel also spares the senders a wake-up each.
            std::thread::sleep(next_commit.saturating_duration_since(Instant::now()));
            let started = Instant::now();
            let mut bytes = first.bytes();
            batch.push(first);
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match inbox.try_recv() {
                    Ok(request) => {
                        bytes += request.bytes();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            next_commit = if PACED_BATCH.contains(&batch.len()) { started + COMMIT_INTERVAL } else { started };
            self.commit(&mut batch);
            self.compact_if_due();
            self.write_ahead();
        }
    }

    /// Evaluate, append, publish and answer one batch; empties `batch`.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let outcomes = self.evaluate(batch);
        let appended = if self.record.payload_len() == 0 {
            // Every condition failed: nothing to make durable, so no write and no fsync. The answers
            // describe committed state, since every earlier batch was durable before it was published.
            Ok(self.len)
        } else {
            self.append()
        };
        self.record.shrink();
        let answers = match appended {
            Ok(at) => self.publish(batch, outcomes, at),
            Err(cause) => {
                let path = self.shared.path.display();
                tracing::error!(%path, ops = batch.len(), %cause, "a store write failed");
                batch.drain(..).map(|r| (r.reply, Err(StoreError::Unavailable(cause.clone())))).collect()
            }
        };
        for (reply, answer) in answers {
            // A caller that stopped waiting (its future was dropped) may still have had its write
            // applied, as a request already sent to a remote store would be; there is no one to tell.
            let _ = reply.send(answer);
        }
    }

    /// Decide each op in order, encoding the ones that pass into `self.record`; with each outcome, where
    /// a written value starts in the record (0 for the others).
    fn evaluate(&mut self, batch: &[Request]) -> Vec<(Applied, u64)> {
        let tables = self.shared.read();
        // What the batch has written so far; `None` is a delete.
        let mut overlay: HashMap<(Table, &str), Option<Slot>> = HashMap::new();
        self.record.begin();
        batch
            .iter()
            .map(|request| {
                let key = request.key.as_str();
                let current = match overlay.get(&(request.table, key)) {
                    Some(written) => written.as_ref(),
                    None => tables.of(request.table).get(key),
                };
                let etag = current.map(|slot| slot.etag);
                let proceed = match request.op {
                    Op::Insert { .. } => etag.is_none(),
                    Op::Replace { if_match, .. } | Op::Delete { if_match } => etag.is_some() && etag == if_match,
                };
                if !proceed {
                    return (Applied::Unchanged(current.cloned()), 0);
                }
                // A delete takes a number too, so that every record carries a fresh etag and the counter
                // read back at open is simply the highest one. A batch that then fails leaves the counter
                // advanced: its etags may have reached the disk, and skipping numbers costs nothing.
                self.last_etag += 1;
                let etag = self.last_etag;
                match &request.op {
                    Op::Insert { json } | Op::Replace { json, .. } => {
                        let at = self.record.put(request.table, key, etag, json);
                        // Held whatever its size: the request has the bytes until the batch is answered.
                        let written = Slot { etag, json: Json::Held(json.clone()) };
                        overlay.insert((request.table, key), Some(written));
                        (Applied::Written(etag), at)
                    }
                    Op::Delete { .. } => {
                        self.record.delete(request.table, key, etag);
                        overlay.insert((request.table, key), None);
                        (Applied::Deleted, 0)
                    }
                }
            })
            .collect()
    }

    /// Append the record and make it durable, or leave the log as it was before. Where the record
    /// starts in the file.
    fn append(&mut self) -> Result<u64, String> {
        let path = &self.shared.path;
        if self.truncate_pending {
            self.file.set_len(self.len).map_err(|err| {
                format!("{} could not be cut back after an earlier failed write: {err}", path.display())
            })?;
            self.allocated = self.len;
            self.truncate_pending = false;
        }
        if self.dir_sync_pending {
            log::sync_dir(path).map_err(|err| {
                format!("the directory of {} could not be synced after compaction: {err}", path.display())
            })?;
            self.dir_sync_pending = false;
        }
        let bytes = self.record.seal();
        let at = self.len;
        // fdatasync, since the data and the length are all a reader needs.
        match write_at(&self.file, bytes, at).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.allocated = self.allocated.max(self.len);
                Ok(at)
            }
            Err(err) => {
                // Cut off whatever part of the record was written (and the zeros ahead, which a full
                // disk needs back): the callers are told that nothing changed, so nothing may come back
                // at the next open.
                match self.file.set_len(self.len) {
                    Ok(()) => self.allocated = self.len,
                    Err(truncate) => {
                        tracing::warn!(path = %path.display(), %truncate, "cannot cut off a failed write yet");
                        self.truncate_pending = true;
                    }
                }
                Err(write_failed(&self.shared, &err))
            }
        }
    }

    /// Apply a durable batch, whose record was written at `record_at`, to the tables and pair every reply
    /// with its answer.
    fn publish(
        &mut self,
        batch: &mut Vec<Request>,
        outcomes: Vec<(Applied, u64)>,
        record_at: u64,
    ) -> Vec<(oneshot::Sender<Answer>, Answer)> {
        let mut answers = Vec::with_capacity(batch.len());
        // Dropped once the lock is released: freeing values takes time, and readers wait meanwhile.
        let mut replaced = Vec::new();
        let mut tables = self.shared.write();
        for (request, (outcome, value_at)) in batch.drain(..).zip(outcomes) {
            let rows = tables.of_mut(request.table);
            let key = request.key.as_str();
            let old = match (&outcome, request.op) {
                (Applied::Written(etag), Op::Insert { json } | Op::Replace { json, .. }) => {
                    self.live_bytes += log::op_size(key.len(), json.len());
                    let json = Json::new(json, &self.file, record_at + value_at);
                    rows.put(key, Slot { etag: *etag, json })
                }
                (Applied::Deleted, _) => rows.remove(key),
                (Applied::Unchanged(_), _) | (Applied::Written(_), Op::Delete { .. }) => None,
            };
            if let Some(old) = old {
                self.live_bytes -= log::op_size(key.len(), old.json.len());
                replaced.push(old);
            }
            answers.push((request.reply, Ok(outcome)));
        }
        drop(tables);
        drop(replaced);
        answers
    }

    /// Rewrite the log as one put per live entry once the dead records outweigh the live ones. Between
    /// batches on this thread, so no write can slip between the snapshot and the switch to the new file.
    fn compact_if_due(&mut self) {
        if self.len <= 2 * self.live_bytes + self.compaction_slack || self.len < self.next_compaction_at {
            return;
        }
        let path = &self.shared.path;
        let before = self.len;
        // Readers go on reading meanwhile, the old file included; only writes wait.
        let rewritten = log::rewrite(path, &self.shared.read(), self.last_etag);
        match rewritten {
            Ok(log::Rewritten { file, len, moved }) => {
                let file = Arc::new(file);
                // Every logged value at once: a reader finds either all of them in the old file, which
                // it holds open while it reads, or all in the new one.
                self.shared.write().repoint(&file, moved);
                // The old file is closed once the last reader that copied a location into it is done.
                self.file = file;
                self.len = len;
                self.allocated = len;
                self.shared.compactions.fetch_add(1, Ordering::Relaxed);
                self.truncate_pending = false;
                if let Err(err) = log::sync_dir(path) {
                    // The next write retries it before it is acknowledged.
                    tracing::warn!(path = %path.display(), %err, "cannot sync the directory after compaction");
                    self.dir_sync_pending = true;
                }
                tracing::info!(path = %path.display(), before, after = len, "compacted the store log");
            }
            Err(err) => {
                // Typically a full disk: the old log goes on as it was. Try again once it has grown by
                // another slack's worth, not after every batch.
                self.next_compaction_at = before + self.compaction_slack.max(1024 * 1024);
                tracing::warn!(path = %path.display(), %err, "cannot compact the store log; it keeps growing");
            }
        }
    }

    /// Keep zeros written ahead of the last record, between batches, so that commits overwrite them.
    fn write_ahead(&mut self) {
        if self.truncate_pending || self.allocated >= self.len + WRITE_AHEAD / 2 {
            return;
        }
        let target = self.len + WRITE_AHEAD;
        match log::write_zeros(&self.file, self.allocated, target) {
            Ok(()) => self.allocated = target,
            Err(err) => {
                // Only an optimization: records are appended past the end just as well. Typically a
                // full disk, and zeros are the first thing to give back.
                tracing::debug!(path = %self.shared.path.display(), %err, "cannot write the log ahead");
                if self.file.set_len(self.len).is_ok() {
                    self.allocated = self.len;
                }
            }
        }
    }
}

/// What the callers of a failed write are told. A full disk is named as such, with what to do about it:
/// the error alone ("No space left on device") does not say which device, or that nothing was kept.
fn write_failed(shared: &Shared, err: &io::Error) -> String {
    if matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) {
        format!(
            "the data directory {} is full (no space left on the device): writing to {} failed ({err}); the \
             write was not recorded, and the store takes writes again as soon as space is freed",
            shared.dir.display(),
            shared.path.display()
        )
    } else {
        format!("writing to {} failed: {err}", shared.path.display())
    }
}
