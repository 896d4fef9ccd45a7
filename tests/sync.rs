//! function-sync end to end: the ServiceNow emulator's incidents and change requests, through the
//! production sync and Logs Ingestion client (TLS from the test CA, a managed identity token for
//! `https://monitor.azure.com`), into the Logs Ingestion emulator, which checks every row against the
//! declared `ServiceDesk_CL` columns.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{Duration, Utc};
use itsmc::store::{Filter, Table};
use itsmc::sync::run::KindReport;
use itsmc::sync::{Request, SyncKind, Syncer};
use serde_json::{Map, Value, json};
use support::harness::Itsmc;
use support::identity::{DEFAULT_IDENTITY_HEADER, EndpointCredential, IdentityConfig, IdentityEmulator};
use support::logs_ingestion::{LogsIngestionEmulator, SERVICE_DESK_LOG_STREAM, SERVICE_DESK_STREAM};
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};
use support::tls::TestCa;

/// ServiceNow, the identity endpoint, Logs Ingestion and itsmc (embedded store) with a syncer that sends to
/// Logs Ingestion.
struct World {
    servicenow: ServiceNowEmulator,
    ingestion: LogsIngestionEmulator,
    itsmc: Itsmc,
    syncer: Syncer,
    _identity: IdentityEmulator,
    _ca: TestCa,
}

impl World {
    async fn start(settings: &[(&str, &str)]) -> World {
        let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
        let identity = IdentityEmulator::start(IdentityConfig::default());
        let ca = TestCa::new();
        let ingestion = LogsIngestionEmulator::start(&ca, identity.tokens());
        let url = servicenow.url();
        let mut env = vec![
            ("ITSMC_PRODUCT", "servicenow"),
            ("ITSMC_CONNECTION_NAME", "prod"),
            ("ITSMC_URL", url.as_str()),
            ("ITSMC_USERNAME", support::servicenow::DEFAULT_USERNAME),
            ("ITSMC_PASSWORD", support::servicenow::DEFAULT_PASSWORD),
        ];
        env.extend_from_slice(settings);
        let itsmc = Itsmc::start(&env).await;
        let syncer = World::syncer(&itsmc, &identity, &ingestion, &ca);
        World { servicenow, ingestion, itsmc, syncer, _identity: identity, _ca: ca }
    }

    fn syncer(itsmc: &Itsmc, identity: &IdentityEmulator, ingestion: &LogsIngestionEmulator, ca: &TestCa) -> Syncer {
        let credential = Arc::new(EndpointCredential { endpoint: identity.endpoint() });
        let http = itsmc::http::build_client(&ca.http_settings()).unwrap();
        ingestion.syncer(&itsmc.intake, credential, http)
    }

    async fn sync(&self) -> Vec<KindReport> {
        let report = self.syncer.run(&Request::default(), &|_| {}).await.expect("the sync runs");
        assert!(report.skipped.is_none());
        report.runs
    }

    fn rows(&self) -> Vec<Map<String, Value>> {
        self.ingestion.rows(SERVICE_DESK_STREAM)
    }

    /// How often each incident and change request number was sent.
    fn sent_numbers(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for row in self.rows() {
            *seen.entry(row["ServiceDeskId_s"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        seen
    }

    fn servicenow_requests(&self, table: &str) -> usize {
        self.servicenow.requests().iter().filter(|r| r.path.ends_with(&format!("/table/{table}"))).count()
    }
}

fn report<'a>(runs: &'a [KindReport], kind: &str) -> &'a KindReport {
    runs.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("no {kind} run in {runs:?}"))
}

fn text<'a>(row: &'a Map<String, Value>, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or_default()
}

/// ITSMC's columns and the ServiceNow fields they come from (`display`: the display value; `time`: the
/// UTC value as ISO 8601), written out here independently of itsmc's own mapping.
const EXPECTED_INCIDENT: &[(&str, &str, &str)] = &[
    ("ServiceDeskId_s", "number", "value"),
    ("IncidentState_s", "state", "display"),
    ("Urgency_s", "urgency", "display"),
    ("Impact_s", "impact", "display"),
    ("Priority_s", "priority", "display"),
    ("Escalation_s", "escalation", "display"),
    ("CreatedBy_s", "opened_by", "display"),
    ("ResolvedBy_s", "resolved_by", "display"),
    ("ClosedBy_s", "closed_by", "display"),
    ("Source_s", "contact_type", "display"),
    ("AssignedTo_s", "assigned_to", "display"),
    ("Category_s", "category", "display"),
    ("Title_s", "short_description", "value"),
    ("Description_s", "description", "value"),
    ("CreatedDate_t", "opened_at", "time"),
    ("ClosedDate_t", "closed_at", "time"),
    ("ResolvedDate_t", "resolved_at", "time"),
    ("LastModifiedDate_t", "sys_updated_on", "time"),
    ("Computer", "cmdb_ci", "display"),
];

