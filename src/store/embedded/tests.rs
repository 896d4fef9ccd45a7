//! What the contract tests (`tests/store.rs`) cannot see: which values are held in memory and which are
//! read from the log, and that a logged value is read whole and right after a reopen, a compaction (also
//! one that happens while it is being read) and a torn tail.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A delivery-like value of about `size` bytes of JSON that names its key and version, so that a read of
/// the wrong bytes cannot pass for the right ones.
fn value(key: &str, version: u64, size: usize) -> Value {
    let pad: String = (0..size).map(|i| char::from(b'a' + ((i as u64 + version) % 26) as u8)).collect();
    json!({ "state": if version.is_multiple_of(2) { "pending" } else { "done" }, "key": key, "version": version, "body": pad })
}

fn check(entry: &Entry, key: &str, version: u64, size: usize) {
    assert_eq!(entry.key, key);
    assert_eq!(entry.value, value(key, version, size), "{key} read back other bytes than version {version}");
}

/// Whether `key`'s slot is held in memory (`Some(true)`) or located in the log (`Some(false)`).
fn held(store: &EmbeddedStore, table: Table, key: &str) -> Option<bool> {
    store.shared.read().of(table).get(key).map(|slot| matches!(slot.json, Json::Held(_)))
}

/// The inode of the file each logged slot of `table` points into.
fn logged_inodes(store: &EmbeddedStore, table: Table) -> Vec<u64> {
    let slots: Vec<Slot> = store.shared.read().of(table).iter().map(|(_, slot)| slot.clone()).collect();
    slots
        .iter()
        .filter_map(|slot| match &slot.json {
            Json::Logged(at) => Some(at.file.metadata().unwrap().ino()),
            Json::Held(_) => None,
        })
        .collect()
}

fn log_inode(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG_FILE)).unwrap().ino()
}

#[test]
fn small_values_are_held_and_large_ones_logged() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    rt.block_on(async {
        let small = value("small", 0, 100);
        let large = value("large", 0, 4000);
        assert!(serde_json::to_vec(&small).unwrap().len() <= HELD_MAX);
        assert!(serde_json::to_vec(&large).unwrap().len() > HELD_MAX);
        store.insert(Table::Links, "small", &small).await.unwrap();
        store.insert(Table::Deliveries, "large", &large).await.unwrap();
        assert_eq!(held(&store, Table::Links, "small"), Some(true));
        assert_eq!(held(&store, Table::Deliveries, "large"), Some(false));
        check(&store.get(Table::Links, "small").await.unwrap().unwrap(), "small", 0, 100);
        let entry = store.get(Table::Deliveries, "large").await.unwrap().unwrap();
        check(&entry, "large", 0, 4000);

        // A value exactly at the limit is held; one byte more is logged.
        let at_limit = Value::String("x".repeat(HELD_MAX - 2));
        let over = Value::String("x".repeat(HELD_MAX - 1));
        store.insert(Table::Sync, "at-limit", &at_limit).await.unwrap();
        store.insert(Table::Sync, "over", &over).await.unwrap();
        assert_eq!(held(&store, Table::Sync, "at-limit"), Some(true));
        assert_eq!(held(&store, Table::Sync, "over"), Some(false));
        assert_eq!(store.get(Table::Sync, "over").await.unwrap().unwrap().value, over);

        // A large value replaced by a small one, and back; a conflict answers with the logged value.
        let Swap::Replaced { etag } = store.replace(Table::Deliveries, "large", &small, &entry.etag).await.unwrap()
        else {
            panic!("the replace failed");
        };
        assert_eq!(held(&store, Table::Deliveries, "large"), Some(true));
        store.replace(Table::Deliveries, "large", &value("large", 1, 5000), &etag).await.unwrap();
        assert_eq!(held(&store, Table::Deliveries, "large"), Some(false));
        let Insert::Conflict(current) = store.insert(Table::Deliveries, "large", &small).await.unwrap() else {
            panic!("the insert of an existing key succeeded");
        };
        check(&current, "large", 1, 5000);
    });
}

