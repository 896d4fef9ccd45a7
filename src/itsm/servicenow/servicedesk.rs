//! ServiceNow records as `ServiceDesk_CL` rows: which fields the sync asks for, and how each becomes
//! ITSMC's column. The pairs follow ITSMC's documented mapping ("Data synced from your ITSM product"):
//! people, groups, configuration items and choices as their display values (`Ravi Kumar`, `2 - Medium`,
//! `In Progress`), dates as their UTC values in ISO 8601.
//!
//! ITSMC filled `Description_s` of incidents from the work notes, which the Table API does not return as
//! a field; itsmc sends the incident's `description`, as ITSMC did for change requests.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::itsm::ItsmError;
use crate::sync::schema;
use crate::sync::{Change, SyncKind};

/// How a field becomes a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// The stored value (numbers, text).
    Value,
    /// What a person sees: the referenced record's name, a choice's label.
    Display,
    /// A date-time: the UTC value, as ISO 8601.
    Time,
}

use Take::{Display, Time, Value};

const INCIDENT: &[(&str, &str, Take)] = &[
    ("ServiceDeskId_s", "number", Value),
    ("IncidentState_s", "state", Display),
    ("Urgency_s", "urgency", Display),
    ("Impact_s", "impact", Display),
    ("Priority_s", "priority", Display),
    ("Escalation_s", "escalation", Display),
    ("CreatedBy_s", "opened_by", Display),
    ("ResolvedBy_s", "resolved_by", Display),
    ("ClosedBy_s", "closed_by", Display),
    ("Source_s", "contact_type", Display),
    ("AssignedTo_s", "assigned_to", Display),
    ("Category_s", "category", Display),
    ("Title_s", "short_description", Value),
    ("Description_s", "description", Value),
    ("CreatedDate_t", "opened_at", Time),
    ("ClosedDate_t", "closed_at", Time),
    ("ResolvedDate_t", "resolved_at", Time),
    ("LastModifiedDate_t", "sys_updated_on", Time),
    ("Computer", "cmdb_ci", Display),
];

const CHANGE_REQUEST: &[(&str, &str, Take)] = &[
    ("ServiceDeskId_s", "number", Value),
    ("CRState_s", "state", Display),
    ("Urgency_s", "urgency", Display),
    ("Impact_s", "impact", Display),
    ("Priority_s", "priority", Display),
    ("Escalation_s", "escalation", Display),
    ("Risk_s", "risk", Display),
    ("Type_s", "type", Display),
    ("ConflictStatus_s", "conflict_status", Display),
    ("CreatedBy_s", "requested_by", Display),
    ("ClosedBy_s", "closed_by", Display),
    ("AssignedTo_s", "assigned_to", Display),
    ("Category_s", "category", Display),
    ("Title_s", "short_description", Value),
    ("Description_s", "description", Value),
    ("CreatedDate_t", "opened_at", Time),
    ("ClosedDate_t", "closed_at", Time),
    ("RequestedDate_t", "requested_by_date", Time),
    ("PlannedStartDate_t", "start_date", Time),
    ("PlannedEndDate_t", "end_date", Time),
    ("WorkStartDate_t", "work_start", Time),
    ("WorkEndDate_t", "work_end", Time),
    ("LastModifiedDate_t", "sys_updated_on", Time),
    ("Computer", "cmdb_ci", Display),
];

/// The Table API table of a kind.
pub fn table(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Incident => "incident",
        SyncKind::ChangeRequest => "change_request",
    }
}

