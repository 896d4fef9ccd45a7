//! ServiceNow authentication: Basic, or OAuth 2 with the password grant on `/oauth_token.do`.
//!
//! The access token is cached until shortly before it expires, renewed with the refresh token, and
//! minted again with the password when the refresh token is refused. Only one renewal runs at a time, so
//! an alert storm that finds the token expired makes one token request, not thousands.
//!
//! Credentials the settings leave out come from Key Vault ([`crate::secrets`], cached there). When
//! ServiceNow refuses them, [`Auth::reload`] reads them again once, since an operator may have rotated the
//! password in the vault; and a refresh token ServiceNow hands out is written back to the vault, so the next
//! instance (or restart) starts from it instead of the password.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{RefreshTokenPolicy, Secret, SecretSetting, ServiceNowAuth};
use crate::itsm::ItsmError;
use crate::secrets::Secrets;

use super::client::transport_error;
use crate::http::retry_after;

#[derive(Clone)]
struct Token {
    access: Secret,
    refresh: Option<Secret>,
    /// When we stop using it: a little before ServiceNow's expiry, so a request never races it.
    renew_at: Instant,
}

pub struct Auth {
    settings: ServiceNowAuth,
    vault: Option<Arc<Secrets>>,
    refresh_policy: RefreshTokenPolicy,
    /// When ServiceNow handed out the refresh token in use (this process's knowledge; `None` before that).
    refresh_issued: RwLock<Option<chrono::DateTime<chrono::Utc>>>,
    token_url: String,
    token: RwLock<Option<Token>>,
    renewing: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(
        settings: ServiceNowAuth,
        base_url: &str,
        vault: Option<Arc<Secrets>>,
        refresh_policy: RefreshTokenPolicy,
    ) -> Auth {
        Auth {
            settings,
            vault,
            refresh_policy,
            refresh_issued: RwLock::new(None),
            token_url: format!("{base_url}/oauth_token.do"),
            token: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.settings, ServiceNowAuth::OAuth { .. })
    }

