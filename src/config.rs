//! Settings and connections.
//!
//! One connection comes from the environment (the Functions app settings: `ITSMC_PRODUCT`, `ITSMC_URL`,
//! ...); several named ones, with their templates and policy, from a TOML file named by
//! `ITSMC_CONNECTIONS_FILE`. Everything is validated here, at start-up: an invalid setting stops itsmc
//! with a message naming the setting and what is wrong, instead of failing on the first alert.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::http::HttpSettings;
use crate::workitem::template::Template;
use crate::workitem::{Fields, Grouping, OnResolve, Policy, RefireAfterClose, SeverityMap, WorkItemType};

/// A secret value. It has no `Display`, and its `Debug` prints `***`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A credential of a connection: given in the settings, or read from Key Vault (`ITSMC_KEY_VAULT_URL`) under
/// this secret name when the settings leave it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSetting {
    Value(Secret),
    KeyVault(String),
}

/// Where connection secrets come from when the settings do not give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultSettings {
    /// `ITSMC_KEY_VAULT_URL`, e.g. `https://contoso-itsmc.vault.azure.net/`.
    pub url: String,
    /// `ITSMC_MANAGED_IDENTITY_CLIENT_ID`: a user-assigned identity; else the system-assigned one.
    pub client_id: Option<String>,
}

/// A configuration error: which setting, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

pub(crate) fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { setting: setting.into(), message: message.into() }
}

#[derive(Debug, Clone)]
pub enum ServiceNowAuth {
    Basic {
        username: String,
        password: SecretSetting,
    },
    /// OAuth 2 password grant on `/oauth_token.do`.
    OAuth {
        username: String,
        password: SecretSetting,
        client_id: String,
        client_secret: SecretSetting,
        /// Where a refresh token ServiceNow hands out is written back (Key Vault only), and read at start.
        refresh_token: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ServiceNowSettings {
    /// Instance base URL without a trailing slash, e.g. `https://contoso.service-now.com`.
    pub url: String,
    pub auth: ServiceNowAuth,
    pub refresh_token: RefreshTokenPolicy,
}

/// When to warn that an OAuth refresh token is about to run out. ServiceNow does not say when a refresh
/// token expires: its lifespan is a setting of the OAuth application (Refresh Token Lifespan, 100 days by
/// default), which itsmc is told here, and counted from when the token was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenPolicy {
    /// `ITSMC_REFRESH_TOKEN_LIFESPAN_SECS`, as ServiceNow's setting is given.
    pub lifespan: Duration,
    /// `ITSMC_REFRESH_TOKEN_WARN_DAYS`: warn this long before the lifespan ends.
    pub warn_before: Duration,
}

fn refresh_token_policy(lookup: &impl Fn(&str) -> Option<String>) -> Result<RefreshTokenPolicy, ConfigError> {
    let lifespan = parse_number(lookup, "ITSMC_REFRESH_TOKEN_LIFESPAN_SECS", 8_640_000, 60, 10 * 365 * 86_400)?;
    let warn_days = parse_number(lookup, "ITSMC_REFRESH_TOKEN_WARN_DAYS", 14, 0, 3_650)?;
    Ok(RefreshTokenPolicy {
        lifespan: Duration::from_secs(lifespan),
        warn_before: Duration::from_secs(warn_days * 86_400),
    })
}

#[derive(Debug, Clone)]
pub enum Product {
    /// Renders the exact requests it would send, and sends nothing.
    DryRun,
    ServiceNow(ServiceNowSettings),
    /// System Center Service Manager through the Cireson portal's API.
    Scsm(crate::itsm::scsm::ScsmSettings),
    /// Boxed: its many names would make every `Product` twice the size.
    Cherwell(Box<crate::itsm::cherwell::CherwellSettings>),
    /// Provance on Dynamics 365, through the Dataverse Web API.
    Provance(crate::itsm::provance::ProvanceSettings),
}

impl Product {
    pub fn name(&self) -> &'static str {
        match self {
            Product::DryRun => "dry-run",
            Product::ServiceNow(_) => "servicenow",
            Product::Scsm(_) => "scsm",
            Product::Cherwell(_) => "cherwell",
            Product::Provance(_) => "provance",
        }
    }
}

/// One named connection to an ITSM tool, with its defaults and policy.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub product: Product,
    pub work_item_type: WorkItemType,
    pub grouping: Grouping,
    pub policy: Policy,
    /// Close notes on resolve; a template over the alert.
    pub close_notes: Template,
    /// ServiceNow's `short_description` is 160 characters by default; ITSMC cut it to 40.
    pub short_description_max: usize,
    pub severity: SeverityMap,
    /// Default field values (product field names), applied to every work item.
    pub fields: Fields,
    /// Named field sets picked with `?template=NAME`; they override the defaults.
    pub templates: BTreeMap<String, Fields>,
    /// This connection's sync scope in days and kinds, when not the global `ITSMC_SYNC_DAYS`/`_KINDS`.
    pub sync_days: Option<u32>,
    pub sync_kinds: Option<Vec<crate::sync::SyncKind>>,
    /// How hard itsmc may press the tool: requests in flight and per second.
    pub limits: crate::itsm::limit::Limits,
}

