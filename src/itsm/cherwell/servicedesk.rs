//! Cherwell Incidents and ChangeRequests as `ServiceDesk_CL` rows: which fields fill which of ITSMC's columns,
//! and how the sync reads pages of changed records through `getsearchresults`.
//!
//! Field names differ between CSM versions and customizations (10.x names the incident's owner `AssignedTo`,
//! older releases `OwnedBy`): each column lists the names it is taken from, and the first one the business
//! object's template has is used; `ITSMC_CHERWELL_SYNC_FIELDS` names others. Values are taken as CSM shows
//! them (choices and people by name); date-times are read in the API user's date format
//! (`ITSMC_CHERWELL_DATE_FORMAT`) as UTC, and written as ISO 8601.
//!
//! # Reading in (last modified, record id) order
//!
//! The sync asks for windows in (update time, id) order at the resolution CSM shows times in (a second, or a
//! minute with a short time format). CSM keeps sub-second times and filters and sorts on them; it ORs filters
//! on one field and ANDs them across fields, so "at or after T" is `gt T` or `eq T`, but a range is not one
//! query. A page is the first page of a query for the records from the window's start, oldest first, a quarter
//! larger than asked: every second in it but the last is whole, and those are returned. When they are fewer
//! than a page, the last second is read whole by a second query (`lt` its end, newest first, until an earlier
//! second shows). Neither query is an offset into a result that may shift while it is read, except when one
//! second holds more records than a page: that second is read in further pages of the second query.

use chrono::NaiveDateTime;
use serde_json::Value;

use super::catalog::BusOb;
use super::client::{Client, Failure};
use super::requests::{self, Filter};
use super::settings::CherwellSettings;
use crate::itsm::ItsmError;
use crate::sync::schema;
use crate::sync::{Change, SyncKind, Window, kinds};

/// How a field becomes a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// As CSM shows it.
    Value,
    /// A date-time, as ISO 8601 UTC.
    Time,
}

use Take::{Time, Value as Text};

/// The record's public id, in every version's name for it.
const INCIDENT: &[(&str, &[&str], Take)] = &[
    ("ServiceDeskId_s", &["IncidentID"], Text),
    ("IncidentState_s", &["Status"], Text),
    ("Urgency_s", &["Urgency"], Text),
    ("Impact_s", &["Impact"], Text),
    ("Priority_s", &["Priority"], Text),
    ("Escalation_s", &["Stat_IncidentEscalated"], Text),
    ("CreatedBy_s", &["CreatedBy"], Text),
    ("ResolvedBy_s", &["ResolvedBy"], Text),
    ("ClosedBy_s", &["ClosedBy"], Text),
    ("Source_s", &["Source", "CallSource"], Text),
    ("AssignedTo_s", &["OwnedBy", "AssignedTo"], Text),
    ("Category_s", &["Category"], Text),
    ("Title_s", &["ShortDescription"], Text),
    ("Description_s", &["Description"], Text),
    ("CreatedDate_t", &["CreatedDateTime"], Time),
    ("ClosedDate_t", &["ClosedDateTime"], Time),
    ("ResolvedDate_t", &["Stat_DateTimeResolved", "ResolvedDateTime"], Time),
    ("LastModifiedDate_t", &["LastModifiedDateTime"], Time),
    ("Computer", &["ConfigItemDisplayName"], Text),
];

const CHANGE_REQUEST: &[(&str, &[&str], Take)] = &[
    ("ServiceDeskId_s", &["ChangeID"], Text),
    ("CRState_s", &["Status"], Text),
    ("Urgency_s", &["Urgency"], Text),
    ("Impact_s", &["Impact"], Text),
    ("Priority_s", &["Priority"], Text),
    ("Risk_s", &["RiskLevel", "Risk"], Text),
    ("Type_s", &["Type", "ChangeType"], Text),
    ("CreatedBy_s", &["RequestedBy", "CreatedBy"], Text),
    ("ClosedBy_s", &["ClosedBy"], Text),
    ("AssignedTo_s", &["OwnedBy", "AssignedTo"], Text),
    ("Category_s", &["Category"], Text),
    ("Title_s", &["Title", "ShortDescription"], Text),
    ("Description_s", &["Description"], Text),
    ("CreatedDate_t", &["CreatedDateTime"], Time),
    ("ClosedDate_t", &["ClosedDateTime"], Time),
    ("RequestedDate_t", &["ProposedStartDate", "RequestedDate"], Time),
    ("PlannedStartDate_t", &["ScheduledStartDate"], Time),
    ("PlannedEndDate_t", &["ScheduledEndDate"], Time),
    ("WorkStartDate_t", &["ActualStartDate"], Time),
    ("WorkEndDate_t", &["ActualEndDate"], Time),
    ("LastModifiedDate_t", &["LastModifiedDateTime"], Time),
    ("Computer", &["ConfigItemDisplayName"], Text),
];

