//! The `Store` contract, run against every implementation, then what only one store promises.
//!
//! Each case of the contract is an async function over `Arc<dyn Store>` (or over a [`Fixture`] when it
//! must reopen the same data). `store_suite!(backend, fixture)` expands one `#[tokio::test]` per case
//! for a backend, so the second implementation (Azure Table Storage against Azurite, `table_storage`) runs
//! the same cases. What only one store promises follows the contract: the embedded store's files, then
//! Table Storage's limits, filters, paging and authorization.
//!
//! The embedded-only tests re-execute this test binary as a child process (`child_process` below) to
//! kill a writer mid-flight and to hold the database from another process.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use itsmc::store::{EmbeddedStore, Entry, Filter, Insert, Page, Store, StoreError, Swap, Table};
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How a backend is brought up for one test.
#[async_trait]
trait Fixture: Send + Sync {
    /// A store over this fixture's own, initially empty storage. Opened again after the previous store
    /// was dropped, it sees the same data.
    async fn open(&self) -> Arc<dyn Store>;
}

struct Embedded {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Fixture for Embedded {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(self.dir.path()).expect("open the embedded store"))
    }
}

async fn embedded_fixture() -> Embedded {
    Embedded { dir: tempfile::tempdir().expect("temporary directory") }
}

/// One test per case for a backend. `$fixture` is an expression whose `.await` gives a [`Fixture`].
macro_rules! store_suite {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;

            store_suite!(@store $fixture;
                insert_then_get,
                insert_conflict_returns_current,
                replace_with_matching_etag,
                replace_with_stale_etag,
                replace_of_deleted_key,
                etag_changes_on_every_write,
                delete_with_etag,
                scan_in_key_order_across_pages,
                scan_with_filter,
                tables_are_separate,
                concurrent_inserts_one_wins,
                claim_is_an_insert_that_does_not_read_back,
                concurrent_compare_and_swap_increments,
                unicode_round_trips,
            );
            store_suite!(@fixture $fixture; reopen_keeps_data);
        }
    };
    (@store $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture.await;
                super::$case(fixture.open().await).await;
            }
        )*
    };
    (@fixture $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture.await;
                super::$case(&fixture).await;
            }
        )*
    };
}

store_suite!(embedded, embedded_fixture());

#[path = "support/azurite.rs"]
mod azurite;
// Its logs go to the secret scan with the rest of the suite (installed when the binary loads).
#[path = "support/capture.rs"]
mod capture;
#[path = "support/store_log.rs"]
mod store_log;
use store_log::log_end;

/// Azure Table Storage, on Azurite, with the account key or (`entra`) with Entra bearer tokens over HTTPS:
/// tables of a prefix of this test's own, deleted when it passes (a failed test leaves them to look at).
struct Azurite {
    prefix: String,
    entra: bool,
}

#[async_trait]
impl Fixture for Azurite {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(azurite::open(&self.prefix, self.entra).await)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            azurite::drop_tables_blocking(std::mem::take(&mut self.prefix), self.entra);
        }
    }
}

async fn azurite_fixture() -> Azurite {
    Azurite { prefix: azurite::fresh_prefix(), entra: false }
}

async fn azurite_entra_fixture() -> Azurite {
    Azurite { prefix: azurite::fresh_prefix(), entra: true }
}

store_suite!(table_storage, azurite_fixture());
store_suite!(table_storage_entra, azurite_entra_fixture());