/// Outbox retry policy.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// After this long an operation that still fails is dead-lettered.
    pub max_age: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one instance holds an operation before another may take it over.
    pub lease: Duration,
    /// How long a finished delivery is kept (to answer its duplicates) before the timer deletes it.
    pub keep_done: Duration,
    /// How often the local background worker looks for due work.
    pub poll: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_age: Duration::from_secs(24 * 3600),
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            keep_done: Duration::from_secs(7 * 86_400),
            poll: Duration::from_millis(500),
        }
    }
}

/// Where itsmc keeps its state. Chosen the way the Functions host chooses its own storage, from the same
/// settings, so a function app needs nothing extra: `AzureWebJobsStorage` (a connection string), or the
/// identity-based `AzureWebJobsStorage__accountName` / `__tableServiceUri`; without them, the embedded store.
#[derive(Debug, Clone, PartialEq)]
pub enum StateSettings {
    /// The embedded file store in `ITSMC_DATA_DIR` (local use: one instance per directory).
    Embedded { data_dir: PathBuf },
    /// Azure Table Storage with the account key of a connection string (Azurite's too).
    TableConnectionString { connection_string: Secret, prefix: String },
    /// Azure Table Storage with an Entra token of the app's managed identity (user-assigned: `client_id`).
    TableIdentity { endpoint: url::Url, client_id: Option<String>, prefix: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub state: StateSettings,
    pub http: HttpSettings,
    /// How long the alert route waits for the ITSM tool before it answers 202 and leaves the work to the outbox.
    pub alert_budget: Duration,
    /// Whether a delivery still running when the alert route answers 202 goes on in the background. Not a
    /// setting: true where the process keeps running, false on Lambda, which freezes it after the answer (the
    /// run would resume minutes later, after its lease, beside the outbox's retry).
    pub finish_after_answer: bool,
    pub outbox: OutboxSettings,
    /// Key Vault for connection secrets the settings leave out; `None`: every secret is in the settings.
    pub key_vault: Option<KeyVaultSettings>,
    /// Entra validation of Secure Webhook tokens on the alert route (`ITSMC_ENTRA_*`); `None`: off.
    pub entra: Option<crate::server::entra::EntraSettings>,
    /// function-sync: what to copy into Log Analytics, how far back, how fast.
    pub sync: SyncSettings,
    /// Where the sync sends rows; `None` (no `ITSMC_LOGS_ENDPOINT`): into the local store.
    pub logs: Option<crate::ingest::client::IngestionSettings>,
    /// The first connection is the default one (`/api/alert` without `?connection=`).
    pub connections: Vec<Arc<Connection>>,
    /// `ITSMC_API_KEY`: every route but the readiness probe `/` wants it, as `?code=` or `x-functions-key`.
    /// For hosts that check no key of their own (a Lambda Function URL); the Functions host checks its keys.
    pub api_key: Option<Secret>,
}

/// function-sync's settings (`ITSMC_SYNC_*`).
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// How far back a first sync starts: 1 to 120 days (ITSMC's maximum), default 120.
    pub days: u32,
    /// The kinds synced, default both.
    pub kinds: Vec<crate::sync::SyncKind>,
    /// Records per request to the ITSM tool.
    pub page_size: usize,
    /// The largest batch sent to Logs Ingestion, in bytes of JSON (the API's limit is 1 MB).
    pub batch_bytes: usize,
    /// How far before its watermark a run starts reading again, for records committed late.
    pub overlap: Duration,
    /// How long one timer invocation may sync, below the host's `functionTimeout`.
    pub budget: Duration,
    /// The local server's own schedule (`ITSMC_SYNC_SCHEDULE`, the timer trigger's NCRONTAB with seconds).
    pub schedule: crate::sync::schedule::Schedule,
}

