//! itsmc on AWS Lambda, as Lambda runs it: the binary started with no arguments beside the Runtime API
//! emulator, fed Function URL, API Gateway and EventBridge events, its state in Table Storage (Azurite) and
//! its work items in the ServiceNow emulator. Its answers are compared with `itsmc serve`'s to the same
//! requests.

#[path = "support/azurite.rs"]
#[allow(dead_code)]
mod azurite;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::capture::CaptureExt;
use support::entra::{self, EntraEmulator};
use support::harness::{KillOnDrop, eventually, fixture, free_port, metric_alert};
use support::identity::TokenRegistry;
use support::lambda_runtime::{LambdaRuntime, Outcome};
use support::logs_ingestion::LogsIngestionEmulator;
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};
use support::tls::TestCa;

const USER: &str = "itsmc.integration";
const PASSWORD: &str = "Pa55-w0rd-never-logged";
const API_KEY: &str = "k3y-for-the-function-url-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn emulator() -> ServiceNowEmulator {
    ServiceNowEmulator::start(EmulatorConfig::default().with_user(USER, PASSWORD))
}

/// The settings both runs share: ServiceNow at `sn`, state in Azurite under a prefix of this run's own.
fn settings(sn: &ServiceNowEmulator, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = [
        ("AzureWebJobsStorage", azurite::connection_string_for(&azurite::table_endpoint())),
        ("ITSMC_TABLE_PREFIX", azurite::fresh_prefix()),
        ("ITSMC_PRODUCT", "servicenow".into()),
        ("ITSMC_URL", sn.url()),
        ("ITSMC_USERNAME", USER.into()),
        ("ITSMC_PASSWORD", PASSWORD.into()),
        ("ITSMC_OUTBOX_BACKOFF_MS", "50".into()),
        ("ITSMC_ALERT_BUDGET_MS", "1000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    settings
}

fn itsmc(args: &[&str], env: &[(String, String)]) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .captured(args.first().copied().unwrap_or("bootstrap"))
        .spawn()
        .expect("itsmc starts");
    KillOnDrop(child)
}

/// `itsmc` as Lambda starts its bootstrap: no arguments, the runtime's variables set.
fn bootstrap(runtime: &LambdaRuntime, settings: &[(String, String)]) -> KillOnDrop {
    let mut env = runtime.environment();
    env.extend_from_slice(settings);
    itsmc(&[], &env)
}

/// `itsmc serve` on a port of its own, once it answers.
async fn server(settings: &[(String, String)]) -> (KillOnDrop, String) {
    let port = free_port();
    let process = itsmc(&["serve", "--port", &port.to_string()], settings);
    let url = format!("http://127.0.0.1:{port}");
    let up = eventually(30, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
    assert!(up, "itsmc serve did not start");
    (process, url)
}

/// A Function URL event for `method path?query` with `body`.
fn function_url_event(method: &str, path_and_query: &str, body: &str) -> Value {
    let mut event: Value = serde_json::from_str(&fixture("aws/function-url-request.json")).unwrap();
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    event["rawPath"] = json!(path);
    event["rawQueryString"] = json!(query);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["body"] = json!(body);
    event
}

/// The HTTP answer inside a Lambda response: status and JSON body.
fn http_answer(outcome: Outcome) -> (u16, Value) {
    let Outcome::Response(response) = outcome else { panic!("an invocation error: {outcome:?}") };
    let status = response["statusCode"].as_u64().expect("statusCode") as u16;
    let body = response["body"].as_str().unwrap_or_default();
    let body = if response["isBase64Encoded"] == true {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).unwrap()).unwrap()
    } else {
        body.to_string()
    };
    assert!(
        response["headers"]["content-type"].as_str().is_some_and(|t| t.starts_with("application/json")),
        "{response}"
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn over_http(url: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let request = reqwest::Client::new().request(method.parse().unwrap(), format!("{url}{path}"));
    let request = if method == "POST" {
        request.header("content-type", "application/json").body(body.to_string())
    } else {
        request
    };
    let response = request.send().await.expect("itsmc serve answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// What may differ between two runs: ids, times, versions, the emulators' addresses.
fn comparable(value: &Value, sn_url: &str) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| {
                    !matches!(
                        key.as_str(),
                        "id" | "url"
                            | "at"
                            | "updated"
                            | "lastRunAt"
                            | "createdAt"
                            | "updatedAt"
                            | "version"
                            | "deliveryId"
                            | "firstAttemptAt"
                            | "nextAttemptAt"
                    )
                })
                .map(|(key, value)| (key.clone(), comparable(value, sn_url)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|item| comparable(item, sn_url)).collect()),
        Value::String(text) => Value::String(text.replace(sn_url, "<servicenow>")),
        other => other.clone(),
    }
}

#[tokio::test]
async fn function_url_events_get_the_same_answers_as_the_server() {
    let runtime = LambdaRuntime::start();
    let (sn_lambda, sn_server) = (emulator(), emulator());
    let _function = bootstrap(&runtime, &settings(&sn_lambda, &[]));
    let (_server, url) = server(&settings(&sn_server, &[])).await;

    let fired = metric_alert("lambda-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4");
    let steps: Vec<(&str, &str, String)> = vec![
        ("POST", "/api/alert", fired.clone()),
        ("POST", "/api/alert", fired.clone()),
        (
            "POST",
            "/api/alert?connection=default",
            metric_alert("lambda-1", "Resolved", "2026-11-25T12:00:00.000Z", "Sev4"),
        ),
        ("POST", "/api/alert", "{\"schemaId\": \"azureMonitorCommonAlertSchema\"".into()),
        ("POST", "/api/alert?connection=nowhere", fired.clone()),
        ("GET", "/api/alert", String::new()),
        ("GET", "/api/workitems", String::new()),
        ("GET", "/no/such/route", String::new()),
    ];
    for (method, path, body) in &steps {
        let expected = over_http(&url, method, path, body).await;
        let got = http_answer(runtime.invoke(&function_url_event(method, path, body), WAIT).await);
        assert_eq!(got.0, expected.0, "{method} {path}: Lambda answered {}, the server {}", got.1, expected.1);
        assert_eq!(
            comparable(&got.1, &sn_lambda.url()),
            comparable(&expected.1, &sn_server.url()),
            "{method} {path}: the answers differ"
        );
    }
    // And the work they did is the same: one incident each, resolved.
    for sn in [&sn_lambda, &sn_server] {
        let incidents = sn.records("incident");
        assert_eq!(incidents.len(), 1, "{incidents:?}");
        assert_eq!(incidents[0]["state"], "6");
    }
    let (status, health) = http_answer(runtime.invoke(&function_url_event("GET", "/", ""), WAIT).await);
    assert_eq!((status, health["status"].as_str()), (200, Some("ready")), "{health}");
}

#[tokio::test]
async fn an_api_gateway_event_with_a_base64_body_creates_the_incident() {
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let _function = bootstrap(&runtime, &settings(&sn, &[]));
    let mut event: Value = serde_json::from_str(&fixture("aws/apigw-v2-http-request.json")).unwrap();
    let body = metric_alert("apigw-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4");
    event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
    event["headers"]["content-length"] = json!(body.len().to_string());

    let (status, answer) = http_answer(runtime.invoke(&event, WAIT).await);
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let incidents = sn.records("incident");
    assert_eq!(incidents.len(), 1);
    assert_eq!(answer["workItems"][0]["number"], incidents[0]["number"], "{answer}");
}

#[tokio::test]
async fn the_schedule_delivers_what_waited_and_syncs_incidents() {
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let now = chrono::Utc::now();
    sn.seed_incidents(25, now - chrono::Duration::days(3), now - chrono::Duration::hours(1));
    let _function = bootstrap(&runtime, &settings(&sn, &[("ITSMC_SYNC_KINDS", "Incident")]));

    // ServiceNow is down when the alert comes: it waits in the outbox (Lambda runs no worker in between).
    sn.set_down(true);
    let (status, answer) = http_answer(
        runtime
            .invoke(
                &function_url_event(
                    "POST",
                    "/api/alert",
                    &metric_alert("sched-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4"),
                ),
                WAIT,
            )
            .await,
    );
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    sn.set_down(false);
    // Schedules are minutes apart; the retry it waits for is due after ITSMC_OUTBOX_BACKOFF_MS.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let schedule: Value = serde_json::from_str(&fixture("aws/eventbridge-scheduled-event.json")).unwrap();
    let Outcome::Response(tick) = runtime.invoke(&schedule, WAIT).await else { panic!("the schedule failed") };
    assert_eq!(tick["outbox"]["succeeded"], 1, "{tick}");
    assert_eq!(sn.records("incident").len(), 26, "the queued alert became the 26th incident");
    let run = &tick["sync"]["runs"][0];
    assert_eq!((run["kind"].as_str(), run["error"].as_str()), (Some("Incident"), None), "{tick}");
    assert!(run["sent"].as_u64().unwrap() >= 25, "{tick}");

    // The rows stay in Table Storage (no Logs Ingestion endpoint set) and are served from there.
    let (status, rows) = http_answer(runtime.invoke(&function_url_event("GET", "/api/servicedesk", ""), WAIT).await);
    assert_eq!(status, 200, "{rows}");
    let ids: Vec<&str> =
        rows["rows"].as_array().unwrap().iter().filter_map(|r| r["ServiceDeskId_s"].as_str()).collect();
    assert!(ids.len() >= 25, "{rows}");
}

#[tokio::test]
async fn the_api_key_guards_every_route_but_readiness() {
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let _function = bootstrap(&runtime, &settings(&sn, &[("ITSMC_API_KEY", API_KEY)]));
    let alert = metric_alert("key-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4");

    let (status, refused) = http_answer(runtime.invoke(&function_url_event("POST", "/api/alert", &alert), WAIT).await);
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("unauthorized")), "{refused}");
    assert!(!refused.to_string().contains(API_KEY));
    let wrong = function_url_event("POST", "/api/alert?code=not-the-key-0123456789", &alert);
    assert_eq!(http_answer(runtime.invoke(&wrong, WAIT).await).0, 401);
    let (status, _) = http_answer(runtime.invoke(&function_url_event("GET", "/api/workitems", ""), WAIT).await);
    assert_eq!(status, 401, "the work item list is guarded too");
    assert!(sn.records("incident").is_empty());

    let keyed = function_url_event("POST", &format!("/api/alert?code={API_KEY}"), &alert);
    let (status, answer) = http_answer(runtime.invoke(&keyed, WAIT).await);
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let mut by_header = function_url_event("GET", "/api/workitems", "");
    by_header["headers"]["x-functions-key"] = json!(API_KEY);
    assert_eq!(http_answer(runtime.invoke(&by_header, WAIT).await).0, 200);
    let (status, ready) = http_answer(runtime.invoke(&function_url_event("GET", "/", ""), WAIT).await);
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")), "the readiness probe needs no key");
    assert!(ready.get("connections").is_none(), "without the key, readiness tells nothing more: {ready}");
}

