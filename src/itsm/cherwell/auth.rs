//! Cherwell's OAuth 2 tokens: `POST {api}/token`, form-encoded, the password grant with the REST API client key
//! as `client_id` and the connection's `auth_mode`; renewed with the refresh token shortly before the access
//! token expires, and minted again with the password when CSM refuses the refresh token (it expired, or the
//! user was logged out). Only one renewal runs at a time, so an alert storm that finds the token expired makes
//! one token request. When CSM refuses the user's credentials, no password grant is sent again for a while
//! ([`SignInGuard`]), or until Key Vault holds another password: every queued alert's retries signing in with
//! it would lock an LDAP or Windows account.
//!
//! CSM answers a refused request with HTTP 400 and `{"error": "invalid_client_id" | "invalid_grant",
//! "error_description": ...}` (the REST API's Errors page shows that object as a JSON string; both are read).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::settings::CherwellSettings;
use crate::config::{Secret, SecretSetting};
use crate::http::retry_after;
use crate::itsm::{ItsmError, SignInGuard};
use crate::secrets::Secrets;

#[derive(Clone)]
struct Token {
    access: Secret,
    refresh: Option<Secret>,
    /// When we stop using it: a little before CSM's expiry, so a request never races it.
    renew_at: Instant,
}

/// Why the last sign-in failed, kept apart for the connection test (cleared by the next token CSM grants).
#[derive(Debug, Clone)]
pub enum GrantFailure {
    /// CSM does not know the API client key.
    ClientId(String),
    /// CSM refused the user name, password or authentication mode.
    Credentials(String),
    /// The token endpoint could not be reached.
    Unreachable(String),
    /// The token endpoint answered another error status.
    Status { status: u16, retry_after: Option<Duration>, message: String },
}

pub struct Auth {
    token_url: String,
    username: String,
    password: SecretSetting,
    client_id: String,
    auth_mode: &'static str,
    vault: Option<Arc<Secrets>>,
    token: RwLock<Option<Token>>,
    renewing: tokio::sync::Mutex<()>,
    /// Why the last sign-in failed, for the connection test.
    failure: RwLock<Option<GrantFailure>>,
    /// A refused password, so that queued retries do not sign in with it again and lock the account.
    guard: SignInGuard,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(settings: &CherwellSettings, vault: Option<Arc<Secrets>>) -> Auth {
        Auth {
            token_url: format!("{}/token", settings.url),
            username: settings.username.clone(),
            password: settings.password.clone(),
            client_id: settings.client_id.clone(),
            auth_mode: settings.auth_mode.as_str(),
            vault,
            token: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(()),
            failure: RwLock::new(None),
            guard: SignInGuard::default(),
        }
    }

