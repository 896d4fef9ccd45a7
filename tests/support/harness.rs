//! Runs itsmc in the test process, exactly as `itsmc serve` wires it (config, store, router, outbox
//! worker), on 127.0.0.1 with a fresh data directory, and posts to it over real HTTP.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use itsmc::config::Config;
use itsmc::intake::Intake;
use serde_json::Value;

pub struct Itsmc {
    pub url: String,
    pub data_dir: PathBuf,
    pub intake: Arc<Intake>,
    pub syncer: Arc<itsmc::sync::Syncer>,
    server: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for Itsmc {
    fn drop(&mut self) {
        self.server.abort();
        self.worker.abort();
    }
}

/// A fixture: `tests/fixtures/<dir>/<name>`, the team's `../shared/fixtures` copied into the repository so that a
/// clone runs its tests alone (provenance in `tests/fixtures/SOURCES.md`).
pub fn fixture(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

/// The common-schema test metric alert with the essentials a test sets: its id, `Fired` or `Resolved`, when it
/// fired and its severity (`Sev0` to `Sev4`).
pub fn metric_alert(alert_id: &str, condition: &str, fired: &str, severity: &str) -> String {
    let mut body: Value = serde_json::from_str(&fixture("azure-monitor/cas-test-metric-static-fired.json")).unwrap();
    let essentials = &mut body["data"]["essentials"];
    essentials["alertId"] =
        serde_json::json!(format!("/subscriptions/s1/providers/Microsoft.AlertsManagement/alerts/{alert_id}"));
    essentials["monitorCondition"] = serde_json::json!(condition);
    essentials["firedDateTime"] = serde_json::json!(fired);
    essentials["severity"] = serde_json::json!(severity);
    if condition == "Resolved" {
        essentials["resolvedDateTime"] = serde_json::json!("2026-11-25T12:30:00.000Z");
    }
    body.to_string()
}

/// A child process, killed (and waited for) when dropped, so a failing test does not leave it running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// A port nothing listens on now, for a process that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Itsmc {
    /// Start with these settings (as environment variables) and a fresh temporary data directory.
    pub async fn start(settings: &[(&str, &str)]) -> Itsmc {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut itsmc = Itsmc::start_in(&dir, settings).await;
        itsmc._temp = Some(temp);
        itsmc
    }

    /// Start on an existing data directory (a restart).
    pub async fn start_in(dir: &Path, settings: &[(&str, &str)]) -> Itsmc {
        super::serve::capture::init();
        super::serve::capture::settings(settings.iter().copied());
        let mut env: HashMap<String, String> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.insert("ITSMC_DATA_DIR".into(), dir.display().to_string());
        env.entry("ITSMC_OUTBOX_BACKOFF_MS".into()).or_insert_with(|| "50".into());
        let config = Config::from_lookup(|name| env.get(name).cloned()).expect("valid test configuration");
        let app = itsmc::App::start(config).await.expect("itsmc starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let router = super::serve::capture::router(app.router());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let worker = tokio::spawn(itsmc::outbox::run_worker(Arc::clone(&app.intake)));
        Itsmc { url, data_dir: dir.to_path_buf(), intake: app.intake, syncer: app.syncer, server, worker, _temp: None }
    }

    /// Stop serving and release the data directory (the store closes when the last handle goes).
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        let mut this = self;
        this.server.abort();
        this.worker.abort();
        let _ = (&mut this.server).await;
        let _ = (&mut this.worker).await;
        this._temp.take()
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("itsmc answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn alert(&self, query: &str, body: &str) -> (u16, Value) {
        self.post(&format!("/api/alert{query}"), body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.url)).await.expect("itsmc answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Run the outbox once, as the timer does.
    pub async fn drain(&self) -> itsmc::outbox::DrainReport {
        itsmc::outbox::drain(&self.intake).await
    }
}

/// Poll `check` until it holds or `seconds` pass.
pub async fn eventually(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check()
}
