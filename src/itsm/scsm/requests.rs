//! What itsmc sends to the Cireson portal, as data: the requests ([`Request`]) and the edits it makes to a type
//! projection before committing it. The client sends them; the connector (`mod.rs`) strings them together.
//!
//! The portal's API works on *type projections*: a work item with its relationships, as JSON. Reading is
//! `POST /api/V3/Projection/GetProjectionByCriteria` with an SCSM criteria (in the JSON form the portal takes:
//! `{"Id": <projection id>, "Criteria": {"Base": {"Expression": ...}}}`); writing is `POST /api/V3/Projection/Commit`
//! with `{"formJson": {"original": <as read>, "current": <as wanted>}}`, which the portal turns into the changes
//! between the two. A new incident starts as `GET /api/V3/Projection/CreateProjectionByTemplate?id=<template>&
//! createdById=<user>`, a projection of the template that is saved only by its commit.

use crate::itsm::truncate;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::settings::ScsmSettings;
use crate::config::Connection;
use crate::sync::SyncKind;
use crate::workitem::Content;

/// `IncidentStatusEnum` values.
pub const INCIDENT_ACTIVE: &str = "5e2d3932-ca6d-1515-7310-6f58584df73e";
pub const INCIDENT_RESOLVED: &str = "2b8830b6-59f0-f574-9c2a-f4b4682f1681";
pub const INCIDENT_CLOSED: &str = "bd0ae7c4-3315-2eb3-7933-82dfc482dbaf";

/// `System.WorkItem.TroubleTicket.UrgencyEnum` and `.ImpactEnum` values, High, Medium, Low (ITSMC's 1, 2, 3).
const URGENCY: [&str; 3] = [
    "2f8f0747-b6cb-7996-fd4a-84d09743f218",
    "02625c30-08c6-4181-b2ed-222fa473280e",
    "725a4cad-088c-4f55-a845-000db8872e01",
];
const IMPACT: [&str; 3] = [
    "d2b5e816-2d24-8e7d-a61f-2cceaeac2664",
    "80cc222b-2653-2f68-8cee-3a7dd3b723c1",
    "8f1a713e-53aa-9d8a-31b9-a9540074f305",
];

/// SCSM's limit for `Description`, `ResolutionDescription` and action log comments.
pub const TEXT_MAX: usize = 4000;

/// A GUID that names nothing: a criteria on it reads a projection without answering any work item.
pub const NOTHING: &str = "00000000-0000-0000-0000-000000000000";

/// One HTTP request to the portal, relative to its base URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub method: &'static str,
    pub path: &'static str,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Request {
    fn post(path: &'static str, query: Vec<(&'static str, String)>, body: Value) -> Request {
        Request { method: "POST", path, query, body: Some(body) }
    }
}

/// The property names an action log goes under: incidents (trouble tickets) and other work items differ.
pub fn action_log(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Incident => "AppliesToTroubleTicket",
        SyncKind::ChangeRequest => "AppliesToWorkItem",
    }
}

/// The projection a kind is read through.
pub fn projection(settings: &ScsmSettings, kind: SyncKind) -> &str {
    match kind {
        SyncKind::Incident => &settings.incident_projection_id,
        SyncKind::ChangeRequest => &settings.change_projection_id,
    }
}

/// The left side of a comparison: a property of a class, or a generic property every object has (`Id` is the
/// object's BaseId there, `LastModified` its last change).
#[derive(Debug, Clone, Copy)]
pub enum Left<'a> {
    Property { class_id: &'a str, name: &'a str },
    Generic(&'static str),
}

/// SCSM's comparison operators, as the criteria names them.
#[derive(Debug, Clone, Copy)]
pub enum Operator {
    Equal,
    GreaterEqual,
    Less,
}

impl Operator {
    fn name(self) -> &'static str {
        match self {
            Operator::Equal => "Equal",
            Operator::GreaterEqual => "GreaterEqual",
            Operator::Less => "Less",
        }
    }
}

/// One `SimpleExpression`.
pub fn compare(left: Left, operator: Operator, value: &str) -> Value {
    let left = match left {
        Left::Property { class_id, name } => {
            json!({ "Property": format!("$Context/Property[Type='{class_id}']/{name}$") })
        }
        Left::Generic(name) => json!({ "GenericProperty": name }),
    };
    json!({ "SimpleExpression": {
        "ValueExpressionLeft": left,
        "Operator": operator.name(),
        "ValueExpressionRight": { "Value": value },
    }})
}

/// Every expression must hold (one alone is itself).
pub fn all(mut expressions: Vec<Value>) -> Value {
    if expressions.len() == 1 {
        return expressions.remove(0);
    }
    json!({ "And": { "Expression": expressions } })
}