/// The field every sync window is on.
pub const MODIFIED: &str = "LastModifiedDateTime";

/// The columns of a kind, with the names each is taken from (the defaults, or the connection's).
pub fn columns(kind: SyncKind, settings: &CherwellSettings) -> Vec<(&'static str, Vec<String>, bool)> {
    let defaults = match kind {
        SyncKind::Incident => INCIDENT,
        SyncKind::ChangeRequest => CHANGE_REQUEST,
    };
    let schema = schema::service_desk();
    let mut columns: Vec<(&'static str, Vec<String>, bool)> = defaults
        .iter()
        .map(|(column, names, take)| (*column, names.iter().map(|n| n.to_string()).collect(), *take == Time))
        .collect();
    for (column, field) in &settings.sync_fields {
        let Some(known) = schema.columns.iter().find(|c| &c.name == column) else { continue };
        let time = known.kind == schema::ColumnType::Datetime;
        columns.retain(|(name, _, _)| *name != known.name.as_str());
        // A static name for the column: the schema's own, which lives as long as the program.
        columns.push((known.name.as_str(), vec![field.clone()], time));
    }
    columns
}

/// A kind's mapping resolved against its business object's fields.
pub struct Plan {
    /// (column index, field, is a date-time).
    columns: Vec<(usize, super::catalog::Field, bool)>,
    pub modified: super::catalog::Field,
    pub rec_id: String,
    type_column: usize,
    connection_column: usize,
}

impl Plan {
    pub fn new(kind: SyncKind, object: &BusOb, settings: &CherwellSettings) -> Result<Plan, Failure> {
        let schema = schema::service_desk();
        let modified = object.require(MODIFIED, "the business object")?.clone();
        if object.rec_id_field.is_empty() {
            return Err(Failure::Itsm(ItsmError::Rejected(format!(
                "Cherwell's summary of {} names no record id field",
                object.name
            ))));
        }
        let columns = columns(kind, settings)
            .into_iter()
            .filter_map(|(column, names, time)| {
                object.first_field(&names).map(|field| (schema.index(column), field.clone(), time))
            })
            .collect();
        Ok(Plan {
            columns,
            modified,
            rec_id: object.rec_id_field.clone(),
            type_column: schema.index("ServiceDeskWorkItemType_s"),
            connection_column: schema.index("ServiceDeskConnectionName_s"),
        })
    }

    /// The field ids a search asks for.
    pub fn field_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.columns.iter().map(|(_, f, _)| f.id.as_str()).collect();
        ids.push(&self.modified.id);
        ids.push(&self.rec_id);
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The shortest time step the date format shows: a second, or a minute.
pub fn resolution(format: &str) -> chrono::Duration {
    if ["%S", "%T", "%X", "%c", "%s"].iter().any(|spec| format.contains(spec)) {
        chrono::Duration::seconds(1)
    } else {
        chrono::Duration::minutes(1)
    }
}

/// A Cherwell date-time as the API user's culture writes it; `None` when it is empty or another shape.
pub fn parse_time(raw: &str, format: &str) -> Option<NaiveDateTime> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    NaiveDateTime::parse_from_str(raw, format).ok()
}

/// A time as a filter value in the API user's format.
pub fn format_time(time: NaiveDateTime, format: &str) -> String {
    time.format(format).to_string()
}

/// One record of a search page.
struct Record {
    time: NaiveDateTime,
    id: String,
    change: Change,
}

/// A field's value in a read record: by name, else by field id (some versions send `BO:…,FI:…`).
fn field_value<'v>(fields: &'v [Value], field: &super::catalog::Field) -> Option<&'v str> {
    let found = fields
        .iter()
        .find(|f| f.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(&field.name)))
        .or_else(|| {
            fields.iter().find(|f| {
                f.get("fieldId").and_then(Value::as_str).is_some_and(|id| id.rsplit("FI:").next() == Some(&field.id))
            })
        })?;
    found.get("value").and_then(Value::as_str)
}