impl Config {
    /// Read from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Read through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let state = state_settings(&lookup)?;
        let http = HttpSettings { ca_file: lookup("ITSMC_CA_FILE"), ..HttpSettings::default() };
        let alert_budget = Duration::from_millis(parse_number(&lookup, "ITSMC_ALERT_BUDGET_MS", 5_000, 100, 9_000)?);
        let outbox = OutboxSettings {
            max_age: Duration::from_secs(parse_number(&lookup, "ITSMC_OUTBOX_MAX_AGE_SECS", 86_400, 1, 7 * 86_400)?),
            first_backoff: Duration::from_millis(parse_number(
                &lookup,
                "ITSMC_OUTBOX_BACKOFF_MS",
                2_000,
                1,
                3_600_000,
            )?),
            lease: Duration::from_secs(parse_number(&lookup, "ITSMC_OUTBOX_LEASE_SECS", 60, 1, 3_600)?),
            keep_done: Duration::from_secs(86_400 * parse_number(&lookup, "ITSMC_OUTBOX_KEEP_DAYS", 7, 1, 365)?),
            ..OutboxSettings::default()
        };
        let key_vault = lookup("ITSMC_KEY_VAULT_URL")
            .map(|url| KeyVaultSettings { url, client_id: lookup(crate::secrets::MANAGED_IDENTITY_CLIENT_ID_SETTING) });
        let vault = key_vault.is_some();
        let connections = match lookup("ITSMC_CONNECTIONS_FILE") {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("ITSMC_CONNECTIONS_FILE", format!("cannot read {path}: {e}")))?;
                connections_from_toml(&text, &lookup, vault)
                    .map_err(|e| invalid(format!("ITSMC_CONNECTIONS_FILE ({path}) {}", e.setting), e.message))?
            }
            None => vec![connection_from_env(&lookup, vault)?],
        };
        let entra = crate::server::entra::EntraSettings::from_lookup(&lookup)?;
        let sync = sync_settings(&lookup)?;
        let logs = ingestion_settings(&lookup)?;
        let api_key = match lookup("ITSMC_API_KEY") {
            Some(key) if key.trim().len() < 16 => {
                return Err(invalid("ITSMC_API_KEY", "use at least 16 characters (e.g. `openssl rand -hex 24`)"));
            }
            key => key.map(Secret),
        };
        Ok(Config {
            api_key,
            sync,
            logs,
            state,
            key_vault,
            entra,
            http,
            alert_budget,
            finish_after_answer: true,
            outbox,
            connections: connections.into_iter().map(Arc::new).collect(),
        })
    }

    pub fn connection(&self, name: Option<&str>) -> Option<&Arc<Connection>> {
        match name {
            None | Some("") => self.connections.first(),
            Some(name) => self.connections.iter().find(|c| c.name.eq_ignore_ascii_case(name)),
        }
    }
}

fn sync_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<SyncSettings, ConfigError> {
    let kinds = match lookup("ITSMC_SYNC_KINDS") {
        None => crate::sync::SyncKind::ALL.to_vec(),
        Some(raw) => sync_kinds("ITSMC_SYNC_KINDS", raw.split(',').map(str::trim).filter(|k| !k.is_empty()))?,
    };
    Ok(SyncSettings {
        days: parse_number(lookup, "ITSMC_SYNC_DAYS", 120, 1, 120)? as u32,
        kinds,
        page_size: parse_number(lookup, "ITSMC_SYNC_PAGE_SIZE", 1000, 1, 10_000)? as usize,
        batch_bytes: parse_number(
            lookup,
            "ITSMC_SYNC_BATCH_BYTES",
            crate::ingest::MAX_BATCH_BYTES as u64,
            10_000,
            crate::ingest::MAX_BATCH_BYTES as u64,
        )? as usize,
        overlap: Duration::from_secs(parse_number(lookup, "ITSMC_SYNC_OVERLAP_SECS", 300, 0, 86_400)?),
        budget: Duration::from_secs(parse_number(lookup, "ITSMC_SYNC_BUDGET_SECS", 240, 1, 3_600)?),
        schedule: crate::sync::schedule::Schedule::parse(
            &lookup("ITSMC_SYNC_SCHEDULE").unwrap_or_else(|| "0 */15 * * * *".into()),
        )
        .map_err(|e| invalid("ITSMC_SYNC_SCHEDULE", e))?,
    })
}

fn sync_kinds<'a>(
    setting: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<crate::sync::SyncKind>, ConfigError> {
    names
        .map(|k| {
            crate::sync::SyncKind::parse(k)
                .ok_or_else(|| invalid(setting, format!("'{k}' is not Incident or ChangeRequest")))
        })
        .collect()
}