/// A token for another audience is refused by the service, and the error says what to check.
#[tokio::test]
async fn table_storage_refuses_a_token_for_another_audience() {
    let url = azurite::entra_endpoint().parse().unwrap();
    let tokens = azurite::StorageTokens::new("https://vault.azure.net");
    let store =
        itsmc::store::TableStore::with_credential(url, tokens, &azurite::fresh_prefix(), azurite::entra_http_client())
            .unwrap();
    match store.ensure_tables().await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("403") && message.contains("Storage Table Data Contributor"), "{message}");
            assert!(!message.contains("c2lnbmF0dXJl"), "no token in the message: {message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- the contract ----

fn inserted(outcome: Insert) -> String {
    match outcome {
        Insert::Inserted { etag } => etag,
        other => panic!("expected Inserted, got {other:?}"),
    }
}

fn replaced(outcome: Swap) -> String {
    match outcome {
        Swap::Replaced { etag } => etag,
        other => panic!("expected Replaced, got {other:?}"),
    }
}

fn entry(key: &str, etag: &str, value: Value) -> Entry {
    Entry { key: key.into(), etag: etag.into(), value }
}

async fn insert_then_get(store: Arc<dyn Store>) {
    let value = json!({"state": "open", "sys_id": "46d44a5c", "attempts": 0});
    let etag = inserted(store.insert(Table::Links, "a1", &value).await.unwrap());
    assert!(!etag.is_empty());
    assert_eq!(store.get(Table::Links, "a1").await.unwrap(), Some(entry("a1", &etag, value)));
    assert_eq!(store.get(Table::Links, "a2").await.unwrap(), None);
}

async fn insert_conflict_returns_current(store: Arc<dyn Store>) {
    let first = json!({"claimed_by": "first"});
    let etag = inserted(store.insert(Table::Links, "k", &first).await.unwrap());
    let second = store.insert(Table::Links, "k", &json!({"claimed_by": "second"})).await.unwrap();
    assert_eq!(second, Insert::Conflict(entry("k", &etag, first.clone())));
    assert_eq!(store.get(Table::Links, "k").await.unwrap(), Some(entry("k", &etag, first)));
}

async fn claim_is_an_insert_that_does_not_read_back(store: Arc<dyn Store>) {
    let first = json!({"claimed_by": "first"});
    let etag = store.claim(Table::Links, "c", &first).await.unwrap().expect("claimed");
    assert_eq!(store.get(Table::Links, "c").await.unwrap(), Some(entry("c", &etag, first.clone())));
    assert_eq!(store.claim(Table::Links, "c", &json!({"claimed_by": "second"})).await.unwrap(), None);
    assert_eq!(store.get(Table::Links, "c").await.unwrap(), Some(entry("c", &etag, first)), "unchanged");
    // The etag it gives is the one compare-and-swap takes.
    assert!(matches!(store.replace(Table::Links, "c", &json!({"v": 2}), &etag).await.unwrap(), Swap::Replaced { .. }));
}

async fn replace_with_matching_etag(store: Arc<dyn Store>) {
    let etag = inserted(store.insert(Table::Deliveries, "d", &json!({"attempts": 0})).await.unwrap());
    let value = json!({"attempts": 1});
    let new_etag = replaced(store.replace(Table::Deliveries, "d", &value, &etag).await.unwrap());
    assert_ne!(new_etag, etag);
    assert_eq!(store.get(Table::Deliveries, "d").await.unwrap(), Some(entry("d", &new_etag, value)));
}

async fn replace_with_stale_etag(store: Arc<dyn Store>) {
    let old = inserted(store.insert(Table::Links, "k", &json!({"n": 0})).await.unwrap());
    let current = replaced(store.replace(Table::Links, "k", &json!({"n": 1}), &old).await.unwrap());
    let expected = Swap::Stale(Some(entry("k", &current, json!({"n": 1}))));
    assert_eq!(store.replace(Table::Links, "k", &json!({"n": 99}), &old).await.unwrap(), expected);
    // An etag the store never issued is just another mismatch.
    assert_eq!(store.replace(Table::Links, "k", &json!({"n": 99}), "W/\"bogus\"").await.unwrap(), expected);
    // Not a wildcard, as it would be in an HTTP If-Match: a store must never write unconditionally.
    assert_eq!(store.replace(Table::Links, "k", &json!({"n": 99}), "*").await.unwrap(), expected);
    assert_eq!(store.get(Table::Links, "k").await.unwrap(), Some(entry("k", &current, json!({"n": 1}))));
}

async fn replace_of_deleted_key(store: Arc<dyn Store>) {
    let etag = inserted(store.insert(Table::Links, "k", &json!({"n": 0})).await.unwrap());
    assert!(store.delete(Table::Links, "k", &etag).await.unwrap());
    assert_eq!(store.replace(Table::Links, "k", &json!({"n": 1}), &etag).await.unwrap(), Swap::Stale(None));
    // Never existed: replace does not create.
    assert_eq!(store.replace(Table::Links, "never", &json!({}), &etag).await.unwrap(), Swap::Stale(None));
    assert_eq!(store.get(Table::Links, "k").await.unwrap(), None);
    assert_eq!(store.get(Table::Links, "never").await.unwrap(), None);
}

async fn etag_changes_on_every_write(store: Arc<dyn Store>) {
    let value = json!({"same": true});
    let mut seen = HashSet::new();
    let mut etag = inserted(store.insert(Table::Links, "k", &value).await.unwrap());
    assert!(seen.insert(etag.clone()));
    for _ in 0..5 {
        // The same value again still makes a new version.
        etag = replaced(store.replace(Table::Links, "k", &value, &etag).await.unwrap());
        assert!(seen.insert(etag.clone()), "etag {etag} repeated");
    }
    // Deleted and written again with the same value: the old etags must not match it (no ABA).
    assert!(store.delete(Table::Links, "k", &etag).await.unwrap());
    let again = inserted(store.insert(Table::Links, "k", &value).await.unwrap());
    assert!(seen.insert(again.clone()), "etag {again} repeated after delete");
    assert!(matches!(store.replace(Table::Links, "k", &value, &etag).await.unwrap(), Swap::Stale(Some(_))));
    // Other keys and tables never share a version either.
    let other = inserted(store.insert(Table::Deliveries, "k", &value).await.unwrap());
    assert!(seen.insert(other));
}

async fn delete_with_etag(store: Arc<dyn Store>) {
    let old = inserted(store.insert(Table::Deliveries, "d", &json!({"v": 1})).await.unwrap());
    let etag = replaced(store.replace(Table::Deliveries, "d", &json!({"v": 2}), &old).await.unwrap());
    assert!(!store.delete(Table::Deliveries, "d", &old).await.unwrap());
    assert!(!store.delete(Table::Deliveries, "d", "nonsense").await.unwrap());
    assert!(!store.delete(Table::Deliveries, "d", "*").await.unwrap());
    assert_eq!(store.get(Table::Deliveries, "d").await.unwrap(), Some(entry("d", &etag, json!({"v": 2}))));
    assert!(store.delete(Table::Deliveries, "d", &etag).await.unwrap());
    assert_eq!(store.get(Table::Deliveries, "d").await.unwrap(), None);
    assert!(!store.delete(Table::Deliveries, "d", &etag).await.unwrap());
    assert!(!store.delete(Table::Deliveries, "absent", &etag).await.unwrap());
}

/// Every entry of a scan, page by page, checking what holds for any page.
async fn scan_all(store: &dyn Store, table: Table, filter: Option<Filter<'_>>, limit: usize) -> Vec<Entry> {
    let mut all = Vec::new();
    let mut continuation: Option<String> = None;
    for _ in 0..1000 {
        let page = store.scan(table, filter, continuation.as_deref(), limit).await.unwrap();
        assert!(page.entries.len() <= limit, "a page of {} over the limit {limit}", page.entries.len());
        all.extend(page.entries);
        match page.continuation {
            None => return all,
            Some(next) => continuation = Some(next),
        }
    }
    panic!("the scan never completed");
}

fn keys(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

async fn scan_in_key_order_across_pages(store: Arc<dyn Store>) {
    let mut expected: Vec<String> = (0..25).map(|i| format!("{:04x}", i * 97 % 251)).collect();
    let mut order = expected.clone();
    order.shuffle(&mut rand::rng());
    let mut etags = BTreeMap::new();
    for key in &order {
        let etag = inserted(store.insert(Table::Links, key, &json!({"key": key})).await.unwrap());
        etags.insert(key.clone(), etag);
    }
    expected.sort();

    let first = store.scan(Table::Links, None, None, 10).await.unwrap();
    assert_eq!(keys(&first.entries), expected[..10].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(first.continuation.is_some());

    let all = scan_all(&*store, Table::Links, None, 10).await;
    assert_eq!(keys(&all), expected.iter().map(String::as_str).collect::<Vec<_>>());
    for e in &all {
        assert_eq!(e.etag, etags[&e.key]);
        assert_eq!(e.value, json!({"key": e.key}));
    }
    assert_eq!(scan_all(&*store, Table::Links, None, 1).await, all);
    let one_page = store.scan(Table::Links, None, None, 1000).await.unwrap();
    assert_eq!(one_page.entries, all);
    assert_eq!(one_page.continuation, None);

    // Continuing after a key that was deleted meanwhile still resumes in order.
    let page = store.scan(Table::Links, None, None, 5).await.unwrap();
    let last = page.entries.last().unwrap();
    assert!(store.delete(Table::Links, &last.key, &last.etag).await.unwrap());
    let rest = store.scan(Table::Links, None, page.continuation.as_deref(), 1000).await.unwrap();
    assert_eq!(keys(&rest.entries), expected[5..].iter().map(String::as_str).collect::<Vec<_>>());

    assert_eq!(scan_all(&*store, Table::Deliveries, None, 10).await, vec![]);
}

async fn scan_with_filter(store: Arc<dyn Store>) {
    let mut pending = Vec::new();
    for i in 0..30 {
        let key = format!("{i:02x}");
        let value = match i % 5 {
            0 | 3 => json!({"state": "pending", "i": i}),
            1 => json!({"state": "done", "i": i}),
            2 => json!({"state": 7, "i": i}),
            _ => json!({"nested": {"state": "pending"}, "i": i}),
        };
        if value["state"] == "pending" {
            pending.push(key.clone());
        }
        inserted(store.insert(Table::Deliveries, &key, &value).await.unwrap());
    }
    let filter = Some(Filter { field: "state", value: "pending" });
    for limit in [1, 4, 100] {
        let found = scan_all(&*store, Table::Deliveries, filter, limit).await;
        assert_eq!(keys(&found), pending.iter().map(String::as_str).collect::<Vec<_>>(), "limit {limit}");
        assert!(found.iter().all(|e| e.value["state"] == "pending"));
    }
    let nothing = Some(Filter { field: "state", value: "archived" });
    assert_eq!(scan_all(&*store, Table::Deliveries, nothing, 7).await, vec![]);
    let missing_field = Some(Filter { field: "owner", value: "pending" });
    assert_eq!(scan_all(&*store, Table::Deliveries, missing_field, 7).await, vec![]);
}

async fn tables_are_separate(store: Arc<dyn Store>) {
    let link = inserted(store.insert(Table::Links, "same", &json!({"table": "links"})).await.unwrap());
    let delivery = inserted(store.insert(Table::Deliveries, "same", &json!({"table": "deliveries"})).await.unwrap());
    inserted(store.insert(Table::Links, "only-links", &json!({})).await.unwrap());
    assert_eq!(store.get(Table::Links, "same").await.unwrap().unwrap().value["table"], "links");
    assert_eq!(store.get(Table::Deliveries, "same").await.unwrap().unwrap().value["table"], "deliveries");
    assert_eq!(store.get(Table::Deliveries, "only-links").await.unwrap(), None);
    assert_eq!(keys(&scan_all(&*store, Table::Deliveries, None, 10).await), ["same"]);
    assert!(store.delete(Table::Links, "same", &link).await.unwrap());
    assert_eq!(
        store.get(Table::Deliveries, "same").await.unwrap(),
        Some(entry("same", &delivery, json!({"table": "deliveries"})))
    );
}

async fn concurrent_inserts_one_wins(store: Arc<dyn Store>) {
    let mut tasks = JoinSet::new();
    for writer in 0..50 {
        let store = store.clone();
        tasks.spawn(async move { store.insert(Table::Links, "claim", &json!({"writer": writer})).await.unwrap() });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Insert::Inserted { etag } => Some(etag),
            Insert::Conflict(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let stored = store.get(Table::Links, "claim").await.unwrap().unwrap();
    assert_eq!(&stored.etag, winners[0]);
    for outcome in &outcomes {
        if let Insert::Conflict(current) = outcome {
            assert_eq!(current, &stored);
        }
    }
}

async fn concurrent_compare_and_swap_increments(store: Arc<dyn Store>) {
    const WRITERS: usize = 50;
    inserted(store.insert(Table::Deliveries, "counter", &json!({"count": 0})).await.unwrap());
    // Everyone starts from the same read, so all but one first attempt must be stale.
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = JoinSet::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let mut current = store.get(Table::Deliveries, "counter").await.unwrap().unwrap();
            barrier.wait().await;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let next = json!({"count": current.value["count"].as_u64().unwrap() + 1});
                match store.replace(Table::Deliveries, "counter", &next, &current.etag).await.unwrap() {
                    Swap::Replaced { .. } => return attempts,
                    Swap::Stale(Some(now)) => current = now,
                    Swap::Stale(None) => panic!("the counter vanished"),
                }
            }
        });
    }
    let attempts = tasks.join_all().await;
    assert!(attempts.iter().filter(|&&a| a == 1).count() <= 1, "more than one first attempt won");
    let counter = store.get(Table::Deliveries, "counter").await.unwrap().unwrap();
    assert_eq!(counter.value, json!({"count": WRITERS}));
}

async fn unicode_round_trips(store: Arc<dyn Store>) {
    let value = json!({
        "short_description": "Überlastung: «CPU» > 95 % — 東京リージョン 🔥",
        "quotes": "she said \"it's down\" and 'left'",
        "newlines": "line one\nline two\r\n\ttabbed",
        "escapes": "back\\slash /slash \u{0000} \u{001f} \u{2028}",
        "empty": "",
        "numbers": [0, -1, 1.5, 1e300, 9007199254740993u64],
        "nested": {"null": null, "bool": false, "list": [[], {}]},
    });
    let etag = inserted(store.insert(Table::Links, "u", &value).await.unwrap());
    assert_eq!(store.get(Table::Links, "u").await.unwrap(), Some(entry("u", &etag, value.clone())));
    assert_eq!(scan_all(&*store, Table::Links, None, 10).await, vec![entry("u", &etag, value.clone())]);
    let quoted = Some(Filter { field: "quotes", value: "she said \"it's down\" and 'left'" });
    assert_eq!(keys(&scan_all(&*store, Table::Links, quoted, 10).await), ["u"]);
    assert_eq!(
        store.insert(Table::Links, "u", &json!(null)).await.unwrap(),
        Insert::Conflict(entry("u", &etag, value))
    );
}

async fn reopen_keeps_data(fixture: &dyn Fixture) {
    let mut seen = HashSet::new();
    let (kept, replaced_etag) = {
        let store = fixture.open().await;
        let kept = inserted(store.insert(Table::Links, "kept", &json!({"v": "kept"})).await.unwrap());
        let old = inserted(store.insert(Table::Deliveries, "replaced", &json!({"v": 1})).await.unwrap());
        let new = replaced(store.replace(Table::Deliveries, "replaced", &json!({"v": 2}), &old).await.unwrap());
        let gone = inserted(store.insert(Table::Links, "deleted", &json!({})).await.unwrap());
        assert!(store.delete(Table::Links, "deleted", &gone).await.unwrap());
        seen.extend([kept.clone(), old, new.clone(), gone]);
        (kept, new)
    };
    let store = fixture.open().await;
    assert_eq!(store.get(Table::Links, "kept").await.unwrap(), Some(entry("kept", &kept, json!({"v": "kept"}))));
    assert_eq!(
        store.get(Table::Deliveries, "replaced").await.unwrap(),
        Some(entry("replaced", &replaced_etag, json!({"v": 2})))
    );
    assert_eq!(store.get(Table::Links, "deleted").await.unwrap(), None);
    // Versions issued after a restart never repeat one issued before it.
    let after = inserted(store.insert(Table::Links, "deleted", &json!({})).await.unwrap());
    assert!(seen.insert(after));
    let after = replaced(store.replace(Table::Links, "kept", &json!({"v": "kept"}), &kept).await.unwrap());
    assert!(seen.insert(after));
}

// ---- the embedded store only ----

const CHILD_MODE: &str = "ITSMC_STORE_TEST_CHILD";
const CHILD_DIR: &str = "ITSMC_STORE_TEST_DIR";

/// This test binary again, running only `child_process` in `mode` on `dir`.
fn child(mode: &str, dir: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_process", "--nocapture", "--test-threads", "1"])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Not a test on its own: what the child processes of the tests below run. A no-op in a normal run.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else { return };
    let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match mode.as_str() {
        "crash" => runtime.block_on(write_until_killed(EmbeddedStore::open(&dir).unwrap())),
        // Compacting all the time, so that the kill often lands in or just after a compaction.
        "crash-compacting" => {
            runtime.block_on(write_until_killed(EmbeddedStore::open_with_compaction_threshold(&dir, 4096).unwrap()))
        }
        "hold" => {
            let _store = EmbeddedStore::open(&dir).unwrap();
            // libtest may have started the line ("test child_process ... "), so the parent looks for
            // the marker anywhere in it.
            println!("store-open");
            // Until the parent closes our stdin.
            let _ = std::io::stdin().read_line(&mut String::new());
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Insert and bump keys from several tasks, printing each acknowledged write, and abort at a random
/// moment (likely mid-commit, since commits are most of the time spent).
async fn write_until_killed(store: EmbeddedStore) {
    let store = Arc::new(store);
    let run: u32 = rand::random();
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(rand::random_range(5..120))).await;
        std::process::abort();
    });
    let mut tasks = JoinSet::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0.. {
                let key = format!("{run:08x}-{task}-{i:06}");
                let mut etag = inserted(store.insert(Table::Links, &key, &json!({"version": 0})).await.unwrap());
                println!("acked {key} 0");
                for version in 1..3 {
                    let value = json!({"version": version});
                    etag = replaced(store.replace(Table::Links, &key, &value, &etag).await.unwrap());
                    println!("acked {key} {version}");
                }
            }
        });
    }
    tasks.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_loses_no_acknowledged_write() {
    kill_writers_and_check("crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_loses_no_acknowledged_write_while_compacting() {
    kill_writers_and_check("crash-compacting").await;
}

/// Kill a child writing in `mode` four times, checking after each that every acknowledged write is there.
async fn kill_writers_and_check(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0;
    for round in 0..4 {
        let output = child(mode, dir.path()).output().unwrap();
        assert!(!output.status.success(), "the child was meant to abort: {:?}", output.status);
        let mut acked = BTreeMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // The first line may start with libtest's "test child_process ... ".
            if let Some((_, rest)) = line.split_once("acked ") {
                let (key, version) = rest.split_once(' ').unwrap();
                acked.insert(key.to_owned(), version.parse::<u64>().unwrap());
            }
        }
        total_acked += acked.len();
        eprintln!("round {round}: {} keys acknowledged before the kill", acked.len());

        let store = EmbeddedStore::open(dir.path()).expect("the file opens after a kill");
        for (key, version) in &acked {
            let stored = store.get(Table::Links, key).await.unwrap();
            let stored = stored.unwrap_or_else(|| panic!("round {round}: acknowledged {key} is lost"));
            // A write in flight when the process died may or may not have landed; an acknowledged one must.
            assert!(stored.value["version"].as_u64().unwrap() >= *version, "round {round}: {key} went back");
        }
        let all = scan_all(&store, Table::Links, None, 1000).await;
        assert!(all.iter().all(|e| e.value["version"].is_u64()), "a partial write is visible");
        inserted(store.insert(Table::Deliveries, &format!("after-{round}"), &json!({})).await.unwrap());
    }
    assert!(total_acked > 0, "no child acknowledged anything before it died; the test proved nothing");
}

