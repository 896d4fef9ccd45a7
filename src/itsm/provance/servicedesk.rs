//! Dataverse records as `ServiceDesk_CL` rows: which columns the sync selects, and how each becomes ITSMC's
//! column. Choices, lookups and yes/no columns go as their formatted values (`Problem Solved`, `High`, the
//! owner's name: the `OData.Community.Display.V1.FormattedValue` annotation the sync asks for), dates as
//! their UTC values in ISO 8601 (the formatted ones are in the reader's locale), text as it is.
//!
//! Incidents (cases) map the incident table's own columns. Provance keeps change requests in a table of its
//! solution whose columns itsmc does not know ahead, so their rows take the columns every Dataverse table has
//! (the primary name, status reason, owner, creator, creation and modification times) and whatever
//! `ITSMC_PROVANCE_CHANGE_COLUMNS` adds.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::settings::ProvanceSettings;
use crate::itsm::ItsmError;
use crate::sync::schema;
use crate::sync::{Change, SyncKind};

const FORMATTED: &str = "@OData.Community.Display.V1.FormattedValue";

/// The incident's columns behind ITSMC's; `Computer` comes from `ITSMC_PROVANCE_CI_FIELD` when set.
const INCIDENT: &[(&str, &str)] = &[
    ("ServiceDeskId_s", "ticketnumber"),
    ("IncidentState_s", "statuscode"),
    ("Priority_s", "prioritycode"),
    // The incident reference describes severitycode as "the incident's impact on the customer's business".
    ("Impact_s", "severitycode"),
    ("Escalation_s", "isescalated"),
    ("CreatedBy_s", "_createdby_value"),
    ("Source_s", "caseorigincode"),
    ("AssignedTo_s", "_ownerid_value"),
    ("Category_s", "casetypecode"),
    ("Title_s", "title"),
    ("Description_s", "description"),
    ("CreatedDate_t", "createdon"),
    ("LastModifiedDate_t", "modifiedon"),
];

/// A change request table's columns that every Dataverse table has; `{name}` is its primary name column.
const CHANGE_REQUEST: &[(&str, &str)] = &[
    ("ServiceDeskId_s", "{name}"),
    ("Title_s", "{name}"),
    ("CRState_s", "statuscode"),
    ("CreatedBy_s", "_createdby_value"),
    ("AssignedTo_s", "_ownerid_value"),
    ("CreatedDate_t", "createdon"),
    ("LastModifiedDate_t", "modifiedon"),
];

/// How one kind's records become rows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: SyncKind,
    pub entity_set: String,
    /// The primary id column, which orders the records of one second.
    pub id_field: String,
    /// `$select`: every mapped column, the id and `modifiedon`.
    pub select: String,
    /// Column index, source column, whether a date.
    columns: Vec<(usize, String, bool)>,
}

impl Plan {
    fn new(kind: SyncKind, entity_set: &str, id_field: &str, pairs: Vec<(String, String)>) -> Plan {
        let schema = schema::service_desk();
        let columns: Vec<(usize, String, bool)> =
            pairs.into_iter().map(|(column, field)| (schema.index(&column), field, column.ends_with("_t"))).collect();
        let mut fields: Vec<&str> =
            columns.iter().map(|(_, field, _)| field.as_str()).chain([id_field, "modifiedon"]).collect();
        fields.sort_unstable();
        fields.dedup();
        Plan { kind, entity_set: entity_set.into(), id_field: id_field.into(), select: fields.join(","), columns }
    }

    pub fn incidents(settings: &ProvanceSettings) -> Plan {
        let mut pairs: Vec<(String, String)> = INCIDENT.iter().map(|(c, f)| (c.to_string(), f.to_string())).collect();
        if let Some(field) = &settings.ci_field {
            pairs.push(("Computer".into(), field.clone()));
        }
        Plan::new(SyncKind::Incident, "incidents", "incidentid", pairs)
    }

