//! The dashboard's server time with a full store (`cargo bench --bench dashboard`): 100,000 links with work
//! items (`DASHBOARD_LINKS`) and 1,000,000 synced records kept locally (`DASHBOARD_RECORDS`), written through the
//! same paths itsmc writes them (the link JSON the intake stores, `LocalRows::send` batches of 1,000 rows).
//!
//! - `dashboard/page`: `GET /api/dashboard` through the router, as a browser's view or refresh gets it: from the
//!   last snapshot (the target, <= 50 ms);
//! - `dashboard/render`: the HTML alone, from a snapshot;
//! - `dashboard/snapshot`: reading the store for a new snapshot (what `?fresh=1` and the first view wait for,
//!   and what a view of an older snapshot starts in the background).
//!
//! Under `cargo test` the store holds 1,000 links and 10,000 records, so the harness itself stays working.

#[path = "support/app.rs"]
mod app;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use itsmc::store::{Store, Table};
use serde_json::json;
use tower::ServiceExt;

fn count(name: &str, full: u64, smoke: u64) -> u64 {
    if !std::env::args().any(|a| a == "--bench") {
        return smoke;
    }
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(full)
}

/// A link as the intake stores it: spread over 20 days, 2,000 computers and 300 rules.
fn link(i: u64, now_ms: i64) -> serde_json::Value {
    let kind = ["Incident", "Incident", "Event", "Alert"][(i % 4) as usize];
    json!({
        "state": if i.is_multiple_of(3) { "resolved" } else { "open" },
        "owner": "bench",
        "leaseUntil": 0,
        "workItem": { "type": kind, "id": format!("{i:032x}"), "number": format!("INC{i:07}"),
                      "url": format!("https://contoso.service-now.com/nav_to.do?uri=incident.do?sys_id={i:032x}") },
        "fireCount": 1 + i % 5,
        "lastDelivery": format!("{i:064x}"),
        "connection": "default",
        "rule": format!("rule <{}> \"cpu\"", i % 300),
        "configurationItem": format!("vm-{:04}", i % 2000),
        "createdAt": now_ms - (i % 20) as i64 * 86_400_000,
        "updatedAt": now_ms,
    })
}

/// 1,000 `ServiceDesk_CL` rows from `first`, with the columns the summary counts and a few more.
fn rows(first: u64) -> itsmc::ingest::Batch {
    let states = ["New", "In Progress", "On Hold", "Resolved", "Closed", "Canceled"];
    let rows: Vec<serde_json::Value> = (first..first + 1000)
        .map(|i| {
            let change = i.is_multiple_of(5);
            json!({
                "TimeGenerated": "2026-11-25T00:00:00Z",
                "ServiceDeskConnectionName_s": "default",
                "ServiceDeskWorkItemType_s": if change { "ChangeRequest" } else { "Incident" },
                "ServiceDeskId_s": format!("{}{i:07}", if change { "CHG" } else { "INC" }),
                "IncidentState_s": if change { "" } else { states[(i % 6) as usize] },
                "CRState_s": if change { states[(i % 3) as usize] } else { "" },
                "Priority_s": format!("{} - {}", 1 + i % 5, ["Critical", "High", "Moderate", "Low", "Planning"][(i % 5) as usize]),
                "Title_s": format!("Disk full on web{:02}", i % 40),
                "LastModifiedDate_t": "2026-11-25T00:00:00Z",
            })
        })
        .collect();
    itsmc::ingest::Batch {
        schema: itsmc::sync::schema::service_desk(),
        json: serde_json::to_string(&rows).unwrap(),
        rows: rows.len(),
    }
}

fn dashboard(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, _dir) = app::embedded(&runtime);
    let (links, records) = (count("DASHBOARD_LINKS", 100_000, 1_000), count("DASHBOARD_RECORDS", 1_000_000, 10_000));

    let seeding = Instant::now();
    runtime.block_on(async {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut writes = tokio::task::JoinSet::new();
        for task in 0..64 {
            let store: Arc<dyn Store> = Arc::clone(&app.intake.store);
            writes.spawn(async move {
                for i in (task..links).step_by(64) {
                    store.insert(Table::Links, &format!("{i:032x}"), &link(i, now_ms)).await.unwrap();
                }
            });
        }
        while writes.join_next().await.is_some() {}
        let local = itsmc::ingest::local::LocalRows::new(Arc::clone(&app.intake.store));
        for first in (0..records).step_by(1000) {
            local.send(&rows(first)).await.unwrap();
        }
    });
    println!("seeded {links} links and {records} synced records in {:.1} s", seeding.elapsed().as_secs_f64());

    let router = app.router();
    let get = |path: &'static str| {
        let router = router.clone();
        async move {
            let response = router.oneshot(http::Request::get(path).body(axum::body::Body::empty()).unwrap()).await;
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()
        }
    };
    // The first view reads the store; the page must show what was seeded.
    let first = runtime.block_on(get("/api/dashboard"));
    let page = String::from_utf8_lossy(&first);
    assert!(page.contains(&format!("data-value=\"{links}\"")), "the page counts every work item");
    assert!(page.contains(&format!("data-value=\"{}\"", records * 4 / 5)), "and every synced incident");

    let mut group = c.benchmark_group("dashboard");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.bench_function("page", |b| b.to_async(&runtime).iter(|| get("/api/dashboard")));
    let shared = itsmc::server::Shared {
        intake: Arc::clone(&app.intake),
        syncer: Arc::clone(&app.syncer),
        dashboard: Default::default(),
    };
    let snapshot = runtime.block_on(itsmc::dashboard::snapshot::build(&app.intake, &app.syncer)).unwrap();
    group.bench_function("render", |b| b.iter(|| itsmc::dashboard::render(&snapshot, &shared)));
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("snapshot", |b| {
        b.to_async(&runtime).iter(|| itsmc::dashboard::snapshot::build(&app.intake, &app.syncer))
    });
    group.finish();
}

criterion_group!(benches, dashboard);
criterion_main!(benches);