/// A kind's mapping, resolved against the schema once.
struct Plan {
    /// `sysparm_fields`: every mapped field, plus the two that order the sync.
    fields: String,
    /// Field name -> the columns it fills and how. A short list searched in order: cheaper than hashing for
    /// two dozen names.
    columns: Vec<(&'static str, Vec<(usize, Take)>)>,
    type_column: usize,
    connection_column: usize,
}

fn plan(kind: SyncKind) -> &'static Plan {
    static PLANS: OnceLock<[Plan; 2]> = OnceLock::new();
    let plans = PLANS.get_or_init(|| {
        [INCIDENT, CHANGE_REQUEST].map(|pairs| {
            let schema = schema::service_desk();
            let mut columns: Vec<(&'static str, Vec<(usize, Take)>)> = Vec::new();
            for &(column, field, take) in pairs {
                let target = (schema.index(column), take);
                match columns.iter_mut().find(|(name, _)| *name == field) {
                    Some((_, targets)) => targets.push(target),
                    None => columns.push((field, vec![target])),
                }
            }
            let mut fields: Vec<&str> = columns.iter().map(|(name, _)| *name).chain(["sys_id"]).collect();
            fields.sort_unstable();
            fields.dedup();
            Plan {
                fields: fields.join(","),
                columns,
                type_column: schema.index("ServiceDeskWorkItemType_s"),
                connection_column: schema.index("ServiceDeskConnectionName_s"),
            }
        })
    });
    &plans[kind as usize]
}

/// The `sysparm_fields` of a kind's sync query.
pub fn fields(kind: SyncKind) -> &'static str {
    &plan(kind).fields
}

/// A field as `sysparm_display_value=all` returns it. Both halves may be `null` (an empty reference).
#[derive(Deserialize)]
struct Field<'a> {
    #[serde(borrow, default)]
    display_value: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    result: Vec<Record<'a>>,
}

/// A record's fields in the order sent, borrowed from the page where no unescaping was needed.
struct Record<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

impl<'a, 'de: 'a> Deserialize<'de> for Record<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Record<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Table API record")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
                let mut fields = Vec::with_capacity(32);
                while let Some(entry) = map.next_entry::<Cow<'de, str>, Field<'de>>()? {
                    fields.push(entry);
                }
                Ok(Record(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

impl Record<'_> {
    fn value(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).and_then(|(_, f)| f.value.as_deref()).unwrap_or_default()
    }
}

/// A Table API page of `kind` records as changes, in the order ServiceNow sent them. `TimeGenerated` is
/// left to the sync, which sets it when it sends the row.
pub fn parse(body: &[u8], kind: SyncKind, connection: &str) -> Result<Vec<Change>, ItsmError> {
    let page: Page = serde_json::from_slice(body).map_err(|e| ItsmError::Transient {
        message: format!("ServiceNow's page of {} records could not be read: {e}", table(kind)),
        retry_after: None,
    })?;
    let plan = plan(kind);
    let mut changes = Vec::with_capacity(page.result.len());
    for record in page.result {
        let (id, updated) = (record.value("sys_id").to_owned(), record.value("sys_updated_on").to_owned());
        if id.is_empty() || updated.is_empty() {
            return Err(ItsmError::Transient {
                message: format!("ServiceNow sent a {} record without sys_id or sys_updated_on", table(kind)),
                retry_after: None,
            });
        }
        let mut row = schema::service_desk().row();
        row.set(plan.connection_column, connection);
        row.set(plan.type_column, kind.name());
        for (name, field) in &record.0 {
            let Some((_, targets)) = plan.columns.iter().find(|(n, _)| *n == name.as_ref()) else { continue };
            for &(column, take) in targets {
                match take {
                    Take::Value => row.set(column, field.value.as_deref().unwrap_or_default()),
                    Take::Display => row.set(column, field.display_value.as_deref().unwrap_or_default()),
                    Take::Time => row.set(column, iso_time(field.value.as_deref().unwrap_or_default(), &mut [0; 20])),
                }
            }
        }
        changes.push(Change { updated, id, row });
    }
    Ok(changes)
}

