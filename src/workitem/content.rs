//! What a work item says: the template scope built from an alert, and the product-neutral content
//! (title, description, severity, configuration item, extra fields) that each product maps to its fields.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::alert::{Alert, Condition, Context, Severity};
use crate::workitem::template::{Names, Template};

/// The values templates can name (`{{ rule }}`, `{{ customProperties.team }}`, ...); built once per alert.
/// `context` is borrowed from the alert, and only built if a template reads it: it is most of a large alert,
/// and copying it cost more than the rest of the decision.
pub struct Scope<'a> {
    names: Value,
    context: &'a Context,
    alert: &'a Alert,
    /// [`describe`] of the alert, written once for all its work items: it lists every configuration item, so
    /// writing it again for each of them (per-CI grouping) took time in the square of their number.
    description: OnceLock<String>,
}

impl<'a> Scope<'a> {
    pub fn new(alert: &'a Alert) -> Scope<'a> {
        let resource = alert.first_target().unwrap_or_default();
        let parts = ResourceId::parse(resource);
        let configuration_item = alert.configuration_item();
        let properties: Map<String, Value> =
            alert.custom_properties.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let names = json!({
            "alertId": alert.id,
            "schema": alert.schema,
            "rule": alert.rule,
            "ruleId": alert.rule_id,
            "severity": alert.severity.as_str(),
            "severityNumber": alert.severity.number(),
            "condition": condition_word(alert.condition),
            "signalType": alert.signal_type,
            "monitoringService": alert.monitoring_service,
            "description": alert.description,
            "firedAt": alert.fired_at.map(|t| t.to_rfc3339()),
            "resolvedAt": alert.resolved_at.map(|t| t.to_rfc3339()),
            "targetResources": alert.target_resources,
            "resource": resource,
            "resourceName": parts.name,
            "resourceGroup": parts.resource_group,
            "subscription": parts.subscription,
            "resourceType": parts.resource_type,
            "configurationItems": alert.configuration_items,
            "configurationItem": configuration_item,
            "customProperties": properties,
        });
        Scope { names, context: alert.lazy_context(), alert, description: OnceLock::new() }
    }

    fn description(&self) -> &str {
        self.description.get_or_init(|| describe(self.alert))
    }

    fn str(&self, name: &str) -> &str {
        self.names.get(name).and_then(Value::as_str).unwrap_or_default()
    }
}

impl Names for Scope<'_> {
    fn name(&self, name: &str) -> Option<&Value> {
        if name == "context" { Some(self.context.value()) } else { self.names.get(name) }
    }
}

pub fn condition_word(condition: Condition) -> &'static str {
    match condition {
        Condition::Fired => "Fired",
        Condition::Resolved => "Resolved",
    }
}

/// The parts of an Azure resource id: `/subscriptions/S/resourceGroups/G/providers/NS/TYPE/NAME`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResourceId<'a> {
    pub subscription: &'a str,
    pub resource_group: &'a str,
    pub resource_type: String,
    pub name: &'a str,
}

impl<'a> ResourceId<'a> {
    pub fn parse(id: &'a str) -> ResourceId<'a> {
        let segments: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
        let after = |key: &str| {
            segments
                .iter()
                .position(|s| s.eq_ignore_ascii_case(key))
                .and_then(|i| segments.get(i + 1).copied())
                .unwrap_or_default()
        };
        let resource_type = match segments.iter().rposition(|s| s.eq_ignore_ascii_case("providers")) {
            Some(i) if segments.len() > i + 2 => {
                // Namespace, then type/name pairs: the type is every type segment joined.
                let rest = &segments[i + 1..];
                let mut parts = vec![rest[0]];
                parts.extend(rest[1..].iter().step_by(2));
                parts.join("/")
            }
            _ => String::new(),
        };
        let name = if segments.iter().any(|s| s.eq_ignore_ascii_case("providers")) {
            segments.last().copied().unwrap_or_default()
        } else {
            // Not a resource id (a computer name, say): the whole thing is the name.
            id
        };
        ResourceId {
            subscription: after("subscriptions"),
            resource_group: after("resourceGroups"),
            resource_type,
            name,
        }
    }
}

/// Field templates by product field name (`assignment_group`, `category`, ...).
pub type Fields = BTreeMap<String, Template>;

/// One work item's content, before a product maps it to its own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    /// The hex key that ties every delivery of one problem to one work item.
    pub correlation_key: String,
    /// The configuration item this work item is about (per-CI grouping: that CI).
    pub configuration_item: String,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    /// Rendered fields from the connection's defaults, overridden by the chosen template's.
    pub fields: BTreeMap<String, String>,
}

