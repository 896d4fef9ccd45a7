//! Cherwell end to end: itsmc started as `itsmc serve` wires it, with `ITSMC_PRODUCT=cherwell`, posting Azure
//! Monitor alerts over HTTP and checking the incidents, journal notes and sync rows in the CSM emulator; the
//! connection test; and the Cherwell settings.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use itsmc::config::{Config, Product, SecretSetting};
use itsmc::itsm::cherwell::AuthMode;
use serde_json::{Value, json};
use support::cherwell::{
    CherwellEmulator, DEFAULT_CLIENT_ID, DEFAULT_CUSTOMER, DEFAULT_PASSWORD, DEFAULT_USERNAME, EmulatorConfig, Rights,
};
use support::harness::{Itsmc, eventually, fixture, metric_alert};
use support::itsm::{EmulatedItsm, start_itsmc};

fn emulator() -> CherwellEmulator {
    CherwellEmulator::start(EmulatorConfig::default())
}

/// itsmc with the emulator's settings (as `EmulatedItsm` gives them) plus `extra`, which win.
async fn itsmc(csm: &CherwellEmulator, extra: &[(&str, &str)]) -> Itsmc {
    start_itsmc(csm, Some("csm"), extra).await
}

fn fired(alert_id: &str, at: &str) -> String {
    metric_alert(alert_id, "Fired", at, "Sev3")
}

fn resolved(alert_id: &str) -> String {
    metric_alert(alert_id, "Resolved", "2026-11-25T12:00:00Z", "Sev3")
}

fn incident(csm: &CherwellEmulator, rec_id: &str) -> HashMap<String, String> {
    csm.record("Incident", rec_id).expect("the incident exists").into_iter().collect()
}

#[tokio::test]
async fn an_alert_creates_one_incident_with_the_mapped_fields() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[("ITSMC_CATEGORY", "Hardware")]).await;
    let (status, answer) = itsmc.alert("", &fired("c1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let item = &answer["workItems"][0];
    assert_eq!((item["connection"].as_str(), item["type"].as_str()), (Some("csm"), Some("Incident")));
    assert_eq!(item["number"], "100001", "the public id is the number people use");
    let url = item["url"].as_str().unwrap();
    assert!(url.ends_with("/CherwellClient/Access/Incident/100001"), "{url}");

    let all = csm.records("Incident");
    assert_eq!(all.len(), 1);
    let record = incident(&csm, item["id"].as_str().unwrap());
    assert_eq!(record["ShortDescription"], "test-metricAlertRule on test-storageAccount");
    assert!(record["Description"].contains("Azure Monitor alert \"test-metricAlertRule\" fired."));
    assert_eq!(record["Priority"], "4", "Sev3 is urgency 2 and impact 3: priority 4");
    assert_eq!(record["CustomerDisplayName"], DEFAULT_CUSTOMER);
    assert!(!record["CustomerRecID"].is_empty(), "CSM resolved the customer");
    assert_eq!(record["Category"], "Hardware");
    assert_eq!(record["Status"], "New");
    let key = &record["ItsmcCorrelationKey"];
    assert!(key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");

    assert_eq!(csm.token_grants(), ["password"]);
    let requests = csm.requests();
    assert!(requests.iter().filter(|r| r.path.starts_with("/api/")).all(|r| r.bearer));
    let token = requests.iter().find(|r| r.path == "/token").unwrap();
    for part in ["grant_type=password", &format!("client_id={DEFAULT_CLIENT_ID}"), "auth_mode=Internal"] {
        assert!(token.body.contains(part), "{}", token.body);
    }
    // The business object's ids are read once: a second alert sends no summary or template request.
    let configuration =
        |r: &support::cherwell::RequestLog| r.path.contains("getbusinessobjectsummary") || r.path.contains("template");
    let before = csm.requests().iter().filter(|r| configuration(r)).count();
    itsmc.alert("", &fired("c1-other", "2026-11-25T12:00:00Z")).await;
    assert_eq!(csm.requests().iter().filter(|r| configuration(r)).count(), before);
}

#[tokio::test]
async fn a_refire_adds_a_journal_note_and_a_resolve_resolves() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    let (_, first) = itsmc.alert("", &fired("c2", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();

    let (status, again) = itsmc.alert("", &fired("c2", "2026-11-25T12:05:00Z")).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("updated")), "{again}");
    assert_eq!(again["workItems"][0]["id"], id.as_str());
    let notes = csm.notes(&id);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("fired again") && notes[0].contains("2 times"), "{notes:?}");
    assert!(csm.records("Journal").iter().all(|j| j["JournalTypeName"] == "Journal - Note"));

    let (status, done) = itsmc.alert("", &resolved("c2")).await;
    assert_eq!((status, done["action"].as_str()), (200, Some("resolved")), "{done}");
    let record = incident(&csm, &id);
    assert_eq!(record["Status"], "Resolved");
    assert!(record["CloseDescription"].contains("was resolved at 2026-11-25T12:30:00"), "{record:?}");
    assert!(!record["Stat_DateTimeResolved"].is_empty());
    assert_eq!(csm.records("Incident").len(), 1);
    assert!(!csm.items("Incident")[0].open);
}