const EXPECTED_CHANGE: &[(&str, &str, &str)] = &[
    ("ServiceDeskId_s", "number", "value"),
    ("CRState_s", "state", "display"),
    ("Type_s", "type", "display"),
    ("Risk_s", "risk", "display"),
    ("ConflictStatus_s", "conflict_status", "display"),
    ("Urgency_s", "urgency", "display"),
    ("Impact_s", "impact", "display"),
    ("Priority_s", "priority", "display"),
    ("CreatedBy_s", "requested_by", "display"),
    ("ClosedBy_s", "closed_by", "display"),
    ("AssignedTo_s", "assigned_to", "display"),
    ("Category_s", "category", "display"),
    ("Title_s", "short_description", "value"),
    ("Description_s", "description", "value"),
    ("CreatedDate_t", "opened_at", "time"),
    ("ClosedDate_t", "closed_at", "time"),
    ("RequestedDate_t", "requested_by_date", "time"),
    ("PlannedStartDate_t", "start_date", "time"),
    ("PlannedEndDate_t", "end_date", "time"),
    ("WorkStartDate_t", "work_start", "time"),
    ("WorkEndDate_t", "work_end", "time"),
    ("LastModifiedDate_t", "sys_updated_on", "time"),
    ("Computer", "cmdb_ci", "display"),
];

/// Each sampled row, column by column, against the record as the Table API shows it with display values.
async fn check_sample(world: &World, table: &str, expected: &[(&str, &str, &str)], every: usize) {
    let rows: HashMap<String, Map<String, Value>> = world
        .rows()
        .into_iter()
        .filter(|row| {
            text(row, "ServiceDeskWorkItemType_s") == if table == "incident" { "Incident" } else { "ChangeRequest" }
        })
        .map(|row| (text(&row, "ServiceDeskId_s").to_string(), row))
        .collect();
    let records = world.servicenow.records(table);
    let mut checked = 0;
    for record in records.iter().step_by(every) {
        let number = record["number"].as_str().unwrap();
        let Some(row) = rows.get(number) else { continue };
        let sys_id = record["sys_id"].as_str().unwrap();
        let shown: Value = reqwest::Client::new()
            .get(format!("{}/api/now/table/{table}/{sys_id}", world.servicenow.url()))
            .query(&[("sysparm_display_value", "all"), ("sysparm_exclude_reference_link", "true")])
            .basic_auth(support::servicenow::DEFAULT_USERNAME, Some(support::servicenow::DEFAULT_PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fields = &shown["result"];
        for &(column, field, take) in expected {
            let want = match take {
                "value" => fields[field]["value"].as_str().unwrap_or_default().to_string(),
                "display" => fields[field]["display_value"].as_str().unwrap_or_default().to_string(),
                _ => fields[field]["value"]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("{}Z", v.replace(' ', "T")))
                    .unwrap_or_default(),
            };
            assert_eq!(text(row, column), want, "{number} {column} (from {field})");
        }
        assert_eq!(text(row, "ServiceDeskConnectionName_s"), "prod");
        assert!(text(row, "TimeGenerated").ends_with('Z'));
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} {table} rows checked");
}

/// The initial sync: 120 days of 50,000 incidents and 10,000 change requests arrive exactly once,
/// with ITSMC's columns right field by field; records older than the scope stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_sends_120_days_of_records_exactly_once() {
    let world = World::start(&[]).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(1_000, now - Duration::days(200), now - Duration::days(121));
    world.servicenow.seed_incidents(50_000, now - Duration::days(119), now - Duration::minutes(1));
    world.servicenow.seed_change_requests(10_000, now - Duration::days(119), now - Duration::minutes(1));

    let runs = world.sync().await;
    let incidents = report(&runs, "Incident");
    let changes = report(&runs, "ChangeRequest");
    assert_eq!((incidents.error.as_deref(), changes.error.as_deref()), (None, None));
    assert_eq!((incidents.sent, changes.sent), (50_000, 10_000));

    let numbers = world.sent_numbers();
    assert_eq!(numbers.len(), 60_000, "every record of the last 120 days");
    assert!(numbers.values().all(|&n| n == 1), "none twice");
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 60_000);
    // Every batch was under the limit, compressed, and taken.
    let uploads = world.ingestion.requests();
    assert!(uploads.iter().all(|r| r.status == 204 && r.json_bytes <= 1_000_000));
    assert!(uploads.iter().all(|r| r.content_encoding.as_deref() == Some("gzip")));

    check_sample(&world, "incident", EXPECTED_INCIDENT, 997).await;
    check_sample(&world, "change_request", EXPECTED_CHANGE, 199).await;

    // The connector log went too: one row per kind's run.
    let log = world.ingestion.rows(SERVICE_DESK_LOG_STREAM);
    let operations: HashSet<&str> = log.iter().map(|row| text(row, "Operation_s")).collect();
    assert!(operations.contains("sync Incident") && operations.contains("sync ChangeRequest"), "{log:?}");
    assert!(log.iter().all(|row| text(row, "LogType_s") == "INFO" && row["Status_b"] == true));
}

