//! What itsmc sends to the Cherwell REST API, as data: the mapping of a work item's [`Content`] to Incident
//! fields (by name), and one function per API operation building a [`Request`] from business object and field
//! ids. The client sends them; the ids come from the connection's cached configuration ([`super::catalog`]).

use crate::itsm::truncate;
use serde::Serialize;
use serde_json::{Value, json};

use super::settings::CherwellSettings;
use crate::config::Connection;
use crate::workitem::Content;

/// One HTTP request, relative to the REST API's base (`https://host/CherwellAPI`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Request {
    fn get(path: String) -> Request {
        Request { method: "GET", path, query: Vec::new(), body: None }
    }
    fn post(path: &str, body: Value) -> Request {
        Request { method: "POST", path: path.to_string(), query: Vec::new(), body: Some(body) }
    }
}

/// Names in paths are checked where they are configured (letters, digits, `_`); ids come from CSM. Both are
/// still escaped, so that nothing can change a path's meaning.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A business object's summary (its id, state field and states, record id field; groups list their members).
pub fn summary(name: &str) -> Request {
    Request::get(format!("/api/V1/getbusinessobjectsummary/busobname/{}", segment(name)))
}

/// Every field of a business object, with its id: what a save names.
pub fn template(bus_ob_id: &str) -> Request {
    Request::post("/api/V1/getbusinessobjecttemplate", json!({ "busObId": bus_ob_id, "includeAll": true }))
}

/// A business object's schema with its relationships (the journal relationship's id).
pub fn schema(bus_ob_id: &str) -> Request {
    Request {
        query: vec![("includerelationships", "true".into())],
        ..Request::get(format!("/api/V1/getbusinessobjectschema/busobid/{}", segment(bus_ob_id)))
    }
}

/// One record by its record id.
pub fn read(bus_ob_id: &str, rec_id: &str) -> Request {
    Request::get(format!("/api/V1/getbusinessobject/busobid/{}/busobrecid/{}", segment(bus_ob_id), segment(rec_id)))
}

/// A field filter of an ad-hoc search: `eq`, `gt`, `lt`, `contains` or `startswith`. Filters on one field
/// are ORed by CSM, filters on different fields ANDed.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter<'a> {
    pub field_id: &'a str,
    pub operator: &'static str,
    pub value: String,
}

/// An ad-hoc search: the fields asked for, filters, sort keys (field id, ascending) and a page (1-based).
pub fn search(
    bus_ob_id: &str,
    fields: &[&str],
    filters: &[Filter<'_>],
    sorting: &[(&str, bool)],
    page_number: usize,
    page_size: usize,
) -> Request {
    let filters: Vec<Value> =
        filters.iter().map(|f| json!({ "fieldId": f.field_id, "operator": f.operator, "value": f.value })).collect();
    let sorting: Vec<Value> = sorting
        .iter()
        .map(|(field_id, ascending)| json!({ "fieldId": field_id, "sortDirection": if *ascending { 1 } else { 0 } }))
        .collect();
    Request::post(
        "/api/V1/getsearchresults",
        json!({
            "busObId": bus_ob_id,
            "fields": fields,
            "filters": filters,
            "sorting": sorting,
            "includeAllFields": false,
            "pageNumber": page_number,
            "pageSize": page_size,
        }),
    )
}

/// A field to save: its id and name, and the value as text (CSM takes every value as a string).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue {
    pub id: String,
    pub name: String,
    pub value: String,
}

fn field_list(fields: &[FieldValue]) -> Vec<Value> {
    fields.iter().map(|f| json!({ "dirty": true, "fieldId": f.id, "name": f.name, "value": f.value })).collect()
}

/// Create (`rec_id` `None`) or update a record.
pub fn save(bus_ob_id: &str, rec_id: Option<&str>, fields: &[FieldValue]) -> Request {
    let mut body = json!({ "busObId": bus_ob_id, "fields": field_list(fields), "persist": true });
    if let Some(rec_id) = rec_id {
        body["busObRecId"] = json!(rec_id);
    }
    Request::post("/api/V1/savebusinessobject", body)
}

/// Create a record related to a parent record through a relationship (a journal entry of an incident).
pub fn save_related(
    parent_bus_ob_id: &str,
    parent_rec_id: &str,
    relationship_id: &str,
    bus_ob_id: &str,
    fields: &[FieldValue],
) -> Request {
    Request::post(
        "/api/V1/saverelatedbusinessobject",
        json!({
            "parentBusObId": parent_bus_ob_id,
            "parentBusObRecId": parent_rec_id,
            "relationshipId": relationship_id,
            "busObId": bus_ob_id,
            "fields": field_list(fields),
            "persist": true,
        }),
    )
}