#[test]
fn reopening_locates_large_values_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        rt.block_on(async {
            for i in 0..300u64 {
                let size = if i % 3 == 0 { 100 } else { 1000 + 37 * i as usize };
                store
                    .insert(Table::Deliveries, &format!("d{i:04}"), &value(&format!("d{i:04}"), i, size))
                    .await
                    .unwrap();
            }
        });
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(logged_inodes(&store, Table::Deliveries).len(), 200);
    assert!(logged_inodes(&store, Table::Deliveries).iter().all(|&ino| ino == log_inode(dir.path())));
    rt.block_on(async {
        for i in 0..300u64 {
            let key = format!("d{i:04}");
            let size = if i % 3 == 0 { 100 } else { 1000 + 37 * i as usize };
            assert_eq!(held(&store, Table::Deliveries, &key), Some(i % 3 == 0));
            check(&store.get(Table::Deliveries, &key).await.unwrap().unwrap(), &key, i, size);
        }
        // The outbox's scan: a filter on a field of logged values, in pages.
        let filter = Filter { field: "state", value: "pending" };
        let mut continuation = None;
        let mut pending = Vec::new();
        loop {
            let page = store.scan(Table::Deliveries, Some(filter), continuation.as_deref(), 7).await.unwrap();
            pending.extend(page.entries.into_iter().map(|e| e.key));
            match page.continuation {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..300u64).filter(|i| i % 2 == 0).map(|i| format!("d{i:04}")).collect();
        assert_eq!(pending, expected);
    });
}

#[test]
fn compaction_points_logged_values_into_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = EmbeddedStore::open_with_compaction_threshold(dir.path(), 0).unwrap();
    rt.block_on(async {
        let mut etags = Vec::new();
        for i in 0..50u64 {
            let key = format!("k{i:02}");
            let Insert::Inserted { etag } = store.insert(Table::Deliveries, &key, &value(&key, 0, 3000)).await.unwrap()
            else {
                panic!()
            };
            etags.push(etag);
        }
        // Each round rewrites every value: the log soon holds more than twice the live bytes.
        for version in 1..6u64 {
            for (i, etag) in etags.iter_mut().enumerate() {
                let key = format!("k{i:02}");
                let next = value(&key, version, 3000);
                let Swap::Replaced { etag: new } = store.replace(Table::Deliveries, &key, &next, etag).await.unwrap()
                else {
                    panic!()
                };
                *etag = new;
            }
        }
    });
    assert!(store.shared.compactions.load(Ordering::Relaxed) > 0, "no compaction happened");
    // Both files are open, so the same inode is the same file.
    let now = log_inode(dir.path());
    let inodes = logged_inodes(&store, Table::Deliveries);
    assert_eq!(inodes.len(), 50);
    assert!(inodes.iter().all(|&ino| ino == now), "a logged value still points into a replaced file");
    rt.block_on(async {
        for i in 0..50u64 {
            let key = format!("k{i:02}");
            check(&store.get(Table::Deliveries, &key).await.unwrap().unwrap(), &key, 5, 3000);
        }
    });
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    rt.block_on(async {
        for i in 0..50u64 {
            let key = format!("k{i:02}");
            check(&store.get(Table::Deliveries, &key).await.unwrap().unwrap(), &key, 5, 3000);
        }
    });
}

