//! What itsmc sends to ServiceNow, as data: one function per operation builds a [`Request`]. The client
//! sends it; dry-run records it. Keeping the mapping here, apart from sending, is what lets dry-run show
//! the exact request.

use crate::itsm::truncate;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::alert::Severity;
use crate::config::Connection;
use crate::sync::{SyncKind, Window};
use crate::workitem::{Content, WorkItemType};

/// One HTTP request to the instance, relative to its base URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Request {
    fn get(path: String, query: Vec<(&'static str, String)>) -> Request {
        Request { method: "GET", path, query, body: None }
    }
}

/// Only what we read back, so ServiceNow does not serialize the whole record for every write.
const FIELDS: &str = "sys_id,number,state,active";

fn return_fields() -> (&'static str, String) {
    ("sysparm_fields", FIELDS.to_string())
}

/// The Table API table behind a work item type. Events go through Event Management instead.
pub fn table(kind: WorkItemType) -> &'static str {
    match kind {
        WorkItemType::Incident | WorkItemType::Event => "incident",
        WorkItemType::Alert => "em_alert",
    }
}

/// The field that carries the correlation key: incidents have `correlation_id`; alerts are keyed by
/// `message_key`, which Event Management also uses to fold events into one alert.
pub fn key_field(kind: WorkItemType) -> &'static str {
    match kind {
        WorkItemType::Alert | WorkItemType::Event => "message_key",
        WorkItemType::Incident => "correlation_id",
    }
}

/// Event Management severities: 1 Critical, 2 Major, 3 Minor, 4 Warning, 5 Info; 0 is Clear.
fn em_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Sev0 => "1",
        Severity::Sev1 => "2",
        Severity::Sev2 => "3",
        Severity::Sev3 => "4",
        Severity::Sev4 => "5",
    }
}

/// The newest record with this key. The key is hex we made, so it cannot change the query's meaning;
/// it is still checked, because an encoded query has no escaping at all.
pub fn find(kind: WorkItemType, key: &str) -> Option<Request> {
    if kind == WorkItemType::Event || key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Request::get(
        format!("/api/now/table/{}", table(kind)),
        vec![
            ("sysparm_query", format!("{}={key}^ORDERBYDESCsys_created_on", key_field(kind))),
            ("sysparm_fields", FIELDS.into()),
            ("sysparm_limit", "1".into()),
            ("sysparm_exclude_reference_link", "true".into()),
        ],
    ))
}

/// A page of `kind` records changed in `window`, oldest first, with display values (see `servicedesk`).
/// Refused (`None`) when the window holds anything but a date-time and a hex id: an encoded query has no
/// escaping.
pub fn changes(kind: SyncKind, window: &Window, limit: usize) -> Option<Request> {
    let is_time = |t: &str| t.len() == 19 && t.bytes().all(|b| b.is_ascii_digit() || b"-: ".contains(&b));
    let query = match window {
        Window::Since(updated) if is_time(updated) => {
            format!("sys_updated_on>={updated}^ORDERBYsys_updated_on^ORDERBYsys_id")
        }
        Window::After(updated) if is_time(updated) => {
            format!("sys_updated_on>{updated}^ORDERBYsys_updated_on^ORDERBYsys_id")
        }
        Window::Within { updated, after_id }
            if is_time(updated) && after_id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("sys_updated_on={updated}^sys_id>{after_id}^ORDERBYsys_id")
        }
        _ => return None,
    };
    Some(Request::get(
        format!("/api/now/table/{}", super::servicedesk::table(kind)),
        vec![
            ("sysparm_query", query),
            ("sysparm_fields", super::servicedesk::fields(kind).to_string()),
            ("sysparm_limit", limit.to_string()),
            ("sysparm_display_value", "all".into()),
            ("sysparm_exclude_reference_link", "true".into()),
            ("sysparm_no_count", "true".into()),
            ("sysparm_suppress_pagination_header", "true".into()),
        ],
    ))
}

/// The fields whose choices itsmc checks its settings against.
pub const CHOICE_FIELDS: [&str; 6] = ["urgency", "impact", "category", "subcategory", "contact_type", "close_code"];

