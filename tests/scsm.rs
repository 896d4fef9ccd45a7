//! System Center Service Manager through the Cireson portal, end to end: alerts posted to a running itsmc
//! (`ITSMC_PRODUCT=scsm`) become incidents in the portal emulator; the sync reads its incidents and change
//! requests; `connections test` tells what is wrong; configuration errors name the setting. What every product
//! shares is in `tests/products.rs`.

mod support;

use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use support::harness::{Itsmc, eventually, free_port, metric_alert};
use support::itsm::start_itsmc;
use support::scsm::*;

fn settings(portal: &ScsmEmulator) -> Vec<(String, String)> {
    support::itsm::EmulatedItsm::settings(portal)
}

async fn itsmc(portal: &ScsmEmulator, extra: &[(&str, &str)]) -> Itsmc {
    start_itsmc(portal, Some("scsm"), extra).await
}

fn incidents(portal: &ScsmEmulator) -> Vec<Map<String, Value>> {
    portal.work_items("System.WorkItem.Incident")
}

fn text<'a>(object: &'a Map<String, Value>, name: &str) -> &'a str {
    object.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn enum_id<'a>(object: &'a Map<String, Value>, name: &str) -> &'a str {
    object.get(name).and_then(|e| e.get("Id")).and_then(Value::as_str).unwrap_or_default()
}

