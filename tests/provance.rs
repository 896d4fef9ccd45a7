//! Provance end to end: itsmc started as `itsmc serve` starts it (`ITSMC_PRODUCT=provance`), Azure Monitor
//! payloads posted over HTTP, cases checked in the Dataverse emulator (`tests/support/provance.rs`, TLS from its
//! test CA, which itsmc trusts through `ITSMC_CA_FILE`), tokens from its Entra emulator's client credentials
//! grant. The sync runs into the Logs Ingestion emulator with the same tenant's tokens.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use chrono::Utc;
use itsmc::sync::run::KindReport;
use itsmc::sync::{Request, Syncer};
use serde_json::{Map, Value, json};
use support::harness::{Itsmc, eventually, free_port, metric_alert};
use support::itsm::start_itsmc;
use support::logs_ingestion::{LogsIngestionEmulator, SERVICE_DESK_STREAM};
use support::provance::{
    self, ACCOUNT_ID, APP_ID, APP_SECRET, CHANGE_SET, CI_FIELD, CORRELATION_FIELD, ProvanceEmulator,
};

const WRONG_SECRET: &str = "Wr0ngQ~s3cr3tThatEntraNeverIssued.zz9";

async fn itsmc(dataverse: &ProvanceEmulator, extra: &[(&str, &str)]) -> Itsmc {
    start_itsmc(dataverse, Some("prod"), extra).await
}

fn fired(alert_id: &str, at: &str) -> String {
    metric_alert(alert_id, "Fired", at, "Sev1")
}

fn resolved(alert_id: &str) -> String {
    metric_alert(alert_id, "Resolved", "2026-11-25T12:00:00Z", "Sev1")
}

fn s<'a>(record: &'a Map<String, Value>, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn n(record: &Map<String, Value>, field: &str) -> Option<i64> {
    record.get(field).and_then(Value::as_i64)
}

fn notes(dataverse: &ProvanceEmulator, id: &str) -> Vec<String> {
    dataverse.notes(id).into_iter().map(|(_, text)| text).collect()
}

fn case(dataverse: &ProvanceEmulator, id: &str) -> Map<String, Value> {
    dataverse.record("incidents", id).expect("the case exists")
}

// ---------------------------------------------------------------------------------------------
// The alert path
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_alert_creates_one_case_for_the_configured_customer() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    let (status, answer) = itsmc.alert("", &fired("a1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let item = &answer["workItems"][0];
    let id = item["id"].as_str().unwrap();
    assert!(item["number"].as_str().unwrap().starts_with("CAS-"), "{item}");
    assert_eq!(item["url"], format!("{}/main.aspx?pagetype=entityrecord&etn=incident&id={id}", dataverse.url()));

    let cases = dataverse.records("incidents");
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    assert_eq!(s(case, "title"), "test-metricAlertRule on test-storageAccount");
    assert!(s(case, "description").contains("Azure Monitor alert \"test-metricAlertRule\" fired."));
    let key = s(case, CORRELATION_FIELD);
    assert!(key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_eq!(s(case, CI_FIELD), "test-storageAccount");
    assert_eq!(s(case, "_customerid_value"), ACCOUNT_ID);
    // Sev1 is urgency 1 by default: High.
    assert_eq!(n(case, "prioritycode"), Some(1));
    assert_eq!((n(case, "statecode"), n(case, "statuscode")), (Some(0), Some(1)));

    // Looked up first by the key, created with the record returned, signed in once for the environment.
    let requests = dataverse.requests();
    let post = requests.iter().find(|r| r.method == "POST" && r.path == "incidents").expect("a POST");
    assert_eq!(post.prefer.as_deref(), Some("return=representation"));
    assert_eq!(post.status, 201);
    let find = requests.iter().find(|r| r.method == "GET" && r.path == "incidents").expect("a lookup first");
    assert!(find.query.iter().any(|(k, v)| k == "$filter" && v == &format!("{CORRELATION_FIELD} eq '{key}'")));
    assert!(requests.iter().all(|r| r.app_id.as_deref() == Some(APP_ID)));
    let grants = dataverse.entra().token_requests();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].scope.as_deref(), Some(format!("{}/.default", dataverse.url()).as_str()));
    assert_eq!(grants[0].client_id.as_deref(), Some(APP_ID));
    assert_eq!(grants[0].tenant, support::entra::TENANT_ID);
}

