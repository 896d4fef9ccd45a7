//! A full disk under the embedded store: a clear error, nothing half written, and recovery by itself once
//! there is space again.
//!
//! Each test mounts a tmpfs of its own (a filesystem small enough to fill in a second), which needs root:
//! without it the tests fail, saying so, rather than pass without having run. The tmpfs is unmounted when
//! the test ends, however it ends.
//!
//! - `alerts_get_503_while_the_disk_is_full_and_itsmc_recovers`: itsmc itself (dry-run) on a 2 MiB data
//!   directory, alerts posted until the disk is full: the route answers 503 naming the full data directory
//!   (an action group retries a 503), the alerts acknowledged before are all kept, new alerts are taken
//!   again as soon as space is freed, and the directory reopens with every acknowledged delivery.
//! - `a_compaction_that_finds_the_disk_full_leaves_the_log_intact`: the store alone, when the zeros it
//!   writes ahead of the log and then the copy a compaction writes do not fit: writes are still taken, the
//!   old log stays in place and whole, a write too large for what is left fails clearly and changes
//!   nothing, and the next open, with space again, compacts it.

#[path = "support/store_log.rs"]
mod store_log;
mod support;
use store_log::log_end;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use itsmc::store::{EmbeddedStore, Filter, Insert, Store, StoreError, Swap, Table};
use serde_json::{Value, json};
use support::harness::{Itsmc, metric_alert};

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Tmpfs { dir },
            Ok(out) => panic!(
                "this test needs root to mount a tmpfs (mount -t tmpfs -o size={size} tmpfs {}), and mount refused: \
                 {}; run it as root (CI does)",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => panic!("this test needs root to mount a tmpfs, and `mount` could not be run: {err}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill what is left of the filesystem with a file, then give back `leave` bytes of it.
    fn fill(&self, leave: u64) -> Filler {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(28), "filling the tmpfs: {err}");
                    break;
                }
            }
        }
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
        Filler { file, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily if something (a store a failed test leaked) still has a file open in it.
        let unmounted = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

struct Filler {
    file: std::fs::File,
    path: PathBuf,
}

impl Filler {
    /// Give its space back. Truncated before it is removed: a child process another test forks meanwhile
    /// holds a copy of the descriptor until it execs, and would keep the blocks of a merely unlinked file.
    fn remove(self) {
        self.file.set_len(0).unwrap();
        drop(self.file);
        std::fs::remove_file(&self.path).unwrap();
    }
}

fn alert_id(i: usize) -> String {
    format!("disk-full-{i:05}")
}

fn alert(i: usize) -> String {
    metric_alert(&alert_id(i), "Fired", "2026-11-25T12:00:00.000Z", "Sev2")
}

/// The key the intake stores alert `i`'s delivery under.
fn delivery_key(i: usize) -> String {
    let alert = itsmc::alert::parse(alert(i).as_bytes()).unwrap();
    itsmc::workitem::delivery_id("default", itsmc::workitem::WorkItemType::Incident, &alert)
}

/// The deliveries stored in `dir`, with their states; opening it must succeed, and every value read back.
async fn stored_deliveries(dir: &Path) -> BTreeMap<String, String> {
    let store = EmbeddedStore::open(dir).expect("the store reopens after the disk was full");
    let mut deliveries = BTreeMap::new();
    itsmc::store::for_each(&store, Table::Deliveries, None, |entry| {
        deliveries.insert(entry.key, entry.value["state"].as_str().unwrap_or_default().to_owned());
    })
    .await
    .expect("every delivery reads back");
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_get_503_while_the_disk_is_full_and_itsmc_recovers() {
    let tmpfs = Tmpfs::mount("2m");
    let dir = tmpfs.path().join("data");
    // A short lease, so that the outbox may finish soon what a refusal left pending (see below).
    let settings = [("ITSMC_PRODUCT", "dry-run"), ("ITSMC_OUTBOX_LEASE_SECS", "2")];
    let itsmc = Itsmc::start_in(&dir, &settings).await;

    // Eight at a time, as an action group's retries and parallel rules arrive, until the disk is full.
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut next = 0;
    while refused.is_empty() {
        assert!(next < 5000, "the 2 MiB disk never filled up");
        let posts = (next..next + 8).map(|i| {
            let itsmc = &itsmc;
            async move { (i, itsmc.alert("", &alert(i)).await) }
        });
        for (i, (status, answer)) in futures_util::future::join_all(posts).await {
            match status {
                200 | 202 => acknowledged.push(i),
                503 => refused.push((i, answer)),
                other => panic!("alert {i}: expected 200, 202 or 503, got {other}: {answer}"),
            }
        }
        next += 8;
    }
    eprintln!("{} alerts acknowledged, then {} refused", acknowledged.len(), refused.len());
    for (i, answer) in &refused {
        assert_eq!(answer["error"]["code"], "unavailable", "alert {i}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("no space left on the device"), "alert {i}: {message}");
        assert!(message.contains(&dir.display().to_string()), "alert {i} does not name the data directory: {message}");
    }
    // Space comes back: itsmc takes alerts again by itself, the refused ones (as the action group
    // retries them) included.
    std::fs::create_dir_all(tmpfs.path()).unwrap();
    let remounted = Command::new("mount").args(["-o", "remount,size=16m"]).arg(tmpfs.path()).status().unwrap();
    assert!(remounted.success(), "cannot grow the tmpfs");
    let retried: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
    for &i in retried.iter().chain(&[next, next + 1]) {
        let (status, answer) = itsmc.alert("", &alert(i)).await;
        assert!(matches!(status, 200 | 202), "alert {i} after space was freed: {status} {answer}");
        acknowledged.push(i);
    }
    // A refusal may come after the delivery was recorded, when a later write of its run failed (its
    // outcome): the delivery stays pending under its lease, and the retry is answered as a duplicate.
    // The outbox finishes it once the lease is over.
    let pending = Filter { field: "state", value: "pending" };
    let mut drained = false;
    for _ in 0..40 {
        itsmc.drain().await;
        if itsmc.intake.store.scan(Table::Deliveries, Some(pending), None, 10).await.unwrap().entries.is_empty() {
            drained = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(drained, "the outbox did not finish the deliveries left pending");
    itsmc.stop().await;

    // Every acknowledged alert's delivery reads back, nothing else is there, and nothing is corrupt.
    let stored = stored_deliveries(&dir).await;
    let expected: HashSet<String> = acknowledged.iter().map(|&i| delivery_key(i)).collect();
    let found: HashSet<String> = stored.keys().cloned().collect();
    assert_eq!(found, expected, "the stored deliveries are not the acknowledged alerts'");
    let unfinished: Vec<_> = stored.iter().filter(|(_, state)| *state != "done").collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");

    // And itsmc starts again on the directory and goes on working.
    let itsmc = Itsmc::start_in(&dir, &settings).await;
    let (status, answer) = itsmc.alert("", &alert(next + 2)).await;
    assert!(matches!(status, 200 | 202), "after a restart: {status} {answer}");
    for &i in &acknowledged {
        let (status, answer) = itsmc.alert("", &alert(i)).await;
        assert_eq!((status, &answer["action"]), (200, &json!("duplicate")), "acknowledged alert {i} was forgotten");
    }
    itsmc.stop().await;
}

fn value(i: u64) -> Value {
    json!({ "state": "pending", "n": i, "body": format!("{i:08}").repeat(1000) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_finds_the_disk_full_leaves_the_log_intact() {
    let tmpfs = Tmpfs::mount("4m");
    let dir = tmpfs.path().join("data");
    // Compacted as soon as the log holds twice the live bytes.
    let store = EmbeddedStore::open_with_compaction_threshold(&dir, 0).unwrap();
    let mut etags = BTreeMap::new();
    for i in 0..100u64 {
        let Insert::Inserted { etag } = store.insert(Table::Deliveries, &format!("d{i:03}"), &value(i)).await.unwrap()
        else {
            panic!("d{i:03} exists")
        };
        etags.insert(i, etag);
    }
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("itsmc.log")).unwrap());
    let records_end = log_end(&dir);

    // Leave 150 KB: less than the 1 MiB of zeros the store writes ahead of its log, and less than the
    // ~360 KB a compacted copy will need, but room for small records.
    let filler = tmpfs.fill(150 * 1024);
    let log = dir.join("itsmc.log");
    // Some 560 KB of writes use up the zeros written ahead before the disk filled, so the store tries to
    // write more ahead, which fails: only an optimization, so the writes are all taken anyway, and the
    // zeros it could write are given back (the file ends where its records do).
    for i in 0..70u64 {
        let key = format!("s{i:02}");
        let Insert::Inserted { etag } = store.insert(Table::Sync, &key, &value(i)).await.unwrap() else { panic!() };
        assert!(store.delete(Table::Sync, &key, &etag).await.unwrap());
    }
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        log_end(&dir),
        "the zeros that could not all be written ahead were not given back"
    );
    // Deleting more than half the entries makes a compaction due (the log is then more than twice the live
    // bytes); it cannot be written, and every delete is still taken.
    for i in 0..55u64 {
        let etag = etags.remove(&i).unwrap();
        assert!(store.delete(Table::Deliveries, &format!("d{i:03}"), &etag).await.unwrap(), "delete d{i:03}");
    }
    let small = json!({"state": "open"});
    for i in 0..20 {
        store
            .insert(Table::Links, &format!("l{i}"), &small)
            .await
            .expect("a small write while the disk is nearly full");
    }
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap()),
        inode,
        "the log was replaced, so the compaction fit after all: the test's sizes are wrong"
    );
    assert!(log_end(&dir) > records_end + 560_000, "the writes were appended to the old log");
    assert!(!dir.join("itsmc.log.tmp").exists(), "the failed compaction's copy was left behind");

    // A write too large for what is left fails, clearly, and changes nothing.
    // More than the zeros written ahead before the disk filled (up to 1 MiB) and the space left.
    let big = json!({ "body": "x".repeat(1536 * 1024) });
    match store.insert(Table::Deliveries, "big", &big).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("no space left on the device"), "{message}");
            assert!(message.contains(&dir.display().to_string()), "{message}");
        }
        other => panic!("a write that cannot fit: {other:?}"),
    }
    assert_eq!(store.get(Table::Deliveries, "big").await.unwrap(), None);
    for (&i, etag) in &etags {
        let entry = store.get(Table::Deliveries, &format!("d{i:03}")).await.unwrap().unwrap();
        assert_eq!((&entry.etag, &entry.value), (etag, &value(i)));
    }
    drop(store);

    // The old log reopens whole, with the deletes, while the disk is still full.
    let store = EmbeddedStore::open_with_compaction_threshold(&dir, 0).expect("the log reopens whole");
    for i in 0..100u64 {
        let entry = store.get(Table::Deliveries, &format!("d{i:03}")).await.unwrap();
        match etags.get(&i) {
            Some(etag) => assert_eq!(entry.map(|e| (e.etag, e.value)), Some((etag.clone(), value(i)))),
            None => assert_eq!(entry, None, "d{i:03} was deleted"),
        }
    }
    drop(store);

    // With space again, the first write compacts the log, and everything reads back from the new one.
    filler.remove();
    let store = EmbeddedStore::open_with_compaction_threshold(&dir, 0).unwrap();
    let (&last, etag) = etags.iter().next_back().unwrap();
    let swapped = store.replace(Table::Deliveries, &format!("d{last:03}"), &value(1000), etag).await.unwrap();
    let Swap::Replaced { etag } = swapped else { panic!("{swapped:?}") };
    etags.insert(last, etag);
    // The writer compacts after it has answered a batch: the next answer comes after the compaction.
    store.insert(Table::Links, "after", &small).await.unwrap();
    assert!(log_end(&dir) < records_end, "the log was not compacted once there was space");
    for (&i, etag) in &etags {
        let entry = store.get(Table::Deliveries, &format!("d{i:03}")).await.unwrap().unwrap();
        let expected = if i == last { value(1000) } else { value(i) };
        assert_eq!((&entry.etag, &entry.value), (etag, &expected));
    }
    assert_eq!(store.scan(Table::Links, None, None, 100).await.unwrap().entries.len(), 21);
}
