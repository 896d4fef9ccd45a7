//! Dry run: the embedded default connection. It renders the exact ServiceNow request each operation would
//! send, records it (log line and `/api/workitems`), and sends nothing. The lifecycle above it (claims,
//! links, re-fires, resolves) runs as it would for real, so a newcomer sees what itsmc would do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::servicenow::requests::{self, Request};
use crate::config::Connection;
use crate::itsm::{Connector, Found, ItsmError, WorkItem};
use crate::workitem::{Content, WorkItemType};

/// The most recent requests dry-run connections would have sent, newest last.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Rendered>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    pub connection: String,
    pub at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub request: Request,
}

const KEEP: usize = 200;

impl Journal {
    pub fn recent(&self) -> Vec<Rendered> {
        self.entries.lock().map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }

    fn record(&self, connection: &str, request: Request) {
        tracing::info!(
            connection,
            method = request.method,
            path = %request.path,
            body = %request.body.as_ref().map(|b| b.to_string()).unwrap_or_default(),
            "dry run: would send"
        );
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() == KEEP {
                entries.pop_front();
            }
            entries.push_back(Rendered { connection: connection.to_string(), at: chrono::Utc::now(), request });
        }
    }
}

pub struct DryRun {
    connection: Connection,
    journal: Arc<Journal>,
}

impl DryRun {
    pub fn new(connection: &Connection, journal: Arc<Journal>) -> DryRun {
        DryRun { connection: connection.clone(), journal }
    }

    fn record(&self, request: Request) {
        self.journal.record(&self.connection.name, request);
    }
}

#[async_trait]
impl Connector for DryRun {
    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError> {
        if let Some(request) = requests::find(kind, correlation_key) {
            self.record(request);
        }
        Ok(None)
    }

    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError> {
        self.record(requests::create(&self.connection, kind, content));
        // Stable made-up ids, derived from the key, so the same problem shows the same work item.
        let id = format!("dryrun{}", &content.correlation_key[..content.correlation_key.len().min(26)]);
        let number = (kind != WorkItemType::Event)
            .then(|| format!("DRY{}", &content.correlation_key[..7.min(content.correlation_key.len())]));
        Ok(WorkItem { kind, id, number, url: None })
    }

    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError> {
        if item.kind != WorkItemType::Event {
            self.record(requests::status(item.kind, &item.id));
        }
        Ok(true)
    }

    async fn add_note(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError> {
        self.record(requests::add_note(&self.connection, item.kind, &item.id, content, note));
        Ok(())
    }

    async fn resolve(
        &self,
        item: &WorkItem,
        content: &Content,
        close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError> {
        self.record(requests::resolve(&self.connection, item.kind, &item.id, content, close_code, close_notes));
        Ok(())
    }

    async fn reopen(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError> {
        self.record(requests::reopen(&self.connection, item.kind, &item.id, content, note));
        Ok(())
    }
}
