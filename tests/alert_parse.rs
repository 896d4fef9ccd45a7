//! `alert::parse` against every Azure Monitor fixture, the traps those payloads are known to hold, and
//! bodies that must be refused (with the right code and a message naming the field) without a panic.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use itsmc::alert::{Alert, Condition, ParseError, Schema, Severity, parse};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure-monitor");

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}

fn ok(body: &[u8]) -> Alert {
    parse(body).unwrap_or_else(|e| panic!("expected an alert, got {e:?}"))
}

fn ok_json(body: &Value) -> Alert {
    ok(&serde_json::to_vec(body).expect("serializes"))
}

fn err_json(body: &Value) -> ParseError {
    match parse(&serde_json::to_vec(body).expect("serializes")) {
        Ok(a) => panic!("expected an error, got an alert for rule {:?}", a.rule),
        Err(e) => e,
    }
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

/// Common schema essentials for wrapping the bare `alertContext` samples and for building variants.
fn essentials(monitoring_service: &str, signal_type: &str) -> Value {
    json!({
        "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/a1",
        "alertRule": "rule-1",
        "severity": "Sev2",
        "signalType": signal_type,
        "monitorCondition": "Fired",
        "monitoringService": monitoring_service,
        "alertTargetIDs": ["/subscriptions/s/resourcegroups/g/providers/microsoft.compute/virtualmachines/vm1"],
        "configurationItems": ["vm1"],
        "originAlertId": "o1",
        "firedDateTime": "2025-04-15T18:04:40.852Z",
        "description": "",
        "essentialsVersion": "1.0",
        "alertContextVersion": "1.0"
    })
}

fn envelope(essentials: Value, alert_context: Value) -> Value {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": { "essentials": essentials, "alertContext": alert_context, "customProperties": null }
    })
}

/// A bare `alertContext` fixture inside the common schema envelope it arrives in.
fn wrapped(fixture: &str, monitoring_service: &str, signal_type: &str) -> (Alert, Value) {
    let fragment = fixture_json(fixture);
    let context = fragment.get("alertContext").cloned().expect("fragment has alertContext");
    let alert = ok_json(&envelope(essentials(monitoring_service, signal_type), context.clone()));
    (alert, context)
}

// ---------------------------------------------------------------------------------------------------------
// Every fixture.

struct Expect {
    file: &'static str,
    schema: Schema,
    rule: &'static str,
    severity: Severity,
    condition: Condition,
    signal_type: &'static str,
    monitoring_service: &'static str,
    id: Option<&'static str>,
    targets: &'static [&'static str],
    items: &'static [&'static str],
    fired: Option<&'static str>,
    resolved: Option<&'static str>,
    custom: &'static [(&'static str, &'static str)],
    /// The first condition line, exactly.
    summary: &'static str,
    rows: usize,
    links: usize,
    rule_id: Option<&'static str>,
}

const CAS_ID: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/eeeeeeee-4444-5555-6666-ffffffffffff";
const KEYS: &[(&str, &str)] = &[("customKey1", "value1"), ("customKey2", "value2")];
const STORAGE: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/Microsoft.Storage/storageAccounts/test-storageAccount";
const WORKSPACE: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.operationalinsights/workspaces/test-logAnalyticsWorkspace";
const WORKSPACE_V1: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/Microsoft.OperationalInsights/workspaces/test-logAnalyticsWorkspace";

fn expectations() -> Vec<Expect> {
    vec![
        Expect {
            file: "cas-metric-static-resolved.json",
            schema: Schema::CommonAlertSchema,
            rule: "WCUS-R2-Gen2",
            severity: Severity::Sev3,
            condition: Condition::Resolved,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: Some(
                "/subscriptions/<subscription ID>/providers/Microsoft.AlertsManagement/alerts/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e",
            ),
            targets: &[
                "/subscriptions/<subscription ID>/resourcegroups/pipelinealertrg/providers/microsoft.compute/virtualmachines/wcus-r2-gen2",
            ],
            items: &["wcus-r2-gen2"],
            fired: Some("2019-03-22T13:58:24.3713213Z"),
            resolved: Some("2019-03-22T14:03:16.2246313Z"),
            custom: &[],
            summary: "Percentage CPU GreaterThan 25 (Average over PT5M): 7.727",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-log-v2-resource-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "AcmeRule",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Alerts V2",
            id: Some(
                "/subscriptions/12345a-1234b-123c-123d-12345678e/providers/Microsoft.AlertsManagement/alerts/12345a-1234b-123c-123d-12345678e",
            ),
            targets: &[
                "/subscriptions/12345a-1234b-123c-123d-12345678e/resourcegroups/ai-engineering/providers/microsoft.compute/virtualmachines/testvm",
            ],
            items: &[],
            fired: Some("2020-07-09T14:04:49.99645Z"),
            resolved: None,
            custom: &[("name1", "value1"), ("name2", "value2")],
            summary: "Heartbeat | count LowerThan 1: 0",
            rows: 0,
            links: 2,
            rule_id: None,
        },
        Expect {
            file: "cas-test-activitylog-administrative-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-activityLogAlertRule",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Activity Log",
            monitoring_service: "Activity Log - Administrative",
            id: Some(
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/microsoft.insights/activityLogAlerts/Test_Alert",
            ),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.compute/virtualmachines/test-VM",
            ],
            items: &["test-VM"],
            fired: Some("2025-04-15T11:26:21.386Z"),
            resolved: None,
            custom: &[],
            summary: "Microsoft.Compute/virtualMachines/restart/action: Succeeded by user@contoso.com",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-test-availability-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-availabilityTest-test-applicationInsights",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: Some(CAS_ID),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.insights/components/test-applicationInsights",
            ],
            items: &["test-applicationInsights"],
            fired: Some("2025-04-15T17:42:34.824Z"),
            resolved: None,
            custom: KEYS,
            summary: "FailedLocation GreaterThan 2 (Sum over PT5M, web test test-availabilityTest-test-applicationInsights): 5",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-test-budget-forecasted-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "Test_forcasted_budget",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "",
            monitoring_service: "CostAlerts",
            id: Some(
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.CostManagement/alerts/Test_Alert",
            ),
            targets: &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"],
            items: &["budgets"],
            fired: Some("2025-04-15T17:49:34.022Z"),
            resolved: None,
            custom: &[],
            summary: "Budget Test_forcasted_budget (Forecasted): spent $999.99, threshold $50.00, budget $50.00",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-test-log-v1-number-of-results-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-logAlertRule-v1-numResults",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Analytics",
            id: Some(CAS_ID),
            targets: &[WORKSPACE],
            items: &["test-computer"],
            fired: Some("2025-04-15T18:04:40.852Z"),
            resolved: None,
            custom: &[],
            summary: "Heartbeat | Number of results Greater Than 0: 1",
            rows: 1,
            links: 2,
            rule_id: None,
        },
        Expect {
            file: "cas-test-log-v2-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-logAlertRule-v2",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Alerts V2",
            id: Some(CAS_ID),
            targets: &[WORKSPACE],
            items: &["test-computer"],
            fired: Some("2025-04-15T18:08:03.626Z"),
            resolved: None,
            custom: KEYS,
            summary: "Heartbeat | count GreaterThan 0: 3",
            rows: 0,
            links: 4,
            rule_id: None,
        },
        Expect {
            file: "cas-test-metric-dynamic-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-dynamicMetricAlertRule",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: Some(CAS_ID),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/Microsoft.Storage/storageAccounts/test-storageAccount",
            ],
            items: &["test-storageAccount"],
            fired: Some("2025-04-15T18:15:16.104Z"),
            resolved: None,
            custom: KEYS,
            summary: "Transactions GreaterThan 0.3 (Average over PT15M, dynamic threshold, Low sensitivity): 78.09",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-test-metric-static-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-metricAlertRule",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: Some(CAS_ID),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.storage/storageaccounts/test-storageAccount",
            ],
            items: &["test-storageAccount"],
            fired: Some("2025-04-15T18:17:12.851Z"),
            resolved: None,
            custom: KEYS,
            summary: "Transactions GreaterThan 0 (Total over PT5M): 100",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "cas-test-resourcehealth-fired.json",
            schema: Schema::CommonAlertSchema,
            rule: "test-ResourceHealthAlertRule",
            severity: Severity::Sev4,
            condition: Condition::Fired,
            signal_type: "Activity Log",
            monitoring_service: "Resource Health",
            id: Some(CAS_ID),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.compute/virtualmachines/test-VM",
            ],
            items: &["test-VM"],
            fired: Some("2025-04-15T18:19:45.304Z"),
            resolved: None,
            custom: &[],
            summary: "Rebooted by user",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "legacy-activitylog-administrative.json",
            schema: Schema::LegacyActivityLog,
            rule: "Microsoft.Compute/virtualMachines/restart/action",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Activity Log",
            monitoring_service: "Activity Log - Administrative",
            id: Some("bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"),
            targets: &[
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/Microsoft.Compute/virtualMachines/test-VM",
            ],
            items: &["test-VM"],
            fired: Some("2021-11-16T08:27:36.1836909+00:00"),
            resolved: None,
            custom: KEYS,
            summary: "Microsoft.Compute/virtualMachines/restart/action: Succeeded by user-email@domain.com",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "legacy-activitylog-servicehealth.json",
            schema: Schema::LegacyActivityLog,
            rule: "Microsoft.ServiceHealth/incident/action",
            severity: Severity::Sev2,
            condition: Condition::Fired,
            signal_type: "Activity Log",
            monitoring_service: "ServiceHealth",
            id: Some("12345678-1234-1234-1234-1234567890ab"),
            targets: &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"],
            items: &[],
            fired: Some("2021-11-17T05:34:44.5778226+00:00"),
            resolved: None,
            custom: KEYS,
            summary: "Incident: Test Action Group - Test Service Health Alert",
            rows: 0,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "legacy-log-alert-appinsights-webhook.json",
            schema: Schema::LogSearchAppInsights,
            rule: "AcmeRule",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Application Insights",
            id: None,
            targets: &[],
            items: &[],
            fired: Some("2018-03-26T09:10:40Z"),
            resolved: None,
            custom: &[],
            summary: "requests | where resultCode == \"500\" | summarize AggregatedValue = Count by bin(Timestamp, 5m), IP | Metric measurement Greater Than 0: 2",
            rows: 2,
            links: 2,
            rule_id: None,
        },
        Expect {
            file: "legacy-log-alert-custom-json-searchresults.json",
            schema: Schema::LogSearchCustom,
            rule: "AcmeRule",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Analytics",
            id: None,
            targets: &[],
            items: &[],
            fired: None,
            resolved: None,
            custom: &[],
            summary: "Log search returned 2 rows",
            rows: 2,
            links: 0,
            rule_id: None,
        },
        Expect {
            file: "legacy-log-alert-loganalytics-webhook.json",
            schema: Schema::LogSearchLogAnalytics,
            rule: "AcmeRule",
            severity: Severity::Sev2,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Analytics",
            id: None,
            targets: &[],
            items: &["INC-Gen2Alert"],
            fired: Some("2018-03-26T09:10:40Z"),
            resolved: None,
            custom: &[],
            summary: "Perf | where ObjectName == \"Processor\" and CounterName == \"% Processor Time\" | summarize AggregatedValue = avg(CounterValue) by bin(TimeGenerated, 5m), Computer | Metric measurement Greater Than 0: 2",
            rows: 2,
            links: 2,
            rule_id: None,
        },
        Expect {
            file: "legacy-log-alert-v1-metric-measurement.json",
            schema: Schema::LogSearchLogAnalytics,
            rule: "test-logAlertRule-v1-metricMeasurement",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Analytics",
            id: None,
            targets: &[WORKSPACE_V1],
            items: &[],
            fired: Some("2021-11-16T15:16:49Z"),
            resolved: None,
            custom: &[],
            summary: "Heartbeat | summarize AggregatedValue=count() by bin(TimeGenerated, 5m) | Metric measurement Greater Than 0: 2",
            rows: 2,
            links: 4,
            rule_id: None,
        },
        Expect {
            file: "legacy-log-alert-v1-number-of-results.json",
            schema: Schema::LogSearchLogAnalytics,
            rule: "test-logAlertRule-v1-numResults",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Log",
            monitoring_service: "Log Analytics",
            id: None,
            targets: &[WORKSPACE_V1],
            items: &[],
            fired: Some("2021-11-16T15:15:24Z"),
            resolved: None,
            custom: &[],
            summary: "Heartbeat | Number of results Greater Than 0: 1",
            rows: 1,
            links: 2,
            rule_id: None,
        },
        Expect {
            file: "legacy-metric-alert-dynamic-activated.json",
            schema: Schema::LegacyMetric,
            rule: "test-metricAlertRule",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: None,
            targets: &[STORAGE],
            items: &["test-storageAccount"],
            fired: Some("2021-11-15T09:35:24.3468506Z"),
            resolved: None,
            custom: KEYS,
            summary: "Transactions GreaterThan 0.3 (Average over PT15M, dynamic threshold, Low sensitivity): 78.09",
            rows: 0,
            links: 1,
            rule_id: Some(
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-RG/providers/microsoft.insights/metricalerts/test-metricAlertRule",
            ),
        },
        Expect {
            file: "legacy-metric-alert-static-activated.json",
            schema: Schema::LegacyMetric,
            rule: "test-metricAlertRule",
            severity: Severity::Sev3,
            condition: Condition::Fired,
            signal_type: "Metric",
            monitoring_service: "Platform",
            id: None,
            targets: &[STORAGE],
            items: &["test-storageAccount"],
            fired: Some("2021-11-15T09:35:12.9703687Z"),
            resolved: None,
            custom: KEYS,
            summary: "Transactions GreaterThan 0 (Total over PT5M): 100",
            rows: 0,
            links: 1,
            rule_id: Some(
                "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/microsoft.insights/metricAlerts/test-metricAlertRule",
            ),
        },
    ]
}

