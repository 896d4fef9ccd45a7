//! The group-commit writer thread: the only code that writes the file.
//!
//! One thread owns all writes, so redb never has writers waiting on each other, and conditions are
//! evaluated in one total order (arrival order). It is a plain thread rather than a tokio task because
//! a commit blocks on fsync for milliseconds, which must not stall a runtime worker.
//!
//! After any failure the database is closed and reopened before the next write: redb refuses further
//! writes after a failed commit until it is reopened, and reopening repairs whatever the failure left.

use std::sync::Arc;
use std::sync::mpsc::Receiver;

use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::{
    LAST_VERSION, META, Shared, cause, decode_record, definition, detail, encode_record, open_database, prepare,
};
use crate::store::{StoreError, Table};

/// Most operations one commit carries. A batch is applied in memory before its fsync, so this bounds
/// how long the last caller of a large backlog waits (a few ms of B-tree work) and the commit size.
const MAX_BATCH: usize = 1024;

/// One conditional write; values arrive already serialized.
pub(super) enum Op {
    Insert { json: Vec<u8> },
    Replace { json: Vec<u8>, if_match: Option<u64> },
    Delete { if_match: Option<u64> },
}

pub(super) struct Request {
    pub table: Table,
    pub key: String,
    pub op: Op,
    pub reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// What a committed operation did.
#[derive(Debug)]
pub(super) enum Applied {
    /// Inserted or replaced, with the new etag.
    Written(u64),
    Deleted,
    /// The condition failed; what is stored now (etag and raw JSON, decoded by the caller).
    Unchanged(Option<(u64, Vec<u8>)>),
}

type Answer = Result<Applied, StoreError>;

/// Serve requests until every sender is gone, then close the database.
pub(super) fn run(shared: &Shared, inbox: &Receiver<Request>, last_version: u64) {
    let mut writer = Writer { shared, last_version: Some(last_version) };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = inbox.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let answers = writer.commit(&batch);
        for (request, answer) in batch.drain(..).zip(answers) {
            // A caller that stopped waiting (its future was dropped) still had its write applied, as a
            // request already sent to a remote store would be; there is no one left to tell.
            let _ = request.reply.send(answer);
        }
    }
    close(shared);
}

struct Writer<'a> {
    shared: &'a Shared,
    /// The last version number committed; `None` when the database must be reopened before the next batch.
    last_version: Option<u64>,
}

impl Writer<'_> {
    /// Apply and commit one batch, one answer per request.
    fn commit(&mut self, batch: &[Request]) -> Vec<Answer> {
        match self.try_commit(batch) {
            Ok(answers) => answers,
            Err(cause) => {
                tracing::error!(path = %self.shared.path.display(), ops = batch.len(), %cause, "a store write failed");
                batch.iter().map(|_| Err(StoreError::Unavailable(cause.clone()))).collect()
            }
        }
    }

    fn try_commit(&mut self, batch: &[Request]) -> Result<Vec<Answer>, String> {
        let (db, last) = self.database()?;
        let (txn, answers, next) = match stage(&db, batch, last) {
            Ok(staged) => staged,
            Err(err) => {
                // Nothing was committed; the failure (typically an I/O error) may have left redb
                // refusing writes, which only a reopen clears.
                let cause = cause(&self.shared.path, "writing to", &err);
                drop(db);
                return Err(match self.reopen() {
                    Ok(()) => cause,
                    Err(reopen) => format!("{cause}; reopening it failed too: {reopen}"),
                });
            }
        };
        if next == last {
            // Every condition failed: nothing to make durable, so no fsync. The answers describe
            // committed state, since every earlier commit was durable.
            if let Err(err) = txn.abort() {
                // Nothing was written, so the answers stand; the next batch starts from a reopen.
                tracing::warn!(path = %self.shared.path.display(), %err, "aborting a read-only batch failed");
                self.last_version = None;
            }
            return Ok(answers);
        }
        let committed = txn.commit();
        drop(db);
        match committed {
            Ok(()) => {
                self.last_version = Some(next);
                Ok(answers)
            }
            Err(err) => {
                let cause = cause(&self.shared.path, "committing to", &err.into());
                // redb documents that a failed commit may still have become durable. Every batch that
                // writes also writes its last version number, so after a reopen the counter says
                // whether it did, and each caller gets the truth rather than an error for a write that
                // happened.
                match self.reopen() {
                    Ok(()) if self.last_version == Some(next) => {
                        let path = self.shared.path.display();
                        tracing::warn!(%path, %cause, "a commit reported failure but was durable");
                        Ok(answers)
                    }
                    Ok(()) => Err(cause),
                    Err(reopen) => Err(format!(
                        "{cause}; reopening it failed too ({reopen}), so it is unknown whether this write \
                         took effect until the store reopens"
                    )),
                }
            }
        }
    }

    /// The open database and the last version number it committed, reopening it first after a failure.
    fn database(&mut self) -> Result<(Arc<Database>, u64), String> {
        if self.last_version.is_none() {
            self.reopen()?;
        }
        let db = self.shared.db.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        match (db, self.last_version) {
            (Some(db), Some(last)) => Ok((db, last)),
            _ => Err(format!("{} is not open", self.shared.path.display())),
        }
    }

    /// Close and reopen the file. The caller must have dropped its own handle to the database.
    fn reopen(&mut self) -> Result<(), String> {
        self.last_version = None;
        close(self.shared);
        let db = open_database(&self.shared.path).map_err(detail)?;
        let last = prepare(&db, &self.shared.path).map_err(detail)?;
        *self.shared.db.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(db));
        self.last_version = Some(last);
        tracing::info!(path = %self.shared.path.display(), "reopened the store after a failed write");
        Ok(())
    }
}