impl Content {
    pub fn build(
        alert: &Alert,
        scope: &Scope,
        correlation_key: String,
        configuration_item: Option<&str>,
        field_sets: &[&Fields],
    ) -> Content {
        let configuration_item = configuration_item.unwrap_or_else(|| scope.str("configurationItem")).to_string();
        let target = if configuration_item.is_empty() { scope.str("resourceName") } else { &configuration_item };
        let title = if target.is_empty() { alert.rule.clone() } else { format!("{} on {}", alert.rule, target) };
        let mut fields = BTreeMap::new();
        for set in field_sets {
            for (name, template) in set.iter() {
                fields.insert(name.clone(), template.render(scope));
            }
        }
        Content {
            correlation_key,
            configuration_item,
            title,
            description: scope.description().to_string(),
            severity: alert.severity,
            fields,
        }
    }
}

/// A readable summary first (what, where, when, the condition, links), then the essentials.
pub fn describe(alert: &Alert) -> String {
    let mut out = String::with_capacity(512);
    let verb = match alert.condition {
        Condition::Fired => "fired",
        Condition::Resolved => "was resolved",
    };
    let _ = writeln!(out, "Azure Monitor alert \"{}\" {verb}.", alert.rule);
    if !alert.description.is_empty() {
        let _ = writeln!(out, "{}", alert.description);
    }
    out.push('\n');
    let _ = writeln!(out, "Severity: {}", alert.severity.as_str());
    if !alert.signal_type.is_empty() || !alert.monitoring_service.is_empty() {
        let _ = writeln!(out, "Signal: {} ({})", alert.signal_type, alert.monitoring_service);
    }
    for resource in &alert.target_resources {
        let _ = writeln!(out, "Resource: {resource}");
    }
    if !alert.configuration_items.is_empty() {
        let _ = writeln!(out, "Configuration items: {}", alert.configuration_items.join(", "));
    }
    if let Some(at) = alert.fired_at {
        let _ = writeln!(out, "Fired: {}", at.to_rfc3339());
    }
    if let Some(at) = alert.resolved_at {
        let _ = writeln!(out, "Resolved: {}", at.to_rfc3339());
    }
    if !alert.condition_summary.is_empty() {
        out.push_str("\nCondition:\n");
        for line in &alert.condition_summary {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !alert.links.is_empty() {
        out.push_str("\nLinks:\n");
        for (label, url) in &alert.links {
            let _ = writeln!(out, "  {label}: {url}");
        }
    }
    if !alert.custom_properties.is_empty() {
        out.push_str("\nCustom properties:\n");
        for (k, v) in &alert.custom_properties {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    out.push('\n');
    if let Some(id) = &alert.id {
        let _ = writeln!(out, "Alert id: {id}");
    }
    if let Some(rule_id) = &alert.rule_id {
        let _ = writeln!(out, "Alert rule: {rule_id}");
    }
    out.push_str("Sent by itsmc");
    out
}

#[cfg(test)]
mod tests {
    use super::{ResourceId, Scope};
    use crate::workitem::template::Template;

    #[test]
    fn templates_read_the_alert_and_its_borrowed_context() {
        let body = serde_json::json!({
            "schemaId": "azureMonitorCommonAlertSchema",
            "data": {
                "essentials": {
                    "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/a1",
                    "alertRule": "cpu-high", "severity": "Sev1", "signalType": "Metric",
                    "monitorCondition": "Fired", "monitoringService": "Platform",
                    "alertTargetIDs": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"],
                    "firedDateTime": "2026-11-25T12:00:00Z"
                },
                "alertContext": {"condition": {"allOf": [{"metricName": "Percentage CPU", "metricValue": 97.5}]}},
                "customProperties": {"team": "web"}
            }
        });
        let alert = crate::alert::parse(body.to_string().as_bytes()).expect("a common schema alert");
        let scope = Scope::new(&alert);
        let template = Template::compile(
            "{{ rule }}/{{ resourceGroup }}/{{ customProperties.team }}: \
             {{ context.condition.allOf[0].metricName }}={{ context.condition.allOf.0.metricValue }}{{ context.nothing }}",
        )
        .expect("compiles");
        assert_eq!(template.render(&scope), "cpu-high/rg/web: Percentage CPU=97.5");
        assert_eq!(
            Template::compile("{{ context | json }}").unwrap().render(&scope),
            body["data"]["alertContext"].to_string()
        );
    }

    #[test]
    fn resource_id_parts() {
        let id =
            ResourceId::parse("/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1");
        assert_eq!(id.subscription, "s1");
        assert_eq!(id.resource_group, "rg1");
        assert_eq!(id.resource_type, "Microsoft.Compute/virtualMachines");
        assert_eq!(id.name, "vm1");
        let nested =
            ResourceId::parse("/subscriptions/s/resourcegroups/g/providers/Microsoft.Sql/servers/a/databases/b");
        assert_eq!(nested.resource_type, "Microsoft.Sql/servers/databases");
        assert_eq!(nested.name, "b");
        assert_eq!(ResourceId::parse("web01").name, "web01");
        assert_eq!(ResourceId::parse("").name, "");
    }
}
