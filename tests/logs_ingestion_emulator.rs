//! The Logs Ingestion emulator behaves the way the Azure Monitor Logs Ingestion API does for the calls
//! itsmc makes: accepted uploads, each refusal with its status and body, throttling, size limits, gzip,
//! and the counting mode the load benchmark uses. Requests go through itsmc's own HTTP client trusting the
//! test CA (`ITSMC_CA_FILE`), with tokens from the managed identity emulator.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use support::identity::{self, IdentityConfig, IdentityEmulator};
use support::logs_ingestion::{
    self as ingestion, AUDIENCE, ColumnType, DEFAULT_DCR_IMMUTABLE_ID, DataCollectionRule, GzipError,
    LogsIngestionEmulator, MAX_CALL_BYTES, SERVICE_DESK_LOG_STREAM, SERVICE_DESK_STREAM, StreamDeclaration,
};
use support::tls::TestCa;

/// `gzip -9 -n` of a 40-row `Custom-ServiceDesk_CL` batch (19,681 bytes of JSON): dynamic Huffman blocks,
/// as real compressors write them. Rows are `INC0010001`… on hosts `web-00`…`web-39`.
const SYSTEM_GZIP_BATCH: &str = "\
H4sIAAAAAAACA82bTW/bRhCG/wqhSy5xtDPDL/lWyEDiQ9yg2aBAg6KQqbVEWOIKS0pBUOS/l7ZaB3KNXWsuMwcdJO4SFB9gMHhm369/T2y7de\
9d58JicMvJ5QQN5hemuDBgjbmE4tKYd4CUF2X1x+Tt5LMLh7ZxV66/n/uuc83Q+u5msXV/9ePmxneD7/1F3/lvp4t/9+H+enBb+313XHrdNe3S\
dcPpsuvl8eLN3Bgw42e8/N/Kz8P4iI+Xb9zD3b+Eleua74+/PK7b7hbN8PT1U2h9aIef1207bI77r9r+Ptv3i5XLFrf+4LJhHVy/9ptl5rts7f\
sh++ZuL4wZd41P1YR29/A3H/f+snFhyMJ+47I3H9rVOluON3uT3bXBLbM7H7Jpv7992tJP6Q6b6Xh3vw+Nex/8ftdPw2q6C/4w/qvQTz+2TRjf\
2d3wbu63u/3gpoc2DPvF5uOiWbed66dPzzIP7oHS1cN7GE5YZaYeQV0eVx1vE8YF/+788TbCGa0Bcc74IufrLvsU/Gp8e/0z3njKG5/zRhZvUM\
Qb2LwhzpusQXHe9CLvX7vswwjlGWs6ZU3PWROLNSpijWzWGGedW0PirPMXWf82vrbNwS3PLOQ5CzYpgk1s2BSHXViTi8MuXoQ93/j+f6hTNbxg\
oc4Voc7ZqPM46tKaQhx1+creLFW/eb1ZoYhzweZcxDlX1pTinKsze7NUCef1ZqUi3iWbdxnnXVtTifOuz+jNUjWc15tVilhXbNZVnPXMjnulWc\
/O6c1ShZzXm9WKYNds2HUUNhhrZtKwwby+N0vVcF5vNlOEesZGPYujBgvi3gxe681S9ZvVm4EibwZsbwZxbwZoQdybwbneLFXCWb0ZKPJmwPZm\
EPdmQBbEvRmc481SNZzVm4EibwZsbwZxbwa5BXFvBmd5s1QhZ/VmoMibAdubQdybQWFB3JvBGd4sVcNZvRko8mbA9mYQ92ZQWhD3ZlBKzjRBkT\
cDtjeDuDeDyoK4N4NKw0wTFHkzYHsziHszqC2IezOopWeaoMibAdubQdybwcyCuDeDmfhMExR5M2B7M4h7MzQWxL0ZGuGZJijyZsD2ZhD3ZggW\
xb0ZguRMExV5M2R7M4x7M0SL4t4MUcNMExV5M2R7M4x7MySL4t4MSXqmiYq8GbK9Gca9GeYWxb0Z5uIzTVTkzZDtzTDuzbBQcEAcC+GZJiryZs\
j2Zhj3ZlgqOCOOpeRMExV5M2R7M4x7M6wUnA3HSsNMExV5M2R7M4x7M6wVnA/HWnqmiYq8GbK9GSbOm4GC4+E4E59poiJvhmxvhnUy1CU+6CIj\
PNNERd4M2d4MZ8k8l/isi0RzmqTImxHbm5FJZrnEZ1ykIqdJirwZsb0ZQTLOJT7nIvGcJinyZsT2ZoTJPJf4mIvkc5qkyJsR25sRpUJd8gfEST\
qnSYq8GbG9GeWpPJf8GXESzWmSIm9GbG9GRSrLJX82nFTkNEmRNyO2N6MyFeeSPx9O4jlNUuTNiO3NqErmucS9GcnnNEmRNyO2N6M6GeoS92a5\
dE6TFHkzYnuzceePP/8BImrsruFMAAA=";