/// The page's records. One CSM sent without a record id or with an empty or unreadable last-modified time is
/// left out, with a warning naming it, so that it does not stop the sync of its kind; but when no record of
/// the page has a time in the date format and some have one in another shape, the format is wrong (the API
/// user's culture is not `ITSMC_CHERWELL_DATE_FORMAT`), and that is an error saying so.
fn records(body: &Value, plan: &Plan, kind: SyncKind, connection: &str, format: &str) -> Result<Vec<Record>, Failure> {
    let mut out = Vec::new();
    // A value in another shape than the format, as an example for the error.
    let mut unreadable: Option<(String, String)> = None;
    let mut skipped = 0usize;
    for object in body.get("businessObjects").and_then(Value::as_array).into_iter().flatten() {
        let id = object.get("busObRecId").and_then(Value::as_str).unwrap_or_default().to_string();
        let public_id = object.get("busObPublicId").and_then(Value::as_str).unwrap_or_default();
        let fields = object.get("fields").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let raw = field_value(fields, &plan.modified).unwrap_or_default();
        let Some(time) = parse_time(raw, format) else {
            if !raw.trim().is_empty() && unreadable.is_none() {
                unreadable = Some((raw.to_string(), if id.is_empty() { public_id.to_string() } else { id.clone() }));
            }
            skipped += 1;
            tracing::warn!(
                kind = kind.name(),
                public_id,
                rec_id = id,
                value = raw,
                format,
                "Cherwell sent a record whose {} is {}; leaving it out of the sync",
                plan.modified.name,
                if raw.trim().is_empty() { "empty" } else { "not in the date format" }
            );
            continue;
        };
        if id.is_empty() {
            skipped += 1;
            tracing::warn!(
                kind = kind.name(),
                public_id,
                "Cherwell sent a search result without busObRecId; leaving it out of the sync"
            );
            continue;
        }
        let mut row = schema::service_desk().row();
        row.set(plan.connection_column, connection);
        row.set(plan.type_column, kind.name());
        for (column, field, is_time) in &plan.columns {
            let value = field_value(fields, field).unwrap_or_default();
            if *is_time {
                let iso = parse_time(value, format).map(|t| crate::sync::kinds::format_iso(t.and_utc()));
                row.set(*column, iso.as_deref().unwrap_or_default());
            } else {
                row.set(*column, value);
            }
        }
        let updated = kinds::format_time(time.and_utc());
        out.push(Record { time, change: Change { updated, id: id.clone(), row }, id });
    }
    if out.is_empty()
        && let Some((raw, id)) = unreadable
    {
        return Err(Failure::Itsm(ItsmError::Rejected(format!(
            "Cherwell sent {} '{raw}' for record {id}, which is not in the date format '{format}' (nor is the \
             time of any of the page's {skipped} records); set ITSMC_CHERWELL_DATE_FORMAT to the API user's",
            plan.modified.name
        ))));
    }
    Ok(out)
}

/// Everything the reading of one page needs.
pub struct Reader<'a> {
    pub client: &'a Client,
    pub object: &'a BusOb,
    pub plan: &'a Plan,
    pub kind: SyncKind,
    pub connection: &'a str,
    pub format: &'a str,
}

