//! Embedded store throughput and latency (`cargo bench --bench store`).
//!
//! - `inserts/64x1000`: 64 tasks each making 1,000 conditional inserts of fresh keys, on a 2-worker
//!   runtime, against `inserts/1x200`, one caller at a time: what group commit buys over one fsync per
//!   write.
//! - `alerts/64x200`: the alert path's write pattern, per alert a link claim, a delivery claim and a
//!   compare-and-swap on the delivery; the throughput is in alerts.
//! - `get/inline`: one get of an existing key, as `Store::get` runs it (on the calling task), and
//!   `get/spawn_blocking_hop`: what moving it to the blocking pool would add, the reason it is inline.
//!
//! The database is in a temporary directory, so the figures include the fsync of that disk.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use itsmc::store::{EmbeddedStore, Insert, Store, Swap, Table};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

fn runtime() -> Runtime {
    // The deployment target: a 2-core machine.
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn link(i: u64) -> serde_json::Value {
    json!({
        "state": "open",
        "work_item": format!("INC{i:07}"),
        "sys_id": format!("{i:032x}"),
        "updated": "2025-01-01T00:00:00Z",
    })
}

/// Run `tasks` concurrent tasks of `per_task` calls to `work(store, key_number)` and time them.
fn concurrent<F, Fut>(
    rt: &Runtime,
    store: &Arc<dyn Store>,
    next: &AtomicU64,
    tasks: u64,
    per_task: u64,
    work: F,
) -> Duration
where
    F: Fn(Arc<dyn Store>, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let base = next.fetch_add(tasks * per_task, Ordering::Relaxed);
    rt.block_on(async {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for task in 0..tasks {
            let store = store.clone();
            let work = work.clone();
            set.spawn(async move {
                for i in 0..per_task {
                    work(store.clone(), base + task * per_task + i).await;
                }
            });
        }
        set.join_all().await;
        start.elapsed()
    })
}

fn writes(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("inserts");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(64 * 1000));
    group.bench_function("64x1000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    concurrent(&rt, &store, &next, 64, 1000, |store, n| async move {
                        let key = format!("{n:016x}");
                        let outcome = store.insert(Table::Links, &key, &link(n)).await.unwrap();
                        assert!(matches!(outcome, Insert::Inserted { .. }));
                    })
                })
                .sum()
        })
    });
    // One caller at a time: every write waits for its own commit, as without group commit.
    group.throughput(Throughput::Elements(200));
    group.bench_function("1x200", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    concurrent(&rt, &store, &next, 1, 200, |store, n| async move {
                        let key = format!("{n:016x}");
                        store.insert(Table::Links, &key, &link(n)).await.unwrap();
                    })
                })
                .sum()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("alerts");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(64 * 200));
    group.bench_function("64x200", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    concurrent(&rt, &store, &next, 64, 200, |store, n| async move {
                        let key = format!("a{n:016x}");
                        store.insert(Table::Links, &key, &link(n)).await.unwrap();
                        let pending = json!({"state": "pending", "op": "create", "attempts": 0});
                        let Insert::Inserted { etag } = store.insert(Table::Deliveries, &key, &pending).await.unwrap()
                        else {
                            panic!("fresh key conflicted")
                        };
                        let leased = json!({"state": "leased", "op": "create", "attempts": 1});
                        let swapped = store.replace(Table::Deliveries, &key, &leased, &etag).await.unwrap();
                        assert!(matches!(swapped, Swap::Replaced { .. }));
                    })
                })
                .sum()
        })
    });
    group.finish();
}

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let next = AtomicU64::new(0);
    // A table of realistic size, so a get is measured against a realistic index.
    concurrent(&rt, &store, &next, 64, 1000, |store, n| async move {
        store.insert(Table::Links, &format!("{n:016x}"), &link(n)).await.unwrap();
    });

    let mut group = c.benchmark_group("get");
    group.bench_function("inline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let key = format!("{:016x}", i * 7919 % 64_000);
                    black_box(store.get(Table::Links, &key).await.unwrap().unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("spawn_blocking_hop", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(tokio::task::spawn_blocking(move || black_box(i)).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.throughput(Throughput::Elements(64 * 1000));
    group.bench_function("64x1000_concurrent", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    concurrent(&rt, &store, &AtomicU64::new(0), 64, 1000, |store, n| async move {
                        black_box(store.get(Table::Links, &format!("{n:016x}")).await.unwrap().unwrap());
                    })
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, writes, reads);
criterion_main!(benches);