#[tokio::test]
async fn a_delivery_past_its_budget_is_left_to_the_outbox_not_finished_frozen() {
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let settings = settings(&sn, &[("ITSMC_ALERT_BUDGET_MS", "300"), ("ITSMC_OUTBOX_LEASE_SECS", "4")]);
    let _function = bootstrap(&runtime, &settings);
    sn.set_latency(Duration::from_millis(600));
    let alert =
        function_url_event("POST", "/api/alert", &metric_alert("slow-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4"));
    let (status, answer) = http_answer(runtime.invoke(&alert, WAIT).await);
    assert_eq!((status, answer["action"].as_str()), (202, Some("queued")), "{answer}");
    // Left running, the delivery would have looked up and created its incident within 1.3 s; on Lambda it
    // stopped with the answer (the instance is frozen then), and waits for its lease (4 s) to end.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(sn.records("incident").len(), 0, "nothing ran after the answer");
    sn.set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    let schedule: Value = serde_json::from_str(&fixture("aws/eventbridge-scheduled-event.json")).unwrap();
    let Outcome::Response(tick) = runtime.invoke(&schedule, WAIT).await else { panic!("the schedule failed") };
    assert_eq!(tick["outbox"]["succeeded"], 1, "{tick}");
    assert_eq!(sn.records("incident").len(), 1, "one incident, made by the outbox");
    let (_, again) = http_answer(runtime.invoke(&alert, WAIT).await);
    assert_eq!(again["action"], "duplicate", "{again}");
}