struct World {
    ca: TestCa,
    identity: IdentityEmulator,
    ingestion: LogsIngestionEmulator,
    http: reqwest::Client,
    token: String,
}

/// What the endpoint answered.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// A refusal: its status, its code in the body and in `x-ms-error-code`.
    fn assert_refused(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.body);
        assert_eq!(self.header("x-ms-error-code"), code);
        assert!(self.header("content-type").starts_with("application/json"));
    }
}

impl World {
    async fn start() -> World {
        let ca = TestCa::new();
        let identity = IdentityEmulator::start(IdentityConfig::default());
        let ingestion = LogsIngestionEmulator::start(&ca, identity.tokens());
        let http = itsmc::http::build_client(&ca.http_settings()).expect("itsmc's HTTP client");
        let token = token(&identity, AUDIENCE, None).await;
        World { ca, identity, ingestion, http, token }
    }

    fn url(&self, stream: &str) -> String {
        self.ingestion.upload_url(stream)
    }

    /// POST `body` to `stream` as JSON with the world's token.
    async fn upload(&self, stream: &str, body: &Value) -> Answer {
        self.send(&self.url(stream), Some(&self.token), &[], body.to_string().into_bytes()).await
    }

    /// POST `body` gzipped with `Content-Encoding: gzip`.
    async fn upload_gzip(&self, stream: &str, body: &[u8]) -> Answer {
        self.send(&self.url(stream), Some(&self.token), &[("content-encoding", "gzip")], body.to_vec()).await
    }

    async fn send(&self, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut request = self.http.post(url).header("content-type", "application/json").body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read_answer(request.send().await.expect("the request reaches the emulator")).await
    }
}

async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("the body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    Answer { status, headers, body }
}

/// A token for `resource` from the identity endpoint, as `ManagedIdentityCredential` asks for one.
async fn token(identity: &IdentityEmulator, resource: &str, client_id: Option<&str>) -> String {
    let mut query = vec![("resource", resource), ("api-version", identity::API_VERSION)];
    if let Some(client_id) = client_id {
        query.push(("client_id", client_id));
    }
    let response = reqwest::Client::new()
        .get(identity.endpoint())
        .header("x-identity-header", identity::DEFAULT_IDENTITY_HEADER)
        .query(&query)
        .send()
        .await
        .expect("the identity endpoint answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("a token response");
    body["access_token"].as_str().expect("access_token").to_string()
}

/// A `Custom-ServiceDesk_CL` row as the sync writes one.
fn incident(n: usize) -> Value {
    json!({
        "TimeGenerated": "2024-05-02T08:15:00.1234567Z",
        "ServiceDeskConnectionName_s": "contoso-snow",
        "ServiceDeskWorkItemType_s": "Incident",
        "ServiceDeskId_s": format!("INC{:07}", 10_000 + n),
        "IncidentState_s": "In Progress",
        "Priority_s": "3",
        "Title_s": format!("Disk usage above threshold on web-{n:02}"),
        "CreatedDate_t": "2024-05-01T08:00:00Z",
        "ClosedDate_t": null,
        "Computer": format!("web-{n:02}"),
    })
}

/// A `Custom-ServiceDeskLog_CL` row.
fn log_row() -> Value {
    json!({
        "TimeGenerated": "2024-05-02T08:15:00Z",
        "LogType_s": "Sync",
        "Message": "Synced 12 incidents",
        "Status_b": true,
        "ActionStatus_d": 1,
        "HttpStatus_d": 200.0,
        "DurationMs_d": 1532.5,
    })
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A batch of `rows` incidents of about `row_bytes` bytes of JSON each.
fn batch(first: usize, rows: usize, row_bytes: usize) -> Vec<u8> {
    let rows: Vec<Value> = (first..first + rows)
        .map(|n| {
            let mut row = incident(n);
            let padding = row_bytes.saturating_sub(row.to_string().len() + 20);
            row["Description_s"] = json!("x".repeat(padding));
            row
        })
        .collect();
    serde_json::to_vec(&rows).expect("JSON")
}

// ---------------------------------------------------------------------------------------------
// Accepted uploads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upload_answers_204_and_its_rows_are_stored_per_stream() {
    let world = World::start().await;
    assert_eq!(world.ingestion.dcr_immutable_id(), DEFAULT_DCR_IMMUTABLE_ID);
    assert!(world.ingestion.url().starts_with("https://127.0.0.1:"));

    let sent = world
        .send(
            &world.url(SERVICE_DESK_STREAM),
            Some(&world.token),
            &[("x-ms-client-request-id", "0b5e8c2d-1f4a-4c3e-8b2d-5a6f7e8d9c01")],
            json!([incident(1), incident(2)]).to_string().into_bytes(),
        )
        .await;
    assert_eq!(sent.status, 204, "{}", sent.body);
    assert_eq!(sent.body, Value::Null);
    assert_eq!(sent.header("x-ms-client-request-id"), "0b5e8c2d-1f4a-4c3e-8b2d-5a6f7e8d9c01");
    assert_eq!(sent.header("x-ms-request-id").len(), 36);
    assert_eq!(world.upload(SERVICE_DESK_LOG_STREAM, &json!([log_row()])).await.status, 204);

    assert_eq!(world.ingestion.rows(SERVICE_DESK_STREAM), vec![object(incident(1)), object(incident(2))]);
    assert_eq!(world.ingestion.rows(SERVICE_DESK_LOG_STREAM), vec![object(log_row())]);
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 2);
    assert_eq!(world.ingestion.distinct_ids(SERVICE_DESK_STREAM, "ServiceDeskId_s"), 2);

    let requests = world.ingestion.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, format!("/dataCollectionRules/{DEFAULT_DCR_IMMUTABLE_ID}/streams/{SERVICE_DESK_STREAM}"));
    assert_eq!(first.dcr_immutable_id.as_deref(), Some(DEFAULT_DCR_IMMUTABLE_ID));
    assert_eq!(first.stream.as_deref(), Some(SERVICE_DESK_STREAM));
    assert_eq!(first.api_version.as_deref(), Some("2023-01-01"));
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.content_encoding, None);
    assert_eq!(first.client_request_id.as_deref(), Some("0b5e8c2d-1f4a-4c3e-8b2d-5a6f7e8d9c01"));
    assert_eq!(first.client_id.as_deref(), Some(IdentityConfig::default().system_assigned.unwrap().client_id.as_str()));
    assert_eq!((first.status, first.rows, first.error_code.clone()), (204, 2, None));
    assert_eq!(first.wire_bytes, first.json_bytes);

    world.ingestion.clear();
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0);
    assert!(world.ingestion.rows(SERVICE_DESK_STREAM).is_empty());
    assert_eq!(world.ingestion.distinct_ids(SERVICE_DESK_STREAM, "ServiceDeskId_s"), 0);
    assert_eq!(world.ingestion.request_count(), 0);
}