#[tokio::test]
async fn refires_add_notes_and_the_resolve_closes_the_case_with_a_resolution() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[("ITSMC_CLOSE_CODE", "Resolved by Azure Monitor")]).await;
    let (_, first) = itsmc.alert("", &fired("a2", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();

    let (status, again) = itsmc.alert("", &fired("a2", "2026-11-25T12:05:00Z")).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("updated")), "{again}");
    assert_eq!(again["workItems"][0]["id"], id.as_str());
    let written = dataverse.notes(&id);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].0, "Azure Monitor (itsmc)");
    assert!(written[0].1.contains("fired again") && written[0].1.contains("2 times"), "{written:?}");

    let (status, done) = itsmc.alert("", &resolved("a2")).await;
    assert_eq!((status, done["action"].as_str()), (200, Some("resolved")), "{done}");
    let closed = case(&dataverse, &id);
    assert_eq!((n(&closed, "statecode"), n(&closed, "statuscode")), (Some(1), Some(5)), "Resolved, Problem Solved");
    let resolutions = dataverse.resolutions(&id);
    assert_eq!(resolutions.len(), 1);
    assert_eq!(resolutions[0].0, "Resolved by Azure Monitor");
    assert!(resolutions[0].1.contains("was resolved at 2026-11-25T12:30:00"), "{resolutions:?}");
    assert!(dataverse.requests().iter().any(|r| r.method == "POST" && r.path == "CloseIncident" && r.status == 204));
    assert_eq!(dataverse.count("incidents"), 1);
}

#[tokio::test]
async fn a_resolve_of_a_case_someone_resolved_first_is_done() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    let (_, first) = itsmc.alert("", &fired("a3", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    dataverse.resolve(&id);
    let (status, done) = itsmc.alert("", &resolved("a3")).await;
    assert_eq!((status, done["action"].as_str()), (200, Some("resolved")), "{done}");
    // Dataverse refused to close it again; the case keeps the person's resolution only.
    assert!(dataverse.requests().iter().any(|r| r.path == "CloseIncident" && r.status == 400));
    assert_eq!(dataverse.resolutions(&id).len(), 1);
}

async fn refire_after_close(policy: &str) -> (ProvanceEmulator, Value, String) {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[("ITSMC_REFIRE_AFTER_CLOSE", policy)]).await;
    let (_, first) = itsmc.alert("", &fired("a4", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    dataverse.resolve(&id);
    let (status, answer) = itsmc.alert("", &fired("a4", "2026-11-25T13:00:00Z")).await;
    assert_eq!(status, 200, "{answer}");
    (dataverse, answer, id)
}

#[tokio::test]
async fn refire_after_close_opens_a_new_case_by_default() {
    let (dataverse, answer, first) = refire_after_close("new").await;
    assert_eq!(answer["action"], "created");
    assert_ne!(answer["workItems"][0]["id"], first.as_str());
    assert_eq!(dataverse.count("incidents"), 2);
    assert_eq!(n(&case(&dataverse, &first), "statecode"), Some(1), "the resolved one stays resolved");
}

#[tokio::test]
async fn refire_after_close_can_reactivate_the_case() {
    let (dataverse, answer, id) = refire_after_close("reopen").await;
    assert_eq!(answer["action"], "updated");
    assert_eq!(answer["workItems"][0]["id"], id.as_str());
    assert_eq!(dataverse.count("incidents"), 1);
    let reopened = case(&dataverse, &id);
    assert_eq!((n(&reopened, "statecode"), n(&reopened, "statuscode")), (Some(0), Some(1)));
    assert!(notes(&dataverse, &id).iter().any(|n| n.contains("fired again")));
    let patch = dataverse.requests().into_iter().find(|r| r.method == "PATCH").expect("a PATCH");
    assert!(patch.if_match.as_deref().is_some_and(|etag| etag.starts_with("W/\"")), "{patch:?}");
}

#[tokio::test]
async fn refire_after_close_can_be_ignored() {
    let (dataverse, answer, id) = refire_after_close("ignore").await;
    assert_eq!(answer["action"], "ignored");
    assert_eq!(dataverse.count("incidents"), 1);
    assert_eq!(n(&case(&dataverse, &id), "statecode"), Some(1));
}

/// Someone saves the case between itsmc's read and its reactivation: the PATCH meets a newer version (412);
/// itsmc reads the case again and reactivates that version.
#[tokio::test]
async fn a_reactivation_that_meets_a_newer_version_reads_again_and_retries_once() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[("ITSMC_REFIRE_AFTER_CLOSE", "reopen")]).await;
    let (_, first) = itsmc.alert("", &fired("a5", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    dataverse.resolve(&id);
    dataverse.conflict_next_write();
    let (status, answer) = itsmc.alert("", &fired("a5", "2026-11-25T13:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("updated")), "{answer}");
    let patches: Vec<u16> = dataverse.requests().iter().filter(|r| r.method == "PATCH").map(|r| r.status).collect();
    assert_eq!(patches, [412, 204]);
    assert_eq!(n(&case(&dataverse, &id), "statecode"), Some(0));
}

#[tokio::test]
async fn the_same_delivery_twice_does_nothing_the_second_time() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    let body = fired("a6", "2026-11-25T12:00:00Z");
    let (_, first) = itsmc.alert("", &body).await;
    let (status, second) = itsmc.alert("", &body).await;
    assert_eq!((status, second["action"].as_str()), (200, Some("duplicate")));
    assert_eq!(second["workItems"], first["workItems"]);
    assert_eq!(dataverse.count("incidents"), 1);
    assert!(notes(&dataverse, first["workItems"][0]["id"].as_str().unwrap()).is_empty());
}

#[tokio::test]
async fn dataverse_down_queues_the_alert_and_the_outbox_creates_it_once_when_back() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    dataverse.set_down(true);
    let body = fired("a7", "2026-11-25T12:00:00Z");
    let (status, answer) = itsmc.alert("", &body).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["pending"][0]["lastError"].as_str().unwrap().contains("503"), "{listed}");
    let (status, again) = itsmc.alert("", &body).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("duplicate")));

    dataverse.set_down(false);
    assert!(eventually(10, || dataverse.count("incidents") == 1).await, "the outbox delivered it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dataverse.count("incidents"), 1, "exactly once");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().unwrap().len(), 0, "{listed}");
}