#[tokio::test]
async fn an_event_of_another_kind_is_an_invocation_error_and_the_function_goes_on() {
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let _function = bootstrap(&runtime, &settings(&sn, &[]));
    let s3: Value = serde_json::from_str(&fixture("aws/eventbridge-s3-object-created.json")).unwrap();
    let Outcome::Error(error) = runtime.invoke(&s3, WAIT).await else { panic!("an S3 event was answered") };
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("'Object Created'") && message.contains("schedule"), "{error}");

    let Outcome::Error(error) = runtime.invoke(&json!({ "hello": "world" }), WAIT).await else { panic!("answered") };
    assert!(error["errorMessage"].as_str().unwrap_or_default().contains("Function URL"), "{error}");

    let (status, _) = http_answer(runtime.invoke(&function_url_event("GET", "/", ""), WAIT).await);
    assert_eq!(status, 200, "the function still answers");
}

#[tokio::test]
async fn the_embedded_store_is_refused_at_init_with_the_fix() {
    let runtime = LambdaRuntime::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = vec![("ITSMC_DATA_DIR".to_string(), dir.path().display().to_string())];
    let mut function = bootstrap(&runtime, &settings);
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = function.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "itsmc kept running on the embedded store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let error = runtime.init_error().expect("the init error was reported to the runtime API");
    assert_eq!(error["errorType"], "Runtime.ItsmcConfiguration", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.contains("Table Storage") && message.contains("AzureWebJobsStorage__accountName"), "{message}");
    assert_eq!(runtime.next_calls(), 0, "no invocation is taken before the function can work");
}