fn comments(object: &Map<String, Value>) -> Vec<String> {
    object["AppliesToTroubleTicket"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ActionType"] == "AnalystComment")
        .map(|e| e["Description"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_alert_creates_an_incident_from_the_template_with_the_alerts_fields() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(
        &portal,
        &[
            ("ITSMC_SCSM_CLASSIFICATION_ID", CLASSIFICATION_NETWORK),
            ("ITSMC_SCSM_SUPPORT_GROUP_ID", SUPPORT_GROUP_CLOUD_OPS),
        ],
    )
    .await;
    let (status, answer) = itsmc.alert("", &metric_alert("s1", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let item = &answer["workItems"][0];
    let number = item["number"].as_str().unwrap();
    assert!(number.starts_with("IR"), "{item}");
    assert_eq!(item["url"].as_str().unwrap(), format!("{}/Incident/Edit/{number}", portal.url()));

    let all = incidents(&portal);
    assert_eq!(all.len(), 1);
    let incident = &all[0];
    assert_eq!(text(incident, "BaseId"), item["id"].as_str().unwrap(), "the work item is the incident's BaseId");
    assert_eq!(text(incident, "Title"), "test-metricAlertRule on test-storageAccount");
    assert!(text(incident, "Description").contains("Azure Monitor alert \"test-metricAlertRule\" fired."));
    let key = text(incident, CORRELATION_PROPERTY);
    assert!(key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{incident:?}");
    // Sev3 is urgency 2 (Medium), impact 3 (Low) by default.
    assert_eq!((enum_id(incident, "Urgency"), enum_id(incident, "Impact")), (URGENCY_MEDIUM, IMPACT_LOW));
    assert_eq!(incident["Classification"]["Name"], "Networking Problems");
    assert_eq!(incident["TierQueue"]["Name"], "Cloud Operations");
    assert_eq!(enum_id(incident, "Status"), STATUS_ACTIVE, "the template's status");
    assert_eq!(incident["CreatedWorkItem"]["DisplayName"], "itsmc service account", "createdById is the user");
}

#[tokio::test]
async fn refire_comments_resolve_resolves_and_a_duplicate_does_nothing() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[]).await;
    let first = metric_alert("s2", "Fired", "2026-11-25T12:00:00Z", "Sev3");
    let (_, created) = itsmc.alert("", &first).await;
    let id = created["workItems"][0]["id"].as_str().unwrap().to_string();
    let (_, duplicate) = itsmc.alert("", &first).await;
    assert_eq!(duplicate["action"], "duplicate", "{duplicate}");

    let (status, updated) = itsmc.alert("", &metric_alert("s2", "Fired", "2026-11-25T12:05:00Z", "Sev3")).await;
    assert_eq!((status, updated["action"].as_str()), (200, Some("updated")), "{updated}");
    assert_eq!(updated["workItems"][0]["id"], id.as_str());
    let incident = portal.work_item(&id).unwrap();
    let notes = comments(&incident);
    assert!(notes.iter().any(|n| n.contains("fired again") && n.contains("2 times")), "{notes:?}");
    let entry = incident["AppliesToTroubleTicket"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (entry["Title"].as_str(), entry["EnteredBy"].as_str()),
        (Some("Analyst Comment"), Some("itsmc service account"))
    );

    let (status, resolved) = itsmc.alert("", &metric_alert("s2", "Resolved", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!((status, resolved["action"].as_str()), (200, Some("resolved")), "{resolved}");
    let incident = portal.work_item(&id).unwrap();
    assert_eq!(enum_id(&incident, "Status"), STATUS_RESOLVED);
    assert_eq!(incident["ResolutionCategory"]["Name"], "Fixed by analyst");
    assert!(text(&incident, "ResolutionDescription").contains("was resolved at 2026-11-25T12:30:00"), "{incident:?}");
    assert!(!text(&incident, "ResolvedDate").is_empty());
    assert_eq!(incidents(&portal).len(), 1, "one incident all along");
}

#[tokio::test]
async fn a_refire_after_an_analyst_resolved_it_opens_a_new_one_or_reopens_by_policy() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[]).await;
    let (_, first) = itsmc.alert("", &metric_alert("s3", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    portal.update(&id, json!({ "Status": { "Id": STATUS_CLOSED } }));
    let (_, again) = itsmc.alert("", &metric_alert("s3", "Fired", "2026-11-25T13:00:00Z", "Sev3")).await;
    assert_eq!(again["action"], "created", "{again}");
    let all = incidents(&portal);
    assert_eq!(all.len(), 2);
    assert_eq!(text(&all[0], CORRELATION_PROPERTY), text(&all[1], CORRELATION_PROPERTY), "the same problem");

    let reopening = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = self::itsmc(&reopening, &[("ITSMC_REFIRE_AFTER_CLOSE", "reopen")]).await;
    let (_, first) = itsmc.alert("", &metric_alert("s4", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    let id = first["workItems"][0]["id"].as_str().unwrap().to_string();
    reopening.update(
        &id,
        json!({ "Status": { "Id": STATUS_RESOLVED }, "ResolutionCategory": { "Id": FIXED_BY_ANALYST }, "ResolutionDescription": "rebooted" }),
    );
    let (_, again) = itsmc.alert("", &metric_alert("s4", "Fired", "2026-11-25T13:00:00Z", "Sev3")).await;
    assert_eq!(again["action"], "updated", "{again}");
    let incident = reopening.work_item(&id).unwrap();
    assert_eq!(enum_id(&incident, "Status"), STATUS_ACTIVE);
    assert!(
        incident["ResolutionCategory"]["Id"].is_null() && incident["ResolutionDescription"].is_null(),
        "{incident:?}"
    );
    assert!(!comments(&incident).is_empty(), "the reopening is noted");
    assert_eq!(incidents(&reopening).len(), 1);
}

#[tokio::test]
async fn the_portal_down_queues_then_creates_once_and_a_rate_limit_is_waited_out() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[("ITSMC_ALERT_BUDGET_MS", "500")]).await;
    portal.set_down(true);
    let body = metric_alert("s5", "Fired", "2026-11-25T12:00:00Z", "Sev3");
    let (status, answer) = itsmc.alert("", &body).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["pending"][0]["lastError"].as_str().unwrap().contains("503"), "{listed}");
    portal.set_down(false);
    assert!(eventually(15, || incidents(&portal).len() == 1).await, "the outbox delivered it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(incidents(&portal).len(), 1, "exactly once");

    portal.fail_next(1, 429, Some(1));
    let started = std::time::Instant::now();
    let (status, _) = itsmc.alert("", &metric_alert("s6", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!(status, 202);
    assert!(eventually(10, || incidents(&portal).len() == 2).await);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was honoured");
}

/// Each change is several portal calls (read, commit...): a slow portal gets a 202 within the budget, and the
/// work finishes once.
#[tokio::test]
async fn a_slow_portal_answers_within_the_budget_and_the_work_finishes() {
    let portal = ScsmEmulator::start(ScsmConfig { latency: Duration::from_millis(250), ..ScsmConfig::default() });
    let itsmc = itsmc(&portal, &[("ITSMC_ALERT_BUDGET_MS", "400")]).await;
    let started = std::time::Instant::now();
    let (status, answer) = itsmc.alert("", &metric_alert("s8", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1_000), "answered within the budget");
    assert!(eventually(15, || incidents(&portal).len() == 1).await, "the work went on");
    portal.set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(incidents(&portal).len(), 1, "exactly once");
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_for_a_storm() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[]).await;
    itsmc.alert("", &metric_alert("t0", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!(portal.sign_ins(), 1);
    portal.expire_tokens();
    let storm: Vec<_> =
        (0..12).map(|i| metric_alert(&format!("t{}", i + 1), "Fired", "2026-11-25T12:00:00Z", "Sev3")).collect();
    let answers = futures_util::future::join_all(storm.iter().map(|body| itsmc.alert("", body))).await;
    for (status, answer) in &answers {
        assert_eq!((*status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    }
    assert_eq!(portal.sign_ins(), 2, "one sign-in for the whole storm");
    assert_eq!(incidents(&portal).len(), 13);
}

#[tokio::test]
async fn a_change_scsm_refuses_is_dead_lettered() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    // A classification id this SCSM does not have: every commit of a new incident is refused.
    let itsmc = itsmc(&portal, &[("ITSMC_SCSM_CLASSIFICATION_ID", "0d0d0d0d-0000-4000-8000-000000000000")]).await;
    let (status, answer) = itsmc.alert("", &metric_alert("s7", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (502, Some("itsm_rejected")), "{answer}");
    assert!(answer.to_string().contains("is not a value of the enumeration"), "SCSM's reason: {answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["deadLetters"].as_array().unwrap().len(), 1, "{listed}");
    assert!(incidents(&portal).is_empty());
}

async fn test(itsmc: &Itsmc) -> Value {
    let (status, answer) = itsmc.post("/api/connections/scsm/test", "").await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_connection_test_tells_apart_what_is_wrong() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[("ITSMC_OUTBOX_BACKOFF_MS", "1")]).await;
    let ok = test(&itsmc).await;
    assert_eq!((ok["ok"].as_bool(), ok["code"].as_str()), (Some(true), Some("ok")), "{ok}");
    assert!(incidents(&portal).is_empty(), "the test saves nothing");

    portal.set_password(USERNAME, "rotated");
    portal.expire_tokens();
    let wrong = test(&itsmc).await;
    assert_eq!(wrong["code"], "wrong_credentials", "{wrong}");
    assert!(wrong["message"].as_str().unwrap().contains("user name"), "{wrong}");
    portal.set_password(USERNAME, PASSWORD);

    portal.fail_next(1, 403, None);
    let forbidden = test(&itsmc).await;
    assert_eq!(forbidden["code"], "missing_role", "{forbidden}");

    portal.fail_next(1, 429, Some(30));
    let limited = test(&itsmc).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["message"].as_str().unwrap().contains("30 s"), "{limited}");

    portal.set_down(true);
    let down = test(&itsmc).await;
    assert_eq!(down["code"], "unavailable", "{down}");
    portal.set_down(false);

    let end_user = self::itsmc(&portal, &[("ITSMC_USERNAME", END_USER), ("ITSMC_PASSWORD", END_USER_PASSWORD)]).await;
    let not_analyst = test(&end_user).await;
    assert_eq!(not_analyst["code"], "missing_role", "{not_analyst}");
    assert!(not_analyst["message"].as_str().unwrap().contains("analyst"), "{not_analyst}");

    let no_template = self::itsmc(&portal, &[("ITSMC_SCSM_TEMPLATE_ID", "0d0d0d0d-0000-4000-8000-000000000000")]).await;
    let missing = test(&no_template).await;
    assert_eq!(missing["code"], "missing_template", "{missing}");

    // Without the extension's class id the property is looked for on the incident class, which lacks it.
    let base = settings(&portal);
    let mut env: Vec<(&str, &str)> = base
        .iter()
        .filter(|(k, _)| k != "ITSMC_SCSM_CORRELATION_CLASS_ID")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("ITSMC_CONNECTION_NAME", "scsm"));
    let wrong_class = Itsmc::start(&env).await;
    let property = test(&wrong_class).await;
    assert_eq!(property["code"], "missing_property", "{property}");
    assert!(property["message"].as_str().unwrap().contains("ITSMC_SCSM_CORRELATION_CLASS_ID"), "{property}");

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = self::itsmc(&portal, &[("ITSMC_URL", nowhere.as_str())]).await;
    let gone = test(&unreachable).await;
    assert_eq!(gone["code"], "unreachable", "{gone}");
    assert!(gone["message"].as_str().unwrap().contains("ITSMC_URL"), "{gone}");
}

#[tokio::test]
async fn the_sync_reads_a_backlog_in_windows_every_record_once() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let now = Utc::now();
    // Spread over two months, and a burst of 130 in two seconds (more than a page in one second).
    portal.seed("Incident", 900, now - chrono::Duration::days(60), now - chrono::Duration::hours(2));
    portal.seed(
        "Incident",
        130,
        now - chrono::Duration::minutes(30),
        now - chrono::Duration::minutes(30) + chrono::Duration::seconds(2),
    );
    portal.seed("ChangeRequest", 45, now - chrono::Duration::days(20), now - chrono::Duration::days(1));
    let itsmc = itsmc(&portal, &[("ITSMC_SYNC_PAGE_SIZE", "50")]).await;
    let report = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.expect("the sync runs");
    let run = |kind: &str| report.runs.iter().find(|r| r.kind == kind).expect("a run per kind");
    let (incident, change) = (run("Incident"), run("ChangeRequest"));
    assert_eq!((incident.error.as_deref(), change.error.as_deref()), (None, None), "{report:?}");
    assert_eq!(incident.sent, 1030, "every incident once: {incident:?}");
    assert_eq!(change.sent, 45, "{change:?}");
    // Windows of LastModified, not one query of everything per page.
    let criteria: Vec<_> =
        portal.requests().into_iter().filter(|r| r.path.ends_with("GetProjectionByCriteria")).collect();
    let largest = criteria.iter().map(|r| r.body.len()).max().unwrap_or(0);
    assert!(criteria.iter().all(|r| r.status == 200), "every criteria parsed");
    assert!(largest < 2_000, "queries stay small");
    // 22 pages of incidents and one of change requests: a few windows each, never a re-read of the whole backlog.
    assert!(criteria.len() < 100, "{} queries", criteria.len());
    let (_, rows) = itsmc.get("/api/servicedesk?type=Incident&limit=5").await;
    assert_eq!(rows["total"], 1030, "{rows}");
    let row = &rows["rows"][0];
    assert!(row["ServiceDeskId_s"].as_str().unwrap().starts_with("IR"), "{row}");
    assert!(row["LastModifiedDate_t"].as_str().unwrap().ends_with('Z'), "{row}");
    assert!(!row["IncidentState_s"].as_str().unwrap_or_default().is_empty(), "{row}");
    let (_, changes) = itsmc.get("/api/servicedesk?type=ChangeRequest&limit=1").await;
    assert!(changes["rows"][0]["ServiceDeskId_s"].as_str().unwrap().starts_with("CR"), "{changes}");
    assert_eq!(changes["rows"][0]["Type_s"], "Standard", "SCSM's change category is ServiceNow's type");

    // Nothing new: a second run sends nothing.
    let again = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.expect("the sync runs again");
    assert!(again.runs.iter().all(|r| r.sent == 0), "{again:?}");
}

#[tokio::test]
async fn settings_are_checked_at_start_and_name_what_is_wrong() {
    let error = |pairs: &[(&str, &str)]| {
        let lookup = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        itsmc::config::Config::from_lookup(lookup).err().map(|e| (e.setting, e.message))
    };
    let base = [
        ("ITSMC_PRODUCT", "scsm"),
        ("ITSMC_URL", "https://portal.contoso.com"),
        ("ITSMC_USERNAME", USERNAME),
        ("ITSMC_PASSWORD", PASSWORD),
    ];
    assert_eq!(error(&base), None);
    let with = |extra: (&'static str, &'static str)| {
        let mut pairs = base.to_vec();
        pairs.push(extra);
        error(&pairs).expect("refused")
    };
    assert_eq!(with(("ITSMC_WORK_ITEM_TYPE", "Event")).0, "ITSMC_WORK_ITEM_TYPE");
    assert_eq!(with(("ITSMC_SCSM_TEMPLATE_ID", "Default Incident Template")).0, "ITSMC_SCSM_TEMPLATE_ID");
    assert_eq!(with(("ITSMC_SCSM_CORRELATION_PROPERTY", "Title")).0, "ITSMC_SCSM_CORRELATION_PROPERTY");
    assert_eq!(with(("ITSMC_CATEGORY", "Hardware")).0, "ITSMC_CATEGORY");
    assert!(with(("ITSMC_CATEGORY", "Hardware")).1.contains("ITSMC_SCSM_CLASSIFICATION_ID"));
    assert_eq!(error(&base[..3]).unwrap().0, "ITSMC_PASSWORD");
    assert_eq!(error(&[base[0], base[2], base[3]]).unwrap().0, "ITSMC_URL");

    // The TOML file: the same settings in the connection's own table, errors named where the file has them.
    let dir = tempfile::tempdir().unwrap();
    let file = |body: &str| {
        let path = dir.path().join("connections.toml");
        std::fs::write(&path, body).unwrap();
        let path = path.display().to_string();
        itsmc::config::Config::from_lookup(|name| match name {
            "ITSMC_CONNECTIONS_FILE" => Some(path.clone()),
            "SCSM_PASSWORD" => Some(PASSWORD.into()),
            _ => None,
        })
    };
    let good = file(
        r#"[[connections]]
name = "ops"
product = "scsm"
url = "https://portal.contoso.com/"
username = 'CONTOSO\svc-itsmc'
password_env = "SCSM_PASSWORD"
settings = { scsm_support_group_id = "2e1a7c8b-6d3f-4a62-8c1b-4a6f3e2d1c01", scsm_language_code = "deu" }
"#,
    )
    .expect("a valid file");
    let itsmc::config::Product::Scsm(settings) = &good.connections[0].product else { panic!("an SCSM connection") };
    assert_eq!(settings.support_group_id.as_deref(), Some(SUPPORT_GROUP_TIER1));
    assert_eq!((settings.language_code.as_str(), settings.url.as_str()), ("DEU", "https://portal.contoso.com"));
    assert_eq!(good.connections[0].product.name(), "scsm");

    let typo = file(
        r#"[[connections]]
name = "ops"
product = "scsm"
url = "https://portal.contoso.com"
username = "svc"
password = "p"
settings = { scsm_templat_id = "a77bb0c9-e201-dd93-230c-799a66d9e8fa" }
"#,
    )
    .unwrap_err();
    assert!(typo.setting.ends_with("connections[0] (ops).settings.scsm_templat_id"), "{typo:?}");
    let bad = file(
        r#"[[connections]]
name = "ops"
product = "scsm"
url = "https://portal.contoso.com"
username = "svc"
password = "p"
work_item_type = "Alert"
settings = { scsm_resolution_category_id = "fixed" }
"#,
    )
    .unwrap_err();
    assert!(bad.setting.ends_with("connections[0] (ops).work_item_type"), "{bad:?}");
    let no_url = file("[[connections]]\nname = \"ops\"\nproduct = \"scsm\"\nusername = \"svc\"\npassword = \"p\"\n")
        .unwrap_err();
    assert!(no_url.setting.ends_with("connections[0] (ops).url"), "{no_url:?}");
}

fn commits(portal: &ScsmEmulator) -> usize {
    portal.requests().iter().filter(|r| r.path.ends_with("/Projection/Commit")).count()
}

/// An analyst saving the incident between itsmc's read and its commit is SCSM's concurrency check, not a refusal
/// of the change: the resolve waits in the outbox and goes through once the analyst is done.
#[tokio::test]
async fn a_resolve_that_collides_with_an_analysts_edits_stays_pending_until_it_goes_through() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[("ITSMC_OUTBOX_BACKOFF_MS", "200")]).await;
    let (_, created) = itsmc.alert("", &metric_alert("c1", "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
    let id = created["workItems"][0]["id"].as_str().unwrap().to_string();
    // Every attempt reads, commits, collides, reads again and collides again: three attempts' worth.
    portal.race_commits(6);
    let (status, answer) = itsmc.alert("", &metric_alert("c1", "Resolved", "2026-11-25T12:00:00Z", "Sev3")).await;
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["deadLetters"].as_array().is_none_or(Vec::is_empty), "not dead-lettered: {listed}");
    let pending = &listed["pending"][0];
    assert!(pending["lastError"].as_str().unwrap().contains("changed"), "{listed}");
    assert_eq!(enum_id(&portal.work_item(&id).unwrap(), "Status"), STATUS_ACTIVE);

    assert!(
        eventually(20, || portal.work_item(&id).is_some_and(|i| enum_id(&i, "Status") == STATUS_RESOLVED)).await,
        "resolved once the analyst stopped saving it"
    );
    assert!(commits(&portal) > 1 + 6, "the create, six collisions and the resolve");
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["deadLetters"].as_array().is_none_or(Vec::is_empty), "{listed}");
}

#[tokio::test]
async fn resolving_an_incident_a_person_already_closed_leaves_their_resolution() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[]).await;
    for (rule, status) in [("r1", STATUS_CLOSED), ("r2", STATUS_RESOLVED)] {
        let (_, created) = itsmc.alert("", &metric_alert(rule, "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
        let id = created["workItems"][0]["id"].as_str().unwrap().to_string();
        portal.update(
            &id,
            json!({ "Status": { "Id": status }, "ResolutionCategory": { "Id": FIXED_BY_ANALYST }, "ResolutionDescription": "rebooted by Beth" }),
        );
        let before = portal.work_item(&id).unwrap();
        let saved = commits(&portal);
        let (status_code, answer) =
            itsmc.alert("", &metric_alert(rule, "Resolved", "2026-11-25T12:00:00Z", "Sev3")).await;
        assert_eq!(status_code, 200, "{answer}");
        assert!(answer.get("error").is_none(), "{answer}");
        let after = portal.work_item(&id).unwrap();
        assert_eq!(after, before, "left as the person left it");
        assert_eq!(text(&after, "ResolutionDescription"), "rebooted by Beth");
        assert_eq!(commits(&portal), saved, "nothing committed");
    }
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert!(listed["deadLetters"].as_array().is_none_or(Vec::is_empty), "{listed}");
}

#[tokio::test]
async fn a_record_without_a_base_id_or_last_modified_is_skipped_and_the_rest_syncs() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let now = Utc::now();
    portal.seed("Incident", 30, now - chrono::Duration::hours(3), now - chrono::Duration::hours(1));
    let all = incidents(&portal);
    portal.hide(text(&all[3], "BaseId"), "BaseId");
    portal.hide(text(&all[17], "BaseId"), "LastModified");
    let itsmc = itsmc(&portal, &[("ITSMC_SYNC_PAGE_SIZE", "10")]).await;
    let report = itsmc.syncer.run(&itsmc::sync::Request::default(), &|_| {}).await.expect("the sync runs");
    let incident = report.runs.iter().find(|r| r.kind == "Incident").expect("an incident run");
    assert_eq!(incident.error, None, "{report:?}");
    assert_eq!(incident.sent, 28, "every record but the two: {incident:?}");
    let (_, rows) = itsmc.get("/api/servicedesk?type=Incident&limit=50").await;
    assert_eq!(rows["total"], 28, "{rows}");
    let numbers: Vec<&str> =
        rows["rows"].as_array().unwrap().iter().filter_map(|r| r["ServiceDeskId_s"].as_str()).collect();
    assert!(!numbers.contains(&text(&all[3], "Id")) && !numbers.contains(&text(&all[17], "Id")), "{numbers:?}");
}

/// A refused password is not tried again for every queued retry: that would lock `DOMAIN\user` in the directory.
#[tokio::test]
async fn a_refused_password_is_tried_once_not_once_per_queued_alert() {
    let portal = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = itsmc(&portal, &[("ITSMC_PASSWORD", "wrong-password"), ("ITSMC_OUTBOX_BACKOFF_MS", "1")]).await;
    for i in 0..5 {
        let (status, answer) =
            itsmc.alert("", &metric_alert(&format!("l{i}"), "Fired", "2026-11-25T12:00:00Z", "Sev3")).await;
        assert_ne!(status, 200, "{answer}");
    }
    // The outbox retries them meanwhile, with a backoff of a millisecond.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, listed) = itsmc.get("/api/workitems").await;
    let pending = listed["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 5, "{listed}");
    assert!(pending.iter().any(|p| p["attempts"].as_u64() > Some(1)), "retried: {listed}");
    assert!(
        pending.iter().all(|p| p["lastError"].as_str().is_some_and(|e| e.contains("refused to sign in"))),
        "{listed}"
    );
    assert_eq!(portal.sign_ins(), 1, "one sign-in attempt for every alert and retry");
    assert!(incidents(&portal).is_empty());
}