#[test]
fn reads_racing_compactions_get_the_bytes_they_located() {
    const KEYS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(EmbeddedStore::open_with_compaction_threshold(dir.path(), 0).unwrap());
    rt.block_on(async {
        for i in 0..KEYS {
            let key = format!("k{i:02}");
            store.insert(Table::Deliveries, &key, &value(&key, 0, 2000 + i as usize)).await.unwrap();
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    // Readers on their own threads, going through `get` and `scan` as callers do, checking every value
    // against its own key and version; and noting which files they found values in.
    let readers: Vec<_> = (0..2)
        .map(|n| {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let mut files = std::collections::HashSet::new();
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    for i in 0..KEYS {
                        let key = format!("k{i:02}");
                        let slot = store.shared.read().of(Table::Deliveries).get(&key).cloned().unwrap();
                        if let Json::Logged(at) = &slot.json {
                            files.insert(at.file.metadata().unwrap().ino());
                        }
                        let entry = if n == 0 {
                            rt.block_on(store.get(Table::Deliveries, &key)).unwrap().unwrap()
                        } else {
                            entry(Table::Deliveries, key.clone(), &slot).unwrap()
                        };
                        let version = entry.value["version"].as_u64().unwrap();
                        check(&entry, &key, version, 2000 + i as usize);
                        reads += 1;
                    }
                    let all = store.shared.scan(Table::Deliveries, None, None, 1000).unwrap();
                    assert_eq!(all.entries.len() as u64, KEYS);
                    for entry in &all.entries {
                        let i: usize = entry.key[1..].parse().unwrap();
                        check(entry, &entry.key, entry.value["version"].as_u64().unwrap(), 2000 + i);
                    }
                }
                (files.len(), reads)
            })
        })
        .collect();
    rt.block_on(async {
        for version in 1..=60u64 {
            for i in 0..KEYS {
                let key = format!("k{i:02}");
                let current = store.get(Table::Deliveries, &key).await.unwrap().unwrap();
                let next = value(&key, version, 2000 + i as usize);
                let swapped = store.replace(Table::Deliveries, &key, &next, &current.etag).await.unwrap();
                assert!(matches!(swapped, Swap::Replaced { .. }));
            }
        }
    });
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let (files, reads) = reader.join().expect("a reader read the wrong bytes");
        assert!(reads > 0);
        // Not asserted: how many compactions a reader happened to straddle depends on the scheduler (and
        // a freed inode number may be reused).
        eprintln!("a reader made {reads} reads in {files} log files");
    }
    let compactions = store.shared.compactions.load(Ordering::Relaxed);
    assert!(compactions > 5, "only {compactions} compactions happened");
}

#[test]
fn a_torn_tail_is_cut_and_logged_values_before_it_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = runtime();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        rt.block_on(store.insert(Table::Deliveries, "a", &value("a", 0, 3000))).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        rt.block_on(store.insert(Table::Deliveries, "b", &value("b", 0, 3000))).unwrap();
    }
    let mut after = std::fs::read(&path).unwrap();
    // "b"'s record starts where the two files first differ; a crash in the middle of its write left only
    // its first half.
    let start = before.iter().zip(&after).position(|(x, y)| x != y).unwrap();
    let record_len = 12 + u32::from_le_bytes(after[start..start + 4].try_into().unwrap()) as usize;
    let torn = start + record_len / 2;
    after[torn..start + record_len].fill(0);
    std::fs::write(&path, &after).unwrap();

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(held(&store, Table::Deliveries, "a"), Some(false));
    rt.block_on(async {
        assert!(store.get(Table::Deliveries, "b").await.unwrap().is_none());
        check(&store.get(Table::Deliveries, "a").await.unwrap().unwrap(), "a", 0, 3000);
        // The next record goes where the torn one began, and reads back.
        store.insert(Table::Deliveries, "c", &value("c", 0, 3500)).await.unwrap();
        check(&store.get(Table::Deliveries, "c").await.unwrap().unwrap(), "c", 0, 3500);
    });
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    rt.block_on(async {
        check(&store.get(Table::Deliveries, "a").await.unwrap().unwrap(), "a", 0, 3000);
        check(&store.get(Table::Deliveries, "c").await.unwrap().unwrap(), "c", 0, 3500);
        assert!(store.get(Table::Deliveries, "b").await.unwrap().is_none());
    });
}