    /// A bearer token, renewed first when it is due.
    pub async fn bearer(&self, http: &reqwest::Client) -> Result<Secret, ItsmError> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.renew(http).await,
        }
    }

    /// CSM answered 401 to this token: stop using it, so the next [`Auth::bearer`] renews it.
    pub fn forget(&self, refused: &Secret) {
        if let Ok(mut guard) = self.token.write()
            && let Some(token) = guard.as_mut()
            && &token.access == refused
        {
            token.renew_at = Instant::now();
        }
    }

    /// Why the last sign-in failed, unless a token was granted since.
    pub fn failure(&self) -> Option<GrantFailure> {
        self.failure.read().ok()?.clone()
    }

    /// CSM refused the password: read it from Key Vault again, once, in case it was rotated. `true` when it
    /// changed, so that the refused request is worth sending again.
    pub async fn reload(&self) -> bool {
        let (SecretSetting::KeyVault(name), Some(vault)) = (&self.password, &self.vault) else { return false };
        let before = vault.get(name).await.ok();
        match vault.reload(name).await {
            Ok(now) if before.as_ref() != Some(&now) => {
                tracing::info!("the Cherwell password changed in Key Vault; trying it");
                self.guard.clear();
                if let Ok(mut guard) = self.token.write() {
                    *guard = None;
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Cherwell password from Key Vault again");
                false
            }
        }
    }

    fn current(&self) -> Option<Secret> {
        let guard = self.token.read().ok()?;
        guard.as_ref().filter(|t| Instant::now() < t.renew_at).map(|t| t.access.clone())
    }

    async fn password(&self) -> Result<Secret, ItsmError> {
        crate::itsm::read_secret(&self.password, self.vault.as_deref(), "Cherwell password").await
    }

    async fn renew(&self, http: &reqwest::Client) -> Result<Secret, ItsmError> {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(token) = self.current() {
            return Ok(token);
        }
        let refresh = self.token.read().ok().and_then(|g| g.as_ref().and_then(|t| t.refresh.clone()));
        if let Some(refresh) = refresh {
            let form = [
                ("grant_type", "refresh_token"),
                ("client_id", self.client_id.as_str()),
                ("refresh_token", refresh.expose()),
                ("auth_mode", self.auth_mode),
            ];
            match self.grant(http, &form).await {
                Ok(token) => return Ok(self.keep(token, Some(refresh))),
                // An expired or revoked refresh token is what the password is for.
                Err(ItsmError::Auth(reason)) => {
                    tracing::info!(reason, "Cherwell refused the refresh token; signing in with the password");
                }
                Err(other) => return Err(other),
            }
        }
        // A refused password stands for a while: signing in with it on every retry would lock the account.
        self.guard.check()?;
        let password = self.password().await?;
        let form = [
            ("grant_type", "password"),
            ("client_id", self.client_id.as_str()),
            ("username", self.username.as_str()),
            ("password", password.expose()),
            ("auth_mode", self.auth_mode),
        ];
        match self.grant(http, &form).await {
            Ok(token) => Ok(self.keep(token, None)),
            Err(ItsmError::Auth(reason)) => {
                if matches!(self.failure(), Some(GrantFailure::Credentials(_))) {
                    self.guard.refused(&reason);
                }
                Err(ItsmError::Auth(reason))
            }
            Err(other) => Err(other),
        }
    }

    fn keep(&self, response: TokenResponse, previous_refresh: Option<Secret>) -> Secret {
        // CSM's lifetime comes from the API client's settings; 20 minutes is what its documentation shows.
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(1199).max(1));
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let token = Token {
            access: Secret::new(response.access_token),
            refresh: response.refresh_token.map(Secret::new).or(previous_refresh),
            renew_at: Instant::now() + lifetime - margin,
        };
        let access = token.access.clone();
        if let Ok(mut guard) = self.token.write() {
            *guard = Some(token);
        }
        if let Ok(mut failure) = self.failure.write() {
            *failure = None;
        }
        self.guard.clear();
        access
    }

    async fn grant(&self, http: &reqwest::Client, form: &[(&str, &str)]) -> Result<TokenResponse, ItsmError> {
        let response = http
            .post(&self.token_url)
            .query(&[("auth_mode", self.auth_mode)])
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| {
                let message = format!("Cherwell: the token request: {}", crate::http::failure(&e));
                self.failed(GrantFailure::Unreachable(message.clone()));
                ItsmError::Transient { message, retry_after: None }
            })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return response.json::<TokenResponse>().await.map_err(|e| ItsmError::Transient {
                message: format!("Cherwell's token response could not be read: {e}"),
                retry_after: None,
            });
        }
        let retry = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let (error, description) = oauth_error(&body);
        let grant_type = form.iter().find(|(k, _)| *k == "grant_type").map_or("password", |(_, v)| *v);
        match (status, error.as_str()) {
            (400 | 401 | 403, "invalid_client_id" | "invalid_client") => {
                let message = format!(
                    "Cherwell does not know the REST API client key '{}' ({description}); check ITSMC_CLIENT_ID \
                     against CSM Administrator's REST API client settings",
                    self.client_id
                );
                self.failed(GrantFailure::ClientId(message.clone()));
                Err(ItsmError::Auth(message))
            }
            (400 | 401 | 403, _) if grant_type == "refresh_token" => {
                Err(ItsmError::Auth(format!("the refresh token was refused ({error}: {description})")))
            }
            (400 | 401 | 403, _) => {
                let message = format!(
                    "Cherwell refused the sign-in of user '{}' with auth_mode {} ({error}: {description}); check the \
                     user name, password and ITSMC_CHERWELL_AUTH_MODE",
                    self.username, self.auth_mode
                );
                self.failed(GrantFailure::Credentials(message.clone()));
                Err(ItsmError::Auth(message))
            }
            _ => {
                let message = format!("Cherwell's token endpoint answered HTTP {status}: {}", first_line(&body));
                self.failed(GrantFailure::Status { status, retry_after: retry, message: message.clone() });
                Err(ItsmError::Transient { message, retry_after: retry })
            }
        }
    }

    fn failed(&self, failure: GrantFailure) {
        if let Ok(mut guard) = self.failure.write() {
            *guard = Some(failure);
        }
    }
}

/// `error` and `error_description` of a token refusal: a JSON object, or (as CSM's documentation shows it) a
/// JSON string holding one. The body never echoes what we sent.
fn oauth_error(body: &str) -> (String, String) {
    let mut value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Value::String(inner) = &value {
        value = serde_json::from_str(inner).unwrap_or(Value::Null);
    }
    let text = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let (error, description) = (text("error"), text("error_description"));
    if error.is_empty() && description.is_empty() { ("unknown".into(), first_line(body)) } else { (error, description) }
}

fn first_line(body: &str) -> String {
    let line = body.lines().next().unwrap_or_default().trim();
    if line.is_empty() { "no reason given".into() } else { line.chars().take(200).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_as_objects_or_as_the_string_the_docs_show() {
        let documented = r#""{\"error\":\"invalid_client_id\",\"error_description\":\"Client 12345 is not registered in the system.\"}""#;
        assert_eq!(
            oauth_error(documented),
            ("invalid_client_id".into(), "Client 12345 is not registered in the system.".into())
        );
        let plain = r#"{"error":"invalid_grant","error_description":"Could not login"}"#;
        assert_eq!(oauth_error(plain), ("invalid_grant".into(), "Could not login".into()));
        assert_eq!(oauth_error("<html>Bad Request</html>").0, "unknown");
    }
}
