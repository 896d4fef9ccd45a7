//! Connection secrets from Azure Key Vault, read with the function app's managed identity (issue 3).
//!
//! A connection's password, OAuth client secret and refresh token live in Key Vault instead of app
//! settings. [`Secrets`] reads them through `azure_security_keyvault_secrets`, caches what it read, reads
//! again on demand ([`Secrets::reload`], after the ITSM tool refused a password that someone rotated) and
//! writes back new values ([`Secrets::set`], a new refresh token). [`credential`] picks the identity:
//! the App Service / Functions managed identity when the platform provides one, a user-assigned one by
//! client id (`ITSMC_MANAGED_IDENTITY_CLIENT_ID`), the developer's Azure CLI sign-in otherwise.
//! [`SecretNames`] maps a connection to its secret names.
//!
//! Every request goes through the `reqwest::Client` that [`crate::http::build_client`] made (the SDK's
//! transport is replaced), so `ITSMC_CA_FILE` and the TLS policy apply to Key Vault and the identity
//! endpoint as to the ITSM tools. The SDK's check that Key Vault's authentication challenge names a
//! resource matching the vault's host stays on: a token is never sent to a host that merely claims to be
//! a vault.
//!
//! Errors ([`SecretError`]) say what the operator has to do (create the secret, grant a role, fix an
//! identity setting) and carry names, URLs and the service's own reason, never a secret value or a token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use azure_security_keyvault_secrets::models::SetSecretParameters;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use serde::Deserialize;

use crate::config::Secret;

/// The setting naming a user-assigned managed identity by client id (read by the caller of [`credential`]).
pub const MANAGED_IDENTITY_CLIENT_ID_SETTING: &str = "ITSMC_MANAGED_IDENTITY_CLIENT_ID";

/// Key Vault allows 1 to 127 characters for a secret name.
const MAX_NAME_LENGTH: usize = 127;
/// Service messages quoted in errors are cut here: enough for Key Vault's RBAC explanation, short enough
/// for a log line.
const MAX_DETAIL: usize = 600;

// ---------------------------------------------------------------------------------------------
// Secret names
// ---------------------------------------------------------------------------------------------

/// The Key Vault secret names of one connection.
///
/// By default, for a connection named `prod`: `prod-password`, `prod-client-secret` and
/// `prod-refresh-token` ([`SecretNames::for_connection`]). Key Vault names allow only ASCII letters,
/// digits and `-`, so every other character of the connection name becomes `-` (`prod_eu` ->
/// `prod-eu-password`); Key Vault also ignores case. Two connections whose names differ only in those
/// respects (`prod_eu`, `prod-eu`, `PROD-EU`) therefore map to the same secrets: give one of them
/// explicit names (`key_vault_names` in the connections file, `ITSMC_*_SECRET_NAME` in the environment; the
/// configuration checks each with [`check_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretNames {
    /// The ITSM user's password.
    pub password: String,
    /// The OAuth client secret.
    pub client_secret: String,
    /// The OAuth refresh token itsmc writes back when the tool issues a new one.
    pub refresh_token: String,
}

impl SecretNames {
    /// The default names for the connection named `connection`.
    pub fn for_connection(connection: &str) -> SecretNames {
        let base = key_vault_name(connection);
        SecretNames {
            password: format!("{base}-password"),
            client_secret: format!("{base}-client-secret"),
            refresh_token: format!("{base}-refresh-token"),
        }
    }

    /// Check that Key Vault accepts every name (useful after overriding one).
    pub fn validate(&self) -> Result<(), SecretError> {
        [&self.password, &self.client_secret, &self.refresh_token].into_iter().try_for_each(|name| check_name(name))
    }
}

/// `raw` with every character Key Vault does not allow in a name (anything but ASCII letters, digits and
/// `-`) replaced by `-`.
pub fn key_vault_name(raw: &str) -> String {
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
}

/// Whether Key Vault accepts `name` as a secret name.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let reason = if name.is_empty() {
        "it is empty".to_string()
    } else if name.len() > MAX_NAME_LENGTH {
        format!("it has {} characters, Key Vault allows at most {MAX_NAME_LENGTH}", name.len())
    } else if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        format!("Key Vault allows only letters, digits and '-', not {bad:?}")
    } else {
        return Ok(());
    };
    Err(SecretError::InvalidName { name: name.to_string(), reason })
}

// ---------------------------------------------------------------------------------------------
// Tokens for our own clients
// ---------------------------------------------------------------------------------------------

/// Entra tokens for one scope (Table Storage, Logs Ingestion), asked of the credential once and reused until
/// shortly before they expire. The lock is held while a token is fetched, so a burst of requests at expiry
/// fetches one. The SDK clients (Key Vault) keep their own.
pub struct TokenCache {
    credential: Arc<dyn TokenCredential>,
    scope: &'static str,
    current: tokio::sync::Mutex<Option<AccessToken>>,
}

