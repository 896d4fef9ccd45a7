//! Faults (issue 8): what itsmc does when what it depends on fails under it, or when it is killed.
//!
//! - ServiceNow unreachable for a minute in the middle of a steady flow of alerts: nothing refused, nothing
//!   lost, nothing twice.
//! - Azurite (the state store) stopped (port closed) or frozen (SIGSTOP) for ten seconds: the alert route answers
//!   503, the status the action group retries, only while nothing can be persisted, answers within its budget
//!   all the same, and takes alerts again by itself when Azurite is back.
//! - An `itsmc serve` process SIGKILLed while it holds outbox work and while it syncs ServiceNow's incidents
//!   into Logs Ingestion: on the embedded store a restart on the same data directory, on Table Storage the other
//!   instance of the two sharing its tables, finishes the work; every alert makes one incident, and the sync
//!   resumes without a gap.
//!
//! The sync is at-least-once by design (`src/sync/watermark.rs`: the watermark moves only after Logs Ingestion
//! accepted a batch, so a batch accepted and not yet recorded when the process dies is sent again). The kill
//! tests therefore allow rows twice, but only those of the uploads that can have been in flight at the kill
//! (`UPLOADS_IN_FLIGHT` in `src/sync/run.rs`).
//!
//! The Azurite tests start an Azurite of their own (`.ci/node_modules/.bin/azurite-table`, from
//! `npm ci --prefix .ci`) with its data on disk, so they can stop and restart it; the kill test on Table Storage
//! uses the shared one (`ITSMC_TEST_AZURITE_TABLE`, which `.ci/run` starts).

#[path = "support/azurite.rs"]
#[allow(dead_code)]
mod azurite;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use itsmc::workitem::{Grouping, WorkItemType};
use serde_json::{Value, json};
use support::harness::{Itsmc, KillOnDrop, eventually, free_port};
use support::identity::{DEFAULT_IDENTITY_HEADER, IdentityConfig, IdentityEmulator};
use support::logs_ingestion::{LogsIngestionEmulator, SERVICE_DESK_STREAM};
use support::servicenow::{DEFAULT_PASSWORD, DEFAULT_USERNAME, EmulatorConfig, ServiceNowEmulator};
use support::tls::TestCa;

/// The connection every test configures (`ITSMC_CONNECTION_NAME`).
const CONNECTION: &str = "prod";

/// The settings of a ServiceNow connection to `servicenow`.
fn servicenow_settings(servicenow: &ServiceNowEmulator) -> Vec<(String, String)> {
    [
        ("ITSMC_PRODUCT", "servicenow".to_string()),
        ("ITSMC_CONNECTION_NAME", CONNECTION.to_string()),
        ("ITSMC_URL", servicenow.url()),
        ("ITSMC_USERNAME", DEFAULT_USERNAME.to_string()),
        ("ITSMC_PASSWORD", DEFAULT_PASSWORD.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn borrowed(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A common-schema metric alert of its own: alert id `{tag}-{i}`, target `vm-{tag}-{i}`.
fn alert(tag: &str, i: usize) -> String {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": format!("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{tag}-{i}"),
                "alertRule": format!("faults-{tag}"),
                "severity": "Sev2",
                "signalType": "Metric",
                "monitorCondition": "Fired",
                "monitoringService": "Platform",
                "alertTargetIDs": [format!(
                    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-{tag}-{i}"
                )],
                "firedDateTime": "2026-11-25T12:00:00Z"
            },
            "alertContext": {}
        }
    })
    .to_string()
}

/// The correlation key of the one incident `body` should make, computed with itsmc's own function.
fn key_of(body: &str) -> String {
    let parsed = itsmc::alert::parse(body.as_bytes()).expect("a valid alert");
    let mut plans = itsmc::workitem::correlation_keys(CONNECTION, WorkItemType::Incident, Grouping::Alert, &parsed);
    assert_eq!(plans.len(), 1);
    plans.remove(0).correlation_key
}

