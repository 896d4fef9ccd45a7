//! Works out which payload family a body belongs to (by `schemaId`, then by shape) and hands it to the
//! reader for that family.
//!
//! The fast path reads the envelope in one pass: `alertContext` and `context` go straight into JSON values
//! (they are kept whole anyway), everything else is borrowed as raw text and read field by field later.
//! A second pass only happens when the first fails: a `data` that is not an object, a context nested
//! deeper than serde_json's recursion limit, a duplicate key. The slow path then reads the body piece by
//! piece so that the error names the field, and tells "not JSON" from "JSON, but not an alert".

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::context::Readable;
use super::fields::{Scalar, echo, raw_kind, scalar, sha256_hex};
use super::{Alert, ParseError, Schema, common, legacy, logsearch};

/// The top-level keys any supported payload may have. `D` is the fully read `data` on the fast path and
/// its raw text on the slow path.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Top<'a, D> {
    #[serde(rename = "schemaId", borrow)]
    schema_id: Option<&'a RawValue>,
    data: Option<D>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(rename = "AlertRuleName", borrow)]
    alert_rule_name: Option<&'a RawValue>,
    #[serde(rename = "SubscriptionId", borrow)]
    subscription_id: Option<&'a RawValue>,
    #[serde(rename = "AlertType", borrow)]
    alert_type: Option<&'a RawValue>,
    #[serde(borrow)]
    alertname: Option<&'a RawValue>,
    #[serde(rename = "SearchResults", borrow)]
    search_results: Option<&'a RawValue>,
    #[serde(rename = "SearchResult", borrow)]
    search_result: Option<&'a RawValue>,
    #[serde(rename = "IncludeSearchResults", borrow)]
    include_search_results: Option<&'a RawValue>,
}

/// The `data` member, read for every family that has one. Unknown members are skipped without being
/// built, which is most of a log search V1 payload's `data`.
#[derive(Deserialize, Default)]
pub(super) struct Data<'a> {
    #[serde(borrow)]
    pub essentials: Option<&'a RawValue>,
    #[serde(rename = "alertContext")]
    pub alert_context: Option<Readable>,
    #[serde(rename = "customProperties", borrow)]
    pub custom_properties: Option<&'a RawValue>,
    #[serde(borrow)]
    pub status: Option<&'a RawValue>,
    pub context: Option<Value>,
    #[serde(borrow)]
    pub properties: Option<&'a RawValue>,
    #[serde(rename = "AlertRuleName", borrow)]
    pub alert_rule_name: Option<&'a RawValue>,
}

/// `Data` with its JSON members still raw, for the slow path.
#[derive(Deserialize)]
struct DataRaw<'a> {
    #[serde(borrow)]
    essentials: Option<&'a RawValue>,
    #[serde(rename = "alertContext", borrow)]
    alert_context: Option<&'a RawValue>,
    #[serde(rename = "customProperties", borrow)]
    custom_properties: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(rename = "AlertRuleName", borrow)]
    alert_rule_name: Option<&'a RawValue>,
}

enum DataPart<'a> {
    Absent,
    Parsed(Data<'a>),
    Raw(&'a RawValue),
}

impl<'a> DataPart<'a> {
    /// The `data` member, read now if the fast path could not; errors name `data` or its member.
    fn resolve(self) -> Result<Option<Data<'a>>, ParseError> {
        let raw = match self {
            DataPart::Absent => return Ok(None),
            DataPart::Parsed(data) => return Ok(Some(data)),
            DataPart::Raw(raw) => raw,
        };
        if !raw.get().starts_with('{') {
            return Err(ParseError::invalid("data", format_args!("expected an object, got {}", raw_kind(raw))));
        }
        let r: DataRaw<'a> = serde_json::from_str(raw.get()).map_err(|e| ParseError::invalid("data", e))?;
        Ok(Some(Data {
            essentials: r.essentials,
            alert_context: r
                .alert_context
                .map(|raw| serde_json::from_str::<Readable>(raw.get()))
                .transpose()
                .map_err(|e| ParseError::invalid("data.alertContext", format_args!("{e} of the member")))?,
            custom_properties: r.custom_properties,
            status: r.status,
            context: to_value(r.context, "data.context")?,
            properties: r.properties,
            alert_rule_name: r.alert_rule_name,
        }))
    }
}

/// A raw member as a JSON value. Its text is valid JSON already, so what fails here is serde_json's
/// recursion limit or a number out of range; the limit stays, it is what keeps the stack safe.
pub(super) fn to_value(raw: Option<&RawValue>, path: &str) -> Result<Option<Value>, ParseError> {
    raw.map(|r| {
        serde_json::from_str::<Value>(r.get())
            // serde_json counts lines and columns from the start of the member here, not of the body.
            .map_err(|e| ParseError::invalid(path, format_args!("{e} of the member")))
    })
    .transpose()
}

/// The top-level members other than `data`.
pub(super) struct Head<'a> {
    schema_id: Option<&'a RawValue>,
    pub status: Option<&'a RawValue>,
    pub context: Option<&'a RawValue>,
    pub properties: Option<&'a RawValue>,
    alert_rule_name: Option<&'a RawValue>,
    subscription_id: Option<&'a RawValue>,
    alert_type: Option<&'a RawValue>,
    alertname: Option<&'a RawValue>,
    search_results: Option<&'a RawValue>,
    search_result: Option<&'a RawValue>,
    include_search_results: Option<&'a RawValue>,
}

