//! Several itsmc instances on one Table Storage account, as a scaled-out function app runs: real `itsmc serve`
//! processes sharing a real Azurite, against the ServiceNow emulator. One problem makes one incident however
//! the deliveries are spread, and work a killed instance left in the outbox is finished by another, once.
//!
//! Needs Azurite's table service (`.ci/run` starts it): `ITSMC_TEST_AZURITE_CONNECTION_STRING`, else
//! `UseDevelopmentStorage=true`.

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use support::capture::CaptureExt;
use support::harness::{eventually, free_port};
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};

const USER: &str = "itsmc";
const PASSWORD: &str = "instances-password";

fn azurite() -> String {
    std::env::var("ITSMC_TEST_AZURITE_CONNECTION_STRING").unwrap_or_else(|_| "UseDevelopmentStorage=true".into())
}

/// One `itsmc serve` process; killed (SIGKILL) when dropped.
struct Instance {
    child: Child,
    url: String,
}

impl Instance {
    async fn start(servicenow: &ServiceNowEmulator, prefix: &str) -> Instance {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
            .args(["serve", "--port", &port.to_string()])
            .env("AzureWebJobsStorage", azurite())
            .env("ITSMC_TABLE_PREFIX", prefix)
            .env("ITSMC_PRODUCT", "servicenow")
            .env("ITSMC_URL", servicenow.url())
            .env("ITSMC_USERNAME", USER)
            .env("ITSMC_PASSWORD", PASSWORD)
            .env("ITSMC_OUTBOX_BACKOFF_MS", "100")
            .env("ITSMC_OUTBOX_LEASE_SECS", "2")
            .env("ITSMC_ALERT_BUDGET_MS", "2000")
            .env("RUST_LOG", "warn")
            .env_remove("ITSMC_DATA_DIR")
            .env_remove("ITSMC_CONNECTIONS_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .captured(&format!("instance-{prefix}"))
            .spawn()
            .expect("itsmc starts");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{url}/api/health")).await {
                let health: Value = response.json().await.expect("health is JSON");
                let store = health["store"].as_str().unwrap_or_default().to_string();
                assert!(store.starts_with("table storage"), "the instance uses Table Storage: {health}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "itsmc did not become ready (is Azurite running? see .ci/run)"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Instance { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn prefix() -> String {
    format!("t{:08x}", rand::rng().random::<u32>())
}

fn alert(i: usize, tag: &str) -> String {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": format!("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{tag}-{i}"),
                "alertRule": "cpu-high",
                "severity": "Sev2",
                "signalType": "Metric",
                "monitorCondition": "Fired",
                "monitoringService": "Platform",
                "alertTargetIDs": [format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm{i}")],
                "firedDateTime": "2026-11-25T12:00:00Z"
            },
            "alertContext": {}
        }
    })
    .to_string()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> u16 {
    match client.post(format!("{url}/api/alert")).body(body).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_make_one_incident_per_alert_however_deliveries_are_spread() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default().with_user(USER, PASSWORD));
    let prefix = prefix();
    let instances = [Instance::start(&servicenow, &prefix).await, Instance::start(&servicenow, &prefix).await];
    let urls: Arc<Vec<String>> = Arc::new(instances.iter().map(|i| i.url.clone()).collect());

    // 500 alerts, each delivered 3 times, in random order, each delivery to a random instance.
    let mut deliveries: Vec<usize> = (0..500).flat_map(|i| [i, i, i]).collect();
    deliveries.shuffle(&mut rand::rng());
    let client = reqwest::Client::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in deliveries {
        let (client, urls, limit) = (client.clone(), Arc::clone(&urls), Arc::clone(&limit));
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let url = &urls[rand::rng().random_range(0..urls.len())];
            post(&client, url, alert(i, "spread")).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("delivery task"));
    }
    let failed: Vec<_> = statuses.iter().filter(|s| !(200..300).contains(*s)).collect();
    assert!(failed.is_empty(), "every delivery answered 2xx; not: {failed:?}");

    // Deliveries answered 202 finish from the outbox.
    let settled = eventually(60, || servicenow.count("incident") >= 500).await;
    assert!(settled, "500 incidents within a minute; have {}", servicenow.count("incident"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let incidents = servicenow.records("incident");
    assert_eq!(incidents.len(), 500, "exactly one incident per alert");
    let keys: HashSet<_> =
        incidents.iter().map(|r| r["correlation_id"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(keys.len(), 500, "each incident has its own correlation key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_outbox_is_finished_by_another_once() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default().with_user(USER, PASSWORD));
    let prefix = prefix();
    let mut doomed = Instance::start(&servicenow, &prefix).await;
    let survivor = Instance::start(&servicenow, &prefix).await;
    let client = reqwest::Client::new();

    // ServiceNow is down: the doomed instance accepts 20 alerts into its outbox, then dies without a word.
    servicenow.set_down(true);
    for i in 0..20 {
        let status = post(&client, &doomed.url, alert(i, "killed")).await;
        assert_eq!(status, 202, "queued while ServiceNow is down");
    }
    doomed.kill();
    servicenow.set_down(false);

    // The survivor's timer (the function-sync route drains the outbox) takes the work over once the dead
    // instance's leases run out.
    let timer = json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {}});
    let finished = eventually(60, || servicenow.count("incident") >= 20).await;
    if !finished {
        let _ = client.post(format!("{}/function-sync", survivor.url)).json(&timer).send().await;
    }
    assert!(
        finished || eventually(30, || servicenow.count("incident") >= 20).await,
        "the survivor created the incidents; have {}",
        servicenow.count("incident")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = client.post(format!("{}/function-sync", survivor.url)).json(&timer).send().await;
    assert_eq!(servicenow.count("incident"), 20, "each alert once, not once per instance or attempt");
    let (_, workitems) = {
        let response = client.get(format!("{}/api/workitems", survivor.url)).send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(workitems["pending"].as_array().map_or(0, Vec::len), 0, "nothing left pending: {workitems}");
}

/// The alert route takes up to 1 MiB; a Table Storage entity holds about 750 KiB of it. A larger alert is
/// refused as too large (413, nothing recorded), not answered 503 for the action group to retry forever.
#[tokio::test]
async fn an_alert_too_large_for_a_table_entity_is_refused_as_such() {
    let prefix = prefix();
    let itsmc =
        support::harness::Itsmc::start(&[("AzureWebJobsStorage", azurite().as_str()), ("ITSMC_TABLE_PREFIX", &prefix)])
            .await;
    let (_, health) = itsmc.get("/api/health").await;
    assert!(health["store"].as_str().unwrap_or_default().starts_with("table storage"), "{health}");
    let mut body: Value = serde_json::from_str(&alert(1, "large")).unwrap();
    body["data"]["essentials"]["description"] = json!("x".repeat(900 * 1024));
    let (status, answer) = itsmc.alert("", &body.to_string()).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    assert!(
        answer["error"]["message"].as_str().unwrap_or_default().contains("too large for Table Storage"),
        "{answer}"
    );
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().map_or(0, Vec::len), 0, "nothing recorded: {listed}");

    body["data"]["essentials"]["description"] = json!("fits");
    let (status, answer) = itsmc.alert("", &body.to_string()).await;
    assert_eq!(status, 200, "an ordinary alert still goes through: {answer}");
}