/// How many incidents ServiceNow holds under each correlation key (incidents without one left out).
fn incidents_by_key(servicenow: &ServiceNowEmulator) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in servicenow.records("incident") {
        let key = record.get("correlation_id").and_then(Value::as_str).unwrap_or_default();
        if !key.is_empty() {
            *counts.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// How many of `expected` have at least one incident.
fn made(servicenow: &ServiceNowEmulator, expected: &HashSet<String>) -> usize {
    incidents_by_key(servicenow).keys().filter(|k| expected.contains(*k)).count()
}

/// Every expected key has exactly one incident, and no key has two.
fn assert_each_once(servicenow: &ServiceNowEmulator, expected: &HashSet<String>, what: &str) {
    let counts = incidents_by_key(servicenow);
    let missing: Vec<&String> = expected.iter().filter(|k| !counts.contains_key(*k)).collect();
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} alerts have no incident (lost): {missing:?}",
        missing.len(),
        expected.len()
    );
    assert!(twice.is_empty(), "{what}: correlation ids with more than one incident (made twice): {twice:?}");
}

/// One alert posted: when, how long it took, and the status (0: no answer at all).
#[derive(Debug, Clone)]
struct Posted {
    i: usize,
    sent: Instant,
    answered: Instant,
    status: u16,
}

async fn post_alert(client: &reqwest::Client, url: &str, i: usize, body: String) -> Posted {
    let sent = Instant::now();
    let status = match client.post(format!("{url}/api/alert")).body(body).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    };
    Posted { i, sent, answered: Instant::now(), status }
}

/// The pending deliveries and dead letters `/api/workitems` lists.
async fn outbox_lists(client: &reqwest::Client, url: &str) -> (usize, usize, Value) {
    let listed: Value =
        client.get(format!("{url}/api/workitems")).send().await.expect("itsmc answers").json().await.expect("JSON");
    let count = |name: &str| listed[name].as_array().map_or(0, Vec::len);
    (count("pending"), count("deadLetters"), listed)
}

// ---- ServiceNow unreachable for a minute ----

