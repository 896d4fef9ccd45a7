//! Entra tokens for Dataverse: the scope is the environment itself (`https://contoso.crm.dynamics.com/.default`,
//! the client credentials grant's `{resource}/.default`).
//!
//! With an app registration, `azure_identity`'s `ClientSecretCredential` asks Entra with the connection's own
//! tenant, client id and secret; the authority comes from the connection's settings (as a custom cloud, not from
//! `AZURE_AUTHORITY_HOST`, so two connections may sign in to two clouds). Without one, the app's managed identity
//! ([`crate::secrets::credential`]) signs in. Either way requests go through itsmc's HTTP client, so
//! `ITSMC_CA_FILE` applies to Entra as to Dataverse.
//!
//! A token is kept until five minutes before it expires. When Dataverse refuses one, [`Auth::forget`] drops it
//! with the credential (whose own cache would hand it out again), so the next request signs in anew; a
//! client secret kept in Key Vault is read again by [`Auth::reload`] after a refusal, since an operator may have
//! rotated it.

use crate::secrets::{entra_reason, one_line};
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_core::time::{Duration, OffsetDateTime};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};

use super::settings::ProvanceAuth;
use crate::config::{Secret, SecretSetting};
use crate::itsm::ItsmError;
use crate::secrets::Secrets;

/// Why no token came: the three an operator must tell apart.
#[derive(Debug, Clone)]
pub enum TokenError {
    /// Entra (or the identity endpoint) answered, and refused: wrong tenant, app or secret; no identity.
    Refused(String),
    /// No answer: the authority or the identity endpoint cannot be reached.
    Unreachable(String),
    /// Entra answered with a failure of its own (5xx, throttling).
    Unavailable(String),
}

impl From<TokenError> for ItsmError {
    fn from(error: TokenError) -> ItsmError {
        match error {
            TokenError::Refused(message) => ItsmError::Auth(message),
            TokenError::Unreachable(message) | TokenError::Unavailable(message) => {
                ItsmError::Transient { message, retry_after: None }
            }
        }
    }
}

pub struct Auth {
    settings: ProvanceAuth,
    /// `{environment URL}/.default`.
    scope: String,
    http: reqwest::Client,
    vault: Option<Arc<Secrets>>,
    /// Held while a token is fetched, so a burst of requests at expiry asks Entra once.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    credential: Option<Arc<dyn TokenCredential>>,
    /// The client secret the credential signs in with (inline or read from Key Vault), kept out of messages.
    secret: Option<Secret>,
    token: Option<(Secret, OffsetDateTime)>,
}

impl Auth {
    pub fn new(settings: ProvanceAuth, url: &str, http: reqwest::Client, vault: Option<Arc<Secrets>>) -> Auth {
        Auth {
            settings,
            scope: format!("{url}/.default"),
            http,
            vault,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// Who signs in, for messages: never a secret.
    pub fn who(&self) -> String {
        match &self.settings {
            ProvanceAuth::ClientSecret { client_id, tenant_id, .. } => {
                format!("app registration {client_id} (tenant {tenant_id})")
            }
            ProvanceAuth::ManagedIdentity { client_id: Some(id) } => format!("managed identity {id}"),
            ProvanceAuth::ManagedIdentity { client_id: None } => "the app's managed identity".into(),
        }
    }

    /// A token with at least five minutes left.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        let mut state = self.state.lock().await;
        if let Some((token, expires)) = &state.token
            && *expires - OffsetDateTime::now_utc() > Duration::minutes(5)
        {
            return Ok(token.clone());
        }
        let credential = match &state.credential {
            Some(credential) => Arc::clone(credential),
            None => {
                let (made, secret) = self.credential().await?;
                state.credential = Some(Arc::clone(&made));
                state.secret = secret;
                made
            }
        };
        let token = credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| self.explain(&e, state.secret.as_ref()))?;
        let secret = Secret::new(token.token.secret());
        state.token = Some((secret.clone(), token.expires_on));
        Ok(secret)
    }

