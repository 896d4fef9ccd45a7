//! What itsmc sends to Dataverse's Web API (v9.2), as data: one function per operation builds a [`Request`];
//! the client sends it. Paths are relative to the Web API root, `{environment URL}/api/data/v9.2/`.
//!
//! The shapes follow Microsoft's Dataverse Web API documentation: `POST incidents` with
//! `Prefer: return=representation` answers 201 and the record; `PATCH incidents(id)` with `If-Match` answers 204
//! (412 when the version moved on); the unbound `CloseIncident` action takes an `incidentresolution` and a
//! `Status`; a note is an `annotation` bound to the case through `objectid_incident@odata.bind`; lists page with
//! `Prefer: odata.maxpagesize` and `@odata.nextLink`.

use crate::itsm::truncate;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::settings::ProvanceSettings;
use crate::config::Connection;
use crate::workitem::Content;

/// The Web API root under the environment URL.
pub const API: &str = "/api/data/v9.2";
/// Formatted values (choice labels, lookup names) beside the raw ones, for the sync.
pub const FORMATTED_VALUES: &str = "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue\"";
/// What itsmc reads back of a case.
const FIELDS: &str = "incidentid,ticketnumber,statecode,statuscode";
/// Dataverse's limits on the columns itsmc writes (the incident reference: `title` 200, `description` 2,000;
/// an `incidentresolution`'s `subject` 200; an annotation's `subject` 500).
const TITLE_MAX: usize = 200;
const DESCRIPTION_MAX: usize = 2000;
const RESOLUTION_SUBJECT_MAX: usize = 200;
const NOTE_MAX: usize = 100_000;
/// The subject of itsmc's notes, so a person can tell them from their own.
pub const NOTE_SUBJECT: &str = "Azure Monitor (itsmc)";

/// One Web API request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub method: &'static str,
    /// Relative to the Web API root (`incidents(…)`), or a whole `@odata.nextLink`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    /// `Prefer` preferences, sent as one header.
    pub prefer: Vec<String>,
    pub if_match: Option<String>,
    pub body: Option<Value>,
}

impl Request {
    fn get(path: String, query: Vec<(&'static str, String)>) -> Request {
        Request { method: "GET", path, query, prefer: Vec::new(), if_match: None, body: None }
    }

    fn post(path: &str, body: Value) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            query: Vec::new(),
            prefer: Vec::new(),
            if_match: None,
            body: Some(body),
        }
    }
}

/// An OData string literal: quoted, a quote doubled.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The newest case carrying this correlation key, open or not. `None` for an empty key, which would match every
/// case without one.
pub fn find(settings: &ProvanceSettings, key: &str) -> Option<Request> {
    if key.is_empty() {
        return None;
    }
    Some(Request::get(
        "incidents".into(),
        vec![
            ("$select", FIELDS.into()),
            ("$filter", format!("{} eq {}", settings.correlation_field, literal(key))),
            ("$orderby", "createdon desc".into()),
            ("$top", "1".into()),
        ],
    ))
}

/// A field value from the connection's templates as Dataverse's JSON wants it: whole numbers (choices,
/// integers) as numbers, `true`/`false` as booleans, the rest (and every `@odata.bind` reference) as text.
fn typed(name: &str, value: &str) -> Value {
    if name.ends_with("@odata.bind") {
        return json!(value);
    }
    match value {
        "true" => json!(true),
        "false" => json!(false),
        _ => match value.parse::<i64>() {
            // Only the number's own spelling: `007` and `+1` stay text.
            Ok(number) if number.to_string() == value => json!(number),
            _ => json!(value),
        },
    }
}

/// The case for `content`: title, description, priority from the severity, the customer, the correlation key
/// (and the configuration item, where the organization has a column for it), then the connection's fields.
pub fn create(connection: &Connection, settings: &ProvanceSettings, content: &Content) -> Request {
    let mut body = Map::new();
    body.insert("title".into(), json!(truncate(&content.title, connection.short_description_max.min(TITLE_MAX))));
    body.insert("description".into(), json!(truncate(&content.description, DESCRIPTION_MAX)));
    // prioritycode is 1 High, 2 Normal, 3 Low: the urgency itsmc derives from the severity, on the same scale.
    let urgency = connection.severity.get(content.severity).urgency.clamp(1, 3);
    body.insert("prioritycode".into(), json!(urgency));
    let (binding, reference) = settings.customer.binding();
    body.insert(binding, json!(reference));
    body.insert(settings.correlation_field.clone(), json!(content.correlation_key));
    if let Some(field) = &settings.ci_field
        && !content.configuration_item.is_empty()
    {
        body.insert(field.clone(), json!(truncate(&content.configuration_item, 100)));
    }
    for (name, value) in &content.fields {
        body.insert(name.clone(), typed(name, value));
    }
    Request {
        method: "POST",
        path: "incidents".into(),
        query: vec![("$select", FIELDS.into())],
        prefer: vec!["return=representation".into()],
        if_match: None,
        body: Some(Value::Object(body)),
    }
}