impl Reader<'_> {
    async fn page(
        &self,
        filters: &[Filter<'_>],
        ascending: bool,
        number: usize,
        size: usize,
    ) -> Result<(Vec<Record>, usize), Failure> {
        let sorting = [(self.plan.modified.id.as_str(), ascending), (self.plan.rec_id.as_str(), true)];
        let request = requests::search(&self.object.id, &self.plan.field_ids(), filters, &sorting, number, size);
        let body = self.client.send(&request).await?;
        let read = body.get("businessObjects").and_then(Value::as_array).map_or(0, Vec::len);
        Ok((records(&body, self.plan, self.kind, self.connection, self.format)?, read))
    }

    /// Every record shown at `time` whose id sorts after `after_id`.
    async fn unit(&self, time: NaiveDateTime, after_id: Option<&str>, size: usize) -> Result<Vec<Record>, Failure> {
        let end = format_time(time + resolution(self.format), self.format);
        let mut filters = vec![Filter { field_id: &self.plan.modified.id, operator: "lt", value: end }];
        if let Some(after) = after_id {
            filters.push(Filter { field_id: &self.plan.rec_id, operator: "gt", value: after.to_string() });
        }
        let mut found = Vec::new();
        for number in 1.. {
            let (page, read) = self.page(&filters, false, number, size).await?;
            let earlier = page.iter().any(|r| r.time < time);
            found.extend(page.into_iter().filter(|r| r.time == time && after_id.is_none_or(|a| r.id.as_str() > a)));
            if earlier || read < size {
                break;
            }
        }
        Ok(found)
    }

    /// Records changed in `window`, oldest first by (shown time, record id), at most `limit`.
    pub async fn changes(&self, window: &Window, limit: usize) -> Result<Vec<Change>, Failure> {
        let limit = limit.max(1);
        let parse = |text: &str| {
            kinds::parse_time(text).map(|t| t.naive_utc()).ok_or_else(|| {
                Failure::Itsm(ItsmError::Rejected(format!("the sync position {window:?} is not a time")))
            })
        };
        let mut records = match window {
            Window::Within { updated, after_id } => self.unit(parse(updated)?, Some(after_id.as_str()), limit).await?,
            Window::Since(start) | Window::After(start) => {
                let start = parse(start)?;
                // Shown at or after `from`: `gt` and `eq` on one field, which CSM ORs.
                let from = if matches!(window, Window::After(_)) { start + resolution(self.format) } else { start };
                let value = format_time(from, self.format);
                let id = self.plan.modified.id.as_str();
                let filters = [
                    Filter { field_id: id, operator: "gt", value: value.clone() },
                    Filter { field_id: id, operator: "eq", value },
                ];
                // A quarter more than a page, so that the page's last second is seldom needed whole.
                let size = limit + limit / 4 + 1;
                let (page, read) = self.page(&filters, true, 1, size).await?;
                let mut kept: Vec<Record> = page.into_iter().filter(|r| r.time >= from).collect();
                if read >= size
                    && let Some(last) = kept.iter().map(|r| r.time).max()
                {
                    // The page's last second may go on past it: those before it are whole.
                    kept.retain(|r| r.time < last);
                    if kept.len() < limit {
                        kept.extend(self.unit(last, None, limit).await?);
                    }
                }
                kept
            }
        };
        records.sort_by(|a, b| (a.time, a.id.as_str()).cmp(&(b.time, b.id.as_str())));
        records.truncate(limit);
        Ok(records.into_iter().map(|r| r.change).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_users_format() {
        let format = super::super::settings::DEFAULT_DATE_FORMAT;
        let time = parse_time("7/22/2021 12:53:07 PM", format).unwrap();
        assert_eq!(time.format("%Y-%m-%d %H:%M:%S").to_string(), "2021-07-22 12:53:07");
        assert_eq!(parse_time("11/25/2026 12:00:00 AM", format).unwrap().format("%H").to_string(), "00");
        assert_eq!(format_time(time, format), "07/22/2021 12:53:07 PM");
        assert!(parse_time("", format).is_none());
        assert!(parse_time("2021-07-22T12:53:07Z", format).is_none());
        assert_eq!(parse_time("22.07.2021 12:53", "%d.%m.%Y %H:%M").unwrap().format("%M").to_string(), "53");
        assert_eq!(resolution(format), chrono::Duration::seconds(1));
        assert_eq!(resolution("%m/%d/%Y %I:%M %p"), chrono::Duration::minutes(1));
    }

    #[test]
    fn every_column_but_the_ones_itsmc_fills_has_a_field() {
        let schema = schema::service_desk();
        // ConflictStatus_s is ServiceNow's change conflict detection, which CSM has no field for.
        let own = ["TimeGenerated", "ServiceDeskConnectionName_s", "ServiceDeskWorkItemType_s", "ConflictStatus_s"];
        for column in &schema.columns {
            let name = column.name.as_str();
            let mapped = INCIDENT.iter().chain(CHANGE_REQUEST).any(|(c, _, _)| *c == name);
            assert_eq!(mapped, !own.contains(&name), "{name}");
        }
        for (column, _, take) in INCIDENT.iter().chain(CHANGE_REQUEST) {
            let kind = schema.columns[schema.index(column)].kind;
            assert_eq!(*take == Time, kind == schema::ColumnType::Datetime, "{column}");
        }
    }
}
