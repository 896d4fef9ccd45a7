//! Hostile input (issue 8): whatever an alert carries (rule names, descriptions, custom properties, resource ids and
//! configuration items holding `^`, `^NQ`, `'`, `%`, newlines, `javascript:`, ...) never reaches a query language
//! unescaped. Property tests, one set per product, through the production code:
//!
//! - **End to end** (ServiceNow, Cherwell, Provance, SCSM): itsmc runs against the product's emulator
//!   (`tests/support/`), hostile alerts fire, fire again and resolve, and every request the emulator saw is
//!   inspected. Each product's query sites are checked for their exact shape (the only query on the alert path is
//!   the correlation-key lookup, and its key is the 40 hex digits itsmc made), and everything else the emulator saw
//!   outside work item data (paths, query strings, search and criteria bodies) must hold none of the alert's values.
//!   The work item itself carries the alert's text as data: that it arrives intact is the second property.
//! - **Request builders** (unit level): where a value could legitimately go into a query, it is escaped by that
//!   protocol's rules (OData doubles `'`; a Cherwell path segment is percent-encoded; a search value is JSON), and
//!   where the language has no escaping (a ServiceNow encoded query, an SCSM criteria on the correlation key),
//!   anything but hex is refused.
//! - **Table Storage**: the production `TableStore` against a recorder that answers like the Table service: every
//!   entity address and `$filter`, decoded by OData's rules, gives back exactly the key and value it was built
//!   from. With `ITSMC_TEST_AZURITE_TABLE` set (`.ci/run` sets it), the same values also round-trip through
//!   Azurite, whose own OData parser then has the last word, and itsmc keeps its state there (behind a recording
//!   proxy) while hostile alerts go through it: its addresses and filters hold hex keys and constants only.
//!   Without Azurite those two say so and pass: the recorder property still runs.
//! - **The checks themselves**: a request log with an alert value spliced into the query (raw, or quoted by the
//!   product's own rules) fails each product's check, so the end-to-end properties can fail.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use itsmc::store::{Entry, Filter, Insert, Store, Table, TableStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use support::harness::{Itsmc, metric_alert};
use support::itsm::start_itsmc;

/// Cases per end-to-end property: each is three alerts through itsmc and a dozen emulator requests.
const CASES: u32 = 64;
/// Cases per request-builder property: no I/O.
const UNIT_CASES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Hostile strings and alerts
// ---------------------------------------------------------------------------------------------

/// What a query language could make something of: encoded-query operators, OData quotes and keywords, URL
/// escapes, line breaks, script prefixes, JSON and path punctuation, and text beyond ASCII.
const PIECES: &[&str] = &[
    "^",
    "^NQ",
    "^OR",
    "^^",
    "^NQactive=true",
    "^ORDERBYDESCsys_created_on",
    "active=true^NQ",
    "sys_id!=",
    "'",
    "''",
    "' or '1' eq '1",
    "%",
    "%27",
    "%00",
    "%2F",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "javascript:",
    "javascript:gs.getUserID()",
    "\"",
    "\\",
    "&",
    "=",
    "$filter=",
    "$top=1",
    ")",
    "(",
    " or ",
    " eq ",
    " and ",
    "?",
    "#",
    "/",
    "+",
    ",",
    ";",
    "<x>",
    "{{ rule }}",
    "é",
    "☃",
    "𝄞",
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "İ",
];

/// Whether `text` holds something a query language could take as syntax.
fn is_dangerous(text: &str) -> bool {
    text.contains("javascript:")
        || text.chars().any(|c| !c.is_ascii() || "^'%\n\r\"\\&=()$?#".contains(c) || c.is_ascii_control())
}

/// A string built from [`PIECES`], a little plain text and any character, at least six characters long (so that
/// finding it in a request is never a coincidence) and holding something dangerous.
fn hostile() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        4 => prop::sample::select(PIECES).prop_map(str::to_string),
        1 => "[g-zG-Z _.-]{1,4}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(part, 2..7)
        .prop_map(|parts| parts.concat())
        .prop_filter("long enough and dangerous", |s| (6..=48).contains(&s.chars().count()) && is_dangerous(s))
}

/// The alert values a test makes hostile.
#[derive(Debug, Clone)]
struct Hostile {
    rule: String,
    description: String,
    configuration_item: String,
    resource_group: String,
    resource_name: String,
    properties: BTreeMap<String, String>,
    alert_id: String,
}

fn hostile_alert() -> impl Strategy<Value = Hostile> {
    (
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        prop::collection::btree_map(hostile(), hostile(), 1..4),
        hostile(),
    )
        .prop_map(
            |(rule, description, configuration_item, resource_group, resource_name, properties, alert_id)| Hostile {
                rule,
                description,
                configuration_item,
                resource_group,
                resource_name,
                properties,
                alert_id,
            },
        )
}

impl Hostile {
    fn resource(&self) -> String {
        format!(
            "/subscriptions/s1/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            self.resource_group, self.resource_name
        )
    }

    /// Every value that came from the alert.
    fn values(&self) -> Vec<String> {
        let mut values = vec![
            self.rule.clone(),
            self.description.clone(),
            self.configuration_item.clone(),
            self.resource_group.clone(),
            self.resource_name.clone(),
            self.resource(),
            self.alert_id.clone(),
        ];
        for (key, value) in &self.properties {
            values.push(key.clone());
            values.push(value.clone());
        }
        values
    }

    /// The work item's title as itsmc makes it: the rule on the configuration item, cut at 160 characters.
    fn title(&self) -> String {
        format!("{} on {}", self.rule, self.configuration_item).chars().take(160).collect()
    }