#[tokio::test]
async fn gzip_bodies_are_decoded_whatever_blocks_the_compressor_wrote() {
    let world = World::start().await;
    let json = json!([incident(1), incident(2), incident(3)]).to_string();
    let compressed = ingestion::gzip(json.as_bytes());
    assert!(compressed.len() < json.len());
    assert_eq!(world.upload_gzip(SERVICE_DESK_STREAM, &compressed).await.status, 204);
    assert_eq!(
        world.ingestion.rows(SERVICE_DESK_STREAM),
        vec![object(incident(1)), object(incident(2)), object(incident(3))]
    );
    let request = &world.ingestion.requests()[0];
    assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
    assert_eq!((request.wire_bytes, request.json_bytes), (compressed.len(), json.len()));

    world.ingestion.clear();
    let system = base64::engine::general_purpose::STANDARD.decode(SYSTEM_GZIP_BATCH).expect("base64");
    assert_eq!(world.upload_gzip(SERVICE_DESK_STREAM, &system).await.status, 204);
    let rows = world.ingestion.rows(SERVICE_DESK_STREAM);
    assert_eq!(rows.len(), 40);
    assert_eq!(rows[0]["ServiceDeskId_s"], "INC0010001");
    assert_eq!(rows[39]["Computer"], "web-39");
    assert_eq!(rows[39]["CreatedDate_t"], "2024-05-01 08:00:00");
    assert_eq!(world.ingestion.requests()[0].json_bytes, 19_681);
}