    /// Change requests of `entity_set`, whose table has these primary id and name columns.
    pub fn change_requests(settings: &ProvanceSettings, entity_set: &str, id_field: &str, name_field: &str) -> Plan {
        let mut pairs: Vec<(String, String)> =
            CHANGE_REQUEST.iter().map(|(c, f)| (c.to_string(), f.replace("{name}", name_field))).collect();
        for (column, field) in &settings.change_columns {
            pairs.retain(|(c, _)| c != column);
            pairs.push((column.clone(), field.clone()));
        }
        Plan::new(SyncKind::ChangeRequest, entity_set, id_field, pairs)
    }

    /// A record as a change: its position (modification second, id) and its row. `None`, with a warning, for a
    /// record without an id or a readable `modifiedon`: it has no place in the sync's order, and failing the
    /// page for it would hold the sync at it for good.
    pub fn change(&self, record: &Map<String, Value>, connection: &str) -> Option<Change> {
        let id = record.get(&self.id_field).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let modified = record.get("modifiedon").and_then(Value::as_str).and_then(parse_time);
        let (Some(modified), false) = (modified, id.is_empty()) else {
            let number_column = schema::service_desk().index("ServiceDeskId_s");
            let number = self
                .columns
                .iter()
                .find(|(column, _, _)| *column == number_column)
                .and_then(|(_, field, _)| record.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let modifiedon = record.get("modifiedon").map(Value::to_string).unwrap_or_default();
            tracing::warn!(
                entity_set = self.entity_set.as_str(),
                number,
                id = id.as_str(),
                modifiedon = modifiedon.as_str(),
                "Dataverse sent a record without {} or a readable modifiedon; the sync skips it",
                self.id_field
            );
            return None;
        };
        let schema = schema::service_desk();
        let mut row = schema.row();
        row.set(schema.index("ServiceDeskConnectionName_s"), connection);
        row.set(schema.index("ServiceDeskWorkItemType_s"), self.kind.name());
        for (column, field, time) in &self.columns {
            if *time {
                let value = record.get(field).and_then(Value::as_str).and_then(parse_time);
                row.set(*column, &value.map(crate::sync::kinds::format_iso).unwrap_or_default());
                continue;
            }
            let formatted = record.get(&format!("{field}{FORMATTED}")).and_then(Value::as_str);
            let value = match (formatted, record.get(field)) {
                (Some(text), _) => text.to_string(),
                (None, Some(Value::String(text))) => text.clone(),
                (None, Some(Value::Null) | None) => String::new(),
                (None, Some(other)) => other.to_string(),
            };
            row.set(*column, &value);
        }
        Some(Change { updated: crate::sync::kinds::format_time(modified), id, row })
    }
}

/// A Dataverse date-time (`2026-11-25T12:00:00Z`, fractions or an offset allowed) in UTC, to the second.
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&chrono::Utc);
    chrono::DateTime::from_timestamp(time.timestamp(), 0)
}