/// A person closed (or resolved) the incident before the alert resolved: their close stands, the resolve
/// succeeds without a save.
#[tokio::test]
async fn a_resolve_leaves_an_incident_a_person_closed_as_it_is() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    for (alert, status) in [("r1", "Closed"), ("r2", "Resolved")] {
        let (_, first) = itsmc.alert("", &fired(alert, "2026-11-25T12:00:00Z")).await;
        let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
        let note = format!("{status} by the service desk: a false alarm");
        assert!(csm.update("Incident", &id, &[("Status", status), ("CloseDescription", &note)]));
        let before = incident(&csm, &id);
        let saves = || csm.requests().iter().filter(|r| r.path == "/api/V1/savebusinessobject").count();
        let saved = saves();

        let (code, done) = itsmc.alert("", &resolved(alert)).await;
        assert_eq!((code, done["action"].as_str()), (200, Some("resolved")), "{done}");
        assert_eq!(saves(), saved, "nothing was saved over the person's {status}");
        let after = incident(&csm, &id);
        assert_eq!(after["Status"], status);
        assert_eq!(after["CloseDescription"], note);
        assert_eq!(after["LastModifiedDateTime"], before["LastModifiedDateTime"]);
    }
}

async fn refire_after_close(policy: &str) -> (CherwellEmulator, Value, String) {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[("ITSMC_REFIRE_AFTER_CLOSE", policy)]).await;
    let (_, first) = itsmc.alert("", &fired("c3", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    // A person closes the incident in CSM.
    csm.close(&id);
    let (status, answer) = itsmc.alert("", &fired("c3", "2026-11-25T13:00:00Z")).await;
    assert_eq!(status, 200, "{answer}");
    drop(itsmc);
    (csm, answer, id)
}

#[tokio::test]
async fn a_refire_after_close_follows_the_policy() {
    let (csm, answer, first) = refire_after_close("new").await;
    assert_eq!(answer["action"], "created");
    assert_ne!(answer["workItems"][0]["id"], first.as_str());
    assert_eq!(csm.records("Incident").len(), 2);
    assert_eq!(incident(&csm, &first)["Status"], "Closed");

    let (csm, answer, id) = refire_after_close("reopen").await;
    assert_eq!(
        (answer["action"].as_str(), answer["workItems"][0]["id"].as_str()),
        (Some("updated"), Some(id.as_str()))
    );
    assert_eq!(incident(&csm, &id)["Status"], "Reopened");
    assert_eq!(incident(&csm, &id)["ClosedDateTime"], "", "reopening clears the close");
    assert!(csm.notes(&id).iter().any(|n| n.contains("fired again")));

    let (csm, answer, id) = refire_after_close("ignore").await;
    assert_eq!(answer["action"], "ignored");
    assert_eq!(incident(&csm, &id)["Status"], "Closed");
    assert_eq!(csm.records("Incident").len(), 1);
}

#[tokio::test]
async fn the_same_delivery_twice_does_nothing_the_second_time() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    let body = fired("c4", "2026-11-25T12:00:00Z");
    let (_, first) = itsmc.alert("", &body).await;
    let (status, second) = itsmc.alert("", &body).await;
    assert_eq!((status, second["action"].as_str()), (200, Some("duplicate")));
    assert_eq!(second["workItems"], first["workItems"]);
    assert_eq!(csm.records("Incident").len(), 1);
    assert!(csm.notes(first["workItems"][0]["id"].as_str().unwrap()).is_empty());
}

#[tokio::test]
async fn cherwell_down_queues_the_alert_then_creates_it_once_when_back() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    csm.set_down(true);
    let body = fired("c5", "2026-11-25T12:00:00Z");
    let (status, answer) = itsmc.alert("", &body).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["pending"][0]["lastError"].as_str().unwrap().contains("503"), "{listed}");
    let (status, again) = itsmc.alert("", &body).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("duplicate")));

    csm.set_down(false);
    assert!(eventually(10, || csm.records("Incident").len() == 1).await, "the outbox delivered it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(csm.records("Incident").len(), 1, "exactly once");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().unwrap().len(), 0, "{listed}");
}

#[tokio::test]
async fn rate_limited_requests_wait_for_retry_after() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    csm.fail_next(1, 429, Some(1));
    let started = std::time::Instant::now();
    let (status, _) = itsmc.alert("", &fired("c6", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202);
    assert!(eventually(10, || csm.records("Incident").len() == 1).await);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was honoured");
}

/// CSM answers a save that breaks its rules with HTTP 200, `hasError` and field errors: no retry helps, so
/// the delivery is dead-lettered at once, and the message names the field.
#[tokio::test]
async fn field_errors_on_http_200_dead_letter_the_alert_with_the_field_named() {
    let csm = emulator();
    // No customer: CSM requires one on incidents.
    let itsmc = itsmc(&csm, &[("ITSMC_CALLER_ID", "")]).await;
    let (status, answer) = itsmc.alert("", &fired("c7", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("itsm_rejected")), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("CustomerDisplayName") && message.contains("required"), "{message}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let dead = listed["deadLetters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert!(dead[0]["lastError"].as_str().unwrap().contains("CustomerDisplayName"), "{listed}");
    let saves = csm.requests().iter().filter(|r| r.path == "/api/V1/savebusinessobject" && r.status == 200).count();
    assert_eq!(saves, 1, "tried once, not retried");
    assert!(csm.records("Incident").is_empty());

    // A customer CSM does not know is refused the same way.
    let other = support::cherwell::CherwellEmulator::start(EmulatorConfig::default());
    let itsmc = self::itsmc(&other, &[("ITSMC_CALLER_ID", "Nobody Known")]).await;
    let (_, answer) = itsmc.alert("", &fired("c7b", "2026-11-25T12:00:00Z")).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("'Nobody Known' is not a valid value"), "{answer}");
}