#[tokio::test]
async fn the_endpoint_is_also_reachable_under_a_dce_host_name() {
    let world = World::start().await;
    let client = world.ingestion.client(&world.ca);
    let url = format!(
        "{}/dataCollectionRules/{DEFAULT_DCR_IMMUTABLE_ID}/streams/{SERVICE_DESK_STREAM}?api-version=2023-01-01",
        world.ingestion.dce_url()
    );
    assert!(url.starts_with("https://itsmc-emulator-5kyl.eastus-1.ingest.monitor.azure.com:"));
    let response = client
        .post(url)
        .bearer_auth(&world.token)
        .header("content-type", "application/json")
        .body(json!([incident(7)]).to_string())
        .send()
        .await
        .expect("reaches the emulator");
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn any_dcr_and_stream_can_be_configured() {
    let ca = TestCa::new();
    let identity = IdentityEmulator::start(IdentityConfig::default());
    // The overview's sample DCR (fixture logs-ingestion-dcr-direct.json), and one declared in code.
    let fixture = |name: &str| {
        std::fs::read(format!("{}/tests/fixtures/protocols/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
    };
    let sample: Value = serde_json::from_slice(&fixture("logs-ingestion-dcr-direct.json")).expect("DCR JSON");
    let sample = DataCollectionRule::from_definition("dcr-000a00a000a00000a000000aa000a0aa", &sample);
    let counters = StreamDeclaration::new(
        "Custom-Counters",
        &[("Time", ColumnType::Datetime), ("Level", ColumnType::Int), ("Bytes", ColumnType::Long)],
    );
    let counters = DataCollectionRule::new("dcr-00a1b2c3d4e5f60718293a4b5c6d7e8f", vec![counters]);
    let ingestion = LogsIngestionEmulator::start_with(&ca, identity.tokens(), vec![sample, counters]);
    assert_eq!(ingestion.dcr_immutable_id(), "dcr-000a00a000a00000a000000aa000a0aa");
    let http = itsmc::http::build_client(&ca.http_settings()).expect("client");
    // The scope's audience with its trailing slash is the same audience.
    let token = token(&identity, "https://monitor.azure.com/", None).await;
    let post = |url: String, body: Vec<u8>| {
        http.post(url).bearer_auth(&token).header("content-type", "application/json; charset=utf-8").body(body).send()
    };

    // The overview's request body (fixture logs-ingestion-request-body.json).
    let url = ingestion.upload_url("Custom-MyTable");
    let reply = read_answer(post(url, fixture("logs-ingestion-request-body.json")).await.expect("answers")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let rows = ingestion.rows("Custom-MyTable");
    assert_eq!(rows[0]["Time"], "2023-11-14 15:10:02");
    assert_eq!(rows[0]["NestedJson"]["Level2"]["Key2"], "Value04");

    let url = format!(
        "{}/dataCollectionRules/dcr-00a1b2c3d4e5f60718293a4b5c6d7e8f/streams/Custom-Counters?api-version=2023-01-01",
        ingestion.url()
    );
    let body = json!([
        { "Time": "2024-01-01", "Level": -2147483648i64, "Bytes": 9007199254740993u64 },
        { "Time": "2024-01-02", "Level": 7, "Bytes": -1 },
    ]);
    let reply = read_answer(post(url.clone(), body.to_string().into_bytes()).await.expect("answers")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(ingestion.rows("Custom-Counters")[0]["Bytes"], 9007199254740993u64);
    assert_eq!(ingestion.distinct_ids("Custom-Counters", "Level"), 2);
    for (value, found) in [(json!(2147483648u64), "number 2147483648"), (json!(1.5), "number 1.5")] {
        let body = json!([{ "Level": value }]).to_string().into_bytes();
        let reply = read_answer(post(url.clone(), body).await.expect("answers")).await;
        reply.assert_refused(400, "InvalidPayload");
        assert!(reply.message().ends_with(&format!("is declared int, got {found}.")), "{}", reply.message());
    }
    // Streams belong to their DCR.
    let crossed = ingestion.upload_url("Custom-Counters");
    let reply = read_answer(post(crossed, b"[]".to_vec()).await.expect("answers")).await;
    reply.assert_refused(404, "StreamNotFound");
}

// ---------------------------------------------------------------------------------------------
// Authentication and authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_a_valid_monitor_token_answers_401() {
    let world = World::start().await;
    let url = world.url(SERVICE_DESK_STREAM);
    let body = || json!([incident(1)]).to_string().into_bytes();

    let missing = world.send(&url, None, &[], body()).await;
    missing.assert_refused(401, "InvalidAuthenticationToken");

    let unknown = world.send(&url, Some("eyJ0eXAiOiJKV1QifQ.e30.c2ln"), &[], body()).await;
    unknown.assert_refused(401, "InvalidAuthenticationToken");

    let vault_token = token(&world.identity, "https://vault.azure.net", None).await;
    let wrong_audience = world.send(&url, Some(&vault_token), &[], body()).await;
    wrong_audience.assert_refused(401, "InvalidAuthenticationTokenAudience");
    assert!(wrong_audience.message().contains("https://vault.azure.net"), "{}", wrong_audience.message());

    world.identity.expire_tokens();
    let expired = world.send(&url, Some(&world.token), &[], body()).await;
    expired.assert_refused(401, "InvalidAuthenticationToken");
    assert!(expired.message().contains("expired"));

    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0);
    assert!(world.ingestion.requests().iter().all(|r| r.status == 401 && r.rows == 0));
}

#[tokio::test]
async fn an_identity_without_the_publisher_role_gets_403_operation_failed() {
    let world = World::start().await;
    let user_assigned = IdentityConfig::default().user_assigned[0].client_id.clone();
    let other = token(&world.identity, AUDIENCE, Some(&user_assigned)).await;
    world.ingestion.set_publisher(&user_assigned, false);

    let refused = world
        .send(&world.url(SERVICE_DESK_STREAM), Some(&other), &[], json!([incident(1)]).to_string().into_bytes())
        .await;
    refused.assert_refused(403, "OperationFailed");
    assert!(refused.message().starts_with(&format!(
        "The authentication token provided does not have access to ingest data for the data collection rule with \
         immutable Id '{DEFAULT_DCR_IMMUTABLE_ID}'"
    )));
    assert!(refused.message().contains("AccessGranted: False"));
    assert_eq!(world.ingestion.requests()[0].client_id.as_deref(), Some(user_assigned.as_str()));

    // The system-assigned identity still has the role; granting it back lets the other one in.
    assert_eq!(world.upload(SERVICE_DESK_STREAM, &json!([incident(2)])).await.status, 204);
    world.ingestion.set_publisher(&user_assigned, true);
    let accepted = world
        .send(&world.url(SERVICE_DESK_STREAM), Some(&other), &[], json!([incident(3)]).to_string().into_bytes())
        .await;
    assert_eq!(accepted.status, 204);
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 2);
}

// ---------------------------------------------------------------------------------------------
// Addressing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_version_rule_stream_and_method_are_checked() {
    let world = World::start().await;
    let body = || json!([incident(1)]).to_string().into_bytes();
    let base = format!(
        "{}/dataCollectionRules/{DEFAULT_DCR_IMMUTABLE_ID}/streams/{SERVICE_DESK_STREAM}",
        world.ingestion.url()
    );

    world.send(&base, Some(&world.token), &[], body()).await.assert_refused(400, "MissingApiVersionParameter");
    let old = world.send(&format!("{base}?api-version=2020-01-01"), Some(&world.token), &[], body()).await;
    old.assert_refused(400, "UnsupportedApiVersion");
    assert!(old.message().contains("2020-01-01"));
    let preview = world.send(&format!("{base}?api-version=2021-11-01-preview"), Some(&world.token), &[], body()).await;
    assert_eq!(preview.status, 204);

    let unknown_rule = format!(
        "{}/dataCollectionRules/dcr-ffffffffffffffffffffffffffffffff/streams/{SERVICE_DESK_STREAM}?api-version=2023-01-01",
        world.ingestion.url()
    );
    let answer = world.send(&unknown_rule, Some(&world.token), &[], body()).await;
    answer.assert_refused(404, "DataCollectionRuleNotFound");
    assert!(answer.message().contains("dcr-ffffffffffffffffffffffffffffffff"));

    let unknown_stream = world.send(&world.url("Custom-Nope_CL"), Some(&world.token), &[], body()).await;
    unknown_stream.assert_refused(404, "StreamNotFound");
    assert!(unknown_stream.message().contains("Custom-Nope_CL"));

    let elsewhere = format!("{}/streams/{SERVICE_DESK_STREAM}?api-version=2023-01-01", world.ingestion.url());
    world.send(&elsewhere, Some(&world.token), &[], body()).await.assert_refused(404, "NotFound");

    let get = world.http.get(world.url(SERVICE_DESK_STREAM)).bearer_auth(&world.token).send().await.expect("answers");
    read_answer(get).await.assert_refused(405, "MethodNotAllowed");

    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 1);
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bodies_that_are_not_arrays_of_objects_answer_400_in_strict_mode() {
    let world = World::start().await;
    let url = world.url(SERVICE_DESK_STREAM);
    let not_json = world.send(&url, Some(&world.token), &[], b"[{\"Computer\": \"a\",]".to_vec()).await;
    not_json.assert_refused(400, "InvalidPayload");
    assert!(not_json.message().contains("not valid JSON"), "{}", not_json.message());

    let trailing = world.send(&url, Some(&world.token), &[], b"[] []".to_vec()).await;
    trailing.assert_refused(400, "InvalidPayload");

    let lone_object = world.upload(SERVICE_DESK_STREAM, &incident(1)).await;
    lone_object.assert_refused(400, "InvalidPayload");
    assert!(lone_object.message().contains("JSON array of objects, not an object"), "{}", lone_object.message());

    let scalar_row = world.upload(SERVICE_DESK_STREAM, &json!([incident(1), "INC0010002"])).await;
    scalar_row.assert_refused(400, "InvalidPayload");
    assert_eq!(scalar_row.message(), "Row 1 of the request body must be a JSON object, not a string.");

    let plain_text = world.send(&url, Some(&world.token), &[], b"\xff\xfe".to_vec()).await;
    plain_text.assert_refused(400, "InvalidPayload");

    let empty = world.upload(SERVICE_DESK_STREAM, &json!([])).await;
    assert_eq!(empty.status, 204);

    let form = world
        .http
        .post(&url)
        .bearer_auth(&world.token)
        .header("content-type", "text/plain")
        .body(json!([incident(1)]).to_string())
        .send()
        .await
        .expect("answers");
    read_answer(form).await.assert_refused(415, "UnsupportedMediaType");

    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0);
}