/// Apply a batch inside one write transaction, in order, each condition seeing the earlier writes.
/// Returns the uncommitted transaction, the answers and the last version number used (`last` when
/// nothing was written).
fn stage(db: &Database, batch: &[Request], last: u64) -> Result<(WriteTransaction, Vec<Answer>, u64), redb::Error> {
    let mut txn = db.begin_write()?;
    // redb's default, stated because the whole contract rests on it: a commit returns after fsync.
    txn.set_durability(Durability::Immediate)?;
    let mut next = last;
    let mut answers = Vec::with_capacity(batch.len());
    {
        let mut links = txn.open_table(definition(Table::Links))?;
        let mut deliveries = txn.open_table(definition(Table::Deliveries))?;
        for request in batch {
            let rows = match request.table {
                Table::Links => &mut links,
                Table::Deliveries => &mut deliveries,
            };
            answers.push(apply(rows, request, &mut next)?);
        }
        if next != last {
            txn.open_table(META)?.insert(LAST_VERSION, next)?;
        }
    }
    Ok((txn, answers, next))
}

type Rows<'txn> = redb::Table<'txn, &'static str, &'static [u8]>;

/// One operation. A record this version cannot read fails that operation alone, writing nothing.
fn apply(rows: &mut Rows<'_>, request: &Request, next: &mut u64) -> Result<Answer, redb::StorageError> {
    let key = request.key.as_str();
    let unchanged = {
        let record = rows.get(key)?;
        let current = match &record {
            None => None,
            Some(record) => match decode_record(request.table, key, record.value()) {
                Ok(current) => Some(current),
                Err(corrupt) => return Ok(Err(corrupt)),
            },
        };
        let etag = current.map(|(etag, _)| etag);
        let proceed = match request.op {
            Op::Insert { .. } => etag.is_none(),
            Op::Replace { if_match, .. } | Op::Delete { if_match } => etag.is_some() && etag == if_match,
        };
        // Copied only when it is the answer: on the common path the old value is never needed.
        (!proceed).then(|| current.map(|(etag, json)| (etag, json.to_vec())))
    };
    if let Some(current) = unchanged {
        return Ok(Ok(Applied::Unchanged(current)));
    }
    // Every write, deletes included, takes the next version number, so `next` moving is what says a
    // batch has something to commit, and a committed batch always moves the stored counter.
    *next += 1;
    let applied = match &request.op {
        Op::Insert { json } | Op::Replace { json, .. } => {
            rows.insert(key, encode_record(*next, json).as_slice())?;
            Applied::Written(*next)
        }
        Op::Delete { .. } => {
            rows.remove(key)?;
            Applied::Deleted
        }
    };
    Ok(Ok(applied))
}

/// Take the database away from readers and close it, so the file can be opened again.
fn close(shared: &Shared) {
    let db = shared.db.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    let Some(db) = db else { return };
    // Readers never keep a clone and the writer has dropped its own, so this is the only handle.
    match Arc::try_unwrap(db) {
        Ok(db) => {
            if let Err(err) = db.close() {
                tracing::warn!(path = %shared.path.display(), %err, "closing the store reported an error");
            }
        }
        Err(_) => tracing::error!(path = %shared.path.display(), "the store is still in use while closing"),
    }
}