/// Records changed after a run arrive with the next one; a run with nothing new asks ServiceNow once per
/// kind and sends nothing.
#[tokio::test]
async fn later_changes_arrive_with_the_next_run_and_an_idle_run_costs_one_request_per_kind() {
    let world = World::start(&[("ITSMC_SYNC_PAGE_SIZE", "100")]).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(450, now - Duration::days(10), now - Duration::minutes(30));
    world.servicenow.seed_change_requests(120, now - Duration::days(10), now - Duration::minutes(30));
    let first = world.sync().await;
    assert_eq!((report(&first, "Incident").sent, report(&first, "ChangeRequest").sent), (450, 120));

    // Nothing new: one page each (the overlap window, all already sent), no upload.
    world.servicenow.clear_requests();
    let uploads = world.ingestion.request_count();
    let idle = world.sync().await;
    assert_eq!((report(&idle, "Incident").sent, report(&idle, "ChangeRequest").sent), (0, 0));
    assert_eq!((world.servicenow_requests("incident"), world.servicenow_requests("change_request")), (1, 1));
    let service_desk_uploads = world
        .ingestion
        .requests()
        .iter()
        .skip(uploads)
        .filter(|r| r.stream.as_deref() == Some(SERVICE_DESK_STREAM))
        .count();
    assert_eq!(service_desk_uploads, 0);

    // A person resolves three incidents and a new one is opened: exactly those four arrive.
    let records = world.servicenow.records("incident");
    let changed: Vec<String> = records.iter().take(3).map(|r| r["sys_id"].as_str().unwrap().to_string()).collect();
    for sys_id in &changed {
        assert!(world.servicenow.update("incident", sys_id, json!({"state": "6", "close_code": "Solved"})));
    }
    world.servicenow.insert("incident", json!({"short_description": "opened after the first sync", "urgency": "1"}));
    let next = world.sync().await;
    assert_eq!((report(&next, "Incident").sent, report(&next, "ChangeRequest").sent), (4, 0));
    let numbers = world.sent_numbers();
    assert_eq!(numbers.len(), 451 + 120);
    for record in records.iter().take(3) {
        assert_eq!(numbers[record["number"].as_str().unwrap()], 2, "resolved: a second row");
    }
    let resolved: Vec<_> = world.rows().into_iter().filter(|r| text(r, "IncidentState_s") == "Resolved").collect();
    assert!(resolved.len() >= 3);
}

/// More records in one second than fit in a page: the rest of that second is read by id, none lost or
/// repeated.
#[tokio::test]
async fn a_second_with_more_records_than_a_page_is_read_whole() {
    let world = World::start(&[("ITSMC_SYNC_PAGE_SIZE", "100")]).await;
    let second = (Utc::now() - Duration::hours(1)).format("%Y-%m-%d %H:%M:%S").to_string();
    let records = (0..350).map(|i| {
        let mut record = Map::new();
        record.insert("short_description".into(), json!(format!("bulk import {i}")));
        record.insert("sys_updated_on".into(), json!(second));
        record.insert("opened_at".into(), json!(second));
        record
    });
    world.servicenow.seed("incident", records);
    world.servicenow.seed_incidents(50, Utc::now() - Duration::days(2), Utc::now() - Duration::hours(2));
    let runs = world.sync().await;
    assert_eq!(report(&runs, "Incident").sent, 400);
    let numbers = world.sent_numbers();
    assert_eq!(numbers.len(), 400);
    assert!(numbers.values().all(|&n| n == 1));
}

