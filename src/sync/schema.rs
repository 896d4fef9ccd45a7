//! The columns of `ServiceDesk_CL` and `ServiceDeskLog_CL`, read from `schema/*.json`: the one list that this
//! code, the tests' Logs Ingestion emulator and the data collection rule in `infra/` all use, so a column
//! cannot be renamed in one place and not the others.
//!
//! A [`Row`] holds one value per column, in the schema's order, and serializes itself as the JSON object
//! the Logs Ingestion API takes: absent values are left out (Log Analytics stores them as empty).

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Datetime,
    Real,
    Boolean,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct Schema {
    /// The Log Analytics table, e.g. `ServiceDesk_CL`.
    pub table: String,
    /// The data collection rule's input stream, e.g. `Custom-ServiceDesk_CL`.
    pub stream: String,
    pub columns: Vec<Column>,
}

impl Schema {
    fn load(json: &str) -> Schema {
        serde_json::from_str(json).expect("schema/*.json is valid (checked by the tests)")
    }

    /// The column's position; panics on a name the schema does not have, which is a bug caught by the
    /// first test that maps a record.
    pub fn index(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("{} has no column {name}", self.table))
    }

    pub fn row(&'static self) -> Row {
        Row { schema: self, spans: vec![None; self.columns.len()], text: String::with_capacity(1024) }
    }
}

/// `ServiceDesk_CL`: incidents and change requests.
pub fn service_desk() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::load(include_str!("../../schema/ServiceDesk_CL.json")))
}

/// `ServiceDeskLog_CL`: the connector's own log.
pub fn service_desk_log() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::load(include_str!("../../schema/ServiceDeskLog_CL.json")))
}

/// One row of a table: a value per column, as text in the form Logs Ingestion parses for the column's type
/// (ISO 8601 for datetimes, a JSON number for reals, `true`/`false` for booleans). The values share one
/// buffer: a row costs two allocations, not one per column (the sync makes a million of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    schema: &'static Schema,
    /// Per column, where its value is in `text`.
    spans: Vec<Option<(u32, u32)>>,
    text: String,
}

impl Row {
    /// Sets a column; an empty value leaves it out. Setting a column again leaves the old text unused.
    pub fn set(&mut self, column: usize, value: &str) {
        self.spans[column] = (!value.is_empty()).then(|| {
            let start = self.text.len() as u32;
            self.text.push_str(value);
            (start, value.len() as u32)
        });
    }

    pub fn set_number(&mut self, column: usize, value: f64) {
        if value.is_finite() {
            self.set(column, &value.to_string());
        } else {
            self.spans[column] = None;
        }
    }

    pub fn set_bool(&mut self, column: usize, value: bool) {
        self.set(column, if value { "true" } else { "false" });
    }

    pub fn get(&self, column: usize) -> Option<&str> {
        let (start, len) = self.spans[column]?;
        Some(&self.text[start as usize..(start + len) as usize])
    }

    /// Appends the row as a JSON object to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        let mut first = true;
        for (index, column) in self.schema.columns.iter().enumerate() {
            let Some(value) = self.get(index) else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            write_json_string(out, &column.name);
            out.push(':');
            match column.kind {
                ColumnType::String | ColumnType::Datetime => write_json_string(out, value),
                ColumnType::Real | ColumnType::Boolean => out.push_str(value),
            }
        }
        out.push('}');
    }
}

/// `value` as a JSON string literal (serde_json's escaping, without a `Value` in between). Runs of bytes
/// that need no escape are copied whole: this is the sync's innermost loop.
fn write_json_string(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Escapes are ASCII, so `i` is a char boundary.
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemas_load_and_name_every_column_once() {
        for schema in [service_desk(), service_desk_log()] {
            assert_eq!(schema.columns[0].name, "TimeGenerated");
            assert_eq!(schema.stream, format!("Custom-{}", schema.table));
            let mut names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), schema.columns.len(), "{} names a column twice", schema.table);
        }
    }

    #[test]
    fn rows_serialize_as_json_objects_without_empty_values() {
        let schema = service_desk();
        let mut row = schema.row();
        row.set(schema.index("Title_s"), "Disk \"C:\" full\n\u{1}é");
        row.set(schema.index("Category_s"), "");
        row.set(schema.index("CreatedDate_t"), "2026-11-25T12:00:00Z");
        let mut out = String::new();
        row.write_json(&mut out);
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"Title_s": "Disk \"C:\" full\n\u{1}é", "CreatedDate_t": "2026-11-25T12:00:00Z"})
        );
    }
}