impl TokenCache {
    /// A token is renewed this long before it expires, so a request never carries one that expires in
    /// flight (and clock skew between here and Entra does not matter).
    const RENEW_BEFORE: azure_core::time::Duration = azure_core::time::Duration::minutes(5);

    pub fn new(credential: Arc<dyn TokenCredential>, scope: &'static str) -> TokenCache {
        TokenCache { credential, scope, current: tokio::sync::Mutex::new(None) }
    }

    pub fn scope(&self) -> &'static str {
        self.scope
    }

    /// A token with at least five minutes left. The error is the credential's (which names no secret).
    pub async fn token(&self) -> azure_core::Result<AccessToken> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token.expires_on - azure_core::time::OffsetDateTime::now_utc() > Self::RENEW_BEFORE
        {
            return Ok(token.clone());
        }
        let token = self.credential.get_token(&[self.scope], None).await?;
        *current = Some(token.clone());
        Ok(token)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Whether the vault refused a read or a write; the role to grant differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }

    /// The built-in role that allows it.
    fn role(self) -> &'static str {
        match self {
            Operation::Read => "Key Vault Secrets User",
            Operation::Write => "Key Vault Secrets Officer",
        }
    }

    fn permissions(self) -> &'static str {
        match self {
            Operation::Read => "get",
            Operation::Write => "get and set",
        }
    }
}

/// Why Key Vault answered 403, from its `innererror` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `ForbiddenByRbac`: the vault uses Azure RBAC and no role assignment allows the call.
    Rbac,
    /// `AccessDenied`: the vault uses access policies and none grants the permission.
    AccessPolicy,
    /// `ForbiddenByFirewall` / `ForbiddenByConnection`: the vault's network rules.
    Network,
    /// Anything else.
    Other,
}

/// Why a secret could not be read or written, phrased for the operator who has to fix it. Never holds a
/// secret value or a token: only names, URLs, HTTP statuses and the services' own (value-free) reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The configured vault URL cannot be a Key Vault URL.
    InvalidVaultUrl {
        url: String,
        reason: String,
    },
    /// A name Key Vault would reject.
    InvalidName {
        name: String,
        reason: String,
    },
    NotFound {
        vault: String,
        name: String,
    },
    Forbidden {
        vault: String,
        name: String,
        operation: Operation,
        refusal: Refusal,
        detail: String,
    },
    /// The secret's current version is disabled.
    Disabled {
        vault: String,
        name: String,
    },
    /// The vault refused the identity's token (401 after authenticating).
    TokenRefused {
        vault: String,
        detail: String,
    },
    /// The vault's challenge named a resource that does not match the URL's host, so no token was sent.
    ChallengeMismatch {
        url: String,
        detail: String,
    },
    /// No connection to the vault (DNS, TCP, TLS, timeout).
    VaultUnreachable {
        vault: String,
        url: String,
        detail: String,
    },
    /// 429 or 5xx after the SDK's retries.
    VaultUnavailable {
        vault: String,
        status: u16,
        detail: String,
    },
    /// Any other failure of the vault.
    Vault {
        vault: String,
        status: Option<u16>,
        detail: String,
    },
    /// The identity settings cannot work (found before any request).
    IdentityConfig {
        message: String,
    },
    /// The managed identity endpoint does not answer.
    IdentityUnreachable {
        endpoint: String,
        detail: String,
    },
    /// The managed identity endpoint refused `X-IDENTITY-HEADER`.
    IdentityHeaderRefused {
        endpoint: String,
        detail: String,
    },
    /// The app has no such identity (400 from the endpoint).
    IdentityNotAssigned {
        client_id: Option<String>,
        detail: String,
    },
    /// The developer credentials (Azure CLI, Azure Developer CLI) could not get a token.
    DeveloperCredential {
        detail: String,
    },
    /// Any other failure to get a token; `source` says from where.
    Identity {
        source: String,
        detail: String,
    },
}

