//! What the load harnesses share: starting the release `itsmc serve` as its own process against an emulated
//! ITSM tool, the alerts they post, and reading their figures.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::harness::{KillOnDrop, free_port};
use crate::support::itsm::EmulatedItsm;

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A distinct common-schema alert (about 2 KB) for index `i`.
pub fn alert(i: u64, tag: &str) -> String {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": format!("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{tag}-{i}"),
                "alertRule": format!("cpu-high-{}", i % 50),
                "severity": "Sev2",
                "signalType": "Metric",
                "monitorCondition": "Fired",
                "monitoringService": "Platform",
                "alertTargetIDs": [format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm{i}")],
                "configurationItems": [format!("vm{i}")],
                "originAlertId": format!("origin-{i}"),
                "firedDateTime": "2026-11-25T12:00:00.1234567Z",
                "description": "CPU above threshold",
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0"
            },
            "alertContext": {
                "properties": null,
                "conditionType": "SingleResourceMultipleMetricCriteria",
                "condition": {
                    "windowSize": "PT5M",
                    "allOf": [{
                        "metricName": "Percentage CPU",
                        "metricNamespace": "Microsoft.Compute/virtualMachines",
                        "operator": "GreaterThan",
                        "threshold": "80",
                        "timeAggregation": "Average",
                        "dimensions": [{"name": "ResourceId", "value": format!("vm{i}")}],
                        "metricValue": 93.5
                    }]
                }
            },
            "customProperties": {"team": "platform", "runbook": "https://wiki.example/cpu"}
        }
    })
    .to_string()
}

pub struct Itsmc {
    pub child: KillOnDrop,
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Start `itsmc serve` against `product` and return it with the time from spawn to its first answered health
/// check.
pub fn start_itsmc(product: &dyn EmulatedItsm, settings: &[(&str, &str)]) -> (Itsmc, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(["serve", "--port", &port.to_string()])
        .envs(product.settings())
        .env("ITSMC_DATA_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("itsmc starts");
    // Ready = the port accepts a connection and answers; polled tightly so the figure is the process's.
    let address = format!("127.0.0.1:{port}");
    let ready = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            let mut err = String::new();
            if let Some(stderr) = child.stderr.take() {
                for line in BufReader::new(stderr).lines().take(20).map_while(Result::ok) {
                    err.push_str(&line);
                    err.push('\n');
                }
            }
            panic!("itsmc did not become ready: {err}");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    // Keep stderr drained so a chatty itsmc never blocks on a full pipe.
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    }
    (Itsmc { child: KillOnDrop(child), url: format!("http://{address}"), _dir: dir }, ready)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