#[tokio::test]
async fn an_undeclared_column_answers_400_naming_it_in_strict_mode() {
    let world = World::start().await;
    let mut row = incident(1);
    row["Assignee"] = json!("ops");
    let answer = world.upload(SERVICE_DESK_STREAM, &json!([incident(0), row])).await;
    answer.assert_refused(400, "InvalidPayload");
    assert_eq!(
        answer.message(),
        "Row 1: column 'Assignee' is not declared in stream 'Custom-ServiceDesk_CL' (the service would drop it)."
    );
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0, "a refused batch stores nothing");
}

#[tokio::test]
async fn values_must_fit_their_declared_types_in_strict_mode() {
    let world = World::start().await;
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (SERVICE_DESK_STREAM, "TimeGenerated", json!("yesterday"), "declared datetime, got string \"yesterday\""),
        (SERVICE_DESK_STREAM, "CreatedDate_t", json!("2024-02-30T00:00:00Z"), "declared datetime"),
        (SERVICE_DESK_STREAM, "CreatedDate_t", json!(1714550400), "declared datetime, got number 1714550400"),
        (SERVICE_DESK_STREAM, "Priority_s", json!(3), "declared string, got number 3"),
        (SERVICE_DESK_STREAM, "Title_s", json!({"text": "x"}), "declared string, got an object"),
        (SERVICE_DESK_LOG_STREAM, "Status_b", json!("true"), "declared boolean, got string \"true\""),
        (SERVICE_DESK_LOG_STREAM, "HttpStatus_d", json!("200"), "declared real, got string \"200\""),
    ];
    for (stream, column, value, expected) in cases {
        let mut row = if stream == SERVICE_DESK_STREAM { incident(1) } else { log_row() };
        row[column] = value;
        let answer = world.upload(stream, &json!([row])).await;
        answer.assert_refused(400, "InvalidPayload");
        assert!(
            answer.message().starts_with(&format!("Row 0: column '{column}' of stream '{stream}'")),
            "{}",
            answer.message()
        );
        assert!(answer.message().contains(expected), "{}", answer.message());
    }

    // What does fit: every datetime shape the docs' examples use, nulls anywhere, integers as reals.
    let mut row = incident(2);
    row["TimeGenerated"] = json!("2023-11-14 15:10:02");
    row["CreatedDate_t"] = json!("2021-12-08T23:51:14.1104269Z");
    row["ClosedDate_t"] = json!("2024-05-01T10:00:00+02:00");
    row["ResolvedDate_t"] = json!("2024-05-01");
    row["Title_s"] = Value::Null;
    assert_eq!(world.upload(SERVICE_DESK_STREAM, &json!([row])).await.status, 204);
    assert_eq!(world.upload(SERVICE_DESK_LOG_STREAM, &json!([log_row()])).await.status, 204);
}

