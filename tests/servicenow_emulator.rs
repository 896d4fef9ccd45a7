//! The ServiceNow emulator behaves the way itsmc's client relies on a real instance behaving.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::servicenow::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_PASSWORD, DEFAULT_USERNAME, EmulatorConfig, ServiceNowEmulator,
};

const UNAUTHENTICATED: &str = r#"{"error":{"message":"User Not Authenticated","detail":"Required to provide Auth information"},"status":"failure"}"#;

fn start() -> ServiceNowEmulator {
    ServiceNowEmulator::start(EmulatorConfig::default())
}

fn table_url(emulator: &ServiceNowEmulator, table: &str) -> String {
    format!("{}/api/now/table/{table}", emulator.url())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

async fn get(client: &Client, url: &str, query: &[(&str, &str)]) -> reqwest::Response {
    client
        .get(url)
        .basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD))
        .query(query)
        .send()
        .await
        .expect("request reaches the emulator")
}

async fn send_json(client: &Client, method: reqwest::Method, url: &str, body: Value) -> reqwest::Response {
    client
        .request(method, url)
        .basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD))
        .json(&body)
        .send()
        .await
        .expect("request reaches the emulator")
}

async fn create(client: &Client, emulator: &ServiceNowEmulator, table: &str, body: Value) -> Value {
    let response = send_json(client, reqwest::Method::POST, &table_url(emulator, table), body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["result"].clone()
}

async fn query_numbers(client: &Client, emulator: &ServiceNowEmulator, query: &str) -> Vec<String> {
    let response =
        get(client, &table_url(emulator, "incident"), &[("sysparm_query", query), ("sysparm_fields", "number")]).await;
    assert_eq!(response.status(), StatusCode::OK, "query {query}");
    let body: Value = response.json().await.unwrap();
    body["result"].as_array().unwrap().iter().map(|row| row["number"].as_str().unwrap().to_owned()).collect()
}

async fn password_grant(client: &Client, emulator: &ServiceNowEmulator, password: &str) -> reqwest::Response {
    client
        .post(format!("{}/oauth_token.do", emulator.url()))
        .form(&[
            ("grant_type", "password"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("username", DEFAULT_USERNAME),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

async fn refresh_grant(client: &Client, emulator: &ServiceNowEmulator, refresh_token: &str) -> reqwest::Response {
    client
        .post(format!("{}/oauth_token.do", emulator.url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap()
}

async fn bearer_status(client: &Client, emulator: &ServiceNowEmulator, token: &str) -> StatusCode {
    client.get(table_url(emulator, "incident")).bearer_auth(token).send().await.unwrap().status()
}

fn is_timestamp(value: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").is_ok()
}

/// rel → offset, from a `Link` header.
fn link_offsets(link: &str) -> HashMap<String, i64> {
    // Serialized query values have their commas percent-encoded, so a comma separates entries.
    link.split(',')
        .map(|entry| {
            let (url, rel) = entry.split_once(";rel=").unwrap();
            let url = url::Url::parse(url.trim_start_matches('<').trim_end_matches('>')).unwrap();
            let offset = url.query_pairs().find(|(key, _)| key == "sysparm_offset").unwrap().1.parse().unwrap();
            (rel.trim_matches('"').to_owned(), offset)
        })
        .collect()
}

#[tokio::test]
async fn create_stores_strings_and_returns_the_full_record_with_a_number() {
    let emulator = start();
    let client = Client::new();

    let response = send_json(
        &client,
        reqwest::Method::POST,
        &table_url(&emulator, "incident"),
        json!({"short_description": "Disk full", "impact": 2, "urgency": 1, "u_flag": true, "u_none": null}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = header(response.headers(), "location").to_owned();
    let created: Value = response.json::<Value>().await.unwrap()["result"].clone();
    let sys_id = created["sys_id"].as_str().unwrap();
    assert_eq!(location, format!("{}/{sys_id}", table_url(&emulator, "incident")));
    assert_eq!(sys_id.len(), 32);
    assert!(sys_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(created["number"], "INC0010001");
    assert_eq!(created["impact"], "2");
    assert_eq!(created["urgency"], "1");
    assert_eq!(created["priority"], "2", "impact 2 × urgency 1");
    assert_eq!(created["u_flag"], "true");
    assert_eq!(created["u_none"], "");
    assert_eq!(created["state"], "1");
    assert_eq!(created["active"], "true");
    assert_eq!(created["sys_created_by"], DEFAULT_USERNAME);
    assert!(is_timestamp(created["sys_created_on"].as_str().unwrap()));
    assert!(is_timestamp(created["sys_updated_on"].as_str().unwrap()));
    assert_eq!(
        created["sys_domain"],
        json!({"link": format!("{}/global", table_url(&emulator, "sys_user_group")), "value": "global"})
    );

    let stored = emulator.record("incident", sys_id).unwrap();
    assert!(stored.values().all(Value::is_string), "{stored:?}");
    let second = create(&client, &emulator, "incident", json!({"short_description": "x"})).await;
    assert_eq!(second["number"], "INC0010002");
    let change = create(&client, &emulator, "change_request", json!({})).await;
    assert_eq!(change["number"], "CHG0010001");
    assert_eq!(emulator.count("incident"), 2);

    let fetched: Value = get(&client, &location, &[]).await.json().await.unwrap();
    assert_eq!(fetched["result"], created);
}

#[tokio::test]
async fn journal_fields_are_appended_and_read_back_empty() {
    let emulator = start();
    let client = Client::new();
    let incident =
        create(&client, &emulator, "incident", json!({"short_description": "CPU", "work_notes": "opened by itsmc"}))
            .await;
    let sys_id = incident["sys_id"].as_str().unwrap();
    let url = format!("{}/{sys_id}", table_url(&emulator, "incident"));

    let response = send_json(
        &client,
        reqwest::Method::PATCH,
        &url,
        json!({"work_notes": "alert fired again", "comments": "we are on it", "state": 2}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json::<Value>().await.unwrap()["result"].clone();
    assert_eq!(updated["work_notes"], "");
    assert_eq!(updated["comments"], "");
    assert_eq!(updated["state"], "2");
    assert_eq!(updated["sys_mod_count"], "1");

    assert_eq!(
        emulator.journal(sys_id),
        vec![
            ("work_notes".to_owned(), "opened by itsmc".to_owned()),
            ("work_notes".to_owned(), "alert fired again".to_owned()),
            ("comments".to_owned(), "we are on it".to_owned()),
        ]
    );
    let entries: Value = get(
        &client,
        &table_url(&emulator, "sys_journal_field"),
        &[("sysparm_query", &format!("element_id={sys_id}^element=comments"))],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(entries["result"].as_array().unwrap().len(), 1);
    assert_eq!(entries["result"][0]["value"], "we are on it");
}

#[tokio::test]
async fn incident_state_drives_active_and_resolution_fields() {
    let emulator = start();
    let client = Client::new();
    let sys_id = emulator.insert("incident", json!({"short_description": "seeded"}));
    let url = format!("{}/{sys_id}", table_url(&emulator, "incident"));

    let resolved: Value =
        send_json(&client, reqwest::Method::PATCH, &url, json!({"state": "6", "close_code": "Solved"}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(resolved["result"]["active"], "false");
    assert!(is_timestamp(resolved["result"]["resolved_at"].as_str().unwrap()));
    assert_eq!(resolved["result"]["closed_at"], "");

    // Closed by a person in the UI, as the connector would find it on its next poll.
    assert!(emulator.update("incident", &sys_id, json!({"state": 7})));
    let closed = emulator.record("incident", &sys_id).unwrap();
    assert_eq!(closed["active"], "false");
    assert_eq!(closed["incident_state"], "7");
    assert!(is_timestamp(closed["closed_at"].as_str().unwrap()));

    let reopened: Value =
        send_json(&client, reqwest::Method::PUT, &url, json!({"state": 2})).await.json().await.unwrap();
    assert_eq!(reopened["result"]["active"], "true");
    assert_eq!(reopened["result"]["closed_at"], "");
    assert_eq!(reopened["result"]["reopen_count"], "1");
    assert!(!emulator.update("incident", "0123456789abcdef0123456789abcdef", json!({"state": 7})));
}

#[tokio::test]
async fn encoded_queries_filter_and_order() {
    let emulator = start();
    let client = Client::new();
    let seeds = [
        ("INC0000001", "2024-01-01 10:00:00", "1", "disk full on db1", ""),
        ("INC0000002", "2024-01-02 10:00:00", "2", "cpu high", "beth"),
        ("INC0000003", "2024-01-03 10:00:00", "4", "disk slow", ""),
        ("INC0000004", "2024-01-04 10:00:00", "5", "memory", "abel"),
        ("INC0000005", "2024-01-05 10:00:00", "1", "network ^ down", ""),
    ];
    for (number, created, priority, description, assignee) in seeds {
        emulator.insert(
            "incident",
            json!({"number": number, "sys_created_on": created, "priority": priority,
                   "short_description": description, "assigned_to": assignee}),
        );
    }

    let cases: &[(&str, &[&str])] = &[
        ("sys_created_on>=2024-01-03 00:00:00^ORDERBYDESCsys_created_on", &["INC0000005", "INC0000004", "INC0000003"]),
        ("sys_created_on<2024-01-02 10:00:00", &["INC0000001"]),
        ("priority=1^ORpriority=2^ORDERBYnumber", &["INC0000001", "INC0000002", "INC0000005"]),
        ("priority<=2^short_descriptionLIKEdisk", &["INC0000001"]),
        ("short_descriptionSTARTSWITHdisk^NQpriorityIN4,5", &["INC0000001", "INC0000003", "INC0000004"]),
        ("assigned_toISNOTEMPTY^ORDERBYDESCnumber", &["INC0000004", "INC0000002"]),
        ("assigned_toISEMPTY^priority!=1", &["INC0000003"]),
        (
            "ORDERBYpriority^ORDERBYDESCsys_created_on",
            &["INC0000005", "INC0000001", "INC0000002", "INC0000003", "INC0000004"],
        ),
        ("short_description=network ^^ down", &["INC0000005"]),
        ("priorityNOT IN1,2^short_descriptionNOT LIKEmemory", &["INC0000003"]),
        ("sys_created_onBETWEEN2024-01-02 00:00:00@2024-01-03 23:59:59", &["INC0000002", "INC0000003"]),
        // ServiceNow ignores the parts of a query it cannot parse and filters on the rest.
        ("bogus!!value^priority=1^ORDERBY", &["INC0000001", "INC0000005"]),
        // An unknown field is empty on every record.
        ("u_nonexistent=x", &[]),
        ("u_nonexistentISEMPTY^priority=5", &["INC0000004"]),
    ];
    for (query, expected) in cases {
        assert_eq!(query_numbers(&client, &emulator, query).await, *expected, "query {query}");
    }

    // Plain field=value parameters are the documented shorthand for sysparm_query.
    let shorthand: Value =
        get(&client, &table_url(&emulator, "incident"), &[("priority", "4")]).await.json().await.unwrap();
    assert_eq!(shorthand["result"][0]["number"], "INC0000003");
    assert_eq!(shorthand["result"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn lists_carry_total_count_and_link_header() {
    let emulator = start();
    let client = Client::new();
    for n in 1..=5 {
        emulator.insert("incident", json!({"short_description": format!("alert {n}")}));
    }

    let response = get(
        &client,
        &table_url(&emulator, "incident"),
        &[("sysparm_query", "ORDERBYnumber"), ("sysparm_limit", "2"), ("sysparm_offset", "2")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "x-total-count"), "5");
    let links = link_offsets(header(response.headers(), "link"));
    assert_eq!(links["first"], 0);
    assert_eq!(links["prev"], 0);
    assert_eq!(links["next"], 4);
    assert_eq!(links["last"], 3);
    assert!(header(response.headers(), "link").contains("sysparm_query=ORDERBYnumber"));
    let body: Value = response.json().await.unwrap();
    let numbers: Vec<&str> = body["result"].as_array().unwrap().iter().map(|r| r["number"].as_str().unwrap()).collect();
    assert_eq!(numbers, ["INC0010003", "INC0010004"]);

    let last_page =
        get(&client, &table_url(&emulator, "incident"), &[("sysparm_limit", "2"), ("sysparm_offset", "4")]).await;
    let links = link_offsets(header(last_page.headers(), "link"));
    assert!(!links.contains_key("next"), "no next page after the last one");
    let body: Value = last_page.json().await.unwrap();
    assert_eq!(body["result"].as_array().unwrap().len(), 1);

    let empty = get(&client, &table_url(&emulator, "problem"), &[]).await;
    assert_eq!(header(empty.headers(), "x-total-count"), "0");
    assert_eq!(empty.json::<Value>().await.unwrap(), json!({"result": []}));
}

#[tokio::test]
async fn fields_display_values_and_reference_links() {
    let emulator = start();
    let client = Client::new();
    let caller = emulator.insert("sys_user", json!({"name": "Beth Anglin", "user_name": "beth.anglin"}));
    let incident = emulator.insert(
        "incident",
        json!({"short_description": "Printer", "state": "2", "caller_id": caller, "cmdb_ci": "0123456789abcdef0123456789abcdef"}),
    );
    let url = format!("{}/{incident}", table_url(&emulator, "incident"));
    let caller_link = format!("{}/{caller}", table_url(&emulator, "sys_user"));
    let fields = ("sysparm_fields", "number,state,caller_id,cmdb_ci");

    let raw: Value = get(&client, &url, &[fields]).await.json().await.unwrap();
    assert_eq!(
        raw["result"],
        json!({
            "number": "INC0010001",
            "state": "2",
            "caller_id": {"link": caller_link, "value": caller},
            "cmdb_ci": {"link": format!("{}/0123456789abcdef0123456789abcdef", table_url(&emulator, "cmdb_ci")),
                        "value": "0123456789abcdef0123456789abcdef"},
        })
    );

    let all: Value = get(&client, &url, &[fields, ("sysparm_display_value", "all")]).await.json().await.unwrap();
    assert_eq!(all["result"]["state"], json!({"display_value": "In Progress", "value": "2"}));
    assert_eq!(
        all["result"]["caller_id"],
        json!({"display_value": "Beth Anglin", "link": caller_link, "value": caller})
    );
    // A reference to a record that does not exist displays as empty, as on ServiceNow.
    assert_eq!(all["result"]["cmdb_ci"]["display_value"], "");

    let shown: Value =
        get(&client, &url, &[fields, ("sysparm_display_value", "true"), ("sysparm_exclude_reference_link", "true")])
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(shown["result"]["state"], "In Progress");
    assert_eq!(shown["result"]["caller_id"], "Beth Anglin");

    let plain: Value =
        get(&client, &url, &[("sysparm_fields", "caller_id"), ("sysparm_exclude_reference_link", "true")])
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(plain["result"], json!({"caller_id": caller}));
}

#[tokio::test]
async fn missing_records_answer_404_and_delete_answers_204() {
    let emulator = start();
    let client = Client::new();
    let sys_id = emulator.insert("incident", json!({}));
    let url = format!("{}/{sys_id}", table_url(&emulator, "incident"));
    let missing = format!("{}/0123456789abcdef0123456789abcdef", table_url(&emulator, "incident"));

    let not_found = get(&client, &missing, &[]).await;
    assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        not_found.json::<Value>().await.unwrap(),
        json!({"error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"}, "status": "failure"})
    );
    let patch_missing = send_json(&client, reqwest::Method::PATCH, &missing, json!({"state": 2})).await;
    assert_eq!(patch_missing.status(), StatusCode::NOT_FOUND);

    let deleted = client.delete(&url).basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(deleted.bytes().await.unwrap().is_empty());
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(emulator.count("incident"), 0);
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");

    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(anonymous.headers(), "www-authenticate"), r#"BASIC realm="Service-now""#);
    assert_eq!(anonymous.text().await.unwrap(), UNAUTHENTICATED);

    let wrong_password = client.get(&url).basic_auth(DEFAULT_USERNAME, Some("nope")).send().await.unwrap();
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.text().await.unwrap(), UNAUTHENTICATED);

    let unknown_token = client.get(&url).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(unknown_token.status(), StatusCode::UNAUTHORIZED);

    let em = client
        .post(format!("{}/api/global/em/jsonv2", emulator.url()))
        .json(&json!({"records": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(em.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(emulator.count("em_event"), 0);

    let log: Vec<(String, u16)> =
        emulator.requests().into_iter().map(|entry| (entry.authorization_kind, entry.status)).collect();
    assert_eq!(
        log,
        [("none".to_owned(), 401), ("basic".to_owned(), 401), ("bearer".to_owned(), 401), ("none".to_owned(), 401)]
    );
}

#[tokio::test]
async fn oauth_password_refresh_and_revocation() {
    let emulator = start();
    let client = Client::new();

    let granted = password_grant(&client, &emulator, DEFAULT_PASSWORD).await;
    assert_eq!(granted.status(), StatusCode::OK);
    let text = granted.text().await.unwrap();
    assert!(text.starts_with(r#"{"access_token":""#), "fixture key order: {text}");
    let tokens: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(tokens["scope"], "useraccount");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 1799);
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(access.len(), 86);
    assert_ne!(access, refresh);
    assert_eq!(bearer_status(&client, &emulator, &access).await, StatusCode::OK);
    assert_eq!(emulator.requests().last().unwrap().authorization_kind, "bearer");

    // While the access token is valid, asking again returns the same one.
    let again: Value = password_grant(&client, &emulator, DEFAULT_PASSWORD).await.json().await.unwrap();
    assert_eq!(again["access_token"], access.as_str());

    emulator.expire_access_tokens();
    assert_eq!(bearer_status(&client, &emulator, &access).await, StatusCode::UNAUTHORIZED);
    let refreshed = refresh_grant(&client, &emulator, &refresh).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed: Value = refreshed.json().await.unwrap();
    let new_access = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_access, access);
    assert_eq!(refreshed["refresh_token"], refresh.as_str(), "a refresh grant returns the current refresh token");
    assert_eq!(bearer_status(&client, &emulator, &new_access).await, StatusCode::OK);

    emulator.revoke_refresh_tokens();
    let denied = json!({"error_description": "access_denied", "error": "server_error"});
    let revoked = refresh_grant(&client, &emulator, &refresh).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.text().await.unwrap(), r#"{"error_description":"access_denied","error":"server_error"}"#);
    assert_eq!(
        bearer_status(&client, &emulator, &new_access).await,
        StatusCode::OK,
        "access tokens outlive revocation"
    );

    let bad_password = password_grant(&client, &emulator, "wrong").await;
    assert_eq!(bad_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bad_password.json::<Value>().await.unwrap(), denied);
    let bad_client = client
        .post(format!("{}/oauth_token.do", emulator.url()))
        .form(&[
            ("grant_type", "password"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", "wrong"),
            ("username", DEFAULT_USERNAME),
            ("password", DEFAULT_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_client.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bad_client.json::<Value>().await.unwrap(), denied);
    let unknown_refresh = refresh_grant(&client, &emulator, "never-issued").await;
    assert_eq!(unknown_refresh.status(), StatusCode::UNAUTHORIZED);

    // After revocation, credentials still get a fresh, working refresh token.
    let relogin: Value = password_grant(&client, &emulator, DEFAULT_PASSWORD).await.json().await.unwrap();
    let new_refresh = relogin["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, refresh);
    assert_eq!(refresh_grant(&client, &emulator, &new_refresh).await.status(), StatusCode::OK);

    assert_eq!(
        emulator.token_grants(),
        [
            "password",
            "password",
            "refresh_token",
            "refresh_token",
            "password",
            "password",
            "refresh_token",
            "password",
            "refresh_token"
        ]
    );
}

#[tokio::test]
async fn short_lived_access_tokens_expire_by_themselves() {
    let emulator = ServiceNowEmulator::start(EmulatorConfig {
        access_token_lifetime: Duration::from_millis(300),
        ..EmulatorConfig::default()
    });
    let client = Client::new();
    let tokens: Value = password_grant(&client, &emulator, DEFAULT_PASSWORD).await.json().await.unwrap();
    assert_eq!(tokens["expires_in"], 0);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(bearer_status(&client, &emulator, access).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bearer_status(&client, &emulator, access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let emulator = ServiceNowEmulator::start(EmulatorConfig { rate_limit: Some(2), ..EmulatorConfig::default() });
    let client = Client::new();
    let url = table_url(&emulator, "incident");

    emulator.set_rate_limit(Some(2));
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        let response = get(&client, &url, &[]).await;
        statuses.push(response.status());
        assert_eq!(header(response.headers(), "x-ratelimit-limit"), "2");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
        }
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let refused = refused.unwrap();
    let retry_after: u64 = header(refused.headers(), "retry-after").parse().unwrap();
    assert_eq!(retry_after, 1, "a one-second window");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Rate limit exceeded");
    assert_eq!(body["status"], "failure");

    // OAuth requests count too.
    let token = password_grant(&client, &emulator, DEFAULT_PASSWORD).await;
    assert_eq!(token.status(), StatusCode::TOO_MANY_REQUESTS);

    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);

    emulator.set_rate_limit(None);
    for _ in 0..5 {
        let response = get(&client, &url, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn fail_next_injects_failures_then_recovers() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");

    emulator.fail_next(2, 503, Some(7));
    emulator.fail_next(1, 500, None);
    for _ in 0..2 {
        let response = send_json(&client, reqwest::Method::POST, &url, json!({"short_description": "x"})).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(response.headers(), "retry-after"), "7");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "failure");
        assert!(body["error"]["message"].is_string());
    }
    let token = password_grant(&client, &emulator, DEFAULT_PASSWORD).await;
    assert_eq!(token.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(token.headers().get("retry-after").is_none());
    assert_eq!(emulator.count("incident"), 0, "failed requests have no effect");

    emulator.fail_next(1, 429, Some(2));
    let throttled = get(&client, &url, &[]).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(throttled.headers(), "retry-after"), "2");

    create(&client, &emulator, "incident", json!({"short_description": "x"})).await;
    let statuses: Vec<u16> = emulator.requests().iter().map(|entry| entry.status).collect();
    assert_eq!(statuses, [503, 503, 500, 429, 201]);
}

#[tokio::test]
async fn a_down_instance_answers_503() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");

    emulator.set_down(true);
    let response = get(&client, &url, &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    assert_eq!(body["error"]["message"], "Service Unavailable");
    assert_eq!(password_grant(&client, &emulator, DEFAULT_PASSWORD).await.status(), StatusCode::SERVICE_UNAVAILABLE);

    emulator.set_down(false);
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn stop_listening_refuses_connections_until_resumed() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);

    emulator.stop_listening();
    let pooled = client.get(&url).basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD)).send().await;
    assert!(pooled.is_err(), "the pooled connection was closed too");
    let fresh = Client::new().get(&url).basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD)).send().await.unwrap_err();
    assert!(fresh.is_connect(), "{fresh:?}");
    emulator.stop_listening();

    emulator.resume();
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);
    emulator.resume();
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");

    emulator.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&client, &url, &[]).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    emulator.set_latency(Duration::ZERO);
    let started = Instant::now();
    get(&client, &url, &[]).await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn event_management_creates_updates_and_clears_alerts() {
    let emulator = start();
    let client = Client::new();
    let endpoint = format!("{}/api/global/em/jsonv2", emulator.url());
    let event = |severity: Value, description: &str| {
        json!({"source": "Fides", "event_class": "Fides", "node": "web01", "type": "probe",
               "resource": "api", "metric_name": "latency", "severity": severity,
               "description": description, "message_key": "fides-web01",
               "additional_info": {"azure_alert_id": "a1"}})
    };

    let response =
        send_json(&client, reqwest::Method::POST, &endpoint, json!({"records": [event(json!("4"), "slow")]})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"result": {"Default Bulk Endpoint": "1 events were inserted"}})
    );
    let alerts = emulator.records("em_alert");
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert["number"], "Alert0010001");
    assert_eq!(alert["state"], "Open");
    assert_eq!(alert["severity"], "4");
    assert_eq!(alert["message_key"], "fides-web01");
    assert_eq!(alert["node"], "web01");
    assert_eq!(alert["source"], "Fides");
    assert_eq!(alert["event_count"], "1");
    let alert_id = alert["sys_id"].as_str().unwrap().to_owned();
    let stored_event = &emulator.records("em_event")[0];
    assert_eq!(stored_event["additional_info"], r#"{"azure_alert_id":"a1"}"#);
    assert_eq!(stored_event["alert"], alert_id.as_str());

    let response = send_json(
        &client,
        reqwest::Method::POST,
        &endpoint,
        json!({"records": [event(json!(2), "slower"), event(json!(1), "down")]}),
    )
    .await;
    assert_eq!(response.json::<Value>().await.unwrap()["result"]["Default Bulk Endpoint"], "2 events were inserted");
    let alert = emulator.record("em_alert", &alert_id).unwrap();
    assert_eq!(alert["severity"], "1");
    assert_eq!(alert["description"], "down");
    assert_eq!(alert["event_count"], "3");
    assert_eq!(emulator.count("em_alert"), 1);

    send_json(&client, reqwest::Method::POST, &endpoint, json!({"records": [event(json!(0), "recovered")]})).await;
    assert_eq!(emulator.record("em_alert", &alert_id).unwrap()["state"], "Closed");

    // A new problem after the clear opens a new alert; the closed one is not reused.
    send_json(&client, reqwest::Method::POST, &endpoint, json!({"records": [event(json!("3"), "again")]})).await;
    let open: Vec<_> = emulator.records("em_alert").into_iter().filter(|a| a["state"] == "Open").collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["number"], "Alert0010002");
    assert_eq!(emulator.count("em_event"), 5);

    // Events inserted through the Table API are processed the same way; the key defaults to
    // source+node+type+resource+metric_name.
    create(&client, &emulator, "em_event", json!({"source": "SCOM", "node": "db1", "type": "disk", "severity": 2}))
        .await;
    let scom = emulator.records("em_alert").into_iter().find(|alert| alert["source"] == "SCOM").unwrap();
    assert_eq!(scom["message_key"], "SCOMdb1disk");
    assert_eq!(scom["severity"], "2");

    let alerts: Value =
        get(&client, &table_url(&emulator, "em_alert"), &[("sysparm_query", "state=Open^ORDERBYnumber")])
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(alerts["result"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn malformed_requests_get_servicenow_errors_not_panics() {
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");
    let authed = |builder: reqwest::RequestBuilder| builder.basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD));

    for body in ["not json", "[1,2]", "", "{\"a\":"] {
        let response =
            authed(client.post(&url).header("content-type", "application/json").body(body)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "body {body:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["message"], "Exception while reading request");
    }

    let odd_queries = [
        "^^^",
        "^",
        "ORDERBY",
        "ORDERBYDESC",
        "=x",
        "ORpriority=1",
        "NQ",
        "NQ^NQ",
        "priorityBETWEEN",
        "priorityBETWEEN1",
        "%ZZ",
        "a\u{e9}=\u{1f600}",
        "sys_created_on>=",
        "^OR^NQ^EQ",
        "GROUPBYpriority",
    ];
    for query in odd_queries {
        let response =
            get(&client, &url, &[("sysparm_query", query), ("sysparm_limit", "-5"), ("sysparm_offset", "abc")]).await;
        assert_eq!(response.status(), StatusCode::OK, "query {query:?}");
    }
    let huge_offset =
        get(&client, &url, &[("sysparm_offset", "18446744073709551615"), ("sysparm_limit", "18446744073709551615")])
            .await;
    assert_eq!(huge_offset.status(), StatusCode::OK);

    let invalid_table = get(&client, &table_url(&emulator, "no-such%20table"), &[]).await;
    assert_eq!(invalid_table.status(), StatusCode::BAD_REQUEST);
    let unknown_api = get(&client, &format!("{}/api/now/nothing/here", emulator.url()), &[]).await;
    assert_eq!(unknown_api.status(), StatusCode::BAD_REQUEST);
    let outside_api = get(&client, &format!("{}/index.do", emulator.url()), &[]).await;
    assert_eq!(outside_api.status(), StatusCode::NOT_FOUND);
    let wrong_method = authed(client.post(format!("{url}/0123456789abcdef0123456789abcdef"))).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let oauth_get = client.get(format!("{}/oauth_token.do", emulator.url())).send().await.unwrap();
    assert_eq!(oauth_get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let oauth_json = client
        .post(format!("{}/oauth_token.do", emulator.url()))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_json.status(), StatusCode::UNAUTHORIZED);
    let no_records = send_json(
        &client,
        reqwest::Method::POST,
        &format!("{}/api/global/em/jsonv2", emulator.url()),
        json!({"events": []}),
    )
    .await;
    assert_eq!(no_records.status(), StatusCode::BAD_REQUEST);
    let garbage_auth = client.get(&url).header("authorization", "Basic %%%").send().await.unwrap();
    assert_eq!(garbage_auth.status(), StatusCode::UNAUTHORIZED);

    // Versioned URLs and X-no-response-body work, and the emulator still answers normally.
    let quiet = authed(client.post(format!("{}/api/now/v2/table/incident", emulator.url())))
        .header("x-no-response-body", "true")
        .json(&json!({"short_description": "quiet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), StatusCode::CREATED);
    assert!(quiet.bytes().await.unwrap().is_empty());
    assert_eq!(emulator.count("incident"), 1);
}

/// The load benchmark holds tens of thousands of incidents and looks one up by correlation id for
/// every alert; the emulator must answer from its index rather than scanning the table each time.
#[tokio::test]
async fn correlation_id_lookups_stay_fast_with_twenty_thousand_incidents() {
    const RECORDS: usize = 20_000;
    const LOOKUPS: usize = 2_000;
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");
    let correlation_id = |i: usize| format!("{:040x}", i * 7919);

    let seeding = Instant::now();
    let sys_ids: Vec<String> = (0..RECORDS)
        .map(|i| {
            emulator.insert(
                "incident",
                json!({"correlation_id": correlation_id(i), "short_description": format!("alert {i}")}),
            )
        })
        .collect();
    println!("seeded {RECORDS} incidents in {:?}", seeding.elapsed());

    let lookup = |correlation_id: String| {
        let client = &client;
        let url = &url;
        async move {
            let query = format!("correlation_id={correlation_id}^ORDERBYDESCsys_created_on");
            let response = get(
                client,
                url,
                &[
                    ("sysparm_query", query.as_str()),
                    ("sysparm_fields", "sys_id,number,state,active"),
                    ("sysparm_limit", "1"),
                    ("sysparm_exclude_reference_link", "true"),
                ],
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            let total = header(response.headers(), "x-total-count").to_owned();
            let body: Value = response.json().await.unwrap();
            (total, body["result"].as_array().unwrap().clone())
        }
    };

    let (total, rows) = lookup(correlation_id(12_345)).await;
    assert_eq!(total, "1");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0], json!({"sys_id": sys_ids[12_345], "number": "INC0022346", "state": "1", "active": "true"}));

    let timed = Instant::now();
    for n in 0..LOOKUPS {
        let i = n * (RECORDS / LOOKUPS) + n % 10;
        let (_, rows) = lookup(correlation_id(i)).await;
        assert_eq!(rows.len(), 1, "lookup {i}");
        assert_eq!(rows[0]["sys_id"], sys_ids[i], "lookup {i}");
    }
    println!("{LOOKUPS} correlation_id lookups over {RECORDS} incidents took {:?}", timed.elapsed());

    // The index follows updates, newer duplicates win the ORDER BY, and deleted records disappear.
    assert!(emulator.update("incident", &sys_ids[7], json!({"correlation_id": "moved"})));
    assert!(lookup(correlation_id(7)).await.1.is_empty());
    assert_eq!(lookup("moved".to_owned()).await.1[0]["sys_id"], sys_ids[7]);
    let newer =
        emulator.insert("incident", json!({"correlation_id": "moved", "sys_created_on": "2999-01-01 00:00:00"}));
    let (total, rows) = lookup("moved".to_owned()).await;
    assert_eq!((total.as_str(), rows[0]["sys_id"].as_str()), ("2", Some(newer.as_str())));
    let deleted = client.delete(format!("{url}/{newer}")).basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD));
    assert_eq!(deleted.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(lookup("moved".to_owned()).await.1[0]["sys_id"], sys_ids[7]);
}

// ---------------------------------------------------------------------------------------------
// Keyset paging, bulk seeding, display values, sys_choice / sys_template, hibernation
// ---------------------------------------------------------------------------------------------

/// The fields the sync reads, in the shape it asks for them.
const SYNC_FIELDS: &str = "number,sys_id,sys_updated_on,sys_created_on,short_description,description,state,\
    incident_state,impact,urgency,priority,severity,escalation,category,subcategory,contact_type,caller_id,opened_by,\
    opened_at,assigned_to,assignment_group,cmdb_ci,resolved_at,resolved_by,closed_at,closed_by,close_code,close_notes,\
    correlation_id,active,made_sla,reassignment_count,reopen_count,sys_mod_count,sys_updated_by,hold_reason";

fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap().and_utc()
}

/// Status, the headers that depend on the answer, and the body, for comparing two answers.
async fn list_answer(client: &Client, url: &str, query: &[(&str, &str)]) -> (u16, String, String, String) {
    let response = get(client, url, query).await;
    let status = response.status().as_u16();
    let total = header(response.headers(), "x-total-count").to_owned();
    let link = header(response.headers(), "link").to_owned();
    (status, total, link, response.text().await.unwrap())
}

/// The same list request answered from the keyset order and by a scan.
async fn both_ways(
    client: &Client,
    emulator: &ServiceNowEmulator,
    query: &[(&str, &str)],
) -> ((u16, String, String, String), (u16, String, String, String)) {
    let url = table_url(emulator, "incident");
    let uses = emulator.ordered_index_uses();
    let indexed = list_answer(client, &url, query).await;
    let used_index = emulator.ordered_index_uses() > uses;
    emulator.set_ordered_index(false);
    let scanned = list_answer(client, &url, query).await;
    emulator.set_ordered_index(true);
    assert_eq!(emulator.ordered_index_uses(), uses + u64::from(used_index), "the scan did not use the index");
    (indexed, scanned)
}

#[tokio::test]
async fn keyset_order_answers_exactly_as_a_scan_on_random_data() {
    use rand::{Rng, SeedableRng};
    let emulator = start();
    let client = Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base = utc("2026-07-28 10:00:00").timestamp();
    // 1,500 incidents over 30 seconds: ~50 per second, so pages of 20 end mid-second all the time.
    // A few have no sys_updated_on at all, and some sys_ids are chosen to collide in their prefixes.
    let records: Vec<serde_json::Map<String, Value>> = (0..1_500)
        .map(|n| {
            let updated = if n % 97 == 0 {
                String::new()
            } else {
                chrono::DateTime::from_timestamp(base + rng.random_range(0..30), 0)
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            };
            let sys_id = if n % 5 == 0 {
                format!("0000{:028x}", rng.random::<u64>())
            } else {
                format!("{:032x}", rng.random::<u128>())
            };
            let state = ["1", "2", "6", "7"][n % 4];
            let record = json!({"sys_id": sys_id, "sys_updated_on": updated, "short_description": format!("r{n}"),
                                "state": state});
            record.as_object().unwrap().clone()
        })
        .collect();
    emulator.seed("incident", records);
    assert_eq!(emulator.count("incident"), 1_500);

    let sys_ids: Vec<String> =
        emulator.records("incident").iter().map(|record| record["sys_id"].as_str().unwrap().to_owned()).collect();
    let time = |offset: i64| {
        chrono::DateTime::from_timestamp(base + offset, 0).unwrap().format("%Y-%m-%d %H:%M:%S").to_string()
    };
    let mut compared = 0;
    for round in 0..4 {
        let mut queries: Vec<String> = Vec::new();
        for offset in [-1, 0, 7, 15, 29, 30] {
            let t = time(offset);
            queries.push(format!("sys_updated_on>={t}^ORDERBYsys_updated_on^ORDERBYsys_id"));
            queries.push(format!("sys_updated_on>{t}^ORDERBYsys_updated_on^ORDERBYsys_id"));
            queries.push(format!("sys_updated_on<{t}^ORDERBYsys_updated_on^ORDERBYsys_id"));
            queries.push(format!(
                "sys_updated_on<={t}^sys_updated_on>={}^ORDERBYsys_updated_on^ORDERBYsys_id",
                time(offset - 5)
            ));
            queries.push(format!("sys_updated_on={t}^ORDERBYsys_id"));
            queries.push(format!("sys_updated_on={t}^ORDERBYsys_updated_on^ORDERBYsys_id"));
            let after = &sys_ids[(offset.unsigned_abs() as usize * 37 + round * 11) % sys_ids.len()];
            queries.push(format!("sys_updated_on={t}^sys_id>{after}^ORDERBYsys_id"));
            queries.push(format!("sys_updated_on={t}^sys_id>=0000^sys_id<8^ORDERBYsys_id"));
            queries.push(format!("sys_updated_on={t}^sys_id>^ORDERBYsys_id"));
        }
        queries.push("ORDERBYsys_updated_on^ORDERBYsys_id".to_owned());
        queries.push("sys_updated_on=^ORDERBYsys_id".to_owned());
        queries.push("sys_updated_on>=2026-07-28 10:00:10^ORDERBYsys_updated_on^ORDERBYsys_id^EQ".to_owned());
        for query in &queries {
            for (limit, offset) in [("20", "0"), ("20", "40"), ("1000", "0"), ("7", "1490")] {
                let params = [
                    ("sysparm_query", query.as_str()),
                    ("sysparm_limit", limit),
                    ("sysparm_offset", offset),
                    ("sysparm_fields", "sys_id,sys_updated_on,number,state"),
                    ("sysparm_display_value", "all"),
                    ("sysparm_exclude_reference_link", "true"),
                ];
                let uses = emulator.ordered_index_uses();
                let (indexed, scanned) = both_ways(&client, &emulator, &params).await;
                assert!(emulator.ordered_index_uses() > uses, "the keyset order answered {query}");
                assert_eq!(indexed, scanned, "round {round}, query {query}, limit {limit}, offset {offset}");
                compared += 1;
            }
        }
        // Shapes the keyset order does not take still answer (by scanning) the same both ways.
        for query in [
            "sys_updated_on>=2026-07-28 10:00:10^ORDERBYsys_updated_on",
            "sys_id>8^ORDERBYsys_updated_on^ORDERBYsys_id",
        ] {
            let uses = emulator.ordered_index_uses();
            let (indexed, scanned) = both_ways(&client, &emulator, &[("sysparm_query", query)]).await;
            assert_eq!(emulator.ordered_index_uses(), uses, "{query} is not a keyset shape");
            assert_eq!(indexed, scanned);
        }

        // Between rounds, records change (each update moves it to now, the end of the order), some
        // are deleted, and new ones arrive through the Table API.
        for n in 0..40 {
            let sys_id = &sys_ids[(round * 131 + n * 29) % sys_ids.len()];
            emulator.update("incident", sys_id, json!({"state": "2", "short_description": format!("changed {round}")}));
        }
        for n in 0..5 {
            let sys_id = &sys_ids[(round * 17 + n * 301) % sys_ids.len()];
            client
                .delete(format!("{}/{sys_id}", table_url(&emulator, "incident")))
                .basic_auth(DEFAULT_USERNAME, Some(DEFAULT_PASSWORD))
                .send()
                .await
                .unwrap();
        }
        for n in 0..10 {
            create(&client, &emulator, "incident", json!({"short_description": format!("new {round} {n}")})).await;
        }
    }
    assert!(compared > 800);

    // Paging the way the sync does while records keep changing between pages: every page, tie
    // pages included, is answered the same both ways.
    let live: Vec<String> =
        emulator.records("incident").iter().map(|record| record["sys_id"].as_str().unwrap().to_owned()).collect();
    let mut query = format!("sys_updated_on>={}^ORDERBYsys_updated_on^ORDERBYsys_id", time(0));
    // The second being finished by sys_id, while a whole page fell in one second.
    let mut tie: Option<String> = None;
    let (mut pages, mut tie_pages) = (0, 0);
    while pages < 300 {
        let params = [
            ("sysparm_query", query.as_str()),
            ("sysparm_limit", "25"),
            ("sysparm_fields", "sys_id,sys_updated_on"),
            ("sysparm_display_value", "all"),
            ("sysparm_exclude_reference_link", "true"),
            ("sysparm_no_count", "true"),
        ];
        let (indexed, scanned) = both_ways(&client, &emulator, &params).await;
        assert_eq!(indexed, scanned, "page {pages}: {query}");
        pages += 1;
        let body: Value = serde_json::from_str(&indexed.3).unwrap();
        let rows: Vec<(String, String)> = body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let text = |field: &str| row[field]["value"].as_str().unwrap().to_owned();
                (text("sys_id"), text("sys_updated_on"))
            })
            .collect();
        for n in 0..3 {
            let sys_id = &live[(pages * 7 + n * 13) % live.len()];
            emulator.update("incident", sys_id, json!({"short_description": format!("page {pages}")}));
        }
        query = match (tie.take(), rows.last()) {
            (Some(second), Some((last_id, _))) if rows.len() == 25 => {
                let next = format!("sys_updated_on={second}^sys_id>{last_id}^ORDERBYsys_id");
                tie = Some(second);
                tie_pages += 1;
                next
            }
            (Some(second), _) => format!("sys_updated_on>{second}^ORDERBYsys_updated_on^ORDERBYsys_id"),
            (None, Some((last_id, last_time))) if rows.len() == 25 && rows[0].1 == *last_time => {
                tie = Some(last_time.clone());
                tie_pages += 1;
                format!("sys_updated_on={last_time}^sys_id>{last_id}^ORDERBYsys_id")
            }
            (None, Some((_, last_time))) if rows.len() == 25 => {
                format!("sys_updated_on>={last_time}^ORDERBYsys_updated_on^ORDERBYsys_id")
            }
            (None, _) => break,
        };
    }
    assert!(pages > 20 && tie_pages > 0, "{pages} pages, {tie_pages} of them within one second");
}

#[tokio::test]
async fn an_update_moves_the_record_to_now_at_the_end_of_the_keyset_order() {
    let emulator = start();
    let client = Client::new();
    emulator.seed_incidents(50, utc("2026-07-28 10:00:00"), utc("2026-07-28 11:00:00"));
    let query = "sys_updated_on>=2026-07-28 10:00:00^ORDERBYsys_updated_on^ORDERBYsys_id";
    let page = |client: Client, url: String| async move {
        let body: Value =
            get(&client, &url, &[("sysparm_query", query), ("sysparm_fields", "sys_id,sys_updated_on,sys_mod_count")])
                .await
                .json()
                .await
                .unwrap();
        body["result"].as_array().unwrap().clone()
    };
    let before = page(client.clone(), table_url(&emulator, "incident")).await;
    assert_eq!(before.len(), 50);
    let first = before[0]["sys_id"].as_str().unwrap().to_owned();
    let mod_count: u64 = before[0]["sys_mod_count"].as_str().unwrap().parse().unwrap();

    let patched = send_json(
        &client,
        reqwest::Method::PATCH,
        &format!("{}/{first}", table_url(&emulator, "incident")),
        json!({"state": "2"}),
    )
    .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let after = page(client.clone(), table_url(&emulator, "incident")).await;
    let last = after.last().unwrap();
    assert_eq!(last["sys_id"], first.as_str(), "the updated record is now the newest");
    let updated_on = last["sys_updated_on"].as_str().unwrap();
    assert!(utc(updated_on) > utc("2026-07-28 11:00:00") && is_timestamp(updated_on));
    assert_eq!(last["sys_mod_count"], (mod_count + 1).to_string());
}

/// Pages through `table` the way the sync does: `sys_updated_on>=T` ordered by time then sys_id,
/// dropping records already seen; when a whole page shares one second, `sys_updated_on=T^sys_id>S`
/// until that second is done, then `sys_updated_on>T`. Returns (sys_id → times delivered, requests).
async fn keyset_read_all(
    client: &Client,
    url: &str,
    from: &str,
    limit: usize,
    fields: &str,
) -> (HashMap<String, u32>, usize) {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut requests = 0;
    let mut fetch = async |query: String| {
        requests += 1;
        let limit = limit.to_string();
        let response = get(
            client,
            url,
            &[
                ("sysparm_query", query.as_str()),
                ("sysparm_limit", limit.as_str()),
                ("sysparm_display_value", "all"),
                ("sysparm_exclude_reference_link", "true"),
                ("sysparm_fields", fields),
                ("sysparm_no_count", "true"),
            ],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["sys_id"]["value"].as_str().unwrap().to_owned(),
                    row["sys_updated_on"]["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<(String, String)>>()
    };
    let mut query = format!("sys_updated_on>={from}^ORDERBYsys_updated_on^ORDERBYsys_id");
    loop {
        let page = fetch(query.clone()).await;
        for (sys_id, _) in &page {
            *seen.entry(sys_id.clone()).or_default() += 1;
        }
        if page.len() < limit {
            break;
        }
        let (last_id, last_time) = page.last().unwrap().clone();
        if page[0].1 == last_time {
            // A whole page in one second: finish that second by sys_id.
            let mut after = last_id;
            loop {
                let tie = fetch(format!("sys_updated_on={last_time}^sys_id>{after}^ORDERBYsys_id")).await;
                for (sys_id, _) in &tie {
                    *seen.entry(sys_id.clone()).or_default() += 1;
                }
                if tie.len() < limit {
                    break;
                }
                after = tie.last().unwrap().0.clone();
            }
            query = format!("sys_updated_on>{last_time}^ORDERBYsys_updated_on^ORDERBYsys_id");
        } else {
            // Re-read the last second from its start; what was seen is dropped.
            for (sys_id, time) in &page {
                if *time == last_time {
                    *seen.get_mut(sys_id).unwrap() -= 1;
                }
            }
            query = format!("sys_updated_on>={last_time}^ORDERBYsys_updated_on^ORDERBYsys_id");
        }
    }
    (seen, requests)
}

#[tokio::test]
async fn two_hundred_thousand_seeded_incidents_are_each_read_once_by_keyset_paging() {
    const RECORDS: usize = 200_000;
    let emulator = start();
    let client = Client::new();
    let (from, to) = ("2026-07-28 10:00:00", "2026-07-28 10:02:30");
    let seeding = Instant::now();
    // 150 seconds: ~1,333 incidents per second, more than a page, so the sync's tie query runs.
    emulator.seed_incidents(RECORDS, utc(from), utc(to));
    println!("seeded {RECORDS} incidents in {:?}", seeding.elapsed());
    assert_eq!(emulator.count("incident"), RECORDS);

    let reading = Instant::now();
    let (seen, requests) =
        keyset_read_all(&client, &table_url(&emulator, "incident"), from, 1_000, "sys_id,sys_updated_on,number").await;
    println!("read them in {requests} requests, {:?}", reading.elapsed());
    assert_eq!(seen.len(), RECORDS, "every incident read");
    assert!(seen.values().all(|&times| times == 1), "each exactly once (after dropping re-read seconds)");
    assert!(requests < RECORDS / 1_000 * 3, "{requests} requests");
}

#[tokio::test]
async fn generated_records_are_deterministic_varied_and_within_their_range() {
    let (from, to) = (utc("2026-07-01 00:00:00"), utc("2026-07-08 00:00:00"));
    let first = start();
    first.seed_incidents(400, from, to);
    first.seed_change_requests(200, from, to);
    let second = start();
    second.seed_incidents(400, from, to);
    second.seed_change_requests(200, from, to);
    assert_eq!(first.records("incident"), second.records("incident"));
    assert_eq!(first.records("change_request"), second.records("change_request"));
    // Reference data is added once, however many times the generators run.
    first.seed_incidents(10, from, to);
    assert_eq!(first.count("sys_user"), second.count("sys_user"));
    assert_eq!(first.count("incident"), 410);

    let incidents = first.records("incident");
    let values = |field: &str| {
        incidents.iter().map(|r| r[field].as_str().unwrap().to_owned()).collect::<std::collections::BTreeSet<_>>()
    };
    for state in ["1", "2", "3", "6", "7", "8"] {
        assert!(values("state").contains(state), "state {state} occurs");
    }
    assert!(values("priority").len() >= 4);
    assert!(values("contact_type").len() >= 5);
    assert!(values("description").contains(""), "some descriptions are empty");
    assert!(incidents.iter().any(|r| r["description"].as_str().unwrap().contains('\n')));
    assert!(incidents.iter().any(|r| r["short_description"].as_str().unwrap().contains('"')));
    assert!(incidents.iter().any(|r| !r["short_description"].as_str().unwrap().is_ascii()));
    for incident in &incidents {
        let updated = utc(incident["sys_updated_on"].as_str().unwrap());
        assert!(updated >= from && updated < to);
        assert!(utc(incident["sys_created_on"].as_str().unwrap()) <= updated);
        let state = incident["state"].as_str().unwrap();
        assert_eq!(incident["active"], if ["6", "7", "8"].contains(&state) { "false" } else { "true" });
        if state == "6" || state == "7" {
            assert!(is_timestamp(incident["resolved_at"].as_str().unwrap()));
            assert!(utc(incident["resolved_at"].as_str().unwrap()) <= updated);
        }
        if state == "7" {
            assert_eq!(incident["closed_at"], incident["sys_updated_on"]);
        }
        assert!(incident["number"].as_str().unwrap().starts_with("INC"));
    }
    let changes = first.records("change_request");
    for change in &changes {
        assert!(is_timestamp(change["start_date"].as_str().unwrap()));
        assert!(change["start_date"].as_str().unwrap() < change["end_date"].as_str().unwrap());
        assert!(["standard", "normal", "emergency"].contains(&change["type"].as_str().unwrap()));
        assert!(change["number"].as_str().unwrap().starts_with("CHG"));
    }
    assert!(changes.iter().any(|c| c["conflict_status"] == "Conflict"));
    assert!(changes.iter().any(|c| c["implementation_plan"].as_str().unwrap().contains("\r\n")));
}

#[tokio::test]
async fn display_values_show_referenced_names_and_choice_labels() {
    let emulator = start();
    let client = Client::new();
    let (from, to) = (utc("2026-07-01 00:00:00"), utc("2026-07-02 00:00:00"));
    emulator.seed_incidents(300, from, to);
    emulator.seed_change_requests(150, from, to);
    let names = |table: &str| -> HashMap<String, String> {
        emulator
            .records(table)
            .into_iter()
            .map(|r| (r["sys_id"].as_str().unwrap().to_owned(), r["name"].as_str().unwrap().to_owned()))
            .collect()
    };
    let (users, groups, cis) = (names("sys_user"), names("sys_user_group"), names("cmdb_ci"));
    assert!(users.values().any(|name| name.contains('\'')) && users.values().any(|name| !name.is_ascii()));

    let body: Value = get(
        &client,
        &table_url(&emulator, "incident"),
        &[
            ("sysparm_display_value", "all"),
            ("sysparm_exclude_reference_link", "true"),
            ("sysparm_fields", SYNC_FIELDS),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    let rows = body["result"].as_array().unwrap();
    assert_eq!(rows.len(), 300);
    let incident_states: HashMap<&str, &str> =
        [("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("6", "Resolved"), ("7", "Closed"), ("8", "Canceled")]
            .into();
    let (mut dangling, mut named) = (0, 0);
    for row in rows {
        assert_eq!(row.as_object().unwrap().len(), SYNC_FIELDS.split(',').count());
        for (field, names) in [
            ("caller_id", &users),
            ("opened_by", &users),
            ("assigned_to", &users),
            ("resolved_by", &users),
            ("closed_by", &users),
            ("assignment_group", &groups),
            ("cmdb_ci", &cis),
        ] {
            let value = row[field]["value"].as_str().unwrap();
            let shown = row[field]["display_value"].as_str().unwrap();
            assert!(row[field].get("link").is_none(), "links excluded");
            match names.get(value) {
                Some(name) => {
                    assert_eq!(shown, name, "{field}");
                    named += 1;
                }
                None => {
                    assert_eq!(shown, "", "{field} {value} references nothing");
                    dangling += usize::from(!value.is_empty());
                }
            }
        }
        let state = row["state"]["value"].as_str().unwrap();
        assert_eq!(row["state"]["display_value"], incident_states[state]);
        assert_eq!(row["incident_state"]["display_value"], incident_states[state]);
        let priority = row["priority"]["display_value"].as_str().unwrap();
        assert!(priority.starts_with(row["priority"]["value"].as_str().unwrap()) && priority.len() > 4, "{priority}");
        assert_eq!(row["sys_updated_on"]["display_value"], row["sys_updated_on"]["value"], "dates display in UTC");
        assert_eq!(row["short_description"]["display_value"], row["short_description"]["value"]);
    }
    assert!(dangling > 0 && named > 1_000, "{dangling} dangling, {named} named");
    // JSON escaping: every stored description comes back intact, control characters included.
    let stored: HashMap<String, String> = emulator
        .records("incident")
        .into_iter()
        .map(|r| (r["sys_id"].as_str().unwrap().to_owned(), r["description"].as_str().unwrap().to_owned()))
        .collect();
    for row in rows {
        assert_eq!(row["description"]["value"], stored[row["sys_id"]["value"].as_str().unwrap()].as_str());
    }
    assert!(stored.values().any(|d| d.contains('\u{7}')), "a control character was exercised");

    // Exact labels, on records set up for them.
    let caller = users.keys().next().unwrap().clone();
    let incident = emulator.insert(
        "incident",
        json!({"state": "3", "urgency": "1", "impact": "2", "escalation": "3", "category": "inquiry",
               "contact_type": "walk-in", "hold_reason": "4", "caller_id": caller, "severity": "1"}),
    );
    let row: Value =
        get(&client, &format!("{}/{incident}", table_url(&emulator, "incident")), &[("sysparm_display_value", "all")])
            .await
            .json()
            .await
            .unwrap();
    let shown = |field: &str| row["result"][field]["display_value"].as_str().unwrap().to_owned();
    assert_eq!(
        [
            "state",
            "urgency",
            "impact",
            "priority",
            "escalation",
            "category",
            "contact_type",
            "hold_reason",
            "severity",
            "approval"
        ]
        .map(shown),
        [
            "On Hold",
            "1 - High",
            "2 - Medium",
            "2 - High",
            "Overdue",
            "Inquiry / Help",
            "Walk-in",
            "Awaiting Vendor",
            "1 - High",
            "Not Yet Requested"
        ]
    );
    assert_eq!(row["result"]["caller_id"]["display_value"], users[&caller].as_str());
    assert_eq!(
        row["result"]["caller_id"]["link"],
        format!("{}/{caller}", table_url(&emulator, "sys_user")),
        "links unless excluded"
    );
    let change = emulator.insert(
        "change_request",
        json!({"state": "-2", "type": "emergency", "risk": "4", "conflict_status": "No Conflict", "impact": "1",
               "urgency": "2", "priority": "1", "category": "Other", "close_code": "successful_issues"}),
    );
    let row: Value = get(
        &client,
        &format!("{}/{change}", table_url(&emulator, "change_request")),
        &[("sysparm_display_value", "true"), ("sysparm_exclude_reference_link", "true")],
    )
    .await
    .json()
    .await
    .unwrap();
    let shown = |field: &str| row["result"][field].as_str().unwrap().to_owned();
    assert_eq!(
        [
            "state",
            "type",
            "risk",
            "conflict_status",
            "impact",
            "urgency",
            "priority",
            "category",
            "close_code",
            "escalation",
            "upon_approval"
        ]
        .map(shown),
        [
            "Scheduled",
            "Emergency",
            "Low",
            "No Conflict",
            "1 - High",
            "2 - Medium",
            "1 - Critical",
            "Other",
            "Successful with issues",
            "Normal",
            "Proceed to Next Task"
        ]
    );
    assert_eq!(emulator.record("change_request", &change).unwrap()["number"], "CHG0010151");

    // Generated change requests: every choice field shows a label.
    let body: Value = get(
        &client,
        &table_url(&emulator, "change_request"),
        &[
            ("sysparm_display_value", "all"),
            ("sysparm_fields", "state,type,risk,conflict_status,requested_by,priority"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    for row in body["result"].as_array().unwrap() {
        for field in ["state", "type", "risk", "conflict_status", "priority"] {
            let (value, shown) = (row[field]["value"].as_str().unwrap(), row[field]["display_value"].as_str().unwrap());
            assert!(
                !shown.is_empty() && (shown != value || field == "conflict_status"),
                "{field}: {value} shows {shown}"
            );
        }
        let requester = row["requested_by"]["value"].as_str().unwrap();
        let expected = users.get(requester).map_or("", String::as_str);
        assert_eq!(row["requested_by"]["display_value"], expected, "the one inserted by hand has no requester");
    }
}

#[tokio::test]
async fn sys_choice_and_sys_template_are_served_like_any_table() {
    let emulator = start();
    let client = Client::new();
    let body: Value = get(
        &client,
        &table_url(&emulator, "sys_choice"),
        &[
            ("sysparm_query", "name=incident^element=state^language=en^ORDERBYsequence"),
            ("sysparm_fields", "value,label,inactive"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["result"],
        json!([{"value": "1", "label": "New", "inactive": "false"}, {"value": "2", "label": "In Progress", "inactive": "false"},
               {"value": "3", "label": "On Hold", "inactive": "false"}, {"value": "6", "label": "Resolved", "inactive": "false"},
               {"value": "7", "label": "Closed", "inactive": "false"}, {"value": "8", "label": "Canceled", "inactive": "false"}])
    );
    let risks: Value = get(
        &client,
        &table_url(&emulator, "sys_choice"),
        &[
            ("sysparm_query", "name=change_request^element=risk^inactive=false^ORDERBYvalue"),
            ("sysparm_fields", "value,label"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        risks["result"],
        json!([{"value": "2", "label": "High"}, {"value": "3", "label": "Moderate"}, {"value": "4", "label": "Low"}])
    );

    // A choice added at run time is displayed from then on.
    emulator.insert(
        "sys_choice",
        json!({"name": "incident", "element": "subcategory", "value": "vpn", "label": "VPN", "language": "en"}),
    );
    let incident = emulator.insert("incident", json!({"subcategory": "vpn"}));
    let shown: Value =
        get(&client, &format!("{}/{incident}", table_url(&emulator, "incident")), &[("sysparm_display_value", "true")])
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(shown["result"]["subcategory"], "VPN");

    let group = emulator.insert("sys_user_group", json!({"name": "Storage"}));
    let template = emulator.add_template(
        "Disk full",
        "incident",
        &format!("short_description=Disk full^urgency=2^assignment_group={group}^EQ"),
    );
    emulator.add_template("Printer jam", "incident", "short_description=Printer jam^EQ");
    emulator.add_template("Patch window", "change_request", "type=standard^EQ");
    let templates = |query: &'static str| {
        let client = client.clone();
        let url = table_url(&emulator, "sys_template");
        async move {
            let body: Value = get(
                &client,
                &url,
                &[("sysparm_query", query), ("sysparm_fields", "name,table,template,active,global,sys_id")],
            )
            .await
            .json()
            .await
            .unwrap();
            body["result"].as_array().unwrap().clone()
        }
    };
    let found = templates("table=incident^active=true^ORDERBYname").await;
    assert_eq!(found.len(), 2);
    assert_eq!(found[0]["name"], "Disk full");
    assert_eq!(found[0]["sys_id"], template.as_str());
    assert_eq!(found[0]["template"], format!("short_description=Disk full^urgency=2^assignment_group={group}^EQ"));
    assert_eq!((found[0]["active"].as_str(), found[0]["global"].as_str()), (Some("true"), Some("true")));
    assert!(emulator.update("sys_template", &template, json!({"active": false})));
    assert_eq!(templates("table=incident^active=true").await.len(), 1);
    assert_eq!(templates("nameSTARTSWITHP").await.len(), 2);
}

#[tokio::test]
async fn a_hibernating_instance_answers_everything_with_its_html_notice() {
    use support::servicenow::{DEVELOPER_PORTAL_WAKE_URL, HIBERNATION_HEADING};
    let emulator = start();
    let client = Client::new();
    let url = table_url(&emulator, "incident");
    emulator.insert("incident", json!({"short_description": "kept while asleep"}));

    emulator.set_hibernating(true);
    let list = get(&client, &url, &[("sysparm_limit", "1")]).await;
    let token = password_grant(&client, &emulator, DEFAULT_PASSWORD).await;
    let created = send_json(&client, reqwest::Method::POST, &url, json!({"short_description": "lost"})).await;
    let anonymous = client.get(&url).send().await.unwrap();
    let events = send_json(
        &client,
        reqwest::Method::POST,
        &format!("{}/api/global/em/jsonv2", emulator.url()),
        json!({"records": []}),
    )
    .await;
    for response in [list, token, created, anonymous, events] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(response.headers(), "content-type"), "text/html");
        let page = response.text().await.unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(HIBERNATION_HEADING) && page.contains(DEVELOPER_PORTAL_WAKE_URL), "{page}");
    }
    assert_eq!(emulator.count("incident"), 1, "nothing happened while asleep");
    assert!(emulator.requests().iter().all(|request| request.status == 200));

    emulator.set_hibernating(false);
    let awake = get(&client, &url, &[]).await;
    assert_eq!(awake.status(), StatusCode::OK);
    assert!(header(awake.headers(), "content-type").starts_with("application/json"));
    assert_eq!(awake.json::<Value>().await.unwrap()["result"][0]["short_description"], "kept while asleep");
}

#[tokio::test]
async fn values_are_escaped_byte_for_byte_as_serde_json_does() {
    let emulator = start();
    let client = Client::new();
    // Every ASCII character, at every alignment the escaper's eight-byte steps can meet it, plus
    // multi-byte characters next to the escaped ones.
    let ascii: String = (0u8..0x80).map(char::from).collect();
    let mut texts: Vec<String> =
        (0..9).map(|pad| format!("{}{ascii}é\"😀\\\n{}", "x".repeat(pad), "y".repeat(pad))).collect();
    texts.push(String::new());
    texts.push("plain text without anything to escape, longer than eight bytes".to_owned());
    for text in &texts {
        let sys_id = emulator.insert("u_escapes", json!({"u_text": text}));
        let body =
            get(&client, &format!("{}/{sys_id}", table_url(&emulator, "u_escapes")), &[("sysparm_fields", "u_text")])
                .await
                .text()
                .await
                .unwrap();
        assert_eq!(body, format!("{{\"result\":{{\"u_text\":{}}}}}", serde_json::to_string(text).unwrap()));
        let all = get(
            &client,
            &format!("{}/{sys_id}", table_url(&emulator, "u_escapes")),
            &[("sysparm_fields", "u_text"), ("sysparm_display_value", "all")],
        )
        .await
        .text()
        .await
        .unwrap();
        let quoted = serde_json::to_string(text).unwrap();
        assert_eq!(all, format!("{{\"result\":{{\"u_text\":{{\"display_value\":{quoted},\"value\":{quoted}}}}}}}"));
    }
}