#[tokio::test]
async fn another_process_holding_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    /// Never leaves the child behind, whatever fails.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut holder = Holder(child("hold", dir.path()).spawn().unwrap());
    let stdout = holder.0.stdout.take().unwrap();
    let opened = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().any(|line| line.is_ok_and(|line| line.contains("store-open")))
    });
    let opened = tokio::time::timeout(Duration::from_secs(20), opened).await;
    assert!(matches!(opened, Ok(Ok(true))), "the child never opened the store");
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("ITSMC_DATA_DIR"), "{message}");
            assert!(message.contains("itsmc.log"), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("opened a database another process holds"),
    }
    holder.0.stdin.take().unwrap().write_all(b"\n").unwrap();
    holder.0.wait().unwrap();
    EmbeddedStore::open(dir.path()).expect("free once the other process is gone");
}

#[tokio::test]
async fn second_open_in_the_same_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("ITSMC_DATA_DIR"), "{message}"),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("opened the same database twice"),
    }
    drop(first);
    EmbeddedStore::open(dir.path()).expect("free once the first store is dropped");
}

#[tokio::test]
async fn describe_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("state")).unwrap();
    assert_eq!(store.describe(), format!("embedded ({})", dir.path().join("state").display()));
    assert!(dir.path().join("state").join("itsmc.log").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_completes_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut tasks = JoinSet::new();
    for i in 0..500 {
        let store = store.clone();
        tasks.spawn(async move { store.insert(Table::Deliveries, &format!("{i:04}"), &json!({"i": i})).await });
    }
    // The last task to finish drops the store; its writer must answer everything queued and release
    // the file before that drop returns.
    drop(store);
    for outcome in tasks.join_all().await {
        inserted(outcome.unwrap());
    }
    let store = EmbeddedStore::open(dir.path()).expect("released by the drop");
    assert_eq!(scan_all(&store, Table::Deliveries, None, 1000).await.len(), 500);
}