impl SecretError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::VaultUnreachable { .. }
                | SecretError::VaultUnavailable { .. }
                | SecretError::IdentityUnreachable { .. }
        )
    }

    /// Replace `value` wherever it appears; used on errors of writes, whose request carried the value.
    fn redacted(self, value: &str) -> SecretError {
        if value.is_empty() {
            return self;
        }
        let clean = |text: String| text.replace(value, "***");
        match self {
            SecretError::Forbidden { vault, name, operation, refusal, detail } => {
                SecretError::Forbidden { vault, name, operation, refusal, detail: clean(detail) }
            }
            SecretError::TokenRefused { vault, detail } => SecretError::TokenRefused { vault, detail: clean(detail) },
            SecretError::ChallengeMismatch { url, detail } => {
                SecretError::ChallengeMismatch { url, detail: clean(detail) }
            }
            SecretError::VaultUnreachable { vault, url, detail } => {
                SecretError::VaultUnreachable { vault, url, detail: clean(detail) }
            }
            SecretError::VaultUnavailable { vault, status, detail } => {
                SecretError::VaultUnavailable { vault, status, detail: clean(detail) }
            }
            SecretError::Vault { vault, status, detail } => SecretError::Vault { vault, status, detail: clean(detail) },
            SecretError::Identity { source, detail } => SecretError::Identity { source, detail: clean(detail) },
            other => other,
        }
    }
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::InvalidVaultUrl { url, reason } => write!(f, "Key Vault URL '{url}': {reason}"),
            SecretError::InvalidName { name, reason } => {
                write!(f, "'{name}' cannot be a Key Vault secret name: {reason}; choose another name")
            }
            SecretError::NotFound { vault, name } => write!(
                f,
                "Key Vault {vault} has no secret '{name}': create secret {name} in {vault} \
                 (az keyvault secret set --vault-name {vault} --name {name} --file <file holding the value>), \
                 or configure the secret name this connection should use"
            ),
            SecretError::Forbidden { vault, name, operation, refusal, detail } => {
                let (verb, role) = (operation.verb(), operation.role());
                match refusal {
                    Refusal::Rbac => write!(
                        f,
                        "Key Vault {vault} refused to {verb} secret '{name}': no role assignment allows it; grant \
                         the function's identity {role} on {vault} (assignments take a few minutes to apply) \
                         [{detail}]"
                    ),
                    Refusal::AccessPolicy => write!(
                        f,
                        "Key Vault {vault} refused to {verb} secret '{name}': no access policy gives the \
                         identity secret {permissions} permission; add one for the function's identity on {vault} \
                         (az keyvault set-policy --name {vault} --object-id <its principal id> --secret-permissions \
                         {permissions}), or switch {vault} to Azure RBAC and grant the function's identity {role} \
                         on {vault} [{detail}]",
                        permissions = operation.permissions()
                    ),
                    Refusal::Network => write!(
                        f,
                        "Key Vault {vault} refused the request by its network rules: allow the function app's \
                         outbound addresses in its firewall or reach it through a private endpoint [{detail}]"
                    ),
                    Refusal::Other => write!(
                        f,
                        "Key Vault {vault} refused to {verb} secret '{name}': grant the function's identity \
                         {role} on {vault} (or, with access policies, secret {permissions} permission) [{detail}]",
                        permissions = operation.permissions()
                    ),
                }
            }
            SecretError::Disabled { vault, name } => write!(
                f,
                "secret '{name}' in Key Vault {vault} is disabled: enable its current version \
                 (az keyvault secret set-attributes --vault-name {vault} --name {name} --enabled true) \
                 or write a new version"
            ),
            SecretError::TokenRefused { vault, detail } => write!(
                f,
                "Key Vault {vault} refused the identity's token ({detail}): the vault must belong to the \
                 identity's Entra ID tenant; if the token expired or was revoked, restart the function app so \
                 it gets a new one"
            ),
            SecretError::ChallengeMismatch { url, detail } => write!(
                f,
                "Key Vault URL {url}: the vault's authentication challenge is for a resource that does not \
                 match the URL's host, so no token was sent ({detail}); use the vault URL exactly as the portal \
                 shows it, https://<vault name>.vault.azure.net/"
            ),
            SecretError::VaultUnreachable { vault, url, detail } => write!(
                f,
                "cannot reach Key Vault {vault} at {url} ({detail}): check the URL, DNS and the function app's \
                 outbound network (VNet integration, private endpoint, firewall); behind a TLS-inspecting \
                 proxy, give its CA in ITSMC_CA_FILE"
            ),
            SecretError::VaultUnavailable { vault, status, detail } => write!(
                f,
                "Key Vault {vault} answered HTTP {status} even after retries ({detail}): it is throttling or \
                 unavailable; a later attempt should pass"
            ),
            SecretError::Vault { vault, status: Some(status), detail } => {
                write!(f, "Key Vault {vault} answered HTTP {status}: {detail}")
            }
            SecretError::Vault { vault, status: None, detail } => write!(f, "Key Vault {vault}: {detail}"),
            SecretError::IdentityConfig { message } => f.write_str(message),
            SecretError::IdentityUnreachable { endpoint, detail } => write!(
                f,
                "cannot reach the managed identity endpoint {endpoint} ({detail}): App Service and Functions \
                 provide it (IDENTITY_ENDPOINT) when the app has a managed identity; check Identity on the \
                 function app, then restart it"
            ),
            SecretError::IdentityHeaderRefused { endpoint, detail } => write!(
                f,
                "the managed identity endpoint {endpoint} refused the request's X-IDENTITY-HEADER ({detail}): \
                 it must be IDENTITY_HEADER exactly as the platform sets it; the platform rotates it, so never \
                 copy it into app settings; restart the function app"
            ),
            SecretError::IdentityNotAssigned { client_id: Some(client_id), detail } => write!(
                f,
                "the function app has no managed identity with client id {client_id} ({detail}): \
                 {MANAGED_IDENTITY_CLIENT_ID_SETTING} must be the client id (not the object id) of a \
                 user-assigned identity attached to the function app (Identity > User assigned)"
            ),
            SecretError::IdentityNotAssigned { client_id: None, detail } => write!(
                f,
                "the function app has no system-assigned managed identity ({detail}): turn it on \
                 (Identity > System assigned), or attach a user-assigned identity and set \
                 {MANAGED_IDENTITY_CLIENT_ID_SETTING} to its client id"
            ),
            SecretError::DeveloperCredential { detail } => write!(
                f,
                "no developer sign-in could get a Key Vault token ({detail}): run `az login` (or `azd auth \
                 login`), or run itsmc where a managed identity is available"
            ),
            SecretError::Identity { source, detail } => write!(f, "{source} could not get an Entra token: {detail}"),
        }
    }
}