/// The value and continuation of a list.
#[derive(Deserialize)]
pub struct Page {
    pub value: Vec<Map<String, Value>>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

pub fn page(body: &[u8], entity_set: &str) -> Result<Page, ItsmError> {
    serde_json::from_slice(body).map_err(|e| ItsmError::Transient {
        message: format!("Dataverse's page of {entity_set} could not be read: {e}"),
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::itsm::provance::settings::{Customer, ProvanceAuth};

    fn settings() -> ProvanceSettings {
        ProvanceSettings {
            url: "https://contoso.crm.dynamics.com".into(),
            auth: ProvanceAuth::ManagedIdentity { client_id: None },
            customer: Customer { entity_set: "accounts".into(), id: "a".into() },
            correlation_field: "new_key".into(),
            ci_field: Some("new_ci".into()),
            change_entity_set: Some("prov_changes".into()),
            change_columns: vec![("Risk_s".into(), "prov_risk".into()), ("Title_s".into(), "prov_summary".into())],
            resolved_status: 5,
        }
    }

    #[test]
    fn a_case_becomes_a_row_with_formatted_values_and_iso_times() {
        let plan = Plan::incidents(&settings());
        assert!(plan.select.split(',').any(|f| f == "new_ci") && plan.select.contains("incidentid"));
        let record: Value = serde_json::json!({
            "@odata.etag": "W/\"1\"",
            "incidentid": "49B0BE2E-D01C-ED11-B83E-000D3A572421",
            "ticketnumber": "CAS-01001-Z3X5B8",
            "statuscode": 5,
            "statuscode@OData.Community.Display.V1.FormattedValue": "Problem Solved",
            "prioritycode": 1,
            "prioritycode@OData.Community.Display.V1.FormattedValue": "High",
            "_ownerid_value": "70bf4d48-34cb-ed11-b596-0022481d68cd",
            "_ownerid_value@OData.Community.Display.V1.FormattedValue": "Beth Anglin",
            "title": "Disk \"C:\" full",
            "description": null,
            "createdon": "2026-11-25T12:00:00Z",
            "createdon@OData.Community.Display.V1.FormattedValue": "11/25/2026 12:00 PM",
            "modifiedon": "2026-11-25T12:05:07.250+00:00",
            "new_ci": "web01",
        });
        let change = plan.change(record.as_object().unwrap(), "prod").unwrap();
        assert_eq!(change.id, "49b0be2e-d01c-ed11-b83e-000d3a572421");
        assert_eq!(change.updated, "2026-11-25 12:05:07");
        let schema = schema::service_desk();
        let get = |name: &str| change.row.get(schema.index(name)).map(str::to_string);
        assert_eq!(get("ServiceDeskId_s").as_deref(), Some("CAS-01001-Z3X5B8"));
        assert_eq!(get("IncidentState_s").as_deref(), Some("Problem Solved"));
        assert_eq!(get("Priority_s").as_deref(), Some("High"));
        assert_eq!(get("AssignedTo_s").as_deref(), Some("Beth Anglin"));
        assert_eq!(get("CreatedDate_t").as_deref(), Some("2026-11-25T12:00:00Z"));
        assert_eq!(get("LastModifiedDate_t").as_deref(), Some("2026-11-25T12:05:07Z"));
        assert_eq!(get("Computer").as_deref(), Some("web01"));
        assert_eq!(get("Description_s"), None);
        assert_eq!(get("ServiceDeskWorkItemType_s").as_deref(), Some("Incident"));
    }

    #[test]
    fn a_record_without_id_or_modifiedon_has_no_change() {
        let plan = Plan::incidents(&settings());
        let record = |value: Value| value.as_object().cloned().unwrap();
        let no_time =
            record(serde_json::json!({ "incidentid": "49b0be2e", "ticketnumber": "CAS-1", "modifiedon": null }));
        let no_id = record(serde_json::json!({ "ticketnumber": "CAS-2", "modifiedon": "2026-11-25T12:00:00Z" }));
        let bad_time = record(serde_json::json!({ "incidentid": "49b0be2e", "modifiedon": "yesterday" }));
        assert!(plan.change(&no_time, "prod").is_none());
        assert!(plan.change(&no_id, "prod").is_none());
        assert!(plan.change(&bad_time, "prod").is_none());
    }

    #[test]
    fn change_columns_replace_the_defaults() {
        let plan = Plan::change_requests(&settings(), "prov_changes", "prov_changeid", "prov_name");
        let fields: Vec<&str> = plan.select.split(',').collect();
        for field in ["prov_changeid", "prov_name", "prov_risk", "prov_summary", "statuscode", "modifiedon"] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        let title = schema::service_desk().index("Title_s");
        assert_eq!(plan.columns.iter().filter(|(c, _, _)| *c == title).count(), 1);
    }
}