/// `GetProjectionByCriteria` on `projection_id`.
pub fn by_criteria(projection_id: &str, expression: Value) -> Request {
    Request::post(
        "/api/V3/Projection/GetProjectionByCriteria",
        Vec::new(),
        json!({ "Id": projection_id, "Criteria": { "Base": { "Expression": expression } } }),
    )
}

/// The incidents that carry this correlation key. The key is hex itsmc made; anything else is refused, since
/// an empty key would match every incident without one.
pub fn find(settings: &ScsmSettings, key: &str) -> Option<Request> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let left = Left::Property { class_id: &settings.correlation_class_id, name: &settings.correlation_property };
    Some(by_criteria(&settings.incident_projection_id, compare(left, Operator::Equal, key)))
}

/// One work item by its BaseId.
pub fn by_base_id(projection_id: &str, base_id: &str) -> Request {
    by_criteria(projection_id, compare(Left::Generic("Id"), Operator::Equal, base_id))
}

/// The work items of `kind` last modified in `[from, to)` (`to` open when `None`).
pub fn modified(settings: &ScsmSettings, kind: SyncKind, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Request {
    let mut expressions =
        vec![compare(Left::Generic("LastModified"), Operator::GreaterEqual, &crate::sync::kinds::format_iso(from))];
    if let Some(to) = to {
        expressions.push(compare(Left::Generic("LastModified"), Operator::Less, &crate::sync::kinds::format_iso(to)));
    }
    by_criteria(projection(settings, kind), all(expressions))
}

/// The signed-in user's id, name and rights (`userName` and `domain` as the sign-in had them).
pub fn user_rights(settings: &ScsmSettings) -> Request {
    let (user, domain) = settings.user_and_domain();
    Request::post(
        "/api/V3/User/IsUserAuthorized",
        vec![("userName", user.to_string()), ("domain", domain.to_string())],
        Value::String(String::new()),
    )
}

/// A new, unsaved incident projection from the connection's template.
pub fn from_template(settings: &ScsmSettings, user_id: &str) -> Request {
    Request {
        method: "GET",
        path: "/api/V3/Projection/CreateProjectionByTemplate",
        query: vec![("id", settings.template_id.clone()), ("createdById", user_id.to_string())],
        body: None,
    }
}

/// Save `current`, which was `original` when read (or as the template made it).
pub fn commit(original: &Value, current: &Value) -> Request {
    Request::post(
        "/api/V3/Projection/Commit",
        Vec::new(),
        json!({ "formJson": { "original": original, "current": current } }),
    )
}

fn enumeration(id: &str) -> Value {
    json!({ "Id": id })
}

fn level(values: &[&'static str; 3], level: u8) -> &'static str {
    values[usize::from(level.clamp(1, 3)) - 1]
}

fn set(projection: &mut Value, name: &str, value: Value) {
    if let Value::Object(fields) = projection {
        fields.insert(name.to_string(), value);
    }
}

/// The template's projection with what the alert says: title, description, urgency and impact from the
/// severity, the correlation key, the classification and support group the settings name, and the connection's
/// fields (string properties by name).
pub fn new_incident(template: &Value, connection: &Connection, settings: &ScsmSettings, content: &Content) -> Value {
    let mut current = template.clone();
    let ui = connection.severity.get(content.severity);
    set(&mut current, "Title", json!(truncate(&content.title, connection.short_description_max)));
    set(&mut current, "Description", json!(truncate(&content.description, TEXT_MAX)));
    set(&mut current, "Urgency", enumeration(level(&URGENCY, ui.urgency)));
    set(&mut current, "Impact", enumeration(level(&IMPACT, ui.impact)));
    set(&mut current, &settings.correlation_property, json!(content.correlation_key));
    if let Some(id) = &settings.classification_id {
        set(&mut current, "Classification", enumeration(id));
    }
    if let Some(id) = &settings.support_group_id {
        set(&mut current, "TierQueue", enumeration(id));
    }
    for (name, value) in &content.fields {
        set(&mut current, name, json!(value));
    }
    current
}

/// An analyst comment in the action log, as the portal's own forms add one.
pub fn add_comment(projection: &mut Value, kind: SyncKind, text: &str, by: &str, now: DateTime<Utc>) {
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let entry = json!({
        "ActionType": "AnalystComment",
        "Title": "Analyst Comment",
        "Description": truncate(text, TEXT_MAX),
        "EnteredBy": by,
        "EnteredDate": at,
        "LastModified": at,
        "IsPrivate": false,
    });
    let Value::Object(fields) = projection else { return };
    match fields.get_mut(action_log(kind)) {
        Some(Value::Array(log)) => log.insert(0, entry),
        _ => {
            fields.insert(action_log(kind).to_string(), Value::Array(vec![entry]));
        }
    }
}

/// Resolved, with the resolution category and notes, as the portal's Resolve task does.
pub fn resolve(projection: &mut Value, settings: &ScsmSettings, notes: &str, now: DateTime<Utc>) {
    set(projection, "Status", json!({ "Id": INCIDENT_RESOLVED, "Name": "Resolved" }));
    set(projection, "ResolutionCategory", enumeration(&settings.resolution_category_id));
    set(projection, "ResolutionDescription", json!(truncate(notes, TEXT_MAX)));
    set(projection, "ResolvedDate", json!(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
}

/// Active again, the resolution cleared (as the portal does when an analyst re-activates one), with a comment.
pub fn reopen(projection: &mut Value, note: &str, by: &str, now: DateTime<Utc>) {
    set(projection, "Status", json!({ "Id": INCIDENT_ACTIVE, "Name": "Active" }));
    set(projection, "ResolutionCategory", json!({ "Id": null, "Name": null }));
    set(projection, "ResolutionDescription", Value::Null);
    set(projection, "ResolvedDate", Value::Null);
    add_comment(projection, SyncKind::Incident, note, by, now);
}

/// A projection's enumeration (`{"Id", "Name"}`) id, lowercased.
pub fn enum_id(projection: &Value, name: &str) -> String {
    projection.get(name).and_then(|e| e.get("Id")).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase()
}

/// A projection's string property.
pub fn text<'a>(projection: &'a Value, name: &str) -> &'a str {
    projection.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The work items of an answer (a JSON list of projections).
pub fn objects(answer: &Value) -> impl Iterator<Item = &Map<String, Value>> {
    answer.as_array().into_iter().flatten().filter_map(Value::as_object)
}

/// [`objects`], taken out of an answer the caller owns (no copies).
pub fn into_objects(answer: Value) -> impl Iterator<Item = Value> {
    let items = match answer {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    items.into_iter().filter(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScsmSettings {
        let lookup = |name: &str| match name {
            "ITSMC_URL" => Some("https://portal.contoso.com".to_string()),
            "ITSMC_USERNAME" => Some("CONTOSO\\svc".to_string()),
            "ITSMC_PASSWORD" => Some("p".to_string()),
            _ => None,
        };
        super::super::settings::settings_from_lookup(&lookup, "prod", false).unwrap()
    }

    #[test]
    fn find_refuses_anything_but_hex_and_names_the_property_by_class() {
        let settings = settings();
        assert!(find(&settings, "").is_none());
        assert!(find(&settings, "ab'$").is_none());
        let request = find(&settings, "00ff").unwrap();
        let body = request.body.unwrap();
        assert_eq!(body["Id"], settings.incident_projection_id.as_str());
        let simple = &body["Criteria"]["Base"]["Expression"]["SimpleExpression"];
        assert_eq!(
            simple["ValueExpressionLeft"]["Property"],
            "$Context/Property[Type='a604b942-4c7b-2fb2-28dc-61dc6f465c68']/ItsmcCorrelationKey$"
        );
        assert_eq!(
            (simple["Operator"].as_str(), simple["ValueExpressionRight"]["Value"].as_str()),
            (Some("Equal"), Some("00ff"))
        );
    }

    #[test]
    fn a_bounded_window_is_an_and_of_two_comparisons() {
        let from = "2026-11-25T12:00:00Z".parse().unwrap();
        let to = "2026-11-25T13:00:00Z".parse().unwrap();
        let body = modified(&settings(), SyncKind::ChangeRequest, from, Some(to)).body.unwrap();
        let both = body["Criteria"]["Base"]["Expression"]["And"]["Expression"].as_array().unwrap();
        assert_eq!(both[0]["SimpleExpression"]["Operator"], "GreaterEqual");
        assert_eq!(both[1]["SimpleExpression"]["ValueExpressionRight"]["Value"], "2026-11-25T13:00:00Z");
        let open = modified(&settings(), SyncKind::Incident, from, None).body.unwrap();
        assert_eq!(
            open["Criteria"]["Base"]["Expression"]["SimpleExpression"]["ValueExpressionLeft"]["GenericProperty"],
            "LastModified"
        );
    }

    #[test]
    fn comments_go_first_in_the_log_and_texts_are_cut_to_scsms_limit() {
        let mut projection = json!({ "AppliesToTroubleTicket": [{ "Description": "older" }] });
        add_comment(&mut projection, SyncKind::Incident, &"x".repeat(5000), "svc", Utc::now());
        let log = projection["AppliesToTroubleTicket"].as_array().unwrap();
        assert_eq!((log.len(), log[0]["ActionType"].as_str()), (2, Some("AnalystComment")));
        assert_eq!(log[0]["Description"].as_str().unwrap().chars().count(), TEXT_MAX);
    }
}
