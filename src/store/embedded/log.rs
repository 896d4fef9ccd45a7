//! The log file: its format, reading it back at open, and writing a compacted copy of it.
//!
//! All integers are little-endian:
//!
//! ```text
//! header  "ITSMCLOG" | format u32 = 1 | 0u32 | etag floor u64 | checksum u64 of the 24 bytes before it
//! record  payload length u32 | checksum u64 of the payload | payload
//! payload one or more ops: kind u8 (1 put, 2 delete) | table u8 (0 links, 1 deliveries, 2 sync, 3 servicedesk) | etag u64 |
//!         key length u32 | value length u32 (0 for a delete) | key (UTF-8) | value (JSON)
//! ```
//!
//! A record is one group commit, not one op: its checksum makes the batch atomic on disk (after a crash
//! either all of its ops come back or none), and since a record is only appended once the previous one is
//! durable, damage from a crash can only be in the last record. That is what lets a reader tell a torn
//! tail, which is cut off, from damage in the middle of the file, which is refused: a bad record followed
//! by a valid one cannot be the work of a crash.
//!
//! The etag floor carries the etag counter across compactions: a compacted file holds only live entries,
//! so without it the etags of deleted entries could be issued again after a restart.
//!
//! The file is written ahead with zeros ([`write_zeros`]) and records overwrite them, because an fsync
//! that changes neither the length of the file nor where its blocks are only has to write the data:
//! measured on ext4, it takes half the CPU and half the time of one that appends. So after the last
//! record there may be zeros up to the end of the file; they read back as free space, not damage.
//!
//! Values larger than the store holds in memory stay in the file: reading the log back records where
//! each one's JSON lies (its absolute offset in the file) rather than keeping it, and a compaction
//! copies them from the old file to the new one a record at a time.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Json, Slot, Tables, read_at, write_at};
use crate::store::{StoreError, Table};

const MAGIC: &[u8; 8] = b"ITSMCLOG";
const FORMAT: u32 = 1;
pub(super) const HEADER_LEN: u64 = 32;
const RECORD_HEADER: usize = 4 + 8;
const OP_HEADER: usize = 1 + 1 + 8 + 4 + 4;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Records of a compacted file are cut at about this size, so writing one never needs a buffer the size
/// of the whole state.
const SNAPSHOT_RECORD: usize = 1024 * 1024;

/// What an entry costs in the log, for deciding when compaction pays.
pub(super) fn op_size(key_len: usize, json_len: usize) -> u64 {
    (OP_HEADER + key_len + json_len) as u64
}

/// The largest key plus value one op may hold: lengths are `u32`, and one record must stay below 4 GiB
/// however many such ops a batch carries (the writer stops filling a batch at 16 MiB).
pub(super) const MAX_OP_BYTES: usize = 1 << 30;

/// A table's id in the file is its position in `Table::ALL`: new tables are appended there, never inserted.
fn table_id(table: Table) -> u8 {
    table as u8
}

fn table_from_id(id: u8) -> Option<Table> {
    Table::ALL.get(usize::from(id)).copied()
}

/// A 64-bit checksum, eight bytes per step, fast enough (~5 GB/s) to cost nothing next to the copies a
/// write already makes. It only has to catch torn and damaged records, which nobody crafts, so it need
/// not be cryptographic. Each step is a bijection of the state for a given word, so damage confined to
/// one word always changes the result; other damage goes unnoticed with probability about 2^-64.
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let step = |h: u64, word: u64| (h ^ word).wrapping_mul(K).rotate_left(23);
    let mut h = (bytes.len() as u64).wrapping_mul(K) ^ 0x6974_736d_632d_6c67;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        h = step(h, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(word));
    }
    // MurmurHash3's finalizer, so every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Builds one record in a buffer that is reused from batch to batch.
#[derive(Default)]
pub(super) struct Record {
    buf: Vec<u8>,
}

impl Record {
    pub(super) fn begin(&mut self) {
        self.buf.clear();
        self.buf.resize(RECORD_HEADER, 0);
    }

    /// Where `json` starts in the sealed record, counted from the record's first byte: added to the
    /// offset the record is written at, where it lies in the file.
    pub(super) fn put(&mut self, table: Table, key: &str, etag: u64, json: &[u8]) -> u64 {
        self.op(PUT, table, key, etag, json)
    }

    pub(super) fn delete(&mut self, table: Table, key: &str, etag: u64) {
        self.op(DELETE, table, key, etag, &[]);
    }

