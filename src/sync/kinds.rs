//! What the sync reads from an ITSM tool: the kinds of work item, the window of a page of changes, and a
//! changed record already mapped to its `ServiceDesk_CL` row. Each product's connector implements
//! [`crate::itsm::Connector::changes`] in these terms; the sync engine ([`super::run`]) knows no product.

use serde::{Deserialize, Serialize};

use super::schema::Row;

/// A kind of work item the sync copies, with its `ServiceDeskWorkItemType_s` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SyncKind {
    Incident,
    ChangeRequest,
}

impl SyncKind {
    pub const ALL: [SyncKind; 2] = [SyncKind::Incident, SyncKind::ChangeRequest];

    /// As `ServiceDeskWorkItemType_s` has it, and as settings and `?type=` name it.
    pub fn name(self) -> &'static str {
        match self {
            SyncKind::Incident => "Incident",
            SyncKind::ChangeRequest => "ChangeRequest",
        }
    }

    pub fn parse(raw: &str) -> Option<SyncKind> {
        SyncKind::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(raw.trim()))
    }
}

/// Which changes a page asks for, in (update time, id) order. Times are UTC text with one-second
/// resolution, `2026-11-25 12:00:00` ([`TIME_FORMAT`], as ServiceNow writes them; other products convert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// Records updated at or after this time.
    Since(String),
    /// Records updated after this time.
    After(String),
    /// Records updated exactly at this time whose id sorts after `after_id`: the rest of a second that held
    /// more records than a page.
    Within { updated: String, after_id: String },
}

/// The format of update times in [`Window`] and [`Change`].
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

pub fn format_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format(TIME_FORMAT).to_string()
}

/// A time as the products' APIs and the `_t` columns take it: ISO 8601 in UTC, to the second.
pub fn format_iso(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(text, TIME_FORMAT).ok().map(|t| t.and_utc())
}

/// One changed record: its position in the order, and its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub updated: String,
    pub id: String,
    pub row: Row,
}