/// One alert every 200 ms for 80 s; ServiceNow's port is closed from the 10th to the 70th second. Every alert is
/// answered 200 or 202 (none refused), every alert's incident exists at the end (none lost), and no correlation
/// id has two incidents (none twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_servicenow_refuses_loses_and_doubles_nothing() {
    const ALERTS: usize = 400;
    const EVERY: Duration = Duration::from_millis(200);
    const UP_BEFORE: Duration = Duration::from_secs(10);
    const OUTAGE: Duration = Duration::from_secs(60);

    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let mut settings = servicenow_settings(&servicenow);
    settings.push(("ITSMC_OUTBOX_BACKOFF_MS".into(), "250".into()));
    settings.push(("ITSMC_OUTBOX_LEASE_SECS".into(), "10".into()));
    let itsmc = Itsmc::start(&borrowed(&settings)).await;
    let bodies: Vec<String> = (0..ALERTS).map(|i| alert("outage", i)).collect();
    let expected: HashSet<String> = bodies.iter().map(|b| key_of(b)).collect();
    assert_eq!(expected.len(), ALERTS);

    let client = reqwest::Client::new();
    let flow = async {
        let mut ticker = tokio::time::interval(EVERY);
        let mut tasks = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            ticker.tick().await;
            let (client, url, body) = (client.clone(), itsmc.url.clone(), body.clone());
            tasks.push(tokio::spawn(async move { post_alert(&client, &url, i, body).await }));
        }
        let mut posted = Vec::new();
        for task in tasks {
            posted.push(task.await.expect("the post task"));
        }
        posted
    };
    let outage = async {
        tokio::time::sleep(UP_BEFORE).await;
        tokio::task::block_in_place(|| servicenow.stop_listening());
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let incidents_when_down = servicenow.count("incident");
        tokio::time::sleep(OUTAGE - Duration::from_secs(1)).await;
        let incidents_before_up = servicenow.count("incident");
        tokio::task::block_in_place(|| servicenow.resume());
        (down, Instant::now(), incidents_when_down, incidents_before_up)
    };
    let (posted, (down, up, incidents_when_down, incidents_before_up)) = tokio::join!(flow, outage);
    assert_eq!(incidents_when_down, incidents_before_up, "ServiceNow was unreachable: nothing was created meanwhile");
    let during = posted.iter().filter(|p| p.sent >= down && p.answered <= up).count();
    assert!(during >= 250, "the flow went on through the outage: only {during} alerts were posted while it lasted");

    let refused: Vec<(usize, u16)> =
        posted.iter().filter(|p| !matches!(p.status, 200 | 202)).map(|p| (p.i, p.status)).collect();
    assert!(refused.is_empty(), "every alert is answered 200 or 202; refused (index, status): {refused:?}");

    // The outbox catches up after the outage; backoff doubles each attempt (up to five minutes, with 20 % jitter),
    // so the last deliveries come up to about 1.2 times the outage's length after it.
    let all = eventually(150, || servicenow.count("incident") >= ALERTS).await;
    eprintln!("the outbox caught up {:?} after ServiceNow's return", up.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_each_once(&servicenow, &expected, "after a minute without ServiceNow");
    assert!(all, "every alert's incident was made within 150 s of ServiceNow's return");
    assert_eq!(servicenow.count("incident"), ALERTS, "one incident per alert, no more");
    let (pending, dead, listed) = outbox_lists(&client, &itsmc.url).await;
    assert_eq!((pending, dead), (0, 0), "nothing left pending or dead-lettered: {listed}");
}

// ---- Azurite stopped for ten seconds ----

/// How the store goes away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StoreOutage {
    /// Azurite stopped (SIGINT: it saves its tables and closes its port) and started again on the same port and
    /// data: connections are refused meanwhile.
    Stopped,
    /// Azurite frozen (SIGSTOP) and thawed (SIGCONT): its port takes connections, nothing answers.
    Frozen,
}

/// The route's budget in these tests (`ITSMC_ALERT_BUDGET_MS`).
const BUDGET: Duration = Duration::from_millis(2_000);