#[test]
fn every_complete_fixture_parses_as_expected() {
    for e in expectations() {
        let body = fixture_bytes(e.file);
        let a = parse(&body).unwrap_or_else(|err| panic!("{}: {err:?}", e.file));
        let f = e.file;
        assert_eq!(a.schema, e.schema, "{f} schema");
        assert_eq!(a.rule, e.rule, "{f} rule");
        assert_eq!(a.severity, e.severity, "{f} severity");
        assert_eq!(a.condition, e.condition, "{f} condition");
        assert_eq!(a.signal_type, e.signal_type, "{f} signal type");
        assert_eq!(a.monitoring_service, e.monitoring_service, "{f} monitoring service");
        assert_eq!(a.id.as_deref(), e.id, "{f} id");
        assert_eq!(a.rule_id.as_deref(), e.rule_id, "{f} rule id");
        assert_eq!(a.target_resources, e.targets, "{f} targets");
        assert_eq!(a.configuration_items, e.items, "{f} configuration items");
        assert_eq!(a.fired_at, e.fired.map(time), "{f} fired");
        assert_eq!(a.resolved_at, e.resolved.map(time), "{f} resolved");
        let custom: Vec<(&str, &str)> = a.custom_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(custom, e.custom, "{f} custom properties");
        assert_eq!(
            a.condition_summary.first().map(String::as_str),
            Some(e.summary),
            "{f} summary: {:?}",
            a.condition_summary
        );
        assert_eq!(a.search_rows().len(), e.rows, "{f} rows");
        assert_eq!(a.links.len(), e.links, "{f} links: {:?}", a.links);
        assert!(a.links.iter().all(|(label, url)| !label.is_empty() && url.starts_with("http")), "{f} links");
        // Only a payload without an id is identified by its body.
        assert_eq!(a.body_hash, a.id.is_none().then(|| sha256_hex(&body)), "{f} body hash");
        // The context travels untouched: the alertContext, legacy data.context, or the whole log V1 body.
        let raw: Value = serde_json::from_slice(&body).expect("fixture is JSON");
        let expected_context = match e.schema {
            Schema::CommonAlertSchema => &raw["data"]["alertContext"],
            Schema::LegacyMetric | Schema::LegacyActivityLog => &raw["data"]["context"],
            _ => &raw,
        };
        assert_eq!(a.context(), expected_context, "{f} context");
    }
}

fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

/// The `cas-alertcontext-*` fixtures are the `alertContext` part only; each is read inside an envelope.
#[test]
fn every_alert_context_fixture_parses_inside_an_envelope() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "cas-alertcontext-activitylog-administrative.json",
            "Activity Log - Administrative",
            "Activity Log",
            "Microsoft.Compute/virtualMachines/restart/action: Succeeded by 22223333-cccc-4444-dddd-5555eeee6666",
        ),
        (
            "cas-alertcontext-activitylog-policy.json",
            "Activity Log - Policy",
            "Activity Log",
            "Microsoft.Authorization/policies/audit/action: Succeeded by <GUID>",
        ),
        (
            "cas-alertcontext-activitylog-resourcehealth.json",
            "Resource Health",
            "Activity Log",
            "This virtual machine is stopping and deallocating as requested by an authorized user or process",
        ),
        (
            "cas-alertcontext-activitylog-servicehealth.json",
            "ServiceHealth",
            "Activity Log",
            "Maintenance: Azure Synapse Analytics Scheduled Maintenance Pending",
        ),
        (
            "cas-alertcontext-activitylog-servicehealth-stringenums.json",
            "ServiceHealth",
            "Activity Log",
            "Maintenance: Azure Synapse Analytics Scheduled Maintenance Pending",
        ),
        (
            "cas-alertcontext-log-simple-log-alert.json",
            "Simple Log Alert",
            "Log",
            "exceptions | where timestamp > ago(5m) | project timestamp, operation_Name, problemId, type, outerMessage: 1",
        ),
        (
            "cas-alertcontext-log-v1-appinsights.json",
            "Application Insights",
            "Log",
            "requests | where resultCode == \"500\" | summarize AggregatedValue = Count by bin(Timestamp, 5m), IP | Metric measurement Less Than 10000: 2",
        ),
        (
            "cas-alertcontext-log-v1-loganalytics.json",
            "Log Analytics",
            "Log",
            "Perf | where ObjectName == \"Processor\" and CounterName == \"% Processor Time\" | summarize AggregatedValue = avg(CounterValue) by bin(TimeGenerated, 5m), Computer | Metric measurement Less Than 10000: 2",
        ),
        ("cas-alertcontext-log-v2.json", "Log Alerts V2", "Log", "Heartbeat | count LowerThan 1: 0"),
        (
            "cas-alertcontext-metric-availability.json",
            "Platform",
            "Metric",
            "Failed Location GreaterThan 2 (Sum over PT5M, web test myAvailabilityTest-myApplication): 5",
        ),
        (
            "cas-alertcontext-metric-dynamic.json",
            "Platform",
            "Metric",
            "Egress GreaterThan 47658 (Total over PT5M, dynamic threshold, High sensitivity): 50101",
        ),
        (
            "cas-alertcontext-metric-static.json",
            "Platform",
            "Metric",
            "Percentage CPU GreaterThan 25 (Average over PT5M): 31.1105",
        ),
    ];
    let mut seen = 0;
    for (file, service, signal, first_line) in cases {
        let (a, context) = wrapped(file, service, signal);
        assert_eq!(a.schema, Schema::CommonAlertSchema, "{file}");
        assert_eq!(a.monitoring_service, *service, "{file}");
        assert_eq!(
            a.condition_summary.first().map(String::as_str),
            Some(*first_line),
            "{file}: {:?}",
            a.condition_summary
        );
        assert_eq!(a.context(), &context, "{file} context kept whole");
        seen += 1;
    }
    // Every alertContext fixture in the directory is covered by the table above.
    let on_disk = std::fs::read_dir(FIXTURES)
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cas-alertcontext-"))
        .count();
    assert_eq!(seen, on_disk);
}