#[tokio::test]
async fn work_item_types_cherwell_lacks_are_refused() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    let (status, answer) = itsmc.alert("?workItemType=Event", &fired("c8", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("itsm_rejected")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("Cherwell has no Event work items"), "{answer}");
    assert!(csm.requests().iter().all(|r| r.path != "/api/V1/savebusinessobject"));
}

#[tokio::test]
async fn tokens_are_renewed_with_the_refresh_token_then_the_password() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    assert_eq!(itsmc.alert("", &fired("t1", "2026-11-25T12:00:00Z")).await.0, 200);
    assert_eq!(csm.token_grants(), ["password"]);

    // The token expired early (CSM restarted, a short lifetime): a 401, then a refresh, then the request again.
    csm.expire_access_tokens();
    assert_eq!(itsmc.alert("", &fired("t2", "2026-11-25T12:00:00Z")).await.0, 200);
    assert_eq!(csm.token_grants(), ["password", "refresh_token"]);
    let denied = csm.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(denied, 1, "one refused request, sent again with the new token");

    // The user was logged out: the refresh token is refused, and itsmc signs in with the password.
    csm.expire_access_tokens();
    csm.revoke_refresh_tokens();
    assert_eq!(itsmc.alert("", &fired("t3", "2026-11-25T12:00:00Z")).await.0, 200);
    assert_eq!(csm.token_grants(), ["password", "refresh_token", "refresh_token", "password"]);
    assert_eq!(csm.records("Incident").len(), 3);
}

#[tokio::test]
async fn tokens_are_renewed_before_they_expire() {
    let csm = CherwellEmulator::start(EmulatorConfig {
        access_token_lifetime: Duration::from_secs(2),
        ..EmulatorConfig::default()
    });
    let itsmc = itsmc(&csm, &[]).await;
    itsmc.alert("", &fired("t4", "2026-11-25T12:00:00Z")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    itsmc.alert("", &fired("t5", "2026-11-25T12:00:00Z")).await;
    assert_eq!(csm.token_grants(), ["password", "refresh_token"]);
    assert!(csm.requests().iter().all(|r| r.status != 401), "renewed ahead, never refused");
}

#[tokio::test]
async fn wrong_credentials_keep_the_alert_and_never_show_the_password() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[("ITSMC_PASSWORD", "wrong-Pa55-never-logged")]).await;
    let (status, answer) = itsmc.alert("", &fired("t6", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202, "kept for when the credentials are fixed: {answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let text = listed.to_string();
    assert!(text.contains("Could not login to system with the provided user ID and password"), "{text}");
    assert!(!text.contains("wrong-Pa55-never-logged"));
}

/// A refused password is not sent again on every retry of every queued alert: that would lock a directory
/// account. One password grant, however many alerts wait and however often they are retried.
#[tokio::test]
async fn a_refused_password_is_not_tried_again_by_every_retry() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[("ITSMC_PASSWORD", "wrong-password")]).await;
    for n in 0..5 {
        let (status, answer) = itsmc.alert("", &fired(&format!("g{n}"), "2026-11-25T12:00:00Z")).await;
        assert_eq!(status, 202, "{answer}");
    }
    // Retried every 50 ms or so (ITSMC_OUTBOX_BACKOFF_MS, with its backoff).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(csm.token_grants(), ["password"], "one sign-in with the refused password");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let pending = listed["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 5, "{listed}");
    assert!(pending.iter().all(|p| p["lastError"].as_str().unwrap().contains("Could not login")), "{listed}");
    assert!(listed.to_string().contains("not signing in again"), "{listed}");
    assert!(csm.records("Incident").is_empty());
}

/// An administrator re-created a field: CSM no longer knows the id itsmc kept, so itsmc reads the business
/// object's template again and the alert still goes through.
#[tokio::test]
async fn a_field_id_csm_no_longer_knows_is_read_again() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    itsmc.alert("", &fired("f1", "2026-11-25T12:00:00Z")).await;
    let templates = || csm.requests().iter().filter(|r| r.path == "/api/V1/getbusinessobjecttemplate").count();
    let before = templates();
    csm.change_field_id("Incident", "Description");
    let (status, answer) = itsmc.alert("", &fired("f2", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    assert_eq!(templates(), before + 1, "the template was read once more");
    assert_eq!(csm.records("Incident").len(), 2);
}

#[tokio::test]
async fn a_lost_state_directory_brings_no_duplicate() {
    let csm = emulator();
    let first = itsmc(&csm, &[]).await;
    let (_, created) = first.alert("", &fired("l1", "2026-11-25T12:00:00Z")).await;
    let id = created["workItems"][0]["id"].as_str().unwrap().to_string();
    drop(first.stop().await);
    let second = itsmc(&csm, &[]).await;
    let (_, again) = second.alert("", &fired("l1", "2026-11-25T12:10:00Z")).await;
    assert_eq!((again["action"].as_str(), again["workItems"][0]["id"].as_str()), (Some("updated"), Some(id.as_str())));
    let third = itsmc(&csm, &[]).await;
    let (_, done) = third.alert("", &resolved("l1")).await;
    assert_eq!(done["action"], "resolved", "found by its correlation key: {done}");
    assert_eq!(csm.records("Incident").len(), 1);
}

fn report<'a>(runs: &'a [itsmc::sync::run::KindReport], kind: &str) -> &'a itsmc::sync::run::KindReport {
    runs.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("no {kind} run in {runs:?}"))
}

async fn servicedesk_rows(itsmc: &Itsmc, kind: &str) -> Vec<Value> {
    let store = itsmc.intake.store.as_ref();
    itsmc::ingest::local::LocalRows::rows(store, kind, 1_000_000).await.unwrap()
}