#[tokio::test]
async fn on_aws_the_sync_and_the_connector_log_reach_logs_ingestion_with_a_client_secret() {
    // As on AWS: no managed identity; an Entra app registration's secret gets the Logs Ingestion tokens.
    let ca = TestCa::new();
    let tokens = TokenRegistry::default();
    let entra = EntraEmulator::start_tls(&ca, tokens.clone());
    let (app_id, app_secret) = ("5b0e9a3c-1d2f-4e6a-8b7c-9d0e1f2a3b4c", "Qx8~itsmc-lambda-secret-never-logged");
    entra.register_app(app_id, app_secret);
    let logs = LogsIngestionEmulator::start(&ca, tokens);
    let runtime = LambdaRuntime::start();
    let sn = emulator();
    let now = chrono::Utc::now();
    sn.seed_incidents(40, now - chrono::Duration::days(2), now - chrono::Duration::hours(1));
    let ca_file = ca.ca_file().display().to_string();
    let (logs_url, dcr, authority) = (logs.url(), logs.dcr_immutable_id(), entra.authority_host());
    let aws = [
        ("AZURE_TENANT_ID", entra::TENANT_ID),
        ("AZURE_CLIENT_ID", app_id),
        ("AZURE_CLIENT_SECRET", app_secret),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("ITSMC_CA_FILE", ca_file.as_str()),
        ("ITSMC_LOGS_ENDPOINT", logs_url.as_str()),
        ("ITSMC_DCR_IMMUTABLE_ID", dcr.as_str()),
        ("ITSMC_SYNC_KINDS", "Incident"),
    ];
    let _function = bootstrap(&runtime, &settings(&sn, &aws));

    let alert =
        function_url_event("POST", "/api/alert", &metric_alert("aws-1", "Fired", "2026-11-25T12:00:00.000Z", "Sev4"));
    let (status, answer) = http_answer(runtime.invoke(&alert, WAIT).await);
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    let log_rows = logs.rows("Custom-ServiceDeskLog_CL");
    assert_eq!(log_rows.len(), 1, "the alert's connector log row left before the answer: {log_rows:?}");

    let schedule: Value = serde_json::from_str(&fixture("aws/eventbridge-scheduled-event.json")).unwrap();
    let Outcome::Response(tick) = runtime.invoke(&schedule, WAIT).await else { panic!("the schedule failed") };
    let run = &tick["sync"]["runs"][0];
    assert_eq!(run["error"], Value::Null, "{tick}");
    assert_eq!(logs.row_count("Custom-ServiceDesk_CL"), 41, "40 seeded incidents and the alert's: {tick}");
    assert_eq!(logs.row_count("Custom-ServiceDeskLog_CL"), 2, "and the sync run's log row");
    let requests = entra.token_requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r.client_id.as_deref() == Some(app_id) && r.status == 200),
        "{requests:?}"
    );
}