impl std::error::Error for SecretError {}

// ---------------------------------------------------------------------------------------------
// The credential
// ---------------------------------------------------------------------------------------------

/// The identity itsmc authenticates to Key Vault with:
///
/// - `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` all set: that app registration's client
///   secret (outside Azure, e.g. on AWS Lambda; Entra's host from `AZURE_AUTHORITY_HOST` for national clouds).
/// - `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set (App Service, Functions, Container Apps): that
///   managed identity; the user-assigned one with `user_assigned_client_id` when given (the caller reads
///   it from [`MANAGED_IDENTITY_CLIENT_ID_SETTING`]), else the system-assigned one.
/// - no `IDENTITY_ENDPOINT` but a client id: the user-assigned identity through the Azure Instance
///   Metadata Service (a VM or a scale set), since naming an identity says a managed identity is wanted.
/// - neither: the developer's sign-in (Azure CLI, then Azure Developer CLI).
///
/// Managed identity requests use `http`, the client from [`crate::http::build_client`]; the developer
/// credentials run the CLIs and make no HTTP request of their own. Failures to get a token come back from
/// [`Secrets`] as [`SecretError`]s naming the setting or the fix.
pub fn credential(
    http: reqwest::Client,
    user_assigned_client_id: Option<&str>,
) -> Result<Arc<dyn TokenCredential>, SecretError> {
    let client_id = user_assigned_client_id.map(str::trim).filter(|id| !id.is_empty()).map(str::to_string);
    let endpoint = non_empty_env("IDENTITY_ENDPOINT");
    let header = non_empty_env("IDENTITY_HEADER");
    let managed = |client_options: ClientOptions| {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
            client_options,
        };
        ManagedIdentityCredential::new(Some(options))
    };
    if let Some(made) = client_secret_credential(&http)? {
        return Ok(made);
    }
    let (inner, source, header): (Arc<dyn TokenCredential>, Source, Option<Secret>) = match (endpoint, header) {
        (Some(endpoint), Some(header)) => {
            let inner = managed(client_options(http)).map_err(|e| SecretError::IdentityConfig {
                message: format!(
                    "IDENTITY_ENDPOINT '{endpoint}' cannot be used ({}); it is set by the platform, remove it if \
                     you set it yourself",
                    error_text(&e)
                ),
            })?;
            tracing::info!(endpoint, client_id = client_id.as_deref(), "Azure credentials: the app's managed identity");
            (inner, Source::AppService { endpoint, client_id }, Some(Secret::new(header)))
        }
        (Some(_), None) => {
            return Err(SecretError::IdentityConfig {
                message: "IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not: App Service and Functions set both \
                          when the app has a managed identity; if you set IDENTITY_ENDPOINT yourself, remove it"
                    .into(),
            });
        }
        (None, _) => match client_id.clone() {
            Some(client_id) => {
                let inner = managed(client_options(http)).map_err(|e| SecretError::IdentityConfig {
                    message: format!(
                        "{MANAGED_IDENTITY_CLIENT_ID_SETTING}: the managed identity cannot be used ({})",
                        error_text(&e)
                    ),
                })?;
                tracing::info!(client_id, "Azure credentials: a user-assigned managed identity through IMDS");
                (inner, Source::Imds { client_id }, None)
            }
            None => {
                let inner = DeveloperToolsCredential::new(None).map_err(|e| SecretError::IdentityConfig {
                    message: format!("the developer credentials cannot be used ({})", error_text(&e)),
                })?;
                tracing::info!("Azure credentials: no managed identity here; using the Azure CLI sign-in");
                (inner, Source::DeveloperTools, None)
            }
        },
    };
    Ok(Arc::new(ExplainedCredential { inner, source, scrub: header }))
}

