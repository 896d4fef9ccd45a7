//! The common alert schema (`schemaId: azureMonitorCommonAlertSchema`), for every monitoring service.
//!
//! `data.essentials` is read member by member so that each error names its JSON path; `data.alertContext`
//! is kept whole as the alert's context and interpreted by its shape (see `summary`), so a monitoring
//! service this code has never seen still parses; `data.customProperties` becomes strings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::context::Context;
use super::detect::Data;
use super::fields::{
    Scalar, echo, optional_str, optional_text, parse_condition, parse_severity, parse_time, raw_kind, raw_object,
    raw_str_list, render, required_str, scalar, shown, string_map,
};
use super::model::RowSource;
use super::{Alert, Condition, ParseError, Schema, Severity, summary};

#[derive(Deserialize)]
struct Essentials<'a> {
    #[serde(rename = "alertId", borrow)]
    alert_id: Option<&'a RawValue>,
    #[serde(rename = "alertRule", borrow)]
    alert_rule: Option<&'a RawValue>,
    // Both spellings are documented: `alertRuleID` in the field table, `alertRuleId` in the sample.
    #[serde(rename = "alertRuleID", borrow)]
    alert_rule_id_upper: Option<&'a RawValue>,
    #[serde(rename = "alertRuleId", borrow)]
    alert_rule_id: Option<&'a RawValue>,
    #[serde(borrow)]
    severity: Option<&'a RawValue>,
    #[serde(rename = "signalType", borrow)]
    signal_type: Option<&'a RawValue>,
    #[serde(rename = "monitorCondition", borrow)]
    monitor_condition: Option<&'a RawValue>,
    #[serde(rename = "monitoringService", borrow)]
    monitoring_service: Option<&'a RawValue>,
    #[serde(rename = "alertTargetIDs", borrow)]
    alert_target_ids: Option<&'a RawValue>,
    #[serde(rename = "configurationItems", borrow)]
    configuration_items: Option<&'a RawValue>,
    #[serde(rename = "firedDateTime", borrow)]
    fired: Option<&'a RawValue>,
    #[serde(rename = "resolvedDateTime", borrow)]
    resolved: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(rename = "investigationLink", borrow)]
    investigation_link: Option<&'a RawValue>,
}

const ESSENTIALS: &str = "data.essentials";

pub(super) fn parse(body: &str, data: Option<Data<'_>>) -> Result<Alert, ParseError> {
    let data = data.ok_or_else(|| ParseError::missing(ESSENTIALS))?;
    let raw = data.essentials.ok_or_else(|| ParseError::missing(ESSENTIALS))?;
    if !raw.get().starts_with('{') {
        return Err(ParseError::invalid(ESSENTIALS, format_args!("expected an object, got {}", raw_kind(raw))));
    }
    let e: Essentials<'_> = serde_json::from_str(raw.get()).map_err(|err| ParseError::invalid(ESSENTIALS, err))?;

    let readable = data.alert_context.unwrap_or_default();
    let monitoring_service = optional_str(e.monitoring_service).unwrap_or_default();
    let mut findings = summary::alert_context(&readable.value, &monitoring_service, readable.result_rows);

    let rule = match required_str(e.alert_rule, "data.essentials.alertRule") {
        // Cost Management sends `alertRule: null`; its budget is what the alert is about.
        Err(err) if err.code == "missing_field" => findings.budget_name.take().ok_or(err)?,
        other => other?,
    };
    let condition = monitor_condition(e.monitor_condition)?;
    let severity = severity(e.severity, findings.cost)?;

    let mut custom_properties = BTreeMap::new();
    if let Some(properties) = &findings.custom_properties {
        string_map(properties, &mut custom_properties);
    }
    for (k, v) in raw_object(data.custom_properties) {
        custom_properties.insert(k, render(&v));
    }

    let mut target_resources = raw_str_list(e.alert_target_ids);
    if target_resources.is_empty()
        && let Some(scope) = findings.budget_scope.take()
    {
        target_resources.push(scope);
    }
    let mut configuration_items = raw_str_list(e.configuration_items);
    if configuration_items.is_empty() {
        configuration_items = std::mem::take(&mut findings.configuration_items);
    }
    if let Some(link) = optional_text(e.investigation_link) {
        findings.link_first("Investigate", &link);
    }

    Ok(Alert {
        schema: Schema::CommonAlertSchema,
        id: optional_str(e.alert_id),
        rule,
        rule_id: optional_str(e.alert_rule_id_upper).or_else(|| optional_str(e.alert_rule_id)),
        severity,
        signal_type: optional_str(e.signal_type).unwrap_or_default(),
        monitoring_service,
        condition,
        target_resources,
        configuration_items,
        fired_at: optional_text(e.fired).and_then(|t| parse_time(&t)),
        resolved_at: optional_text(e.resolved).and_then(|t| parse_time(&t)),
        description: optional_text(e.description).map(|d| d.into_owned()).unwrap_or_default(),
        custom_properties,
        condition_summary: findings.take_lines(),
        links: findings.links,
        context: if readable.partial { Context::in_body(body) } else { readable.value.into() },
        body_hash: None,
        rows: RowSource::AlertContext,
    })
}

fn monitor_condition(raw: Option<&RawValue>) -> Result<Condition, ParseError> {
    const PATH: &str = "data.essentials.monitorCondition";
    let raw = raw.ok_or_else(|| ParseError::missing(PATH))?;
    match scalar(raw) {
        Scalar::Str(s) => parse_condition(&s, false)
            .ok_or_else(|| ParseError::invalid(PATH, format_args!("expected Fired or Resolved, got {}", echo(&s)))),
        _ => Err(ParseError::invalid(PATH, format_args!("expected Fired or Resolved, got {}", raw_kind(raw)))),
    }
}

fn severity(raw: Option<&RawValue>, cost: bool) -> Result<Severity, ParseError> {
    const PATH: &str = "data.essentials.severity";
    let Some(raw) = raw else {
        // Cost Management sends `severity: null`: a budget notice is information, which is Sev3.
        return if cost { Ok(Severity::Sev3) } else { Err(ParseError::missing(PATH)) };
    };
    let parsed = match scalar(raw) {
        Scalar::Str(s) => parse_severity(&s),
        Scalar::Num(n) => parse_severity(n),
        _ => None,
    };
    parsed.ok_or_else(|| ParseError::invalid(PATH, format_args!("expected Sev0 to Sev4, got {}", shown(raw))))
}