    fn op(&mut self, kind: u8, table: Table, key: &str, etag: u64, json: &[u8]) -> u64 {
        // The callers enforce MAX_OP_BYTES, so the lengths fit.
        self.buf.reserve(OP_HEADER + key.len() + json.len());
        self.buf.extend_from_slice(&[kind, table_id(table)]);
        self.buf.extend_from_slice(&etag.to_le_bytes());
        self.buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        let at = self.buf.len() as u64;
        self.buf.extend_from_slice(json);
        at
    }

    pub(super) fn payload_len(&self) -> usize {
        self.buf.len().saturating_sub(RECORD_HEADER)
    }

    /// Fill in the header; the bytes to append.
    pub(super) fn seal(&mut self) -> &[u8] {
        let (header, payload) = self.buf.split_at_mut(RECORD_HEADER);
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&checksum(payload).to_le_bytes());
        &self.buf
    }

    /// Give back the memory of an unusually large batch: the buffer otherwise keeps its largest size.
    pub(super) fn shrink(&mut self) {
        if self.buf.capacity() > 4 * SNAPSHOT_RECORD {
            self.buf = Vec::new();
        }
    }
}

/// One op read back from a payload.
struct Op<'a> {
    kind: u8,
    table: Table,
    etag: u64,
    key: &'a str,
    json: &'a [u8],
    /// Where `json` starts in the payload.
    at: usize,
}

/// The ops of a payload whose checksum held. An error here is not a torn write but bytes this version
/// did not write (a future format, or a bug), so it is reported, never skipped.
fn decode(payload: &[u8], mut each: impl FnMut(Op<'_>)) -> Result<(), String> {
    if payload.is_empty() {
        return Err("an empty record".into());
    }
    let whole = payload.len();
    let mut payload = payload;
    while !payload.is_empty() {
        if payload.len() < OP_HEADER {
            return Err(format!("an op header cut short ({} bytes)", payload.len()));
        }
        let (header, rest) = payload.split_at(OP_HEADER);
        let kind = header[0];
        if kind != PUT && kind != DELETE {
            return Err(format!("an unknown op kind {kind}"));
        }
        let table = table_from_id(header[1]).ok_or_else(|| format!("an unknown table id {}", header[1]))?;
        let etag = u64::from_le_bytes(header[2..10].try_into().expect("8 bytes"));
        let key_len = u32::from_le_bytes(header[10..14].try_into().expect("4 bytes")) as usize;
        let json_len = u32::from_le_bytes(header[14..18].try_into().expect("4 bytes")) as usize;
        if rest.len() < key_len.saturating_add(json_len) {
            return Err("an op longer than its record".into());
        }
        let (key, rest) = rest.split_at(key_len);
        let at = whole - rest.len();
        let (json, rest) = rest.split_at(json_len);
        let key = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8".to_string())?;
        each(Op { kind, table, etag, key, json, at });
        payload = rest;
    }
    Ok(())
}

/// The state read back from the log, and the log ready for the next record.
pub(super) struct Opened {
    /// Shared with the slots of logged values.
    pub file: Arc<File>,
    /// Bytes of valid records (and the header): where the next record goes.
    pub len: u64,
    /// The length of the file: `len`, or more when zeros were written ahead.
    pub allocated: u64,
    pub tables: Tables,
    pub last_etag: u64,
    /// What the live entries would take in a compacted file.
    pub live_bytes: u64,
}

/// Open the log at `path`, creating it if needed, and read it back. A torn tail is cut off.
pub(super) fn open(path: &Path) -> Result<Opened, StoreError> {
    let unavailable =
        |doing: &str, err: io::Error| StoreError::Unavailable(format!("{doing} {}: {err}", path.display()));
    // What a compaction that did not finish left; the log itself is still whole.
    if let Err(err) = std::fs::remove_file(tmp_path(path))
        && err.kind() != io::ErrorKind::NotFound
    {
        return Err(unavailable("cannot remove the unfinished copy of", err));
    }
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) if file.metadata().map_err(|err| unavailable("cannot read", err))?.len() > 0 => file,
        // Missing, or empty (created by hand?): start a new log. A new log is only ever moved into place
        // complete, so a crash never leaves an empty or half-written header behind.
        Ok(_) => create(path).map_err(|err| unavailable("cannot create", err))?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            create(path).map_err(|err| unavailable("cannot create", err))?
        }
        Err(err) => return Err(unavailable("cannot open", err)),
    };
    replay(path, file)
}