/// One alert every 100 ms; the store (an Azurite of the test's own, on disk) goes away 5 s in and comes back
/// 10 s later, itsmc running throughout. 503 is answered only to alerts posted while Azurite was away, and once
/// it is back alerts are taken again without restarting itsmc. Each alert answered 503 is posted again, as the
/// action group retries it; at the end every alert has its one incident.
async fn store_outage(outage: StoreOutage) {
    const EVERY: Duration = Duration::from_millis(100);
    let mut azurite = tokio::task::block_in_place(azurite::PrivateAzurite::start);
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let prefix = azurite::fresh_prefix();
    let mut settings = servicenow_settings(&servicenow);
    settings.extend([
        ("AzureWebJobsStorage".to_string(), azurite.connection_string()),
        ("ITSMC_TABLE_PREFIX".to_string(), prefix.clone()),
        ("ITSMC_OUTBOX_BACKOFF_MS".to_string(), "200".to_string()),
        ("ITSMC_OUTBOX_LEASE_SECS".to_string(), "3".to_string()),
        ("ITSMC_ALERT_BUDGET_MS".to_string(), BUDGET.as_millis().to_string()),
    ]);
    let itsmc = Itsmc::start(&borrowed(&settings)).await;
    let (_, health) = itsmc.get("/api/health").await;
    assert!(health["store"].as_str().unwrap_or_default().starts_with("table storage"), "{health}");

    // An action group gives up on a webhook long before this; here it only bounds a hung request.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    // The flow goes on until 10 s after Azurite is back, however long it takes to come back.
    let (came_back, back_at) = tokio::sync::watch::channel(None::<Instant>);
    let flow = async {
        let mut ticker = tokio::time::interval(EVERY);
        let (mut tasks, mut bodies) = (Vec::new(), Vec::new());
        while back_at.borrow().is_none_or(|back| back.elapsed() < Duration::from_secs(10)) {
            ticker.tick().await;
            let (i, body) = (bodies.len(), alert(&format!("azurite-{outage:?}"), bodies.len()));
            bodies.push(body.clone());
            let (client, url) = (client.clone(), itsmc.url.clone());
            tasks.push(tokio::spawn(async move { post_alert(&client, &url, i, body).await }));
        }
        let mut posted = Vec::new();
        for task in tasks {
            posted.push(task.await.expect("the post task"));
        }
        (posted, bodies)
    };
    let away = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let leaving = Instant::now();
        match outage {
            StoreOutage::Stopped => tokio::task::block_in_place(|| azurite.stop()),
            StoreOutage::Frozen => azurite.freeze(),
        }
        let gone = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let returning = Instant::now();
        match outage {
            StoreOutage::Stopped => tokio::task::block_in_place(|| azurite.restart()),
            StoreOutage::Frozen => azurite.unfreeze(),
        }
        let back = Instant::now();
        came_back.send_replace(Some(back));
        (leaving, gone, returning, back)
    };
    let ((posted, bodies), (leaving, gone, returning, back)) = tokio::join!(flow, away);
    let alerts = bodies.len();
    let expected: HashSet<String> = bodies.iter().map(|b| key_of(b)).collect();
    let overlaps_outage = |p: &Posted| p.answered >= leaving && p.sent <= back;
    let took = |p: &Posted| p.answered.duration_since(p.sent);
    let summary: Vec<(usize, u16, u128)> = posted.iter().map(|p| (p.i, p.status, took(p).as_millis())).collect();
    let statuses = |ps: &[&Posted]| {
        let mut counts: std::collections::BTreeMap<u16, usize> = Default::default();
        ps.iter().for_each(|p| *counts.entry(p.status).or_default() += 1);
        counts
    };
    let inside: Vec<&Posted> = posted.iter().filter(|p| p.sent >= gone && p.sent <= returning).collect();
    eprintln!(
        "{outage:?}: statuses of alerts posted while Azurite was away {:?}, of all {:?}; slowest answer {:?}",
        statuses(&inside),
        statuses(&posted.iter().collect::<Vec<_>>()),
        posted.iter().map(took).max()
    );

    let odd: Vec<_> = posted.iter().filter(|p| !matches!(p.status, 200 | 202 | 503)).map(|p| (p.i, p.status)).collect();
    assert!(odd.is_empty(), "{outage:?}: answers are 200, 202 or 503; not (index, status; 0: none in 30 s): {odd:?}");
    let needless: Vec<_> =
        posted.iter().filter(|p| p.status == 503 && !overlaps_outage(p)).map(|p| (p.i, p.status)).collect();
    assert!(needless.is_empty(), "{outage:?}: 503 while Azurite was up (index, status): {needless:?}\n{summary:?}");
    assert!(inside.len() >= 50, "alerts came while Azurite was away: only {}\n{summary:?}", inside.len());
    if outage == StoreOutage::Stopped {
        // Nothing can be recorded: 200 or 202 would be a promise not kept.
        let promised: Vec<_> = posted
            .iter()
            .filter(|p| p.sent >= gone && p.answered <= returning && p.status != 503)
            .map(|p| (p.i, p.status))
            .collect();
        assert!(promised.is_empty(), "accepted while nothing could be recorded (index, status): {promised:?}");
    }
    let after: Vec<&Posted> = posted.iter().filter(|p| p.sent > back + Duration::from_secs(1)).collect();
    assert!(after.len() >= 50, "alerts came after Azurite was back: only {}", after.len());
    let not_taken: Vec<_> = after.iter().filter(|p| !matches!(p.status, 200 | 202)).map(|p| (p.i, p.status)).collect();
    assert!(
        not_taken.is_empty(),
        "{outage:?}: taken again once Azurite is back, without a restart; not: {not_taken:?}"
    );

    // The action group retries what was answered 503 (or not answered).
    for p in posted.iter().filter(|p| !matches!(p.status, 200 | 202)) {
        let again = post_alert(&client, &itsmc.url, p.i, bodies[p.i].clone()).await;
        assert!(matches!(again.status, 200 | 202), "alert {} posted again after the outage: {}", p.i, again.status);
    }
    let all = eventually(60, || servicenow.count("incident") >= alerts).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_each_once(&servicenow, &expected, &format!("after ten seconds of Azurite {outage:?}"));
    assert!(all, "every alert's incident was made within 60 s");
    assert_eq!(servicenow.count("incident"), alerts, "one incident per alert, no more");
    let mut settled = false;
    for _ in 0..60 {
        let (pending, dead, _) = outbox_lists(&client, &itsmc.url).await;
        if (pending, dead) == (0, 0) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, _, listed) = outbox_lists(&client, &itsmc.url).await;
    assert!(settled, "nothing left pending or dead-lettered: {listed}");
    // The route answers within its budget (README: "the route answers within a budget"), store or no store: a
    // route that waits for a store that does not answer holds the action group's call until it gives up.
    // Checked last, so that the other checks run whatever this finds.
    let slow: Vec<(usize, u16, u128)> = posted
        .iter()
        .filter(|p| took(p) > BUDGET + Duration::from_secs(1))
        .map(|p| (p.i, p.status, took(p).as_millis()))
        .collect();
    assert!(
        slow.is_empty(),
        "{outage:?}: {} alerts answered later than the budget ({BUDGET:?}) allows, up to {} ms; first (index, status, \
         ms): {:?}",
        slow.len(),
        slow.iter().map(|s| s.2).max().unwrap_or_default(),
        &slow[..slow.len().min(5)]
    );
}