/// The active English choices of `table`'s fields that itsmc sets.
pub fn choices(table: &str) -> Request {
    Request::get(
        "/api/now/table/sys_choice".into(),
        vec![
            (
                "sysparm_query",
                format!(
                    "name={table}^elementIN{}^inactive=false^language=en^ORDERBYelement^ORDERBYsequence",
                    CHOICE_FIELDS.join(",")
                ),
            ),
            ("sysparm_fields", "element,value,label".into()),
            ("sysparm_limit", "10000".into()),
            ("sysparm_exclude_reference_link", "true".into()),
        ],
    )
}

/// The active templates for `table`.
pub fn templates(table: &str) -> Request {
    Request::get(
        "/api/now/table/sys_template".into(),
        vec![
            ("sysparm_query", format!("table={table}^active=true^ORDERBYname")),
            ("sysparm_fields", "sys_id,name,template".into()),
            ("sysparm_limit", "1000".into()),
            ("sysparm_exclude_reference_link", "true".into()),
        ],
    )
}

pub fn status(item_kind: WorkItemType, sys_id: &str) -> Request {
    Request::get(
        format!("/api/now/table/{}/{sys_id}", table(item_kind)),
        vec![("sysparm_fields", FIELDS.into()), ("sysparm_exclude_reference_link", "true".into())],
    )
}

fn event(connection: &Connection, content: &Content, severity: &str, description: &str) -> Request {
    let mut record = Map::new();
    record.insert("source".into(), json!("Azure Monitor"));
    record.insert("event_class".into(), json!("itsmc"));
    record.insert("node".into(), json!(content.configuration_item));
    record.insert("severity".into(), json!(severity));
    record.insert("description".into(), json!(description));
    record.insert("message_key".into(), json!(content.correlation_key));
    record.insert("type".into(), json!(truncate(&content.title, connection.short_description_max)));
    for (name, value) in &content.fields {
        record.insert(name.clone(), json!(value));
    }
    Request {
        method: "POST",
        path: "/api/global/em/jsonv2".into(),
        query: Vec::new(),
        body: Some(json!({ "records": [record] })),
    }
}

/// Create the work item.
pub fn create(connection: &Connection, kind: WorkItemType, content: &Content) -> Request {
    if kind == WorkItemType::Event {
        return event(connection, content, em_severity(content.severity), &content.description);
    }
    let title = truncate(&content.title, connection.short_description_max);
    let mut body = Map::new();
    match kind {
        WorkItemType::Incident => {
            let ui = connection.severity.get(content.severity);
            body.insert("short_description".into(), json!(title));
            body.insert("description".into(), json!(content.description));
            body.insert("urgency".into(), json!(ui.urgency.to_string()));
            body.insert("impact".into(), json!(ui.impact.to_string()));
            body.insert("correlation_id".into(), json!(content.correlation_key));
            body.insert("correlation_display".into(), json!("itsmc"));
            if !content.configuration_item.is_empty() {
                // A name, not a sys_id: the Table API looks a reference up by its display value.
                body.insert("cmdb_ci".into(), json!(content.configuration_item));
            }
        }
        WorkItemType::Alert => {
            body.insert("message_key".into(), json!(content.correlation_key));
            body.insert("description".into(), json!(content.description));
            body.insert("severity".into(), json!(em_severity(content.severity)));
            body.insert("source".into(), json!("Azure Monitor"));
            body.insert("type".into(), json!(title));
            body.insert("node".into(), json!(content.configuration_item));
            body.insert("state".into(), json!("Open"));
        }
        WorkItemType::Event => unreachable!("handled above"),
    }
    for (name, value) in &content.fields {
        body.insert(name.clone(), json!(value));
    }
    Request {
        method: "POST",
        path: format!("/api/now/table/{}", table(kind)),
        query: vec![return_fields()],
        body: Some(Value::Object(body)),
    }
}

pub fn add_note(connection: &Connection, kind: WorkItemType, sys_id: &str, content: &Content, note: &str) -> Request {
    match kind {
        WorkItemType::Event => event(connection, content, em_severity(content.severity), note),
        _ => patch(kind, sys_id, json!({ "work_notes": note })),
    }
}