fn create(path: &Path) -> io::Result<File> {
    let rewritten = rewrite(path, &Tables::default(), 0)?;
    sync_dir(path)?;
    Ok(rewritten.file)
}

fn replay(path: &Path, file: File) -> Result<Opened, StoreError> {
    let file = Arc::new(file);
    let unavailable = |err: io::Error| StoreError::Unavailable(format!("cannot read {}: {err}", path.display()));
    let corrupt = |detail: String| StoreError::Corrupt(format!("{}: {detail}", path.display()));
    let file_len = file.metadata().map_err(unavailable)?.len();
    (&*file).seek(SeekFrom::Start(0)).map_err(unavailable)?;
    let mut reader = io::BufReader::with_capacity(256 * 1024, &*file);

    let mut header = [0u8; HEADER_LEN as usize];
    if read_full(&mut reader, &mut header).map_err(unavailable)? < header.len() || &header[..8] != MAGIC {
        return Err(corrupt("not an itsmc log: it does not start with the ITSMCLOG header".into()));
    }
    if u64::from_le_bytes(header[24..].try_into().expect("8 bytes")) != checksum(&header[..24]) {
        return Err(corrupt("the file header is damaged".into()));
    }
    let format = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(corrupt(format!("log format {format}, which this version of itsmc cannot read")));
    }

    let mut tables = Tables::default();
    let mut last_etag = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let mut live_bytes = 0;
    let mut len = HEADER_LEN;
    let mut allocated = file_len;
    let mut payload = Vec::new();
    while len < file_len {
        let mut record_header = [0u8; RECORD_HEADER];
        let got = read_full(&mut reader, &mut record_header).map_err(unavailable)?;
        let payload_len = u32::from_le_bytes(record_header[..4].try_into().expect("4 bytes")) as u64;
        let end = len + RECORD_HEADER as u64 + payload_len;
        let intact = got == RECORD_HEADER && payload_len > 0 && end <= file_len && {
            payload.resize(payload_len as usize, 0);
            reader.read_exact(&mut payload).map_err(unavailable)?;
            u64::from_le_bytes(record_header[4..].try_into().expect("8 bytes")) == checksum(&payload)
        };
        if !intact {
            allocated = settle_tail(path, &file, len, file_len)?;
            break;
        }
        let payload_at = len + RECORD_HEADER as u64;
        decode(&payload, |op| apply(&mut tables, &mut live_bytes, &mut last_etag, op, &file, payload_at))
            .map_err(|detail| corrupt(format!("the record at byte {len} holds {detail}")))?;
        len = end;
    }
    drop(reader);
    Ok(Opened { file, len, allocated, tables, last_etag, live_bytes })
}

/// Apply one op read back from the record whose payload starts at `payload_at` of `file`.
fn apply(
    tables: &mut Tables,
    live_bytes: &mut u64,
    last_etag: &mut u64,
    op: Op<'_>,
    file: &Arc<File>,
    payload_at: u64,
) {
    *last_etag = (*last_etag).max(op.etag);
    let rows = tables.of_mut(op.table);
    let old = if op.kind == PUT {
        *live_bytes += op_size(op.key.len(), op.json.len());
        // A large value is not kept, only where it lies in the file.
        let json = Json::read_back(op.json, file, payload_at + op.at as u64);
        rows.put(op.key, Slot { etag: op.etag, json })
    } else {
        rows.remove(op.key)
    };
    if let Some(old) = old {
        *live_bytes -= op_size(op.key.len(), old.json.len());
    }
}

/// What follows the last intact record, at `offset`: zeros written ahead, which are where the next
/// record goes; or the remains of a record that a crash cut short before it was acknowledged, which are
/// cut off; or, if a valid record follows anywhere, damage in the middle of the file, which is refused.
/// Returns the length the file keeps.
fn settle_tail(path: &Path, file: &File, offset: u64, file_len: u64) -> Result<u64, StoreError> {
    let unavailable =
        |doing: &str, err: io::Error| StoreError::Unavailable(format!("{doing} the end of {}: {err}", path.display()));
    let mut tail = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset)).map_err(|err| unavailable("cannot read", err))?;
    reader.read_to_end(&mut tail).map_err(|err| unavailable("cannot read", err))?;
    if tail.iter().all(|&byte| byte == 0) {
        return Ok(file_len);
    }
    if let Some(next) = next_valid_record(&tail) {
        return Err(StoreError::Corrupt(format!(
            "{}: the record at byte {offset} is damaged, and a valid one follows at byte {}; the file was \
             changed or damaged on disk, not cut short by a crash",
            path.display(),
            offset + next as u64
        )));
    }
    tracing::warn!(
        path = %path.display(),
        offset,
        dropped_bytes = file_len - offset,
        "the store log ends in an incomplete record, the write in progress when itsmc stopped; it was never \
         acknowledged, and is cut off"
    );
    file.set_len(offset).and_then(|()| file.sync_all()).map_err(|err| unavailable("cannot cut off", err))?;
    Ok(offset)
}

