//! The ITSM products, behind one trait. Each product has its own folder with the same parts:
//! its requests and mapping (what to send), its client (auth, sending, errors) and its tests.
//! `dry_run` executes nothing and records what would have been sent.

pub mod cherwell;
pub mod dry_run;
pub mod limit;
pub mod provance;
pub mod scsm;
pub mod servicenow;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{Connection, Product};
use crate::workitem::{Content, WorkItemType};

/// A connection's secret: given in its settings, or read from Key Vault. `what` names it in the error when
/// the vault is not configured ("password", "client secret"). A vault outage is transient; anything else the
/// vault says needs the operator and counts as refused credentials (retried too, with the vault's advice).
pub async fn read_secret(
    setting: &crate::config::SecretSetting,
    vault: Option<&crate::secrets::Secrets>,
    what: &str,
) -> Result<crate::config::Secret, ItsmError> {
    use crate::config::SecretSetting;
    match (setting, vault) {
        (SecretSetting::Value(secret), _) => Ok(secret.clone()),
        (SecretSetting::KeyVault(name), Some(vault)) => vault.get(name).await.map_err(|error| {
            if error.is_transient() {
                ItsmError::Transient { message: error.to_string(), retry_after: None }
            } else {
                ItsmError::Auth(error.to_string())
            }
        }),
        (SecretSetting::KeyVault(name), None) => {
            Err(ItsmError::Auth(format!("the {what} {name} is in Key Vault, but ITSMC_KEY_VAULT_URL is not set")))
        }
    }
}

/// `text` cut to at most `max` characters (not bytes: a cut never splits one).
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// A work item in the ITSM tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WorkItem {
    #[serde(rename = "type")]
    pub kind: WorkItemType,
    /// The product's id (ServiceNow `sys_id`; for events, the message key).
    pub id: String,
    /// The number people use (`INC0010001`), when the product has one.
    pub number: Option<String>,
    pub url: Option<String>,
}

/// A work item found by its correlation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub item: WorkItem,
    pub active: bool,
}

/// Why a call to the ITSM tool failed; the variant decides what the outbox does.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ItsmError {
    /// Timeout, connection failure, 429 or 5xx: try again later (after `retry_after` if the tool said).
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Not sent: the connection's limits had no room for the alert route's own attempt. The outbox takes it
    /// over at once (after `retry_after` when the tool asked for a pause); nothing failed.
    #[error("{message}")]
    Busy { message: String, retry_after: Option<Duration> },
    /// The tool refused our credentials even after renewing them. Retried, since an operator may fix them.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The work item no longer exists.
    #[error("not found: {0}")]
    NotFound(String),
    /// The tool rejected the request (400, a business rule): retrying the same request cannot help.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl ItsmError {
    /// What an HTTP status from a product means for the outbox, the same for every product: `refused` is what
    /// to say after `message` when the product refused the credentials (401) or their rights (403).
    pub fn from_status(status: u16, retry_after: Option<Duration>, message: String, refused: [&str; 2]) -> ItsmError {
        match status {
            401 => ItsmError::Auth(format!("{message}; {}", refused[0])),
            403 => ItsmError::Auth(format!("{message}; {}", refused[1])),
            404 => ItsmError::NotFound(message),
            408 | 429 | 500..=599 => ItsmError::Transient { message, retry_after },
            _ => ItsmError::Rejected(message),
        }
    }

    /// The product could not be reached, or the connection broke: try again later.
    pub fn transport(product: &str, what: &str, error: &reqwest::Error) -> ItsmError {
        ItsmError::Transient {
            message: format!("{product}: {what}: {}", crate::http::failure(error)),
            retry_after: None,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ItsmError::Transient { .. } | ItsmError::Busy { .. } | ItsmError::Auth(_))
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ItsmError::Transient { retry_after, .. } | ItsmError::Busy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A refused sign-in, remembered for a while: every queued retry signing in again with a refused password
/// would lock a directory account (LDAP, Windows, `DOMAIN\user`) within minutes. Products that sign in with a
/// password call [`SignInGuard::check`] before each sign-in, [`SignInGuard::refused`] when the product refuses
/// it, and [`SignInGuard::clear`] when one succeeds or the secret changed (a Key Vault reload).
#[derive(Debug, Default)]
pub struct SignInGuard {
    refused: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl SignInGuard {
    /// How long a refusal stands before itsmc tries the same credentials again.
    pub const COOLDOWN: Duration = Duration::from_secs(600);

    /// `Err(Auth)` while a refusal stands, naming it and when the next attempt comes.
    pub fn check(&self) -> Result<(), ItsmError> {
        let refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*refused {
            Some((at, reason)) if at.elapsed() < Self::COOLDOWN => Err(ItsmError::Auth(format!(
                "{reason}; not signing in again for {} s, so that retries do not lock the account (a changed \
                 secret in Key Vault is tried at once)",
                (Self::COOLDOWN - at.elapsed()).as_secs()
            ))),
            _ => Ok(()),
        }
    }

    pub fn refused(&self, reason: &str) {
        *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), reason.to_string()));
    }

    pub fn clear(&self) {
        *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// What a connection test found: `code` is stable (`ok`, `wrong_credentials`, `missing_role`, `hibernating`,
/// `unreachable`, `rate_limited`, `unavailable`, `unexpected`); `message` says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Diagnosis {
    pub ok: bool,
    pub code: String,
    pub message: String,
}