#[test]
fn datetime_shapes() {
    for ok in [
        "2024-05-01",
        "2024-05-01T08:00Z",
        "2024-05-01T08:00:00",
        "2024-05-01 08:00:00.5",
        "2024-02-29T23:59:59.123456789Z",
        "2024-05-01T08:00:00-0530",
    ] {
        assert!(ingestion::is_datetime(ok), "{ok}");
    }
    for bad in [
        "",
        "2024-5-1",
        "2023-02-29",
        "2024-13-01",
        "2024-05-01T24:00:00Z",
        "2024-05-01T08:00:00.Z",
        "2024-05-01T08:00:00.1234567890Z",
        "2024-05-01T08:00:00+25:00",
        "2024-05-01T08:00:00 UTC",
        "1714550400",
    ] {
        assert!(!ingestion::is_datetime(bad), "{bad}");
    }
}

#[tokio::test]
async fn lenient_mode_drops_what_the_service_would_drop_and_answers_204() {
    let world = World::start().await;
    world.ingestion.set_strict(false);

    let lone_object = world.upload(SERVICE_DESK_STREAM, &incident(1)).await;
    assert_eq!(lone_object.status, 204, "the service takes a lone object and ingests nothing");
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0);

    let mut row = incident(2);
    row["Assignee"] = json!("ops");
    row["Priority_s"] = json!(3);
    let answer = world.upload(SERVICE_DESK_STREAM, &json!([row, 42, incident(3)])).await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    let rows = world.ingestion.rows(SERVICE_DESK_STREAM);
    assert_eq!(rows.len(), 2, "the element that is not an object is skipped");
    assert!(!rows[0].contains_key("Assignee") && !rows[0].contains_key("Priority_s"));
    assert_eq!(rows[0]["ServiceDeskId_s"], "INC0010002");
    assert_eq!(world.ingestion.dropped_values(SERVICE_DESK_STREAM), 2);
}