    /// Dataverse refused `token`: forget it, and the credential that would hand it out again. A token already
    /// replaced by another request's renewal is left alone.
    pub async fn forget(&self, token: &Secret) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().is_none_or(|(kept, _)| kept == token) {
            *state = State::default();
        }
    }

    /// The sign-in was refused: read a client secret kept in Key Vault again, once. `true` when it changed, so
    /// that signing in is worth trying again.
    pub async fn reload(&self) -> bool {
        let (ProvanceAuth::ClientSecret { secret: SecretSetting::KeyVault(name), .. }, Some(vault)) =
            (&self.settings, &self.vault)
        else {
            return false;
        };
        let before = vault.get(name).await.ok();
        match vault.reload(name).await {
            Ok(now) if before.as_ref() != Some(&now) => {
                tracing::info!(secret = name.as_str(), "the Provance client secret changed in Key Vault; trying it");
                *self.state.lock().await = State::default();
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Provance client secret from Key Vault again");
                false
            }
        }
    }

    /// The credential, and the client secret it signs in with.
    async fn credential(&self) -> Result<(Arc<dyn TokenCredential>, Option<Secret>), TokenError> {
        match &self.settings {
            ProvanceAuth::ManagedIdentity { client_id } => {
                crate::secrets::credential(self.http.clone(), client_id.as_deref())
                    .map(|made| (made, None))
                    .map_err(|e| TokenError::Refused(format!("the managed identity cannot be used: {e}")))
            }
            ProvanceAuth::ClientSecret { tenant_id, client_id, secret, authority } => {
                let secret = crate::itsm::read_secret(secret, self.vault.as_deref(), "client secret").await.map_err(
                    |error| match error {
                        ItsmError::Transient { message, .. } => TokenError::Unavailable(message),
                        ItsmError::Auth(message) => TokenError::Refused(message),
                        other => TokenError::Refused(other.to_string()),
                    },
                )?;
                let mut cloud = CustomConfiguration::default();
                cloud.authority_host = authority.clone();
                let options = ClientSecretCredentialOptions {
                    client_options: ClientOptions {
                        transport: Some(Transport::new(Arc::new(self.http.clone()))),
                        retry: RetryOptions::exponential(ExponentialRetryOptions {
                            initial_delay: Duration::milliseconds(200),
                            max_retries: 2,
                            max_total_elapsed: Duration::seconds(10),
                            max_delay: Duration::seconds(2),
                        }),
                        cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
                        ..Default::default()
                    },
                };
                let made: Arc<dyn TokenCredential> = ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    secret.expose().to_string().into(),
                    Some(options),
                )
                .map_err(|e| {
                    TokenError::Refused(format!("{}: {}", self.who(), scrub(&one_line(&e.to_string()), Some(&secret))))
                })?;
                Ok((made, Some(secret)))
            }
        }
    }

    /// What went wrong getting a token, in the operator's terms and without `secret`, the one signed in with.
    fn explain(&self, error: &azure_core::Error, secret: Option<&Secret>) -> TokenError {
        let chain = || std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| e.source());
        let status = chain().filter_map(|e| e.downcast_ref::<azure_core::Error>()).find_map(|e| match e.kind() {
            ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
            _ => None,
        });
        let unreachable = chain().any(|e| {
            e.downcast_ref::<azure_core::Error>()
                .is_some_and(|e| matches!(e.kind(), ErrorKind::Connection | ErrorKind::Io))
                || e.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect() || e.is_timeout())
        });
        let mut text = scrub(&one_line(&error.to_string()), secret);
        if let ProvanceAuth::ClientSecret { secret: SecretSetting::Value(inline), .. } = &self.settings {
            text = scrub(&text, Some(inline));
        }
        let reason = entra_reason(&text).unwrap_or_else(|| text.clone());
        let (who, authority) = match &self.settings {
            ProvanceAuth::ClientSecret { authority, .. } => (self.who(), authority.as_str()),
            ProvanceAuth::ManagedIdentity { .. } => (self.who(), "the identity endpoint"),
        };
        match status {
            _ if unreachable => {
                TokenError::Unreachable(format!("{who} could not reach {authority} for a token: {text}"))
            }
            Some(429 | 500..=599) => TokenError::Unavailable(format!("Entra failed to give {who} a token: {reason}")),
            _ => TokenError::Refused(format!(
                "Entra refused a token for {} to {who}: {reason}; check the tenant, client id and client secret \
                 (and that the secret has not expired)",
                self.scope
            )),
        }
    }
}

/// `text` without `secret`.
fn scrub(text: &str, secret: Option<&Secret>) -> String {
    match secret.map(Secret::expose) {
        Some(secret) if !secret.is_empty() => text.replace(secret, "***"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entras_reason_is_its_first_sentence() {
        let text = r#"ClientSecretCredential authentication failed. "error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1""#;
        assert_eq!(entra_reason(text).as_deref(), Some("AADSTS7000215: Invalid client secret provided."));
        assert_eq!(entra_reason("no reason"), None);
    }

    #[test]
    fn the_secret_signed_in_with_is_scrubbed() {
        let secret = Secret::new("kv-s3cret~value");
        assert_eq!(scrub("bad secret kv-s3cret~value here", Some(&secret)), "bad secret *** here");
        assert_eq!(scrub("no secret", None), "no secret");
        assert_eq!(scrub("empty", Some(&Secret::new(""))), "empty");
    }
}