/// Where in `bytes` (past its first byte) a record with a valid checksum starts, if anywhere. Run only on
/// a damaged tail, normally one batch long; the cheap structural checks keep it linear in practice.
fn next_valid_record(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len().saturating_sub(RECORD_HEADER + OP_HEADER - 1)).find(|&at| {
        let header = &bytes[at..at + RECORD_HEADER];
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let payload = &bytes[at + RECORD_HEADER..];
        len >= OP_HEADER
            && len <= payload.len()
            && matches!(payload[0], PUT | DELETE)
            && table_from_id(payload[1]).is_some()
            && u64::from_le_bytes(header[4..].try_into().expect("8 bytes")) == checksum(&payload[..len])
    })
}

/// Read until `buf` is full or the end of the file; how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A log written by [`rewrite`].
pub(super) struct Rewritten {
    /// Open for writing.
    pub file: File,
    pub len: u64,
    /// Per table (in the order of `Table::ALL`), each logged value's key and its offset in the new
    /// file, in the order the table iterated them: what [`Tables::repoint`] needs.
    pub moved: Vec<Vec<(Arc<str>, u64)>>,
}

/// Write `tables` as a new log beside `path`, make it durable and move it over `path`. Logged values
/// are copied from their files one at a time, so it takes memory for one record, not for the state.
/// The rename is not durable until [`sync_dir`] succeeds.
///
/// Until the rename the old log is untouched, so a crash or an error (a full disk) at any point before
/// it leaves the old log in place; the partial copy is removed here, or at the next open.
pub(super) fn rewrite(path: &Path, tables: &Tables, etag_floor: u64) -> io::Result<Rewritten> {
    let tmp = tmp_path(path);
    let written = write_snapshot(&tmp, tables, etag_floor).and_then(|rewritten| {
        std::fs::rename(&tmp, path)?;
        Ok(rewritten)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_snapshot(tmp: &Path, tables: &Tables, etag_floor: u64) -> io::Result<Rewritten> {
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp)?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&etag_floor.to_le_bytes());
    header.extend_from_slice(&checksum(&header).to_le_bytes());
    file.write_all(&header)?;
    let mut len = HEADER_LEN;
    let mut record = Record::default();
    record.begin();
    let mut moved = Vec::with_capacity(Table::ALL.len());
    // One logged value at a time, copied from the file it is in.
    let mut value = Vec::new();
    for table in Table::ALL {
        let mut logged = Vec::new();
        for (key, slot) in tables.of(table).iter() {
            match &slot.json {
                Json::Held(json) => {
                    record.put(table, key, slot.etag, json);
                }
                Json::Logged(from) => {
                    value.resize(from.len as usize, 0);
                    read_at(&from.file, &mut value, from.offset)?;
                    // `len` is where the record being filled will be written.
                    logged.push((key.clone(), len + record.put(table, key, slot.etag, &value)));
                }
            }
            if record.payload_len() >= SNAPSHOT_RECORD {
                let bytes = record.seal();
                file.write_all(bytes)?;
                len += bytes.len() as u64;
                record.begin();
            }
        }
        moved.push(logged);
    }
    if record.payload_len() > 0 {
        let bytes = record.seal();
        file.write_all(bytes)?;
        len += bytes.len() as u64;
    }
    file.sync_all()?;
    Ok(Rewritten { file, len, moved })
}

/// Write zeros over `from..to` of the log and make them durable, so that the records written there
/// next are synced without changing the file's length or its block map.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    // Reading a static of zeros maps the zero page: it costs no memory.
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(ZEROS.len() as u64) as usize;
        write_at(file, &ZEROS[..chunk], at)?;
        at += chunk as u64;
    }
    file.sync_data()
}

/// Make a rename in the directory of `path` durable. Without it a crash could bring back the old log
/// and lose every write made to the new one.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
    // Windows cannot open a directory as a file; NTFS journals the rename itself.
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}