/// Stored bytes that are not JSON: a well-formed record appended behind the store's back.
#[tokio::test]
async fn unreadable_values_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let etag = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        inserted(store.insert(Table::Links, "good", &json!({"ok": true})).await.unwrap());
        inserted(store.insert(Table::Links, "bad", &json!({})).await.unwrap())
    };
    // Keep the etag and break only the JSON; the second value is not even text.
    let number = u64::from_str_radix(&etag, 16).unwrap();
    append_log_record(
        dir.path(),
        &[
            (Table::Links, number, "bad", b"{\"truncated\": "),
            (Table::Links, number + 1, "unknown-format", b"\x07\xff"),
        ],
    );
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(matches!(store.get(Table::Links, "bad").await, Err(StoreError::Corrupt(m)) if m.contains("bad")));
    assert!(matches!(store.get(Table::Links, "unknown-format").await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.scan(Table::Links, None, None, 10).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.insert(Table::Links, "bad", &json!({})).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(
        store.replace(Table::Links, "unknown-format", &json!({}), &etag).await,
        Err(StoreError::Corrupt(_))
    ));
    // The rest of the store is unaffected, also within the batches that met the bad records.
    assert!(store.get(Table::Links, "good").await.unwrap().is_some());
    inserted(store.insert(Table::Links, "new", &json!({})).await.unwrap());
}

/// A full disk fails the writes of the batch, changes nothing, and the store works again once space is
/// freed. Needs a small filesystem, so it mounts a tmpfs, which only root may do; elsewhere it is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(root.path())
        .stderr(Stdio::null())
        .status();
    if !matches!(mount, Ok(status) if status.success()) {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(root.path());
    let dir = root.path().join("data");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).unwrap());
    let before = inserted(store.insert(Table::Links, "before", &json!({"v": 1})).await.unwrap());

    // Fill what is left of the filesystem.
    let filler_path = root.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let _ = filler.sync_all();

    let big = json!({"padding": "x".repeat(256 * 1024)});
    let mut failure = None;
    let mut failed = Vec::new();
    let mut acknowledged = Vec::new();
    for i in 0..64 {
        let mut tasks = JoinSet::new();
        for j in 0..8 {
            let store = store.clone();
            let big = big.clone();
            tasks.spawn(async move {
                let key = format!("full-{i}-{j}");
                (key.clone(), store.insert(Table::Links, &key, &big).await)
            });
        }
        for (key, outcome) in tasks.join_all().await {
            match outcome {
                Ok(outcome) => acknowledged.push((key, inserted(outcome))),
                Err(StoreError::Unavailable(message)) => {
                    failed.push(key.clone());
                    failure = Some((key, message));
                }
                Err(other) => panic!("expected Unavailable, got {other:?}"),
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let (failed_key, message) = failure.expect("the disk never filled up");
    eprintln!("the full disk was reported as: {message}");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(message.contains(&dir.join("itsmc.log").display().to_string()), "{message}");
    // Nothing of the failed writes is visible, the rest is intact.
    for key in &failed {
        assert_eq!(store.get(Table::Links, key).await.unwrap(), None, "{key}");
    }
    assert_eq!(store.get(Table::Links, "before").await.unwrap(), Some(entry("before", &before, json!({"v": 1}))));

    // Truncated rather than only removed: a child process another test forks in the meantime holds a
    // copy of the descriptor until it execs, and would keep the blocks of a merely unlinked file.
    filler.set_len(0).unwrap();
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let etag = inserted(store.insert(Table::Links, "after", &json!({"v": 2})).await.unwrap());
    inserted(store.insert(Table::Links, &failed_key, &json!({"retried": true})).await.unwrap());
    drop(store);
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(store.get(Table::Links, "after").await.unwrap(), Some(entry("after", &etag, json!({"v": 2}))));
    assert_eq!(store.get(Table::Links, &failed_key).await.unwrap().unwrap().value, json!({"retried": true}));
    for (key, etag) in acknowledged {
        assert_eq!(store.get(Table::Links, &key).await.unwrap().unwrap().etag, etag, "{key}");
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("itsmc.log"), "name,value\nnot,redb\n".repeat(500)).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("itsmc.log"), "{message}"),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened a file that is not a database"),
    }
}

// ---- the log file: compaction and damage ----