/// The app registration named by `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, when all three
/// are set. A secret without its tenant or app is a mistake and an error; a tenant and client id without a
/// secret are how workload identity and other SDKs are configured, so they are left alone.
fn client_secret_credential(http: &reqwest::Client) -> Result<Option<Arc<dyn TokenCredential>>, SecretError> {
    // A secret pasted from a file or a prompt often keeps its line end; Entra would refuse it as wrong.
    let Some(secret) = non_empty_env("AZURE_CLIENT_SECRET").map(|s| s.trim_end_matches(['\r', '\n']).to_string())
    else {
        return Ok(None);
    };
    let (tenant, client_id) = match (non_empty_env("AZURE_TENANT_ID"), non_empty_env("AZURE_CLIENT_ID")) {
        (Some(tenant), Some(client_id)) => (tenant, client_id),
        (tenant, _) => {
            let missing = if tenant.is_none() { "AZURE_TENANT_ID" } else { "AZURE_CLIENT_ID" };
            return Err(SecretError::IdentityConfig {
                message: format!(
                    "AZURE_CLIENT_SECRET is set but {missing} is not: a client secret credential needs \
                     AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
                ),
            });
        }
    };
    let options = ClientSecretCredentialOptions { client_options: client_options(http.clone()) };
    let inner =
        ClientSecretCredential::new(&tenant, client_id.clone(), secret.clone().into(), Some(options)).map_err(|e| {
            SecretError::IdentityConfig {
                message: format!(
                    "AZURE_TENANT_ID, AZURE_CLIENT_ID or AZURE_AUTHORITY_HOST cannot be used ({})",
                    error_text(&e)
                ),
            }
        })?;
    if let Some(ignored) = non_empty_env(MANAGED_IDENTITY_CLIENT_ID_SETTING) {
        tracing::warn!(ignored, "{MANAGED_IDENTITY_CLIENT_ID_SETTING} is not used: AZURE_CLIENT_SECRET is set");
    }
    tracing::info!(tenant, client_id, "Azure credentials: an app registration's client secret");
    let source = Source::ClientSecret { tenant, client_id };
    Ok(Some(Arc::new(ExplainedCredential { inner, source, scrub: Some(Secret::new(secret)) })))
}

/// azure_identity 1.0 cannot parse Entra's error body (its `error_description` has escapes), so Entra's
/// reason arrives quoted inside a parse error: take the `AADSTSnnnn: ...` sentence back out.
pub(crate) fn entra_reason(text: &str) -> Option<String> {
    let reason = &text[text.find("AADSTS")?..];
    let end = ["\\r\\n", "\"", " Trace ID:", " To troubleshoot"]
        .iter()
        .filter_map(|stop| reason.find(stop))
        .min()
        .unwrap_or(reason.len());
    Some(reason[..end].trim_end().to_string())
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The SDK client options every Azure client of itsmc uses: our HTTP client as the transport, and retries
/// short enough that a caller waiting on a secret is not held for the SDK's default minute.
fn client_options(http: reqwest::Client) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http))),
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 3,
            max_total_elapsed: azure_core::time::Duration::seconds(10),
            max_delay: azure_core::time::Duration::seconds(2),
        }),
        ..Default::default()
    }
}

/// Where tokens come from, for explaining failures.
#[derive(Debug, Clone)]
enum Source {
    AppService { endpoint: String, client_id: Option<String> },
    Imds { client_id: String },
    ClientSecret { tenant: String, client_id: String },
    DeveloperTools,
}

/// Wraps the SDK credential to turn its failures into [`SecretError`]s while the context (which endpoint,
/// which identity) is known. [`Secrets`] finds them in the error the SDK client returns.
struct ExplainedCredential {
    inner: Arc<dyn TokenCredential>,
    source: Source,
    /// `IDENTITY_HEADER` or `AZURE_CLIENT_SECRET`, only to scrub it from error text should an endpoint ever echo it.
    scrub: Option<Secret>,
}

impl fmt::Debug for ExplainedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExplainedCredential").field("source", &self.source).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for ExplainedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.inner
            .get_token(scopes, options)
            .await
            .map_err(|error| azure_core::Error::new(ErrorKind::Credential, self.explain(&error)))
    }
}