#[test]
fn every_file_in_the_fixture_directory_is_covered() {
    let table: Vec<&str> = expectations().iter().map(|e| e.file).collect();
    for entry in std::fs::read_dir(FIXTURES).expect("fixture dir") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        let covered = table.contains(&name.as_str())
            || name.starts_with("cas-alertcontext-")
            || name == "action-group-webhook-receiver-arm.json";
        assert!(covered, "fixture {name} has no expectation");
    }
}

/// The action group definition is what configures the webhook, not what it posts.
#[test]
fn the_action_group_definition_is_not_an_alert() {
    let e = parse(&fixture_bytes("action-group-webhook-receiver-arm.json")).expect_err("not an alert");
    assert_eq!(e.code, "not_an_alert");
}

#[test]
fn fixture_details() {
    let a = ok(&fixture_bytes("cas-metric-static-resolved.json"));
    assert_eq!(a.condition_summary[1], "Dimensions: ResourceId = b1b1b1b1-cccc-dddd-eeee-f2f2f2f2f2f2");

    let a = ok(&fixture_bytes("legacy-activitylog-servicehealth.json"));
    assert_eq!(
        a.condition_summary,
        [
            "Incident: Test Action Group - Test Service Health Alert",
            "Service: Azure Service Name; Region: Global; Stage: Resolved; Tracking id: ABC1-DEF",
            "Impacted: Azure Service Name (Global)",
            "Impact: 2021-11-16T20:00:00.0000000Z to 2021-11-17T01:00:00.0000000Z",
        ]
    );

    let a = ok(&fixture_bytes("cas-test-resourcehealth-fired.json"));
    assert_eq!(a.condition_summary[1], "Health: Available -> Unavailable (Downtime, UserInitiated)");

    let a = ok(&fixture_bytes("cas-test-budget-forecasted-fired.json"));
    assert_eq!(a.condition_summary[1], "Forecasted total for the period: $1111.11");

    let a = ok(&fixture_bytes("legacy-log-alert-v1-metric-measurement.json"));
    assert_eq!(a.search_rows()[0], json!({ "TimeGenerated": "2021-11-16T10:56:49Z", "AggregatedValue": 11 }));

    let a = ok(&fixture_bytes("cas-test-log-v1-number-of-results-fired.json"));
    assert_eq!(
        a.search_rows(),
        [json!({
            "TenantId": "dddd3333-ee44-5555-66ff-777777aaaaaa",
            "Computer": "test-computer",
            "TimeGenerated": "2025-04-15T18:04:40.852Z"
        })]
    );
    assert_eq!(a.links[0].0, "Search results");

    let (a, _) = wrapped("cas-alertcontext-log-simple-log-alert.json", "Simple Log Alert", "Log");
    assert_eq!(a.search_rows().len(), 1);
    assert_eq!(a.search_rows()[0]["type"], "System.NullReferenceException");
    assert!(a.custom_properties.is_empty(), "an empty properties object adds nothing");

    let (a, _) = wrapped("cas-alertcontext-activitylog-policy.json", "Activity Log - Policy", "Activity Log");
    assert_eq!(a.condition_summary[1], "Policy: <GUID> (AuditIfNotExists, SecurityCenterBuiltIn)");
    assert!(a.custom_properties.is_empty(), "activity log properties are event data, not custom properties");
}

// ---------------------------------------------------------------------------------------------------------
// The traps.

#[test]
fn trap_alert_rule_id_has_two_spellings() {
    let rule_id = "/subscriptions/s/resourceGroups/g/providers/microsoft.insights/metricAlerts/r";
    for key in ["alertRuleID", "alertRuleId"] {
        let mut ess = essentials("Platform", "Metric");
        ess[key] = json!(rule_id);
        let a = ok_json(&envelope(ess, json!(null)));
        assert_eq!(a.rule_id.as_deref(), Some(rule_id), "{key}");
    }
    let a = ok_json(&envelope(essentials("Platform", "Metric"), json!(null)));
    assert_eq!(a.rule_id, None);
}

#[test]
fn trap_configuration_items_missing_or_empty() {
    let mut ess = essentials("Platform", "Metric");
    ess.as_object_mut().expect("object").remove("configurationItems");
    assert!(ok_json(&envelope(ess.clone(), json!(null))).configuration_items.is_empty());
    ess["configurationItems"] = json!([]);
    assert!(ok_json(&envelope(ess.clone(), json!(null))).configuration_items.is_empty());
    ess["configurationItems"] = json!(null);
    assert!(ok_json(&envelope(ess.clone(), json!(null))).configuration_items.is_empty());
    // Empty in essentials but named by a log search V1 context: those are the configuration items.
    ess["configurationItems"] = json!([]);
    let a = ok_json(&envelope(ess, json!({ "SearchQuery": "Heartbeat", "AffectedConfigurationItems": ["web01"] })));
    assert_eq!(a.configuration_items, ["web01"]);
}

#[test]
fn trap_custom_properties_null_missing_or_odd() {
    let mut body = fixture_json("cas-test-metric-static-fired.json");
    // The alertContext's own `properties` (a metric rule's custom properties) are dropped for this test.
    body["data"]["alertContext"]["properties"] = json!(null);
    body["data"]["customProperties"] = json!(null);
    assert!(ok_json(&body).custom_properties.is_empty());
    body["data"].as_object_mut().expect("object").remove("customProperties");
    assert!(ok_json(&body).custom_properties.is_empty());
    body["data"]["customProperties"] = json!(["not", "an", "object"]);
    assert!(ok_json(&body).custom_properties.is_empty());
    body["data"]["customProperties"] =
        json!({ "n": 5, "f": 1.5, "b": true, "z": null, "o": { "k": "v" }, "s": "text" });
    let a = ok_json(&body);
    let got: Vec<(&str, &str)> = a.custom_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, [("b", "true"), ("f", "1.5"), ("n", "5"), ("o", "{\"k\":\"v\"}"), ("s", "text"), ("z", "")]);
}

#[test]
fn trap_service_health_enums_as_numbers_or_strings() {
    let (numbers, _) = wrapped("cas-alertcontext-activitylog-servicehealth.json", "ServiceHealth", "Activity Log");
    let (strings, _) =
        wrapped("cas-alertcontext-activitylog-servicehealth-stringenums.json", "ServiceHealth", "Activity Log");
    assert_eq!(numbers.condition_summary, strings.condition_summary);
    assert_eq!(
        numbers.condition_summary,
        [
            "Maintenance: Azure Synapse Analytics Scheduled Maintenance Pending",
            "Service: Azure Synapse Analytics; Region: East US; Stage: Planned; Tracking id: <GUID>",
            "Impacted: Azure Synapse Analytics (East US)",
            "Impact: 2019-06-26T04:00:00Z to 2019-06-26T12:00:00Z",
        ]
    );
    // Without the monitoring service to go by, the event itself still says it is Service Health.
    let (unknown, _) = wrapped("cas-alertcontext-activitylog-servicehealth.json", "", "");
    assert_eq!(unknown.condition_summary, numbers.condition_summary);

    // The legacy payload with `level` as the enum number, and as a word.
    let mut legacy = fixture_json("legacy-activitylog-servicehealth.json");
    legacy["data"]["context"]["activityLog"]["level"] = json!(3);
    legacy["data"]["context"]["activityLog"]["eventSource"] = json!(2);
    legacy["data"]["context"]["activityLog"]["channels"] = json!(1);
    let a = ok_json(&legacy);
    assert_eq!(a.severity, Severity::Sev3);
    assert_eq!(a.monitoring_service, "ServiceHealth");
    legacy["data"]["context"]["activityLog"]["level"] = json!("Critical");
    assert_eq!(ok_json(&legacy).severity, Severity::Sev0);
}

