//! Connection care against the ServiceNow emulator: `connections test` tells apart what can be wrong with a
//! connection, each with a stable code and the fix; `connections refresh` reads choice lists and templates,
//! keeps them, and names the configured values the instance does not offer.

mod support;

use serde_json::Value;
use support::harness::Itsmc;
use support::servicenow::{DEFAULT_PASSWORD, DEFAULT_USERNAME, EmulatorConfig, ServiceNowEmulator};

async fn itsmc(servicenow: &ServiceNowEmulator, extra: &[(&str, &str)]) -> Itsmc {
    let url = servicenow.url();
    let mut settings = vec![
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_CONNECTION_NAME", "prod"),
        ("ITSMC_URL", url.as_str()),
        ("ITSMC_USERNAME", DEFAULT_USERNAME),
        ("ITSMC_PASSWORD", DEFAULT_PASSWORD),
        ("ITSMC_OUTBOX_BACKOFF_MS", "1"),
    ];
    settings.extend_from_slice(extra);
    Itsmc::start(&settings).await
}

async fn test(itsmc: &Itsmc) -> Value {
    let (status, answer) = itsmc.post("/api/connections/prod/test", "").await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_test_tells_apart_what_is_wrong() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let itsmc = itsmc(&servicenow, &[]).await;
    let ok = test(&itsmc).await;
    assert_eq!((ok["ok"].as_bool(), ok["code"].as_str()), (Some(true), Some("ok")), "{ok}");

    servicenow.set_password(DEFAULT_USERNAME, "rotated");
    let wrong = test(&itsmc).await;
    assert_eq!(wrong["code"], "wrong_credentials", "{wrong}");
    assert!(wrong["message"].as_str().unwrap().contains("user name and password"));
    servicenow.set_password(DEFAULT_USERNAME, DEFAULT_PASSWORD);

    // The user signs in but an ACL refuses the table.
    servicenow.fail_next(1, 403, None);
    let forbidden = test(&itsmc).await;
    assert_eq!(forbidden["code"], "missing_role", "{forbidden}");
    assert!(forbidden["message"].as_str().unwrap().contains("itil"));

    servicenow.fail_next(1, 429, Some(30));
    let limited = test(&itsmc).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["message"].as_str().unwrap().contains("30 s"));

    servicenow.set_hibernating(true);
    let asleep = test(&itsmc).await;
    assert_eq!(asleep["code"], "hibernating", "{asleep}");
    assert!(asleep["message"].as_str().unwrap().contains("developer.servicenow.com"));
    // The health route shows the last result as a warning.
    let (_, health) = itsmc.get("/api/health").await;
    assert_eq!(health["connections"][0]["status"]["code"], "hibernating");
    assert!(health["warnings"].to_string().contains("hibernating"));
    servicenow.set_hibernating(false);

    servicenow.stop_listening();
    let gone = test(&itsmc).await;
    assert_eq!(gone["code"], "unreachable", "{gone}");
    assert!(gone["message"].as_str().unwrap().contains("ITSMC_URL"));
    servicenow.resume();

    let (status, unknown) = itsmc.post("/api/connections/nope/test", "").await;
    assert_eq!((status, unknown["error"]["code"].as_str()), (404, Some("unknown_connection")));
}

#[tokio::test]
async fn a_refresh_keeps_choices_and_templates_and_names_values_the_instance_lacks() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    servicenow.add_template("Disk full", "incident", "short_description=Disk full^urgency=2^EQ");
    servicenow.add_template("Change only", "change_request", "short_description=x^EQ");
    let itsmc = itsmc(&servicenow, &[("ITSMC_CATEGORY", "Hardwre"), ("ITSMC_CONTACT_TYPE", "{{ rule }}")]).await;
    let (status, refreshed) = itsmc.post("/api/connections/prod/refresh", "").await;
    assert_eq!(status, 200, "{refreshed}");
    let labels: Vec<&str> = refreshed["configuration"]["choices"]["category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"Hardware") && labels.contains(&"Inquiry / Help"), "{labels:?}");
    assert!(refreshed["configuration"]["choices"]["urgency"].as_array().unwrap().len() >= 3);
    let templates: Vec<&str> = refreshed["configuration"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(templates, ["Disk full"], "only the incident table's");
    // ITSMC's message, naming the value; a template over the alert cannot be checked ahead and is not named.
    assert_eq!(refreshed["diagnosis"]["code"], "invalid_values");
    assert_eq!(refreshed["diagnosis"]["message"], "No values found for the following fields: category (Hardwre)");

    // Kept in the store, where the next instance and the daily refresh find it.
    let cached = itsmc::connections::cached(itsmc.intake.store.as_ref(), "prod").await.unwrap().expect("kept");
    assert_eq!(cached.invalid, ["category (Hardwre)"]);
    let (_, health) = itsmc.get("/api/health").await;
    assert!(health["warnings"].to_string().contains("category (Hardwre)"), "{health}");
}

/// A label is as good as a value (ServiceNow takes either for these fields); with valid values the refresh is
/// clean, and the timer does not refresh again within the day.
#[tokio::test]
async fn valid_values_make_a_clean_refresh_and_the_timer_refreshes_once_a_day() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let itsmc = itsmc(&servicenow, &[("ITSMC_CATEGORY", "Hardware"), ("ITSMC_SYNC_KINDS", "Incident")]).await;
    let envelope = support::harness::fixture("protocols/functions-customhandler-timer-request.json");
    let (_, first) = itsmc.post("/function-sync", envelope.clone()).await;
    let logs = first["Logs"].to_string();
    assert!(logs.contains("configuration of prod:"), "{logs}");
    let cached = itsmc::connections::cached(itsmc.intake.store.as_ref(), "prod").await.unwrap().expect("kept");
    assert!(cached.diagnosis.ok && cached.invalid.is_empty(), "{cached:?}");
    let (_, second) = itsmc.post("/function-sync", envelope).await;
    assert!(!second["Logs"].to_string().contains("configuration of prod:"), "not due again");
}