impl ExplainedCredential {
    fn explain(&self, error: &azure_core::Error) -> SecretError {
        let response = http_failure(error);
        let mut detail = match &response {
            Some(failure) => failure.describe(),
            None if is_connection_failure(error) => transport_text(error),
            None => error_text(error),
        };
        if let Some(scrub) = &self.scrub
            && !scrub.expose().is_empty()
        {
            detail = detail.replace(scrub.expose(), "***");
        }
        match &self.source {
            Source::AppService { endpoint, client_id } => {
                let endpoint = endpoint.clone();
                match response.map(|failure| failure.status) {
                    Some(400) => SecretError::IdentityNotAssigned { client_id: client_id.clone(), detail },
                    Some(401 | 403) => SecretError::IdentityHeaderRefused { endpoint, detail },
                    Some(_) => {
                        SecretError::Identity { source: format!("the managed identity endpoint {endpoint}"), detail }
                    }
                    None if is_connection_failure(error) => SecretError::IdentityUnreachable { endpoint, detail },
                    None => {
                        SecretError::Identity { source: format!("the managed identity endpoint {endpoint}"), detail }
                    }
                }
            }
            Source::Imds { client_id } => {
                let endpoint = "the Instance Metadata Service (http://169.254.169.254)".to_string();
                match response.map(|failure| failure.status) {
                    Some(400) => SecretError::IdentityNotAssigned { client_id: Some(client_id.clone()), detail },
                    None if is_connection_failure(error) => SecretError::IdentityUnreachable { endpoint, detail },
                    _ => SecretError::Identity { source: endpoint, detail },
                }
            }
            Source::ClientSecret { tenant, client_id } => SecretError::Identity {
                source: format!(
                    "Entra (tenant {tenant}, app {client_id}, with AZURE_CLIENT_SECRET; check the secret has not \
                     expired)"
                ),
                detail: entra_reason(&detail).unwrap_or(detail),
            },
            Source::DeveloperTools => SecretError::DeveloperCredential { detail },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// Connection secrets in one Key Vault, cached after the first read.
pub struct Secrets {
    client: SecretClient,
    /// The vault's name (the first label of its host), for messages.
    vault: String,
    url: String,
    /// By lower-cased name: Key Vault names ignore case.
    cache: RwLock<HashMap<String, Cached>>,
    /// One read or write per name at a time, so an alert storm that finds a secret missing from the cache
    /// makes one request for it.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Cached {
    value: Secret,
    fetched_at: Instant,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached: Vec<String> = match self.cache.read() {
            Ok(cache) => cache.keys().cloned().collect(),
            Err(_) => Vec::new(),
        };
        f.debug_struct("Secrets").field("vault", &self.url).field("cached", &cached).finish_non_exhaustive()
    }
}

impl Secrets {
    /// Secrets in the vault at `vault_url` (`https://<name>.vault.azure.net/`), read with `credential`
    /// (see [`credential`]) over `http` (from [`crate::http::build_client`]). Makes no request yet.
    pub fn key_vault(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Secrets, SecretError> {
        let invalid =
            |reason: &str| SecretError::InvalidVaultUrl { url: vault_url.to_string(), reason: reason.to_string() };
        let parsed = url::Url::parse(vault_url.trim())
            .map_err(|_| invalid("not a URL; use the vault's URL, https://<vault name>.vault.azure.net/"))?;
        if parsed.scheme() != "https" {
            return Err(invalid(
                "must be an https:// URL: Key Vault accepts TLS only, and no token is sent over plain HTTP",
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("must not carry a user name or password"));
        }
        let Some(host) = parsed.host_str().filter(|host| !host.is_empty()) else {
            return Err(invalid("has no host; use https://<vault name>.vault.azure.net/"));
        };
        if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "give the vault's base URL only, without a path: https://<vault name>.vault.azure.net/",
            ));
        }
        // The vault's name is the first label of its host; an address stands for itself.
        let vault = match parsed.host() {
            Some(url::Host::Domain(domain)) => domain.split('.').next().unwrap_or(domain).to_string(),
            _ => host.to_string(),
        };
        // `verify_challenge_resource` keeps its default (on): see the module documentation.
        let options = SecretClientOptions { client_options: client_options(http), ..Default::default() };
        let client = SecretClient::new(parsed.as_str(), credential, Some(options))
            .map_err(|e| SecretError::InvalidVaultUrl { url: vault_url.to_string(), reason: error_text(&e) })?;
        Ok(Secrets {
            client,
            vault,
            url: parsed.to_string(),
            cache: RwLock::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The vault's URL, normalised.
    pub fn vault_url(&self) -> &str {
        &self.url
    }

    /// The secret's current value, from the cache when it was read before.
    pub async fn get(&self, name: &str) -> Result<Secret, SecretError> {
        check_name(name)?;
        let key = name.to_ascii_lowercase();
        if let Some(value) = self.cached(&key) {
            return Ok(value.value);
        }
        let lock = self.lock_for(&key);
        let _one_at_a_time = lock.lock().await;
        // Another caller may have read it while this one waited.
        if let Some(value) = self.cached(&key) {
            return Ok(value.value);
        }
        let value = self.fetch(name).await?;
        self.remember(key, value.clone());
        Ok(value)
    }

    /// The secret's current value read from the vault again, bypassing the cache: for after the ITSM tool
    /// refused a credential, in case someone rotated it. Callers that were refused at the same time share
    /// one read.
    pub async fn reload(&self, name: &str) -> Result<Secret, SecretError> {
        check_name(name)?;
        let key = name.to_ascii_lowercase();
        let asked = Instant::now();
        let lock = self.lock_for(&key);
        let _one_at_a_time = lock.lock().await;
        // A read that completed after this call began is as fresh as one this call would make.
        if let Some(value) = self.cached(&key).filter(|cached| cached.fetched_at > asked) {
            return Ok(value.value);
        }
        let value = self.fetch(name).await?;
        tracing::info!(vault = %self.vault, secret = name, "re-read the secret from Key Vault");
        self.remember(key, value.clone());
        Ok(value)
    }

    /// Write `value` as the secret's new current version (Key Vault keeps the old ones), e.g. a refresh
    /// token the ITSM tool just issued. Later [`Self::get`] calls return it without reading.
    pub async fn set(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        check_name(name)?;
        let key = name.to_ascii_lowercase();
        let lock = self.lock_for(&key);
        let _one_at_a_time = lock.lock().await;
        let parameters = SetSecretParameters { value: Some(value.expose().to_string()), ..Default::default() };
        // Serializing a struct of strings does not fail; the error is mapped anyway rather than unwrapped.
        let content = parameters.try_into().map_err(|_| SecretError::Vault {
            vault: self.vault.clone(),
            status: None,
            detail: "the request could not be encoded".into(),
        })?;
        let response = self
            .client
            .set_secret(name, content, None)
            .await
            .map_err(|e| self.vault_error(name, Operation::Write, &e).redacted(value.expose()))?;
        let version = response.into_model().ok().and_then(|written| version_of(written.id.as_deref()));
        tracing::info!(vault = %self.vault, secret = name, version, "wrote a new version of the secret to Key Vault");
        self.remember(key, value.clone());
        Ok(())
    }

    async fn fetch(&self, name: &str) -> Result<Secret, SecretError> {
        let response =
            self.client.get_secret(name, None).await.map_err(|e| self.vault_error(name, Operation::Read, &e))?;
        // Not the deserializer's message: serde quotes the offending input, which could be the value.
        let secret = response.into_model().map_err(|_| SecretError::Vault {
            vault: self.vault.clone(),
            status: Some(200),
            detail: format!("the answer for secret '{name}' is not a secret bundle"),
        })?;
        let version = version_of(secret.id.as_deref());
        let value = secret.value.ok_or_else(|| SecretError::Vault {
            vault: self.vault.clone(),
            status: Some(200),
            detail: format!("secret '{name}' came back without a value"),
        })?;
        tracing::debug!(vault = %self.vault, secret = name, version, "read the secret from Key Vault");
        Ok(Secret::new(value))
    }

    fn cached(&self, key: &str) -> Option<Cached> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.get(key).map(|cached| Cached { value: cached.value.clone(), fetched_at: cached.fetched_at })
    }

    fn remember(&self, key: String, value: Secret) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.insert(key, Cached { value, fetched_at: Instant::now() });
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// What the operator should know about a failed call for secret `name`.
    fn vault_error(&self, name: &str, operation: Operation, error: &azure_core::Error) -> SecretError {
        // The identity failed: ExplainedCredential already said why.
        if let Some(explained) = chain(error).find_map(|e| e.downcast_ref::<SecretError>()) {
            return explained.clone();
        }
        // A credential that is not ours (a caller's own) failed.
        if chain(error)
            .any(|e| e.downcast_ref::<azure_core::Error>().is_some_and(|e| *e.kind() == ErrorKind::Credential))
        {
            return SecretError::Identity { source: "the credential".into(), detail: error_text(error) };
        }
        let vault = self.vault.clone();
        if let Some(failure) = http_failure(error) {
            let detail = failure.describe();
            return match failure.status {
                404 => SecretError::NotFound { vault, name: name.to_string() },
                403 if failure.inner_code.as_deref() == Some("SecretDisabled") => {
                    SecretError::Disabled { vault, name: name.to_string() }
                }
                403 => {
                    let refusal = match failure.inner_code.as_deref() {
                        Some("ForbiddenByRbac") => Refusal::Rbac,
                        Some("AccessDenied") => Refusal::AccessPolicy,
                        Some("ForbiddenByFirewall" | "ForbiddenByConnection") => Refusal::Network,
                        _ => Refusal::Other,
                    };
                    SecretError::Forbidden { vault, name: name.to_string(), operation, refusal, detail }
                }
                401 => SecretError::TokenRefused { vault, detail },
                429 | 500..=599 => SecretError::VaultUnavailable { vault, status: failure.status, detail },
                status => SecretError::Vault { vault, status: Some(status), detail },
            };
        }
        if is_connection_failure(error) {
            return SecretError::VaultUnreachable { vault, url: self.url.clone(), detail: transport_text(error) };
        }
        let detail = error_text(error);
        if detail.contains("doesn't match the requested domain") {
            SecretError::ChallengeMismatch { url: self.url.clone(), detail }
        } else {
            SecretError::Vault { vault, status: None, detail }
        }
    }
}

/// The version id at the end of a secret id (`https://v.vault.azure.net/secrets/name/<version>`).
fn version_of(id: Option<&str>) -> Option<String> {
    id.and_then(|id| id.rsplit('/').next()).filter(|v| !v.is_empty()).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Reading SDK errors
// ---------------------------------------------------------------------------------------------

/// The error and everything it wraps, outermost first.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// An HTTP error answer found in the chain: its status and what the service said.
struct HttpFailure {
    status: u16,
    code: Option<String>,
    inner_code: Option<String>,
    message: Option<String>,
    correlation_id: Option<String>,
}

impl HttpFailure {
    fn describe(&self) -> String {
        let mut text = format!("HTTP {}", self.status);
        if let Some(code) = &self.code {
            text.push_str(&format!(" {code}"));
        }
        if let Some(inner) = &self.inner_code {
            text.push_str(&format!("/{inner}"));
        }
        if let Some(message) = &self.message {
            text.push_str(&format!(": {message}"));
        }
        if let Some(id) = &self.correlation_id {
            text.push_str(&format!(" (correlation id {id})"));
        }
        clip(&text)
    }
}

/// Key Vault's `{"error":{"code","message","innererror":{"code"}}}` and the managed identity endpoint's
/// `{"statusCode","message","correlationId"}`: neither ever carries a secret value or a token.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    error: Option<ErrorDetail>,
    message: Option<String>,
    #[serde(rename = "correlationId")]
    correlation_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
    innererror: Option<Box<ErrorDetail>>,
}

/// The innermost HTTP error answer in the chain, if the failure was one.
fn http_failure(error: &azure_core::Error) -> Option<HttpFailure> {
    let (status, error_code, body) = chain(error)
        .filter_map(|e| e.downcast_ref::<azure_core::Error>())
        .filter_map(|e| match e.kind() {
            ErrorKind::HttpResponse { status, error_code, raw_response } => Some((
                u16::from(*status),
                error_code.clone(),
                raw_response.as_ref().map(|raw| raw.body().to_vec()).unwrap_or_default(),
            )),
            _ => None,
        })
        .last()?;
    let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
    let (code, inner_code, message) = match parsed.error {
        Some(detail) => (detail.code, detail.innererror.and_then(|inner| inner.code), detail.message),
        None => (None, None, parsed.message),
    };
    Some(HttpFailure {
        status,
        code: code.or(error_code).filter(|code| !code.is_empty()),
        inner_code,
        message: message.map(|m| one_line(&m)),
        correlation_id: parsed.correlation_id,
    })
}

/// Whether the request never got an answer: no connection, TLS refused, timed out.
fn is_connection_failure(error: &azure_core::Error) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<azure_core::Error>().is_some_and(|e| matches!(e.kind(), ErrorKind::Connection | ErrorKind::Io))
            || e.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect() || e.is_timeout())
    })
}