fn ingestion_settings(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<crate::ingest::client::IngestionSettings>, ConfigError> {
    let Some(raw) = lookup("ITSMC_LOGS_ENDPOINT") else {
        if lookup("ITSMC_DCR_IMMUTABLE_ID").is_some() {
            return Err(invalid("ITSMC_LOGS_ENDPOINT", "the data collection rule needs its endpoint too"));
        }
        return Ok(None);
    };
    let endpoint = https_url("ITSMC_LOGS_ENDPOINT", &raw)?;
    let rule = lookup("ITSMC_DCR_IMMUTABLE_ID").ok_or_else(|| {
        invalid("ITSMC_DCR_IMMUTABLE_ID", "Logs Ingestion needs the data collection rule's immutableId")
    })?;
    let valid = rule.len() == 36 && rule.starts_with("dcr-") && rule[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(invalid(
            "ITSMC_DCR_IMMUTABLE_ID",
            format!("'{rule}' is not an immutableId (dcr- and 32 hex digits; the rule's JSON view shows it)"),
        ));
    }
    Ok(Some(crate::ingest::client::IngestionSettings {
        endpoint,
        rule,
        service_desk_stream: lookup("ITSMC_SERVICEDESK_STREAM"),
        service_desk_log_stream: lookup("ITSMC_SERVICEDESKLOG_STREAM"),
        client_id: lookup(crate::secrets::MANAGED_IDENTITY_CLIENT_ID_SETTING),
    }))
}

fn state_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<StateSettings, ConfigError> {
    let prefix = lookup("ITSMC_TABLE_PREFIX").unwrap_or_else(|| "itsmc".into());
    let valid_prefix = prefix.len() <= 40
        && prefix.starts_with(|c: char| c.is_ascii_alphabetic())
        && prefix.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid_prefix {
        // Table names are 3-63 letters and digits, starting with a letter; the prefix leaves room for ours.
        return Err(invalid(
            "ITSMC_TABLE_PREFIX",
            format!("'{prefix}' must be up to 40 letters and digits, starting with a letter"),
        ));
    }
    if let Some(connection_string) = lookup("AzureWebJobsStorage") {
        return Ok(StateSettings::TableConnectionString { connection_string: Secret::new(connection_string), prefix });
    }
    let client_id = lookup("AzureWebJobsStorage__clientId");
    let endpoint = if let Some(uri) = lookup("AzureWebJobsStorage__tableServiceUri") {
        Some(https_url("AzureWebJobsStorage__tableServiceUri", &uri)?)
    } else if let Some(account) = lookup("AzureWebJobsStorage__accountName") {
        let valid =
            (3..=24).contains(&account.len()) && account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(invalid(
                "AzureWebJobsStorage__accountName",
                format!("'{account}' is not a storage account name (3-24 lowercase letters and digits)"),
            ));
        }
        Some(https_url("AzureWebJobsStorage__accountName", &format!("https://{account}.table.core.windows.net"))?)
    } else {
        None
    };
    let other_identity_settings = ["AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri"];
    if endpoint.is_none()
        && let Some(setting) = other_identity_settings.into_iter().find(|name| lookup(name).is_some())
    {
        // The host runs on identity-based storage, but itsmc cannot tell where the tables are: falling back to
        // the embedded store would give each instance a state of its own.
        return Err(invalid(
            setting,
            "itsmc keeps its state in the same account's Table service: also set AzureWebJobsStorage__accountName \
             or AzureWebJobsStorage__tableServiceUri",
        ));
    }
    Ok(match endpoint {
        Some(endpoint) => StateSettings::TableIdentity { endpoint, client_id, prefix },
        None => StateSettings::Embedded {
            data_dir: PathBuf::from(lookup("ITSMC_DATA_DIR").unwrap_or_else(|| "./itsmc-data".into())),
        },
    })
}

/// A product whose settings one parser reads from the environment (`ITSMC_*` names) reads a connections file's
/// entry through the same parser: the entry's keys under the names the environment uses, its `settings` table
/// as `ITSMC_` and the key uppercased (only the product's own `known` names). Errors name the file's key.
fn file_product<T>(
    c: &FileConnection,
    at: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    known: &[&str],
    product: &str,
    parse: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let allowed: Vec<String> = known.iter().map(|name| name["ITSMC_".len()..].to_ascii_lowercase()).collect();
    if let Some(key) = c.settings.keys().find(|key| !allowed.contains(key)) {
        // TOML keys are case-sensitive, like the file's other keys: `Cherwell_Auth_Mode` would never be read.
        let hint = if allowed.contains(&key.to_ascii_lowercase()) {
            format!("write it in lower case: {}", key.to_ascii_lowercase())
        } else {
            format!("not a {product} setting; use {}", allowed.join(", "))
        };
        return Err(invalid(format!("{at}.settings.{key}"), hint));
    }
    let password = secret_from(lookup, &format!("{at}.password"), c.password.clone(), c.password_env.clone())?;
    let client_secret =
        secret_from(lookup, &format!("{at}.client_secret"), c.client_secret.clone(), c.client_secret_env.clone())?;
    let read = |name: &str| -> Option<String> {
        match name {
            "ITSMC_URL" => c.url.clone(),
            "ITSMC_USERNAME" => c.username.clone(),
            "ITSMC_PASSWORD" => password.as_ref().map(|p| p.expose().to_string()),
            "ITSMC_CLIENT_ID" => c.client_id.clone(),
            "ITSMC_CLIENT_SECRET" => client_secret.as_ref().map(|s| s.expose().to_string()),
            "ITSMC_WORK_ITEM_TYPE" => c.work_item_type.clone(),
            "ITSMC_PASSWORD_SECRET_NAME" => c.key_vault_names.password.clone(),
            "ITSMC_CLIENT_SECRET_SECRET_NAME" => c.key_vault_names.client_secret.clone(),
            "ITSMC_SYNC_KINDS" => c.sync_kinds.as_ref().map(|kinds| kinds.join(",")).or_else(|| lookup(name)),
            // Settings of the whole app, not of one connection.
            crate::secrets::MANAGED_IDENTITY_CLIENT_ID_SETTING => lookup(name),
            other => c.settings.get(&other.strip_prefix("ITSMC_")?.to_ascii_lowercase()).cloned(),
        }
    };
    parse(&read).map_err(|e| {
        let key = match e.setting.as_str() {
            "ITSMC_URL" => "url".to_string(),
            "ITSMC_USERNAME" => "username".into(),
            "ITSMC_PASSWORD" => "password".into(),
            "ITSMC_CLIENT_ID" => "client_id".into(),
            "ITSMC_CLIENT_SECRET" => "client_secret".into(),
            "ITSMC_WORK_ITEM_TYPE" => "work_item_type".into(),
            "ITSMC_PASSWORD_SECRET_NAME" => "key_vault_names.password".into(),
            "ITSMC_CLIENT_SECRET_SECRET_NAME" => "key_vault_names.client_secret".into(),
            "ITSMC_SYNC_KINDS" => "sync_kinds".into(),
            other => format!("settings.{}", other.trim_start_matches("ITSMC_").to_ascii_lowercase()),
        };
        invalid(format!("{at}.{key}"), e.message)
    })
}