    /// Add credentials to a request, renewing the token first when it is due.
    pub async fn apply(
        &self,
        client: &reqwest::Client,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ItsmError> {
        match &self.settings {
            ServiceNowAuth::Basic { username, password } => {
                Ok(request.basic_auth(username, Some(self.secret(password).await?.expose())))
            }
            ServiceNowAuth::OAuth { .. } => {
                let token = match self.current() {
                    Some(token) => token,
                    None => self.renew(client).await?,
                };
                Ok(request.bearer_auth(token.expose()))
            }
        }
    }

    /// ServiceNow refused our credentials: read the Key Vault ones again, once, in case they were rotated.
    /// `true` when one of them changed, so that the refused request is worth sending again.
    pub async fn reload(&self) -> bool {
        let (ServiceNowAuth::Basic { password, .. } | ServiceNowAuth::OAuth { password, .. }) = &self.settings;
        let client_secret = match &self.settings {
            ServiceNowAuth::OAuth { client_secret, .. } => Some(client_secret),
            ServiceNowAuth::Basic { .. } => None,
        };
        let (Some(vault), mut changed) = (&self.vault, false) else { return false };
        for setting in [Some(password), client_secret].into_iter().flatten() {
            let SecretSetting::KeyVault(name) = setting else { continue };
            let before = vault.get(name).await.ok();
            match vault.reload(name).await {
                Ok(now) => changed |= before.as_ref() != Some(&now),
                Err(e) => tracing::warn!(error = %e, "could not read a ServiceNow credential from Key Vault again"),
            }
        }
        if changed {
            tracing::info!("a ServiceNow credential changed in Key Vault; trying it");
            self.forget_access_token();
        }
        changed
    }

    /// The refresh token's expected end, and whether it is inside the warning window.
    pub fn refresh_token_status(&self) -> Option<(chrono::DateTime<chrono::Utc>, bool)> {
        let issued = (*self.refresh_issued.read().ok()?)?;
        let ends = issued + chrono::Duration::from_std(self.refresh_policy.lifespan).ok()?;
        let warn_from = ends - chrono::Duration::from_std(self.refresh_policy.warn_before).ok()?;
        Some((ends, chrono::Utc::now() >= warn_from))
    }

    async fn secret(&self, setting: &SecretSetting) -> Result<Secret, ItsmError> {
        crate::itsm::read_secret(setting, self.vault.as_deref(), "credential").await
    }

    /// ServiceNow answered 401 to a bearer token: forget it, so the next `apply` renews it.
    pub fn forget_access_token(&self) {
        if let Ok(mut guard) = self.token.write()
            && let Some(token) = guard.as_mut()
        {
            token.renew_at = Instant::now();
        }
    }

    fn current(&self) -> Option<Secret> {
        let guard = self.token.read().ok()?;
        guard.as_ref().filter(|t| Instant::now() < t.renew_at).map(|t| t.access.clone())
    }

    async fn renew(&self, client: &reqwest::Client) -> Result<Secret, ItsmError> {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(token) = self.current() {
            return Ok(token);
        }
        let ServiceNowAuth::OAuth { username, password, client_id, client_secret, refresh_token } = &self.settings
        else {
            unreachable!("renew is only called for OAuth");
        };
        let client_secret = self.secret(client_secret).await?;
        let mut refresh = self.token.read().ok().and_then(|g| g.as_ref().and_then(|t| t.refresh.clone()));
        if let (None, Some(name), Some(vault)) = (&refresh, refresh_token, &self.vault) {
            // Written back by this or another instance; absent until ServiceNow first hands one out.
            refresh = vault.get(name).await.ok().filter(|token| !token.expose().is_empty());
        }
        if let Some(refresh) = refresh {
            let form = [
                ("grant_type", "refresh_token"),
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.expose()),
                ("refresh_token", refresh.expose()),
            ];
            if let Some((ends, true)) = self.refresh_token_status() {
                // With the password at hand this is no outage, but an operator who meant the refresh token to
                // carry the connection (or watches for password grants) should hear of it before it ends.
                tracing::warn!(
                    %ends,
                    "ServiceNow's OAuth refresh token for user '{username}' runs out soon; itsmc signs in with the \
                     password when it does (ITSMC_REFRESH_TOKEN_LIFESPAN_SECS, ITSMC_REFRESH_TOKEN_WARN_DAYS)"
                );
            }
            match self.grant(client, &form).await {
                Ok(token) => return Ok(self.keep(token, Some(refresh))),
                // A refused refresh token (expired, revoked) is what the password is for.
                Err(ItsmError::Auth(reason)) => {
                    tracing::info!(reason, "ServiceNow refused the refresh token; signing in with the password");
                }
                Err(other) => return Err(other),
            }
        }
        let password = self.secret(password).await?;
        let form = [
            ("grant_type", "password"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
            ("username", username.as_str()),
            ("password", password.expose()),
        ];
        let token = self.grant(client, &form).await.map_err(|e| match e {
            ItsmError::Auth(reason) => ItsmError::Auth(format!(
                "ServiceNow refused the OAuth password grant for user '{username}' and client '{client_id}' ({reason}); \
                 check the user name, password, client id and client secret"
            )),
            other => other,
        })?;
        Ok(self.keep(token, None))
    }

    fn keep(&self, response: TokenResponse, previous_refresh: Option<Secret>) -> Secret {
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(1800));
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let handed_out =
            response.refresh_token.map(Secret::new).filter(|token| Some(token) != previous_refresh.as_ref());
        if handed_out.is_some()
            && let Ok(mut issued) = self.refresh_issued.write()
        {
            *issued = Some(chrono::Utc::now());
        }
        if let (Some(token), ServiceNowAuth::OAuth { refresh_token: Some(name), .. }, Some(vault)) =
            (&handed_out, &self.settings, &self.vault)
        {
            // In the background: the alert in hand needs the access token, not the write.
            let (vault, name, token) = (Arc::clone(vault), name.clone(), token.clone());
            tokio::spawn(async move {
                match vault.set(&name, &token).await {
                    Ok(()) => tracing::info!(secret = name, "wrote ServiceNow's new refresh token back to Key Vault"),
                    Err(e) => tracing::warn!(error = %e, "could not write ServiceNow's new refresh token to Key Vault"),
                }
            });
        }
        let token = Token {
            access: Secret::new(response.access_token),
            refresh: handed_out.or(previous_refresh),
            renew_at: Instant::now() + lifetime - margin,
        };
        let access = token.access.clone();
        if let Ok(mut guard) = self.token.write() {
            *guard = Some(token);
        }
        access
    }

    async fn grant(&self, client: &reqwest::Client, form: &[(&str, &str)]) -> Result<TokenResponse, ItsmError> {
        let response = client
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| transport_error("the OAuth token request", &e))?;
        let status = response.status();
        if status.is_success() {
            return response.json::<TokenResponse>().await.map_err(|e| ItsmError::Transient {
                message: format!("ServiceNow's token response could not be read: {e}"),
                retry_after: None,
            });
        }
        let retry = retry_after(response.headers());
        // The body names the error (`access_denied`, `invalid_grant`); it never echoes what we sent.
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let error = v.get("error").and_then(|e| e.as_str()).unwrap_or_default().to_string();
                let description = v.get("error_description").and_then(|e| e.as_str()).unwrap_or_default();
                (!error.is_empty() || !description.is_empty())
                    .then(|| format!("{error} {description}").trim().to_string())
            })
            .unwrap_or_else(|| "no reason given".into());
        match status.as_u16() {
            400 | 401 | 403 => Err(ItsmError::Auth(format!("HTTP {}: {reason}", status.as_u16()))),
            _ => Err(ItsmError::Transient {
                message: format!("ServiceNow's token endpoint answered HTTP {}: {reason}", status.as_u16()),
                retry_after: retry,
            }),
        }
    }
}
