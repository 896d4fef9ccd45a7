//! The embedded store's memory with a large outbox (`cargo bench --bench outbox_memory`): 100,000 pending
//! deliveries (`OUTBOX_ROWS`), each the record `Intake::accept` writes, with a real common-schema alert
//! (`tests/fixtures/azure-monitor/cas-test-log-v2-fired.json`, about 4 KB) as its body and distinct ids. The
//! issue's target: resident memory under 100 MB.
//!
//! It prints the process's `VmRSS` (now) and `VmHWM` (the peak so far) from `/proc/self/status`:
//!
//! - after the inserts (64 concurrent writers, as the alert route makes them), in this process;
//! - in a fresh process (this binary run again with `--reopen DIR`), after opening the store, so that the
//!   figure is what a restart with that outbox costs, and after a full scan of `state = pending` in pages of
//!   1,000, as the outbox's drain reads it.
//!
//! Under `cargo test` (no `--bench` argument) it writes 500 rows, so the harness itself stays working.

use std::sync::Arc;
use std::time::Instant;

use itsmc::store::{EmbeddedStore, Filter, Insert, Store, Table};
use serde_json::json;

const FIXTURE: &str = include_str!("../tests/fixtures/azure-monitor/cas-test-log-v2-fired.json");

/// A `/proc/self/status` figure in MiB: `VmRSS:` now, `VmHWM:` the peak so far.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

fn memory(stage: &str) {
    println!("{stage:<40} VmRSS {:7.1} MiB   VmHWM {:7.1} MiB", status_mib("VmRSS:"), status_mib("VmHWM:"));
}

/// The fixture with ids of its own, as the action group would post the `i`-th alert.
fn body(i: u64) -> String {
    FIXTURE
        .replace("eeeeeeee-4444-5555-6666-ffffffffffff", &format!("eeeeeeee-4444-5555-6666-{i:012x}"))
        .replace("22222222-2222-2222-2222-222222222222", &format!("22222222-2222-2222-2222-{i:012x}"))
}

/// What `Intake::accept` stores for a new alert, under its delivery id.
fn delivery(i: u64, now_ms: i64) -> (String, serde_json::Value) {
    let key = format!("{:064x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    let record = json!({
        "state": "pending",
        "connection": "default",
        "options": { "connection": "default", "workItemType": "Incident", "grouping": "alert", "template": null },
        "body": body(i),
        "rule": "test-log-v2",
        "condition": "fired",
        "attempts": 0,
        "firstSeenAt": now_ms,
        "nextAttemptAt": now_ms,
        "leaseUntil": now_ms + 60_000,
    });
    (key, record)
}

fn runtime() -> tokio::runtime::Runtime {
    // The deployment target: a 2-core machine.
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn fill(dir: &std::path::Path, rows: u64) {
    let rt = runtime();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    memory("opened (empty)");
    let started = Instant::now();
    rt.block_on(async {
        let writers = 64;
        let mut set = tokio::task::JoinSet::new();
        for w in 0..writers {
            let store = store.clone();
            set.spawn(async move {
                let now_ms = chrono::Utc::now().timestamp_millis();
                for i in (w..rows).step_by(writers as usize) {
                    let (key, record) = delivery(i, now_ms);
                    let inserted = store.insert(Table::Deliveries, &key, &record).await.unwrap();
                    assert!(matches!(inserted, Insert::Inserted { .. }));
                }
            });
        }
        set.join_all().await;
    });
    let log = std::fs::metadata(dir.join("itsmc.log")).map(|m| m.len()).unwrap_or(0);
    println!(
        "inserted {rows} deliveries in {:.1} s; log {:.1} MiB",
        started.elapsed().as_secs_f64(),
        log as f64 / (1024.0 * 1024.0)
    );
    memory(&format!("after {rows} inserts"));
    drop(store);
    memory("after closing the store");
}

/// In a fresh process: open the store and drain-scan it.
fn reopen(dir: &std::path::Path, rows: u64) {
    memory("fresh process");
    let started = Instant::now();
    let store = EmbeddedStore::open(dir).unwrap();
    println!("reopened in {:.2} s", started.elapsed().as_secs_f64());
    memory("after reopening");
    let started = Instant::now();
    let pending = runtime().block_on(async {
        let filter = Filter { field: "state", value: "pending" };
        let mut continuation: Option<String> = None;
        let mut pending = 0u64;
        loop {
            let page = store.scan(Table::Deliveries, Some(filter), continuation.as_deref(), 1000).await.unwrap();
            pending += page.entries.len() as u64;
            match page.continuation {
                Some(next) => continuation = Some(next),
                None => return pending,
            }
        }
    });
    println!("scanned {pending} pending deliveries in {:.2} s (pages of 1,000)", started.elapsed().as_secs_f64());
    assert_eq!(pending, rows, "every delivery written is pending");
    memory("after the scan of state = pending");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--reopen") {
        let dir = std::path::PathBuf::from(&args[at + 1]);
        let rows = args[at + 2].parse().unwrap();
        reopen(&dir, rows);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let rows =
        if full { std::env::var("OUTBOX_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000) } else { 500 };
    let sample = serde_json::to_vec(&delivery(0, 0).1).unwrap().len();
    println!("{rows} deliveries of {sample} bytes each (body {} bytes)", body(0).len());

    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), rows);

    // A fresh process, so that its figures are not the peak of the inserts.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--reopen", dir.path().to_str().unwrap(), &rows.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "the reopening process failed: {status}");
}