/// Whether `text` is a GUID, `8-4-4-4-12` hex digits.
pub(crate) fn is_guid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A GUID setting (braces allowed), lower-cased; `what` says what it is, for the error.
pub(crate) fn guid(setting: &str, raw: &str, what: &str) -> Result<String, ConfigError> {
    let text = raw.trim().trim_start_matches('{').trim_end_matches('}');
    if !is_guid(text) {
        return Err(invalid(setting, format!("'{raw}' is not a GUID ({what})")));
    }
    Ok(text.to_ascii_lowercase())
}

/// An https URL (http only to this machine), as every endpoint itsmc talks to must be.
pub(crate) fn https_url(setting: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| invalid(setting, format!("'{raw}' is not a URL ({e})")))?;
    if url.scheme() != "https" && !(url.scheme() == "http" && crate::http::plain_http_allowed(&url)) {
        return Err(invalid(setting, format!("'{raw}' must be an https:// URL")));
    }
    Ok(url)
}

fn parse_number(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(name, format!("'{raw}' is not a whole number from {min} to {max}"))),
        },
    }
}

fn parse_word<T: std::str::FromStr<Err = String>>(
    setting: &str,
    raw: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|e: String| invalid(setting, e)),
    }
}

fn compile(setting: &str, source: &str) -> Result<Template, ConfigError> {
    Template::compile(source).map_err(|e| invalid(setting, e.to_string()))
}

const DEFAULT_CLOSE_NOTES: &str =
    "Resolved by Azure Monitor: alert \"{{ rule }}\" was resolved at {{ resolvedAt | default(\"(time not given)\") }}.";

fn servicenow_url(setting: &str, raw: &str) -> Result<String, ConfigError> {
    Ok(base_url(setting, raw)?.as_str().trim_end_matches('/').to_string())
}

/// A product's base URL: [`https_url`], with no credentials in it (they have settings of their own).
pub(crate) fn base_url(setting: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let url = https_url(setting, raw)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(setting, "put credentials in their own settings, not in the URL"));
    }
    Ok(url)
}

/// The secrets of one connection, as settings give them; `vault_names`: Key Vault is configured, and what
/// the settings leave out is read from it under these names.
struct GivenSecrets {
    password: Option<Secret>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    vault_names: Option<crate::secrets::SecretNames>,
}

/// Overrides of a connection's Key Vault secret names, each `None` keeping the default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NameOverrides {
    password: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

impl NameOverrides {
    fn any(&self) -> bool {
        self.password.is_some() || self.client_secret.is_some() || self.refresh_token.is_some()
    }
}

/// The connection's secret names: the defaults with `overrides` applied, each checked against what Key
/// Vault allows. `setting(kind)` names the setting an override came from, for the error.
fn vault_names(
    connection: &str,
    overrides: NameOverrides,
    setting: impl Fn(&str) -> String,
) -> Result<crate::secrets::SecretNames, ConfigError> {
    let mut names = crate::secrets::SecretNames::for_connection(connection);
    for (kind, name, given) in [
        ("password", &mut names.password, overrides.password),
        ("client_secret", &mut names.client_secret, overrides.client_secret),
        ("refresh_token", &mut names.refresh_token, overrides.refresh_token),
    ] {
        if let Some(given) = given {
            crate::secrets::check_name(&given).map_err(|e| invalid(setting(kind), e.to_string()))?;
            *name = given;
        }
    }
    Ok(names)
}

fn servicenow_auth(prefix: &str, username: Option<String>, given: GivenSecrets) -> Result<ServiceNowAuth, ConfigError> {
    let username = username.ok_or_else(|| invalid(format!("{prefix}USERNAME"), "ServiceNow needs a user name"))?;
    let vault = given.vault_names;
    let password = match (given.password, &vault) {
        (Some(password), _) => SecretSetting::Value(password),
        (None, Some(names)) => SecretSetting::KeyVault(names.password.clone()),
        (None, None) => {
            return Err(invalid(
                format!("{prefix}PASSWORD"),
                "ServiceNow needs the user's password (or ITSMC_KEY_VAULT_URL holding it)",
            ));
        }
    };
    let client_secret = match (given.client_secret, &given.client_id, &vault) {
        (Some(secret), _, _) => Some(SecretSetting::Value(secret)),
        (None, Some(_), Some(names)) => Some(SecretSetting::KeyVault(names.client_secret.clone())),
        (None, _, _) => None,
    };
    let refresh_token = vault.map(|names| names.refresh_token);
    match (given.client_id, client_secret) {
        (Some(client_id), Some(client_secret)) => {
            Ok(ServiceNowAuth::OAuth { username, password, client_id, client_secret, refresh_token })
        }
        (None, None) => Ok(ServiceNowAuth::Basic { username, password }),
        (Some(_), None) => {
            Err(invalid(format!("{prefix}CLIENT_SECRET"), "OAuth needs the client secret with the client id"))
        }
        (None, Some(_)) => {
            Err(invalid(format!("{prefix}CLIENT_ID"), "OAuth needs the client id with the client secret"))
        }
    }
}