impl<'a, D> Top<'a, D> {
    fn split(self) -> (Head<'a>, Option<D>) {
        let head = Head {
            schema_id: self.schema_id,
            status: self.status,
            context: self.context,
            properties: self.properties,
            alert_rule_name: self.alert_rule_name,
            subscription_id: self.subscription_id,
            alert_type: self.alert_type,
            alertname: self.alertname,
            search_results: self.search_results,
            search_result: self.search_result,
            include_search_results: self.include_search_results,
        };
        (head, self.data)
    }
}

pub(super) fn parse(body: &[u8]) -> Result<Alert, ParseError> {
    // A UTF-8 byte order mark is not JSON, but some senders add one; the hash still covers it.
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // JSON is UTF-8 (RFC 8259). Checking it up front also matters because serde_json does not look inside
    // the strings it skips, and reading text spares it a UTF-8 check per string it keeps.
    let text = std::str::from_utf8(json).map_err(|e| ParseError::not_utf8(json, e.valid_up_to()))?;
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(not_an_object(text));
    }
    let (head, data) = match serde_json::from_str::<Top<'_, Data<'_>>>(text) {
        Ok(top) => {
            let (head, data) = top.split();
            (head, data.map_or(DataPart::Absent, DataPart::Parsed))
        }
        Err(_) => {
            if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
                return Err(ParseError::not_json(&e));
            }
            // Valid JSON that the fast path refused: only a duplicate top-level key fails here too.
            let top = serde_json::from_str::<Top<'_, &RawValue>>(text)
                .map_err(|e| ParseError { code: "invalid_field", message: format!("invalid top-level field: {e}") })?;
            let (head, data) = top.split();
            (head, data.map_or(DataPart::Absent, DataPart::Raw))
        }
    };
    let mut alert = dispatch(text, head, data)?;
    // Only a payload without an id is identified by its body; hashing one of 10 KB takes ~6 µs.
    if alert.id.is_none() {
        alert.body_hash = Some(sha256_hex(body));
    }
    Ok(alert)
}

fn dispatch(json: &str, head: Head<'_>, data: DataPart<'_>) -> Result<Alert, ParseError> {
    let schema_id = match head.schema_id.map(scalar) {
        None => None,
        Some(Scalar::Str(s)) => Some(s),
        Some(_) => {
            let kind = head.schema_id.map_or("null", raw_kind);
            return Err(ParseError::invalid("schemaId", format_args!("expected a string, got {kind}")));
        }
    };
    if let Some(id) = schema_id.as_deref() {
        let id = id.trim();
        return if id.eq_ignore_ascii_case("azureMonitorCommonAlertSchema") {
            common::parse(json, data.resolve()?)
        } else if id.eq_ignore_ascii_case("AzureMonitorMetricAlert") {
            legacy::metric(data.resolve()?)
        } else if id.eq_ignore_ascii_case("Microsoft.Insights/activityLogs") {
            legacy::activity_log(data.resolve()?)
        } else if id.eq_ignore_ascii_case("Microsoft.Insights/LogAlert") {
            logsearch::parse(json, Schema::LogSearchAppInsights, true)
        } else {
            // A schema id we do not know, around a common schema envelope: read it rather than lose it.
            match data.resolve() {
                Ok(Some(d)) if d.essentials.is_some() => common::parse(json, Some(d)),
                _ => Err(ParseError::not_an_alert(format_args!("unknown schemaId {}", echo(id)))),
            }
        };
    }
    // No schemaId: decide by shape. A custom JSON payload may have a `data` of its own, so a `data` that
    // cannot be read is not an error here.
    let data = data.resolve().ok().flatten();
    if let Some(d) = data {
        if d.essentials.is_some() {
            return common::parse(json, Some(d));
        }
        if d.alert_rule_name.is_some() {
            return logsearch::parse(json, Schema::LogSearchLogAnalytics, true);
        }
    }
    if head.alert_rule_name.is_some() {
        // The Log Analytics webhook (API up to 2018-04-16) always names the subscription and the alert
        // type; the OMS-era payload, which has the same core fields, has neither.
        let schema = if head.subscription_id.is_some() || head.alert_type.is_some() {
            Schema::LogSearchLogAnalytics
        } else {
            Schema::LogSearchCustom
        };
        return logsearch::parse(json, schema, false);
    }
    if head.alertname.is_some()
        || head.search_results.is_some()
        || head.search_result.is_some()
        || head.include_search_results.is_some()
    {
        return logsearch::parse(json, Schema::LogSearchCustom, false);
    }
    if head.status.is_some() && head.context.is_some() {
        return legacy::classic_metric(&head);
    }
    Err(ParseError::not_an_alert(
        "an object with none of schemaId, data.essentials, AlertRuleName, alertname or status and context",
    ))
}

/// A body that does not start with `{`: not JSON at all, or JSON of the wrong kind.
fn not_an_object(text: &str) -> ParseError {
    if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
        return ParseError::not_json(&e);
    }
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    ParseError::not_an_alert(format_args!("{kind} at the top level"))
}
