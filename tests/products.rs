//! The alert path and the sync, table-driven over every ITSM product itsmc connects to: each case runs once
//! per product emulator ([`support::itsm::EmulatedItsm`]), through itsmc's HTTP routes and its production sync
//! into the Logs Ingestion emulator. What differs between products is in their own test files.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use support::harness::{Itsmc, eventually, metric_alert};
use support::identity::{EndpointCredential, IdentityConfig, IdentityEmulator};
use support::itsm::{EmulatedItsm, start_itsmc};
use support::logs_ingestion::{LogsIngestionEmulator, SERVICE_DESK_STREAM};
use support::scsm::{ScsmConfig, ScsmEmulator};
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};
use support::tls::TestCa;

/// One emulator of each product.
fn products() -> Vec<Box<dyn EmulatedItsm>> {
    vec![
        Box::new(ServiceNowEmulator::start(EmulatorConfig::default())),
        Box::new(ScsmEmulator::start(ScsmConfig::default())),
        Box::new(support::cherwell::CherwellEmulator::start(support::cherwell::EmulatorConfig::default())),
        Box::new(support::provance::ProvanceEmulator::start()),
    ]
}

async fn itsmc_for(product: &dyn EmulatedItsm, extra: &[(&str, &str)]) -> Itsmc {
    start_itsmc(product, None, extra).await
}

#[tokio::test]
async fn fire_refire_resolve_make_one_work_item_per_problem() {
    for product in products() {
        let name = product.product();
        let itsmc = itsmc_for(product.as_ref(), &[]).await;
        let (status, created) =
            itsmc.alert("", &metric_alert("p-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4")).await;
        assert_eq!((status, created["action"].as_str()), (200, Some("created")), "{name}: {created}");
        let items = product.items("Incident");
        assert_eq!(items.len(), 1, "{name}");
        assert!(items[0].open && !items[0].correlation.is_empty(), "{name}: {items:?}");
        assert_eq!(created["workItems"][0]["id"], items[0].id.as_str(), "{name}: the answer names the work item");

        let (_, again) = itsmc.alert("", &metric_alert("p-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4")).await;
        assert_eq!(again["action"], "duplicate", "{name}: the same delivery twice: {again}");
        let refired = metric_alert("p-1", "Fired", "2026-11-25T12:05:00.000Z", "Sev4");
        let (_, updated) = itsmc.alert("", &refired).await;
        assert_eq!(updated["action"], "updated", "{name}: {updated}");
        let items = product.items("Incident");
        assert_eq!(items.len(), 1, "{name}: a re-fire makes no second work item");
        assert!(!items[0].notes.is_empty(), "{name}: the re-fire is noted: {items:?}");

        let (_, resolved) = itsmc.alert("", &metric_alert("p-1", "Resolved", "2026-11-25T12:00:00.000Z", "Sev4")).await;
        assert_eq!(resolved["action"], "resolved", "{name}: {resolved}");
        let items = product.items("Incident");
        assert_eq!(items.len(), 1, "{name}: a resolve never makes a second work item");
        assert!(!items[0].open, "{name}: resolved: {items:?}");
    }
}

#[tokio::test]
async fn a_refire_after_a_person_closed_it_opens_a_new_one() {
    for product in products() {
        let name = product.product();
        let itsmc = itsmc_for(product.as_ref(), &[]).await;
        itsmc.alert("", &metric_alert("p-2", "Fired", "2026-11-25T12:00:00.000Z", "Sev4")).await;
        let first = product.items("Incident")[0].id.clone();
        product.close(&first);
        let refired = metric_alert("p-2", "Fired", "2026-11-25T13:00:00.000Z", "Sev4");
        let (_, answer) = itsmc.alert("", &refired).await;
        assert_eq!(answer["action"], "created", "{name}: {answer}");
        let items = product.items("Incident");
        assert_eq!(items.len(), 2, "{name}");
        assert!(!items[0].open && items[1].open, "{name}: {items:?}");
        assert_eq!(items[0].correlation, items[1].correlation, "{name}: the same problem");
    }
}

#[tokio::test]
async fn the_product_down_queues_then_creates_once_when_back() {
    for product in products() {
        let name = product.product();
        let itsmc = itsmc_for(product.as_ref(), &[("ITSMC_ALERT_BUDGET_MS", "500")]).await;
        product.set_down(true);
        let body = metric_alert("p-3", "Fired", "2026-11-25T12:00:00.000Z", "Sev4");
        let (status, answer) = itsmc.alert("", &body).await;
        assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{name}: {answer}");
        let (_, again) = itsmc.alert("", &body).await;
        assert_eq!(again["action"], "duplicate", "{name}: the action group's retry while it waits");
        product.set_down(false);
        let delivered = eventually(15, || product.items("Incident").len() == 1).await;
        assert!(delivered, "{name}: the outbox delivered it");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(product.items("Incident").len(), 1, "{name}: exactly once");
    }
}

#[tokio::test]
async fn a_seeded_backlog_reaches_logs_ingestion_exactly_once() {
    for product in products() {
        let name = product.product();
        let now = Utc::now();
        product.seed("Incident", 120, now - chrono::Duration::days(10), now - chrono::Duration::hours(1));
        product.seed("ChangeRequest", 30, now - chrono::Duration::days(10), now - chrono::Duration::hours(1));
        let itsmc = itsmc_for(product.as_ref(), &[("ITSMC_SYNC_PAGE_SIZE", "25")]).await;
        let identity = IdentityEmulator::start(IdentityConfig::default());
        let ca = TestCa::new();
        let ingestion = LogsIngestionEmulator::start(&ca, identity.tokens());
        let credential = Arc::new(EndpointCredential { endpoint: identity.endpoint() });
        let http = itsmc::http::build_client(&ca.http_settings()).unwrap();
        let syncer = ingestion.syncer(&itsmc.intake, credential, http);

        let report = syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.expect("the sync runs");
        for run in &report.runs {
            assert_eq!(run.error, None, "{name}: {run}");
        }
        let rows = ingestion.rows(SERVICE_DESK_STREAM);
        let mut ids: Vec<(String, String)> = rows
            .iter()
            .map(|row| {
                let text = |c: &str| row.get(c).and_then(Value::as_str).unwrap_or_default().to_string();
                (text("ServiceDeskWorkItemType_s"), text("ServiceDeskId_s"))
            })
            .collect();
        ids.sort();
        let sent = ids.len();
        ids.dedup();
        assert_eq!(sent, ids.len(), "{name}: a record sent twice");
        assert_eq!(ids.iter().filter(|(kind, _)| kind == "Incident").count(), 120, "{name}");
        assert_eq!(ids.iter().filter(|(kind, _)| kind == "ChangeRequest").count(), 30, "{name}");

        // A second run finds nothing new to send.
        syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.expect("the sync runs again");
        assert_eq!(ingestion.rows(SERVICE_DESK_STREAM).len(), sent, "{name}: nothing sent twice");
    }
}