/// `impactedServices` is a JSON-encoded string in real alerts and an array in the Test button's payload
/// (the "Service health alert" test action sample of alerts-payload-samples.md).
#[test]
fn trap_impacted_services_string_or_array() {
    let test_action = json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh",
                "alertRule": "test-ServiceHealthAlertRule",
                "severity": "Sev4",
                "signalType": "ActivityLog",
                "monitorCondition": "Fired",
                "monitoringService": "ServiceHealth",
                "alertTargetIDs": ["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"],
                "originAlertId": "eeeeeeee-4444-5555-6666-ffffffffffff",
                "firedDateTime": "2025-04-15T18:20:36.256Z",
                "description": "Alertruledescription",
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0"
            },
            "alertContext": {
                "authorization": null, "channels": 1, "claims": null, "caller": null,
                "correlationId": "12345678-abcd-efgh-ijkl-abcd12345678", "eventSource": 2,
                "eventTimestamp": "2025-04-15T18:20:36.256Z", "httpRequest": null,
                "eventDataId": "eeeeeeee-4444-5555-6666-ffffffffffff", "level": 3,
                "operationName": "Microsoft.ServiceHealth/incident/action",
                "operationId": "12345678-abcd-efgh-ijkl-abcd12345678",
                "properties": {
                    "title": "TestActionGroup-TestServiceHealthAlert", "service": "AzureServiceName",
                    "region": "Global", "communication": "<p>ThisisatestfromServiceHealthAlert</p>",
                    "incidentType": "Incident", "trackingId": "TEST-TTT",
                    "impactStartTime": "2025-04-15T18:20:36.256Z", "impactMitigationTime": "2025-04-15T18:20:36.256Z",
                    "impactedServices": [{ "ImpactedRegions": [{ "RegionName": "Global" }], "ServiceName": "AzureServiceName" }],
                    "impactedServicesTableRows": "<tr><td>Thisisatestfromservicehealthalert</<td>/<tr>",
                    "defaultLanguageTitle": "TestActionGroup-TestServiceHealthAlert",
                    "defaultLanguageContent": "<p>ThisisatestfromServiceHealthAlert</p>",
                    "stage": "Resolved", "communicationId": "11223344556677", "isHIR": "false",
                    "IsSynthetic": "True", "impactType": "SubscriptionList", "version": "0.1.1"
                },
                "status": "Resolved", "subStatus": null, "submissionTimestamp": "2025-04-15T18:20:36.256Z",
                "ResourceType": null
            }
        }
    });
    let array = ok_json(&test_action);
    assert!(array.configuration_items.is_empty(), "the test action sends no configurationItems");
    assert!(
        array.condition_summary.contains(&"Impacted: AzureServiceName (Global)".to_string()),
        "{:?}",
        array.condition_summary
    );
    let mut encoded = test_action.clone();
    let services = encoded["data"]["alertContext"]["properties"]["impactedServices"].to_string();
    encoded["data"]["alertContext"]["properties"]["impactedServices"] = json!(services);
    let string = ok_json(&encoded);
    assert_eq!(array.condition_summary, string.condition_summary);
    // The context keeps what Azure sent, string or array.
    assert!(string.context()["properties"]["impactedServices"].is_string());
    assert!(array.context()["properties"]["impactedServices"].is_array());
    // A string that is not JSON is tolerated.
    encoded["data"]["alertContext"]["properties"]["impactedServices"] = json!("[not json");
    assert!(!ok_json(&encoded).condition_summary.iter().any(|l| l.starts_with("Impacted")));
}

#[test]
fn trap_claims_is_a_json_string() {
    let (a, context) =
        wrapped("cas-alertcontext-activitylog-administrative.json", "Activity Log - Administrative", "Activity Log");
    assert!(context["claims"].is_string());
    assert!(a.context()["claims"].is_string(), "claims stay as Azure sent them");
    // Without `caller`, the name inside the encoded claims says who did it.
    let mut ctx = context.clone();
    ctx.as_object_mut().expect("object").remove("caller");
    ctx["claims"] = json!("{\"name\":\"Jane Doe\",\"appid\":\"x\"}");
    let a = ok_json(&envelope(essentials("Activity Log - Administrative", "Activity Log"), ctx.clone()));
    assert!(a.condition_summary[0].ends_with("by Jane Doe"), "{:?}", a.condition_summary);
    for claims in [json!("{}"), json!(null), json!("not json {"), json!({ "name": "Obj" }), json!(42)] {
        ctx["claims"] = claims.clone();
        let a = ok_json(&envelope(essentials("Activity Log - Administrative", "Activity Log"), ctx.clone()));
        assert!(
            a.condition_summary[0].starts_with("Microsoft.Compute/virtualMachines/restart/action: Succeeded"),
            "{claims}"
        );
    }
}

#[test]
fn trap_log_v1_times_us_style_or_iso() {
    let mut body = fixture_json("legacy-log-alert-loganalytics-webhook.json");
    for (sent, expected) in [
        ("3/22/2019 1:51:31 PM", "2019-03-22T13:51:31Z"),
        ("12/2/2019 12:05:00 AM", "2019-12-02T00:05:00Z"),
        ("03/22/2019 01:51:31 AM", "2019-03-22T01:51:31Z"),
        ("2019-03-22T13:51:31Z", "2019-03-22T13:51:31Z"),
        ("2019-03-22T13:51:31.1234567Z", "2019-03-22T13:51:31.1234567Z"),
        ("2019-03-22T13:51:31", "2019-03-22T13:51:31Z"),
        ("2019-03-22T15:51:31+02:00", "2019-03-22T13:51:31Z"),
    ] {
        body["SearchIntervalEndtimeUtc"] = json!(sent);
        assert_eq!(ok_json(&body).fired_at, Some(time(expected)), "{sent}");
    }
    // A time that cannot be read is no reason to drop the alert.
    body["SearchIntervalEndtimeUtc"] = json!("yesterday");
    assert_eq!(ok_json(&body).fired_at, None);
    body["SearchIntervalEndtimeUtc"] = json!(12345);
    assert_eq!(ok_json(&body).fired_at, None);
}

#[test]
fn trap_included_search_results_bool_or_string() {
    let fragment = fixture_json("cas-alertcontext-log-v1-loganalytics.json");
    let mut ctx = fragment["alertContext"].clone();
    assert_eq!(ctx["IncludedSearchResults"], "True");
    for flags in [
        json!({ "IncludedSearchResults": "True" }),
        json!({ "IncludeSearchResults": true }),
        json!({ "IncludeSearchResults": "true", "IncludedSearchResults": true }),
    ] {
        let mut c = ctx.clone();
        for (k, v) in flags.as_object().expect("object") {
            c[k] = v.clone();
        }
        let a = ok_json(&envelope(essentials("Log Analytics", "Log"), c));
        assert_eq!(a.search_rows().len(), 2, "{flags}");
    }
    // Azure dropped the results to stay under 256 KB: say so, and point at the link.
    ctx.as_object_mut().expect("object").remove("SearchResults");
    ctx["IncludedSearchResults"] = json!("False");
    let a = ok_json(&envelope(essentials("Log Analytics", "Log"), ctx));
    assert!(a.search_rows().is_empty());
    assert!(a.condition_summary.iter().any(|l| l.contains("not included")), "{:?}", a.condition_summary);
    assert!(!a.links.is_empty());
}

#[test]
fn trap_search_result_singular_or_plural() {
    let mut body = fixture_json("legacy-log-alert-loganalytics-webhook.json");
    let rows = ok_json(&body).search_rows();
    assert_eq!(rows.len(), 2);
    let results = body.as_object_mut().expect("object").remove("SearchResult").expect("singular in the fixture");
    body["SearchResults"] = results;
    assert_eq!(ok_json(&body).search_rows(), rows);
    // The custom JSON fixture uses the plural; the singular reads the same.
    let mut custom = fixture_json("legacy-log-alert-custom-json-searchresults.json");
    let plural = ok_json(&custom).search_rows();
    let results = custom.as_object_mut().expect("object").remove("SearchResults").expect("plural");
    custom["SearchResult"] = results;
    assert_eq!(ok_json(&custom).search_rows(), plural);
    assert_eq!(
        plural[1],
        json!({ "$table": "Contoso", "Id": "33445566b", "TimeGenerated": "2018-02-02T15:16:53.932Z" })
    );
}

