//! SCSM work items (type projections as the Cireson portal answers them) as `ServiceDesk_CL` rows: which
//! property fills which of ITSMC's columns. Enumerations (`{"Id", "Name"}`) give their display name, related
//! users and configuration items (`{"DisplayName", ...}`) theirs, dates their UTC value in ISO 8601.
//!
//! The property names are SCSM's (`System.WorkItem.Incident`, `System.WorkItem.ChangeRequest`) and the portal's
//! relationship aliases (`AssignedWorkItem` the assigned user, `CreatedWorkItem` the creator, `RelatesToTroubleTicket`
//! who resolved an incident, `AboutConfigItem` the affected configuration items). A column whose property a
//! projection does not carry stays empty.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use crate::sync::schema;
use crate::sync::{Change, SyncKind};

/// How a property becomes a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// A string, number or boolean as it is.
    Value,
    /// An enumeration's display name.
    Name,
    /// A related object's display name (the first, for a list).
    Display,
    /// A date-time, as ISO 8601 in UTC.
    Time,
}

use Take::{Display, Name, Time, Value as Plain};

const INCIDENT: &[(&str, &str, Take)] = &[
    ("ServiceDeskId_s", "Id", Plain),
    ("IncidentState_s", "Status", Name),
    ("Urgency_s", "Urgency", Name),
    ("Impact_s", "Impact", Name),
    ("Priority_s", "Priority", Plain),
    ("Escalation_s", "Escalated", Plain),
    ("CreatedBy_s", "CreatedWorkItem", Display),
    ("ResolvedBy_s", "RelatesToTroubleTicket", Display),
    ("Source_s", "Source", Name),
    ("AssignedTo_s", "AssignedWorkItem", Display),
    ("Category_s", "Classification", Name),
    ("Title_s", "Title", Plain),
    ("Description_s", "Description", Plain),
    ("CreatedDate_t", "CreatedDate", Time),
    ("ClosedDate_t", "ClosedDate", Time),
    ("ResolvedDate_t", "ResolvedDate", Time),
    ("LastModifiedDate_t", "LastModified", Time),
    ("Computer", "AboutConfigItem", Display),
];

/// SCSM's change request `Category` (Standard, Minor, Major, Emergency) is what ServiceNow calls the type; its
/// `Area` is the category.
const CHANGE_REQUEST: &[(&str, &str, Take)] = &[
    ("ServiceDeskId_s", "Id", Plain),
    ("CRState_s", "Status", Name),
    ("Impact_s", "Impact", Name),
    ("Priority_s", "Priority", Name),
    ("Risk_s", "Risk", Name),
    ("Type_s", "Category", Name),
    ("CreatedBy_s", "CreatedWorkItem", Display),
    ("AssignedTo_s", "AssignedWorkItem", Display),
    ("Category_s", "Area", Name),
    ("Title_s", "Title", Plain),
    ("Description_s", "Description", Plain),
    ("CreatedDate_t", "CreatedDate", Time),
    ("ClosedDate_t", "ClosedDate", Time),
    ("PlannedStartDate_t", "ScheduledStartDate", Time),
    ("PlannedEndDate_t", "ScheduledEndDate", Time),
    ("WorkStartDate_t", "ActualStartDate", Time),
    ("WorkEndDate_t", "ActualEndDate", Time),
    ("LastModifiedDate_t", "LastModified", Time),
    ("Computer", "AboutConfigItem", Display),
];

fn mapping(kind: SyncKind) -> &'static [(&'static str, &'static str, Take)] {
    match kind {
        SyncKind::Incident => INCIDENT,
        SyncKind::ChangeRequest => CHANGE_REQUEST,
    }
}

/// An SCSM date-time: ISO 8601 with an offset, or without one (UTC). SCSM's "no date" (`0001-01-01...`) and
/// anything before 1900 is none.
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    let time = DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .ok()?;
    (time.timestamp() >= -2_208_988_800).then_some(time)
}