// ---------------------------------------------------------------------------------------------
// gzip and sizes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gzip_that_does_not_decode_answers_400() {
    let world = World::start().await;
    let good = ingestion::gzip(json!([incident(1)]).to_string().as_bytes());
    let mut bad_crc = good.clone();
    let at = bad_crc.len() - 6;
    bad_crc[at] ^= 1;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (json!([incident(1)]).to_string().into_bytes(), "magic number"),
        (good[..good.len() - 3].to_vec(), "trailer"),
        (good[..14].to_vec(), "truncated"),
        (bad_crc, "CRC-32"),
    ];
    for (body, reason) in cases {
        let answer = world.upload_gzip(SERVICE_DESK_STREAM, &body).await;
        answer.assert_refused(400, "InvalidContentEncoding");
        assert!(answer.message().contains(reason), "{}", answer.message());
    }
    let brotli =
        world.send(&world.url(SERVICE_DESK_STREAM), Some(&world.token), &[("content-encoding", "br")], good).await;
    brotli.assert_refused(400, "UnsupportedContentEncoding");
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 0);
}

#[tokio::test]
async fn a_call_over_one_megabyte_sent_or_decompressed_answers_413() {
    let world = World::start().await;
    // Just under the limit: accepted, plain and gzipped.
    let fits = batch(0, 1000, 1040);
    assert!(fits.len() <= MAX_CALL_BYTES && fits.len() > MAX_CALL_BYTES - 20_000, "{}", fits.len());
    let answer = world.send(&world.url(SERVICE_DESK_STREAM), Some(&world.token), &[], fits.clone()).await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(world.upload_gzip(SERVICE_DESK_STREAM, &ingestion::gzip(&fits)).await.status, 204);

    // Over it as sent.
    let over = batch(0, 1100, 1000);
    assert!(over.len() > MAX_CALL_BYTES);
    let answer = world.send(&world.url(SERVICE_DESK_STREAM), Some(&world.token), &[], over.clone()).await;
    answer.assert_refused(413, "RequestEntityTooLarge");

    // Small once compressed, over it after gunzip.
    let compressed = ingestion::gzip(&over);
    assert!(compressed.len() < MAX_CALL_BYTES / 4);
    let answer = world.upload_gzip(SERVICE_DESK_STREAM, &compressed).await;
    answer.assert_refused(413, "RequestEntityTooLarge");
    assert!(answer.message().contains("after gunzip"), "{}", answer.message());

    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 2000);

    // The limits can be moved, e.g. to the decimal megabyte .NET batches to.
    world.ingestion.set_body_limits(1_000_000, 1_000_000);
    let answer = world.send(&world.url(SERVICE_DESK_STREAM), Some(&world.token), &[], fits).await;
    answer.assert_refused(413, "RequestEntityTooLarge");
}

#[test]
fn gunzip_takes_stored_and_multi_member_data_and_stops_at_the_limit() {
    let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // A member of stored blocks, written by hand (the largest stored block is 65,535 bytes).
    let mut stored = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for (i, chunk) in data.chunks(65_535).enumerate() {
        let last = i == data.len().div_ceil(65_535) - 1;
        stored.push(u8::from(last));
        let length = chunk.len() as u16;
        stored.extend_from_slice(&length.to_le_bytes());
        stored.extend_from_slice(&(!length).to_le_bytes());
        stored.extend_from_slice(chunk);
    }
    stored.extend_from_slice(&ingestion::crc32(&data).to_le_bytes());
    stored.extend_from_slice(&(data.len() as u32).to_le_bytes());
    assert_eq!(ingestion::gunzip(&stored, usize::MAX), Ok(data.clone()));

    let mut two = ingestion::gzip(b"[{\"a\":1},");
    two.extend(ingestion::gzip(b"{\"a\":2}]"));
    assert_eq!(ingestion::gunzip(&two, usize::MAX).as_deref(), Ok(&b"[{\"a\":1},{\"a\":2}]"[..]));

    let zeros = ingestion::gzip(&vec![0u8; 5_000_000]);
    assert!(zeros.len() < 200_000);
    assert_eq!(ingestion::gunzip(&zeros, MAX_CALL_BYTES), Err(GzipError::TooLarge));
    assert_eq!(ingestion::gunzip(&zeros, 5_000_000).map(|d| d.len()), Ok(5_000_000));
    assert_eq!(ingestion::crc32(b"123456789"), 0xcbf4_3926);
}