    /// The common-schema metric alert with every essential that names something replaced by a hostile value.
    /// `n` makes the alert (and so its correlation key) one of its own.
    fn body(&self, n: u64, condition: &str, fired: &str) -> String {
        let mut body: Value =
            serde_json::from_str(&metric_alert(&format!("{n}{}", self.alert_id), condition, fired, "Sev2")).unwrap();
        let essentials = &mut body["data"]["essentials"];
        essentials["alertRule"] = json!(self.rule);
        essentials["description"] = json!(self.description);
        essentials["alertTargetIDs"] = json!([self.resource()]);
        essentials["configurationItems"] = json!([self.configuration_item]);
        essentials["originAlertId"] = json!(self.alert_id);
        body["data"]["customProperties"] = json!(self.properties);
        body["data"]["alertContext"]["properties"] = json!(self.properties);
        body.to_string()
    }

    /// What the work item's description must hold: the rule, the alert's description, the resource and every
    /// custom property, as they came.
    fn described(&self, description: &str) -> Result<(), String> {
        let mut expected = vec![self.rule.clone(), self.description.clone(), format!("Resource: {}", self.resource())];
        expected.extend(self.properties.iter().map(|(k, v)| format!("  {k}: {v}")));
        match expected.iter().find(|e| !description.contains(e.as_str())) {
            Some(missing) => Err(format!("the description lost {missing:?}: {description:?}")),
            None => Ok(()),
        }
    }
}

static ALERTS: AtomicU64 = AtomicU64::new(1);

const FIRED: &str = "2026-11-25T12:00:00.000Z";
const REFIRED: &str = "2026-11-25T12:05:00.000Z";

/// Fire, fire again and resolve one hostile alert through itsmc, each answered as it should be. Answers the line
/// of the work item's description that names this alert alone (its id holds a number no other case has).
async fn lifecycle(itsmc: &Itsmc, alert: &Hostile, query: &str) -> Result<String, String> {
    let n = ALERTS.fetch_add(1, Ordering::Relaxed);
    for (condition, fired, expected) in
        [("Fired", FIRED, "created"), ("Fired", REFIRED, "updated"), ("Resolved", FIRED, "resolved")]
    {
        let (status, answer) = itsmc.alert(query, &alert.body(n, condition, fired)).await;
        if status != 200 || answer["action"] != expected {
            return Err(format!("{condition} at {fired}: expected {expected}, itsmc answered {status} {answer}"));
        }
    }
    Ok(format!("Alert id: /subscriptions/s1/providers/Microsoft.AlertsManagement/alerts/{n}{}\n", alert.alert_id))
}

// ---------------------------------------------------------------------------------------------
// Checking what reached the product
// ---------------------------------------------------------------------------------------------

/// Fails when `text` (a path, a query, a search) holds one of the alert's values.
fn leak(what: &str, text: &str, values: &[String]) -> Result<(), String> {
    match values.iter().find(|v| text.contains(v.as_str())) {
        Some(value) => Err(format!("{what} holds the alert's {value:?}: {text:?}")),
        None => Ok(()),
    }
}

/// The correlation key's shape: 40 hex digits.
fn is_key(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `%XX` decoded (a path; `+` stays itself).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query string's pairs, decoded as a server decodes them.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Every string in a JSON value, object keys included.
fn json_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        Value::Object(fields) => {
            for (k, v) in fields {
                out.push(k.clone());
                json_strings(v, out);
            }
        }
        _ => {}
    }
}

fn json_leak(what: &str, value: &Value, values: &[String]) -> Result<(), String> {
    let mut strings = Vec::new();
    json_strings(value, &mut strings);
    strings.iter().try_for_each(|s| leak(what, s, values))
}

/// One OData token: a string literal (decoded: `''` is a quote), a bare word, or punctuation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(String),
    Word(String),
    Punct(char),
}

/// OData's tokens, as the service reads a `$filter` or an entity address: a quote opens a literal that only a
/// single quote closes. An unclosed literal is an error.
fn odata_tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '\'' => {
                let mut literal = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            literal.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => literal.push(c),
                        None => return Err(format!("an unclosed string literal in {text:?}")),
                    }
                }
                tokens.push(Token::Text(literal));
            }
            '(' | ')' | ',' | '=' => tokens.push(Token::Punct(c)),
            _ => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next == ' ' || "'(),=".contains(next) {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn word(w: &str) -> Token {
    Token::Word(w.into())
}

fn text(t: &str) -> Token {
    Token::Text(t.into())
}

fn check<T>(result: Result<T, String>) -> Result<T, TestCaseError> {
    result.map_err(TestCaseError::fail)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 200, ..Config::default() })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

