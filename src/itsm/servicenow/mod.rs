//! ServiceNow: incidents and alerts through the Table API, events through Event Management (jsonv2).
//!
//! `requests` says what to send, `client` sends it, `auth` keeps the credentials fresh; this file maps
//! the [`Connector`] operations onto them and reads the answers.

mod auth;
mod client;
mod lookups;
pub mod requests;
mod servicedesk;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{Connection, ServiceNowSettings};
use crate::itsm::{Choice, Connector, Diagnosis, Found, ItsmError, RemoteConfiguration, RemoteTemplate, WorkItem};
use crate::secrets::Secrets;
use crate::sync::{Change, SyncKind, Window};
use crate::workitem::{Content, WorkItemType};

pub struct ServiceNow {
    connection: Connection,
    client: Arc<client::Client>,
    lookups: Arc<lookups::Lookups>,
}

impl ServiceNow {
    pub fn new(
        connection: &Connection,
        settings: &ServiceNowSettings,
        http: reqwest::Client,
        vault: Option<Arc<Secrets>>,
    ) -> ServiceNow {
        let auth = auth::Auth::new(settings.auth.clone(), &settings.url, vault, settings.refresh_token);
        let limiter = crate::itsm::limit::Limiter::new(connection.limits);
        let client = client::Client::new(settings.url.clone(), http, auth, limiter);
        ServiceNow { connection: connection.clone(), client: Arc::new(client), lookups: Arc::default() }
    }
}

/// The work item a Table API record of `kind` is, on the instance at `base_url`.
fn work_item(base_url: &str, kind: WorkItemType, record: &Value) -> Result<WorkItem, ItsmError> {
    let id = field(record, "sys_id");
    if id.is_empty() {
        return Err(ItsmError::Rejected("ServiceNow's answer has no sys_id".into()));
    }
    let number = Some(field(record, "number")).filter(|n| !n.is_empty());
    let url = Some(format!("{base_url}/nav_to.do?uri={}.do?sys_id={id}", requests::table(kind)));
    Ok(WorkItem { kind, id, number, url })
}

/// A field of a Table API record: a plain string, or `{value, display_value}` when display values are on.
fn field(record: &Value, name: &str) -> String {
    match record.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("value").and_then(Value::as_str).unwrap_or_default().to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Incidents are active until resolved (6), closed (7) or canceled (8); alerts until Closed.
fn is_active(record: &Value) -> bool {
    let active = field(record, "active");
    let state = field(record, "state");
    active != "false" && !matches!(state.as_str(), "6" | "7" | "8" | "Closed")
}

fn result(answer: Value) -> Value {
    match answer {
        Value::Object(mut o) => o.remove("result").unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

#[async_trait]
impl Connector for ServiceNow {
    fn credentials_status(&self) -> Option<Value> {
        let (ends, expiring) = self.client.auth().refresh_token_status()?;
        Some(serde_json::json!({ "refreshTokenEndsAt": ends.to_rfc3339(), "refreshTokenExpiresSoon": expiring }))
    }

    async fn changes(&self, kind: SyncKind, window: &Window, limit: usize) -> Result<Vec<Change>, ItsmError> {
        let request = requests::changes(kind, window, limit)
            .ok_or_else(|| ItsmError::Rejected(format!("the sync position {window:?} is not ServiceNow's")))?;
        let body = self.client.send_raw(&request).await?;
        servicedesk::parse(&body, kind, &self.connection.name)
    }

    async fn probe(&self) -> Diagnosis {
        let mut read = Vec::new();
        for table in [requests::table(self.connection.work_item_type), "change_request"] {
            let found = self.client.probe(table).await;
            if !found.ok {
                return found;
            }
            read.push(table);
        }
        Diagnosis::ok(format!("signed in to {} and read {}", self.client.base_url, read.join(" and ")))
    }

    async fn configuration(&self) -> Result<RemoteConfiguration, ItsmError> {
        let table = requests::table(self.connection.work_item_type);
        let mut configuration = RemoteConfiguration::default();
        for record in result(self.client.send(&requests::choices(table)).await?).as_array().into_iter().flatten() {
            let choice = Choice { value: field(record, "value"), label: field(record, "label") };
            configuration.choices.entry(field(record, "element")).or_default().push(choice);
        }
        for record in result(self.client.send(&requests::templates(table)).await?).as_array().into_iter().flatten() {
            configuration.templates.push(RemoteTemplate {
                id: field(record, "sys_id"),
                name: field(record, "name"),
                template: field(record, "template"),
            });
        }
        Ok(configuration)
    }

    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError> {
        if crate::itsm::limit::is_inline() {
            lookups::find_one(&self.client, kind, correlation_key).await
        } else {
            self.lookups.find(&self.client, kind, correlation_key).await
        }
    }

    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError> {
        let answer = self.client.send(&requests::create(&self.connection, kind, content)).await?;
        if kind == WorkItemType::Event {
            // Event Management answers with a count, not a record: the message key is the handle.
            return Ok(WorkItem { kind, id: content.correlation_key.clone(), number: None, url: None });
        }
        work_item(&self.client.base_url, kind, &result(answer))
    }

    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError> {
        if item.kind == WorkItemType::Event {
            return Ok(true);
        }
        match self.client.send(&requests::status(item.kind, &item.id)).await {
            Ok(answer) => Ok(is_active(&result(answer))),
            Err(ItsmError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn add_note(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError> {
        self.client.send(&requests::add_note(&self.connection, item.kind, &item.id, content, note)).await.map(drop)
    }

    async fn resolve(
        &self,
        item: &WorkItem,
        content: &Content,
        close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError> {
        let request = requests::resolve(&self.connection, item.kind, &item.id, content, close_code, close_notes);
        self.client.send(&request).await.map(drop)
    }

    async fn reopen(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError> {
        self.client.send(&requests::reopen(&self.connection, item.kind, &item.id, content, note)).await.map(drop)
    }
}