fn connection_from_env(lookup: &impl Fn(&str) -> Option<String>, vault: bool) -> Result<Connection, ConfigError> {
    let name = lookup("ITSMC_CONNECTION_NAME").unwrap_or_else(|| "default".into());
    let product = match lookup("ITSMC_PRODUCT").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("dry-run") | Some("dryrun") => Product::DryRun,
        Some("servicenow") => {
            let raw = lookup("ITSMC_URL").ok_or_else(|| invalid("ITSMC_URL", "ServiceNow needs the instance URL"))?;
            let url = servicenow_url("ITSMC_URL", &raw)?;
            let env_setting = |kind: &str| format!("ITSMC_{}_SECRET_NAME", kind.to_ascii_uppercase());
            let overrides = NameOverrides {
                password: lookup(&env_setting("password")),
                client_secret: lookup(&env_setting("client_secret")),
                refresh_token: lookup(&env_setting("refresh_token")),
            };
            let given = GivenSecrets {
                password: lookup("ITSMC_PASSWORD").map(Secret),
                client_id: lookup("ITSMC_CLIENT_ID"),
                client_secret: lookup("ITSMC_CLIENT_SECRET").map(Secret),
                vault_names: vault.then(|| vault_names(&name, overrides, env_setting)).transpose()?,
            };
            let auth = servicenow_auth("ITSMC_", lookup("ITSMC_USERNAME"), given)?;
            Product::ServiceNow(ServiceNowSettings { url, auth, refresh_token: refresh_token_policy(lookup)? })
        }
        Some("scsm") => Product::Scsm(crate::itsm::scsm::settings_from_lookup(lookup, &name, vault)?),
        Some("cherwell") => {
            Product::Cherwell(Box::new(crate::itsm::cherwell::settings_from_lookup(lookup, &name, vault)?))
        }
        Some("provance") => Product::Provance(crate::itsm::provance::settings_from_lookup(lookup, &name, vault)?),
        Some(other) => {
            return Err(invalid(
                "ITSMC_PRODUCT",
                format!("'{other}' is not supported; use servicenow, cherwell, provance, scsm or dry-run"),
            ));
        }
    };
    let policy = Policy {
        refire_after_close: parse_word(
            "ITSMC_REFIRE_AFTER_CLOSE",
            lookup("ITSMC_REFIRE_AFTER_CLOSE"),
            RefireAfterClose::New,
        )?,
        on_resolve: parse_word("ITSMC_ON_RESOLVE", lookup("ITSMC_ON_RESOLVE"), OnResolve::Resolve)?,
        close_code: lookup("ITSMC_CLOSE_CODE").unwrap_or_else(|| Policy::default().close_code),
    };
    let close_notes =
        compile("ITSMC_CLOSE_NOTES", &lookup("ITSMC_CLOSE_NOTES").unwrap_or_else(|| DEFAULT_CLOSE_NOTES.into()))?;
    let mut fields = Fields::new();
    for (setting, field) in [
        ("ITSMC_CALLER_ID", "caller_id"),
        ("ITSMC_ASSIGNMENT_GROUP", "assignment_group"),
        ("ITSMC_CATEGORY", "category"),
        ("ITSMC_SUBCATEGORY", "subcategory"),
        ("ITSMC_CONTACT_TYPE", "contact_type"),
    ] {
        if let Some(value) = lookup(setting) {
            fields.insert(field.to_string(), compile(setting, &value)?);
        }
    }
    Ok(Connection {
        name,
        product,
        work_item_type: parse_word("ITSMC_WORK_ITEM_TYPE", lookup("ITSMC_WORK_ITEM_TYPE"), WorkItemType::Incident)?,
        grouping: parse_word("ITSMC_GROUPING", lookup("ITSMC_GROUPING"), Grouping::Alert)?,
        policy,
        close_notes,
        short_description_max: parse_number(lookup, "ITSMC_SHORT_DESCRIPTION_MAX", 160, 10, 4000)? as usize,
        severity: SeverityMap::default(),
        fields,
        templates: BTreeMap::new(),
        sync_days: None,
        sync_kinds: None,
        limits: limits(lookup, "", None, None)?,
    })
}