pub fn resolve(
    connection: &Connection,
    kind: WorkItemType,
    sys_id: &str,
    content: &Content,
    close_code: &str,
    close_notes: &str,
) -> Request {
    match kind {
        // Severity 0 is Clear: Event Management closes the alert this message key opened.
        WorkItemType::Event => event(connection, content, "0", close_notes),
        WorkItemType::Alert => patch(kind, sys_id, json!({ "state": "Closed", "work_notes": close_notes })),
        // 6 is Resolved; ServiceNow closes a resolved incident itself after its auto-close period.
        WorkItemType::Incident => {
            patch(kind, sys_id, json!({ "state": "6", "close_code": close_code, "close_notes": close_notes }))
        }
    }
}

pub fn reopen(connection: &Connection, kind: WorkItemType, sys_id: &str, content: &Content, note: &str) -> Request {
    match kind {
        WorkItemType::Event => event(connection, content, em_severity(content.severity), note),
        WorkItemType::Alert => patch(kind, sys_id, json!({ "state": "Reopen", "work_notes": note })),
        // 2 is In Progress: someone already owned it, so it goes back to them rather than to triage.
        WorkItemType::Incident => patch(kind, sys_id, json!({ "state": "2", "work_notes": note })),
    }
}

fn patch(kind: WorkItemType, sys_id: &str, body: Value) -> Request {
    Request {
        method: "PATCH",
        path: format!("/api/now/table/{}/{sys_id}", table(kind)),
        query: vec![return_fields()],
        body: Some(body),
    }
}

/// How many records one lookup of many keys reads. A key may have many work items (one per fire after a close),
/// so a full page can leave keys out; those are looked up alone ([`find`]).
pub const FIND_MANY_PAGE: usize = 1000;

/// The records with any of these keys, newest first, with the key field so that each answers its own. The keys
/// must all be hex, as for [`find`]; `None` when one is not (or for events, which have no records to find).
pub fn find_many(kind: WorkItemType, keys: &[&str]) -> Option<Request> {
    let hex = |key: &&str| !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit());
    if kind == WorkItemType::Event || keys.is_empty() || !keys.iter().all(hex) {
        return None;
    }
    let field = key_field(kind);
    Some(Request::get(
        format!("/api/now/table/{}", table(kind)),
        vec![
            ("sysparm_query", format!("{field}IN{}^ORDERBYDESCsys_created_on", keys.join(","))),
            ("sysparm_fields", format!("{FIELDS},{field}")),
            ("sysparm_limit", FIND_MANY_PAGE.to_string()),
            ("sysparm_exclude_reference_link", "true".into()),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_many_asks_for_every_key_at_once_and_refuses_anything_but_hex() {
        let request = find_many(WorkItemType::Incident, &["00ff", "abc1"]).expect("hex is accepted");
        assert_eq!(request.query[0].1, "correlation_idIN00ff,abc1^ORDERBYDESCsys_created_on");
        assert_eq!(request.query[1].1, "sys_id,number,state,active,correlation_id");
        assert!(find_many(WorkItemType::Incident, &["00ff", "x^NQactive=true"]).is_none());
        assert!(find_many(WorkItemType::Incident, &["00ff", ""]).is_none());
        assert!(find_many(WorkItemType::Alert, &["00ff"]).is_some_and(|r| r.query[0].1.starts_with("message_keyIN")));
    }

    #[test]
    fn find_refuses_anything_but_hex() {
        assert!(find(WorkItemType::Incident, "abc123").is_some());
        assert!(find(WorkItemType::Incident, "abc^NQactive=true").is_none());
        // An empty key would match every record without one.
        assert!(find(WorkItemType::Incident, "").is_none());
        let request = find(WorkItemType::Incident, "00ff").expect("hex is accepted");
        assert_eq!(request.query[0].1, "correlation_id=00ff^ORDERBYDESCsys_created_on");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("héllo wörld", 4), "héll");
        assert_eq!(truncate("short", 160), "short");
    }
}
