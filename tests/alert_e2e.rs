//! The alert path end to end: Azure Monitor payloads posted over HTTP to a running itsmc, work items
//! checked in the ServiceNow emulator.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{Itsmc, eventually, fixture, metric_alert};
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};

const USER: &str = "itsmc.integration";
const PASSWORD: &str = "Pa55-w0rd-never-logged";
const CLIENT_ID: &str = "itsmc-app";
const CLIENT_SECRET: &str = "client-secret-never-logged";

fn emulator() -> ServiceNowEmulator {
    ServiceNowEmulator::start(
        EmulatorConfig::default().with_user(USER, PASSWORD).with_oauth_client(CLIENT_ID, CLIENT_SECRET),
    )
}

async fn itsmc_basic(sn: &ServiceNowEmulator, extra: &[(&str, &str)]) -> Itsmc {
    let url = sn.url();
    let mut settings = vec![
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", url.as_str()),
        ("ITSMC_USERNAME", USER),
        ("ITSMC_PASSWORD", PASSWORD),
    ];
    settings.extend_from_slice(extra);
    Itsmc::start(&settings).await
}

fn fired(alert_id: &str, at: &str) -> String {
    metric_alert(alert_id, "Fired", at, "Sev3")
}

fn resolved(alert_id: &str, at: &str) -> String {
    metric_alert(alert_id, "Resolved", at, "Sev3")
}

fn incidents(sn: &ServiceNowEmulator) -> Vec<serde_json::Map<String, Value>> {
    sn.records("incident")
}

fn work_notes(sn: &ServiceNowEmulator, sys_id: &str) -> Vec<String> {
    sn.journal(sys_id).into_iter().filter(|(e, _)| e == "work_notes").map(|(_, v)| v).collect()
}

fn s<'a>(record: &'a serde_json::Map<String, Value>, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test]
async fn an_alert_creates_one_incident_with_the_expected_fields() {
    let sn = emulator();
    let itsmc =
        itsmc_basic(&sn, &[("ITSMC_ASSIGNMENT_GROUP", "{{ customProperties.team | default(\"Cloud Ops\") }}")]).await;
    let (status, answer) = itsmc.alert("", &fired("a1", "2026-11-25T12:00:00.123Z")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "created");
    let items = answer["workItems"].as_array().expect("workItems");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["connection"], "default");
    assert_eq!(items[0]["type"], "Incident");
    assert!(items[0]["number"].as_str().unwrap().starts_with("INC"));
    assert!(items[0]["url"].as_str().unwrap().contains(items[0]["id"].as_str().unwrap()));

    let all = incidents(&sn);
    assert_eq!(all.len(), 1);
    let incident = &all[0];
    assert_eq!(s(incident, "short_description"), "test-metricAlertRule on test-storageAccount");
    let correlation = s(incident, "correlation_id");
    assert_eq!(correlation.len(), 40);
    assert!(correlation.bytes().all(|b| b.is_ascii_hexdigit()), "the key is a hash, never alert text");
    assert_eq!(s(incident, "correlation_display"), "itsmc");
    // Sev3 maps to urgency 2, impact 3 by default.
    assert_eq!((s(incident, "urgency"), s(incident, "impact")), ("2", "3"));
    assert_eq!(s(incident, "assignment_group"), "Cloud Ops");
    assert_eq!(s(incident, "cmdb_ci"), "test-storageAccount");
    let description = s(incident, "description");
    assert!(description.contains("Azure Monitor alert \"test-metricAlertRule\" fired."), "{description}");
    assert!(description.contains("Transactions"), "the condition is described: {description}");
}