/// With a `gzip` program on the machine, both directions are checked against it: JSON, incompressible
/// bytes (stored blocks) and long runs (long matches), at three compression levels.
#[test]
fn gzip_and_gunzip_agree_with_the_system_gzip() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], input: &[u8]| -> Option<Vec<u8>> {
        let mut child = Command::new("gzip").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
        let mut stdin = child.stdin.take()?;
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        output.status.success().then_some(output.stdout)
    };
    if run(&["-c"], b"probe").is_none() {
        eprintln!("no gzip program: skipped");
        return;
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..150_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let runs: Vec<u8> =
        (0..300_000u32).map(|i| if (i / 1000) % 3 == 0 { b'a' } else { (i % 7) as u8 + b'0' }).collect();
    for input in [batch(0, 600, 1100), noise, runs, Vec::new()] {
        for level in ["-1", "-6", "-9"] {
            let compressed = run(&[level, "-c"], &input).expect("gzip compresses");
            assert_eq!(ingestion::gunzip(&compressed, usize::MAX).as_deref(), Ok(input.as_slice()), "{level}");
        }
        let ours = ingestion::gzip(&input);
        assert_eq!(run(&["-d", "-c"], &ours).as_deref(), Some(input.as_slice()));
    }
}

// ---------------------------------------------------------------------------------------------
// Throttling and latency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn injected_failures_answer_first_with_retry_after() {
    let world = World::start().await;
    world.ingestion.fail_next(2, 429, Some(7));
    world.ingestion.fail_next(1, 503, None);
    for _ in 0..2 {
        let throttled = world.upload(SERVICE_DESK_STREAM, &json!([incident(1)])).await;
        throttled.assert_refused(429, "TooManyRequests");
        assert_eq!(throttled.header("retry-after"), "7");
    }
    let unavailable = world.upload(SERVICE_DESK_STREAM, &json!([incident(1)])).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.header("retry-after"), "");
    // Injected answers come before authentication, like a front end's.
    world.ingestion.fail_next(1, 429, Some(1));
    let url = world.url(SERVICE_DESK_STREAM);
    assert_eq!(world.send(&url, None, &[], b"[]".to_vec()).await.status, 429);

    assert_eq!(world.upload(SERVICE_DESK_STREAM, &json!([incident(1)])).await.status, 204);
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 1);
    let statuses: Vec<u16> = world.ingestion.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 503, 429, 204]);
}

#[tokio::test]
async fn the_rate_limit_answers_429_until_the_window_passes() {
    let world = World::start().await;
    world.ingestion.set_rate_limit(Some(2));
    let mut statuses = Vec::new();
    let mut retry_after = String::new();
    for n in 0..3 {
        let answer = world.upload(SERVICE_DESK_STREAM, &json!([incident(n)])).await;
        statuses.push(answer.status);
        retry_after = answer.header("retry-after").to_string();
    }
    assert_eq!(statuses, [204, 204, 429]);
    assert_eq!(retry_after, "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(world.upload(SERVICE_DESK_STREAM, &json!([incident(3)])).await.status, 204);
    world.ingestion.set_rate_limit(None);
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 3);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let world = World::start().await;
    world.ingestion.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(world.upload(SERVICE_DESK_STREAM, &json!([incident(1)])).await.status, 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

// ---------------------------------------------------------------------------------------------
// Counting mode
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn counting_mode_keeps_counts_and_distinct_ids_but_no_rows() {
    let world = World::start().await;
    world.ingestion.keep_rows(false);
    world.ingestion.track_distinct(SERVICE_DESK_LOG_STREAM, "LogType_s");
    // Three batches, the second resending half of the first (as a retry after a lost answer would).
    for (first, rows) in [(0, 500), (250, 500), (750, 250)] {
        let body = ingestion::gzip(&batch(first, rows, 900));
        assert_eq!(world.upload_gzip(SERVICE_DESK_STREAM, &body).await.status, 204);
    }
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_STREAM), 1250);
    assert_eq!(world.ingestion.distinct_ids(SERVICE_DESK_STREAM, "ServiceDeskId_s"), 1000);
    assert!(world.ingestion.rows(SERVICE_DESK_STREAM).is_empty());

    // Still strict: a bad value is found without building the rows.
    let mut row = incident(1);
    row["Status_b"] = json!(true);
    world.upload(SERVICE_DESK_STREAM, &json!([row])).await.assert_refused(400, "InvalidPayload");
    let mut row = log_row();
    row["DurationMs_d"] = json!([1.5]);
    let answer = world.upload(SERVICE_DESK_LOG_STREAM, &json!([log_row(), row])).await;
    answer.assert_refused(400, "InvalidPayload");
    assert!(answer.message().contains("Row 1: column 'DurationMs_d'"), "{}", answer.message());

    let mut other = log_row();
    other["LogType_s"] = json!("Alert");
    assert_eq!(world.upload(SERVICE_DESK_LOG_STREAM, &json!([log_row(), other, log_row()])).await.status, 204);
    assert_eq!(world.ingestion.distinct_ids(SERVICE_DESK_LOG_STREAM, "LogType_s"), 2);
    assert_eq!(world.ingestion.row_count(SERVICE_DESK_LOG_STREAM), 3);
}