/// ServiceNow's `2026-11-25 12:00:00` (UTC) as `2026-11-25T12:00:00Z`; anything else is left out rather
/// than sent into a datetime column that would refuse it. By hand, not through chrono's formatter: every
/// record has several dates and this was a tenth of the sync's CPU.
fn iso_time<'b>(raw: &str, buffer: &'b mut [u8; 20]) -> &'b str {
    let b = raw.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    let shaped = b.len() == 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let number = |range: std::ops::Range<usize>| raw[range].parse::<u32>().unwrap_or(u32::MAX);
    let valid = shaped
        && chrono::NaiveDate::from_ymd_opt(number(0..4) as i32, number(5..7), number(8..10)).is_some()
        && chrono::NaiveTime::from_hms_opt(number(11..13), number(14..16), number(17..19)).is_some();
    if !valid {
        return "";
    }
    buffer[..19].copy_from_slice(b);
    buffer[10] = b'T';
    buffer[19] = b'Z';
    std::str::from_utf8(buffer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_but_the_ones_itsmc_fills_comes_from_a_field() {
        let schema = schema::service_desk();
        let own = ["TimeGenerated", "ServiceDeskConnectionName_s", "ServiceDeskWorkItemType_s"];
        let incident_only = ["IncidentState_s", "ResolvedBy_s", "ResolvedDate_t", "Source_s"];
        let change_only = [
            "Type_s",
            "CRState_s",
            "ConflictStatus_s",
            "Risk_s",
            "RequestedDate_t",
            "PlannedStartDate_t",
            "PlannedEndDate_t",
            "WorkStartDate_t",
            "WorkEndDate_t",
        ];
        for column in &schema.columns {
            let name = column.name.as_str();
            let in_incident = INCIDENT.iter().any(|(c, _, _)| *c == name);
            let in_change = CHANGE_REQUEST.iter().any(|(c, _, _)| *c == name);
            if own.contains(&name) {
                assert!(!in_incident && !in_change, "{name}");
            } else if incident_only.contains(&name) {
                assert!(in_incident && !in_change, "{name}");
            } else if change_only.contains(&name) {
                assert!(in_change && !in_incident, "{name}");
            } else {
                assert!(in_incident && in_change, "{name} is filled for both kinds");
            }
        }
    }

    #[test]
    fn times_become_iso_or_nothing() {
        assert_eq!(iso_time("2026-02-28 23:59:59", &mut [0; 20]), "2026-02-28T23:59:59Z");
        for bad in ["", "2026-02-30 00:00:00", "2026-02-28T23:59:59", "2026-02-28 23:59", "２０２６-02-28 23:59:59"]
        {
            assert_eq!(iso_time(bad, &mut [0; 20]), "", "{bad}");
        }
    }

    #[test]
    fn a_page_becomes_rows_with_display_values_and_iso_times() {
        let body = r#"{"result":[{
            "sys_id":{"display_value":"6f2a","value":"6f2a"},
            "number":{"display_value":"INC0010001","value":"INC0010001"},
            "state":{"display_value":"In Progress","value":"2"},
            "assigned_to":{"display_value":"Beth Anglin","value":"46d44a"},
            "cmdb_ci":{"display_value":null,"value":null},
            "short_description":{"display_value":"Disk \"C:\" full","value":"Disk \"C:\" full"},
            "opened_at":{"display_value":"2026-11-25 13:00:00","value":"2026-11-25 12:00:00"},
            "sys_updated_on":{"display_value":"2026-11-25 13:05:00","value":"2026-11-25 12:05:00"}
        }]}"#;
        let changes = parse(body.as_bytes(), SyncKind::Incident, "prod").unwrap();
        let schema = schema::service_desk();
        let row = &changes[0].row;
        let get = |name: &str| row.get(schema.index(name));
        assert_eq!((changes[0].id.as_str(), changes[0].updated.as_str()), ("6f2a", "2026-11-25 12:05:00"));
        assert_eq!(get("ServiceDeskId_s"), Some("INC0010001"));
        assert_eq!(get("IncidentState_s"), Some("In Progress"));
        assert_eq!(get("AssignedTo_s"), Some("Beth Anglin"));
        assert_eq!(get("Computer"), None);
        assert_eq!(get("Title_s"), Some("Disk \"C:\" full"));
        assert_eq!(get("CreatedDate_t"), Some("2026-11-25T12:00:00Z"));
        assert_eq!(get("LastModifiedDate_t"), Some("2026-11-25T12:05:00Z"));
        assert_eq!(get("ServiceDeskWorkItemType_s"), Some("Incident"));
        assert_eq!(get("ServiceDeskConnectionName_s"), Some("prod"));
        assert_eq!(get("TimeGenerated"), None);
        assert!(fields(SyncKind::Incident).split(',').any(|f| f == "sys_updated_on"));
    }
}