#[tokio::test]
async fn refire_updates_and_resolve_resolves_the_same_incident() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_CLOSE_CODE", "Solution provided")]).await;
    let (_, first) = itsmc.alert("", &fired("a2", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();

    let (status, again) = itsmc.alert("", &fired("a2", "2026-11-25T12:05:00Z")).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("updated")), "{again}");
    assert_eq!(again["workItems"][0]["id"], id.as_str());
    assert_eq!(incidents(&sn).len(), 1);
    let notes = work_notes(&sn, &id);
    assert!(notes.iter().any(|n| n.contains("fired again") && n.contains("2 times")), "{notes:?}");

    let (status, done) = itsmc.alert("", &resolved("a2", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, done["action"].as_str()), (200, Some("resolved")), "{done}");
    let incident = sn.record("incident", &id).unwrap();
    assert_eq!(s(&incident, "state"), "6");
    assert_eq!(s(&incident, "close_code"), "Solution provided");
    assert!(s(&incident, "close_notes").contains("was resolved at 2026-11-25T12:30:00"), "{incident:?}");
    assert_eq!(incidents(&sn).len(), 1, "a resolve never creates a second work item");
}

#[tokio::test]
async fn a_resolve_for_an_alert_never_seen_creates_nothing() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let (status, answer) = itsmc.alert("", &resolved("never-seen", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("ignored")), "{answer}");
    assert_eq!(incidents(&sn).len(), 0);
}

async fn refire_after_close(policy: &str) -> (ServiceNowEmulator, Value, String) {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_REFIRE_AFTER_CLOSE", policy)]).await;
    let (_, first) = itsmc.alert("", &fired("a3", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    // A person closes the incident in ServiceNow.
    assert!(sn.update("incident", &id, json!({"state": "7", "close_code": "Solved (Permanently)"})));
    let (status, answer) = itsmc.alert("", &fired("a3", "2026-11-25T13:00:00Z")).await;
    assert_eq!(status, 200, "{answer}");
    (sn, answer, id)
}

#[tokio::test]
async fn refire_after_close_opens_a_new_incident_by_default() {
    let (sn, answer, first_id) = refire_after_close("new").await;
    assert_eq!(answer["action"], "created");
    assert_ne!(answer["workItems"][0]["id"], first_id.as_str());
    assert_eq!(incidents(&sn).len(), 2);
    assert_eq!(s(&sn.record("incident", &first_id).unwrap(), "state"), "7", "the closed one stays closed");
}

#[tokio::test]
async fn refire_after_close_can_reopen() {
    let (sn, answer, id) = refire_after_close("reopen").await;
    assert_eq!(answer["action"], "updated");
    assert_eq!(answer["workItems"][0]["id"], id.as_str());
    assert_eq!(incidents(&sn).len(), 1);
    assert_eq!(s(&sn.record("incident", &id).unwrap(), "state"), "2");
    assert!(work_notes(&sn, &id).iter().any(|n| n.contains("fired again")));
}

#[tokio::test]
async fn refire_after_close_can_be_ignored() {
    let (sn, answer, id) = refire_after_close("ignore").await;
    assert_eq!(answer["action"], "ignored");
    assert_eq!(incidents(&sn).len(), 1);
    assert_eq!(s(&sn.record("incident", &id).unwrap(), "state"), "7");
}

#[tokio::test]
async fn resolve_can_only_comment() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_ON_RESOLVE", "comment")]).await;
    let (_, first) = itsmc.alert("", &fired("a4", "2026-11-25T12:00:00Z")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    let (_, answer) = itsmc.alert("", &resolved("a4", "2026-11-25T12:00:00Z")).await;
    assert_eq!(answer["action"], "updated");
    assert_eq!(s(&sn.record("incident", &id).unwrap(), "state"), "1");
    assert!(work_notes(&sn, &id).iter().any(|n| n.contains("was resolved")));
}

#[tokio::test]
async fn per_configuration_item_grouping_makes_one_incident_per_ci() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let mut body: Value = serde_json::from_str(&fired("a5", "2026-11-25T12:00:00Z")).unwrap();
    body["data"]["essentials"]["configurationItems"] = json!(["web01", "web02"]);
    let (status, answer) = itsmc.alert("?grouping=ci", &body.to_string()).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    assert_eq!(answer["workItems"].as_array().unwrap().len(), 2);
    let mut cis: Vec<String> = incidents(&sn).iter().map(|i| s(i, "cmdb_ci").to_string()).collect();
    cis.sort();
    assert_eq!(cis, ["web01", "web02"]);

    // Another alert id from the same rule on web01 lands on web01's incident.
    body["data"]["essentials"]["alertId"] =
        json!("/subscriptions/s1/providers/Microsoft.AlertsManagement/alerts/a5-other");
    body["data"]["essentials"]["configurationItems"] = json!(["web01"]);
    let (_, again) = itsmc.alert("?grouping=ci", &body.to_string()).await;
    assert_eq!(again["action"], "updated", "{again}");
    assert_eq!(incidents(&sn).len(), 2);
}

#[tokio::test]
async fn per_rule_grouping_folds_alerts_of_one_rule() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_GROUPING", "rule")]).await;
    itsmc.alert("", &fired("r1", "2026-11-25T12:00:00Z")).await;
    let (_, answer) = itsmc.alert("", &fired("r2", "2026-11-25T12:01:00Z")).await;
    assert_eq!(answer["action"], "updated");
    assert_eq!(incidents(&sn).len(), 1);
}