/// A backlog with many records in each shown second (in millisecond order, not record id order) and one
/// second holding more records than a page: every record arrives exactly once, and a second run sends nothing.
#[tokio::test]
async fn the_sync_reads_a_seeded_backlog_exactly_once() {
    let csm = emulator();
    let now = Utc::now();
    let start = now - chrono::Duration::days(3);
    csm.seed_incidents(1_200, start, start + chrono::Duration::minutes(4));
    // 250 changes in one second: more than a page.
    let burst = start + chrono::Duration::hours(2);
    csm.seed_incidents(250, burst, burst + chrono::Duration::milliseconds(900));
    csm.seed_change_requests(300, start, start + chrono::Duration::minutes(1));
    let itsmc = itsmc(&csm, &[("ITSMC_SYNC_PAGE_SIZE", "100")]).await;

    let report_all = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    let incidents = report(&report_all.runs, "Incident");
    assert_eq!((incidents.sent, incidents.error.as_deref()), (1_450, None), "{incidents:?}");
    let changes = report(&report_all.runs, "ChangeRequest");
    assert_eq!((changes.sent, changes.error.as_deref()), (300, None), "{changes:?}");
    // The burst second was read whole, in further pages of the query for one second.
    let searches: Vec<String> =
        csm.requests().into_iter().filter(|r| r.path == "/api/V1/getsearchresults").map(|r| r.body).collect();
    assert!(searches.iter().any(|b| b.contains("\"operator\":\"lt\"") && b.contains("\"pageNumber\":2")));
    assert!(searches.len() < 60, "{} searches for 1,750 records in pages of 100", searches.len());

    let rows = servicedesk_rows(&itsmc, "Incident").await;
    let ids: HashSet<&str> = rows.iter().map(|r| r["ServiceDeskId_s"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), ids.len()), (1_450, 1_450), "one row per incident");
    let seeded: HashSet<String> = csm.records("Incident").into_iter().map(|r| r["IncidentID"].clone()).collect();
    assert_eq!(ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>(), seeded);

    // One record, column by column.
    let record = csm.records("Incident").into_iter().next().unwrap();
    let row = rows.iter().find(|r| r["ServiceDeskId_s"] == record["IncidentID"].as_str()).unwrap();
    let format = csm.date_format();
    let iso = |shown: &str| {
        chrono::NaiveDateTime::parse_from_str(shown, &format).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    assert_eq!(row["ServiceDeskConnectionName_s"], "csm");
    assert_eq!(row["ServiceDeskWorkItemType_s"], "Incident");
    assert_eq!(row["IncidentState_s"], record["Status"].as_str());
    assert_eq!(row["Priority_s"], record["Priority"].as_str());
    assert_eq!(row["Title_s"], record["ShortDescription"].as_str());
    assert_eq!(row["Description_s"], record["Description"].as_str());
    assert_eq!(row["AssignedTo_s"], record["AssignedTo"].as_str());
    assert_eq!(row["Source_s"], record["CallSource"].as_str());
    assert_eq!(row["CreatedDate_t"], iso(&record["CreatedDateTime"]).as_str());
    assert_eq!(row["LastModifiedDate_t"], iso(&record["LastModifiedDateTime"]).as_str());
    let changes = servicedesk_rows(&itsmc, "ChangeRequest").await;
    assert_eq!(changes.len(), 300);
    assert!(changes.iter().all(|r| r["CRState_s"].is_string() && r["PlannedStartDate_t"].is_string()));

    // Nothing changed since: nothing is sent again.
    let again = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    assert_eq!(report(&again.runs, "Incident").sent, 0, "{:?}", again.runs);
    assert_eq!(report(&again.runs, "ChangeRequest").sent, 0);

    // A person resolves one: the next run sends that one.
    let rec_id = record["RecID"].clone();
    assert!(csm.update("Incident", &rec_id, &[("Status", "Resolved")]));
    let later = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    assert_eq!(report(&later.runs, "Incident").sent, 1, "{:?}", later.runs);
    let rows = servicedesk_rows(&itsmc, "Incident").await;
    let updated = rows.iter().find(|r| r["ServiceDeskId_s"] == record["IncidentID"].as_str()).unwrap();
    assert_eq!(updated["IncidentState_s"], "Resolved");
}

