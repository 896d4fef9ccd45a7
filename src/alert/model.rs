//! The one normalized `Alert` that every Azure Monitor payload becomes.
//!
//! Everything after parsing (decision, templates, ITSM mapping) reads only this type, so a new payload
//! variant is a change in `alert/` alone.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::context::Context;
use super::fields::get;
use super::summary;

/// Which payload family the alert arrived in. Kept for the work item's description and for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Schema {
    /// `schemaId: azureMonitorCommonAlertSchema`, every monitoring service.
    CommonAlertSchema,
    /// `schemaId: AzureMonitorMetricAlert` (legacy metric alert, Activated/Deactivated).
    LegacyMetric,
    /// `schemaId: Microsoft.Insights/activityLogs` (legacy activity log alert).
    LegacyActivityLog,
    /// Log search V1 for Log Analytics: no schemaId, `data.AlertRuleName` or top-level `AlertRuleName`.
    LogSearchLogAnalytics,
    /// `schemaId: Microsoft.Insights/LogAlert` (log search V1 for Application Insights).
    LogSearchAppInsights,
    /// The custom-JSON log alert payload (`alertname`, `SearchResults`), and the OMS-era form.
    LogSearchCustom,
}

/// Fired or Resolved. Legacy `Activated` maps to Fired, `Deactivated`/`Resolved` to Resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Condition {
    Fired,
    Resolved,
}

/// Azure Monitor severity. `Sev0` is critical, `Sev4` verbose. Legacy words map: Critical=0, Error=1,
/// Warning=2, Informational=3, Verbose=4; digits "0".."4" map to themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    Sev0,
    Sev1,
    Sev2,
    Sev3,
    Sev4,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Sev0 => "Sev0",
            Severity::Sev1 => "Sev1",
            Severity::Sev2 => "Sev2",
            Severity::Sev3 => "Sev3",
            Severity::Sev4 => "Sev4",
        }
    }
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// One alert, whatever payload it came in.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub schema: Schema,
    /// The alert's own id (`essentials.alertId`, or the legacy payload's nearest equivalent). `None` for
    /// legacy payloads that carry no id; the delivery then falls back to `body_hash`, the correlation to rule
    /// and targets.
    pub id: Option<String>,
    pub rule: String,
    /// The alert rule's resource id, when the payload names it (`alertRuleID` or `alertRuleId`, legacy `context.id`).
    pub rule_id: Option<String>,
    pub severity: Severity,
    /// `Metric`, `Log`, `Activity Log`, ... as Azure spells it; empty when the payload does not say.
    pub signal_type: String,
    /// `Platform`, `Log Alerts V2`, `ServiceHealth`, `Application Insights`, ...; empty when unknown.
    pub monitoring_service: String,
    pub condition: Condition,
    /// Azure resource ids the alert is about (`alertTargetIDs`, legacy `resourceId`).
    pub target_resources: Vec<String>,
    /// Configuration items (`configurationItems`, `AffectedConfigurationItems`); may be empty.
    pub configuration_items: Vec<String>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub description: String,
    /// `customProperties` (common schema), legacy `properties`; values rendered as strings.
    pub custom_properties: BTreeMap<String, String>,
    /// Human-readable lines that say what the condition was and what value crossed it,
    /// e.g. `Percentage CPU GreaterThan 25 (Average over PT5M): 7.727`.
    pub condition_summary: Vec<String>,
    /// Links worth a click, as (label, url): search results, portal links.
    pub links: Vec<(String, String)>,
    /// The alert context untouched (`alertContext`, legacy `context`, or the whole body for log V1), so that
    /// templates can read any field and an unknown context still travels. See [`Alert::context`].
    pub(super) context: Context,
    /// SHA-256 (hex) of the request body, for payloads without an id: `Some` exactly when `id` is `None`.
    /// Hashing takes ~6 µs for a 10 KB body, so it is left out when the id identifies the alert.
    pub body_hash: Option<String>,
    /// Where in `context` the parser found the search rows, for [`Alert::search_rows`].
    #[serde(skip)]
    pub(super) rows: RowSource,
}

/// Where an alert's search rows are in its `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum RowSource {
    /// The payload has none (legacy metric and activity log alerts).
    #[default]
    None,
    /// A common schema `alertContext`, read by its shape: a simple log alert's `condition.allOf[].event`,
    /// or log search V1's `SearchResults`.
    AlertContext,
    /// `SearchResults` (or `SearchResult`) of a log search V1 webhook body: at its root, or under `data`.
    LogV1 { in_data: bool },
}

impl Alert {
    /// The alert context as JSON (see [`Context`]).
    pub fn context(&self) -> &serde_json::Value {
        self.context.value()
    }

    /// The context, not yet built, for holders that may never read it.
    pub fn lazy_context(&self) -> &Context {
        &self.context
    }

    /// Resource group, subscription and resource name of the first target resource, parsed from its id.
    pub fn first_target(&self) -> Option<&str> {
        self.target_resources.first().map(String::as_str)
    }

    /// The computer or resource the alert is about: its first configuration item, else its first target
    /// resource's name (empty when it has neither).
    pub fn configuration_item(&self) -> String {
        match self.configuration_items.first() {
            Some(item) => item.clone(),
            None => crate::workitem::ResourceId::parse(self.first_target().unwrap_or_default()).name.to_string(),
        }
    }

    /// Rows of a log search result, for per-row grouping (ITSMC's Event mode): one JSON object per row,
    /// column name to value. Empty when the payload carries no results.
    ///
    /// Built from `context` on each call: the alert path does not need them, and building them took half
    /// the parse of a 10 KB log alert (~8 µs).
    pub fn search_rows(&self) -> Vec<serde_json::Value> {
        match self.rows {
            RowSource::None => Vec::new(),
            RowSource::AlertContext => summary::alert_context_rows(self.context()),
            RowSource::LogV1 { in_data: false } => summary::log_v1_rows(self.context()),
            RowSource::LogV1 { in_data: true } => {
                get(self.context(), "data").map(summary::log_v1_rows).unwrap_or_default()
            }
        }
    }
}