fn take(value: &Value, take: Take) -> Option<String> {
    let value = match (value, take) {
        (Value::Array(items), Display) => items.first()?,
        (value, _) => value,
    };
    match (value, take) {
        (Value::String(s), Plain) => Some(s.clone()),
        (Value::Number(n), Plain) => Some(n.to_string()),
        (Value::Bool(b), Plain) => Some(b.to_string()),
        (Value::Object(o), Name) => o.get("Name").and_then(Value::as_str).map(str::to_string),
        (Value::String(s), Name) => Some(s.clone()),
        (Value::Object(o), Display) => {
            o.get("DisplayName").or_else(|| o.get("Name")).and_then(Value::as_str).map(str::to_string)
        }
        (Value::String(s), Time) => parse_time(s).map(crate::sync::kinds::format_iso),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// One projection as a change: `(LastModified to the second, BaseId)` and its row; `None` for one without a
/// BaseId or a `LastModified` (it has no place in the sync's order).
pub fn change(projection: &Value, kind: SyncKind, connection: &str) -> Option<Change> {
    let id = projection.get("BaseId").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let updated = projection.get("LastModified").and_then(Value::as_str).and_then(parse_time);
    let updated = updated.filter(|_| !id.is_empty())?;
    let service_desk = schema::service_desk();
    let mut row = service_desk.row();
    row.set(service_desk.index("ServiceDeskConnectionName_s"), connection);
    row.set(service_desk.index("ServiceDeskWorkItemType_s"), kind.name());
    for &(column, property, how) in mapping(kind) {
        if let Some(value) = projection.get(property).and_then(|v| take(v, how)) {
            row.set(service_desk.index(column), &value);
        }
    }
    Some(Change { updated: crate::sync::kinds::format_time(updated), id, row })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::sync::kinds::format_iso as iso;

    #[test]
    fn a_projection_becomes_a_row_of_display_names_and_iso_times() {
        let projection = json!({
            "BaseId": "6F2A8B1C-0000-4000-8000-000000000001",
            "Id": "IR1042",
            "Title": "Disk \"C:\" full",
            "Status": { "Id": "5e2d3932-ca6d-1515-7310-6f58584df73e", "Name": "Active" },
            "Priority": 2,
            "Escalated": false,
            "AssignedWorkItem": { "BaseId": "x", "DisplayName": "Beth Anglin" },
            "AboutConfigItem": [{ "DisplayName": "web01" }],
            "CreatedDate": "2026-11-25T12:00:00.123Z",
            "ClosedDate": "0001-01-01T00:00:00",
            "LastModified": "2026-11-25T12:05:09.870Z"
        });
        let mapped = change(&projection, SyncKind::Incident, "prod").unwrap();
        let service_desk = schema::service_desk();
        let get = |name: &str| mapped.row.get(service_desk.index(name)).map(str::to_string);
        assert_eq!(
            (mapped.id.as_str(), mapped.updated.as_str()),
            ("6f2a8b1c-0000-4000-8000-000000000001", "2026-11-25 12:05:09")
        );
        assert_eq!(get("ServiceDeskId_s").as_deref(), Some("IR1042"));
        assert_eq!(get("IncidentState_s").as_deref(), Some("Active"));
        assert_eq!(get("Priority_s").as_deref(), Some("2"));
        assert_eq!(get("Escalation_s").as_deref(), Some("false"));
        assert_eq!(get("AssignedTo_s").as_deref(), Some("Beth Anglin"));
        assert_eq!(get("Computer").as_deref(), Some("web01"));
        assert_eq!(get("CreatedDate_t").as_deref(), Some("2026-11-25T12:00:00Z"));
        assert_eq!(get("ClosedDate_t"), None, "SCSM's empty date");
        assert_eq!(get("ServiceDeskWorkItemType_s").as_deref(), Some("Incident"));
        assert!(change(&json!({ "Id": "IR1" }), SyncKind::Incident, "prod").is_none());
    }

    #[test]
    fn every_mapped_column_exists() {
        let service_desk = schema::service_desk();
        for (column, _, _) in INCIDENT.iter().chain(CHANGE_REQUEST) {
            assert!(service_desk.columns.iter().any(|c| c.name == *column), "{column}");
        }
    }

    #[test]
    fn times_with_and_without_an_offset() {
        assert_eq!(parse_time("2026-11-25T12:00:00Z").map(iso).as_deref(), Some("2026-11-25T12:00:00Z"));
        assert_eq!(parse_time("2026-11-25T13:00:00+01:00").map(iso).as_deref(), Some("2026-11-25T12:00:00Z"));
        assert_eq!(parse_time("2026-11-25T12:00:00.1234567").map(iso).as_deref(), Some("2026-11-25T12:00:00Z"));
        assert_eq!(parse_time("not a date"), None);
    }
}