/// Azurite stopped: connections refused for 10 s. Every alert posted meanwhile is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_stopped_for_ten_seconds_is_503_only_meanwhile_and_recovers_by_itself() {
    store_outage(StoreOutage::Stopped).await;
}

/// Azurite frozen: connections taken, nothing answered for 10 s. The route still answers within its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_frozen_for_ten_seconds_is_503_only_meanwhile_and_recovers_by_itself() {
    store_outage(StoreOutage::Frozen).await;
}

// ---- SIGKILL while holding outbox work and while syncing ----

/// ServiceNow, the managed identity endpoint and Logs Ingestion, as `itsmc serve` processes use them.
struct World {
    servicenow: ServiceNowEmulator,
    ingestion: LogsIngestionEmulator,
    identity: IdentityEmulator,
    ca: TestCa,
    logs: tempfile::TempDir,
}

/// An `itsmc serve` process, SIGKILLed when dropped.
struct Serve {
    child: KillOnDrop,
    url: String,
    log: PathBuf,
}

impl World {
    fn start() -> World {
        let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
        let identity = IdentityEmulator::start(IdentityConfig::default());
        let ca = TestCa::new();
        let ingestion = LogsIngestionEmulator::start(&ca, identity.tokens());
        World { servicenow, ingestion, identity, ca, logs: tempfile::tempdir().unwrap() }
    }