/// A connection's request limits: its own (`max_concurrent_requests`, `max_requests_per_second` in the
/// connections file), else `ITSMC_MAX_CONCURRENT_REQUESTS` and `ITSMC_MAX_REQUESTS_PER_SECOND` (0: no rate of
/// our own), else the defaults. `at` names the connection in errors about its own values.
fn limits(
    lookup: &impl Fn(&str) -> Option<String>,
    at: &str,
    concurrent: Option<u64>,
    per_second: Option<u64>,
) -> Result<crate::itsm::limit::Limits, ConfigError> {
    let defaults = crate::itsm::limit::Limits::default();
    let concurrent = match concurrent {
        Some(n @ 1..=1_000) => n,
        Some(n) => return Err(invalid(format!("{at}max_concurrent_requests"), format!("{n} is not from 1 to 1000"))),
        None => parse_number(lookup, "ITSMC_MAX_CONCURRENT_REQUESTS", defaults.max_concurrent as u64, 1, 1_000)?,
    };
    let per_second = match per_second {
        Some(n @ 0..=10_000) => n,
        Some(n) => return Err(invalid(format!("{at}max_requests_per_second"), format!("{n} is not from 0 to 10000"))),
        None => parse_number(lookup, "ITSMC_MAX_REQUESTS_PER_SECOND", 0, 0, 10_000)?,
    };
    Ok(crate::itsm::limit::Limits {
        max_concurrent: concurrent as usize,
        max_per_second: (per_second > 0).then_some(per_second as f64),
    })
}

/// The TOML file: `[[connections]]` tables. Secrets may be given inline or, better, as the name of an
/// environment variable (`password_env`, `client_secret_env`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnections {
    connections: Vec<FileConnection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    name: String,
    product: String,
    url: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    password_env: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_env: Option<String>,
    /// Key Vault secret names other than the defaults (`<name>-password`, ...).
    #[serde(default)]
    key_vault_names: NameOverrides,
    /// The sync scope of this connection: days back (1 to 120) and kinds.
    sync_days: Option<u32>,
    sync_kinds: Option<Vec<String>>,
    work_item_type: Option<String>,
    grouping: Option<String>,
    short_description_max: Option<usize>,
    #[serde(default)]
    policy: FilePolicy,
    #[serde(default)]
    severity: BTreeMap<String, crate::workitem::UrgencyImpact>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    templates: BTreeMap<String, BTreeMap<String, String>>,
    /// Product settings by their environment names without `ITSMC_`, lowercased (`cherwell_auth_mode`).
    #[serde(default)]
    settings: BTreeMap<String, String>,
    max_concurrent_requests: Option<u64>,
    max_requests_per_second: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    refire_after_close: Option<String>,
    on_resolve: Option<String>,
    close_code: Option<String>,
    close_notes: Option<String>,
}

fn secret_from(
    lookup: &impl Fn(&str) -> Option<String>,
    setting: &str,
    inline: Option<Secret>,
    env: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(invalid(setting, format!("give {setting} or {setting}_env, not both"))),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(var)) => lookup(&var)
            .map(|v| Some(Secret(v)))
            .ok_or_else(|| invalid(format!("{setting}_env"), format!("the environment variable {var} is not set"))),
        (None, None) => Ok(None),
    }
}

fn compile_fields(setting: &str, raw: BTreeMap<String, String>) -> Result<Fields, ConfigError> {
    raw.into_iter().map(|(name, source)| Ok((name.clone(), compile(&format!("{setting}.{name}"), &source)?))).collect()
}