fn metric_line_with(value: Value, threshold: Value) -> String {
    let mut body = fixture_json("cas-test-metric-static-fired.json");
    body["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = value;
    body["data"]["alertContext"]["condition"]["allOf"][0]["threshold"] = threshold;
    ok_json(&body).condition_summary[0].clone()
}

#[test]
fn trap_metric_value_int_or_float() {
    for (value, shown) in [
        (json!(100), "100"),
        (json!(50101), "50101"),
        (json!(7.727), "7.727"),
        (json!(31.1105), "31.1105"),
        (json!(5.0), "5"),
        (json!(0.0), "0"),
        (json!(-2.5), "-2.5"),
        (json!("42"), "42"),
    ] {
        let line = metric_line_with(value.clone(), json!("0"));
        assert_eq!(line, format!("Transactions GreaterThan 0 (Total over PT5M): {shown}"), "{value}");
    }
    assert_eq!(metric_line_with(json!(null), json!("0")), "Transactions GreaterThan 0 (Total over PT5M)");
}

#[test]
fn trap_thresholds_are_strings_or_numbers() {
    for (threshold, shown) in
        [(json!("0.3"), "0.3"), (json!(0.3), "0.3"), (json!("25"), "25"), (json!(25), "25"), (json!(25.0), "25")]
    {
        let line = metric_line_with(json!(100), threshold.clone());
        assert_eq!(line, format!("Transactions GreaterThan {shown} (Total over PT5M): 100"), "{threshold}");
    }
    assert_eq!(metric_line_with(json!(100), json!(null)), "Transactions GreaterThan (Total over PT5M): 100");
    // Log V1 thresholds come as numbers, integer (10000) or float (10000.0), and read the same.
    let (a, _) = wrapped("cas-alertcontext-log-v1-appinsights.json", "Application Insights", "Log");
    let (b, _) = wrapped("cas-alertcontext-log-v1-loganalytics.json", "Log Analytics", "Log");
    assert!(a.condition_summary[0].ends_with("Less Than 10000: 2"), "{:?}", a.condition_summary);
    assert!(b.condition_summary[0].ends_with("Less Than 10000: 2"), "{:?}", b.condition_summary);
}

#[test]
fn trap_fired_date_time_fractional_digits() {
    for digits in 0..=9usize {
        let fraction = "123456789"[..digits].to_string();
        let sent =
            if digits == 0 { "2019-03-22T13:58:24Z".to_string() } else { format!("2019-03-22T13:58:24.{fraction}Z") };
        let mut ess = essentials("Platform", "Metric");
        ess["firedDateTime"] = json!(sent);
        ess["resolvedDateTime"] = json!(sent);
        let a = ok_json(&envelope(ess, json!(null)));
        let expected = time(&sent);
        assert_eq!(a.fired_at, Some(expected), "{sent}");
        assert_eq!(a.resolved_at, Some(expected), "{sent}");
    }
    let mut ess = essentials("Platform", "Metric");
    ess["firedDateTime"] = json!("2019-03-22T13:58:24.3713213Z");
    assert_eq!(ok_json(&envelope(ess.clone(), json!(null))).fired_at, Some(time("2019-03-22T13:58:24.3713213Z")));
    ess["firedDateTime"] = json!("2019-03-22T13:58:24.371Z");
    assert_eq!(ok_json(&envelope(ess, json!(null))).fired_at, Some(time("2019-03-22T13:58:24.371Z")));
}

// ---------------------------------------------------------------------------------------------------------
// Other monitoring services and payload families (samples from the public documentation).

#[test]
fn unknown_alert_context_kind_still_parses() {
    let context = json!({ "quantumFlux": { "level": 11, "readings": [1, 2, 3] }, "note": "from the future" });
    let a = ok_json(&envelope(essentials("Future Service", "Telepathy"), context.clone()));
    assert_eq!(a.monitoring_service, "Future Service");
    assert_eq!(a.signal_type, "Telepathy");
    assert_eq!(a.context(), &context);
    assert!(a.condition_summary.is_empty());
    // Not even an object: still the alert, with the context as sent.
    let a = ok_json(&envelope(essentials("Future Service", "Telepathy"), json!("opaque")));
    assert_eq!(a.context(), &json!("opaque"));
    let a = ok_json(&envelope(essentials("Future Service", "Telepathy"), json!(null)));
    assert_eq!(a.context(), &Value::Null);
    // An unknown schemaId around a common schema envelope is read rather than lost.
    let mut body = envelope(essentials("Platform", "Metric"), json!(null));
    body["schemaId"] = json!("azureMonitorCommonAlertSchemaV2");
    assert_eq!(ok_json(&body).schema, Schema::CommonAlertSchema);
}

#[test]
fn prometheus_alert() {
    let context = json!({
        "interval": "PT1M",
        "expression": "sql_up > 0",
        "expressionValue": "0",
        "for": "PT2M",
        "labels": { "Environment": "Prod", "cluster": "myCluster1" },
        "annotations": { "summary": "alert on SQL availability" },
        "ruleGroup": "/subscriptions/<subscription ID>/resourceGroups/myResourceGroup/providers/Microsoft.AlertsManagement/prometheusRuleGroups/myRuleGroup"
    });
    let a = ok_json(&envelope(essentials("Prometheus", "Metric"), context));
    assert_eq!(
        a.condition_summary,
        ["sql_up > 0: 0 (for PT2M)", "Labels: Environment=Prod, cluster=myCluster1", "alert on SQL availability"]
    );
}

#[test]
fn smart_detector_alert() {
    let context = json!({
        "DetectionSummary": "A degradation in the dependency duration over the last 24 hours",
        "FormattedOccurrenceTime": "2025-04-15T18:23:16.577Z",
        "DetectedValue": "0.45 sec",
        "NormalValue": "0.27 sec (over the last 7 days)",
        "PresentationInsightEventRequest": "/subscriptions/s/resourceGroups/g/providers/microsoft.insights/components/c/query?query=x",
        "SmartDetectorId": "DependencyPerformanceDegradationDetector",
        "SmartDetectorName": "Dependency Performance Degradation Detector",
        "AnalysisTimestamp": "2025-04-15T18:23:16.577Z"
    });
    let mut ess = essentials("SmartDetector", "Log");
    ess["firedDateTime"] = json!("2021-10-28T19:09:09.1115084Z");
    let a = ok_json(&envelope(ess, context));
    assert_eq!(
        a.condition_summary,
        [
            "Dependency Performance Degradation Detector: A degradation in the dependency duration over the last 24 hours",
            "Detected: 0.45 sec; normal: 0.27 sec (over the last 7 days)",
        ]
    );
    assert_eq!(a.fired_at, Some(time("2021-10-28T19:09:09.1115084Z")));
    assert!(a.links.is_empty(), "a relative path is not a link");
}

#[test]
fn budget_actual_cost_alert() {
    let mut body = fixture_json("cas-test-budget-forecasted-fired.json");
    body["data"]["alertContext"]["AlertData"] = json!({
        "Scope": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/",
        "ThresholdType": "Actual",
        "BudgetType": "Cost",
        "BudgetThreshold": "$50.00",
        "NotificationThresholdAmount": "$25.00",
        "BudgetName": "Test_actual_cost_budget",
        "SpentAmount": "$11,111.00"
    });
    let a = ok_json(&body);
    assert_eq!(a.rule, "Test_actual_cost_budget");
    assert_eq!(
        a.condition_summary,
        ["Budget Test_actual_cost_budget (Actual): spent $11,111.00, threshold $25.00, budget $50.00"]
    );
    // Without a budget name there is nothing to call the rule.
    body["data"]["alertContext"]["AlertData"].as_object_mut().expect("object").remove("BudgetName");
    let e = err_json(&body);
    assert_eq!(e.code, "missing_field");
    assert!(e.message.contains("data.essentials.alertRule"), "{}", e.message);
}

#[test]
fn activity_log_autoscale_and_security() {
    let autoscale = json!({
        "channels": "Admin, Operation",
        "claims": "{\"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/spn\":\"Microsoft.Insights/autoscaleSettings\"}",
        "caller": "Microsoft.Insights/autoscaleSettings",
        "eventSource": "Autoscale",
        "eventTimestamp": "2019-08-21T16:17:47.1551167+00:00",
        "level": "Informational",
        "operationName": "Microsoft.Insights/AutoscaleSettings/Scaleup/Action",
        "properties": {
            "description": "The autoscale engine attempting to scale resource 'vmss' from 9 instances count to 10 instances count.",
            "oldInstancesCount": "9",
            "newInstancesCount": "10",
            "activeAutoscaleProfile": "{\r\n  \"Name\": \"Auto created scale condition\"\r\n}",
            "lastScaleActionTime": "Wed, 21 Aug 2019 16:17:47 GMT"
        },
        "status": "Succeeded",
        "submissionTimestamp": "2019-08-21T16:17:47.2410185+00:00"
    });
    let a = ok_json(&envelope(essentials("Activity Log - Autoscale", "Activity Log"), autoscale));
    assert_eq!(
        a.condition_summary,
        [
            "Microsoft.Insights/AutoscaleSettings/Scaleup/Action: Succeeded by Microsoft.Insights/autoscaleSettings",
            "The autoscale engine attempting to scale resource 'vmss' from 9 instances count to 10 instances count.",
        ]
    );
    let security = json!({
        "channels": "Operation",
        "eventSource": "Security",
        "eventTimestamp": "2019-08-26T08:34:14+00:00",
        "level": "Informational",
        "operationName": "Microsoft.Security/locations/alerts/activate/action",
        "properties": { "threatStatus": "Quarantined", "category": "Virus", "compromisedEntity": "testVM", "severity": "Low" },
        "status": "Active",
        "submissionTimestamp": "2019-08-26T09:28:58.3019107+00:00"
    });
    let a = ok_json(&envelope(essentials("Activity Log - Security", "Activity Log"), security));
    assert_eq!(
        a.condition_summary,
        ["Microsoft.Security/locations/alerts/activate/action: Active", "Threat: Virus on testVM (Quarantined)"]
    );
}

/// The classic metric alert (retired, still sent by sovereign clouds until 2024), from the "Call a webhook
/// with a classic metric alert" documentation.
#[test]
fn classic_metric_alert_without_schema_id() {
    let body = json!({
        "status": "Activated",
        "context": {
            "timestamp": "2015-08-14T22:26:41.9975398Z",
            "id": "/subscriptions/s1/resourceGroups/useast/providers/microsoft.insights/alertrules/ruleName1",
            "name": "ruleName1",
            "description": "some description",
            "conditionType": "Metric",
            "condition": {
                "metricName": "Requests",
                "metricUnit": "Count",
                "metricValue": "10",
                "threshold": "10",
                "windowSize": "15",
                "timeAggregation": "Average",
                "operator": "GreaterThanOrEqual"
            },
            "subscriptionId": "s1",
            "resourceGroupName": "useast",
            "resourceName": "mysite1",
            "resourceType": "microsoft.foo/sites",
            "resourceId": "/subscriptions/s1/resourceGroups/useast/providers/microsoft.foo/sites/mysite1",
            "resourceRegion": "centralus",
            "portalLink": "https://portal.azure.com/#resource/subscriptions/s1/resourceGroups/useast/providers/microsoft.foo/sites/mysite1"
        },
        "properties": { "key1": "value1", "key2": "value2" }
    });
    let a = ok_json(&body);
    assert_eq!(a.schema, Schema::LegacyMetric);
    assert_eq!(a.rule, "ruleName1");
    assert_eq!(a.severity, Severity::Sev3, "no severity in classic alerts: the default");
    assert_eq!(a.condition, Condition::Fired);
    assert_eq!(a.id, None);
    assert_eq!(
        a.rule_id.as_deref(),
        Some("/subscriptions/s1/resourceGroups/useast/providers/microsoft.insights/alertrules/ruleName1")
    );
    assert_eq!(a.configuration_items, ["mysite1"]);
    assert_eq!(a.condition_summary, ["Requests GreaterThanOrEqual 10 (Average over PT15M): 10 Count"]);
    assert_eq!(a.custom_properties.get("key2").map(String::as_str), Some("value2"));
    assert_eq!(a.links.len(), 1);
    assert_eq!(a.fired_at, Some(time("2015-08-14T22:26:41.9975398Z")));

    let mut resolved = body.clone();
    resolved["status"] = json!("Resolved");
    let r = ok_json(&resolved);
    assert_eq!(r.condition, Condition::Resolved);
    assert_eq!((r.fired_at, r.resolved_at), (None, Some(time("2015-08-14T22:26:41.9975398Z"))));
}

#[test]
fn legacy_metric_deactivated_and_severity_words() {
    let mut body = fixture_json("legacy-metric-alert-static-activated.json");
    body["data"]["status"] = json!("Deactivated");
    let a = ok_json(&body);
    assert_eq!(a.condition, Condition::Resolved);
    assert_eq!(a.resolved_at, Some(time("2021-11-15T09:35:12.9703687Z")));
    assert_eq!(a.fired_at, None);
    for (sent, expected) in [
        (json!("0"), Severity::Sev0),
        (json!("4"), Severity::Sev4),
        (json!(1), Severity::Sev1),
        (json!("Critical"), Severity::Sev0),
        (json!("Error"), Severity::Sev1),
        (json!("warning"), Severity::Sev2),
        (json!("Informational"), Severity::Sev3),
        (json!("Verbose"), Severity::Sev4),
        (json!("Sev2"), Severity::Sev2),
    ] {
        body["data"]["context"]["severity"] = sent.clone();
        assert_eq!(ok_json(&body).severity, expected, "{sent}");
    }
    // Missing: Sev3, the default the portal preselects.
    body["data"]["context"].as_object_mut().expect("object").remove("severity");
    assert_eq!(ok_json(&body).severity, Severity::Sev3);
    body["data"]["context"]["severity"] = json!("7");
    let e = err_json(&body);
    assert_eq!(e.code, "invalid_field");
    assert!(e.message.contains("data.context.severity"), "{}", e.message);
    body["data"]["status"] = json!("Sleeping");
    let e = err_json(&body);
    assert_eq!(e.code, "invalid_field");
    assert!(e.message.contains("data.status"), "{}", e.message);
}

#[test]
fn log_v1_severity_words_and_digits() {
    let mut body = fixture_json("legacy-log-alert-loganalytics-webhook.json");
    for (sent, expected) in [
        (json!("Critical"), Severity::Sev0),
        (json!("Warning"), Severity::Sev2),
        (json!("Informational"), Severity::Sev3),
        (json!("1"), Severity::Sev1),
        (json!(4), Severity::Sev4),
    ] {
        body["Severity"] = sent.clone();
        assert_eq!(ok_json(&body).severity, expected, "{sent}");
    }
    body.as_object_mut().expect("object").remove("Severity");
    assert_eq!(ok_json(&body).severity, Severity::Sev3);
    body["Severity"] = json!("Catastrophic");
    let e = err_json(&body);
    assert_eq!(e.code, "invalid_field");
    assert!(e.message.contains("`Severity`") && e.message.contains("Catastrophic"), "{}", e.message);
}

/// The OMS-era webhook: the log search fields without SubscriptionId or AlertType, results as `value`.
#[test]
fn oms_era_log_alert() {
    let body = json!({
        "WorkspaceId": "12345a-1234b-123c-123d-12345678e",
        "AlertRuleName": "High CPU",
        "SearchQuery": "Perf | where CounterName == \"% Processor Time\" and CounterValue > 90",
        "SearchIntervalStartTimeUtc": "3/22/2017 1:36:31 PM",
        "SearchIntervalEndtimeUtc": "3/22/2017 1:51:31 PM",
        "AlertThresholdOperator": "Greater Than",
        "AlertThresholdValue": 0,
        "ResultCount": 2,
        "SearchIntervalInSeconds": 900,
        "LinkToSearchResults": "https://contoso.portal.mms.microsoft.com/#Workspace/search/index",
        "Description": "CPU over 90%",
        "Severity": "Critical",
        "SearchResults": {
            "id": "subscriptions/s/resourceGroups/g/providers/Microsoft.OperationalInsights/workspaces/w/search/x",
            "__metadata": { "resultType": "raw", "total": 2, "top": 2 },
            "value": [
                { "Computer": "web01", "CounterValue": 97.5, "TimeGenerated": "2017-03-22T13:40:00Z" },
                { "Computer": "web02", "CounterValue": 93, "TimeGenerated": "2017-03-22T13:45:00Z" }
            ]
        }
    });
    let a = ok_json(&body);
    assert_eq!(a.schema, Schema::LogSearchCustom);
    assert_eq!(a.rule, "High CPU");
    assert_eq!(a.severity, Severity::Sev0);
    assert_eq!(a.fired_at, Some(time("2017-03-22T13:51:31Z")));
    assert_eq!(a.description, "CPU over 90%");
    assert_eq!(a.search_rows().len(), 2);
    assert_eq!(a.search_rows()[1]["Computer"], "web02");
    assert_eq!(
        a.condition_summary,
        ["Perf | where CounterName == \"% Processor Time\" and CounterValue > 90 | Greater Than 0: 2"]
    );
    assert_eq!(a.context(), &body);
}

/// Log search V1 under `data` without a schemaId, as some senders relay it.
#[test]
fn log_v1_under_data_without_schema_id() {
    let inner = fixture_json("legacy-log-alert-v1-number-of-results.json");
    let a = ok_json(&json!({ "data": inner }));
    assert_eq!(a.schema, Schema::LogSearchLogAnalytics);
    assert_eq!(a.rule, "test-logAlertRule-v1-numResults");
    assert_eq!(a.search_rows().len(), 1);
    let e = err_json(&json!({ "schemaId": "Microsoft.Insights/LogAlert", "data": { "AlertRuleName": 7 } }));
    assert_eq!(e.code, "invalid_field");
    assert!(e.message.contains("data.AlertRuleName"), "{}", e.message);
    let e = err_json(&json!({ "schemaId": "Microsoft.Insights/LogAlert" }));
    assert_eq!(e.code, "missing_field");
    assert!(e.message.contains("data.AlertRuleName"), "{}", e.message);
}

#[test]
fn search_rows_that_do_not_match_their_columns() {
    let body = json!({
        "alertname": "odd",
        "SearchResults": { "tables": [{
            "columns": [{ "name": "a" }, { "name": "a" }, { "type": "string" }],
            "rows": [[1, 2, 3], [1], [1, 2, 3, 4], "scalar", { "already": "object" }]
        }]}
    });
    let rows = ok_json(&body).search_rows();
    assert_eq!(rows[0], json!({ "a": 2, "column2": 3 }), "a repeated column name keeps the last cell");
    assert_eq!(rows[1], json!({ "a": 1 }));
    assert_eq!(rows[2], json!({ "a": 2, "column2": 3, "column3": 4 }));
    assert_eq!(rows[3], json!("scalar"));
    assert_eq!(rows[4], json!({ "already": "object" }));
    for empty in [json!({ "tables": [] }), json!({ "tables": "x" }), json!(null), json!([1]), json!("[{]")] {
        assert!(ok_json(&json!({ "alertname": "x", "SearchResults": empty })).search_rows().is_empty());
    }
}

#[test]
fn body_with_byte_order_mark() {
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend(fixture_bytes("cas-test-metric-static-fired.json"));
    let a = ok(&body);
    assert_eq!(a.rule, "test-metricAlertRule");
    assert_eq!(a.body_hash, None, "the alert id identifies it");
    // A payload without an id is identified by its body, byte order mark included.
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend(fixture_bytes("legacy-metric-alert-static-activated.json"));
    let a = ok(&body);
    assert_eq!(a.id, None);
    assert_eq!(a.body_hash, Some(sha256_hex(&body)));
}

// ---------------------------------------------------------------------------------------------------------
// Refusals.

fn assert_error(result: Result<Alert, ParseError>, code: &str, names: &str) -> ParseError {
    let e = match result {
        Ok(a) => panic!("expected {code}, got an alert for rule {:?}", a.rule),
        Err(e) => e,
    };
    assert_eq!(e.code, code, "{}", e.message);
    assert!(e.message.contains(names), "message {:?} should name {names:?}", e.message);
    assert!(e.message.len() < 400, "message is short: {} bytes", e.message.len());
    e
}

#[test]
fn not_json() {
    for body in [&b"{not json"[..], b"", b"   ", b"{\"a\":1", b"{\"a\":1} trailing", b"\xff\xfe", b"nul"] {
        let e = assert_error(parse(body), "not_json", "line");
        assert!(e.message.contains("column"), "{}", e.message);
    }
}

#[test]
fn json_that_is_not_an_alert() {
    for body in [
        json!({ "id": 1 }),
        json!({}),
        json!([1, 2]),
        json!(42),
        json!("alert"),
        json!(null),
        json!(true),
        json!({ "schemaId": "Microsoft.Something/else", "data": {} }),
        json!({ "data": { "nothing": "here" } }),
        json!({ "data": 5 }),
    ] {
        assert_error(
            parse(&serde_json::to_vec(&body).expect("serializes")),
            "not_an_alert",
            "expected an Azure Monitor alert",
        );
    }
}

#[test]
fn missing_required_fields() {
    let mut ess = essentials("Platform", "Metric");
    ess.as_object_mut().expect("object").remove("alertRule");
    assert_error(parse(&to_vec(&envelope(ess.clone(), json!(null)))), "missing_field", "data.essentials.alertRule");
    for blank in [json!(null), json!(""), json!("   ")] {
        ess["alertRule"] = blank;
        assert_error(parse(&to_vec(&envelope(ess.clone(), json!(null)))), "missing_field", "data.essentials.alertRule");
    }
    let mut ess = essentials("Platform", "Metric");
    ess.as_object_mut().expect("object").remove("monitorCondition");
    assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "missing_field", "data.essentials.monitorCondition");
    let mut ess = essentials("Platform", "Metric");
    ess["severity"] = json!(null);
    assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "missing_field", "data.essentials.severity");
    for body in [
        json!({ "schemaId": "azureMonitorCommonAlertSchema" }),
        json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": {} }),
        json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": { "essentials": null } }),
    ] {
        assert_error(parse(&to_vec(&body)), "missing_field", "data.essentials");
    }
    let mut legacy = fixture_json("legacy-metric-alert-static-activated.json");
    legacy["data"]["context"].as_object_mut().expect("object").remove("name");
    assert_error(parse(&to_vec(&legacy)), "missing_field", "data.context.name");
    let mut legacy = fixture_json("legacy-activitylog-administrative.json");
    legacy["data"]["context"].as_object_mut().expect("object").remove("activityLog");
    assert_error(parse(&to_vec(&legacy)), "missing_field", "data.context.activityLog");
    let mut legacy = fixture_json("legacy-activitylog-administrative.json");
    legacy["data"]["context"]["activityLog"]["operationName"] = json!(null);
    assert_error(parse(&to_vec(&legacy)), "missing_field", "data.context.activityLog.operationName");
    let mut log = fixture_json("legacy-log-alert-v1-number-of-results.json");
    log["AlertRuleName"] = json!("");
    assert_error(parse(&to_vec(&log)), "missing_field", "AlertRuleName");
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializes")
}

