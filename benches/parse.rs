//! How long `alert::parse` takes (group `parse`), and parse plus everything the alert path decides before
//! its first store write (group `parse_and_decide`: delivery id, correlation keys, template scope, content):
//! every Azure Monitor fixture, and a synthesized ~10 KB common schema log search alert with search
//! results, the size of a typical log alert with a few dozen result rows. Target: <= 20 µs per 10 KB alert
//! for `parse_and_decide`.
//!
//! The `cas-alertcontext-*` fixtures are bare `alertContext` samples; they are measured inside the common
//! schema envelope they arrive in, as the tests read them.
//!
//! Run: `cargo bench --bench parse` (one group: `cargo bench --bench parse -- parse_and_decide`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use itsmc::workitem::{Content, Grouping, Scope, WorkItemType};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure-monitor");

/// A bare `alertContext` sample inside a common schema envelope.
fn envelope(fragment: &Value) -> Value {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/a",
                "alertRule": "rule",
                "severity": "Sev3",
                "signalType": "Metric",
                "monitorCondition": "Fired",
                "monitoringService": "Platform",
                "alertTargetIDs": ["/subscriptions/s/resourcegroups/g/providers/microsoft.compute/virtualmachines/vm"],
                "configurationItems": ["vm"],
                "firedDateTime": "2025-04-15T18:04:40.852Z",
                "description": "",
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0"
            },
            "alertContext": fragment.get("alertContext").cloned().unwrap_or(Value::Null),
            "customProperties": null
        }
    })
}

/// A compact common schema log search V1 alert of at least `size` bytes: Heartbeat-like result rows are
/// added until it is that large.
fn synthesized_log_alert(size: usize) -> Vec<u8> {
    let mut rows = Vec::new();
    loop {
        let i = rows.len();
        rows.push(json!([
            "dddd3333-ee44-5555-66ff-777777aaaaaa",
            format!("web-{i:03}.contoso.com"),
            format!("2025-04-15T18:{:02}:{:02}.852Z", i / 60 % 60, i % 60),
            "Direct Agent",
            "Linux",
            format!("/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/web-{i:03}"),
            i as f64 * 1.25
        ]));
        let body = json!({
            "schemaId": "azureMonitorCommonAlertSchema",
            "data": {
                "essentials": {
                    "alertId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/eeeeeeee-4444-5555-6666-ffffffffffff",
                    "alertRule": "heartbeat-missing",
                    "severity": "Sev2",
                    "signalType": "Log",
                    "monitorCondition": "Fired",
                    "monitoringService": "Log Analytics",
                    "alertTargetIDs": ["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/web/providers/microsoft.operationalinsights/workspaces/web-logs"],
                    "configurationItems": ["web-000.contoso.com"],
                    "originAlertId": "22222222-2222-2222-2222-222222222222",
                    "firedDateTime": "2025-04-15T18:04:40.8523317Z",
                    "description": "Heartbeat count per computer over the last 15 minutes",
                    "essentialsVersion": "1.0",
                    "alertContextVersion": "1.1"
                },
                "alertContext": {
                    "SearchQuery": "Heartbeat | summarize AggregatedValue = count() by bin(TimeGenerated, 5m), Computer, _ResourceId",
                    "SearchIntervalStartTimeUtc": "4/15/2025 5:49:40 PM",
                    "SearchIntervalEndtimeUtc": "4/15/2025 6:04:40 PM",
                    "ResultCount": rows.len(),
                    "LinkToSearchResults": "https://portal.azure.com#@cccc2222-dd33-4444-55ee-666666ffffff/blade/Microsoft_Azure_Monitoring_Logs/LogsBlade/source/Alerts.EmailLinks/q/aBcDeFgHi%2ABCDE%3D%3D/prettify/1/timespan/2025-04-15T17%3a49%3a40.0000000Z%2f2025-04-15T18%3a04%3a40.0000000Z",
                    "LinkToSearchResultsAPI": "https://api.loganalytics.io/v1/workspaces/dddd3333-ee44-5555-66ff-777777aaaaaa/query?query=Heartbeat%0A&timespan=2025-04-15T17%3a49%3a40.0000000Z%2f2025-04-15T18%3a04%3a40.0000000Z",
                    "SeverityDescription": "Warning",
                    "WorkspaceId": "dddd3333-ee44-5555-66ff-777777aaaaaa",
                    "SearchIntervalDurationMin": "15",
                    "AffectedConfigurationItems": ["web-000.contoso.com"],
                    "AlertType": "Metric measurement",
                    "IncludeSearchResults": true,
                    "SearchIntervalInMinutes": "15",
                    "Threshold": 10,
                    "Operator": "Greater Than",
                    "Dimensions": [{ "name": "Computer", "value": "web-000.contoso.com" }],
                    "SearchResults": {
                        "tables": [{
                            "name": "PrimaryResult",
                            "columns": [
                                { "name": "TenantId", "type": "string" },
                                { "name": "Computer", "type": "string" },
                                { "name": "TimeGenerated", "type": "datetime" },
                                { "name": "Category", "type": "string" },
                                { "name": "OSType", "type": "string" },
                                { "name": "_ResourceId", "type": "string" },
                                { "name": "AggregatedValue", "type": "real" }
                            ],
                            "rows": rows
                        }],
                        "dataSources": [{
                            "resourceId": "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/web/providers/microsoft.operationalinsights/workspaces/web-logs",
                            "region": "eastus",
                            "tables": ["Heartbeat"]
                        }]
                    },
                    "IncludedSearchResults": "True"
                },
                "customProperties": { "team": "web", "runbook": "https://contoso.example/runbooks/heartbeat" }
            }
        });
        let bytes = serde_json::to_vec(&body).expect("a json! value serializes");
        if bytes.len() >= size {
            return bytes;
        }
    }
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<_> = std::fs::read_dir(FIXTURES)
        .expect("fixture directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let body = std::fs::read(&p).expect("fixture readable");
            let body = if name.starts_with("cas-alertcontext-") {
                let fragment: Value = serde_json::from_slice(&body).expect("fixture is JSON");
                serde_json::to_vec(&envelope(&fragment)).expect("serializes")
            } else {
                body
            };
            (name, body)
        })
        .collect()
}

