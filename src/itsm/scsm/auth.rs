//! Signing in to the Cireson portal: `POST /api/V3/Authorization/GetToken` with `{UserName, Password,
//! LanguageCode}` answers a token (a JSON string), which every other call sends as `Authorization: Token <token>`.
//!
//! The token is kept until the portal refuses it (401): the portal does not say how long one lives. Then one
//! renewal runs at a time, so an alert storm that finds the token expired signs in once, not once per alert. A
//! password kept in Key Vault is read again once when the portal refuses it, since an operator may have rotated it.
//! A refused password is not tried again for a while ([`SignInGuard`]): every queued retry signing in with it would
//! lock the directory account (`DOMAIN\user`).

use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use super::settings::ScsmSettings;
use crate::config::{Secret, SecretSetting};
use crate::http::retry_after;
use crate::itsm::{ItsmError, SignInGuard};
use crate::secrets::Secrets;

pub const TOKEN_PATH: &str = "/api/V3/Authorization/GetToken";

pub struct Auth {
    url: String,
    username: String,
    password: SecretSetting,
    language_code: String,
    vault: Option<Arc<Secrets>>,
    token: RwLock<Option<Secret>>,
    renewing: tokio::sync::Mutex<()>,
    /// A refused sign-in, so that retries do not sign in again with the same password.
    guard: SignInGuard,
}

/// Why signing in failed, kept apart for the connection test.
#[derive(Debug)]
pub enum SignInError {
    /// The portal refused the user name or password (HTTP status, its reason).
    Refused(u16, String),
    /// The portal could not be asked, or failed (transport error or 429/5xx).
    Failed(ItsmError, Option<u16>),
    /// The portal refused the password a short while ago: not asked again yet (`Auth`, saying until when).
    Held(ItsmError),
}

impl From<SignInError> for ItsmError {
    fn from(error: SignInError) -> ItsmError {
        match error {
            SignInError::Refused(status, reason) => ItsmError::Auth(format!(
                "the Cireson portal refused to sign in (HTTP {status}: {reason}); check the connection's user name \
                 (DOMAIN\\user) and password"
            )),
            SignInError::Failed(error, _) | SignInError::Held(error) => error,
        }
    }
}

impl Auth {
    pub fn new(settings: &ScsmSettings, vault: Option<Arc<Secrets>>) -> Auth {
        Auth {
            url: format!("{}{TOKEN_PATH}", settings.url),
            username: settings.username.clone(),
            password: settings.password.clone(),
            language_code: settings.language_code.clone(),
            vault,
            token: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(()),
            guard: SignInGuard::default(),
        }
    }

    /// The token to send: the one kept, or a new one.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Secret, SignInError> {
        if let Some(token) = self.current() {
            return Ok(token);
        }
        self.renew(http, None).await
    }

    /// The portal refused `refused`: sign in again, unless another request already did.
    pub async fn renew(&self, http: &reqwest::Client, refused: Option<&Secret>) -> Result<Secret, SignInError> {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(current) = self.current()
            && Some(&current) != refused
        {
            return Ok(current);
        }
        let token = self.sign_in(http).await?;
        if let Ok(mut kept) = self.token.write() {
            *kept = Some(token.clone());
        }
        Ok(token)
    }

    fn current(&self) -> Option<Secret> {
        self.token.read().ok()?.clone()
    }

    /// The portal refused our password: read the Key Vault one again, once, in case it was rotated. `true` when
    /// it changed, so that the refused request is worth sending again.
    pub async fn reload(&self) -> bool {
        let (SecretSetting::KeyVault(name), Some(vault)) = (&self.password, &self.vault) else { return false };
        let before = vault.get(name).await.ok();
        match vault.reload(name).await {
            Ok(now) if before.as_ref() != Some(&now) => {
                tracing::info!("the SCSM portal password changed in Key Vault; trying it");
                self.guard.clear();
                if let Ok(mut kept) = self.token.write() {
                    *kept = None;
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the SCSM portal password from Key Vault again");
                false
            }
        }
    }

    async fn password(&self) -> Result<Secret, ItsmError> {
        crate::itsm::read_secret(&self.password, self.vault.as_deref(), "password").await
    }

    async fn sign_in(&self, http: &reqwest::Client) -> Result<Secret, SignInError> {
        self.guard.check().map_err(SignInError::Held)?;
        let result = self.ask_token(http).await;
        match &result {
            Ok(_) => self.guard.clear(),
            Err(SignInError::Refused(status, reason)) => self.guard.refused(&format!(
                "the Cireson portal refused to sign in as {} (HTTP {status}: {reason}); check the connection's \
                 password",
                self.username
            )),
            Err(_) => {}
        }
        result
    }

    /// `POST GetToken` with the user name and password.
    async fn ask_token(&self, http: &reqwest::Client) -> Result<Secret, SignInError> {
        let password = self.password().await.map_err(|e| SignInError::Failed(e, None))?;
        let body = json!({
            "UserName": self.username,
            "Password": password.expose(),
            "LanguageCode": self.language_code,
        });
        let response = http
            .post(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| SignInError::Failed(super::client::transport_error("signing in", &e), None))?;
        let status = response.status().as_u16();
        let retry = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        match status {
            200 => {
                // A JSON string; a portal that answers the bare token is taken as it is.
                let token = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::String(token)) => token,
                    _ => text.trim().trim_matches('"').to_string(),
                };
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(SignInError::Failed(
                        ItsmError::Transient {
                            message: "the Cireson portal answered the sign-in without a token".into(),
                            retry_after: None,
                        },
                        Some(status),
                    ));
                }
                Ok(Secret::new(token))
            }
            400 | 401 | 403 => Err(SignInError::Refused(status, super::client::error_text(&text))),
            _ => Err(SignInError::Failed(
                super::client::classify(status, retry, &text, &format!("POST {TOKEN_PATH}")),
                Some(status),
            )),
        }
    }
}