/// A case's state, with its `@odata.etag` for a later `If-Match`.
pub fn status(id: &str) -> Request {
    Request::get(format!("incidents({id})"), vec![("$select", FIELDS.into())])
}

/// A note on the case: an annotation bound to it.
pub fn note(id: &str, text: &str) -> Request {
    Request::post(
        "annotations",
        json!({
            "subject": NOTE_SUBJECT,
            "notetext": truncate(text, NOTE_MAX),
            "objectid_incident@odata.bind": format!("/incidents({id})"),
        }),
    )
}

/// Resolve the case: `CloseIncident` with an incidentresolution (the close code as its subject, the close
/// notes as its description) and the resolved status reason.
pub fn close(settings: &ProvanceSettings, id: &str, close_code: &str, close_notes: &str) -> Request {
    let subject = if close_code.trim().is_empty() { "Resolved by Azure Monitor" } else { close_code };
    Request::post(
        "CloseIncident",
        json!({
            "IncidentResolution": {
                "@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
                "subject": truncate(subject, RESOLUTION_SUBJECT_MAX),
                "description": truncate(close_notes, DESCRIPTION_MAX),
                "incidentid@odata.bind": format!("/incidents({id})"),
            },
            "Status": settings.resolved_status,
        }),
    )
}

/// Reactivate the case (Active, In Progress), only if it is still the version read (`etag`); `If-Match` also
/// keeps a PATCH from creating a case that was deleted meanwhile (a PATCH is an upsert).
pub fn reopen(id: &str, etag: &str) -> Request {
    Request {
        method: "PATCH",
        path: format!("incidents({id})"),
        query: Vec::new(),
        prefer: Vec::new(),
        if_match: Some(etag.to_string()),
        body: Some(json!({ "statecode": 0, "statuscode": 1 })),
    }
}

/// Records of `entity_set` modified in `[from, until)` (ISO 8601 UTC; `until` open when `None`), oldest first,
/// `page` a page, with formatted values.
pub fn changes(
    entity_set: &str,
    select: &str,
    id_field: &str,
    from: &str,
    until: Option<&str>,
    page: usize,
) -> Request {
    let filter = match until {
        Some(until) => format!("modifiedon ge {from} and modifiedon lt {until}"),
        None => format!("modifiedon ge {from}"),
    };
    Request {
        method: "GET",
        path: entity_set.into(),
        query: vec![
            ("$select", select.into()),
            ("$filter", filter),
            ("$orderby", format!("modifiedon asc,{id_field} asc")),
        ],
        prefer: vec![format!("odata.maxpagesize={}", page.clamp(1, 5000)), FORMATTED_VALUES.into()],
        if_match: None,
        body: None,
    }
}

/// The next page of a list: the `@odata.nextLink` as given, with the first request's preferences.
pub fn next(link: &str, prefer: &[String]) -> Request {
    Request { method: "GET", path: link.into(), query: Vec::new(), prefer: prefer.to_vec(), if_match: None, body: None }
}

/// The table behind an entity set: its logical name, primary id and primary name columns.
pub fn entity_definition(entity_set: &str) -> Request {
    Request::get(
        "EntityDefinitions".into(),
        vec![
            ("$select", "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute".into()),
            ("$filter", format!("EntitySetName eq {}", literal(entity_set))),
        ],
    )
}

/// The choices itsmc's configuration check reads.
pub const CHOICE_FIELDS: [&str; 4] = ["prioritycode", "severitycode", "caseorigincode", "casetypecode"];

/// A choice column's options, from the incident's metadata.
pub fn options(field: &str) -> Request {
    Request::get(
        format!(
            "EntityDefinitions(LogicalName='incident')/Attributes(LogicalName='{field}')/\
             Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
        ),
        vec![("$select", "LogicalName".into()), ("$expand", "OptionSet($select=Options)".into())],
    )
}

/// Who the token is, for the connection test.
pub fn who_am_i() -> Request {
    Request::get("WhoAmI".into(), Vec::new())
}

/// One record of `entity_set`, for the connection test.
pub fn probe(entity_set: &str, id_field: Option<&str>) -> Request {
    let mut query = vec![("$top", "1".to_string())];
    if let Some(id) = id_field {
        query.push(("$select", id.to_string()));
    }
    Request::get(entity_set.into(), query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("O'Bryan"), "'O''Bryan'");
    }

    #[test]
    fn template_values_get_the_json_type_dataverse_wants() {
        assert_eq!(typed("caseorigincode", "1"), json!(1));
        assert_eq!(typed("isescalated", "true"), json!(true));
        assert_eq!(typed("productserialnumber", "007"), json!("007"));
        assert_eq!(typed("title", "+1"), json!("+1"));
        assert_eq!(typed("subjectid@odata.bind", "/subjects(1)"), json!("/subjects(1)"));
    }
}