/// Logs Ingestion fails after two batches were accepted: the watermark stays after the second, and a
/// restarted itsmc resumes from there: nothing missing, nothing re-sent beyond the overlap.
#[tokio::test]
async fn a_failure_mid_sync_then_a_restart_resume_without_a_gap() {
    let settings =
        [("ITSMC_SYNC_BATCH_BYTES", "60000"), ("ITSMC_SYNC_KINDS", "Incident"), ("ITSMC_SYNC_OVERLAP_SECS", "60")];
    let world = World::start(&settings).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(1_000, now - Duration::days(30), now - Duration::minutes(10));
    world.ingestion.fail_after(2, 50, 503, None);
    let failed = world.sync().await;
    let run = report(&failed, "Incident");
    assert!(run.error.as_deref().is_some_and(|e| e.contains("503")), "{run:?}");
    assert_eq!(run.batches, 2);
    let accepted = world.sent_numbers().len();
    assert_eq!(accepted as u64, run.sent);
    assert!(accepted > 0 && accepted < 1_000);

    // The watermark is the last accepted record's position.
    let key = itsmc::sync::watermark::key("prod", SyncKind::Incident);
    let (mark, _) = itsmc::sync::watermark::load(world.itsmc.intake.store.as_ref(), &key).await.unwrap().unwrap();
    let mut records = world.servicenow.records("incident");
    records.sort_by(|a, b| {
        (text(a, "sys_updated_on"), text(a, "sys_id")).cmp(&(text(b, "sys_updated_on"), text(b, "sys_id")))
    });
    let position = records.iter().position(|r| text(r, "sys_id") == mark.id).expect("the watermark names a record");
    assert_eq!(position + 1, accepted, "the watermark sits after exactly what was accepted");

    // Restart on the same state, the service healthy again.
    let World { servicenow, ingestion, itsmc, syncer, _identity, _ca } = world;
    drop(syncer);
    let dir = itsmc.data_dir.clone();
    let keep = itsmc.stop().await;
    let url = servicenow.url();
    let itsmc = Itsmc::start_in(
        &dir,
        &[
            ("ITSMC_PRODUCT", "servicenow"),
            ("ITSMC_CONNECTION_NAME", "prod"),
            ("ITSMC_URL", url.as_str()),
            ("ITSMC_USERNAME", support::servicenow::DEFAULT_USERNAME),
            ("ITSMC_PASSWORD", support::servicenow::DEFAULT_PASSWORD),
            settings[0],
            settings[1],
            settings[2],
        ],
    )
    .await;
    ingestion.clear();
    ingestion.clear_failures();
    let syncer = World::syncer(&itsmc, &_identity, &ingestion, &_ca);
    let resumed = syncer.run(&Request::default(), &|_| {}).await.unwrap();
    let run = report(&resumed.runs, "Incident");
    assert_eq!(run.error, None);
    let resent: HashSet<String> =
        ingestion.rows(SERVICE_DESK_STREAM).iter().map(|r| text(r, "ServiceDeskId_s").to_string()).collect();
    assert_eq!(resent.len() + accepted, 1_000, "the rest, and nothing accepted before");
    drop(keep);
}

