//! Reading the embedded store's log file from a test: where its records end.

use std::path::Path;

/// Where the records of the log in `dir` end: the store writes zeros ahead of its last record, so this is where
/// the file's length stops being the answer. The layout is `src/store/embedded/log.rs`'s: a 32-byte header,
/// then records of a 4-byte length, an 8-byte checksum and the payload.
pub fn log_end(dir: &Path) -> u64 {
    let log = std::fs::read(dir.join("itsmc.log")).unwrap();
    let mut end = 32;
    while end + 12 <= log.len() {
        let len = u32::from_le_bytes(log[end..end + 4].try_into().unwrap()) as usize;
        if len == 0 || end + 12 + len > log.len() {
            break;
        }
        end += 12 + len;
    }
    end as u64
}
