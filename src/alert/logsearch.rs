//! Log search alerts V1 outside the common schema: the Log Analytics webhook (fields at the top level, or
//! under `data`), the Application Insights webhook (`schemaId: Microsoft.Insights/LogAlert`, under
//! `data`), the OMS-era payload, and the custom JSON payload (`alertname`, `IncludeSearchResults`).
//!
//! These payloads are flat and partly user-defined, so the whole body is the alert's context.

use serde_json::Value;

use super::fields::{echo, field, field_any, get, get_any, required_field, severity_of, time_field, value_kind};
use super::model::RowSource;
use super::summary::{self, Findings};
use super::{Alert, Condition, ParseError, Schema, Severity};

pub(super) fn parse(json: &str, schema: Schema, in_data: bool) -> Result<Alert, ParseError> {
    // Valid JSON already; what can fail is serde_json's recursion limit or a number out of range.
    let body: Value = serde_json::from_str(json).map_err(|e| ParseError::invalid("body", e))?;
    let (root, prefix) = if in_data {
        match get(&body, "data") {
            Some(d) if d.is_object() => (d, "data."),
            Some(d) => {
                return Err(ParseError::invalid("data", format_args!("expected an object, got {}", value_kind(d))));
            }
            None => return Err(ParseError::missing("data.AlertRuleName")),
        }
    } else {
        (&body, "")
    };

    let rule = if schema == Schema::LogSearchCustom && get(root, "AlertRuleName").is_none() {
        required_field(root, "alertname", "alertname")?
    } else {
        required_field(root, "AlertRuleName", &format!("{prefix}AlertRuleName"))?
    };
    // Log search V1 severity is a word (Warning) or a digit ("3"); custom JSON may leave it out, in which
    // case Sev3 (Informational), the portal's preselected severity, stands in.
    let severity = match get_any(root, &["Severity", "severity"]) {
        None => Severity::Sev3,
        Some(v) => severity_of(v).ok_or_else(|| {
            let shown = field_any(root, &["Severity", "severity"]).map_or(value_kind(v).into(), |s| s.into_owned());
            ParseError::invalid(
                &format!("{prefix}Severity"),
                format_args!(
                    "expected a severity (Critical, Error, Warning, Informational, Verbose or 0 to 4), got {}",
                    echo(&shown)
                ),
            )
        })?,
    };
    let monitoring_service = if schema == Schema::LogSearchAppInsights || get(root, "ApplicationId").is_some() {
        "Application Insights"
    } else {
        "Log Analytics"
    };

    let mut f = Findings::default();
    summary::log_v1(root, None, &mut f);
    let target_resources = match field(root, "ResourceId") {
        Some(id) => vec![id.into_owned()],
        None => data_sources(root),
    };

    let alert = Alert {
        schema,
        // Nothing in a V1 payload identifies the alert instance; the body hash stands in downstream.
        id: None,
        rule,
        rule_id: None,
        severity,
        signal_type: "Log".to_string(),
        monitoring_service: monitoring_service.to_string(),
        // V1 log alerts are stateless: Azure never sends a resolution for them.
        condition: Condition::Fired,
        target_resources,
        configuration_items: std::mem::take(&mut f.configuration_items),
        // V1 has no firing time; the rule ran, and fired, at the end of its search interval.
        fired_at: time_field(root, &["SearchIntervalEndtimeUtc", "SearchIntervalEndTimeUtc"]),
        resolved_at: None,
        description: field(root, "Description").map(|s| s.into_owned()).unwrap_or_default(),
        custom_properties: Default::default(),
        condition_summary: f.take_lines(),
        links: f.links,
        context: Default::default(),
        body_hash: None,
        rows: RowSource::LogV1 { in_data },
    };
    Ok(Alert { context: body.into(), ..alert })
}

/// The resources the search ran on, from `SearchResult(s).dataSources`, when no `ResourceId` is given.
fn data_sources(root: &Value) -> Vec<String> {
    let Some(Value::Array(sources)) =
        get_any(root, &["SearchResults", "SearchResult"]).and_then(|r| get(r, "dataSources"))
    else {
        return Vec::new();
    };
    let mut ids: Vec<String> = sources.iter().filter_map(|s| field(s, "resourceId")).map(|s| s.into_owned()).collect();
    ids.dedup();
    ids
}