/// Service protection limits: 429 with Retry-After is waited out, then the case is made.
#[tokio::test]
async fn service_protection_limits_are_waited_out() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    dataverse.throttle(1, 1);
    let started = std::time::Instant::now();
    let (status, _) = itsmc.alert("", &fired("a8", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202);
    assert!(eventually(10, || dataverse.count("incidents") == 1).await);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was honoured");
    let limited = dataverse.requests().into_iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(limited.app_id.as_deref(), Some(APP_ID));
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().unwrap().len(), 0, "{listed}");
}

/// A refused token (expired, revoked) is renewed once: the request goes again with a new token.
#[tokio::test]
async fn a_refused_token_is_renewed_and_the_request_goes_again() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    itsmc.alert("", &fired("t1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(dataverse.entra().token_requests().len(), 1);

    dataverse.revoke_tokens();
    let (status, answer) = itsmc.alert("", &fired("t2", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    assert_eq!(dataverse.entra().token_requests().len(), 2, "one new token");
    let statuses: Vec<u16> = dataverse.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 1, "{statuses:?}");
    assert_eq!(dataverse.count("incidents"), 2);

    // And the new token keeps serving.
    itsmc.alert("", &fired("t3", "2026-11-25T12:00:00Z")).await;
    assert_eq!(dataverse.entra().token_requests().len(), 2);
}

#[tokio::test]
async fn a_wrong_client_secret_queues_the_alert_with_entras_reason_and_never_shows_the_secret() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[("ITSMC_CLIENT_SECRET", WRONG_SECRET)]).await;
    let (status, answer) = itsmc.alert("", &fired("w1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202, "kept for when the secret is fixed: {answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let text = listed.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains(WRONG_SECRET) && !text.contains(APP_SECRET), "a secret leaked: {text}");
    assert_eq!(dataverse.count("incidents"), 0);
}

#[tokio::test]
async fn events_and_alerts_are_refused_as_provance_has_incidents_only() {
    let dataverse = ProvanceEmulator::start();
    let itsmc = itsmc(&dataverse, &[]).await;
    let (status, answer) = itsmc.alert("?workItemType=Event", &fired("e1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer.to_string().contains("incidents only"), "{answer}");
    assert_eq!(dataverse.count("incidents"), 0);
}

// ---------------------------------------------------------------------------------------------
// Connection test and configuration
// ---------------------------------------------------------------------------------------------

async fn test(itsmc: &Itsmc) -> Value {
    let (status, answer) = itsmc.post("/api/connections/prod/test", "").await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_connection_test_tells_apart_what_is_wrong() {
    let dataverse = ProvanceEmulator::start();
    let itsmc_ok = itsmc(&dataverse, &[]).await;
    let ok = test(&itsmc_ok).await;
    assert_eq!((ok["ok"].as_bool(), ok["code"].as_str()), (Some(true), Some("ok")), "{ok}");
    assert!(ok["message"].as_str().unwrap().contains(CHANGE_SET), "{ok}");

    // Entra refuses the secret.
    let wrong = itsmc(&dataverse, &[("ITSMC_CLIENT_SECRET", WRONG_SECRET)]).await;
    let answer = test(&wrong).await;
    assert_eq!(answer["code"], "wrong_credentials", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("AADSTS7000215") && !message.contains(WRONG_SECRET), "{message}");

    // The app signs in but has no application user in the environment.
    dataverse.remove_application_user(APP_ID);
    let answer = test(&itsmc_ok).await;
    assert_eq!(answer["code"], "missing_role", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("not a member of the organization"), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("application user"), "{answer}");

    // It has one, without a role that reads cases.
    dataverse.add_application_user(APP_ID, "itsmc (application user)");
    dataverse.set_privileges(APP_ID, Some(&[]));
    let answer = test(&itsmc_ok).await;
    assert_eq!(answer["code"], "missing_role", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("prvReadIncident"), "{answer}");
    dataverse.set_privileges(APP_ID, None);

    dataverse.throttle(1, 30);
    let answer = test(&itsmc_ok).await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("30 s"), "{answer}");

    dataverse.set_down(true);
    assert_eq!(test(&itsmc_ok).await["code"], "unavailable");
    dataverse.set_down(false);

    // Nothing listens at the environment URL.
    let gone_url = format!("https://127.0.0.1:{}", free_port());
    let gone = itsmc(&dataverse, &[("ITSMC_URL", gone_url.as_str())]).await;
    let answer = test(&gone).await;
    assert_eq!(answer["code"], "unreachable", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("ITSMC_URL"), "{answer}");

    // Nor at the authority.
    let no_entra = format!("https://127.0.0.1:{}", free_port());
    let lost = itsmc(&dataverse, &[("ITSMC_PROVANCE_AUTHORITY", no_entra.as_str())]).await;
    let answer = test(&lost).await;
    assert_eq!(answer["code"], "unreachable", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("ITSMC_PROVANCE_AUTHORITY"), "{answer}");
}

/// A connections file: the `settings` table carries the Provance settings; the refresh reads the choices of
/// the case columns and names a configured value Dataverse does not offer.
#[tokio::test]
async fn a_connections_file_connection_reads_choices_and_names_values_the_environment_lacks() {
    let dataverse = ProvanceEmulator::start();
    let entra = dataverse.entra();
    let file = tempfile::NamedTempFile::new().unwrap();
    let toml = format!(
        r#"
[[connections]]
name = "prod"
product = "provance"
url = "{url}"
client_id = "{APP_ID}"
client_secret_env = "PROVANCE_CLIENT_SECRET"
sync_kinds = ["Incident"]

[connections.settings]
provance_tenant_id = "{tenant}"
provance_authority = "{authority}"
provance_customer = "accounts({ACCOUNT_ID})"
provance_correlation_field = "{CORRELATION_FIELD}"

[connections.fields]
caseorigincode = "Carrier pigeon"
casetypecode = "2"
"#,
        url = dataverse.url(),
        tenant = support::entra::TENANT_ID,
        authority = entra.authority_host(),
    );
    std::fs::write(file.path(), toml).unwrap();
    let path = file.path().to_string_lossy().into_owned();
    let ca = dataverse.ca().ca_file().to_string_lossy().into_owned();
    let itsmc = Itsmc::start(&[
        ("ITSMC_CONNECTIONS_FILE", path.as_str()),
        ("PROVANCE_CLIENT_SECRET", APP_SECRET),
        ("ITSMC_CA_FILE", ca.as_str()),
    ])
    .await;
    let (status, refreshed) = itsmc.post("/api/connections/prod/refresh", "").await;
    assert_eq!(status, 200, "{refreshed}");
    let labels: Vec<&str> = refreshed["configuration"]["choices"]["prioritycode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["High", "Normal", "Low"]);
    assert_eq!(refreshed["diagnosis"]["code"], "invalid_values", "{refreshed}");
    assert_eq!(refreshed["invalid"], json!(["caseorigincode (Carrier pigeon)"]), "{refreshed}");

    // The file's fields go to the case, typed: a choice as a number.
    let mut body: Value = serde_json::from_str(&fired("f1", "2026-11-25T12:00:00Z")).unwrap();
    body["data"]["essentials"]["alertRule"] = json!("file rule");
    let (status, answer) = itsmc.alert("", &body.to_string()).await;
    // The choice label is refused by Dataverse: a dead letter naming the column, not a retry loop.
    assert_eq!(status, 502, "{answer}");
    assert!(answer.to_string().contains("Cannot convert the literal 'Carrier pigeon'"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

fn config(pairs: &[(&str, &str)]) -> Result<itsmc::config::Config, itsmc::config::ConfigError> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    itsmc::config::Config::from_lookup(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

const MINIMAL: [(&str, &str); 6] = [
    ("ITSMC_PRODUCT", "provance"),
    ("ITSMC_URL", "https://contoso.crm.dynamics.com"),
    ("ITSMC_PROVANCE_CUSTOMER", "contacts(70bf4d48-34cb-ed11-b596-0022481d68cd)"),
    ("ITSMC_PROVANCE_CORRELATION_FIELD", "new_itsmccorrelationkey"),
    ("ITSMC_SYNC_KINDS", "Incident"),
    ("ITSMC_DATA_DIR", "/nonexistent"),
];

fn with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut pairs: Vec<(&str, &str)> =
        MINIMAL.iter().filter(|(k, _)| !changes.iter().any(|(c, _)| c == k)).copied().collect();
    pairs.extend(changes.iter().filter(|(_, v)| !v.is_empty()).copied());
    pairs
}

#[test]
fn bad_provance_settings_name_the_setting() {
    let ok = config(&MINIMAL).expect("the minimal Provance connection");
    assert_eq!(ok.connections[0].product.name(), "provance");
    for (changes, setting, says) in [
        (vec![("ITSMC_PROVANCE_CORRELATION_FIELD", "")], "ITSMC_PROVANCE_CORRELATION_FIELD", "correlation key"),
        (vec![("ITSMC_PROVANCE_CORRELATION_FIELD", "New Key")], "ITSMC_PROVANCE_CORRELATION_FIELD", "logical name"),
        (vec![("ITSMC_PROVANCE_CUSTOMER", "")], "ITSMC_PROVANCE_CUSTOMER", "customer"),
        (
            vec![("ITSMC_PROVANCE_CUSTOMER", "leads(70bf4d48-34cb-ed11-b596-0022481d68cd)")],
            "ITSMC_PROVANCE_CUSTOMER",
            "accounts(",
        ),
        (vec![("ITSMC_PROVANCE_CUSTOMER", "accounts(Contoso)")], "ITSMC_PROVANCE_CUSTOMER", "GUID"),
        (vec![("ITSMC_URL", "https://contoso.crm.dynamics.com/api/data/v9.2")], "ITSMC_URL", "not the Web API"),
        (vec![("ITSMC_URL", "http://contoso.crm.dynamics.com")], "ITSMC_URL", "https"),
        (vec![("ITSMC_WORK_ITEM_TYPE", "Event")], "ITSMC_WORK_ITEM_TYPE", "incidents"),
        (vec![("ITSMC_SYNC_KINDS", "")], "ITSMC_PROVANCE_CHANGE_ENTITY_SET", "change requests"),
        (vec![("ITSMC_CLIENT_ID", "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f")], "ITSMC_CLIENT_SECRET", "client secret"),
        (vec![("ITSMC_CLIENT_SECRET", "s3cr3t")], "ITSMC_CLIENT_ID", "client id"),
        (
            vec![("ITSMC_CLIENT_ID", "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f"), ("ITSMC_CLIENT_SECRET", "s3cr3t")],
            "ITSMC_PROVANCE_TENANT_ID",
            "tenant",
        ),
        (
            vec![
                ("ITSMC_CLIENT_ID", "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f"),
                ("ITSMC_CLIENT_SECRET", "s3cr3t"),
                ("ITSMC_PROVANCE_TENANT_ID", "contoso"),
            ],
            "ITSMC_PROVANCE_TENANT_ID",
            "GUID",
        ),
        (
            vec![
                ("ITSMC_CLIENT_ID", "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f"),
                ("ITSMC_CLIENT_SECRET", "s3cr3t"),
                ("ITSMC_PROVANCE_TENANT_ID", "contoso.onmicrosoft.com"),
                ("ITSMC_PROVANCE_AUTHORITY", "http://login.microsoftonline.us"),
            ],
            "ITSMC_PROVANCE_AUTHORITY",
            "https",
        ),
        (vec![("ITSMC_PROVANCE_RESOLVED_STATUS", "solved")], "ITSMC_PROVANCE_RESOLVED_STATUS", "status reason"),
        (vec![("ITSMC_PROVANCE_CHANGE_COLUMNS", "Risk=prov_risk")], "ITSMC_PROVANCE_CHANGE_COLUMNS", "Risk"),
        (vec![("ITSMC_ASSIGNMENT_GROUP", "Cloud Ops")], "ITSMC_ASSIGNMENT_GROUP", "ServiceNow setting"),
    ] {
        let error = config(&with(&changes)).expect_err(setting);
        assert_eq!(error.setting, setting, "{changes:?}: {error}");
        assert!(error.message.contains(says), "{changes:?}: {error}");
    }
    let error = config(&with(&[("ITSMC_PRODUCT", "cherwel")])).unwrap_err();
    assert!(error.message.contains("servicenow, cherwell, provance, scsm or dry-run"), "{error}");
}

#[test]
fn a_connections_file_names_its_own_keys_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("connections.toml");
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let base = r#"
[[connections]]
name = "p1"
product = "provance"
url = "https://contoso.crm.dynamics.com"
sync_kinds = ["Incident"]
[connections.settings]
provance_customer = "accounts(70bf4d48-34cb-ed11-b596-0022481d68cd)"
provance_correlation_field = "new_key"
"#;
    let path = write(base);
    let ok = config(&[("ITSMC_CONNECTIONS_FILE", &path), ("ITSMC_DATA_DIR", "/nonexistent")]).expect("valid");
    assert_eq!(ok.connections[0].product.name(), "provance");

    for (extra, setting) in [
        ("provance_tenant_idd = \"x\"\n", "connections[0] (p1).settings.provance_tenant_idd"),
        ("provance_ci_field = \"CI Name\"\n", "connections[0] (p1).settings.provance_ci_field"),
    ] {
        let path = write(&format!("{base}{extra}"));
        let error = config(&[("ITSMC_CONNECTIONS_FILE", &path), ("ITSMC_DATA_DIR", "/nonexistent")]).unwrap_err();
        assert!(error.setting.ends_with(setting), "{error}");
    }
    let path =
        write(&base.replace("sync_kinds = [\"Incident\"]\n", "client_id = \"0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f\"\n"));
    let error = config(&[("ITSMC_CONNECTIONS_FILE", &path), ("ITSMC_DATA_DIR", "/nonexistent")]).unwrap_err();
    assert!(error.setting.ends_with("connections[0] (p1).client_secret"), "{error}");
    let path = write(&base.replace("sync_kinds = [\"Incident\"]\n", ""));
    let error = config(&[("ITSMC_CONNECTIONS_FILE", &path), ("ITSMC_DATA_DIR", "/nonexistent")]).unwrap_err();
    assert!(error.setting.ends_with("connections[0] (p1).settings.provance_change_entity_set"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// The sync
// ---------------------------------------------------------------------------------------------

/// itsmc, and a syncer sending to Logs Ingestion with the app registration's tokens from the same tenant.
struct World {
    dataverse: ProvanceEmulator,
    ingestion: LogsIngestionEmulator,
    itsmc: Itsmc,
    syncer: Syncer,
}

impl World {
    async fn start(settings: &[(&str, &str)]) -> World {
        let dataverse = ProvanceEmulator::start();
        let ingestion = LogsIngestionEmulator::start(dataverse.ca(), dataverse.tokens());
        let itsmc = itsmc(&dataverse, settings).await;
        let http = itsmc::http::build_client(&dataverse.ca().http_settings()).unwrap();
        let mut cloud = azure_core::cloud::CustomConfiguration::default();
        cloud.authority_host = dataverse.entra().authority_host();
        let options = azure_identity::ClientSecretCredentialOptions {
            client_options: azure_core::http::ClientOptions {
                transport: Some(azure_core::http::Transport::new(Arc::new(http.clone()))),
                cloud: Some(Arc::new(cloud.into())),
                ..Default::default()
            },
        };
        let credential: Arc<dyn TokenCredential> = azure_identity::ClientSecretCredential::new(
            support::entra::TENANT_ID,
            APP_ID.into(),
            APP_SECRET.to_string().into(),
            Some(options),
        )
        .unwrap();
        let syncer = ingestion.syncer(&itsmc.intake, credential, http);
        World { dataverse, ingestion, itsmc, syncer }
    }

    async fn sync(&self) -> Vec<KindReport> {
        let report = self.syncer.run(&Request::default(), &|_| {}).await.expect("the sync runs");
        report.runs
    }

    /// How often each case and change request number was sent.
    fn sent(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for row in self.ingestion.rows(SERVICE_DESK_STREAM) {
            *seen.entry(row["ServiceDeskId_s"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
        seen
    }
}

fn report<'a>(runs: &'a [KindReport], kind: &str) -> &'a KindReport {
    runs.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("no {kind} run in {runs:?}"))
}

fn text<'a>(row: &'a Map<String, Value>, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or_default()
}

/// The columns and the Dataverse columns they come from, written out here apart from itsmc's mapping:
/// formatted values for choices and lookups, the UTC value for dates.
const EXPECTED_INCIDENT: &[(&str, &str)] = &[
    ("ServiceDeskId_s", "ticketnumber"),
    ("IncidentState_s", "statuscode"),
    ("Priority_s", "prioritycode"),
    ("Impact_s", "severitycode"),
    ("Escalation_s", "isescalated"),
    ("CreatedBy_s", "_createdby_value"),
    ("Source_s", "caseorigincode"),
    ("AssignedTo_s", "_ownerid_value"),
    ("Category_s", "casetypecode"),
    ("Title_s", "title"),
    ("Description_s", "description"),
    ("CreatedDate_t", "createdon"),
    ("LastModifiedDate_t", "modifiedon"),
    ("Computer", CI_FIELD),
];

const EXPECTED_CHANGE: &[(&str, &str)] = &[
    ("ServiceDeskId_s", "contoso_number"),
    ("Title_s", "contoso_name"),
    ("CRState_s", "statuscode"),
    ("Risk_s", "contoso_risk"),
    ("CreatedBy_s", "_createdby_value"),
    ("AssignedTo_s", "_ownerid_value"),
    ("CreatedDate_t", "createdon"),
    ("PlannedStartDate_t", "contoso_plannedstart"),
    ("LastModifiedDate_t", "modifiedon"),
];

fn check_rows(world: &World, set: &str, id_field: &str, number: &str, expected: &[(&str, &str)]) -> usize {
    let kind = if set == "incidents" { "Incident" } else { "ChangeRequest" };
    let rows: HashMap<String, Map<String, Value>> = world
        .ingestion
        .rows(SERVICE_DESK_STREAM)
        .into_iter()
        .filter(|row| text(row, "ServiceDeskWorkItemType_s") == kind)
        .map(|row| (text(&row, "ServiceDeskId_s").to_string(), row))
        .collect();
    let mut checked = 0;
    for record in world.dataverse.records(set).iter().step_by(37) {
        let shown = world.dataverse.shown(set, s(record, id_field)).unwrap();
        let Some(row) = rows.get(s(&shown, number)) else { continue };
        for &(column, field) in expected {
            let want = if column.ends_with("_t") {
                s(&shown, field).to_string()
            } else {
                let formatted = format!("{field}@OData.Community.Display.V1.FormattedValue");
                match (shown.get(&formatted), shown.get(field)) {
                    (Some(Value::String(f)), _) => f.clone(),
                    (_, Some(Value::String(v))) => v.clone(),
                    (_, Some(Value::Null) | None) => String::new(),
                    (_, Some(other)) => other.to_string(),
                }
            };
            assert_eq!(text(row, column), want, "{} {column} (from {field})", s(&shown, number));
        }
        assert_eq!(text(row, "ServiceDeskConnectionName_s"), "prod");
        checked += 1;
    }
    checked
}

/// A backlog of cases and change requests, with a burst of 250 cases in one second, arrives exactly once
/// through pages of 100 and Dataverse's next links; an idle run reads one page per kind and sends nothing; a
/// person's later changes arrive with the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_sends_a_backlog_exactly_once_through_pages() {
    let world = World::start(&[
        ("ITSMC_SYNC_PAGE_SIZE", "100"),
        (
            "ITSMC_PROVANCE_CHANGE_COLUMNS",
            "ServiceDeskId_s=contoso_number,Risk_s=contoso_risk,PlannedStartDate_t=contoso_plannedstart",
        ),
    ])
    .await;
    let now = Utc::now();
    world.dataverse.seed_incidents(40, now - chrono::Duration::days(200), now - chrono::Duration::days(130));
    world.dataverse.seed_incidents(1_200, now - chrono::Duration::days(100), now - chrono::Duration::minutes(20));
    let burst = now - chrono::Duration::hours(5);
    world.dataverse.seed_incidents(250, burst, burst + chrono::Duration::milliseconds(900));
    world.dataverse.seed_change_requests(330, now - chrono::Duration::days(60), now - chrono::Duration::minutes(20));

    let runs = world.sync().await;
    let (incidents, changes) = (report(&runs, "Incident"), report(&runs, "ChangeRequest"));
    assert_eq!((incidents.error.as_deref(), changes.error.as_deref()), (None, None), "{runs:?}");
    assert_eq!((incidents.sent, changes.sent), (1_450, 330), "{runs:?}");
    let sent = world.sent();
    assert_eq!(sent.len(), 1_780, "every case and change request of the scope");
    assert!(sent.values().all(|&n| n == 1), "none twice");

    // Pages of 100, continued through next links, with formatted values asked for.
    let requests = world.dataverse.requests();
    let pages: Vec<_> = requests.iter().filter(|r| r.method == "GET" && r.path == "incidents").collect();
    assert!(
        pages.iter().all(|r| r.prefer.as_deref().is_some_and(
            |p| p.contains("odata.maxpagesize=100") && p.contains("OData.Community.Display.V1.FormattedValue")
        )),
        "{pages:?}"
    );
    assert!(pages.iter().any(|r| r.query.iter().any(|(k, _)| k == "$skiptoken")), "a next link was followed");
    // The burst's second, cut by a page, was read again whole.
    let whole_second =
        |r: &&provance::Recorded| r.query.iter().any(|(k, v)| k == "$filter" && v.contains(" and modifiedon lt "));
    assert!(pages.iter().any(whole_second), "{pages:?}");

    assert!(check_rows(&world, "incidents", "incidentid", "ticketnumber", EXPECTED_INCIDENT) >= 20);
    assert!(check_rows(&world, CHANGE_SET, "contoso_changerequestid", "contoso_number", EXPECTED_CHANGE) >= 5);

    // Nothing new: one page per kind, nothing sent.
    world.dataverse.clear_requests();
    let idle = world.sync().await;
    assert_eq!((report(&idle, "Incident").sent, report(&idle, "ChangeRequest").sent), (0, 0), "{idle:?}");
    let reads: Vec<String> = world.dataverse.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(reads, ["incidents", CHANGE_SET], "{reads:?}");

    // A person resolves three open cases; itsmc opens one: those four arrive.
    let open: Vec<String> = world
        .dataverse
        .records("incidents")
        .iter()
        .filter(|r| n(r, "statecode") == Some(0))
        .filter(|r| n(r, "modifiedon") > Some((now - chrono::Duration::days(100)).timestamp_millis() - 1))
        .take(3)
        .map(|r| s(r, "incidentid").to_string())
        .collect();
    for id in &open {
        world.dataverse.resolve(id);
    }
    world.itsmc.alert("", &fired("s1", "2026-11-25T12:00:00Z")).await;
    let next = world.sync().await;
    assert_eq!(report(&next, "Incident").sent, 4, "{next:?}");
    let rows = world.ingestion.rows(SERVICE_DESK_STREAM);
    for id in &open {
        let number = s(&world.dataverse.record("incidents", id).unwrap(), "ticketnumber").to_string();
        let states: Vec<&str> =
            rows.iter().filter(|r| text(r, "ServiceDeskId_s") == number).map(|r| text(r, "IncidentState_s")).collect();
        assert_eq!(states.len(), 2, "{number}: {states:?}");
        assert_eq!(states[1], "Problem Solved");
    }
}

/// A case Dataverse answers without its `modifiedon` and one without its id cannot be placed in the sync's
/// order: the sync leaves them out (with a warning) and sends every other case once, and runs again cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_id_or_modifiedon_is_skipped_and_the_rest_syncs() {
    let world = World::start(&[("ITSMC_SYNC_PAGE_SIZE", "20")]).await;
    let now = Utc::now();
    world.dataverse.seed_incidents(60, now - chrono::Duration::days(3), now - chrono::Duration::minutes(20));
    let records = world.dataverse.records("incidents");
    let (no_time, no_id) = (&records[7], &records[33]);
    world.dataverse.garble("incidents", s(no_time, "incidentid"), "modifiedon");
    world.dataverse.garble("incidents", s(no_id, "incidentid"), "incidentid");

    let runs = world.sync().await;
    let incidents = report(&runs, "Incident");
    assert_eq!(incidents.error, None, "{runs:?}");
    assert_eq!(incidents.sent, 58, "{runs:?}");
    let sent = world.sent();
    assert!(!sent.contains_key(s(no_time, "ticketnumber")) && !sent.contains_key(s(no_id, "ticketnumber")));
    for record in &records {
        let number = s(record, "ticketnumber");
        if number != s(no_time, "ticketnumber") && number != s(no_id, "ticketnumber") {
            assert_eq!(sent.get(number), Some(&1), "{number}");
        }
    }
    let again = world.sync().await;
    assert_eq!((report(&again, "Incident").error.as_deref(), report(&again, "Incident").sent), (None, 0), "{again:?}");
}

/// A bulk update of 100 cases in one second, read with a limit of 30: no answer holds more than 30, the second
/// is read in pages of 30 (never whole at once), its rest comes by id in text order, and the sync sends every
/// case once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_with_more_cases_than_a_page_is_answered_a_page_at_a_time_and_synced_once() {
    use itsmc::sync::{SyncKind, Window, kinds};
    let world = World::start(&[("ITSMC_SYNC_PAGE_SIZE", "30")]).await;
    let burst = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 5 * 3600, 0).unwrap();
    world.dataverse.seed_incidents(10, burst - chrono::Duration::hours(2), burst - chrono::Duration::seconds(1));
    world.dataverse.seed_incidents(100, burst, burst + chrono::Duration::milliseconds(900));
    world.dataverse.seed_incidents(10, burst + chrono::Duration::seconds(1), burst + chrono::Duration::hours(1));

    // The connector itself: every answer at most the limit, in (second, id) order, nothing skipped or twice.
    let (_, connector) = world.itsmc.intake.connection("prod").expect("the connection");
    let second = kinds::format_time(burst);
    let mut window = Window::Since(kinds::format_time(burst - chrono::Duration::hours(3)));
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..50 {
        let page = connector.changes(SyncKind::Incident, &window, 30).await.expect("a page");
        assert!(page.len() <= 30, "{} changes for a limit of 30", page.len());
        let keys: Vec<(String, String)> = page.iter().map(|c| (c.updated.clone(), c.id.clone())).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in (second, id) order: {keys:?}");
        let fresh: Vec<_> = keys.iter().filter(|k| seen.last().is_none_or(|l| *k > l)).cloned().collect();
        seen.extend(fresh);
        let (Some(first), Some(last)) = (page.first(), page.last()) else { break };
        window = match (&window, page.len() == 30) {
            (Window::Within { .. }, true) => {
                Window::Within { updated: last.updated.clone(), after_id: last.id.clone() }
            }
            (_, true) if first.updated == last.updated => {
                Window::Within { updated: last.updated.clone(), after_id: last.id.clone() }
            }
            (_, true) => Window::Since(last.updated.clone()),
            (Window::Within { .. }, false) => Window::After(last.updated.clone()),
            _ => break,
        };
    }
    assert_eq!(seen.len(), 120, "every case once");
    assert_eq!(seen.iter().filter(|(updated, _)| *updated == second).count(), 100);
    let rest = connector
        .changes(SyncKind::Incident, &Window::Within { updated: second.clone(), after_id: String::new() }, 30)
        .await
        .unwrap();
    let firsts: Vec<String> =
        seen.iter().filter(|(updated, _)| *updated == second).take(30).map(|(_, id)| id.clone()).collect();
    assert_eq!(rest.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), firsts, "the second's first ids as text");
    let reads = world.dataverse.requests();
    let in_second: Vec<_> = reads
        .iter()
        .filter(|r| r.path == "incidents" && r.query.iter().any(|(k, v)| k == "$filter" && v.contains("modifiedon lt")))
        .collect();
    assert!(in_second.iter().any(|r| r.query.iter().any(|(k, _)| k == "$skiptoken")), "the second in pages");
    assert!(
        in_second.iter().all(|r| r.prefer.as_deref().is_some_and(|p| p.contains("odata.maxpagesize=30"))),
        "{in_second:?}"
    );

    // The sync, with the same page size.
    let runs = world.sync().await;
    let incidents = report(&runs, "Incident");
    assert_eq!((incidents.error.as_deref(), incidents.sent), (None, 120), "{runs:?}");
    let sent = world.sent();
    assert_eq!(sent.len(), 120);
    assert!(sent.values().all(|&n| n == 1), "none twice");
}