#[tokio::test]
async fn the_same_delivery_twice_does_nothing_the_second_time() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let body = fired("a6", "2026-11-25T12:00:00Z");
    let (_, first) = itsmc.alert("", &body).await;
    let (status, second) = itsmc.alert("", &body).await;
    assert_eq!((status, second["action"].as_str()), (200, Some("duplicate")));
    assert_eq!(second["workItems"], first["workItems"], "a duplicate names the work item the first made");
    assert_eq!(incidents(&sn).len(), 1);
    assert!(work_notes(&sn, first["workItems"][0]["id"].as_str().unwrap()).is_empty());
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_one_alert_make_one_incident() {
    let sn = emulator();
    sn.set_latency(Duration::from_millis(20));
    let itsmc = itsmc_basic(&sn, &[]).await;
    let body = fired("a7", "2026-11-25T12:00:00Z");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = format!("{}/api/alert", itsmc.url);
        let body = body.clone();
        tasks.spawn(async move {
            reqwest::Client::new().post(url).body(body).send().await.unwrap().json::<Value>().await.unwrap()
        });
    }
    let mut actions = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        actions.push(answer.unwrap()["action"].as_str().unwrap().to_string());
    }
    assert_eq!(actions.iter().filter(|a| *a == "created").count(), 1, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| *a == "duplicate").count(), 49, "{actions:?}");
    assert_eq!(incidents(&sn).len(), 1);
}