/// Run `property` over `strategy`, panicking with proptest's minimal failing case.
fn prove<S: Strategy>(cases: u32, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    if let Err(failure) = runner(cases).run(&strategy, property) {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceNow: encoded queries have no escaping, so no alert value may ever be in one
// ---------------------------------------------------------------------------------------------

/// The one encoded query on the alert path, the correlation-key lookup: `<key field>=<key>^ORDERBYDESCsys_created_on`,
/// or for the outbox's lookups of many keys at once `<key field>IN<key>,<key>,…^ORDERBYDESCsys_created_on`: its keys.
fn servicenow_lookup(query: &str) -> Result<Vec<String>, String> {
    let shape = || format!("an encoded query that is not the correlation-key lookup: {query:?}");
    let condition = query.strip_suffix("^ORDERBYDESCsys_created_on").ok_or_else(shape)?;
    let (field, keys) = match condition.split_once('=') {
        Some((field, key)) => (field, vec![key]),
        None => {
            let (field, list) = condition.split_once("IN").ok_or_else(shape)?;
            (field, list.split(',').collect())
        }
    };
    if !["correlation_id", "message_key"].contains(&field) || !keys.iter().all(|key| is_key(key)) {
        return Err(shape());
    }
    Ok(keys.into_iter().map(str::to_string).collect())
}

fn check_servicenow(
    requests: &[support::servicenow::RequestLog],
    values: &[String],
) -> Result<BTreeSet<String>, String> {
    let mut keys = BTreeSet::new();
    for request in requests {
        let what = format!("{} {}?{}", request.method, request.path, request.query);
        leak(&format!("the path of {what}"), &percent_decode(&request.path), values)?;
        for (name, value) in query_pairs(&request.query) {
            if name == "sysparm_query" {
                keys.extend(servicenow_lookup(&value).map_err(|e| format!("{what}: {e}"))?);
            } else {
                leak(&format!("{name} of {what}"), &value, values)?;
            }
        }
    }
    Ok(keys)
}

fn servicenow_text(record: &serde_json::Map<String, Value>, field: &str) -> String {
    record.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

#[test]
fn servicenow_encoded_queries_never_hold_alert_values() {
    use support::servicenow::{EmulatorConfig, ServiceNowEmulator};
    let rt = runtime();
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    // A field template that renders alert values, so they travel through the connection's fields as well.
    let itsmc = rt.block_on(start_itsmc(&servicenow, None, &[("ITSMC_CATEGORY", "{{ rule }}|{{ resource }}")]));
    let kinds = prop::sample::select(vec!["Incident", "Alert", "Event"]);
    prove(CASES, (hostile_alert(), kinds), |(alert, kind)| {
        rt.block_on(async {
            servicenow.clear_requests();
            let this = check(lifecycle(&itsmc, &alert, &format!("?workItemType={kind}")).await)?;
            let values = alert.values();
            let keys = check(check_servicenow(&servicenow.requests(), &values))?;
            // Events are never looked up (Event Management folds them by message key itself).
            let expected_lookups = usize::from(kind != "Event");
            prop_assert_eq!(keys.len(), expected_lookups, "one correlation key looked up: {:?}", keys);

            // The work item carries the alert's text, intact.
            let (table, key_field) = match kind {
                "Incident" => ("incident", "correlation_id"),
                "Alert" => ("em_alert", "message_key"),
                _ => ("em_event", "message_key"),
            };
            let records: Vec<_> = servicenow
                .records(table)
                .into_iter()
                .filter(|r| keys.is_empty() || keys.contains(&servicenow_text(r, key_field)))
                .filter(|r| servicenow_text(r, "description").contains(&this))
                .collect();
            prop_assert!(!records.is_empty(), "no {} record for the alert", table);
            let record = &records[0];
            match kind {
                "Incident" => {
                    prop_assert_eq!(servicenow_text(record, "short_description"), alert.title());
                    prop_assert_eq!(servicenow_text(record, "cmdb_ci"), alert.configuration_item.clone());
                    prop_assert_eq!(
                        servicenow_text(record, "category"),
                        format!("{}|{}", alert.rule, alert.resource())
                    );
                }
                _ => {
                    prop_assert_eq!(servicenow_text(record, "type"), alert.title());
                    prop_assert_eq!(servicenow_text(record, "node"), alert.configuration_item.clone());
                }
            }
            check(alert.described(&servicenow_text(record, "description")))?;
            Ok(())
        })
    });
}

#[test]
fn servicenow_lookups_and_sync_windows_refuse_anything_but_their_own_shapes() {
    use itsmc::itsm::servicenow::requests;
    use itsmc::sync::{SyncKind, Window};
    use itsmc::workitem::WorkItemType;
    let anything = prop_oneof![hostile(), any::<String>(), "[0-9a-fA-F]{0,40}"];
    prove(UNIT_CASES, anything, |value| {
        let hex = !value.is_empty() && value.bytes().all(|b| b.is_ascii_hexdigit());
        for kind in [WorkItemType::Incident, WorkItemType::Alert] {
            match requests::find(kind, &value) {
                Some(request) => {
                    prop_assert!(hex, "a lookup built from {:?}", value);
                    let query = &request.query.iter().find(|(n, _)| *n == "sysparm_query").unwrap().1;
                    prop_assert!(query.ends_with(&format!("={value}^ORDERBYDESCsys_created_on")), "{}", query);
                    prop_assert_eq!(query.matches('^').count(), 1, "{}", query);
                }
                None => prop_assert!(!hex, "a hex key refused: {:?}", value),
            }
        }
        prop_assert!(requests::find(WorkItemType::Event, &value).is_none());
        // The sync's window comes from a watermark, never from an alert; it is checked all the same.
        if value.contains('^') || value.contains('=') || value.contains('\'') {
            for kind in SyncKind::ALL {
                prop_assert!(requests::changes(kind, &Window::Since(value.clone()), 10).is_none());
                prop_assert!(requests::changes(kind, &Window::After(value.clone()), 10).is_none());
                let within = Window::Within { updated: "2026-11-25 12:00:00".into(), after_id: value.clone() };
                prop_assert!(requests::changes(kind, &within, 10).is_none());
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Cherwell: search filters are JSON; paths are percent-encoded segments
// ---------------------------------------------------------------------------------------------

fn check_cherwell(requests: &[support::cherwell::RequestLog], values: &[String]) -> Result<BTreeSet<String>, String> {
    let mut keys = BTreeSet::new();
    for request in requests {
        let what = format!("{} {}", request.method, request.path);
        leak(&format!("the path of {what}"), &percent_decode(&request.path), values)?;
        for (name, value) in query_pairs(&request.query) {
            leak(&format!("{name} of {what}"), &value, values)?;
        }
        if request.path.eq_ignore_ascii_case("/api/V1/getsearchresults") {
            let body: Value = serde_json::from_str(&request.body).map_err(|e| format!("{what}: {e}"))?;
            json_leak(&format!("the search of {what}"), &body, values)?;
            for filter in body["filters"].as_array().into_iter().flatten() {
                let value = filter["value"].as_str().unwrap_or_default();
                if filter["operator"] != "eq" || !is_key(value) {
                    return Err(format!("a search filter that is not the correlation-key lookup: {filter}"));
                }
                keys.insert(value.to_string());
            }
        }
    }
    Ok(keys)
}

#[test]
fn cherwell_searches_never_hold_alert_values() {
    use support::cherwell::{CherwellEmulator, EmulatorConfig};
    let rt = runtime();
    let cherwell = CherwellEmulator::start(EmulatorConfig::default());
    let itsmc = rt.block_on(start_itsmc(&cherwell, None, &[("ITSMC_CATEGORY", "{{ rule }}")]));
    prove(CASES, hostile_alert(), |alert| {
        rt.block_on(async {
            cherwell.clear_requests();
            let this = check(lifecycle(&itsmc, &alert, "").await)?;
            let keys = check(check_cherwell(&cherwell.requests(), &alert.values()))?;
            prop_assert_eq!(keys.len(), 1, "one correlation key searched for: {:?}", keys);
            let key = keys.into_iter().next().unwrap();
            let record = cherwell.records("Incident").into_iter().find(|r| r.get("ItsmcCorrelationKey") == Some(&key));
            prop_assert!(record.is_some(), "no incident with key {}", key);
            let record = record.unwrap();
            let field = |name: &str| record.get(name).cloned().unwrap_or_default();
            prop_assert_eq!(field("ShortDescription"), alert.title());
            prop_assert_eq!(field("Category"), alert.rule.clone());
            check(alert.described(&field("Description")))?;
            prop_assert!(field("Description").contains(&this), "another alert's incident");
            Ok(())
        })
    });
}

#[test]
fn cherwell_paths_and_search_values_keep_any_value_whole() {
    use itsmc::itsm::cherwell::requests;
    prove(UNIT_CASES, prop_oneof![hostile(), any::<String>()], |value| {
        // A record id in a path is one segment, whatever it holds.
        let path = requests::read("6dd53665c0c24cab86870a21cf6434ae", &value).path;
        prop_assert!(
            // Unreserved characters, `*` (which form encoding keeps, and a path may hold) and escapes.
            path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~*%/".contains(&b)),
            "unescaped in a path: {}",
            path
        );
        let segments: Vec<&str> = path.split('/').collect();
        prop_assert_eq!(segments.len(), 8, "{}", path);
        prop_assert_eq!(percent_decode(segments[7]), value.clone());
        let summary = requests::summary(&value).path;
        prop_assert_eq!(summary.split('/').count(), 6, "{}", summary);
        // A search value is a JSON string: it comes back exactly, and only as the filter's value.
        let filter = requests::Filter { field_id: "f1", operator: "eq", value: value.clone() };
        let body = requests::search("bo", &["f1"], &[filter], &[], 1, 1).body.unwrap();
        let sent: Value = serde_json::from_str(&body.to_string()).unwrap();
        prop_assert_eq!(sent["filters"].as_array().map(Vec::len), Some(1));
        prop_assert_eq!(&sent["filters"][0], &json!({"fieldId": "f1", "operator": "eq", "value": value}));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Provance (Dataverse): OData `$filter` literals double their quotes
// ---------------------------------------------------------------------------------------------

fn check_provance(requests: &[support::provance::Recorded], values: &[String]) -> Result<BTreeSet<String>, String> {
    use support::provance::CORRELATION_FIELD;
    let mut keys = BTreeSet::new();
    for request in requests {
        let what = format!("{} {}", request.method, request.path);
        leak(&format!("the path of {what}"), &percent_decode(&request.path), values)?;
        for (name, value) in &request.query {
            if name == "$filter" {
                let tokens = odata_tokens(value).map_err(|e| format!("{what}: {e}"))?;
                match tokens.as_slice() {
                    [Token::Word(field), Token::Word(eq), Token::Text(key)]
                        if field == CORRELATION_FIELD && eq == "eq" && is_key(key) =>
                    {
                        keys.insert(key.clone());
                    }
                    _ => return Err(format!("{what}: a $filter that is not the correlation-key lookup: {value:?}")),
                }
            } else {
                leak(&format!("{name} of {what}"), value, values)?;
            }
        }
    }
    Ok(keys)
}

#[test]
fn provance_filters_never_hold_alert_values() {
    use support::provance::{CI_FIELD, CORRELATION_FIELD, ProvanceEmulator};
    let rt = runtime();
    let provance = rt.block_on(async { ProvanceEmulator::start() });
    let itsmc = rt.block_on(start_itsmc(&provance, None, &[]));
    prove(CASES, hostile_alert(), |alert| {
        rt.block_on(async {
            provance.clear_requests();
            let this = check(lifecycle(&itsmc, &alert, "").await)?;
            let keys = check(check_provance(&provance.requests(), &alert.values()))?;
            prop_assert_eq!(keys.len(), 1, "one correlation key looked up: {:?}", keys);
            let key = keys.into_iter().next().unwrap();
            let records = provance.records("incidents");
            let record = records.iter().find(|r| r.get(CORRELATION_FIELD).and_then(Value::as_str) == Some(&key));
            prop_assert!(record.is_some(), "no case with key {}", key);
            let record = record.unwrap();
            let field = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
            prop_assert_eq!(field("title"), alert.title());
            let ci: String = alert.configuration_item.chars().take(100).collect();
            prop_assert_eq!(field(CI_FIELD), ci);
            check(alert.described(&field("description")))?;
            prop_assert!(field("description").contains(&this), "another alert's case");
            Ok(())
        })
    });
}

fn provance_settings() -> itsmc::itsm::provance::ProvanceSettings {
    let settings: BTreeMap<&str, &str> = [
        ("ITSMC_URL", "https://contoso.crm.dynamics.com"),
        ("ITSMC_CLIENT_ID", support::provance::APP_ID),
        ("ITSMC_CLIENT_SECRET", support::provance::APP_SECRET),
        ("ITSMC_PROVANCE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("ITSMC_PROVANCE_CUSTOMER", "accounts(8f2d6c4a-1b3e-4f5a-9c7d-2e4b6a8c0d1f)"),
        ("ITSMC_PROVANCE_CORRELATION_FIELD", support::provance::CORRELATION_FIELD),
        ("ITSMC_SYNC_KINDS", "Incident"),
    ]
    .into_iter()
    .collect();
    itsmc::itsm::provance::settings_from_lookup(&|name| settings.get(name).map(|v| v.to_string()), "default", false)
        .expect("valid Provance settings")
}

#[test]
fn provance_literals_keep_any_value_one_literal() {
    use itsmc::itsm::provance::requests;
    use support::provance::CORRELATION_FIELD;
    let settings = provance_settings();
    prove(UNIT_CASES, prop_oneof![hostile(), any::<String>()], |value| {
        prop_assert_eq!(check(odata_tokens(&requests::literal(&value)))?, vec![text(&value)]);
        if let Some(find) = requests::find(&settings, &value) {
            let filter = &find.query.iter().find(|(n, _)| *n == "$filter").unwrap().1;
            prop_assert_eq!(check(odata_tokens(filter))?, vec![word(CORRELATION_FIELD), word("eq"), text(&value)]);
        } else {
            prop_assert!(value.is_empty(), "a lookup refused: {:?}", value);
        }
        let definition = requests::entity_definition(&value);
        let filter = &definition.query.iter().find(|(n, _)| *n == "$filter").unwrap().1;
        prop_assert_eq!(check(odata_tokens(filter))?, vec![word("EntitySetName"), word("eq"), text(&value)]);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// SCSM: the criteria only ever compares the correlation key (hex), work item ids and times
// ---------------------------------------------------------------------------------------------

/// The criteria's comparisons, `(left, right)`, where `left` is the property (or generic property) compared.
fn comparisons(expression: &Value, out: &mut Vec<(String, String)>) {
    if let Some(simple) = expression.get("SimpleExpression") {
        let left = &simple["ValueExpressionLeft"];
        let left = left["Property"].as_str().or(left["GenericProperty"].as_str()).unwrap_or_default();
        let right = simple["ValueExpressionRight"]["Value"].as_str().unwrap_or_default();
        out.push((left.to_string(), right.to_string()));
    }
    for nested in expression.get("And").and_then(|a| a["Expression"].as_array()).into_iter().flatten() {
        comparisons(nested, out);
    }
}

fn check_scsm(requests: &[support::scsm::RequestLog], values: &[String]) -> Result<BTreeSet<String>, String> {
    use support::scsm::{CORRELATION_PROPERTY, EXTENSION_CLASS_ID};
    let correlation = format!("$Context/Property[Type='{EXTENSION_CLASS_ID}']/{CORRELATION_PROPERTY}$");
    let mut keys = BTreeSet::new();
    for request in requests {
        let what = format!("{} {}", request.method, request.path);
        leak(&format!("the path of {what}"), &percent_decode(&request.path), values)?;
        for (name, value) in query_pairs(&request.query) {
            leak(&format!("{name} of {what}"), &value, values)?;
        }
        if request.path.eq_ignore_ascii_case("/api/V3/Projection/GetProjectionByCriteria") {
            let body: Value = serde_json::from_str(&request.body).map_err(|e| format!("{what}: {e}"))?;
            let mut found = Vec::new();
            comparisons(&body["Criteria"]["Base"]["Expression"], &mut found);
            if found.is_empty() {
                return Err(format!("{what}: a criteria of another shape: {body}"));
            }
            for (left, right) in found {
                leak(&format!("the criteria of {what}"), &right, values)?;
                if left == correlation {
                    if !is_key(&right) {
                        return Err(format!("{what}: the correlation key compared with {right:?}"));
                    }
                    keys.insert(right);
                } else if !["Id", "LastModified"].contains(&left.as_str()) {
                    return Err(format!("{what}: a criteria on {left:?}"));
                }
            }
        }
    }
    Ok(keys)
}

#[test]
fn scsm_criteria_never_hold_alert_values() {
    use support::scsm::{CORRELATION_PROPERTY, ScsmConfig, ScsmEmulator};
    let rt = runtime();
    let scsm = ScsmEmulator::start(ScsmConfig::default());
    let itsmc = rt.block_on(start_itsmc(&scsm, None, &[]));
    prove(CASES, hostile_alert(), |alert| {
        rt.block_on(async {
            let seen = scsm.requests().len();
            let this = check(lifecycle(&itsmc, &alert, "").await)?;
            let keys = check(check_scsm(&scsm.requests()[seen..], &alert.values()))?;
            prop_assert_eq!(keys.len(), 1, "one correlation key looked up: {:?}", keys);
            let key = keys.into_iter().next().unwrap();
            let items = scsm.work_items("System.WorkItem.Incident");
            let item = items.iter().find(|i| i.get(CORRELATION_PROPERTY).and_then(Value::as_str) == Some(&key));
            prop_assert!(item.is_some(), "no incident with key {}", key);
            let item = item.unwrap();
            let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
            prop_assert_eq!(field("Title"), alert.title());
            check(alert.described(&field("Description")))?;
            prop_assert!(field("Description").contains(&this), "another alert's incident");
            Ok(())
        })
    });
}

// ---------------------------------------------------------------------------------------------
// The checks themselves: an alert value spliced into any product's query is caught
// ---------------------------------------------------------------------------------------------

/// Each product's check, given the requests a correct lookup makes with one alert value spliced into its query
/// (raw, or quoted by the product's own rules), fails: the end-to-end properties above can fail.
#[test]
fn the_checks_catch_an_alert_value_in_any_query() {
    prove(UNIT_CASES, (hostile_alert(), "[0-9a-f]{40}", 0..7usize), |(alert, key, pick)| {
        let values = alert.values();
        let value = &values[pick];
        let encode = |pairs: &[(&str, String)]| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter().map(|(n, v)| (*n, v.as_str())))
                .finish()
        };
        let servicenow = |query: String| support::servicenow::RequestLog {
            method: "GET".into(),
            path: "/api/now/table/incident".into(),
            query: encode(&[("sysparm_query", query), ("sysparm_limit", "1".into())]),
            authorization_kind: "basic".into(),
            status: 200,
            body: String::new(),
        };
        let lookup = format!("correlation_id={key}^ORDERBYDESCsys_created_on");
        prop_assert!(check_servicenow(&[servicenow(lookup.clone())], &values).is_ok());
        for spliced in [
            format!("correlation_id={key}^NQshort_description={value}^ORDERBYDESCsys_created_on"),
            format!("correlation_id={value}^ORDERBYDESCsys_created_on"),
            format!("{lookup}^short_description={}", value.replace('^', "^^")),
        ] {
            prop_assert!(check_servicenow(&[servicenow(spliced.clone())], &values).is_err(), "missed: {:?}", spliced);
        }

        let cherwell = |filter_value: &str| {
            support::cherwell::RequestLog {
            method: "POST".into(),
            path: "/api/V1/getsearchresults".into(),
            query: String::new(),
            body: json!({"busObId": "bo", "fields": ["f1"], "filters": [{"fieldId": "f1", "operator": "eq", "value": filter_value}]})
                .to_string(),
            bearer: true,
            status: 200,
        }
        };
        prop_assert!(check_cherwell(&[cherwell(&key)], &values).is_ok());
        prop_assert!(check_cherwell(&[cherwell(value)], &values).is_err(), "missed a search on {:?}", value);

        let provance = |filter: String| support::provance::Recorded {
            method: "GET".into(),
            path: "incidents".into(),
            query: vec![("$filter".into(), filter), ("$top".into(), "1".into())],
            prefer: None,
            if_match: None,
            status: 200,
            app_id: None,
        };
        let field = support::provance::CORRELATION_FIELD;
        let lookup = format!("{field} eq '{key}'");
        prop_assert!(check_provance(&[provance(lookup)], &values).is_ok());
        for spliced in [
            // Quoted as OData quotes: escaped, but still an alert value in a filter.
            format!("{field} eq {}", itsmc::itsm::provance::requests::literal(value)),
            format!("{field} eq '{key}' or title eq '{value}'"),
        ] {
            prop_assert!(check_provance(&[provance(spliced.clone())], &values).is_err(), "missed: {:?}", spliced);
        }

        let scsm = |right: &str| support::scsm::RequestLog {
            method: "POST".into(),
            path: "/api/V3/Projection/GetProjectionByCriteria".into(),
            query: String::new(),
            status: 200,
            body: itsmc::itsm::scsm::requests::by_criteria(
                support::scsm::INCIDENT_PROJECTION,
                itsmc::itsm::scsm::requests::compare(
                    itsmc::itsm::scsm::requests::Left::Property {
                        class_id: support::scsm::EXTENSION_CLASS_ID,
                        name: support::scsm::CORRELATION_PROPERTY,
                    },
                    itsmc::itsm::scsm::requests::Operator::Equal,
                    right,
                ),
            )
            .body
            .expect("a criteria")
            .to_string(),
        };
        prop_assert!(check_scsm(&[scsm(&key)], &values).is_ok());
        prop_assert!(check_scsm(&[scsm(value)], &values).is_err(), "missed a criteria on {:?}", value);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Azure Table Storage: entity addresses and `$filter`s quote and percent-encode
// ---------------------------------------------------------------------------------------------

/// One request the Table service recorder saw: method, raw path and raw query.
type Seen = (String, String, String);

/// Answers like the Table service where the store needs an answer to go on (an entity is never found, a query
/// finds nothing, an insert succeeds), and keeps every request.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

const ETAG: &str = "W/\"datetime'2026-11-25T12%3A00%3A00.0000000Z'\"";

async fn record(State(recorder): State<Recorder>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    support::serve::lock(&recorder.seen).push((parts.method.to_string(), path.clone(), query));
    let json = |status: StatusCode, body: Value| {
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json;odata=minimalmetadata"));
        headers.insert("etag", HeaderValue::from_static(ETAG));
        response
    };
    let not_found = json!({"odata.error": {"code": "ResourceNotFound", "message": {"lang": "en-US", "value": "The specified resource does not exist."}}});
    match parts.method.as_str() {
        "POST" => json(StatusCode::NO_CONTENT, Value::Null),
        "GET" if path.ends_with("()") => json(StatusCode::OK, json!({ "value": [] })),
        _ => json(StatusCode::NOT_FOUND, not_found),
    }
}

/// A Table store whose requests go to a [`Recorder`].
fn recorded_store() -> (TableStore, Recorder, support::serve::Server) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}/devstoreaccount1", listener.local_addr().unwrap());
    let recorder = Recorder::default();
    let app = Router::new().fallback(record).with_state(recorder.clone());
    let server = support::serve::Server::http("table-recorder", listener, app);
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint={endpoint}",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    );
    let store = TableStore::from_connection_string(&connection, "itsmc", reqwest::Client::new()).expect("a store");
    (store, recorder, server)
}

/// A key Table Storage allows (no `/ \ # ?` or control characters), hostile otherwise.
fn table_key() -> impl Strategy<Value = String> {
    prop_oneof![hostile(), any::<String>(), "[0-9a-f]{40}"].prop_map(|key| {
        key.chars().filter(|c| !matches!(c, '/' | '\\' | '#' | '?') && !c.is_control()).collect::<String>()
    })
}

/// A filter value the store keeps verbatim: short, no control characters, not `sha256:…`.
fn table_value() -> impl Strategy<Value = String> {
    table_key()
        .prop_map(|v| v.chars().take(100).collect::<String>())
        .prop_filter("verbatim", |v| !v.starts_with("sha256:"))
}

/// `(PartitionKey, RowKey)` of an entity address `…/<table>(PartitionKey='…',RowKey='…')`, read as the service
/// reads it: percent-decoded, then OData literals.
fn entity_address(path: &str, table: &str) -> Result<(String, String), String> {
    let decoded = percent_decode(path);
    let tail =
        decoded.rsplit_once(&format!("/{table}")).map(|(_, t)| t).ok_or_else(|| format!("not {table}: {path}"))?;
    match odata_tokens(tail)?.as_slice() {
        [
            Token::Punct('('),
            Token::Word(pk),
            Token::Punct('='),
            Token::Text(partition),
            Token::Punct(','),
            Token::Word(rk),
            Token::Punct('='),
            Token::Text(row),
            Token::Punct(')'),
        ] if pk == "PartitionKey" && rk == "RowKey" => Ok((partition.clone(), row.clone())),
        other => Err(format!("an entity address of another shape: {path} read as {other:?}")),
    }
}

fn partition_of(key: &str) -> String {
    key.chars().take(2).collect()
}

#[test]
fn table_storage_addresses_and_filters_keep_keys_and_values_whole() {
    let rt = runtime();
    let (store, recorder, _server) = recorded_store();
    prove(UNIT_CASES, (table_key(), table_key(), table_value()), |(key, after, value)| {
        rt.block_on(async {
            support::serve::lock(&recorder.seen).clear();
            // Empty keys are the service's too; only longer than 1 KiB is refused (the rest the strategy leaves out).
            let key_ok = key.encode_utf16().count() <= 1024;
            let after_ok = after.encode_utf16().count() <= 1024;
            let _ = store.get(Table::Links, &key).await;
            let _ = store.replace(Table::Links, &key, &json!({ "state": value }), ETAG).await;
            let _ = store.delete(Table::Links, &key, ETAG).await;
            let _ =
                store.scan(Table::Deliveries, Some(Filter { field: "state", value: &value }), Some(&after), 10).await;
            let seen = support::serve::lock(&recorder.seen).clone();
            let mut addressed = 0;
            let mut scanned = 0;
            for (method, path, query) in &seen {
                if path.ends_with("itsmcdeliveries()") {
                    scanned += 1;
                    let pairs = query_pairs(query);
                    let filter =
                        pairs.iter().find(|(n, _)| n == "$filter").map(|(_, f)| f.as_str()).unwrap_or_default();
                    let expected = vec![
                        word("PartitionKey"),
                        word("ge"),
                        text(&partition_of(&after)),
                        word("and"),
                        word("RowKey"),
                        word("gt"),
                        text(&after),
                        word("and"),
                        word("F_state"),
                        word("eq"),
                        text(&value),
                    ];
                    prop_assert_eq!(check(odata_tokens(filter))?, expected, "{} {}?{}", method, path, query);
                    prop_assert!(!pairs.iter().any(|(n, _)| n != "$filter" && n != "$top"), "{}", query);
                } else {
                    addressed += 1;
                    let (partition, row) = check(entity_address(path, "itsmclinks"))?;
                    prop_assert_eq!((partition, row), (partition_of(&key), key.clone()), "{} {}", method, path);
                    prop_assert!(query.is_empty(), "{}", query);
                }
            }
            // A key the service would refuse is refused before anything is sent.
            prop_assert_eq!(addressed, if key_ok { 3 } else { 0 }, "{:?}", seen);
            prop_assert_eq!(scanned, usize::from(after_ok), "{:?}", seen);
            Ok(())
        })
    });
}

/// The same values through Azurite (`.ci/run` starts it and sets `ITSMC_TEST_AZURITE_TABLE`): the service's own
/// parser reads each key and filter back as exactly the value written, and a filter matches only its own entity.
#[test]
fn table_storage_round_trips_hostile_keys_and_values_through_azurite() {
    let Ok(endpoint) = std::env::var("ITSMC_TEST_AZURITE_TABLE") else {
        eprintln!("ITSMC_TEST_AZURITE_TABLE is not set: the Azurite round trip is left to .ci/run");
        return;
    };
    let rt = runtime();
    let prefix = format!("t{:016x}", rand::random::<u64>());
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint={endpoint}",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    );
    let store = TableStore::from_connection_string(&connection, &prefix, reqwest::Client::new()).expect("a store");
    rt.block_on(store.ensure_tables()).unwrap_or_else(|e| panic!("Azurite at {endpoint}: {e}"));
    let n = AtomicU64::new(0);
    let valid = |k: &String| !k.is_empty() && k.encode_utf16().count() <= 512;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prove(64, (table_key().prop_filter("a key", valid), table_value()), |(key, value)| {
            rt.block_on(async {
                // Each case a key and a state of its own, and a decoy that a broken filter would also match.
                let case = n.fetch_add(1, Ordering::Relaxed);
                let (key, value) = (format!("{key}.{case}"), format!("{case}{value}"));
                let decoy = format!("{key}~decoy");
                let stored = json!({ "state": value, "rule": value });
                let inserted = store.insert(Table::Deliveries, &key, &stored).await;
                prop_assert!(matches!(inserted, Ok(Insert::Inserted { .. })), "{:?}", inserted);
                let decoy_value = json!({ "state": format!("{value}' or 'a' eq 'a") });
                let _ = store.insert(Table::Deliveries, &decoy, &decoy_value).await;
                let read = store.get(Table::Deliveries, &key).await;
                prop_assert!(
                    matches!(&read, Ok(Some(Entry { key: k, value: v, .. })) if *k == key && *v == stored),
                    "{:?}",
                    read
                );
                let page =
                    store.scan(Table::Deliveries, Some(Filter { field: "state", value: &value }), None, 10).await;
                let keys: Vec<String> =
                    page.map_err(|e| TestCaseError::fail(e.to_string()))?.entries.into_iter().map(|e| e.key).collect();
                prop_assert_eq!(keys, vec![key.clone()]);
                Ok(())
            })
        });
    }));
    rt.block_on(async {
        let _ = store.drop_tables().await;
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// One request through the [`Proxy`]: method, raw path, raw query and body.
type Proxied = (String, String, String, String);

/// Forwards every request to Azurite unchanged (SharedKey signs the path, not the host) and keeps it.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<std::sync::Mutex<Vec<Proxied>>>,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 8 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let sent = String::from_utf8_lossy(&body).into_owned();
    support::serve::lock(&proxy.seen).push((parts.method.to_string(), path, query, sent));
    let target = format!("{}{}", proxy.upstream, parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut upstream = proxy.http.request(parts.method.clone(), target).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !["transfer-encoding", "connection", "content-length"].contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(axum::body::Body::from(bytes)).expect("a response")
}

/// A property name Table Storage is given: an identifier (`F_<field>`, `H_<hash>`, `J0`, `Layout`, ...).
fn is_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with("odata.")
        || name.contains("@odata.type")
}

/// Every request itsmc made to Table Storage while handling hostile alerts: entity addresses hold hex keys only,
/// `$filter`s compare constants and hex keys, property names are identifiers; the alert's text is never in a
/// path, a query or a property name (it is in the entities' values, as data).
fn check_table_requests(seen: &[Proxied], values: &[String]) -> Result<usize, String> {
    let mut addressed = 0;
    for (method, path, query, body) in seen {
        let what = format!("{method} {path}?{query}");
        let decoded = percent_decode(path);
        leak(&format!("the path of {what}"), &decoded, values)?;
        if let Some(start) = decoded.find("(PartitionKey=") {
            let table = decoded[..start].rsplit('/').next().unwrap_or_default();
            let (partition, row) = entity_address(path, table)?;
            if !is_key(&row) || partition != partition_of(&row) {
                return Err(format!("{what}: an entity address for ({partition:?}, {row:?})"));
            }
            addressed += 1;
        }
        for (name, value) in query_pairs(query) {
            if name != "$filter" {
                leak(&format!("{name} of {what}"), &value, values)?;
                continue;
            }
            // The outbox's and the dashboard's filters: a state (a constant), or a continuation (hex keys).
            for token in odata_tokens(&value).map_err(|e| format!("{what}: {e}"))? {
                match token {
                    Token::Text(t) if is_key(&t) || t.len() <= 2 || t.bytes().all(|b| b.is_ascii_lowercase()) => {}
                    Token::Word(w)
                        if ["F_state", "PartitionKey", "RowKey", "eq", "ge", "gt", "and"].contains(&w.as_str()) => {}
                    other => return Err(format!("{what}: a $filter with {other:?}: {value:?}")),
                }
            }
        }
        if method == "POST" || method == "PUT" {
            let Ok(Value::Object(entity)) = serde_json::from_str::<Value>(body) else {
                return Err(format!("{what}: an entity that is not a JSON object"));
            };
            for name in entity.keys() {
                if !is_property_name(name) {
                    return Err(format!("{what}: a property named {name:?}"));
                }
                leak(&format!("a property name of {what}"), name, values)?;
            }
            if let Some(row) = entity.get("RowKey").and_then(Value::as_str)
                && !is_key(row)
            {
                return Err(format!("{what}: an entity keyed {row:?}"));
            }
        }
    }
    Ok(addressed)
}

/// itsmc keeping its state in Table Storage (Azurite, behind a recording proxy) while hostile alerts go to
/// ServiceNow: nothing the alert holds reaches a Table Storage address or filter.
#[test]
fn table_storage_keys_and_filters_never_hold_alert_values_end_to_end() {
    use support::servicenow::{EmulatorConfig, ServiceNowEmulator};
    let Ok(endpoint) = std::env::var("ITSMC_TEST_AZURITE_TABLE") else {
        eprintln!("ITSMC_TEST_AZURITE_TABLE is not set: itsmc on Table Storage is left to .ci/run");
        return;
    };
    let rt = runtime();
    let endpoint = url::Url::parse(&endpoint).expect("ITSMC_TEST_AZURITE_TABLE is a URL");
    let upstream = endpoint.origin().ascii_serialization();
    let proxy = Proxy { upstream, http: reqwest::Client::new(), seen: Arc::default() };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxied = format!("http://{}{}", listener.local_addr().unwrap(), endpoint.path().trim_end_matches('/'));
    let _server = support::serve::Server::http(
        "table-proxy",
        listener,
        Router::new().fallback(forward).with_state(proxy.clone()),
    );
    let prefix = format!("t{:016x}", rand::random::<u64>());
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint={proxied}",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    );
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let itsmc = rt.block_on(start_itsmc(
        &servicenow,
        None,
        &[("AzureWebJobsStorage", connection.as_str()), ("ITSMC_TABLE_PREFIX", prefix.as_str())],
    ));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prove(32, hostile_alert(), |alert| {
            rt.block_on(async {
                support::serve::lock(&proxy.seen).clear();
                check(lifecycle(&itsmc, &alert, "").await)?;
                // The outbox's scan (a `$filter` on the delivery state) as the timer runs it.
                itsmc.drain().await;
                let seen = support::serve::lock(&proxy.seen).clone();
                let addressed = check(check_table_requests(&seen, &alert.values()))?;
                prop_assert!(addressed > 0, "no entity was addressed: {:?}", seen);
                prop_assert!(seen.iter().any(|(_, _, q, _)| q.contains("filter")), "no query: {:?}", seen);
                Ok(())
            })
        });
    }));
    drop(itsmc);
    rt.block_on(async {
        if let Ok(store) = TableStore::from_connection_string(&connection, &prefix, reqwest::Client::new()) {
            let _ = store.drop_tables().await;
        }
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
