//! Lenient readers for the loosely typed JSON that Azure Monitor sends, and the error constructors.
//!
//! The same field arrives as a number in one payload and a string in the next (`metricValue`, `threshold`,
//! `level`), JSON is sometimes encoded inside a string (`impactedServices`, `claims`), and times come in
//! RFC 3339 with 0 to 9+ fractional digits or as `3/22/2019 1:36:31 PM`. Everything here tolerates those
//! variants and never panics; only the readers of required fields return errors, naming the JSON path.

use std::borrow::Cow;
use std::fmt::Display;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::{Condition, ParseError, Severity};

/// What `not_an_alert` says was expected, so an operator who pointed the wrong sender at us knows why.
pub(super) const EXPECTED: &str = "expected an Azure Monitor alert: a common alert schema body with schemaId and \
     data.essentials, or a legacy metric, activity log or log search payload";

/// Values echoed in error messages are cut here: a 2 MB field must not become a 2 MB log line.
const ECHO_MAX: usize = 64;

impl ParseError {
    pub(super) fn not_json(err: &serde_json::Error) -> Self {
        ParseError { code: "not_json", message: format!("body is not valid JSON: {err}") }
    }

    /// Bytes that are not UTF-8, located the way serde_json locates its errors.
    pub(super) fn not_utf8(body: &[u8], valid_up_to: usize) -> Self {
        let before = body.get(..valid_up_to).unwrap_or(body);
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        ParseError {
            code: "not_json",
            message: format!("body is not valid JSON: invalid UTF-8 at line {line} column {column}"),
        }
    }

    pub(super) fn not_an_alert(found: impl Display) -> Self {
        ParseError { code: "not_an_alert", message: format!("{EXPECTED}; got {found}") }
    }

    pub(super) fn missing(path: &str) -> Self {
        ParseError { code: "missing_field", message: format!("missing required field `{path}`") }
    }

    pub(super) fn invalid(path: &str, why: impl Display) -> Self {
        ParseError { code: "invalid_field", message: format!("invalid field `{path}`: {why}") }
    }
}

/// A value quoted for an error message, shortened on a character boundary.
pub(super) fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// The JSON type of a raw value, for "expected X, got Y" messages; decided by the first byte because
/// serde_json has already validated the text.
pub(super) fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

pub(super) fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar read from a raw field: strings decoded, numbers kept as their JSON text.
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(&'a str),
    Bool(bool),
    /// An array or object where a scalar was expected.
    Composite,
}

pub(super) fn scalar(raw: &RawValue) -> Scalar<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => Scalar::Str(raw_str(text)),
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'{' | b'[') => Scalar::Composite,
        // `null` never reaches here: `Option<&RawValue>` turns it into `None`.
        _ => Scalar::Num(text),
    }
}

/// Decodes a raw JSON string, borrowing it when it has no escapes (the usual case for Azure's fields).
fn raw_str(text: &str) -> Cow<'_, str> {
    let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    Cow::Owned(serde_json::from_str::<String>(text).unwrap_or_default())
}

/// A required string field: missing, null or blank is `missing_field`, another type is `invalid_field`.
pub(super) fn required_str(raw: Option<&RawValue>, path: &str) -> Result<String, ParseError> {
    let raw = raw.ok_or_else(|| ParseError::missing(path))?;
    match scalar(raw) {
        Scalar::Str(s) if s.trim().is_empty() => Err(ParseError::missing(path)),
        Scalar::Str(s) => Ok(s.into_owned()),
        _ => Err(ParseError::invalid(path, format_args!("expected a string, got {}", raw_kind(raw)))),
    }
}

/// An optional text field: strings as they are, numbers and booleans as their JSON text, others ignored.
pub(super) fn optional_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    match scalar(raw?) {
        Scalar::Str(s) => Some(s),
        Scalar::Num(n) => Some(Cow::Borrowed(n)),
        Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        Scalar::Composite => None,
    }
}

/// `optional_text`, owned and non-blank.
pub(super) fn optional_str(raw: Option<&RawValue>) -> Option<String> {
    optional_text(raw).filter(|s| !s.trim().is_empty()).map(Cow::into_owned)
}

/// A raw value as shown in an error message: a string or number quoted and shortened, else its type.
pub(super) fn shown(raw: &RawValue) -> String {
    match scalar(raw) {
        Scalar::Str(s) => echo(&s),
        Scalar::Num(n) => echo(n),
        _ => raw_kind(raw).to_string(),
    }
}