/// Property: wherever Logs Ingestion starts failing, the watermark never passes a batch it did not take,
/// and the next run completes the set.
#[tokio::test]
async fn watermarks_never_pass_an_unaccepted_batch() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x17c);
    for case in 0..8 {
        let settings =
            [("ITSMC_SYNC_BATCH_BYTES", "20000"), ("ITSMC_SYNC_KINDS", "Incident"), ("ITSMC_SYNC_PAGE_SIZE", "73")];
        let world = World::start(&settings).await;
        let now = Utc::now();
        world.servicenow.seed_incidents(300, now - Duration::days(5), now - Duration::minutes(10));
        let ok = rng.random_range(0..12);
        let status = [500, 503, 429, 502][rng.random_range(0..4)];
        world.ingestion.fail_after(ok, 100, status, Some(0));
        let runs = world.sync().await;
        let run = report(&runs, "Incident");
        let accepted: HashSet<String> = world.sent_numbers().into_keys().collect();
        let key = itsmc::sync::watermark::key("prod", SyncKind::Incident);
        let mut records = world.servicenow.records("incident");
        records.sort_by(|a, b| {
            (text(a, "sys_updated_on"), text(a, "sys_id")).cmp(&(text(b, "sys_updated_on"), text(b, "sys_id")))
        });
        if let Some((mark, _)) = itsmc::sync::watermark::load(world.itsmc.intake.store.as_ref(), &key).await.unwrap() {
            for record in &records {
                if (text(record, "sys_updated_on"), text(record, "sys_id")) <= (mark.updated.as_str(), mark.id.as_str())
                {
                    assert!(
                        accepted.contains(text(record, "number")),
                        "case {case}: watermark passed an unsent record"
                    );
                }
            }
        }
        assert!(run.error.is_some() || accepted.len() == 300, "case {case}: {run:?}");

        // The service recovers: the next run sends exactly what is missing.
        world.ingestion.clear();
        world.ingestion.clear_failures();
        let before = accepted.len();
        let retried = world.sync().await;
        let run = report(&retried, "Incident");
        assert_eq!(run.error, None, "case {case}");
        let now_sent: HashSet<String> = world.sent_numbers().into_keys().collect();
        assert_eq!(now_sent.len() + before, 300, "case {case}: ok={ok}: the rest exactly once");
    }
}

/// 429 with Retry-After is waited out; a batch the service refuses (400) is kept for inspection and the sync
/// goes on without it.
#[tokio::test]
async fn throttling_is_waited_out_and_a_refused_batch_is_kept() {
    let world = World::start(&[("ITSMC_SYNC_BATCH_BYTES", "20000"), ("ITSMC_SYNC_KINDS", "Incident")]).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(200, now - Duration::days(5), now - Duration::minutes(10));
    world.ingestion.fail_next(2, 429, Some(1));
    let started = std::time::Instant::now();
    let runs = world.sync().await;
    // Two uploads run at once: each was told to wait a second, and did.
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "Retry-After: 1 waited");
    assert_eq!(report(&runs, "Incident").sent, 200);
    let statuses: Vec<u16> = world.ingestion.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 2);
    assert!(statuses[2..].iter().all(|&s| s == 204), "{statuses:?}");

    world.servicenow.seed_incidents(200, now - Duration::minutes(9), now - Duration::minutes(1));
    world.ingestion.clear();
    world.ingestion.fail_next(1, 400, None);
    let runs = world.sync().await;
    let run = report(&runs, "Incident");
    assert_eq!((run.refused, run.error.as_deref()), (1, None));
    assert!(run.sent > 0 && run.sent < 200, "{run:?}");
    let kept = world
        .itsmc
        .intake
        .store
        .scan(Table::Sync, Some(Filter { field: "state", value: "refused" }), None, 10)
        .await
        .unwrap();
    assert_eq!(kept.entries.len(), 1);
    let batch = &kept.entries[0].value;
    assert_eq!(batch["rows"].as_u64().unwrap() + run.sent, 200, "the refused rows are kept, not lost");
    assert!(batch["reason"].as_str().unwrap().contains("400"));
}

