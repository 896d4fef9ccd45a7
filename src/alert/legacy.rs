//! The payloads action groups send when the common schema is off: the legacy metric alert
//! (`schemaId: AzureMonitorMetricAlert`), the legacy activity log alert (`Microsoft.Insights/activityLogs`,
//! Service Health included), and the classic metric alert before them (no schemaId, top-level `status`
//! and `context`).
//!
//! None of them carries an alert instance id, and only the metric ones name a rule. Where a field is
//! missing the reader says what stands in for it and why.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use super::detect::{Data, Head, to_value};
use super::fields::{
    Scalar, echo, field, get, parse_condition, parse_time, raw_kind, raw_object, render, required_field, resource_name,
    scalar, severity_of, value_kind,
};
use super::model::RowSource;
use super::summary::{self, Findings};
use super::{Alert, Condition, ParseError, Schema, Severity};

/// Severity when a legacy payload has none (the classic metric alert had no such notion). Sev3,
/// Informational, is what the portal preselects for a new alert rule: an alert that does not say how bad it
/// is should neither page anyone nor be dropped.
const DEFAULT_SEVERITY: Severity = Severity::Sev3;

/// `schemaId: AzureMonitorMetricAlert`.
pub(super) fn metric(data: Option<Data<'_>>) -> Result<Alert, ParseError> {
    let data = data.ok_or_else(|| ParseError::missing("data.context"))?;
    let condition = status(data.status, "data.status")?;
    let context = data.context.ok_or_else(|| ParseError::missing("data.context"))?;
    metric_alert(context, "data.context", condition, data.properties)
}

/// The classic metric alert: `{"status": "Activated", "context": {...}, "properties": {...}}`.
pub(super) fn classic_metric(head: &Head<'_>) -> Result<Alert, ParseError> {
    let condition = status(head.status, "status")?;
    let context = to_value(head.context, "context")?.ok_or_else(|| ParseError::missing("context"))?;
    metric_alert(context, "context", condition, head.properties)
}

fn metric_alert(
    context: Value,
    path: &str,
    condition: Condition,
    properties: Option<&RawValue>,
) -> Result<Alert, ParseError> {
    if !context.is_object() {
        return Err(ParseError::invalid(path, format_args!("expected an object, got {}", value_kind(&context))));
    }
    let rule = required_field(&context, "name", &format!("{path}.name"))?;
    let severity = match get(&context, "severity") {
        None => DEFAULT_SEVERITY,
        Some(v) => severity_of(v).ok_or_else(|| {
            let shown = field(&context, "severity").map_or_else(|| value_kind(v).to_string(), |s| echo(&s));
            ParseError::invalid(&format!("{path}.severity"), format_args!("expected 0 to 4, got {shown}"))
        })?,
    };
    let mut f = Findings::default();
    if let Some(cond) = get(&context, "condition") {
        if get(cond, "allOf").is_some() {
            summary::criteria(cond, &mut f);
        } else {
            summary::classic_condition(cond, &mut f);
        }
    }
    f.link("Resource in the portal", get(&context, "portalLink"));
    let resource_id = field(&context, "resourceId").map(|s| s.into_owned());
    let configuration_items = field(&context, "resourceName")
        .map(|s| s.into_owned())
        .or_else(|| resource_id.as_deref().and_then(resource_name).map(str::to_string))
        .into_iter()
        .collect();
    let at = field(&context, "timestamp").and_then(|t| parse_time(&t));
    Ok(Alert {
        schema: Schema::LegacyMetric,
        // The payload has no alert instance id: `context.id` is the rule's id, the same for every firing.
        id: None,
        rule,
        rule_id: field(&context, "id").map(|s| s.into_owned()),
        severity,
        signal_type: "Metric".to_string(),
        monitoring_service: "Platform".to_string(),
        condition,
        target_resources: resource_id.into_iter().collect(),
        configuration_items,
        // `timestamp` is when the status changed: the firing for Activated, the resolution for Deactivated.
        fired_at: if condition == Condition::Fired { at } else { None },
        resolved_at: if condition == Condition::Resolved { at } else { None },
        description: field(&context, "description").map(|s| s.into_owned()).unwrap_or_default(),
        custom_properties: properties_map(properties),
        condition_summary: f.take_lines(),
        links: f.links,
        context: context.into(),
        body_hash: None,
        rows: RowSource::None,
    })
}