/// A list of strings from a raw field (`alertTargetIDs`, `configurationItems`): tolerant of null, a
/// single string, and non-string items (rendered as text).
pub(super) fn raw_str_list(raw: Option<&RawValue>) -> Vec<String> {
    let Some(raw) = raw else { return Vec::new() };
    match scalar(raw) {
        Scalar::Str(s) if s.trim().is_empty() => Vec::new(),
        Scalar::Str(s) => vec![s.into_owned()],
        Scalar::Composite => match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) => str_list(&v),
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A required text field of a parsed object: absent, null or blank is `missing_field`, another type is
/// `invalid_field`.
pub(super) fn required_field(v: &Value, key: &str, path: &str) -> Result<String, ParseError> {
    match get(v, key) {
        None => Err(ParseError::missing(path)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ParseError::missing(path)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ParseError::invalid(path, format_args!("expected a string, got {}", value_kind(other)))),
    }
}

/// A field of a parsed JSON object, with JSON null treated as absent.
pub(super) fn get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// The first of several spellings of a field that is present (`SearchResults`/`SearchResult`, ...).
pub(super) fn get_any<'v>(v: &'v Value, keys: &[&str]) -> Option<&'v Value> {
    keys.iter().find_map(|k| get(v, k))
}

/// A scalar as text: strings borrowed, numbers rendered (integral floats without `.0`), booleans as words.
pub(super) fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(number_text(n))),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// A non-blank text field of an object.
pub(super) fn field<'v>(v: &'v Value, key: &str) -> Option<Cow<'v, str>> {
    get(v, key).and_then(text).filter(|s| !s.trim().is_empty())
}

/// The first non-blank text among several spellings of a field.
pub(super) fn field_any<'v>(v: &'v Value, keys: &[&str]) -> Option<Cow<'v, str>> {
    keys.iter().find_map(|k| field(v, k))
}

/// Numbers as a person would write them: `0.0` is `0`, `5.0` is `5`, `7.727` stays `7.727`.
pub(super) fn number_text(n: &Number) -> String {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64())
        && f.fract() == 0.0
        && f.abs() < 1e15
    {
        return format!("{}", f as i64);
    }
    n.to_string()
}

/// Renders a custom property value: strings as they are, null as empty, anything else as compact JSON.
pub(super) fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => number_text(n),
        other => other.to_string(),
    }
}

/// Strings from an array (non-string items rendered), a single string, or a string holding a JSON array.
pub(super) fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter(|x| !x.is_null()).map(render).filter(|s| !s.is_empty()).collect(),
        Value::String(s) if s.trim_start().starts_with('[') => match serde_json::from_str::<Value>(s) {
            Ok(inner @ Value::Array(_)) => str_list(&inner),
            _ => vec![s.clone()],
        },
        Value::String(s) if s.trim().is_empty() => Vec::new(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// A flag sent as `true`, `"True"`, `"true"` or `1` (`IncludeSearchResults` vs `IncludedSearchResults`).
pub(super) fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" => Some(true),
            t if t.eq_ignore_ascii_case("false") || t == "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

/// A JSON document that Azure encoded into a string (`impactedServices` in real alerts, `claims`,
/// `policies`), decoded; values that are already structured are borrowed as they are.
pub(super) fn embedded(v: &Value) -> Cow<'_, Value> {
    if let Value::String(s) = v {
        let t = s.trim_start();
        if (t.starts_with('[') || t.starts_with('{'))
            && let Ok(inner) = serde_json::from_str::<Value>(s)
        {
            return Cow::Owned(inner);
        }
    }
    Cow::Borrowed(v)
}

/// Object members as (name, rendered value) pairs, for custom properties.
pub(super) fn string_map(v: &Value, into: &mut std::collections::BTreeMap<String, String>) {
    if let Value::Object(map) = v {
        for (k, val) in map {
            into.insert(k.clone(), render(val));
        }
    }
}

/// Parses a raw object into a map, tolerating anything else as empty (custom properties may be null).
pub(super) fn raw_object(raw: Option<&RawValue>) -> Map<String, Value> {
    match raw.map(|r| serde_json::from_str::<Value>(r.get())) {
        Some(Ok(Value::Object(map))) => map,
        _ => Map::new(),
    }
}