/// The log's checksum as `src/store/embedded/log.rs` defines it, written out again so that a change of
/// the on-disk format cannot pass unnoticed.
fn log_checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let step = |h: u64, word: u64| (h ^ word).wrapping_mul(K).rotate_left(23);
    let mut h = (bytes.len() as u64).wrapping_mul(K) ^ 0x6974_736d_632d_6c67;
    for word in bytes.chunks(8) {
        let mut padded = [0u8; 8];
        padded[..word.len()].copy_from_slice(word);
        h = step(h, u64::from_le_bytes(padded));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Add one record of puts to the log in `dir`, where and as the store would write it.
fn append_log_record(dir: &Path, puts: &[(Table, u64, &str, &[u8])]) {
    let mut payload = Vec::new();
    for &(table, etag, key, value) in puts {
        // The file format's table ids, as documented in src/store/embedded/log.rs.
        let table_id: u8 = match table {
            Table::Links => 0,
            Table::Deliveries => 1,
            Table::Sync => 2,
            Table::ServiceDesk => 3,
        };
        payload.extend_from_slice(&[1, table_id]);
        payload.extend_from_slice(&etag.to_le_bytes());
        payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
        payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
        payload.extend_from_slice(key.as_bytes());
        payload.extend_from_slice(value);
    }
    let end = log_end(dir);
    let mut log = std::fs::OpenOptions::new().write(true).open(dir.join("itsmc.log")).unwrap();
    std::io::Seek::seek(&mut log, std::io::SeekFrom::Start(end)).unwrap();
    log.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
    log.write_all(&log_checksum(&payload).to_le_bytes()).unwrap();
    log.write_all(&payload).unwrap();
}

/// A log compacted many times over, by a store with a tiny threshold, while writers keep writing: every
/// acknowledged write is there after a reopen, and no etag comes back, not even a deleted entry's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_entry_and_the_etag_counter() {
    let dir = tempfile::tempdir().unwrap();
    let mut issued = HashSet::new();
    let mut expected = std::collections::HashMap::new();
    let written = {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open_with_compaction_threshold(dir.path(), 4096).unwrap());
        // The highest etag issued so far belongs to an entry that is gone before any compaction.
        let gone = inserted(store.insert(Table::Links, "gone", &json!({})).await.unwrap());
        assert!(store.delete(Table::Links, "gone", &gone).await.unwrap());
        issued.insert(gone);
        let mut tasks = JoinSet::new();
        for task in 0..16 {
            let store = store.clone();
            tasks.spawn(async move {
                let table = Table::ALL[task % Table::ALL.len()];
                let key = format!("key-{task:02}");
                let mut etags = Vec::new();
                let mut etag = inserted(store.insert(table, &key, &json!({"n": 0})).await.unwrap());
                etags.push(etag.clone());
                let mut value = json!({});
                for n in 1..=60 {
                    value = json!({"n": n, "padding": "x".repeat(100 + task * 10)});
                    etag = replaced(store.replace(table, &key, &value, &etag).await.unwrap());
                    etags.push(etag.clone());
                    // Reads during compactions see the last acknowledged write.
                    assert_eq!(store.get(table, &key).await.unwrap(), Some(entry(&key, &etag, value.clone())));
                }
                // Deleted and written again: only the last version may survive.
                let temporary = format!("temporary-{task:02}");
                let t = inserted(store.insert(table, &temporary, &json!({"t": task})).await.unwrap());
                assert!(store.delete(table, &temporary, &t).await.unwrap());
                etags.push(t);
                ((table, key), etag, value, etags)
            });
        }
        for (slot, etag, value, etags) in tasks.join_all().await {
            issued.extend(etags);
            expected.insert(slot, (etag, value));
        }
        // Without compaction the log would hold all 16 x 61 writes, some 130 KB.
        let written = log_end(dir.path());
        assert!(written < 40 * 1024, "the log was not compacted: {written} bytes");
        written
    };
    eprintln!("the log holds {written} bytes after the writes");
    assert!(!dir.path().join("itsmc.log.tmp").exists());

    let store = EmbeddedStore::open(dir.path()).unwrap();
    for ((table, key), (etag, value)) in &expected {
        assert_eq!(store.get(*table, key).await.unwrap(), Some(entry(key, etag, value.clone())), "{key}");
    }
    assert_eq!(store.get(Table::Links, "gone").await.unwrap(), None);
    for table in Table::ALL {
        let keys_left = scan_all(&store, table, None, 100).await.len();
        assert_eq!(keys_left, 16 / Table::ALL.len(), "{table:?}: deleted entries came back");
    }
    let highest = issued.iter().map(|etag| u64::from_str_radix(etag, 16).unwrap()).max().unwrap();
    for key in ["gone", "new"] {
        let etag = inserted(store.insert(Table::Links, key, &json!({})).await.unwrap());
        assert!(u64::from_str_radix(&etag, 16).unwrap() > highest, "{key}: etag {etag} was issued before");
    }
}

/// A crash in the middle of an append leaves an incomplete record at the end: it was never
/// acknowledged, so it is cut off, and the store carries on after the last complete one.
#[tokio::test]
async fn a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("itsmc.log");
    let mut etags = Vec::new();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for key in ["a", "b", "c"] {
            etags.push(inserted(store.insert(Table::Links, key, &json!({"key": key})).await.unwrap()));
        }
    }
    let whole = log_end(dir.path());
    // The zeros the store writes ahead of its records are free space, not damage.
    assert!(std::fs::metadata(&path).unwrap().len() > whole);

    // After the last record, junk where zeros should be (the file grew, but the data never landed),
    // then a record header promising more than there is.
    let mut log = std::fs::read(&path).unwrap();
    log.truncate(whole as usize);
    log.extend_from_slice(&[0u8; 700]);
    log.extend_from_slice(b"JUNK\x40\0\0\0\x01\x02\x03\x04\x05\x06\x07\x08\x01\x00\x09");
    std::fs::write(&path, &log).unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).expect("a torn tail is not corruption");
        assert_eq!(link_keys(&store).await, ["a", "b", "c"]);
        assert_eq!(store.get(Table::Links, "c").await.unwrap(), Some(entry("c", &etags[2], json!({"key": "c"}))));
        let log = std::fs::read(&path).unwrap();
        assert!(!log.windows(4).any(|w| w == b"JUNK"), "the junk was not cut off");
        inserted(store.insert(Table::Links, "d", &json!({"key": "d"})).await.unwrap());
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(link_keys(&store).await, ["a", "b", "c", "d"]);
    }

    // The last record cut short, with the zeros ahead of it or without: it is lost (a crash before its
    // fsync), everything before it is not.
    for keep_zeros in [true, false] {
        let with_d = log_end(dir.path());
        let mut log = std::fs::read(&path).unwrap();
        if keep_zeros {
            log[with_d as usize - 3..with_d as usize].fill(0);
        } else {
            log.truncate(with_d as usize - 3);
        }
        std::fs::write(&path, &log).unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(link_keys(&store).await, ["a", "b", "c"]);
        assert_eq!(log_end(dir.path()), whole);
        let again = inserted(store.insert(Table::Links, "d", &json!({"again": keep_zeros})).await.unwrap());
        assert!(!etags.contains(&again));
    }
    // Only the record header left of it.
    let mut log = std::fs::read(&path).unwrap();
    log.truncate(whole as usize + 5);
    std::fs::write(&path, &log).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(link_keys(&store).await, ["a", "b", "c"]);
}

/// Every key of the links table, in order.
async fn link_keys(store: &EmbeddedStore) -> Vec<String> {
    scan_all(store, Table::Links, None, 100).await.into_iter().map(|e| e.key).collect()
}

/// A damaged record followed by intact ones is not what a crash leaves: opening refuses, naming where,
/// rather than dropping the records after it.
#[tokio::test]
async fn damage_before_the_last_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for key in ["a", "b", "c"] {
            inserted(store.insert(Table::Links, key, &json!({"key": key})).await.unwrap());
        }
    }
    let path = dir.path().join("itsmc.log");
    let whole = std::fs::read(&path).unwrap();
    // The first record starts after the 32-byte file header: its length, checksum, then its first op.
    for (at, what) in [(32 + 12 + 20, "a byte of the key"), (32 + 4, "the checksum"), (32 + 1, "the length")] {
        let mut damaged = whole.clone();
        damaged[at] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        match EmbeddedStore::open(dir.path()) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains("itsmc.log") && message.contains("byte 32"), "{what}: {message}")
            }
            Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
            Ok(_) => panic!("{what}: opened a damaged log"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "{what}: the damaged log was changed");
    }
    // The header too.
    let mut damaged = whole.clone();
    damaged[20] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    assert!(matches!(EmbeddedStore::open(dir.path()), Err(StoreError::Corrupt(m)) if m.contains("header")));
    std::fs::write(&path, &whole).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(link_keys(&store).await, ["a", "b", "c"]);
}

/// A batch in which no condition holds changes nothing, so it writes nothing.
#[tokio::test]
async fn failed_conditions_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let etag = inserted(store.insert(Table::Links, "k", &json!({"v": 1})).await.unwrap());
    // The writer keeps zeros written ahead of the last record, between batches and at its own pace: only
    // what precedes them is written data.
    let written = || {
        let mut log = std::fs::read(dir.path().join("itsmc.log")).unwrap();
        log.truncate(log.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1));
        log
    };
    let log = written();
    assert!(matches!(store.insert(Table::Links, "k", &json!({})).await.unwrap(), Insert::Conflict(_)));
    assert!(matches!(store.replace(Table::Links, "k", &json!({}), "0").await.unwrap(), Swap::Stale(Some(_))));
    assert!(matches!(store.replace(Table::Links, "absent", &json!({}), &etag).await.unwrap(), Swap::Stale(None)));
    assert!(!store.delete(Table::Links, "k", "0").await.unwrap());
    assert!(written() == log, "the log changed");
}

// ---- Table Storage only ----