fn connections_from_toml(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    vault: bool,
) -> Result<Vec<Connection>, ConfigError> {
    let file: FileConnections = toml::from_str(text).map_err(|e| invalid("", e.to_string()))?;
    if file.connections.is_empty() {
        return Err(invalid("connections", "the file defines no [[connections]]"));
    }
    let mut out: Vec<Connection> = Vec::new();
    let mut refresh_token_names: Vec<(String, String)> = Vec::new();
    for (i, c) in file.connections.into_iter().enumerate() {
        let at = format!("connections[{i}] ({})", c.name);
        if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err(invalid(format!("{at}.name"), "use letters, digits, '-' and '_'"));
        }
        if out.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)) {
            return Err(invalid(format!("{at}.name"), "two connections have this name"));
        }
        // Key Vault names know no '_' and ignore case: `prod_eu` and `prod-eu` would share their secrets.
        // Named explicitly, two connections may share a password or client secret (one service account).
        let vault_name = |name: &str| crate::secrets::key_vault_name(name).to_ascii_lowercase();
        if vault
            && !c.key_vault_names.any()
            && let Some(other) = out.iter().find(|o| vault_name(&o.name) == vault_name(&c.name))
        {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "its Key Vault secrets would be those of connection '{}' ({}-password, ...); rename one \
                     or give it key_vault_names",
                    other.name,
                    vault_name(&c.name)
                ),
            ));
        }
        let product = match c.product.to_ascii_lowercase().as_str() {
            "dry-run" | "dryrun" => Product::DryRun,
            "servicenow" => {
                let raw = c.url.ok_or_else(|| invalid(format!("{at}.url"), "ServiceNow needs the instance URL"))?;
                let password = secret_from(lookup, &format!("{at}.password"), c.password, c.password_env)?;
                let client_secret =
                    secret_from(lookup, &format!("{at}.client_secret"), c.client_secret, c.client_secret_env)?;
                let names = vault
                    .then(|| vault_names(&c.name, c.key_vault_names, |kind| format!("{at}.key_vault_names.{kind}")))
                    .transpose()?;
                // Each connection writes its own refresh token back: two sharing one would undo each other.
                if let Some(names) = &names
                    && let Some(other) =
                        refresh_token_names.iter().find(|(_, n)| n.eq_ignore_ascii_case(&names.refresh_token))
                {
                    return Err(invalid(
                        format!("{at}.key_vault_names.refresh_token"),
                        format!("connection '{}' already keeps its refresh token in '{}'", other.0, other.1),
                    ));
                }
                if let Some(names) = &names {
                    refresh_token_names.push((c.name.clone(), names.refresh_token.clone()));
                }
                let given = GivenSecrets { password, client_id: c.client_id, client_secret, vault_names: names };
                let auth = servicenow_auth(&format!("{at}."), c.username, given)
                    .map_err(|e| invalid(e.setting.to_ascii_lowercase(), e.message))?;
                Product::ServiceNow(ServiceNowSettings {
                    url: servicenow_url(&format!("{at}.url"), &raw)?,
                    auth,
                    refresh_token: refresh_token_policy(lookup)?,
                })
            }
            "scsm" => Product::Scsm(file_product(&c, &at, lookup, crate::itsm::scsm::SETTINGS, "SCSM", |read| {
                crate::itsm::scsm::settings_from_lookup(&read, &c.name, vault)
            })?),
            "cherwell" => Product::Cherwell(Box::new(file_product(
                &c,
                &at,
                lookup,
                crate::itsm::cherwell::SETTINGS,
                "Cherwell",
                |read| crate::itsm::cherwell::settings_from_lookup(&read, &c.name, vault),
            )?)),
            "provance" => {
                Product::Provance(file_product(&c, &at, lookup, crate::itsm::provance::SETTINGS, "Provance", |read| {
                    crate::itsm::provance::settings_from_lookup(&read, &c.name, vault)
                })?)
            }
            other => {
                return Err(invalid(
                    format!("{at}.product"),
                    format!("'{other}' is not supported; use servicenow, cherwell, provance, scsm or dry-run"),
                ));
            }
        };
        let defaults = Policy::default();
        let policy = Policy {
            refire_after_close: parse_word(
                &format!("{at}.policy.refire_after_close"),
                c.policy.refire_after_close,
                defaults.refire_after_close,
            )?,
            on_resolve: parse_word(&format!("{at}.policy.on_resolve"), c.policy.on_resolve, defaults.on_resolve)?,
            close_code: c.policy.close_code.unwrap_or(defaults.close_code),
        };
        let mut severity = SeverityMap::default();
        for (name, value) in c.severity {
            let index = ["Sev0", "Sev1", "Sev2", "Sev3", "Sev4"]
                .iter()
                .position(|s| s.eq_ignore_ascii_case(&name))
                .ok_or_else(|| invalid(format!("{at}.severity.{name}"), "use Sev0 to Sev4"))?;
            if !(1..=3).contains(&value.urgency) || !(1..=3).contains(&value.impact) {
                return Err(invalid(format!("{at}.severity.{name}"), "urgency and impact are 1 (high) to 3 (low)"));
            }
            severity.0[index] = value;
        }
        let templates = c
            .templates
            .into_iter()
            .map(|(name, fields)| Ok((name.clone(), compile_fields(&format!("{at}.templates.{name}"), fields)?)))
            .collect::<Result<_, ConfigError>>()?;
        out.push(Connection {
            name: c.name,
            product,
            work_item_type: parse_word(&format!("{at}.work_item_type"), c.work_item_type, WorkItemType::Incident)?,
            grouping: parse_word(&format!("{at}.grouping"), c.grouping, Grouping::Alert)?,
            policy,
            close_notes: compile(
                &format!("{at}.policy.close_notes"),
                c.policy.close_notes.as_deref().unwrap_or(DEFAULT_CLOSE_NOTES),
            )?,
            short_description_max: c.short_description_max.unwrap_or(160).clamp(10, 4000),
            severity,
            fields: compile_fields(&format!("{at}.fields"), c.fields)?,
            templates,
            sync_days: match c.sync_days {
                Some(days @ 1..=120) => Some(days),
                Some(days) => {
                    return Err(invalid(
                        format!("{at}.sync_days"),
                        format!("{days} is not from 1 to 120 (ITSMC's maximum)"),
                    ));
                }
                None => None,
            },
            sync_kinds: c
                .sync_kinds
                .map(|kinds| sync_kinds(&format!("{at}.sync_kinds"), kinds.iter().map(String::as_str)))
                .transpose()?,
            limits: limits(lookup, &format!("{at}."), c.max_concurrent_requests, c.max_requests_per_second)?,
        });
    }
    Ok(out)
}