/// Without a Logs Ingestion endpoint the timer keeps the rows locally and `/api/servicedesk` shows them;
/// the timer's answer reports the sync.
#[tokio::test]
async fn without_an_endpoint_the_timer_keeps_rows_locally() {
    let world = World::start(&[]).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(40, now - Duration::days(3), now - Duration::minutes(5));
    world.servicenow.seed_change_requests(7, now - Duration::days(3), now - Duration::minutes(5));
    let envelope = support::harness::fixture("protocols/functions-customhandler-timer-request.json");
    let (status, answer) = world.itsmc.post("/function-sync", envelope).await;
    assert_eq!(status, 200);
    let logs: Vec<&str> = answer["Logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(logs.iter().any(|l| l.starts_with("sync prod Incident: 40 read, 40 sent")), "{logs:?}");
    let (status, incidents) = world.itsmc.get("/api/servicedesk?type=Incident").await;
    assert_eq!((status, incidents["total"].as_u64()), (200, Some(40)));
    assert_eq!(incidents["rows"][0]["ServiceDeskWorkItemType_s"], "Incident");
    let (_, changes) = world.itsmc.get("/api/servicedesk?type=ChangeRequest").await;
    assert_eq!(changes["total"], 7);
    let (status, bad) = world.itsmc.get("/api/servicedesk?type=Problem").await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_option")));
    let (_, health) = world.itsmc.get("/api/health").await;
    assert_eq!(health["sync"]["runs"][0]["state"]["sent"], 40, "{health}");
}

/// A sleeping developer instance answers with a web page: the run stops with a message that says so.
#[tokio::test]
async fn a_hibernating_instance_is_named_as_such() {
    let world = World::start(&[("ITSMC_OUTBOX_BACKOFF_MS", "1")]).await;
    world.servicenow.set_hibernating(true);
    let runs = world.sync().await;
    let error = report(&runs, "Incident").error.clone().unwrap_or_default();
    assert!(error.contains("hibernating") && error.contains("developer.servicenow.com"), "{error}");
    let (_, health) = world.itsmc.get("/api/health").await;
    let warnings = health["warnings"].to_string();
    assert!(warnings.contains("hibernating"), "{warnings}");
}

/// `itsmc sync` as an operator runs it, in its own process: the managed identity from `IDENTITY_ENDPOINT`
/// (the real `ManagedIdentityCredential`), Logs Ingestion over TLS trusted through `ITSMC_CA_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn itsmc_sync_runs_from_the_command_line_with_the_managed_identity() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let identity = IdentityEmulator::start(IdentityConfig::default());
    let ca = TestCa::new();
    let ingestion = LogsIngestionEmulator::start(&ca, identity.tokens());
    let now = Utc::now();
    servicenow.seed_incidents(25, now - Duration::days(20), now - Duration::minutes(5));
    servicenow.seed_incidents(5, now - Duration::days(50), now - Duration::days(40));
    servicenow.seed_change_requests(4, now - Duration::days(20), now - Duration::minutes(5));
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_itsmc"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("IDENTITY_ENDPOINT", identity.endpoint())
            .env("IDENTITY_HEADER", DEFAULT_IDENTITY_HEADER)
            .env("ITSMC_CA_FILE", ca.ca_file())
            .env("ITSMC_LOGS_ENDPOINT", ingestion.url())
            .env("ITSMC_DCR_IMMUTABLE_ID", ingestion.dcr_immutable_id())
            .env("ITSMC_PRODUCT", "servicenow")
            .env("ITSMC_CONNECTION_NAME", "prod")
            .env("ITSMC_URL", servicenow.url())
            .env("ITSMC_USERNAME", support::servicenow::DEFAULT_USERNAME)
            .env("ITSMC_PASSWORD", support::servicenow::DEFAULT_PASSWORD)
            .env("ITSMC_DATA_DIR", data.path());
        for (name, value) in extra {
            command.env(name, value);
        }
        support::capture::CaptureExt::captured_output(&mut command, "sync").expect("itsmc runs")
    };
    let output = tokio::task::block_in_place(|| run(&["sync", "--since", "30"], &[]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("prod Incident: 25 read, 25 sent"), "{stdout}");
    assert!(stdout.contains("prod ChangeRequest: 4 read, 4 sent"), "{stdout}");
    assert_eq!(ingestion.row_count(SERVICE_DESK_STREAM), 29);
    let uploads = ingestion.requests();
    let system_assigned = IdentityConfig::default().system_assigned.unwrap().client_id;
    assert!(uploads.iter().all(|r| r.status == 204 && r.client_id.as_deref() == Some(system_assigned.as_str())));
    assert!(uploads.iter().any(|r| r.stream.as_deref() == Some(SERVICE_DESK_LOG_STREAM)), "the connector log");

    // Wrong settings stop it before anything is read, naming the setting.
    let output = tokio::task::block_in_place(|| run(&["sync"], &[("ITSMC_SYNC_DAYS", "121")]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("ITSMC_SYNC_DAYS") && stderr.contains("1 to 120"), "{stderr}");
    let output = tokio::task::block_in_place(|| run(&["sync", "--since", "200"], &[]));
    assert!(!output.status.success());
    // Without the Monitoring Metrics Publisher role the run stops and says which role to grant.
    ingestion.set_publisher(&system_assigned, false);
    let output = tokio::task::block_in_place(|| run(&["sync", "--since", "30"], &[]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Monitoring Metrics Publisher"), "{stderr}");
}

/// Every alert operation leaves a `ServiceDeskLog_CL` row (ITSMC's columns and ours), sent with the next
/// flush; a failed one says why with a code.
#[tokio::test]
async fn alert_operations_are_logged_to_service_desk_log() {
    let world = World::start(&[("ITSMC_OUTBOX_BACKOFF_MS", "60000")]).await;
    let alert = |id: &str| {
        json!({
            "schemaId": "azureMonitorCommonAlertSchema",
            "data": {"essentials": {
                "alertId": format!("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{id}"),
                "alertRule": "cpu-high", "severity": "Sev2", "monitorCondition": "Fired",
                "alertTargetIDs": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"]
            }, "alertContext": {}}
        })
        .to_string()
    };
    let (status, created) = world.itsmc.alert("", &alert("logged-1")).await;
    assert_eq!(status, 200, "{created}");
    world.servicenow.fail_next(5, 503, None);
    let (status, _) = world.itsmc.alert("", &alert("logged-2")).await;
    assert_eq!(status, 202);
    world.syncer.flush_log().await;

    let log = world.ingestion.rows(SERVICE_DESK_LOG_STREAM);
    assert_eq!(log.len(), 2, "{log:?}");
    let ok = log.iter().find(|r| text(r, "Operation_s") == "created").expect("the created row");
    let number = created["workItems"][0]["number"].as_str().unwrap();
    assert_eq!(text(ok, "WorkItemId_s"), number);
    assert_eq!(text(ok, "LogType_s"), "INFO");
    assert_eq!(text(ok, "ServiceDeskConnectionName_s"), "prod");
    assert!(text(ok, "AlertId_s").ends_with("/alerts/logged-1"));
    assert!(text(ok, "Message").contains(number) && text(ok, "Message").contains("cpu-high"));
    // What the workbook's tiles group by, in columns of their own.
    let grouped = (text(ok, "AlertRule_s"), text(ok, "WorkItemType_s"), text(ok, "Computer"));
    assert_eq!(grouped, ("cpu-high", "Incident", "vm1"));
    assert_eq!(
        (ok["Status_b"].as_bool(), ok["HttpStatus_d"].as_f64(), ok["Attempt_d"].as_f64()),
        (Some(true), Some(200.0), Some(1.0))
    );
    assert!(ok["DurationMs_d"].as_f64().is_some());
    let failed = log.iter().find(|r| text(r, "Operation_s") == "queued").expect("the queued row");
    assert_eq!((text(failed, "LogType_s"), text(failed, "ErrorCode_s")), ("ERROR", "retrying"));
    assert!(text(failed, "ExceptionMessage_s").contains("503"), "{failed:?}");
    assert_eq!(failed["HttpStatus_d"].as_f64(), Some(202.0));
    assert!(world.itsmc.intake.log.is_empty(), "sent rows leave the buffer");
}

/// Records changed while a run reads are in that run or the next, in their changed form; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_changed_during_a_run_are_not_lost() {
    let world = World::start(&[("ITSMC_SYNC_PAGE_SIZE", "50"), ("ITSMC_SYNC_KINDS", "Incident")]).await;
    let now = Utc::now();
    world.servicenow.seed_incidents(600, now - Duration::days(3), now - Duration::minutes(10));
    world.servicenow.set_latency(std::time::Duration::from_millis(20));
    let changed: Vec<String> =
        world.servicenow.records("incident").iter().step_by(97).map(|r| text(r, "sys_id").to_string()).collect();
    let run = world.sync();
    let change = async {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        for sys_id in &changed {
            assert!(world.servicenow.update("incident", sys_id, json!({"short_description": "changed mid-run"})));
        }
    };
    let (first, ()) = tokio::join!(run, change);
    assert_eq!(report(&first, "Incident").error, None);
    let second = world.sync().await;
    assert_eq!(report(&second, "Incident").error, None);
    let rows = world.rows();
    let numbers: HashSet<&str> = rows.iter().map(|r| text(r, "ServiceDeskId_s")).collect();
    assert_eq!(numbers.len(), 600, "every incident");
    for sys_id in &changed {
        let number = world.servicenow.record("incident", sys_id).unwrap()["number"].as_str().unwrap().to_string();
        assert!(
            rows.iter().any(|r| text(r, "ServiceDeskId_s") == number && text(r, "Title_s") == "changed mid-run"),
            "{number}: its change arrived"
        );
    }
}