#[tokio::test]
async fn racing_alerts_of_one_rule_make_one_incident() {
    let sn = emulator();
    sn.set_latency(Duration::from_millis(20));
    let itsmc = itsmc_basic(&sn, &[("ITSMC_GROUPING", "rule")]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = format!("{}/api/alert", itsmc.url);
        let body = fired(&format!("race-{i}"), "2026-11-25T12:00:00Z");
        tasks.spawn(async move { reqwest::Client::new().post(url).body(body).send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = tasks.join_next().await {
        assert!(matches!(status.unwrap(), 200 | 202));
    }
    assert!(eventually(20, || itsmc.intake.recent().len() == 20).await, "every delivery finished");
    assert_eq!(incidents(&sn).len(), 1);
}

#[tokio::test]
async fn servicenow_down_queues_then_creates_once_when_back() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    sn.set_down(true);
    let body = fired("a8", "2026-11-25T12:00:00Z");
    let (status, answer) = itsmc.alert("", &body).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().unwrap().len(), 1, "{listed}");
    assert!(listed["pending"][0]["lastError"].as_str().unwrap().contains("503"), "{listed}");

    // The action group retries while we hold it: still one delivery.
    let (status, again) = itsmc.alert("", &body).await;
    assert_eq!((status, again["action"].as_str()), (200, Some("duplicate")));

    sn.set_down(false);
    assert!(eventually(10, || sn.count("incident") == 1).await, "the outbox delivered it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sn.count("incident"), 1, "exactly once");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["pending"].as_array().unwrap().len(), 0, "{listed}");
}

#[tokio::test]
async fn rate_limited_requests_wait_for_retry_after() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    sn.fail_next(1, 429, Some(1));
    let started = std::time::Instant::now();
    let (status, _) = itsmc.alert("", &fired("a9", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202);
    assert!(eventually(10, || sn.count("incident") == 1).await);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was honoured");
}

#[tokio::test]
async fn a_rejected_work_item_is_dead_lettered_and_listed() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    sn.fail_next(2, 400, None);
    let (status, answer) = itsmc.alert("", &fired("a10", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "itsm_rejected");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let dead = listed["deadLetters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["rule"], "test-metricAlertRule");
}

/// ServiceNow does not say when a refresh token ends: itsmc counts the configured lifespan from when it was
/// handed out, and the health route warns inside the warning window.
#[tokio::test]
async fn health_warns_before_the_refresh_token_runs_out() {
    let sn = emulator();
    let oauth = [("ITSMC_CLIENT_ID", CLIENT_ID), ("ITSMC_CLIENT_SECRET", CLIENT_SECRET)];
    let relaxed = itsmc_basic(&sn, &oauth).await;
    let (_, health) = relaxed.get("/api/health").await;
    assert!(health["connections"][0]["credentials"].is_null(), "no token yet: {health}");
    relaxed.alert("", &fired("w1", "2026-11-25T12:00:00Z")).await;
    let (_, health) = relaxed.get("/api/health").await;
    assert_eq!(health["connections"][0]["credentials"]["refreshTokenExpiresSoon"], false, "{health}");
    assert_eq!(health["warnings"], json!([]));

    // A 2-day lifespan, warned of 3 days ahead: due at once.
    let settings =
        [oauth[0], oauth[1], ("ITSMC_REFRESH_TOKEN_LIFESPAN_SECS", "172800"), ("ITSMC_REFRESH_TOKEN_WARN_DAYS", "3")];
    let due = itsmc_basic(&sn, &settings).await;
    due.alert("", &fired("w2", "2026-11-25T12:00:00Z")).await;
    let (_, health) = due.get("/api/health").await;
    let credentials = &health["connections"][0]["credentials"];
    assert_eq!(credentials["refreshTokenExpiresSoon"], true, "{health}");
    let ends = chrono::DateTime::parse_from_rfc3339(credentials["refreshTokenEndsAt"].as_str().unwrap()).unwrap();
    let left = ends.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left > chrono::Duration::hours(47) && left <= chrono::Duration::hours(48), "{left}");
    let warning = health["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("refresh token runs out"), "{health}");
    assert!(!warning.contains(CLIENT_SECRET) && !warning.contains(PASSWORD), "no secret in the warning");
}

#[tokio::test]
async fn oauth_tokens_are_renewed_with_the_refresh_token_then_the_password() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_CLIENT_ID", CLIENT_ID), ("ITSMC_CLIENT_SECRET", CLIENT_SECRET)]).await;
    let (status, _) = itsmc.alert("", &fired("o1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 200);
    assert_eq!(sn.token_grants(), ["password"]);
    assert!(sn.requests().iter().filter(|r| r.path.starts_with("/api/")).all(|r| r.authorization_kind == "bearer"));

    sn.expire_access_tokens();
    let (status, _) = itsmc.alert("", &fired("o2", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 200);
    assert_eq!(sn.token_grants(), ["password", "refresh_token"]);

    sn.expire_access_tokens();
    sn.revoke_refresh_tokens();
    let (status, _) = itsmc.alert("", &fired("o3", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 200);
    assert_eq!(sn.token_grants(), ["password", "refresh_token", "refresh_token", "password"]);
    assert_eq!(sn.count("incident"), 3);
}

#[tokio::test]
async fn wrong_credentials_queue_the_alert_and_never_show_the_password() {
    let sn = emulator();
    let url = sn.url();
    let itsmc = Itsmc::start(&[
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", url.as_str()),
        ("ITSMC_USERNAME", USER),
        ("ITSMC_PASSWORD", "wrong-Pa55-w0rd-never-logged"),
        ("ITSMC_CLIENT_ID", CLIENT_ID),
        ("ITSMC_CLIENT_SECRET", CLIENT_SECRET),
    ])
    .await;
    let (status, answer) = itsmc.alert("", &fired("w1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 202, "kept for when the credentials are fixed: {answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let text = listed.to_string();
    assert!(text.contains("refused the OAuth password grant"), "{text}");
    for secret in ["wrong-Pa55-w0rd-never-logged", CLIENT_SECRET] {
        assert!(!text.contains(secret), "a secret leaked into /api/workitems");
    }
}

#[tokio::test]
async fn lost_state_brings_no_duplicate() {
    let sn = emulator();
    let first = itsmc_basic(&sn, &[]).await;
    let (_, created) = first.alert("", &fired("l1", "2026-11-25T12:00:00Z")).await;
    let id = created["workItems"][0]["id"].as_str().unwrap().to_string();
    drop(first.stop().await);

    // A new instance with an empty data directory.
    let second = itsmc_basic(&sn, &[]).await;
    let (_, again) = second.alert("", &fired("l1", "2026-11-25T12:10:00Z")).await;
    assert_eq!(again["action"], "updated", "{again}");
    assert_eq!(again["workItems"][0]["id"], id.as_str());
    assert_eq!(sn.count("incident"), 1);

    let third = itsmc_basic(&sn, &[]).await;
    let (_, done) = third.alert("", &resolved("l1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(done["action"], "resolved", "a resolve finds the incident by its key: {done}");
    assert_eq!(s(&sn.record("incident", &id).unwrap(), "state"), "6");
}

#[tokio::test]
async fn events_go_through_event_management() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let (status, answer) = itsmc.alert("?workItemType=Event", &fired("e1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let events = sn.records("em_event");
    assert_eq!(events.len(), 1);
    assert_eq!(s(&events[0], "severity"), "4", "Sev3 is Warning");
    let key = s(&events[0], "message_key").to_string();
    assert_eq!(key.len(), 40);
    itsmc.alert("?workItemType=Event", &resolved("e1", "2026-11-25T12:00:00Z")).await;
    let events = sn.records("em_event");
    assert_eq!(events.len(), 2);
    assert_eq!(s(&events[1], "severity"), "0", "a resolve is a Clear event");
    assert_eq!(s(&events[1], "message_key"), key);
    assert!(sn.records("em_alert").iter().all(|a| s(a, "state") == "Closed"));
}

#[tokio::test]
async fn alerts_go_to_em_alert() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_WORK_ITEM_TYPE", "Alert")]).await;
    let (_, answer) = itsmc.alert("", &fired("al1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(answer["action"], "created", "{answer}");
    assert_eq!(answer["workItems"][0]["type"], "Alert");
    let (_, done) = itsmc.alert("", &resolved("al1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(done["action"], "resolved");
    let alerts = sn.records("em_alert");
    assert_eq!(alerts.len(), 1);
    assert_eq!(s(&alerts[0], "state"), "Closed");
}

#[tokio::test]
async fn every_fixture_is_accepted() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azure-monitor");
    let mut names: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for name in names {
        // Fragments and ARM templates are not alert payloads.
        if name.starts_with("cas-alertcontext-") || name.starts_with("action-group-") {
            continue;
        }
        let (status, answer) = itsmc.alert("", &fixture(&format!("azure-monitor/{name}"))).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let action = answer["action"].as_str().unwrap();
        assert!(["created", "updated", "ignored"].contains(&action), "{name}: {answer}");
    }
    assert!(sn.count("incident") > 10);
}

#[tokio::test]
async fn bad_requests_get_a_json_error_naming_the_problem() {
    let itsmc = Itsmc::start(&[]).await;
    let (status, answer) = itsmc.alert("", "this is not json").await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("not_json")), "{answer}");
    let (status, answer) = itsmc.alert("", r#"{"hello": "world"}"#).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("not_an_alert")), "{answer}");
    let (status, answer) =
        itsmc.alert("", r#"{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"severity":"Sev1","monitorCondition":"Fired"}}}"#).await;
    assert_eq!(status, 400);
    assert!(answer["error"]["message"].as_str().unwrap().contains("alertRule"), "{answer}");
    let (status, answer) = itsmc.alert("?connection=nope", &fired("b1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("unknown_connection")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("default"));
    let (status, answer) = itsmc.alert("?workItemType=Problem", &fired("b1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("workItemType"));
    let (status, answer) = itsmc.alert("?template=missing", &fired("b1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("unknown_template")));

    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let (status, answer) = itsmc.post("/api/alert", huge).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, _) = itsmc.post("/api/alert", deep).await;
    assert_eq!(status, 400);

    let response = reqwest::get(format!("{}/api/alert", itsmc.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "method_not_allowed");

    // Nothing of that was recorded.
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["recent"].as_array().unwrap().is_empty(), "{listed}");
    // And the server is still there.
    let (status, health) = itsmc.get("/api/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ready")));
}

#[tokio::test]
async fn dry_run_renders_the_request_it_would_send() {
    let itsmc = Itsmc::start(&[]).await;
    let (status, answer) = itsmc.alert("", &fired("d1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    let rendered = listed["dryRun"].as_array().unwrap();
    let create = rendered.iter().find(|r| r["method"] == "POST").expect("a POST was rendered");
    assert_eq!(create["path"], "/api/now/table/incident");
    assert_eq!(create["body"]["short_description"], "test-metricAlertRule on test-storageAccount");
    assert_eq!(listed["recent"][0]["action"], "created");
    // The same lifecycle as a real connection.
    let (_, done) = itsmc.alert("", &resolved("d1", "2026-11-25T12:00:00Z")).await;
    assert_eq!(done["action"], "resolved");
}

#[tokio::test]
async fn the_timer_envelope_drains_the_outbox_and_answers_in_kind() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_OUTBOX_BACKOFF_MS", "1")]).await;
    sn.set_down(true);
    itsmc.alert("", &fired("t1", "2026-11-25T12:00:00Z")).await;
    sn.set_down(false);
    let (status, answer) =
        itsmc.post("/function-sync", fixture("protocols/functions-customhandler-timer-request.json")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Outputs"].is_object());
    assert!(answer["Logs"].as_array().unwrap()[0].as_str().unwrap().starts_with("outbox:"));
    let returned: Value = serde_json::from_str(answer["ReturnValue"].as_str().unwrap()).unwrap();
    assert!(returned["outbox"]["pending"].is_number());
    assert!(eventually(10, || sn.count("incident") == 1).await);
}

#[tokio::test]
async fn a_slow_servicenow_gets_a_202_within_the_budget_and_the_work_finishes() {
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_ALERT_BUDGET_MS", "300")]).await;
    sn.set_latency(Duration::from_millis(700));
    let started = std::time::Instant::now();
    let (status, answer) = itsmc.alert("", &fired("slow1", "2026-11-25T12:00:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(650), "answered within the budget: {:?}", started.elapsed());
    assert!(eventually(10, || sn.count("incident") == 1).await, "the background task created it");
    assert!(eventually(5, || itsmc.intake.recent().first().is_some_and(|r| r.work_items.len() == 1)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sn.count("incident"), 1, "and only once");
}

/// A link claimed for a fire whose delivery was never recorded (or whose instance died) holds its key in
/// `creating`. A resolve that finds it after its lease must not create anything: it drops the claim and
/// resolves only what ServiceNow has under the key; the next fire then creates as usual.
#[tokio::test]
async fn a_resolve_never_creates_from_an_abandoned_claim() {
    use itsmc::store::Table;
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[]).await;
    let body = resolved("orphan", "2026-11-25T12:30:00Z");
    let alert = itsmc::alert::parse(body.as_bytes()).unwrap();
    let plans = itsmc::workitem::correlation_keys(
        "default",
        itsmc::workitem::WorkItemType::Incident,
        itsmc::workitem::Grouping::Alert,
        &alert,
    );
    let key = &plans[0].correlation_key;
    let abandoned = json!({"state": "creating", "owner": "a-delivery-that-was-never-recorded", "leaseUntil": 0});
    itsmc.intake.store.insert(Table::Links, key, &abandoned).await.unwrap();

    let (status, answer) = itsmc.alert("", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "ignored", "{answer}");
    assert_eq!(sn.count("incident"), 0, "a resolve created nothing");
    assert!(itsmc.intake.store.get(Table::Links, key).await.unwrap().is_none(), "the abandoned claim is gone");

    let (status, answer) = itsmc.alert("", &fired("orphan", "2026-11-25T12:40:00Z")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    assert_eq!(sn.count("incident"), 1);
}

/// Finished deliveries are deleted by the timer once older than `ITSMC_OUTBOX_KEEP_DAYS`; newer ones stay
/// (their duplicates are still answered as such). A delivery retried after that is a re-fire, not a new
/// incident: the work item stays linked.
#[tokio::test]
async fn the_timer_prunes_finished_deliveries_past_their_keeping_time() {
    use itsmc::store::{Filter, Swap, Table};
    let sn = emulator();
    let itsmc = itsmc_basic(&sn, &[("ITSMC_OUTBOX_KEEP_DAYS", "7")]).await;
    let (old_body, new_body) = (fired("p-old", "2026-11-01T12:00:00Z"), fired("p-new", "2026-11-25T12:00:00Z"));
    itsmc.alert("", &old_body).await;
    itsmc.alert("", &new_body).await;
    let store = &itsmc.intake.store;
    let done = store.scan(Table::Deliveries, Some(Filter { field: "state", value: "done" }), None, 10).await.unwrap();
    assert_eq!(done.entries.len(), 2);
    // Age the first one by eight days, as if it had finished then.
    let old = done.entries[0].clone();
    let mut value = old.value.clone();
    value["doneAt"] = json!(chrono::Utc::now().timestamp_millis() - 8 * 86_400_000);
    assert!(matches!(
        store.replace(Table::Deliveries, &old.key, &value, &old.etag).await.unwrap(),
        Swap::Replaced { .. }
    ));

    let (_, answer) =
        itsmc.post("/function-sync", fixture("protocols/functions-customhandler-timer-request.json")).await;
    assert!(answer["Logs"].to_string().contains("1 finished deliveries past their keeping time deleted"), "{answer}");
    assert!(store.get(Table::Deliveries, &old.key).await.unwrap().is_none(), "the old one is gone");
    let left = store.scan(Table::Deliveries, None, None, 10).await.unwrap();
    assert_eq!(left.entries.len(), 1, "the newer one stays");

    // Delivered again, neither makes a new incident: the kept one is a duplicate; the pruned one is too while
    // this instance still remembers it, else a re-fire of its linked incident.
    for body in [&old_body, &new_body] {
        let (status, again) = itsmc.alert("", body).await;
        assert_eq!(status, 200, "{again}");
        assert!(["duplicate", "updated"].contains(&again["action"].as_str().unwrap()), "{again}");
    }
    assert_eq!(sn.count("incident"), 2, "no new incident");
}