#[test]
fn bad_monitor_condition_and_severity() {
    for (value, shown) in [(json!("Active"), "Active"), (json!("Activated"), "Activated"), (json!(""), "\"\"")] {
        let mut ess = essentials("Platform", "Metric");
        ess["monitorCondition"] = value;
        let e = assert_error(
            parse(&to_vec(&envelope(ess, json!(null)))),
            "invalid_field",
            "data.essentials.monitorCondition",
        );
        assert!(e.message.contains(shown), "{}", e.message);
    }
    for value in [json!("Sev9"), json!("high"), json!(7), json!(-1), json!(1.5), json!([]), json!(true)] {
        let mut ess = essentials("Platform", "Metric");
        ess["severity"] = value.clone();
        assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "invalid_field", "data.essentials.severity");
    }
    // Tolerated spellings of a valid severity.
    for (value, expected) in [
        (json!("sev1"), Severity::Sev1),
        (json!("SEV0"), Severity::Sev0),
        (json!(4), Severity::Sev4),
        (json!("2"), Severity::Sev2),
    ] {
        let mut ess = essentials("Platform", "Metric");
        ess["severity"] = value;
        assert_eq!(ok_json(&envelope(ess, json!(null))).severity, expected);
    }
    let mut ess = essentials("Platform", "Metric");
    ess["monitorCondition"] = json!("resolved");
    assert_eq!(ok_json(&envelope(ess, json!(null))).condition, Condition::Resolved);
}