/// Every fixture and the synthesized alert, as (name, body).
fn bodies() -> Vec<(String, Vec<u8>)> {
    let mut bodies = fixtures();
    let big = synthesized_log_alert(10 * 1024);
    assert!(itsmc::alert::parse(&big).is_ok_and(|a| a.search_rows().len() > 20), "the synthesized alert parses");
    bodies.push(("synthesized-10k-log-alert".to_string(), big));
    bodies
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, body) in bodies() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| itsmc::alert::parse(black_box(&body))));
    }
    group.finish();
}

/// What the alert path runs before its first store write: parse, the delivery id, the correlation keys,
/// and the template scope and content of each work item (no connection fields: templates are a
/// connection's choice).
fn parse_and_decide_one(body: &[u8]) -> (String, Vec<Content>) {
    let alert = itsmc::alert::parse(body).expect("checked before timing");
    let delivery = itsmc::workitem::delivery_id("default", WorkItemType::Incident, &alert);
    let plans = itsmc::workitem::correlation_keys("default", WorkItemType::Incident, Grouping::Alert, &alert);
    let scope = Scope::new(&alert);
    let contents = plans
        .into_iter()
        .map(|plan| Content::build(&alert, &scope, plan.correlation_key, plan.configuration_item.as_deref(), &[]))
        .collect();
    (delivery, contents)
}

fn parse_and_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_and_decide");
    for (name, body) in bodies() {
        // A body that is not an alert (the ARM template fixture) is refused before anything is decided.
        if itsmc::alert::parse(&body).is_err() {
            continue;
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse_and_decide_one(black_box(&body))));
    }
    group.finish();
}

criterion_group!(benches, parse, parse_and_decide);
criterion_main!(benches);