impl Diagnosis {
    pub fn ok(message: impl Into<String>) -> Diagnosis {
        Diagnosis { ok: true, code: "ok".into(), message: message.into() }
    }
    pub fn problem(code: &str, message: impl Into<String>) -> Diagnosis {
        Diagnosis { ok: false, code: code.into(), message: message.into() }
    }
    /// `url` could not be reached: what failed, and the setting to check.
    pub fn unreachable(url: &str, error: &reqwest::Error) -> Diagnosis {
        Diagnosis::problem(
            "unreachable",
            format!("{url}: {}; check ITSMC_URL and that this host can reach it", crate::http::failure(error)),
        )
    }
}

/// The tool's own configuration that itsmc checks its settings against (ITSMC's "Sync" button).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RemoteConfiguration {
    /// Field -> its active choices (value and label), for the fields itsmc sets.
    pub choices: std::collections::BTreeMap<String, Vec<Choice>>,
    /// Active templates for the work item table.
    pub templates: Vec<RemoteTemplate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RemoteTemplate {
    pub id: String,
    pub name: String,
    /// The template's field assignments, as the product encodes them.
    pub template: String,
}

/// What one ITSM product can do for the alert path.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The newest work item of `kind` that carries this correlation key, open or closed.
    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError>;
    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError>;
    /// Whether a person or process has resolved or closed it since (a deleted one is not active).
    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError>;
    async fn add_note(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError>;
    /// Resolve the work item; one a person already resolved or closed is left as they left it (success).
    async fn resolve(
        &self,
        item: &WorkItem,
        content: &Content,
        close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError>;
    async fn reopen(&self, item: &WorkItem, content: &Content, note: &str) -> Result<(), ItsmError>;
    /// Records of `kind` changed in `window`, oldest first by (update time, id), at most `limit`, as
    /// `ServiceDesk_CL` rows. A product with nothing to sync (dry-run) has no changes.
    async fn changes(
        &self,
        _kind: crate::sync::SyncKind,
        _window: &crate::sync::Window,
        _limit: usize,
    ) -> Result<Vec<crate::sync::Change>, ItsmError> {
        Ok(Vec::new())
    }
    /// Checks that the connection works, and if not, why (`itsmc connections test`).
    async fn probe(&self) -> Diagnosis {
        Diagnosis::ok("dry-run: nothing to reach")
    }
    /// Reads the choice lists and templates the connection's settings are checked against.
    async fn configuration(&self) -> Result<RemoteConfiguration, ItsmError> {
        Ok(RemoteConfiguration::default())
    }
    /// What the health route should show of this connection's credentials (e.g. a refresh token about to
    /// run out); `None` when there is nothing to say.
    fn credentials_status(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The connector for a connection; `vault` holds the secrets its settings leave out.
pub fn connect(
    connection: &Connection,
    client: reqwest::Client,
    journal: Arc<dry_run::Journal>,
    vault: Option<Arc<crate::secrets::Secrets>>,
) -> Arc<dyn Connector> {
    match &connection.product {
        Product::DryRun => Arc::new(dry_run::DryRun::new(connection, journal)),
        Product::ServiceNow(settings) => Arc::new(servicenow::ServiceNow::new(connection, settings, client, vault)),
        Product::Scsm(settings) => Arc::new(scsm::Scsm::new(connection, settings, client, vault)),
        Product::Cherwell(settings) => Arc::new(cherwell::Cherwell::new(connection, settings, client, vault)),
        Product::Provance(settings) => Arc::new(provance::Provance::new(connection, settings, client, vault)),
    }
}