#[test]
fn wrong_types_are_refused_with_the_field_named_or_tolerated() {
    let refused: &[(&str, Value, &str)] = &[
        ("alertRule", json!(5), "data.essentials.alertRule"),
        ("alertRule", json!({ "name": "x" }), "data.essentials.alertRule"),
        ("alertRule", json!(["x"]), "data.essentials.alertRule"),
        ("monitorCondition", json!(true), "data.essentials.monitorCondition"),
        ("monitorCondition", json!(1), "data.essentials.monitorCondition"),
        ("severity", json!({}), "data.essentials.severity"),
    ];
    for (key, value, path) in refused {
        let mut ess = essentials("Platform", "Metric");
        ess[*key] = value.clone();
        assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "invalid_field", path);
    }
    let structural: &[(Value, &str, &str)] = &[
        (json!({ "schemaId": 5, "data": {} }), "invalid_field", "schemaId"),
        (json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": 5 }), "invalid_field", "data"),
        (json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": [] }), "invalid_field", "data"),
        (
            json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": { "essentials": "x" } }),
            "invalid_field",
            "data.essentials",
        ),
        (
            json!({ "schemaId": "azureMonitorCommonAlertSchema", "data": { "essentials": [1] } }),
            "invalid_field",
            "data.essentials",
        ),
        (
            json!({ "schemaId": "AzureMonitorMetricAlert", "data": { "status": "Activated", "context": 5 } }),
            "invalid_field",
            "data.context",
        ),
        (
            json!({ "schemaId": "AzureMonitorMetricAlert", "data": { "status": 1, "context": {} } }),
            "invalid_field",
            "data.status",
        ),
        (
            json!({ "schemaId": "Microsoft.Insights/activityLogs", "data": { "context": { "activityLog": "x" } } }),
            "invalid_field",
            "data.context.activityLog",
        ),
        (json!({ "status": "Activated", "context": { "name": 5 } }), "invalid_field", "context.name"),
    ];
    for (body, code, path) in structural {
        assert_error(parse(&to_vec(body)), code, path);
    }
    // Everything else that is not required is tolerated.
    let mut ess = essentials("Platform", "Metric");
    ess["alertId"] = json!(12);
    ess["alertTargetIDs"] = json!("/subscriptions/s/single");
    ess["configurationItems"] = json!([1, null, "vm1", { "x": 1 }]);
    ess["firedDateTime"] = json!(5);
    ess["resolvedDateTime"] = json!({});
    ess["description"] = json!(["a"]);
    ess["signalType"] = json!(null);
    ess["monitoringService"] = json!(3);
    ess["investigationLink"] = json!(false);
    let mut body = envelope(ess, json!({ "condition": { "allOf": "nope" }, "properties": 7 }));
    body["data"]["customProperties"] = json!("text");
    let a = ok_json(&body);
    assert_eq!(a.id.as_deref(), Some("12"));
    assert_eq!(a.target_resources, ["/subscriptions/s/single"]);
    assert_eq!(a.configuration_items, ["1", "vm1", "{\"x\":1}"]);
    assert_eq!((a.fired_at, a.resolved_at), (None, None));
    assert_eq!((a.description.as_str(), a.signal_type.as_str(), a.monitoring_service.as_str()), ("", "", "3"));
    assert!(a.custom_properties.is_empty() && a.condition_summary.is_empty());
}

#[test]
fn null_anywhere_never_panics() {
    // Every member of every fixture, replaced in turn by values of each JSON type.
    let replacements =
        [json!(null), json!(0), json!(-1.5), json!(""), json!("x"), json!([]), json!({}), json!(true), json!([[{}]])];
    for entry in std::fs::read_dir(FIXTURES).expect("fixture dir") {
        let path = entry.expect("entry").path();
        let original: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let mut pointers = Vec::new();
        collect_pointers(&original, String::new(), &mut pointers);
        for pointer in &pointers {
            for replacement in &replacements {
                let mut body = original.clone();
                if let Some(slot) = body.pointer_mut(pointer) {
                    *slot = replacement.clone();
                }
                // Ok or Err are both fine; a panic fails the test.
                let _ = parse(&to_vec(&body));
            }
        }
    }
}

fn collect_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                collect_pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                collect_pointers(child, p, out);
            }
        }
        _ => {}
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let depth = 10_000;
    let deep_array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));

    // Inside the alert context: serde_json's recursion limit, reported against the field.
    for deep in [&deep_array, &deep_object] {
        let body = format!(
            "{{\"schemaId\":\"azureMonitorCommonAlertSchema\",\"data\":{{\"essentials\":{},\"alertContext\":{deep}}}}}",
            essentials("Platform", "Metric")
        );
        let e = assert_error(parse(body.as_bytes()), "invalid_field", "data.alertContext");
        assert!(e.message.contains("recursion limit"), "{}", e.message);
    }
    // In the legacy context, the log search body, and the essentials.
    let body = format!(
        "{{\"schemaId\":\"AzureMonitorMetricAlert\",\"data\":{{\"status\":\"Activated\",\"context\":{deep_array}}}}}"
    );
    assert_error(parse(body.as_bytes()), "invalid_field", "data.context");
    let body = format!("{{\"AlertRuleName\":\"r\",\"SubscriptionId\":\"s\",\"deep\":{deep_array}}}");
    assert_error(parse(body.as_bytes()), "invalid_field", "body");
    let body = format!(
        "{{\"schemaId\":\"azureMonitorCommonAlertSchema\",\"data\":{{\"essentials\":{{\"alertRule\":\"r\",\"severity\":\"Sev1\",\"monitorCondition\":\"Fired\",\"alertTargetIDs\":{deep_array}}}}}}}"
    );
    assert!(ok(body.as_bytes()).target_resources.is_empty(), "a non-required member is tolerated");
    // The whole body: JSON, but not an alert; unclosed: not JSON.
    assert_error(parse(deep_array.as_bytes()), "not_an_alert", "array");
    assert_error(parse(format!("{{\"x\":{deep_array}}}").as_bytes()), "not_an_alert", "expected");
    assert_error(parse("[".repeat(depth).as_bytes()), "not_json", "EOF");
}

