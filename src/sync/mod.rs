//! function-sync: incidents and change requests from each connection's ITSM tool into Log Analytics'
//! `ServiceDesk_CL`, in ITSMC's columns (issue 4).
//!
//! `schema` holds the columns (from `schema/*.json`), `kinds` what a connector hands over, `watermark` how
//! far each connection and kind got, and `run` the loop that reads pages of changes and sends them in
//! batches through [`crate::ingest`].

pub mod kinds;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod watermark;

pub use kinds::{Change, SyncKind, Window};

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::config::SyncSettings;
use crate::ingest::Sink;
use crate::intake::Intake;
use crate::store::{Insert, StoreError, Swap, Table};
use run::{Job, KindReport};

/// Which syncs to run: all connections and the configured kinds, or a narrower choice (`itsmc sync`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub connection: Option<String>,
    /// Days back to start from, instead of the watermark.
    pub since_days: Option<u32>,
}

/// One invocation's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub runs: Vec<KindReport>,
    /// Set when the invocation did nothing because another instance holds the sync lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The sync of every connection, with the store and the sink it shares with the rest of the app.
pub struct Syncer {
    pub intake: Arc<Intake>,
    pub sink: Arc<Sink>,
    /// Who holds the lease, when this instance does.
    instance: String,
}

const LEASE_KEY: &str = "lease-sync";

impl Syncer {
    pub fn new(intake: Arc<Intake>, sink: Sink) -> Syncer {
        Syncer { intake, sink: Arc::new(sink), instance: format!("{:016x}", rand::random::<u64>()) }
    }

    /// Runs the requested syncs within the configured budget, one at a time across instances (a lease in
    /// the store: a timer that fires while a run is still going, on any instance, does nothing).
    pub async fn run(&self, request: &Request, progress: &(dyn Fn(&KindReport) + Sync)) -> Result<Report, String> {
        let config = &self.intake.config;
        let budget = config.sync.budget;
        if !self.take_lease(budget).await.map_err(|e| e.to_string())? {
            return Ok(Report { runs: Vec::new(), skipped: Some("another instance is syncing".into()) });
        }
        let deadline = Instant::now() + budget;
        let mut report = Report::default();
        let connections: Vec<_> = match &request.connection {
            Some(name) => vec![config.connection(Some(name)).ok_or_else(|| format!("no connection named '{name}'"))?],
            None => config.connections.iter().collect(),
        };
        'all: for connection in connections {
            let Some((_, connector)) = self.intake.connection(&connection.name) else { continue };
            let settings =
                SyncSettings { days: connection.sync_days.unwrap_or(config.sync.days), ..config.sync.clone() };
            for &kind in connection.sync_kinds.as_ref().unwrap_or(&config.sync.kinds) {
                let job = Job {
                    store: self.intake.store.as_ref(),
                    sink: Arc::clone(&self.sink),
                    connector: Arc::clone(connector),
                    connection: &connection.name,
                    kind,
                    settings: &settings,
                    retry: &config.outbox,
                    since_days: request.since_days,
                    deadline,
                    progress,
                };
                let run = job.run().await;
                match &run.error {
                    None => {
                        tracing::info!(connection = %run.connection, kind = run.kind, read = run.read, sent = run.sent, skipped = run.skipped, watermark = %run.watermark, "sync done")
                    }
                    Some(error) => {
                        tracing::warn!(connection = %run.connection, kind = run.kind, sent = run.sent, %error, "sync stopped early")
                    }
                }
                self.log_run(&run);
                let stop = run.setup_error;
                report.runs.push(run);
                if stop {
                    // Every other sync would fail the same way.
                    break 'all;
                }
            }
        }
        let _ = self.release_lease().await;
        self.flush_log().await;
        Ok(report)
    }

    /// Sends the connector log's buffered rows; a failure keeps them for the next flush.
    /// [`flush_log_every`] calls it on a clock.
    pub async fn flush_log(&self) {
        if self.intake.log.is_empty() {
            return;
        }
        if let Err(error) = self.intake.log.flush(&self.sink).await {
            tracing::warn!(%error, buffered = self.intake.log.len(), "the connector log could not be sent; it is kept for the next flush");
        }
    }

    fn log_run(&self, run: &KindReport) {
        self.intake.log.record(crate::ingest::connector_log::Event {
            connection: &run.connection,
            operation: &format!("sync {}", run.kind),
            success: run.error.is_none(),
            message: format!("sync {run}"),
            error: run.error.clone(),
            error_code: match (&run.error, run.setup_error) {
                (None, _) => None,
                (Some(_), true) => Some("sync_setup"),
                (Some(_), false) => Some("sync_stopped"),
            },
            duration_ms: Some(run.duration_ms),
            ..Default::default()
        });
    }

    async fn take_lease(&self, budget: std::time::Duration) -> Result<bool, StoreError> {
        let store = &self.intake.store;
        let now = chrono::Utc::now().timestamp_millis();
        let lease = json!({ "owner": self.instance, "until": now + budget.as_millis() as i64 + 30_000 });
        match store.insert(Table::Sync, LEASE_KEY, &lease).await? {
            Insert::Inserted { .. } => Ok(true),
            Insert::Conflict(held) => {
                let until = held.value["until"].as_i64().unwrap_or(0);
                if until > now && held.value["owner"] != self.instance.as_str() {
                    return Ok(false);
                }
                Ok(matches!(store.replace(Table::Sync, LEASE_KEY, &lease, &held.etag).await?, Swap::Replaced { .. }))
            }
        }
    }

    async fn release_lease(&self) -> Result<(), StoreError> {
        let store = &self.intake.store;
        if let Some(held) = store.get(Table::Sync, LEASE_KEY).await?
            && held.value["owner"] == self.instance.as_str()
        {
            let free = json!({ "owner": "", "until": 0 });
            store.replace(Table::Sync, LEASE_KEY, &free, &held.etag).await?;
        }
        Ok(())
    }
}

/// The connector log leaves every few seconds, not with each alert: one ingestion call per alert would
/// add its latency to the alert path.
pub async fn flush_log_every(syncer: Arc<Syncer>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        syncer.flush_log().await;
    }
}