/// Times as Azure writes them. RFC 3339 with any number of fractional digits and `Z` or an offset; the
/// same without a zone (taken as UTC, which is what Azure means); and the US-style `3/22/2019 1:36:31 PM`
/// of log search V1. Anything else is `None`: a bad timestamp is not a reason to drop an alert.
pub(super) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    const NAIVE: [&str; 5] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %I:%M %p",
        "%m/%d/%Y %H:%M:%S",
    ];
    for format in NAIVE {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc));
    }
    DateTime::parse_from_rfc2822(s).ok().map(|t| t.with_timezone(&Utc))
}

pub(super) fn time_field(v: &Value, keys: &[&str]) -> Option<DateTime<Utc>> {
    field_any(v, keys).and_then(|s| parse_time(&s))
}

/// Severity from `Sev0`..`Sev4`, a digit `0`..`4`, or the words the legacy payloads and activity log
/// levels use (Critical=0, Error=1, Warning=2, Informational=3, Verbose=4). Case-insensitive.
pub(super) fn parse_severity(s: &str) -> Option<Severity> {
    let t = s.trim();
    let digits = match t.get(..3) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sev") => &t[3..],
        _ => t,
    };
    let n = match digits {
        "0" => 0,
        "1" => 1,
        "2" => 2,
        "3" => 3,
        "4" => 4,
        w if w.eq_ignore_ascii_case("critical") => 0,
        w if w.eq_ignore_ascii_case("error") => 1,
        w if w.eq_ignore_ascii_case("warning") => 2,
        w if w.eq_ignore_ascii_case("informational") || w.eq_ignore_ascii_case("information") => 3,
        w if w.eq_ignore_ascii_case("verbose") => 4,
        _ => return None,
    };
    Some(severity_from(n))
}

fn severity_from(n: u8) -> Severity {
    match n {
        0 => Severity::Sev0,
        1 => Severity::Sev1,
        2 => Severity::Sev2,
        3 => Severity::Sev3,
        _ => Severity::Sev4,
    }
}

/// Severity from a parsed value: a string as above, or a number 0..4 (activity log `level` as an enum).
pub(super) fn severity_of(v: &Value) -> Option<Severity> {
    match v {
        Value::String(s) => parse_severity(s),
        Value::Number(n) => n.as_u64().filter(|n| *n <= 4).map(|n| severity_from(n as u8)),
        _ => None,
    }
}

/// The legacy and common monitor conditions: `Activated`/`Fired` and `Deactivated`/`Resolved`.
pub(super) fn parse_condition(s: &str, legacy: bool) -> Option<Condition> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("fired") || (legacy && t.eq_ignore_ascii_case("activated")) {
        Some(Condition::Fired)
    } else if t.eq_ignore_ascii_case("resolved") || (legacy && t.eq_ignore_ascii_case("deactivated")) {
        Some(Condition::Resolved)
    } else {
        None
    }
}

/// One readable line from text that may span lines (a KQL query): whitespace runs become one space and
/// the result is cut at `max` characters, so a 2 MB query does not become a 2 MB summary.
pub(super) fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 4));
    let mut count = 0;
    for word in s.split_whitespace() {
        if count > 0 {
            out.push(' ');
            count += 1;
        }
        // A word that fits (it has no more characters than bytes) goes in whole.
        if count + word.len() <= max {
            out.push_str(word);
            count += word.chars().count();
            continue;
        }
        for c in word.chars() {
            if count >= max {
                out.push_str("...");
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// The last segment of an Azure resource id: its resource name.
pub(super) fn resource_name(id: &str) -> Option<&str> {
    id.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty())
}

pub(super) fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// `one_line` as it was first written, character by character.
    fn one_line_by_char(s: &str, max: usize) -> String {
        let mut out = String::new();
        let mut count = 0;
        for word in s.split_whitespace() {
            if count > 0 {
                out.push(' ');
                count += 1;
            }
            for c in word.chars() {
                if count >= max {
                    out.push_str("...");
                    return out;
                }
                out.push(c);
                count += 1;
            }
        }
        out
    }

    #[test]
    fn one_line_cuts_where_it_did_character_by_character() {
        let texts =
            ["", "a", "abcde", "abcde f", "abcdef", "ab  cd\n\tef  ", " é é é ", "ééééé x", "日本語 テキスト 😀😀 x"];
        for text in texts {
            for max in 0..12 {
                assert_eq!(one_line(text, max), one_line_by_char(text, max), "{text:?} at {max}");
            }
        }
    }
}