/// The Cherwell fields that ServiceNow-named connection defaults (`ITSMC_CALLER_ID` fills `caller_id`, ...)
/// stand for, each with the names CSM versions give it: the first the business object has is used.
pub const TRANSLATED: &[(&str, &[&str])] = &[
    ("caller_id", &["CustomerDisplayName"]),
    ("assignment_group", &["OwnedByTeam", "AssignedTeam"]),
    ("assigned_to", &["OwnedBy", "AssignedTo"]),
    ("category", &["Category"]),
    ("subcategory", &["Subcategory"]),
    ("contact_type", &["Source", "CallSource"]),
    ("short_description", &["ShortDescription"]),
    ("description", &["Description"]),
];

/// The fields of a new incident, by name (or, for a translated default, the candidate names), in order: the
/// alert's title, description, priority and correlation key, then the connection's fields, which override.
/// Priority follows the severity's urgency and impact as a priority matrix does: 1/1 is 1, 3/3 is 5.
pub fn create_fields(
    connection: &Connection,
    settings: &CherwellSettings,
    content: &Content,
) -> Vec<(Vec<String>, String)> {
    let ui = connection.severity.get(content.severity);
    let priority = (u16::from(ui.urgency) + u16::from(ui.impact)).saturating_sub(1).clamp(1, 5);
    let mut fields: Vec<(Vec<String>, String)> = vec![
        (vec!["ShortDescription".into()], truncate(&content.title, connection.short_description_max)),
        (vec!["Description".into()], content.description.clone()),
        (vec!["Priority".into()], priority.to_string()),
        (vec![settings.correlation_field.clone()], content.correlation_key.clone()),
    ];
    for (name, value) in &content.fields {
        let names = match TRANSLATED.iter().find(|(servicenow, _)| servicenow == name) {
            Some((_, cherwell)) => cherwell.iter().map(|n| n.to_string()).collect(),
            None => vec![name.clone()],
        };
        fields.retain(|(existing, _)| existing != &names);
        fields.push((names, value.clone()));
    }
    fields
}

/// The fields a resolve sets: the resolved status, the close notes and, where configured, the close code.
pub fn resolve_fields(settings: &CherwellSettings, close_code: &str, close_notes: &str) -> Vec<(String, String)> {
    let mut fields = vec![
        (settings.status_field.clone(), settings.resolved_status.clone()),
        (settings.close_description_field.clone(), close_notes.to_string()),
    ];
    if let Some(field) = &settings.close_code_field {
        fields.push((field.clone(), close_code.to_string()));
    }
    fields
}

/// The fields a reopen sets.
pub fn reopen_fields(settings: &CherwellSettings) -> Vec<(String, String)> {
    vec![(settings.status_field.clone(), settings.reopen_status.clone())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_and_saves_have_the_documented_shapes() {
        let filter = Filter { field_id: "f1", operator: "eq", value: "abc".into() };
        let request = search("bo", &["f1", "f2"], &[filter], &[("f3", true), ("f1", false)], 2, 50);
        let body = request.body.unwrap();
        assert_eq!(request.path, "/api/V1/getsearchresults");
        assert_eq!(body["filters"][0], json!({"fieldId": "f1", "operator": "eq", "value": "abc"}));
        assert_eq!(
            body["sorting"],
            json!([{"fieldId": "f3", "sortDirection": 1}, {"fieldId": "f1", "sortDirection": 0}])
        );
        assert_eq!((body["pageNumber"].as_u64(), body["pageSize"].as_u64()), (Some(2), Some(50)));
        let field = FieldValue { id: "f9".into(), name: "Status".into(), value: "Resolved".into() };
        let save = save("bo", Some("rec"), std::slice::from_ref(&field)).body.unwrap();
        assert_eq!(save["busObRecId"], "rec");
        assert_eq!(save["fields"][0], json!({"dirty": true, "fieldId": "f9", "name": "Status", "value": "Resolved"}));
        assert_eq!(read("bo", "a b/c").path, "/api/V1/getbusinessobject/busobid/bo/busobrecid/a%20b%2Fc");
        assert_eq!(summary("Journal").path, "/api/V1/getbusinessobjectsummary/busobname/Journal");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
    }
}