/// With a culture whose date-times show minutes only, a shown time is a minute: still every record once.
#[tokio::test]
async fn the_sync_works_at_the_resolution_csm_shows() {
    let format = "%d/%m/%Y %H:%M";
    let csm = CherwellEmulator::start(EmulatorConfig { date_format: format.into(), ..EmulatorConfig::default() });
    let start = Utc::now() - chrono::Duration::days(2);
    csm.seed_incidents(400, start, start + chrono::Duration::minutes(3));
    let itsmc = itsmc(
        &csm,
        &[("ITSMC_SYNC_PAGE_SIZE", "50"), ("ITSMC_CHERWELL_DATE_FORMAT", format), ("ITSMC_SYNC_KINDS", "Incident")],
    )
    .await;
    let run = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    assert_eq!((run.runs[0].sent, run.runs[0].error.as_deref()), (400, None), "{:?}", run.runs);
    let rows = servicedesk_rows(&itsmc, "Incident").await;
    let ids: HashSet<&str> = rows.iter().map(|r| r["ServiceDeskId_s"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 400);
    assert!(rows.iter().all(|r| r["LastModifiedDate_t"].as_str().unwrap().ends_with(":00Z")));
}

/// A record CSM sends with an empty or odd last-modified time, or without its record id, is left out (with a
/// warning) and the sync goes on; a page none of whose times is in the date format stops it, naming the setting.
#[tokio::test]
async fn the_sync_skips_a_malformed_record_but_not_a_wrong_date_format() {
    let csm = emulator();
    let start = Utc::now() - chrono::Duration::days(1);
    csm.seed_incidents(20, start, start + chrono::Duration::minutes(2));
    let records = csm.records("Incident");
    let (empty, odd, no_id) = (&records[3], &records[7], &records[11]);
    csm.show_as(&empty["RecID"], "LastModifiedDateTime", "");
    csm.show_as(&odd["RecID"], "LastModifiedDateTime", "not a date");
    csm.drop_rec_id(&no_id["RecID"]);
    let itsmc = itsmc(&csm, &[("ITSMC_SYNC_PAGE_SIZE", "5"), ("ITSMC_SYNC_KINDS", "Incident")]).await;
    let run = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    assert_eq!((run.runs[0].sent, run.runs[0].error.as_deref()), (17, None), "{:?}", run.runs);
    let rows = servicedesk_rows(&itsmc, "Incident").await;
    let ids: HashSet<&str> = rows.iter().map(|r| r["ServiceDeskId_s"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 17);
    for skipped in [empty, odd, no_id] {
        assert!(!ids.contains(skipped["IncidentID"].as_str()), "{skipped:?}");
    }

    // The API user's culture writes times another way than ITSMC_CHERWELL_DATE_FORMAT says: every time is odd.
    let csm = emulator();
    csm.seed_incidents(4, start, start + chrono::Duration::minutes(1));
    for record in csm.records("Incident") {
        csm.show_as(&record["RecID"], "LastModifiedDateTime", "2026-11-25T12:00:00Z");
    }
    let itsmc = self::itsmc(&csm, &[("ITSMC_SYNC_KINDS", "Incident")]).await;
    let run = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.unwrap();
    let error = run.runs[0].error.as_deref().unwrap_or_default();
    assert_eq!(run.runs[0].sent, 0, "{:?}", run.runs);
    assert!(error.contains("ITSMC_CHERWELL_DATE_FORMAT") && error.contains("2026-11-25T12:00:00Z"), "{error}");
}

async fn test(itsmc: &Itsmc) -> Value {
    let (status, answer) = itsmc.post("/api/connections/csm/test", "").await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_connection_test_tells_apart_what_is_wrong() {
    let csm = emulator();
    let good = itsmc(&csm, &[]).await;
    let ok = test(&good).await;
    assert_eq!((ok["ok"].as_bool(), ok["code"].as_str()), (Some(true), Some("ok")), "{ok}");
    assert!(ok["message"].as_str().unwrap().contains("Incident and ChangeRequest"), "{ok}");

    let wrong_password = itsmc(&csm, &[("ITSMC_PASSWORD", "not-it")]).await;
    let answer = test(&wrong_password).await;
    assert_eq!(answer["code"], "wrong_credentials", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("user name, password"), "{answer}");

    let wrong_key = itsmc(&csm, &[("ITSMC_CLIENT_ID", "not-a-registered-key")]).await;
    let answer = test(&wrong_key).await;
    assert_eq!(answer["code"], "wrong_credentials", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("REST API client key"), "{answer}");

    let ldap = itsmc(&csm, &[("ITSMC_CHERWELL_AUTH_MODE", "LDAP")]).await;
    assert_eq!(test(&ldap).await["code"], "wrong_credentials", "the user signs in with Internal only");

    csm.set_rights(DEFAULT_USERNAME, "ChangeRequest", Rights { view: false, ..Rights::ALL });
    let answer = test(&good).await;
    assert_eq!(answer["code"], "missing_role", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("ChangeRequest"), "{answer}");
    csm.set_rights(DEFAULT_USERNAME, "ChangeRequest", Rights::ALL);

    csm.fail_next(1, 429, Some(30));
    let answer = test(&good).await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("30 s"));

    csm.set_down(true);
    assert_eq!(test(&good).await["code"], "unavailable");
    csm.set_down(false);

    let port = support::harness::free_port();
    let nowhere = format!("http://127.0.0.1:{port}/CherwellAPI");
    let unreachable = itsmc(&csm, &[("ITSMC_URL", nowhere.as_str())]).await;
    let answer = test(&unreachable).await;
    assert_eq!(answer["code"], "unreachable", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("ITSMC_URL"), "{answer}");

    // The health route shows the last result.
    let (_, health) = unreachable.get("/api/health").await;
    assert_eq!(health["connections"][0]["status"]["code"], "unreachable", "{health}");

    let (status, unknown) = good.post("/api/connections/nope/test", "").await;
    assert_eq!((status, unknown["error"]["code"].as_str()), (404, Some("unknown_connection")));
}

#[tokio::test]
async fn a_connection_test_names_the_missing_correlation_field_and_unknown_statuses() {
    let csm = CherwellEmulator::start(EmulatorConfig { correlation_field: None, ..EmulatorConfig::default() });
    let itsmc = itsmc(&csm, &[]).await;
    let answer = test(&itsmc).await;
    assert_eq!(answer["code"], "missing_field", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("ItsmcCorrelationKey"), "{answer}");

    let csm = emulator();
    let itsmc = self::itsmc(
        &csm,
        &[("ITSMC_CHERWELL_RESOLVED_STATUS", "Done"), ("ITSMC_CHERWELL_CLOSED_STATUSES", "Done,Closed")],
    )
    .await;
    let answer = test(&itsmc).await;
    assert_eq!(answer["code"], "invalid_values", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("'Done'"), "{answer}");
    // A refresh reads the statuses CSM offers.
    let (status, refreshed) = itsmc.post("/api/connections/csm/refresh", "").await;
    assert_eq!(status, 200, "{refreshed}");
}

#[tokio::test]
async fn a_refresh_keeps_the_statuses_and_checks_configured_values() {
    let csm = emulator();
    let itsmc = itsmc(&csm, &[]).await;
    let (status, refreshed) = itsmc.post("/api/connections/csm/refresh", "").await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["diagnosis"]["code"], "ok", "{refreshed}");
    let statuses: Vec<&str> = refreshed["configuration"]["choices"]["Status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"Resolved") && statuses.contains(&"Reopened"), "{statuses:?}");
}

#[tokio::test]
async fn a_missing_correlation_field_rejects_the_alert_naming_the_field() {
    let csm = CherwellEmulator::start(EmulatorConfig { correlation_field: None, ..EmulatorConfig::default() });
    let itsmc = itsmc(&csm, &[]).await;
    let (status, answer) = itsmc.alert("", &fired("m1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("itsm_rejected")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("no field named ItsmcCorrelationKey"), "{answer}");
    let templates = csm.requests().iter().filter(|r| r.path == "/api/V1/getbusinessobjecttemplate").count();
    assert_eq!(templates, 2, "read once more in case it was just added, then refused");
}

// -------------------------------------------------------------------------------------------------
// The emulator speaks the documented protocol
// -------------------------------------------------------------------------------------------------

async fn sign_in(csm: &CherwellEmulator, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("{}/token", csm.url())).form(form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn api(csm: &CherwellEmulator, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}/api/V1/{path}", csm.url());
    let request = match body {
        Some(body) => client.post(url).json(&body),
        None => client.get(url),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn the_emulator_answers_in_the_documented_shapes() {
    let csm = emulator();
    let password = [
        ("grant_type", "password"),
        ("client_id", DEFAULT_CLIENT_ID),
        ("username", DEFAULT_USERNAME),
        ("password", DEFAULT_PASSWORD),
    ];
    let (status, token) = sign_in(&csm, &password).await;
    assert_eq!(status, 200);
    let documented: Value = serde_json::from_str(&fixture("protocols/cherwell-token-response.json")).unwrap();
    assert_eq!(keys(&token), keys(&documented));
    assert_eq!((token["token_type"].as_str(), token["expires_in"].as_u64()), (Some("bearer"), Some(1199)));
    assert!(chrono::DateTime::parse_from_rfc2822(token[".expires"].as_str().unwrap()).is_ok());

    // Refusals, as the Errors page prints them: a JSON string holding the object.
    let (status, refused) = sign_in(&csm, &[password[0], ("client_id", "12345"), password[2], password[3]]).await;
    let inner: Value = serde_json::from_str(refused.as_str().unwrap()).unwrap();
    assert_eq!((status, inner["error"].as_str()), (400, Some("invalid_client_id")));
    assert_eq!(inner["error_description"], "Client 12345 is not registered in the system.");
    let (status, refused) = sign_in(&csm, &[password[0], password[1], password[2], ("password", "no")]).await;
    let inner: Value = serde_json::from_str(refused.as_str().unwrap()).unwrap();
    assert_eq!((status, inner["error"].as_str()), (400, Some("invalid_grant")));

    // A refresh token is good once.
    let refresh = token["refresh_token"].as_str().unwrap().to_string();
    let grant =
        [("grant_type", "refresh_token"), ("client_id", DEFAULT_CLIENT_ID), ("refresh_token", refresh.as_str())];
    assert_eq!(sign_in(&csm, &grant).await.0, 200);
    assert_eq!(sign_in(&csm, &grant).await.0, 400);

    let access = token["access_token"].as_str().unwrap();
    let (status, denied) = api(&csm, "not-a-token", "getbusinessobjectsummary/busobname/Incident", None).await;
    assert_eq!((status, denied["Message"].as_str()), (401, Some("Authorization has been denied for this request.")));

    let (status, summaries) = api(&csm, access, "getbusinessobjectsummary/busobname/Incident", None).await;
    assert_eq!(status, 200);
    let recorded: Value =
        serde_json::from_str(&fixture("protocols/cherwell-business-object-summary-item.json")).unwrap();
    assert_eq!(keys(&summaries[0]), keys(&recorded));
    for key in ["busObId", "stateFieldId", "firstRecIdField", "states", "name"] {
        assert_eq!(summaries[0][key], recorded[key], "{key}");
    }
    assert_eq!(api(&csm, access, "getbusinessobjectsummary/busobname/NoSuchThing", None).await.1, json!([]));
    let (_, journal) = api(&csm, access, "getbusinessobjectsummary/busobname/Journal", None).await;
    assert!(journal[0]["groupSummaries"].as_array().unwrap().iter().any(|m| m["displayName"] == "Journal - Note"));

    // A save missing a required field: HTTP 200, hasError, the field's error.
    let incident = summaries[0]["busObId"].as_str().unwrap();
    let (_, template) =
        api(&csm, access, "getbusinessobjecttemplate", Some(json!({"busObId": incident, "includeAll": true}))).await;
    let id = |name: &str| {
        template["fields"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["fieldId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let field = |name: &str, value: &str| json!({"dirty": true, "fieldId": id(name), "name": name, "value": value});
    let save = json!({"busObId": incident, "fields": [field("Description", "x")], "persist": true});
    let (status, answer) = api(&csm, access, "savebusinessobject", Some(save)).await;
    assert_eq!((status, answer["hasError"].as_bool()), (200, Some(true)), "{answer}");
    let errors = answer["fieldValidationErrors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["fieldId"] == id("CustomerDisplayName").as_str()), "{answer}");
    assert!(errors.iter().any(|e| e["fieldId"] == id("Priority").as_str()), "{answer}");

    // Search: filters on one field are ORed, on different fields ANDed; sortDirection 0 is descending.
    for (priority, source) in [("1", "Phone"), ("2", "Email"), ("3", "Phone")] {
        let save = json!({"busObId": incident, "persist": true, "fields": [
            field("Description", "d"), field("Priority", priority), field("CustomerDisplayName", DEFAULT_CUSTOMER),
            field("CallSource", source),
        ]});
        assert_eq!(api(&csm, access, "savebusinessobject", Some(save)).await.1["hasError"], false);
    }
    let search = json!({
        "busObId": incident,
        "filters": [
            {"fieldId": id("Priority"), "operator": "eq", "value": "1"},
            {"fieldId": id("Priority"), "operator": "eq", "value": "3"},
            {"fieldId": format!("BO:{incident},FI:{}", id("CallSource")), "operator": "eq", "value": "phone"},
        ],
        "sorting": [{"fieldId": id("Priority"), "sortDirection": 0}],
        "fields": [id("Priority")],
        "pageNumber": 1, "pageSize": 10,
    });
    let (status, found) = api(&csm, access, "getsearchresults", Some(search)).await;
    assert_eq!((status, found["totalRows"].as_u64()), (200, Some(2)), "{found}");
    let priorities: Vec<&str> = found["businessObjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["fields"][0]["value"].as_str().unwrap())
        .collect();
    assert_eq!(priorities, ["3", "1"]);
    let rec_id = found["businessObjects"][0]["busObRecId"].as_str().unwrap();
    let (status, read) =
        api(&csm, access, &format!("getbusinessobject/busobid/{incident}/busobrecid/{rec_id}"), None).await;
    assert_eq!((status, read["busObPublicId"].as_str()), (200, Some("100003")));
    let (status, missing) =
        api(&csm, access, &format!("getbusinessobject/busobid/{incident}/busobrecid/00ff"), None).await;
    assert_eq!((status, missing["errorCode"].as_str()), (404, Some("RECORDNOTFOUND")));
}

// -------------------------------------------------------------------------------------------------
// Settings
// -------------------------------------------------------------------------------------------------

fn load(pairs: &[(&str, &str)]) -> Result<Config, itsmc::config::ConfigError> {
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|name| env.get(name).cloned())
}

const BASE: [(&str, &str); 5] = [
    ("ITSMC_PRODUCT", "Cherwell"),
    ("ITSMC_URL", "https://csm.contoso.com/CherwellAPI/"),
    ("ITSMC_USERNAME", "itsmc.api"),
    ("ITSMC_PASSWORD", "hunter2-password"),
    ("ITSMC_CLIENT_ID", "0b5a1c2e-7d3f-4e8a-9b6c-1f2e3d4c5b6a"),
];

fn error(extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
    pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    pairs.extend(extra.iter().filter(|(_, v)| !v.is_empty()));
    load(&pairs).expect_err("refused").to_string()
}

#[test]
fn cherwell_from_the_environment() {
    let mut pairs = BASE.to_vec();
    pairs.push(("ITSMC_CHERWELL_AUTH_MODE", "ldap"));
    pairs.push(("ITSMC_CHERWELL_CLOSED_STATUSES", "Resolved, Closed, Cancelled"));
    pairs.push(("ITSMC_CHERWELL_SYNC_FIELDS", "AssignedTo_s=OwnedBy, Computer=AffectedCI"));
    let config = load(&pairs).unwrap();
    let c = &config.connections[0];
    assert_eq!(c.product.name(), "cherwell");
    let Product::Cherwell(settings) = &c.product else { panic!("cherwell") };
    assert_eq!(settings.url, "https://csm.contoso.com/CherwellAPI");
    assert_eq!(settings.auth_mode, AuthMode::Ldap);
    assert_eq!(settings.correlation_field, "ItsmcCorrelationKey");
    assert_eq!(settings.closed_statuses, ["Resolved", "Closed", "Cancelled"]);
    assert_eq!(settings.sync_fields[1], ("Computer".to_string(), "AffectedCI".to_string()));
    assert_eq!(settings.journal_relationship, "Incident Owns Journals");
    assert!(!format!("{config:?}").contains("hunter2-password"), "the password never prints");

    // A bare host gets CSM's default path; with Key Vault, the password may be left out.
    let config = load(&[
        BASE[0],
        ("ITSMC_URL", "https://csm.contoso.com"),
        BASE[2],
        BASE[4],
        ("ITSMC_KEY_VAULT_URL", "https://kv.vault.azure.net/"),
        ("ITSMC_CONNECTION_NAME", "csm_prod"),
    ])
    .unwrap();
    let Product::Cherwell(settings) = &config.connections[0].product else { panic!() };
    assert_eq!(settings.url, "https://csm.contoso.com/CherwellAPI");
    assert_eq!(settings.password, SecretSetting::KeyVault("csm-prod-password".into()));
}

#[test]
fn bad_cherwell_settings_name_the_setting() {
    assert!(error(&[("ITSMC_URL", "")]).starts_with("ITSMC_URL:"));
    assert_eq!(
        error(&[("ITSMC_URL", "http://csm.contoso.com")]),
        "ITSMC_URL: 'http://csm.contoso.com' must be an https:// URL"
    );
    assert!(error(&[("ITSMC_USERNAME", "")]).starts_with("ITSMC_USERNAME:"));
    assert!(error(&[("ITSMC_PASSWORD", "")]).starts_with("ITSMC_PASSWORD:"));
    let e = error(&[("ITSMC_CLIENT_ID", "")]);
    assert!(e.starts_with("ITSMC_CLIENT_ID:") && e.contains("client key"), "{e}");
    let e = error(&[("ITSMC_CHERWELL_AUTH_MODE", "Kerberos")]);
    assert_eq!(e, "ITSMC_CHERWELL_AUTH_MODE: 'Kerberos' is not Internal, LDAP, SAML, Windows or Auto");
    let e = error(&[("ITSMC_WORK_ITEM_TYPE", "Event")]);
    assert!(e.starts_with("ITSMC_WORK_ITEM_TYPE: Cherwell has no Event work items"), "{e}");
    assert!(error(&[("ITSMC_WORK_ITEM_TYPE", "Alert")]).contains("no Alert work items"));
    assert!(
        error(&[("ITSMC_CHERWELL_CORRELATION_FIELD", "Corr Key")]).starts_with("ITSMC_CHERWELL_CORRELATION_FIELD:")
    );
    let e = error(&[("ITSMC_CHERWELL_CLOSED_STATUSES", "Closed")]);
    assert!(e.starts_with("ITSMC_CHERWELL_CLOSED_STATUSES:") && e.contains("Resolved"), "{e}");
    assert!(error(&[("ITSMC_CHERWELL_REOPEN_STATUS", "Closed")]).starts_with("ITSMC_CHERWELL_REOPEN_STATUS:"));
    let e = error(&[("ITSMC_CHERWELL_DATE_FORMAT", "%m/%d/%Y")]);
    assert!(e.starts_with("ITSMC_CHERWELL_DATE_FORMAT:"), "{e}");
    let e = error(&[("ITSMC_CHERWELL_SYNC_FIELDS", "Nonsense_s=X")]);
    assert!(e.starts_with("ITSMC_CHERWELL_SYNC_FIELDS: 'Nonsense_s'"), "{e}");
    assert!(error(&[("ITSMC_CHERWELL_SYNC_FIELDS", "Title_s")]).contains("is not Column=Field"));
    assert!(error(&[("ITSMC_PRODUCT", "remedy")]).contains("use servicenow, cherwell, provance, scsm or dry-run"));
}

fn with_file(text: &str, extra: &[(&str, &str)]) -> Result<Config, itsmc::config::ConfigError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let path = file.path().display().to_string();
    let mut pairs = vec![("ITSMC_CONNECTIONS_FILE", path.as_str())];
    pairs.extend_from_slice(extra);
    load(&pairs)
}

#[test]
fn cherwell_from_a_connections_file() {
    let config = with_file(
        r#"
[[connections]]
name = "csm"
product = "cherwell"
url = "https://csm.contoso.com/CherwellAPI"
username = "itsmc.api"
password_env = "CSM_PASSWORD"
client_id = "0b5a1c2e-7d3f-4e8a-9b6c-1f2e3d4c5b6a"
[connections.settings]
cherwell_auth_mode = "SAML"
cherwell_correlation_field = "AlertKey"
cherwell_close_code_field = "Cause"
[connections.fields]
Service = "Cloud"
caller_id = "Azure Monitor"
"#,
        &[("CSM_PASSWORD", "from-the-environment")],
    )
    .unwrap();
    let c = config.connection(Some("csm")).unwrap();
    let Product::Cherwell(settings) = &c.product else { panic!("cherwell") };
    assert_eq!(settings.auth_mode, AuthMode::Saml);
    assert_eq!(settings.correlation_field, "AlertKey");
    assert_eq!(settings.close_code_field.as_deref(), Some("Cause"));
    assert_eq!(settings.password, SecretSetting::Value(itsmc::config::Secret::new("from-the-environment")));
    assert!(c.fields.contains_key("Service"));

    let file = |extra: &str| {
        format!(
            "[[connections]]\nname = \"csm\"\nproduct = \"cherwell\"\nurl = \"https://csm.contoso.com\"\nusername = \"u\"\npassword = \"p\"\nclient_id = \"k\"\n{extra}"
        )
    };
    let e =
        with_file(&file("[connections.settings]\ncherwell_auth_mode = \"Kerberos\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("connections[0] (csm).settings.cherwell_auth_mode") && e.contains("Kerberos"), "{e}");
    let e = with_file(&file("[connections.settings]\ncherwell_colour = \"blue\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("settings.cherwell_colour") && e.contains("not a Cherwell setting"), "{e}");
    let e = with_file(&file("work_item_type = \"Event\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("connections[0] (csm).work_item_type") && e.contains("no Event work items"), "{e}");
    let e = with_file(&file("").replace("client_id = \"k\"\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("connections[0] (csm).client_id"), "{e}");
    let e =
        with_file(&file("").replace("product = \"cherwell\"", "product = \"remedy\""), &[]).unwrap_err().to_string();
    assert!(e.contains("use servicenow, cherwell, provance, scsm or dry-run"), "{e}");
}

#[test]
fn the_emulator_settings_load() {
    // What the product-independent tests give itsmc for this emulator is a valid configuration.
    let csm = emulator();
    let settings = csm.settings();
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = load(&pairs).unwrap();
    let Product::Cherwell(settings) = &config.connections[0].product else { panic!() };
    assert_eq!(settings.username, DEFAULT_USERNAME);
    assert_eq!(settings.password, SecretSetting::Value(itsmc::config::Secret::new(DEFAULT_PASSWORD)));
}
