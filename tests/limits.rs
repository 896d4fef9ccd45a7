//! A connection's limits as a user sees them: itsmc stays under a rate it is told, stops the whole connection
//! when the tool answers 429, answers a webhook at once (202) rather than queue it behind a busy connection,
//! and looks keys up together when many wait. Every alert still becomes one work item.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::harness::{Itsmc, eventually, metric_alert};
use support::servicenow::{EmulatorConfig, RequestLog, ServiceNowEmulator};

async fn itsmc(sn: &ServiceNowEmulator, extra: &[(&str, &str)]) -> Itsmc {
    let url = sn.url();
    let mut settings = vec![
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", url.as_str()),
        ("ITSMC_USERNAME", support::servicenow::DEFAULT_USERNAME),
        ("ITSMC_PASSWORD", support::servicenow::DEFAULT_PASSWORD),
    ];
    settings.extend_from_slice(extra);
    Itsmc::start(&settings).await
}

fn alert(i: usize) -> String {
    metric_alert(&format!("limits-{i}"), "Fired", "2026-11-25T12:00:00Z", "Sev3")
}

/// Posts `n` alerts at once and returns the statuses answered.
async fn post_all(itsmc: &Itsmc, n: usize) -> Vec<u16> {
    let posts = (0..n).map(|i| async move { itsmc.alert("", &alert(i)).await.0 });
    futures_util::future::join_all(posts).await
}

/// Every correlation key has one incident, and there are `n` of them.
fn one_incident_each(sn: &ServiceNowEmulator, n: usize) -> bool {
    let incidents = sn.records("incident");
    let keys: HashSet<String> =
        incidents.iter().map(|r| r["correlation_id"].as_str().unwrap_or_default().to_string()).collect();
    incidents.len() == n && keys.len() == n
}

fn lookups(requests: &[RequestLog]) -> usize {
    requests.iter().filter(|r| r.method == "GET" && r.query.contains("correlation_id")).count()
}

#[tokio::test]
async fn told_the_instances_rate_itsmc_stays_under_it_and_looks_keys_up_together() {
    let sn = ServiceNowEmulator::start(EmulatorConfig {
        latency: Duration::from_millis(20),
        rate_limit: Some(20),
        ..EmulatorConfig::default()
    });
    let itsmc = itsmc(&sn, &[("ITSMC_MAX_REQUESTS_PER_SECOND", "15")]).await;
    let statuses = post_all(&itsmc, 60).await;
    assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "every webhook is taken: {statuses:?}");
    assert!(eventually(60, || one_incident_each(&sn, 60)).await, "60 incidents, one per alert");
    let requests = sn.requests();
    let refused = requests.iter().filter(|r| r.status == 429).count();
    assert_eq!(refused, 0, "15 requests a second never reach an instance's limit of 20");
    // Without batching, each of the 60 creates would have had its own lookup.
    let lookups = lookups(&requests);
    assert!(lookups < 30, "{lookups} lookups for 60 new incidents: the outbox's lookups go together");
}

#[tokio::test]
async fn a_429_pauses_the_whole_connection_and_the_webhook_is_answered_202() {
    let sn = ServiceNowEmulator::start(EmulatorConfig::default());
    let itsmc = itsmc(&sn, &[]).await;
    sn.fail_next(1, 429, Some(3));
    let (status, answer) = itsmc.alert("", &alert(1)).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    // The instance asked for 3 s of quiet: the next alert is queued without a request being sent.
    let (status, answer) = itsmc.alert("", &alert(2)).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    assert_eq!(sn.requests().len(), 1, "only the request that got the 429 was sent: {:?}", sn.requests());
    assert!(eventually(30, || one_incident_each(&sn, 2)).await, "both are created after the pause");
}

#[tokio::test]
async fn a_webhook_is_queued_at_once_when_the_connection_is_busy() {
    let sn =
        ServiceNowEmulator::start(EmulatorConfig { latency: Duration::from_millis(1500), ..EmulatorConfig::default() });
    let itsmc = Arc::new(itsmc(&sn, &[("ITSMC_MAX_CONCURRENT_REQUESTS", "1")]).await);
    let first = {
        let itsmc = Arc::clone(&itsmc);
        tokio::spawn(async move { itsmc.alert("", &alert(1)).await })
    };
    // While the first alert's lookup holds the connection's one place (it takes 1.5 s to answer).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, answer) = itsmc.alert("", &alert(2)).await;
    assert_eq!((second, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    // Waiting its turn would have meant waiting for the first alert's requests; within the 5 s budget that would
    // have ended in a 200 after the first alert's answer.
    assert!(!first.is_finished(), "the second webhook was answered while the first was still with ServiceNow");
    let (first, _) = first.await.unwrap();
    assert!(matches!(first, 200 | 202), "{first}");
    assert!(eventually(30, || one_incident_each(&sn, 2)).await, "the queued one is created by the outbox");
}