    /// `itsmc serve` on a free port with the store in `store`; returns once it answers.
    async fn serve(&self, name: &str, store: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let log = support::capture::stderr_file(name).unwrap_or_else(|| self.logs.path().join(format!("{name}.log")));
        let mut command = Command::new(env!("CARGO_BIN_EXE_itsmc"));
        command
            .args(["serve", "--port", &port.to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(servicenow_settings(&self.servicenow))
            .env("IDENTITY_ENDPOINT", self.identity.endpoint())
            .env("IDENTITY_HEADER", DEFAULT_IDENTITY_HEADER)
            .env("ITSMC_CA_FILE", self.ca.ca_file())
            .env("ITSMC_LOGS_ENDPOINT", self.ingestion.url())
            .env("ITSMC_DCR_IMMUTABLE_ID", self.ingestion.dcr_immutable_id())
            // The sync: incidents only, in small pages and batches, a few seconds per run; run by the test's
            // timer calls (the Functions host's part), not by the process's own clock.
            .env("ITSMC_SYNC_KINDS", "Incident")
            .env("ITSMC_SYNC_PAGE_SIZE", "50")
            .env("ITSMC_SYNC_BATCH_BYTES", "20000")
            .env("ITSMC_SYNC_BUDGET_SECS", "4")
            .env("ITSMC_SYNC_SCHEDULE", "0 0 0 1 1 *")
            // The outbox: a dead instance's work waits 3 s for another; an alert gets 300 ms before 202.
            .env("ITSMC_OUTBOX_LEASE_SECS", "3")
            .env("ITSMC_OUTBOX_BACKOFF_MS", "200")
            .env("ITSMC_ALERT_BUDGET_MS", "300")
            .envs(store.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        support::capture::CaptureExt::capture_env(&mut command);
        let child = KillOnDrop(command.spawn().expect("itsmc starts"));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{url}/api/health")).await
                && let Ok(health) = response.json::<Value>().await
            {
                let kind = health["store"].as_str().unwrap_or_default().to_string();
                let table = store.iter().any(|(name, _)| *name == "AzureWebJobsStorage");
                assert_eq!(kind.starts_with("table storage"), table, "{name} uses the store it was given: {health}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} did not become ready within 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Serve { child, url, log }
    }

    /// The incident numbers Logs Ingestion took, with how often each came.
    fn ingested(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for row in self.ingestion.rows(SERVICE_DESK_STREAM) {
            let number = row.get("ServiceDeskId_s").and_then(Value::as_str).unwrap_or_default().to_string();
            *seen.entry(number).or_insert(0) += 1;
        }
        seen
    }

    fn numbers(&self) -> HashSet<String> {
        self.servicenow
            .records("incident")
            .iter()
            .map(|r| r.get("number").and_then(Value::as_str).unwrap_or_default().to_string())
            .collect()
    }
}

impl Serve {
    /// SIGKILL, and wait until the process is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The Functions host's timer call: drains the outbox, then syncs (`/function-sync`). `None` when the process
/// did not answer (it was killed meanwhile).
async fn timer(client: &reqwest::Client, url: &str) -> Option<Value> {
    let envelope = support::harness::fixture("protocols/functions-customhandler-timer-request.json");
    let response = client.post(format!("{url}/function-sync")).body(envelope).send().await.ok()?;
    response.json().await.ok()
}

/// What the kill left behind, for the assertions after the recovery.
struct AtKill {
    /// Incident numbers sent in the uploads that can have been in flight at the kill: the only ones the
    /// at-least-once design may send again.
    in_flight: HashSet<String>,
    rows: usize,
}

/// The seeded backlog, a sync started on `doomed` by a timer call, alerts posted to it while ServiceNow is slow;
/// SIGKILL once the sync has sent some rows and the alerts' deliveries are under way.
async fn kill_mid_work(world: &World, doomed: &mut Serve, bodies: &[String], incidents: usize) -> AtKill {
    let client = reqwest::Client::new();
    world.servicenow.set_latency(Duration::from_millis(400));
    let sync_started = Instant::now();
    let sync = tokio::spawn({
        let (client, url) = (client.clone(), doomed.url.clone());
        async move { timer(&client, &url).await }
    });
    let syncing = eventually(30, || world.ingestion.row_count(SERVICE_DESK_STREAM) > 0).await;
    assert!(syncing, "the sync sent its first rows:\n{}", doomed.log());

    // Alerts while ServiceNow takes 400 ms an answer: each answered 202 after 300 ms, its delivery under way.
    let mut posts = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (client, url, body) = (client.clone(), doomed.url.clone(), body.clone());
        posts.push(tokio::spawn(async move { post_alert(&client, &url, i, body).await }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut answers = Vec::new();
    for post in posts {
        let posted = post.await.unwrap();
        answers.push((posted.i, posted.status));
    }
    doomed.kill();
    // The run's budget (ITSMC_SYNC_BUDGET_SECS) had not run out: it was still syncing.
    let killed_after = sync_started.elapsed();
    assert!(killed_after < Duration::from_secs(4), "the kill came {killed_after:?} into a 4 s sync run");
    assert!(answers.iter().all(|(_, s)| *s == 202), "each alert left to the outbox (202): {answers:?}");
    assert!(sync.await.unwrap().is_none(), "the killed instance never finished its timer call");

    // Whatever the dead process had sent has arrived now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected: HashSet<String> = bodies.iter().map(|b| key_of(b)).collect();
    let made_before = made(&world.servicenow, &expected);
    assert!(made_before < bodies.len(), "the kill came while alerts were being delivered ({made_before} done)");
    let rows = world.ingestion.rows(SERVICE_DESK_STREAM);
    assert!(rows.len() < incidents, "the kill came mid-sync ({} of {incidents} rows sent)", rows.len());
    let uploads: Vec<usize> = world
        .ingestion
        .requests()
        .iter()
        .filter(|r| r.stream.as_deref() == Some(SERVICE_DESK_STREAM) && r.status == 204)
        .map(|r| r.rows)
        .collect();
    // UPLOADS_IN_FLIGHT (src/sync/run.rs) batches upload while the next is built.
    let tail: usize = uploads.iter().rev().take(2).sum();
    let in_flight = rows[rows.len() - tail..]
        .iter()
        .map(|r| r.get("ServiceDeskId_s").and_then(Value::as_str).unwrap_or_default().to_string())
        .collect();
    world.servicenow.set_latency(Duration::ZERO);
    eprintln!(
        "killed with {made_before} of {} alerts' incidents made, {} of {incidents} rows sent, {} in flight",
        bodies.len(),
        rows.len(),
        tail
    );
    AtKill { in_flight, rows: rows.len() }
}

/// Timer calls to `survivor` until every incident in ServiceNow has been ingested and every alert has its
/// incident; then the checks: each alert once, no incident missing from the ingestion, rows twice only from the
/// uploads in flight at the kill, nothing left in the outbox.
async fn recover_and_check(world: &World, survivor: &Serve, bodies: &[String], at_kill: &AtKill, what: &str) {
    let client = reqwest::Client::new();
    let expected: HashSet<String> = bodies.iter().map(|b| key_of(b)).collect();
    let started = Instant::now();
    let mut ticks = Vec::new();
    let done = loop {
        let tick = timer(&client, &survivor.url).await;
        ticks.push(tick.as_ref().map(|t| t["ReturnValue"].clone()).unwrap_or(Value::Null));
        let all_made = made(&world.servicenow, &expected) == bodies.len();
        let ingested = world.ingested();
        if all_made && world.numbers().iter().all(|n| ingested.contains_key(n)) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(90) {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let skipped =
        ticks.iter().filter(|t| t.as_str().is_some_and(|t| t.contains("another instance is syncing"))).count();
    eprintln!(
        "{what}: recovered in {:?}, {} timer calls, {skipped} of them skipped the sync",
        started.elapsed(),
        ticks.len()
    );
    let ticks: Vec<&Value> = ticks.iter().rev().take(3).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_each_once(&world.servicenow, &expected, what);
    let ingested = world.ingested();
    let gap: Vec<String> = world.numbers().into_iter().filter(|n| !ingested.contains_key(n)).collect();
    assert!(
        gap.is_empty() && done,
        "{what}: the sync resumed without a gap; {} incidents never ingested (e.g. {:?}); before the kill {} rows; \
         the survivor's last timer calls: {ticks:?}\n{}",
        gap.len(),
        gap.iter().take(5).collect::<Vec<_>>(),
        at_kill.rows,
        survivor.log()
    );
    // Alert incidents may come twice for a reason of their own (a note on an incident found by its key changes it,
    // and a changed record is sent again); the seeded ones never change.
    let seeded_twice: Vec<(&String, &usize)> = ingested
        .iter()
        .filter(|(n, c)| **c > 1 && !at_kill.in_flight.contains(*n))
        .filter(|(n, _)| {
            world.servicenow.records("incident").iter().any(|r| {
                r.get("number").and_then(Value::as_str) == Some(n.as_str())
                    && r.get("correlation_id").and_then(Value::as_str).unwrap_or_default().is_empty()
            })
        })
        .collect();
    assert!(
        seeded_twice.is_empty(),
        "{what}: incidents ingested twice that were not in the uploads in flight at the kill (the watermark did not \
         hold what was accepted): {seeded_twice:?}"
    );
    let (pending, dead, listed) = outbox_lists(&client, &survivor.url).await;
    assert_eq!((pending, dead), (0, 0), "{what}: nothing left pending or dead-lettered: {listed}");
}

fn seed(world: &World, incidents: usize) {
    let now = Utc::now();
    world.servicenow.seed_incidents(incidents, now - chrono::Duration::days(10), now - chrono::Duration::minutes(10));
}

/// Embedded store: the instance is SIGKILLed mid-sync with alerts in its outbox; restarted on the same data
/// directory, it finishes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_outbox_and_mid_sync_a_restart_on_the_embedded_store_finishes_both() {
    const INCIDENTS: usize = 1_000;
    let world = World::start();
    seed(&world, INCIDENTS);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let store = [("ITSMC_DATA_DIR", dir.as_str())];
    let bodies: Vec<String> = (0..20).map(|i| alert("killed-embedded", i)).collect();
    let mut doomed = world.serve("embedded-first", &store).await;
    let at_kill = kill_mid_work(&world, &mut doomed, &bodies, INCIDENTS).await;
    let restarted = world.serve("embedded-restarted", &store).await;
    recover_and_check(&world, &restarted, &bodies, &at_kill, "embedded, restarted").await;
    drop(doomed);
}

/// Table Storage: two instances share one set of tables; the one syncing and holding outbox work is SIGKILLed,
/// and the other finishes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_outbox_and_mid_sync_the_other_table_storage_instance_finishes_both() {
    const INCIDENTS: usize = 1_000;
    let prefix = azurite::fresh_prefix();
    // Creates the tables, or fails saying how to start Azurite.
    drop(azurite::open(&prefix, false).await);
    let _cleanup = DropTables(prefix.clone());
    let world = World::start();
    seed(&world, INCIDENTS);
    let connection = azurite::connection_string_for(&azurite::table_endpoint());
    let store = [("AzureWebJobsStorage", connection.as_str()), ("ITSMC_TABLE_PREFIX", prefix.as_str())];
    let bodies: Vec<String> = (0..20).map(|i| alert("killed-table", i)).collect();
    let mut doomed = world.serve("table-doomed", &store).await;
    let survivor = world.serve("table-survivor", &store).await;
    let at_kill = kill_mid_work(&world, &mut doomed, &bodies, INCIDENTS).await;
    recover_and_check(&world, &survivor, &bodies, &at_kill, "Table Storage, the other instance").await;
}

struct DropTables(String);

impl Drop for DropTables {
    fn drop(&mut self) {
        azurite::drop_tables_blocking(self.0.clone(), false);
    }
}
