//! Connection care, as ITSMC's "Sync" button and error catalogue did it: test a connection and say what
//! is wrong in terms an operator can act on, and refresh the tool's configuration (choice lists and
//! templates), cached in the store and checked against the connection's settings.
//!
//! Run by `itsmc connections test|refresh NAME`, `POST /api/connections/{name}/test|refresh`, and once a
//! day by the timer. The last result of each connection is what `/api/health` shows.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Connection;
use crate::intake::Intake;
use crate::itsm::{Diagnosis, RemoteConfiguration};
use crate::store::{Store, StoreError, Table, upsert};

/// How often the timer refreshes a connection's configuration.
const REFRESH_EVERY_MS: i64 = 24 * 3600 * 1000;

/// What a refresh found and kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refreshed {
    pub connection: String,
    pub diagnosis: Diagnosis,
    /// When the configuration was read (Unix milliseconds).
    pub refreshed_at: i64,
    pub configuration: RemoteConfiguration,
    /// Configured values the tool does not offer, as `field (value)`.
    pub invalid: Vec<String>,
}

/// The last result per connection, for the health route.
#[derive(Default)]
pub struct Status(Mutex<HashMap<String, Diagnosis>>);

impl Status {
    pub fn set(&self, connection: &str, diagnosis: Diagnosis) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(connection.to_ascii_lowercase(), diagnosis);
        }
    }

    pub fn get(&self, connection: &str) -> Option<Diagnosis> {
        self.0.lock().ok()?.get(&connection.to_ascii_lowercase()).cloned()
    }
}

/// Tests the named connection.
pub async fn test(intake: &Intake, name: &str) -> Result<Diagnosis, String> {
    let (connection, connector) = intake.connection(name).ok_or_else(|| unknown(intake, name))?;
    let diagnosis = crate::itsm::limit::probe(connector.probe()).await;
    intake.connection_status.set(&connection.name, diagnosis.clone());
    Ok(diagnosis)
}

/// Reads the named connection's choice lists and templates, keeps them in the store and checks the
/// connection's settings against them.
pub async fn refresh(intake: &Intake, name: &str) -> Result<Refreshed, String> {
    let (connection, connector) = intake.connection(name).ok_or_else(|| unknown(intake, name))?;
    let mut diagnosis = crate::itsm::limit::probe(connector.probe()).await;
    let configuration = if diagnosis.ok {
        match connector.configuration().await {
            Ok(configuration) => configuration,
            Err(error) => {
                diagnosis = Diagnosis::problem("unexpected", format!("the choice lists could not be read: {error}"));
                RemoteConfiguration::default()
            }
        }
    } else {
        RemoteConfiguration::default()
    };
    let invalid = if diagnosis.ok { invalid_values(connection, &configuration) } else { Vec::new() };
    if !invalid.is_empty() {
        diagnosis = Diagnosis::problem(
            "invalid_values",
            format!("No values found for the following fields: {}", invalid.join(", ")),
        );
    }
    let refreshed = Refreshed {
        connection: connection.name.clone(),
        diagnosis: diagnosis.clone(),
        refreshed_at: chrono::Utc::now().timestamp_millis(),
        configuration,
        invalid,
    };
    if refreshed.diagnosis.ok || refreshed.diagnosis.code == "invalid_values" {
        let kept = json!(refreshed);
        upsert(intake.store.as_ref(), Table::Sync, &key(&refreshed.connection), &kept)
            .await
            .map_err(|e| e.to_string())?;
    }
    intake.connection_status.set(&connection.name, diagnosis);
    Ok(refreshed)
}

/// Refreshes every connection whose cached configuration is older than a day (the timer's part).
pub async fn refresh_due(intake: &Intake) -> Vec<Refreshed> {
    let mut done = Vec::new();
    for connection in &intake.config.connections {
        let cached = cached(intake.store.as_ref(), &connection.name).await.ok().flatten();
        let due = cached.is_none_or(|c| chrono::Utc::now().timestamp_millis() - c.refreshed_at >= REFRESH_EVERY_MS);
        if due && let Ok(refreshed) = refresh(intake, &connection.name).await {
            done.push(refreshed);
        }
    }
    done
}

/// The configuration kept by the last refresh.
pub async fn cached(store: &dyn Store, connection: &str) -> Result<Option<Refreshed>, StoreError> {
    let Some(entry) = store.get(Table::Sync, &key(connection)).await? else { return Ok(None) };
    serde_json::from_value(entry.value).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn key(connection: &str) -> String {
    format!("config-{}", connection.to_ascii_lowercase())
}

/// The connection's constant field values (and close code, urgencies and impacts) that are not among the
/// tool's choices. Values built from the alert (templates with `{{ }}`) cannot be checked ahead.
pub fn invalid_values(connection: &Connection, remote: &RemoteConfiguration) -> Vec<String> {
    let mut configured: Vec<(String, String)> = Vec::new();
    let field_sets = std::iter::once(&connection.fields).chain(connection.templates.values());
    for fields in field_sets {
        for (field, template) in fields {
            if remote.choices.contains_key(field) && template.is_constant() {
                configured.push((field.clone(), template.source().to_string()));
            }
        }
    }
    configured.push(("close_code".into(), connection.policy.close_code.clone()));
    for level in connection.severity.0.iter() {
        configured.push(("urgency".into(), level.urgency.to_string()));
        configured.push(("impact".into(), level.impact.to_string()));
    }
    let mut invalid = Vec::new();
    for (field, value) in configured {
        let Some(choices) = remote.choices.get(&field) else { continue };
        // ServiceNow takes a choice by value, and by label where the field allows display values.
        let known = choices.iter().any(|c| c.value == value || c.label == value);
        let entry = format!("{field} ({value})");
        if !known && !value.is_empty() && !invalid.contains(&entry) {
            invalid.push(entry);
        }
    }
    invalid
}

fn unknown(intake: &Intake, name: &str) -> String {
    let known: Vec<&str> = intake.config.connections.iter().map(|c| c.name.as_str()).collect();
    format!("no connection named '{name}'; known: {}", known.join(", "))
}
