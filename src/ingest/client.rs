//! The Logs Ingestion API client: `POST {endpoint}/dataCollectionRules/{id}/streams/{stream}
//! ?api-version=2023-01-01` with a gzip JSON array and an Entra token for `https://monitor.azure.com`.
//! No maintained crate speaks it, so it is this small client on itsmc's `reqwest` client and azure_core's
//! credentials (the managed identity needs Monitoring Metrics Publisher on the data collection rule).
//!
//! Answers: 204 taken; 429 and 5xx [`IngestError::Unavailable`] (with `Retry-After`); 400 and 413
//! [`IngestError::Refused`] with the service's reason; 401, 403 and 404 [`IngestError::Setup`] saying which
//! setting or role to fix. Nothing is retried here: the sync decides (see `sync::run`).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use url::Url;

use super::{Batch, IngestError};
use crate::secrets::TokenCache;

const API_VERSION: &str = "2023-01-01";
/// The audience of the Logs Ingestion API.
pub const MONITOR_SCOPE: &str = "https://monitor.azure.com/.default";

/// Where to send: the data collection endpoint (or the rule's own ingestion endpoint) and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestionSettings {
    /// `ITSMC_LOGS_ENDPOINT`, e.g. `https://itsmc-dce-a1b2.westeurope-1.ingest.monitor.azure.com`.
    pub endpoint: Url,
    /// `ITSMC_DCR_IMMUTABLE_ID`: `dcr-` and 32 hex digits (the rule's `immutableId`, not its resource id).
    pub rule: String,
    /// The stream of each table, when not `Custom-<table>` (`ITSMC_SERVICEDESK_STREAM`,
    /// `ITSMC_SERVICEDESKLOG_STREAM`).
    pub service_desk_stream: Option<String>,
    pub service_desk_log_stream: Option<String>,
    /// A user-assigned managed identity's client id (`ITSMC_MANAGED_IDENTITY_CLIENT_ID`).
    pub client_id: Option<String>,
}

pub struct LogsIngestion {
    http: reqwest::Client,
    settings: IngestionSettings,
    tokens: TokenCache,
}

impl LogsIngestion {
    pub fn new(settings: IngestionSettings, credential: Arc<dyn TokenCredential>, http: reqwest::Client) -> Self {
        LogsIngestion { http, settings, tokens: TokenCache::new(credential, MONITOR_SCOPE) }
    }

    pub fn describe(&self) -> String {
        format!("Logs Ingestion ({}, rule {})", self.settings.endpoint, self.settings.rule)
    }

    fn stream<'a>(&'a self, batch: &'a Batch) -> &'a str {
        let configured = if batch.schema.table == crate::sync::schema::service_desk().table {
            &self.settings.service_desk_stream
        } else {
            &self.settings.service_desk_log_stream
        };
        configured.as_deref().unwrap_or(&batch.schema.stream)
    }

    pub async fn send(&self, batch: &Batch) -> Result<(), IngestError> {
        let stream = self.stream(batch);
        let mut url = self.settings.endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| IngestError::Setup("ITSMC_LOGS_ENDPOINT cannot take a path".into()))?
            .pop_if_empty()
            .extend(["dataCollectionRules", &self.settings.rule, "streams", stream]);
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        let token = self.tokens.token().await.map_err(|e| {
            IngestError::Setup(format!(
                "no Entra token for Logs Ingestion (scope {MONITOR_SCOPE}): {e}; check the managed identity (or \
                 the developer sign-in)"
            ))
        })?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
            .map_err(|_| IngestError::Setup("the Entra token is not a valid HTTP header value".into()))?;
        authorization.set_sensitive(true);
        let body = super::gzip(batch.json.as_bytes());
        let what = format!("{} rows to {stream}", batch.rows);
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, authorization)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .header("x-ms-client-request-id", request_id())
            .body(body)
            .send()
            .await
            .map_err(|e| IngestError::Unavailable {
                message: format!("Logs Ingestion could not be reached sending {what}: {}", crate::http::failure(&e)),
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        let retry_after = crate::http::retry_after(response.headers());
        let reason = error_text(&response.text().await.unwrap_or_default());
        let message = format!("Logs Ingestion answered {what} with HTTP {status}: {reason}");
        Err(match status {
            400 | 413 => IngestError::Refused(message),
            401 | 403 => IngestError::Setup(format!(
                "{message}; give the identity the Monitoring Metrics Publisher role on the data collection rule"
            )),
            404 => IngestError::Setup(format!(
                "{message}; check ITSMC_LOGS_ENDPOINT, ITSMC_DCR_IMMUTABLE_ID (the rule's immutableId) and that the \
                 rule declares the stream {stream}"
            )),
            _ => IngestError::Unavailable { message, retry_after },
        })
    }
}

/// A random GUID, so a failed call can be traced in Azure's logs.
fn request_id() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The service's `{"error": {"code", "message"}}`, or the body's start.
fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name| error.and_then(|e| e.get(name)).and_then(Value::as_str).unwrap_or_default();
    match (field("code"), field("message")) {
        ("", "") => body.chars().take(300).collect(),
        (code, "") => code.to_string(),
        ("", message) => message.to_string(),
        (code, message) => format!("{code}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips() {
        let data = b"[{\"Title_s\":\"a\"}]".repeat(100);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&super::super::gzip(&data)[..]), &mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn error_text_reads_the_envelope() {
        assert_eq!(
            error_text(r#"{"error":{"code":"InvalidStream","message":"no such stream"}}"#),
            "InvalidStream: no such stream"
        );
        assert_eq!(error_text("oops"), "oops");
    }
}