#[test]
fn huge_strings() {
    let huge = "x".repeat(2 * 1024 * 1024);
    // In a free-text field: kept.
    let mut ess = essentials("Platform", "Metric");
    ess["description"] = json!(huge);
    ess["alertRule"] = json!(format!("rule-{huge}"));
    let a = ok_json(&envelope(ess, json!(null)));
    assert_eq!(a.description.len(), huge.len());
    assert_eq!(a.rule.len(), huge.len() + 5);
    // In a field that must be a word: refused, without echoing 2 MB.
    for key in ["severity", "monitorCondition"] {
        let mut ess = essentials("Platform", "Metric");
        ess[key] = json!(huge);
        assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "invalid_field", key);
    }
    let mut body = envelope(essentials("Platform", "Metric"), json!(null));
    body["schemaId"] = json!(huge);
    body["data"].as_object_mut().expect("object").remove("essentials");
    assert_error(parse(&to_vec(&body)), "not_an_alert", "schemaId");
    // In a query: the summary quotes a readable prefix.
    let mut body = fixture_json("legacy-log-alert-v1-number-of-results.json");
    body["SearchQuery"] = json!(format!("Heartbeat\n| where {huge}"));
    let a = ok_json(&body);
    assert!(a.condition_summary[0].starts_with("Heartbeat | where xxx"));
    assert!(a.condition_summary[0].len() < 300, "{}", a.condition_summary[0].len());
    // In a name that is quoted whole: the line is cut.
    let mut body = fixture_json("cas-test-metric-static-fired.json");
    body["data"]["alertContext"]["condition"]["allOf"][0]["metricName"] = json!(huge);
    body["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"][0]["value"] = json!(huge);
    let a = ok_json(&body);
    assert!(a.condition_summary.iter().all(|l| l.len() <= 1003), "lines are cut");
    // Multi-byte text cut on a character boundary.
    let mut body = fixture_json("legacy-log-alert-v1-number-of-results.json");
    body["SearchQuery"] = json!("é".repeat(100_000));
    let line = &ok_json(&body).condition_summary[0];
    assert!(line.starts_with("éé") && line.contains("é... | Number of results"), "{line}");
    let mut ess = essentials("Platform", "Metric");
    ess["severity"] = json!("é".repeat(100_000));
    assert_error(parse(&to_vec(&envelope(ess, json!(null)))), "invalid_field", "severity");
}

#[test]
fn duplicate_keys_are_refused() {
    let body = br#"{"schemaId":"azureMonitorCommonAlertSchema","schemaId":"x","data":{}}"#;
    assert_error(parse(body), "invalid_field", "schemaId");
    let body =
        br#"{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"alertRule":"a","alertRule":"b"}}}"#;
    assert_error(parse(body), "invalid_field", "alertRule");
}

#[test]
fn bytes_that_are_not_utf8_are_not_json() {
    for body in [
        &b"{\"x\":\"\xff\"}"[..],
        b"{\"schemaId\":\"azureMonitorCommonAlertSchema\",\"data\":{\"essentials\":{\"alertRule\":\"\xff\"}}}",
        b"{\"AlertRuleName\":\"r\",\n\"SubscriptionId\":\"\xc3\"}",
        b"\xff",
    ] {
        assert_error(parse(body), "not_json", "UTF-8");
    }
    let e = parse(b"{\"a\":1,\n \"b\":\"\xc3(\"}").expect_err("not UTF-8");
    assert!(e.message.ends_with("line 2 column 7"), "{}", e.message);
}

/// A common schema log alert's search results are counted from their JSON text and built only on demand;
/// both must agree with each other for every shape the results come in.
#[test]
fn search_results_are_counted_the_same_whether_built_or_not() {
    let cases = [
        (json!({"tables": [{"name": "t", "columns": [{"name": "a"}], "rows": [[1], [2], [3]]}]}), 3),
        (json!({"tables": []}), 0),
        (json!({"tables": [{"rows": null}]}), 0),
        (json!({"tables": ["not a table"]}), 0),
        (json!({"value": [{"a": 1}, {"b": 2}, 5]}), 2),
        (json!({"tables": {"not": "an array"}, "value": [{"a": 1}]}), 1),
        // Results embedded in a string: only the built value can say.
        (json!("{\"tables\":[{\"columns\":[{\"name\":\"a\"}],\"rows\":[[1],[2]]}]}"), 2),
    ];
    for (results, rows) in cases {
        let body = json!({
            "schemaId": "azureMonitorCommonAlertSchema",
            "data": {"essentials": essentials("Log Analytics", "Log"), "alertContext": {"SearchResults": results}}
        });
        let a = ok(body.to_string().as_bytes());
        let line = format!("Log search returned {rows} row");
        assert!(a.condition_summary.iter().any(|l| l.starts_with(&line)), "{results}: {:?}", a.condition_summary);
        assert_eq!(a.search_rows().len(), rows, "{results}");
        assert_eq!(a.context()["SearchResults"], results, "the context keeps the results");
    }
    // A duplicate key: the last one counts, as when the value is built.
    let body = format!(
        "{{\"schemaId\":\"azureMonitorCommonAlertSchema\",\"data\":{{\"essentials\":{},\"alertContext\":\
         {{\"SearchResults\":{{\"tables\":[{{\"rows\":[[1]]}}],\"tables\":[{{\"rows\":[[1],[2]]}}]}}}}}}}}",
        essentials("Log Analytics", "Log")
    );
    let a = ok(body.as_bytes());
    assert!(
        a.condition_summary.iter().any(|l| l.starts_with("Log search returned 2 rows")),
        "{:?}",
        a.condition_summary
    );
    assert_eq!(a.search_rows().len(), 2);
}

/// Search results are only counted on the alert path, but nesting past the recursion limit inside them is
/// still refused, naming the context, rather than accepted and lost when the context is built.
#[test]
fn deep_nesting_inside_counted_search_results_is_refused() {
    let depth = 10_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(
        "{{\"schemaId\":\"azureMonitorCommonAlertSchema\",\"data\":{{\"essentials\":{},\"alertContext\":\
         {{\"SearchQuery\":\"q\",\"SearchResults\":{{\"tables\":[{{\"rows\":[{deep}]}}]}}}}}}}}",
        essentials("Log Analytics", "Log")
    );
    let e = parse(body.as_bytes()).expect_err("refused");
    assert_eq!(e.code, "invalid_field", "{}", e.message);
    assert!(e.message.contains("data.alertContext") && e.message.contains("recursion limit"), "{}", e.message);
}