/// `schemaId: Microsoft.Insights/activityLogs`.
pub(super) fn activity_log(data: Option<Data<'_>>) -> Result<Alert, ParseError> {
    const EVENT: &str = "data.context.activityLog";
    let data = data.ok_or_else(|| ParseError::missing(EVENT))?;
    // Activity log alerts are stateless and Azure only ever sends `Activated`; an absent status means the same.
    let condition = match data.status {
        None => Condition::Fired,
        some => status(some, "data.status")?,
    };
    let context = data.context.unwrap_or(Value::Null);
    let ev = match get(&context, "activityLog") {
        None => return Err(ParseError::missing(EVENT)),
        Some(ev) if !ev.is_object() => {
            return Err(ParseError::invalid(EVENT, format_args!("expected an object, got {}", value_kind(ev))));
        }
        Some(ev) => ev,
    };
    // The legacy payload names no alert rule. The operation is what an activity log alert rule matches on,
    // so it is the closest stable stand-in and groups the alerts of one rule together.
    let rule = required_field(ev, "operationName", "data.context.activityLog.operationName")?;
    // `level` is the event's level, not a rule severity, but it is the only gravity the payload carries; it
    // comes as a word or as the enum number (Critical=0 .. Verbose=4), the same scale as Sev0..Sev4.
    let severity = get(ev, "level").and_then(severity_of).unwrap_or(DEFAULT_SEVERITY);
    let monitoring_service = activity_service(ev);
    let mut f = Findings::default();
    summary::activity_log(ev, &monitoring_service, &mut f);

    let resource_id = field(ev, "resourceId").map(|s| s.into_owned());
    let configuration_items = resource_id.as_deref().and_then(resource_name).map(str::to_string).into_iter().collect();
    let target = resource_id.or_else(|| {
        // Service Health events concern a subscription, which is what the common schema targets for them.
        if monitoring_service == "ServiceHealth" {
            field(ev, "subscriptionId").map(|s| format!("/subscriptions/{s}"))
        } else {
            get(ev, "authorization").and_then(|a| field(a, "scope")).map(|s| s.into_owned())
        }
    });
    Ok(Alert {
        schema: Schema::LegacyActivityLog,
        // `eventDataId` is unique to one event and the same on every re-delivery of it. `operationId` is
        // shared by an operation's Started and Succeeded events, `correlationId` by a whole deployment, so
        // either would merge distinct notifications.
        id: field(ev, "eventDataId").map(|s| s.into_owned()),
        rule,
        rule_id: None,
        severity,
        signal_type: "Activity Log".to_string(),
        monitoring_service,
        condition,
        target_resources: target.into_iter().collect(),
        configuration_items,
        fired_at: field(ev, "eventTimestamp").and_then(|t| parse_time(&t)),
        resolved_at: None,
        description: field(ev, "description").map(|s| s.into_owned()).unwrap_or_default(),
        custom_properties: properties_map(data.properties),
        condition_summary: f.take_lines(),
        links: f.links,
        context: context.into(),
        body_hash: None,
        rows: RowSource::None,
    })
}

/// The common schema's `monitoringService` for this event, so that downstream rules treat a legacy
/// activity log alert like its common schema twin.
fn activity_service(ev: &Value) -> String {
    let source = field(ev, "eventSource").unwrap_or_default();
    let operation = field(ev, "operationName").unwrap_or_default();
    let starts = |prefix: &str| operation.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    if source.eq_ignore_ascii_case("ServiceHealth") || starts("Microsoft.ServiceHealth/") {
        "ServiceHealth".to_string()
    } else if source.eq_ignore_ascii_case("ResourceHealth") || starts("Microsoft.ResourceHealth/") {
        "Resource Health".to_string()
    } else if !source.is_empty() && source.chars().all(|c| c.is_ascii_alphabetic()) {
        format!("Activity Log - {source}")
    } else {
        "Activity Log".to_string()
    }
}

/// `Activated`/`Deactivated` (also `Fired`/`Resolved`, which some senders use in the legacy envelope).
fn status(raw: Option<&RawValue>, path: &str) -> Result<Condition, ParseError> {
    let raw = raw.ok_or_else(|| ParseError::missing(path))?;
    match scalar(raw) {
        Scalar::Str(s) => parse_condition(&s, true).ok_or_else(|| {
            ParseError::invalid(path, format_args!("expected Activated or Deactivated, got {}", echo(&s)))
        }),
        _ => Err(ParseError::invalid(path, format_args!("expected Activated or Deactivated, got {}", raw_kind(raw)))),
    }
}

fn properties_map(raw: Option<&RawValue>) -> BTreeMap<String, String> {
    raw_object(raw).into_iter().map(|(k, v)| (k, render(&v))).collect()
}