/// The messages of the error chain on one line, without repeats: the SDK nests the same text at several
/// levels. Used for failures that are not HTTP answers (CLI output, SDK refusals).
fn error_text(error: &azure_core::Error) -> String {
    joined(chain(error))
}

/// For a request that got no answer: the transport's own account, from the `reqwest` error down (which
/// names the cause: refused, DNS, certificate, timeout), without the SDK's wrapping and retry notes.
fn transport_text(error: &azure_core::Error) -> String {
    match chain(error).position(|e| e.downcast_ref::<reqwest::Error>().is_some()) {
        Some(start) => joined(chain(error).skip(start)),
        None => error_text(error),
    }
}

fn joined<'a>(errors: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut text = String::new();
    for e in errors {
        let message = one_line(&e.to_string());
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    clip(&text)
}

pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_only_what_key_vault_allows() {
        assert_eq!(key_vault_name("prod_eu.1"), "prod-eu-1");
        assert_eq!(SecretNames::for_connection("prod").refresh_token, "prod-refresh-token");
        assert!(check_name(&"a".repeat(127)).is_ok());
        assert!(check_name(&"a".repeat(128)).is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn redaction_covers_details() {
        let error = SecretError::Vault { vault: "v".into(), status: Some(400), detail: "echoed hunter2 back".into() };
        assert_eq!(error.redacted("hunter2").to_string(), "Key Vault v answered HTTP 400: echoed *** back");
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        let long = "é".repeat(MAX_DETAIL + 5);
        assert!(clip(&long).ends_with('…'));
    }
}