mod table_storage_only {
    use std::fmt::Debug;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
    use azure_core::time::OffsetDateTime;
    use itsmc::store::TableStore;
    use url::Url;

    use super::*;

    /// A store on Azurite over tables of this test's own, deleted when the test passes.
    struct Tables {
        store: Arc<TableStore>,
        prefix: String,
    }

    impl Tables {
        async fn new() -> Tables {
            let prefix = azurite::fresh_prefix();
            Tables { store: Arc::new(azurite::open(&prefix, false).await), prefix }
        }
    }

    impl Drop for Tables {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                azurite::drop_tables_blocking(std::mem::take(&mut self.prefix), false);
            }
        }
    }

    /// A store whose endpoint accepts connections, counts them and closes them: whether an operation
    /// sent anything shows in the count.
    async fn counting_store() -> (TableStore, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                drop(socket);
            }
        });
        let endpoint = format!("http://127.0.0.1:{port}/devstoreaccount1");
        let store = TableStore::from_connection_string(
            &azurite::connection_string_for(&endpoint),
            "itsmc",
            azurite::http_client(),
        )
        .unwrap();
        (store, connections)
    }

    /// The message of a refusal made before sending anything.
    fn refused<T: Debug>(outcome: Result<T, StoreError>, what: &str) -> String {
        match outcome {
            Err(StoreError::Refused(message)) => {
                assert!(message.contains("nothing was sent"), "{what}: {message}");
                message
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }

    const SOME_ETAG: &str = "W/\"datetime'2026-01-01T00%3A00%3A00.0000000Z'\"";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forbidden_keys_are_refused_without_a_request() {
        let (store, connections) = counting_store().await;
        let long = "x".repeat(513);
        for key in ["a/b", "a\\b", "a#b", "a?b", "nul\0", "line\nbreak", "del\u{7f}", "c1\u{85}", &long] {
            let message = refused(store.get(Table::Links, key).await, key);
            assert!(message.contains("does not allow") || message.contains("513 UTF-16"), "{message}");
            refused(store.insert(Table::Links, key, &json!({})).await, key);
            refused(store.replace(Table::Links, key, &json!({}), SOME_ETAG).await, key);
            refused(store.delete(Table::Links, key, SOME_ETAG).await, key);
            refused(store.scan(Table::Links, None, Some(key), 10).await, key);
        }
        assert_eq!(connections.load(SeqCst), 0, "a refused key was sent");
        // The count does count: a valid key is sent (and fails, as nothing answers).
        assert!(matches!(store.get(Table::Links, "ok").await, Err(StoreError::Unavailable(_))));
        assert!(connections.load(SeqCst) >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_with_odd_but_allowed_characters_round_trip() {
        let tables = Tables::new().await;
        let store = &tables.store;
        let mut odd: Vec<String> = [
            "it's",
            "'",
            "''",
            "a,b",
            "(x)",
            "k=v",
            "100%",
            "50%25",
            "sp ace",
            "+plus",
            "&amp;",
            "ünï",
            "東京",
            "🔥",
            "~!@$^*[]{}|;:\"<>`",
            "",
        ]
        .map(String::from)
        .into();
        odd.push("x".repeat(512));
        let mut etags = BTreeMap::new();
        for key in &odd {
            let etag = inserted(store.insert(Table::Links, key, &json!({"key": key})).await.unwrap());
            assert_eq!(store.get(Table::Links, key).await.unwrap(), Some(entry(key, &etag, json!({"key": key}))));
            let etag = replaced(store.replace(Table::Links, key, &json!({"key": key, "v": 2}), &etag).await.unwrap());
            etags.insert(key.clone(), etag);
        }
        // In key order (none of these keys has characters whose UTF-16 order differs from `str`'s).
        odd.sort();
        let all = scan_all(&**store, Table::Links, None, 7).await;
        assert_eq!(keys(&all), odd.iter().map(String::as_str).collect::<Vec<_>>());
        for (key, etag) in &etags {
            assert!(store.delete(Table::Links, key, etag).await.unwrap(), "{key:?}");
            assert_eq!(store.get(Table::Links, key).await.unwrap(), None, "{key:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_over_the_limits_are_refused_without_a_request() {
        let (store, connections) = counting_store().await;
        let big = json!({"body": "x".repeat(2 * 1024 * 1024)});
        let message = refused(store.insert(Table::Deliveries, "big", &big).await, "2 MiB");
        assert!(message.contains("too large") && message.contains("1 MiB"), "{message}");
        refused(store.replace(Table::Deliveries, "big", &big, SOME_ETAG).await, "2 MiB");
        let wide: serde_json::Map<String, Value> = (0..300).map(|i| (format!("field{i}"), json!("v"))).collect();
        let message = refused(store.insert(Table::Deliveries, "wide", &Value::Object(wide)).await, "300 fields");
        assert!(message.contains("300 top-level string fields"), "{message}");
        assert_eq!(connections.load(SeqCst), 0, "an over-limit value was sent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_near_the_limit_fit_and_over_limit_writes_change_nothing() {
        let tables = Tables::new().await;
        let store = &tables.store;
        // 740,000 bytes of JSON, in 12 parts, much of it not ASCII or escaped: a request of about 988,000 bytes.
        let body = format!("{}{}", "é".repeat(190_000), "x'\"\\".repeat(60_000));
        let large = json!({"state": "pending", "body": body, "nested": {"list": [1, "two", {"three": 3.5}]}});
        let etag = inserted(store.insert(Table::Deliveries, "large", &large).await.unwrap());
        assert_eq!(store.get(Table::Deliveries, "large").await.unwrap(), Some(entry("large", &etag, large.clone())));
        let pending = Some(Filter { field: "state", value: "pending" });
        assert_eq!(keys(&scan_all(&**store, Table::Deliveries, pending, 10).await), ["large"]);
        let long_body = Some(Filter { field: "body", value: large["body"].as_str().unwrap() });
        assert_eq!(keys(&scan_all(&**store, Table::Deliveries, long_body, 10).await), ["large"]);

        let too_large = json!({"body": "x".repeat(800_000)});
        refused(store.replace(Table::Deliveries, "large", &too_large, &etag).await, "replace");
        refused(store.insert(Table::Deliveries, "too-large", &too_large).await, "insert");
        assert_eq!(store.get(Table::Deliveries, "large").await.unwrap(), Some(entry("large", &etag, large)));
        assert_eq!(store.get(Table::Deliveries, "too-large").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filters_match_quoted_long_and_odd_values_exactly() {
        let tables = Tables::new().await;
        let store = &tables.store;
        let long = format!("{}'{}", "x".repeat(300), "y");
        let values = [
            "it's",
            "'",
            "''",
            "it''s",
            "'quoted'",
            "a'b'c",
            "sha256:0000",
            "line\nbreak",
            &long,
            "東京's",
            "",
            " and RowKey gt '",
        ];
        for (i, value) in values.iter().enumerate() {
            let doc = json!({"state": value, "odd-name": value, "é": value, "i": i});
            inserted(store.insert(Table::Deliveries, &format!("k{i:02}"), &doc).await.unwrap());
        }
        // Near misses: a prefix, a nested field, a number, the same text in another field.
        inserted(store.insert(Table::Deliveries, "near1", &json!({"state": "it"})).await.unwrap());
        inserted(store.insert(Table::Deliveries, "near2", &json!({"nested": {"state": "it's"}})).await.unwrap());
        inserted(store.insert(Table::Deliveries, "near3", &json!({"other": "it's", "state": 1})).await.unwrap());
        for (i, value) in values.iter().enumerate() {
            for field in ["state", "odd-name", "é"] {
                let found = scan_all(&**store, Table::Deliveries, Some(Filter { field, value }), 10).await;
                assert_eq!(keys(&found), [format!("k{i:02}")], "{field} = {value:?}");
            }
        }
        let nobody = Some(Filter { field: "missing", value: "it's" });
        assert_eq!(scan_all(&**store, Table::Deliveries, nobody, 10).await, vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_follow_the_services_pages() {
        // Azurite answers at most 1,000 entities a request.
        const N: usize = 1234;
        let tables = Tables::new().await;
        let store = &tables.store;
        let mut writers = JoinSet::new();
        for writer in 0..16 {
            let store = store.clone();
            writers.spawn(async move {
                for i in (writer..N).step_by(16) {
                    // An odd multiplier permutes the keys, so insertion order is not key order.
                    let key = format!("{:04x}", i * 7919 % 65536);
                    let state = if i % 2 == 0 { "pending" } else { "done" };
                    inserted(store.insert(Table::Links, &key, &json!({"state": state, "i": i})).await.unwrap());
                }
            });
        }
        writers.join_all().await;
        let mut expected: Vec<String> = (0..N).map(|i| format!("{:04x}", i * 7919 % 65536)).collect();
        expected.sort();

        // One page of 1,100 takes two of the service's.
        let first = store.scan(Table::Links, None, None, 1100).await.unwrap();
        assert_eq!(keys(&first.entries), expected[..1100].iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(first.continuation.as_deref(), Some(expected[1099].as_str()));
        let rest = store.scan(Table::Links, None, first.continuation.as_deref(), 1100).await.unwrap();
        assert_eq!(keys(&rest.entries), expected[1100..].iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(rest.continuation, None);
        // Exactly what there is: no continuation, so no empty page after it.
        let whole = store.scan(Table::Links, None, None, N).await.unwrap();
        assert_eq!((whole.entries.len(), whole.continuation), (N, None));
        assert_eq!(scan_all(&**store, Table::Links, None, 1000).await, whole.entries);

        let pending = Some(Filter { field: "state", value: "pending" });
        let found = scan_all(&**store, Table::Links, pending, 250).await;
        assert_eq!(found.len(), N / 2);
        assert!(found.windows(2).all(|w| w[0].key < w[1].key), "not in key order");
        assert!(found.iter().all(|e| e.value["i"].as_u64().unwrap() % 2 == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_inserts_of_one_key_make_one_winner() {
        const WRITERS: usize = 64;
        let tables = Tables::new().await;
        for round in 0..10 {
            let key = format!("race-{round}");
            let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
            let mut tasks = JoinSet::new();
            for writer in 0..WRITERS {
                let (store, barrier, key) = (tables.store.clone(), barrier.clone(), key.clone());
                tasks.spawn(async move {
                    barrier.wait().await;
                    (writer, store.insert(Table::Links, &key, &json!({"writer": writer})).await.unwrap())
                });
            }
            let outcomes = tasks.join_all().await;
            let winners: Vec<_> = outcomes
                .iter()
                .filter_map(|(writer, outcome)| match outcome {
                    Insert::Inserted { etag } => Some((*writer, etag.clone())),
                    Insert::Conflict(_) => None,
                })
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let (writer, etag) = &winners[0];
            let stored = tables.store.get(Table::Links, &key).await.unwrap().unwrap();
            assert_eq!(stored, entry(&key, etag, json!({"writer": writer})));
            for (_, outcome) in &outcomes {
                if let Insert::Conflict(current) = outcome {
                    assert_eq!(current, &stored, "round {round}");
                }
            }
        }
    }

    #[tokio::test]
    async fn describe_and_debug_never_show_the_key() {
        let tables = Tables::new().await;
        let endpoint = azurite::table_endpoint();
        let description = tables.store.describe();
        assert_eq!(
            description,
            format!("table storage ({}, prefix {})", endpoint.trim_end_matches('/'), tables.prefix)
        );
        let debug = format!("{:?}", tables.store);
        assert!(!debug.contains(azurite::DEV_KEY) && !debug.contains("Eby8vdM02x"), "{debug}");
        assert!(debug.contains(&tables.prefix), "{debug}");
    }

    // -- against a stand-in for the service, for answers Azurite does not give --

    /// What the stand-in answers for a request: status, headers and body.
    type Answer = (u16, Vec<(&'static str, String)>, String);

    /// Requests the stand-in saw: method, path and Authorization header.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    /// A stand-in for the Table service on loopback, answering every request with `answer`.
    async fn stand_in(answer: fn(&str, &str) -> Answer) -> (Url, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let handler = move |method: http::Method, uri: http::Uri, headers: http::HeaderMap| {
            let log = log.clone();
            async move {
                let authorization =
                    headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                assert!(headers.get("x-ms-version").is_some() && headers.get("x-ms-date").is_some());
                log.lock().unwrap().push((method.to_string(), uri.path().to_owned(), authorization));
                let (status, extra, body) = answer(method.as_str(), uri.path());
                let mut response = http::Response::builder().status(status);
                for (name, value) in extra {
                    response = response.header(name, value);
                }
                response.body(axum::body::Body::from(body)).unwrap()
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/devstoreaccount1", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (url, seen)
    }

    fn error_answer(status: u16, code: &str, message: &str) -> Answer {
        let body = json!({"odata.error": {"code": code, "message": {"lang": "en-US", "value": format!("{message}\nRequestId:0\nTime:now")}}});
        (
            status,
            vec![("x-ms-error-code", code.to_owned()), ("content-type", "application/json".into())],
            body.to_string(),
        )
    }

    /// Tables exist, no entity does.
    fn empty_service(method: &str, path: &str) -> Answer {
        match (method, path.ends_with("/Tables")) {
            ("POST", true) => (204, vec![], String::new()),
            _ => error_answer(404, "ResourceNotFound", "The specified resource does not exist."),
        }
    }

    #[derive(Debug)]
    struct FakeCredential {
        calls: AtomicUsize,
        lifetime: azure_core::time::Duration,
        fail: AtomicBool,
        scopes: Mutex<Vec<String>>,
    }

    impl FakeCredential {
        fn new(lifetime: azure_core::time::Duration) -> Arc<FakeCredential> {
            Arc::new(FakeCredential {
                calls: AtomicUsize::new(0),
                lifetime,
                fail: AtomicBool::new(false),
                scopes: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl TokenCredential for FakeCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
            if self.fail.load(SeqCst) {
                return Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    "the identity endpoint refused",
                ));
            }
            let n = self.calls.fetch_add(1, SeqCst) + 1;
            Ok(AccessToken::new(format!("token-{n}"), OffsetDateTime::now_utc() + self.lifetime))
        }
    }

    #[tokio::test]
    async fn entra_tokens_are_cached_and_renewed_before_expiry() {
        let (url, seen) = stand_in(empty_service).await;
        let credential = FakeCredential::new(azure_core::time::Duration::hours(1));
        let store =
            TableStore::with_credential(url.clone(), credential.clone(), "itsmc", azurite::http_client()).unwrap();
        store.ensure_tables().await.unwrap();
        for key in ["a", "b", "c"] {
            assert_eq!(store.get(Table::Links, key).await.unwrap(), None);
        }
        assert_eq!(credential.calls.load(SeqCst), 1, "the token was not reused");
        assert!(credential.scopes.lock().unwrap().iter().all(|s| s == "https://storage.azure.com/.default"));
        let requests = seen.lock().unwrap().clone();
        // One create per table, then the three reads.
        let tables = Table::ALL.len();
        assert_eq!(requests.len(), tables + 3);
        assert!(requests.iter().all(|(_, _, auth)| auth == "Bearer token-1"), "{requests:?}");
        assert_eq!(requests[0].1, "/devstoreaccount1/Tables");
        assert_eq!(requests[tables].1, "/devstoreaccount1/itsmclinks(PartitionKey='a',RowKey='a')");

        // Tokens that expire within the renewal margin are asked for again at each request.
        let short = FakeCredential::new(azure_core::time::Duration::minutes(2));
        let store = TableStore::with_credential(url.clone(), short.clone(), "itsmc", azurite::http_client()).unwrap();
        for key in ["a", "b", "c"] {
            store.get(Table::Links, key).await.unwrap();
        }
        assert_eq!(short.calls.load(SeqCst), 3);
        assert_eq!(seen.lock().unwrap().last().unwrap().2, "Bearer token-3");

        // No token: nothing is sent, and the error says what to check.
        let before = seen.lock().unwrap().len();
        short.fail.store(true, SeqCst);
        match store.get(Table::Links, "a").await {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("identity endpoint refused"), "{message}");
                assert!(message.contains("Storage Table Data Contributor"), "{message}");
                assert!(!message.contains("token-"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), before);

        // A bearer token never travels in clear text beyond loopback.
        let plain = Url::parse("http://contoso.table.core.windows.net").unwrap();
        let refused = TableStore::with_credential(plain, credential, "itsmc", azurite::http_client()).unwrap_err();
        assert!(refused.to_string().contains("https://"), "{refused}");
    }

    #[tokio::test]
    async fn service_failures_say_what_to_check() {
        fn answer(method: &str, path: &str) -> Answer {
            let entity = |body: Value| (200, vec![("etag", SOME_ETAG.to_owned())], body.to_string());
            match path.split('/').nth(2).unwrap_or_default() {
                p if p.starts_with("busy") => error_answer(503, "ServerBusy", "The server is busy."),
                p if p.starts_with("throttled") => error_answer(429, "TooManyRequests", "Slow down."),
                p if p.starts_with("denied") => {
                    (403, vec![("x-ms-error-code", "AuthenticationFailed".into())], String::new())
                }
                p if p.starts_with("missing") => {
                    error_answer(404, "TableNotFound", "The table specified does not exist.")
                }
                p if p.starts_with("garbage") && method == "GET" => (200, vec![], "<html>captive portal</html>".into()),
                p if p.starts_with("alien") && method == "GET" => {
                    entity(json!({"PartitionKey": "k", "RowKey": "k", "Name": "x"}))
                }
                p if p.starts_with("newer") && method == "GET" => {
                    entity(json!({"PartitionKey": "k", "RowKey": "k", "Layout": 2, "Parts": 1, "J0": "e30="}))
                }
                _ => (204, vec![("etag", SOME_ETAG.to_owned())], String::new()),
            }
        }
        let (url, _) = stand_in(answer).await;
        let connection_string = azurite::connection_string_for(url.as_str());
        let open = |prefix: &str| {
            TableStore::from_connection_string(&connection_string, prefix, azurite::http_client()).unwrap()
        };
        let unavailable = |outcome: Result<Option<Entry>, StoreError>| match outcome {
            Err(StoreError::Unavailable(message)) => {
                assert!(!message.contains(azurite::DEV_KEY), "{message}");
                message
            }
            other => panic!("expected Unavailable, got {other:?}"),
        };
        let message = unavailable(open("busy").get(Table::Links, "k").await);
        assert!(message.contains("503") && message.contains("ServerBusy") && message.contains("busy;"), "{message}");
        let message = unavailable(open("throttled").get(Table::Links, "k").await);
        assert!(message.contains("429") && message.contains("throttling"), "{message}");
        let message = unavailable(open("denied").get(Table::Links, "k").await);
        assert!(message.contains("403") && message.contains("AccountKey"), "{message}");
        let message = unavailable(open("missing").get(Table::Links, "k").await);
        assert!(message.contains("TableNotFound") && message.contains("table prefix"), "{message}");
        // A missing table is not a missing entity, for writes either.
        assert!(matches!(
            open("missing").replace(Table::Links, "k", &json!({}), SOME_ETAG).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(open("missing").delete(Table::Links, "k", SOME_ETAG).await, Err(StoreError::Unavailable(_))));

        assert!(matches!(open("garbage").get(Table::Links, "k").await, Err(StoreError::Corrupt(_))));
        match open("alien").get(Table::Links, "k").await {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("not written by itsmc"), "{message}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        match open("newer").get(Table::Links, "k").await {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("layout 2"), "{message}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }

        // Nothing listening at all.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let store = TableStore::from_connection_string(
            &azurite::connection_string_for(&format!("http://127.0.0.1:{closed}/devstoreaccount1")),
            "itsmc",
            azurite::http_client(),
        )
        .unwrap();
        let message = unavailable(store.get(Table::Links, "k").await);
        assert!(message.contains("cannot connect") && message.contains("check that the endpoint"), "{message}");
        let message = unavailable(store.ensure_tables().await.map(|()| None));
        assert!(message.contains("creating table itsmclinks"), "{message}");
    }
}

// ---------------------------------------------------------------------------------------------
// What the alert path asks of the store
// ---------------------------------------------------------------------------------------------

/// A store that records every call before passing it on. Each call is one Table Storage request, except an
/// `insert` that meets an existing entity, which reads it back (two).
struct Counting {
    inner: Arc<dyn Store>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl Counting {
    fn log(&self, op: &str, table: Table) {
        self.calls.lock().unwrap().push(format!("{op} {}", table.name()));
    }
    fn take(&self) -> Vec<String> {
        let mut calls = std::mem::take(&mut *self.calls.lock().unwrap());
        calls.sort();
        calls
    }
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError> {
        self.log("get", table);
        self.inner.get(table, key).await
    }
    async fn insert(&self, table: Table, key: &str, value: &Value) -> Result<Insert, StoreError> {
        self.log("insert", table);
        self.inner.insert(table, key, value).await
    }
    async fn claim(&self, table: Table, key: &str, value: &Value) -> Result<Option<String>, StoreError> {
        self.log("claim", table);
        self.inner.claim(table, key, value).await
    }
    async fn replace(&self, table: Table, key: &str, value: &Value, if_match: &str) -> Result<Swap, StoreError> {
        self.log("replace", table);
        self.inner.replace(table, key, value, if_match).await
    }
    async fn delete(&self, table: Table, key: &str, if_match: &str) -> Result<bool, StoreError> {
        self.log("delete", table);
        self.inner.delete(table, key, if_match).await
    }
    async fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.log("scan", table);
        self.inner.scan(table, filter, continuation, limit).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The store requests of the alert path, as BENCHMARKS.md counts them: a new alert claims its delivery
/// and link blind, and records both after the ITSM call, reading nothing; a duplicate at the instance that
/// ran the delivery costs nothing; one at another instance is refused by the claim and read back.
#[tokio::test]
async fn the_alert_path_makes_the_store_requests_it_promises() {
    let dir = tempfile::tempdir().unwrap();
    let shared: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let instance = || {
        let counting = Arc::new(Counting { inner: shared.clone(), calls: Default::default() });
        let config = itsmc::config::Config::from_lookup(|_| None).expect("the embedded defaults");
        let http = itsmc::http::build_client(&config.http).expect("client");
        let intake = Arc::new(itsmc::intake::Intake::new(Arc::new(config), counting.clone(), http, None));
        (intake, counting)
    };
    let (first, first_calls) = instance();
    let (second, second_calls) = instance();
    let options = itsmc::intake::Options::default();
    let body = json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {"essentials": {
            "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/budget-1",
            "alertRule": "cpu-high", "severity": "Sev2", "monitorCondition": "Fired",
            "alertTargetIDs": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"]
        }, "alertContext": {}}
    })
    .to_string();

    let created = first.accept(body.as_bytes(), &options).await.expect("created");
    assert_eq!(created.action, itsmc::intake::Action::Created);
    assert_eq!(
        first_calls.take(),
        ["claim links", "insert deliveries", "replace deliveries", "replace links"],
        "a new alert: two blind claims, then two conditional replaces"
    );

    let again = first.accept(body.as_bytes(), &options).await.expect("duplicate");
    assert_eq!(again.action, itsmc::intake::Action::Duplicate);
    assert_eq!(again.work_items, created.work_items, "the duplicate names the work item");
    assert!(first_calls.take().is_empty(), "a duplicate at the instance that ran it asks the store nothing");

    let elsewhere = second.accept(body.as_bytes(), &options).await.expect("duplicate");
    assert_eq!((elsewhere.action, &elsewhere.work_items), (itsmc::intake::Action::Duplicate, &created.work_items));
    assert_eq!(
        second_calls.take(),
        ["claim links", "insert deliveries"],
        "a duplicate at another instance: the refused claims (and Table Storage's read of the delivery)"
    );
}
