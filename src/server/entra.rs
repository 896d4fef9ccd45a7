//! Microsoft Entra ID validation of the bearer token that an Azure Monitor action group's **Secure
//! Webhook** sends (issue 3, point 4).
//!
//! An action group with a Secure Webhook action names an app registration (ours, the "itsmc" API).
//! For every notification the action group's first-party app, "Azure Monitor action group"
//! ([`ACTION_GROUP_APP_ID`]), gets a client-credentials token from Entra for that app registration and
//! posts the alert with `Authorization: Bearer <JWT>`. This module decides whether such a token lets
//! the request in; it does not know routes or configuration files. [`EntraSettings`] is read at
//! start-up (from `ITSMC_ENTRA_*`), one [`EntraValidator`] is built from it and shared by the routes.
//!
//! # What is checked, in this order
//!
//! 1. `Authorization: Bearer <token>` is there (else `missing_token`).
//! 2. The token is a compact JWS whose header says `alg: RS256` and names a `kid`. Every other
//!    algorithm is refused before any key is looked at: `none`, HS256 (which an attacker could sign with
//!    our *public* key as the HMAC secret), PS256, ES256... The algorithm used to verify is fixed here,
//!    never taken from the token, and keys come only from the tenant's key document, never from the
//!    token's `jku`/`x5u`/`jwk` headers.
//! 3. The signature verifies with the tenant's key of that `kid` (else `invalid_token`).
//! 4. `exp` and `nbf` hold, with [`CLOCK_SKEW`] (five minutes, the default of Microsoft's own
//!    validation libraries) either way (`expired`, `not_yet_valid`).
//! 5. `iss` is the configured tenant's, in its v1 (`https://sts.windows.net/{tid}/`) or v2
//!    (`{authority}{tid}/v2.0`) form, and `tid` is that tenant (`wrong_tenant`). Entra signs the tokens
//!    of every tenant with the same keys, so a good signature alone says nothing about the tenant.
//! 6. `aud` is one of the configured audiences: the app registration's client id, its Application ID
//!    URI, or both (`wrong_audience`). v1 tokens carry whichever the action group asked for; v2 tokens
//!    always the client id.
//! 7. The client app (`appid` in v1 tokens, `azp` in v2) is the action group app (`wrong_caller`).
//! 8. With `require_role`, `roles` holds [`SECURE_WEBHOOK_ROLE`] (`missing_role`).
//!
//! A refusal answers 401, whatever the step, with a short code and one generic sentence: callers (action
//! groups) treat every refusal alike, and one status is simpler to alert on. The reason is logged at debug
//! level only, and the token never is. When the keys cannot be had (Entra unreachable, slow or answering errors, and no
//! usable keys cached), the answer is 503 `auth_unavailable`: that is not the caller's fault, and 503 is
//! the status an action group retries.
//!
//! # Keys
//!
//! The tenant's OpenID configuration (`{authority}{tenant}/v2.0/.well-known/openid-configuration`)
//! is read first, then the key document its `jwks_uri` names (for Entra,
//! `{authority}{tenant-guid}/discovery/v2.0/keys`). Going through the configuration document costs a
//! second request per refresh, but it is what turns a tenant given as a domain
//! (`contoso.onmicrosoft.com`) into the GUID that `iss` and `tid` carry, and it confirms that the
//! authority and tenant are what the operator meant. Its `jwks_uri` must be on the authority's own
//! origin.
//!
//! Keys are cached. They are fetched again (see [`RefreshPolicy`]) when a token names a `kid` the cache
//! does not hold, at most once per 5 minutes so that tokens with made-up `kid`s cannot make itsmc
//! hammer Entra; when they are 24 hours old; and, while no key could be had yet, at most every 10
//! seconds. One fetch runs at a time; concurrent requests wait for it. When a refresh fails, keys
//! already held stay in use (Entra announces new keys well before it signs with them).
//!
//! # Using it from a route
//!
//! [`require_token`] is the middleware `server::router` puts on the alert route when Entra validation is
//! configured: it checks the header before the body is read, so an unauthenticated caller costs nothing.
//!
//! Under the Azure Functions host the `Authorization` header reaches the custom handler unchanged
//! (request forwarding); the function's own key check (`authLevel`) is separate and still applies.

use crate::config::is_guid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::config::{ConfigError, invalid};

/// Application id of "Azure Monitor action group", the first-party app that gets the token.
pub const ACTION_GROUP_APP_ID: &str = "461e8683-5575-4561-ac7f-899cc907d62a";
/// The app role Microsoft's Secure Webhook instructions add to the app registration and assign to the
/// action group app's service principal.
pub const SECURE_WEBHOOK_ROLE: &str = "ActionGroupsSecureWebhook";
/// The public cloud's authority. Sovereign clouds have their own (e.g. `https://login.microsoftonline.us/`).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// Allowed clock difference for `exp` and `nbf`: five minutes, as in Microsoft.IdentityModel and MSAL.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Entra tokens are a few kilobytes; anything much bigger is not one, and is refused before any work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The configuration and key documents are a few kilobytes.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Sent with every refusal: enough for an operator to know what is expected, nothing about why.
const REFUSED_MESSAGE: &str =
    "this route needs a valid Microsoft Entra ID token from an Azure Monitor action group (Secure Webhook)";
const UNAVAILABLE_MESSAGE: &str =
    "the token could not be checked because Microsoft Entra ID could not be reached; try again later";

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The alert route's gate, as an axum middleware: the request goes on only with a valid token, and is
/// refused before its body is read otherwise.
pub async fn require_token(
    axum::extract::State(validator): axum::extract::State<Arc<EntraValidator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A header that is not visible ASCII cannot hold a JWT: treat it as no token.
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match validator.check(authorization.as_deref()).await {
        Ok(_) => next.run(request).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// Which tokens to accept. Build it with [`EntraSettings::new`] or [`EntraSettings::from_env`], which
/// validate and normalise the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSettings {
    /// The tenant whose action groups call itsmc: its GUID (lower case) or one of its domains.
    pub tenant_id: String,
    /// The app registration's Application (client) ID and/or Application ID URI.
    pub audiences: Vec<String>,
    /// Demand the [`SECURE_WEBHOOK_ROLE`] app role in the token.
    pub require_role: bool,
    /// Entra's login endpoint, ending in `/`.
    pub authority: url::Url,
}

impl EntraSettings {
    /// Checks and normalises the values; an error names the setting (`ITSMC_ENTRA_TENANT_ID`,
    /// `ITSMC_ENTRA_AUDIENCE`, `ITSMC_ENTRA_AUTHORITY`) and says what to put there. `authority`
    /// `None` means [`DEFAULT_AUTHORITY`].
    pub fn new(
        tenant_id: &str,
        audiences: Vec<String>,
        require_role: bool,
        authority: Option<&str>,
    ) -> Result<EntraSettings, ConfigError> {
        let tenant_id = tenant(tenant_id)?;
        let audiences = audiences
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .map(|a| audience(&a))
            .collect::<Result<Vec<_>, _>>()?;
        if audiences.is_empty() {
            return Err(invalid(
                "ITSMC_ENTRA_AUDIENCE",
                "name the app registration the Secure Webhook uses: its Application (client) ID and/or its \
                 Application ID URI, separated by commas",
            ));
        }
        let authority = authority_url(authority.unwrap_or(DEFAULT_AUTHORITY))?;
        Ok(EntraSettings { tenant_id, audiences, require_role, authority })
    }

    /// Reads `ITSMC_ENTRA_TENANT_ID`, `ITSMC_ENTRA_AUDIENCE` (comma-separated), `ITSMC_ENTRA_REQUIRE_ROLE`
    /// (`true` or `false`, default `false`) and `ITSMC_ENTRA_AUTHORITY` from the process environment.
    /// `Ok(None)` when `ITSMC_ENTRA_TENANT_ID` is unset or empty: Entra validation is off.
    pub fn from_env() -> Result<Option<EntraSettings>, ConfigError> {
        EntraSettings::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As [`from_env`](Self::from_env), through `lookup` (a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<EntraSettings>, ConfigError> {
        let Some(tenant_id) = lookup("ITSMC_ENTRA_TENANT_ID") else {
            // Half a configuration must not leave the alert route open while the operator believes it closed.
            let others = ["ITSMC_ENTRA_AUDIENCE", "ITSMC_ENTRA_REQUIRE_ROLE", "ITSMC_ENTRA_AUTHORITY"];
            if let Some(setting) = others.into_iter().find(|name| lookup(name).is_some()) {
                return Err(invalid(
                    "ITSMC_ENTRA_TENANT_ID",
                    format!(
                        "{setting} is set, so Entra validation is wanted: set the tenant id too (or unset {setting})"
                    ),
                ));
            }
            return Ok(None);
        };
        let audiences: Vec<String> =
            lookup("ITSMC_ENTRA_AUDIENCE").unwrap_or_default().split(',').map(str::to_string).collect();
        // The role is an optional step of Microsoft's Secure Webhook set-up; demanding it by default
        // would refuse every alert of a set-up that followed only the required steps.
        let require_role = match lookup("ITSMC_ENTRA_REQUIRE_ROLE").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(invalid("ITSMC_ENTRA_REQUIRE_ROLE", format!("'{v}' is neither true nor false"))),
        };
        let authority = lookup("ITSMC_ENTRA_AUTHORITY");
        EntraSettings::new(&tenant_id, audiences, require_role, authority.as_deref()).map(Some)
    }
}

/// GUIDs compare case-insensitively (Entra writes them in lower case, people paste them in any case);
/// everything else exactly.
fn same_id(a: &str, b: &str) -> bool {
    if is_guid(a) && is_guid(b) { a.eq_ignore_ascii_case(b) } else { a == b }
}

fn tenant(raw: &str) -> Result<String, ConfigError> {
    const SETTING: &str = "ITSMC_ENTRA_TENANT_ID";
    let t = raw.trim().to_ascii_lowercase();
    if is_guid(&t) {
        return Ok(t);
    }
    if matches!(t.as_str(), "common" | "organizations" | "consumers") {
        return Err(invalid(
            SETTING,
            format!(
                "'{t}' is a multi-tenant endpoint; name the tenant whose action groups call itsmc (its Directory \
                 (tenant) ID or a domain such as contoso.onmicrosoft.com)"
            ),
        ));
    }
    let domain = t.len() <= 253
        && t.contains('.')
        && t.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if domain {
        Ok(t)
    } else {
        Err(invalid(
            SETTING,
            format!(
                "'{}' is neither a tenant ID (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47) nor a domain \
                 such as contoso.onmicrosoft.com",
                raw.trim()
            ),
        ))
    }
}

fn audience(raw: &str) -> Result<String, ConfigError> {
    if is_guid(raw) {
        return Ok(raw.to_ascii_lowercase());
    }
    // An Application ID URI: api://..., https://..., urn:... Entra compares them exactly, so do we.
    match url::Url::parse(raw) {
        Ok(_) if !raw.contains(char::is_whitespace) => Ok(raw.to_string()),
        _ => Err(invalid(
            "ITSMC_ENTRA_AUDIENCE",
            format!(
                "'{raw}' is neither an Application (client) ID (a GUID) nor an Application ID URI (such as \
                 api://<client id>)"
            ),
        )),
    }
}

fn authority_url(raw: &str) -> Result<url::Url, ConfigError> {
    const SETTING: &str = "ITSMC_ENTRA_AUTHORITY";
    let mut url = url::Url::parse(raw.trim()).map_err(|e| invalid(SETTING, format!("'{raw}' is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        // The keys that decide who gets in come from here: plain http only to this machine (tests).
        "http" if crate::http::plain_http_allowed(&url) => {}
        _ => return Err(invalid(SETTING, format!("'{raw}' must be an https:// URL"))),
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            SETTING,
            format!(
                "'{raw}' must be the bare login endpoint, such as {DEFAULT_AUTHORITY}, without credentials, query \
                 or fragment"
            ),
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

/// Who called, once the token passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Always [`ACTION_GROUP_APP_ID`].
    pub app_id: String,
    /// The tenant's GUID.
    pub tenant_id: String,
    /// `oid`: the action group app's service principal in the tenant, when the token says.
    pub object_id: Option<String>,
    pub token_version: TokenVersion,
    pub roles: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// Which Entra endpoint issued the token; decided by its `iss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    V1,
    V2,
}

/// Why a request was refused, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// Not a JWT, not RS256, unknown key, bad signature, claims missing or malformed.
    InvalidToken,
    Expired,
    NotYetValid,
    /// Another tenant's token, or an issuer that is not Entra's for the tenant.
    WrongTenant,
    WrongAudience,
    /// A good token for us, obtained by an app other than the action group app.
    WrongCaller,
    MissingRole,
    /// The tenant's signing keys could not be had.
    AuthUnavailable,
}

impl RejectionKind {
    pub fn code(self) -> &'static str {
        match self {
            RejectionKind::MissingToken => "missing_token",
            RejectionKind::InvalidToken => "invalid_token",
            RejectionKind::Expired => "expired",
            RejectionKind::NotYetValid => "not_yet_valid",
            RejectionKind::WrongTenant => "wrong_tenant",
            RejectionKind::WrongAudience => "wrong_audience",
            RejectionKind::WrongCaller => "wrong_caller",
            RejectionKind::MissingRole => "missing_role",
            RejectionKind::AuthUnavailable => "auth_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            RejectionKind::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A refused request. Its response says only the code; the reason is for the debug log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    /// What exactly was wrong, for the debug log. Never holds the token.
    reason: String,
}

impl Rejection {
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl IntoResponse for Rejection {
    /// `{"error": {"code", "message"}}` with a generic message, and the RFC 6750 challenge on 401.
    fn into_response(self) -> Response {
        let message = match self.kind {
            RejectionKind::AuthUnavailable => UNAVAILABLE_MESSAGE,
            _ => REFUSED_MESSAGE,
        };
        let mut response = super::error(self.status(), self.code(), message);
        let challenge = match self.kind {
            RejectionKind::AuthUnavailable => None,
            RejectionKind::MissingToken => Some("Bearer"),
            RejectionKind::WrongCaller | RejectionKind::MissingRole => Some("Bearer error=\"insufficient_scope\""),
            _ => Some("Bearer error=\"invalid_token\""),
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

fn refuse(kind: RejectionKind, reason: impl Into<String>) -> Rejection {
    Rejection { kind, reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// The validator
// ---------------------------------------------------------------------------------------------

/// When the tenant's keys are fetched again. [`Default`] is what production uses; tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// After a successful fetch, a token with an unknown `kid` causes another only this much later
    /// (default 5 minutes): made-up `kid`s must not turn itsmc into a load generator against Entra.
    pub min_interval: Duration,
    /// After a failed fetch, the next one waits this long (default 10 s); requests meanwhile are
    /// answered at once (503 without keys) instead of each waiting for Entra.
    pub retry_after_failure: Duration,
    /// Keys this old are fetched again on the next request (default 24 h).
    pub max_age: Duration,
    /// Bound on one fetch, both requests together (default 5 s): the action group waits for our answer.
    pub fetch_timeout: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min_interval: Duration::from_secs(5 * 60),
            retry_after_failure: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Checks Secure Webhook tokens against one tenant's keys; share one per process (it holds the key
/// cache).
pub struct EntraValidator {
    settings: EntraSettings,
    http: reqwest::Client,
    policy: RefreshPolicy,
    cache: Mutex<Cache>,
    /// Held while fetching, so concurrent requests make one fetch between them.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<KeySet>>,
    last_attempt: Option<Attempt>,
}

#[derive(Clone)]
struct Attempt {
    at: Instant,
    /// `None` when it succeeded.
    error: Option<String>,
}

/// One fetch of the tenant's configuration and keys.
struct KeySet {
    /// The tenant's GUID, from the configuration document's issuer.
    tenant: String,
    v1_issuer: String,
    v2_issuer: String,
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
}

impl std::fmt::Debug for EntraValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraValidator").field("settings", &self.settings).field("policy", &self.policy).finish()
    }
}

impl EntraValidator {
    /// No request is made until the first token arrives. `http` should come from
    /// [`crate::http::build_client`] (its TLS settings, no redirects).
    pub fn new(settings: EntraSettings, http: reqwest::Client) -> EntraValidator {
        EntraValidator {
            settings,
            http,
            policy: RefreshPolicy::default(),
            cache: Mutex::new(Cache::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Replaces the default [`RefreshPolicy`].
    pub fn with_refresh_policy(mut self, policy: RefreshPolicy) -> EntraValidator {
        self.policy = policy;
        self
    }

    pub fn settings(&self) -> &EntraSettings {
        &self.settings
    }

    /// Checks the `Authorization` header's value (`None` when there is none). The reason for a refusal
    /// is logged at debug level; the token never is.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Caller, Rejection> {
        let outcome = self.verify(authorization).await;
        if let Err(rejection) = &outcome {
            tracing::debug!(code = rejection.code(), reason = %rejection.reason, "Entra token refused");
        }
        outcome
    }

    async fn verify(&self, authorization: Option<&str>) -> Result<Caller, Rejection> {
        let token = bearer_token(authorization)?;
        let parts = JwtParts::split(token)?;
        let kid = parts.kid()?;
        let keys = self.keys_for(&kid).await?;
        let key = keys.keys.get(&kid).ok_or_else(|| {
            refuse(RejectionKind::InvalidToken, format!("kid '{kid}' is not among the tenant's signing keys"))
        })?;
        // RS256, whatever the header says (it was checked to say RS256 anyway).
        match jsonwebtoken::crypto::verify(parts.signature, parts.signed.as_bytes(), key, Algorithm::RS256) {
            Ok(true) => {}
            Ok(false) => return Err(refuse(RejectionKind::InvalidToken, format!("bad signature for kid '{kid}'"))),
            Err(e) => return Err(refuse(RejectionKind::InvalidToken, format!("signature not verifiable: {e}"))),
        }
        let claims = parts.claims()?;
        validate(&claims, &keys, &self.settings, Utc::now().timestamp())
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // A poisoned lock only means a panic elsewhere while holding it; the cache is still consistent.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, Option<Attempt>) {
        let cache = self.cache();
        (cache.keys.clone(), cache.last_attempt.clone())
    }

    fn fresh_with(&self, keys: &Option<Arc<KeySet>>, kid: &str) -> Option<Arc<KeySet>> {
        keys.as_ref()
            .filter(|k| k.fetched_at.elapsed() < self.policy.max_age && k.keys.contains_key(kid))
            .map(Arc::clone)
    }

    /// The key set to verify a token with this `kid`, fetching it when the cache has none, is too old,
    /// or lacks the `kid`, within the limits of the [`RefreshPolicy`].
    async fn keys_for(&self, kid: &str) -> Result<Arc<KeySet>, Rejection> {
        let (keys, _) = self.snapshot();
        if let Some(keys) = self.fresh_with(&keys, kid) {
            return Ok(keys);
        }
        {
            let _fetching = self.refresh.lock().await;
            // Another request may have fetched while this one waited.
            let (keys, last) = self.snapshot();
            if let Some(keys) = self.fresh_with(&keys, kid) {
                return Ok(keys);
            }
            let stale = keys.as_ref().is_none_or(|k| k.fetched_at.elapsed() >= self.policy.max_age);
            let wait = match &last {
                None => Duration::ZERO,
                Some(Attempt { error: Some(_), .. }) => self.policy.retry_after_failure,
                // The last fetch succeeded and made the keys in hand: once they are old, fetch at once.
                Some(_) if stale => Duration::ZERO,
                // They are fresh but lack this kid.
                Some(_) => self.policy.min_interval,
            };
            let may_fetch = last.as_ref().is_none_or(|attempt| attempt.at.elapsed() >= wait);
            if may_fetch {
                // Bounds both requests together: the action group is waiting for this answer.
                let outcome = match tokio::time::timeout(self.policy.fetch_timeout, self.fetch()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!(
                        "no answer from {} within {} ms",
                        self.settings.authority,
                        self.policy.fetch_timeout.as_millis()
                    )),
                };
                let mut cache = self.cache();
                match outcome {
                    Ok(fresh) => {
                        tracing::info!(
                            tenant = %fresh.tenant,
                            keys = fresh.keys.len(),
                            "fetched the Entra tenant's token signing keys"
                        );
                        cache.keys = Some(Arc::new(fresh));
                        cache.last_attempt = Some(Attempt { at: Instant::now(), error: None });
                    }
                    Err(error) => {
                        tracing::warn!(
                            tenant = %self.settings.tenant_id,
                            authority = %self.settings.authority,
                            error = %error,
                            "cannot fetch the Entra tenant's token signing keys; check ITSMC_ENTRA_TENANT_ID, \
                             ITSMC_ENTRA_AUTHORITY and outbound access to the authority"
                        );
                        cache.last_attempt = Some(Attempt { at: Instant::now(), error: Some(error) });
                    }
                }
            }
        }
        let (keys, last) = self.snapshot();
        let failing = last.and_then(|attempt| attempt.error);
        match (keys, failing) {
            // Possibly older than max_age when a refresh failed: still the best keys there are.
            (Some(keys), _) if keys.keys.contains_key(kid) => Ok(keys),
            (None, error) => Err(refuse(
                RejectionKind::AuthUnavailable,
                format!("no signing keys yet: {}", error.unwrap_or_else(|| "not fetched".into())),
            )),
            // A kid we cannot look up because Entra is failing: it may be a new key, so not the caller's fault.
            (Some(_), Some(error)) => Err(refuse(
                RejectionKind::AuthUnavailable,
                format!("kid '{kid}' unknown and the keys cannot be refreshed: {error}"),
            )),
            (Some(_), None) => {
                Err(refuse(RejectionKind::InvalidToken, format!("kid '{kid}' is not among the tenant's signing keys")))
            }
        }
    }

    /// The tenant's configuration document, then its key document. The error says what to fix.
    async fn fetch(&self) -> Result<KeySet, String> {
        let authority = self.settings.authority.as_str();
        let tenant = &self.settings.tenant_id;
        let config_url = format!("{authority}{tenant}/v2.0/.well-known/openid-configuration");
        let config: OpenIdConfiguration = self.get_json(&config_url).await?;

        // `https://login.microsoftonline.com/{tenant-guid}/v2.0`: the GUID is the first path segment.
        let guid = config
            .issuer
            .strip_prefix(authority)
            .and_then(|rest| rest.strip_suffix("/v2.0"))
            .filter(|guid| is_guid(guid))
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| {
                format!(
                    "{config_url} names issuer '{}', not {authority}<tenant id>/v2.0: is ITSMC_ENTRA_AUTHORITY an \
                     Entra ID login endpoint?",
                    config.issuer
                )
            })?;
        if is_guid(tenant) && guid != *tenant {
            return Err(format!("{config_url} belongs to tenant {guid}, not {tenant}"));
        }
        let jwks_url = url::Url::parse(&config.jwks_uri)
            .map_err(|e| format!("{config_url}: jwks_uri '{}' is not a URL ({e})", config.jwks_uri))?;
        // The keys decide who gets in: take them only from the authority the operator named.
        if jwks_url.origin() != self.settings.authority.origin() {
            return Err(format!("{config_url}: jwks_uri '{jwks_url}' is not on the authority {authority}"));
        }
        let document: KeyDocument = self.get_json(jwks_url.as_str()).await?;
        let mut keys = HashMap::new();
        for key in document.keys {
            let usable = key.kty == "RSA" && key.key_use.as_deref().is_none_or(|u| u == "sig");
            let (Some(kid), Some(n), Some(e), true) = (key.kid, key.n, key.e, usable) else {
                continue;
            };
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(decoding) => {
                    keys.entry(kid).or_insert(decoding);
                }
                Err(err) => tracing::debug!(%kid, error = %err, "skipping an unreadable key in the Entra key document"),
            }
        }
        if keys.is_empty() {
            return Err(format!("{jwks_url} holds no RSA signing key"));
        }
        Ok(KeySet {
            v1_issuer: format!("https://sts.windows.net/{guid}/"),
            v2_issuer: format!("{authority}{guid}/v2.0"),
            tenant: guid,
            keys,
            fetched_at: Instant::now(),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let mut response = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .timeout(self.policy.fetch_timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::http::failure(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| format!("GET {url}: {}", crate::http::failure(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: the answer is over {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the expected JSON document ({e})"))
    }
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct KeyDocument {
    keys: Vec<JsonWebKey>,
}

#[derive(Deserialize)]
struct JsonWebKey {
    #[serde(default)]
    kty: String,
    #[serde(rename = "use")]
    key_use: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------------------------

fn bearer_token(authorization: Option<&str>) -> Result<&str, Rejection> {
    let value = authorization.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(refuse(RejectionKind::MissingToken, "no Authorization header"));
    }
    let Some((scheme, token)) = value.split_once(' ') else {
        // The whole value may be a credential: it stays out of the log.
        let reason = if value.eq_ignore_ascii_case("bearer") { "Bearer without a token" } else { "no auth scheme" };
        return Err(refuse(RejectionKind::MissingToken, reason));
    };
    // Auth schemes are case-insensitive (RFC 9110, 11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        let scheme: String = scheme.chars().take(20).collect();
        return Err(refuse(RejectionKind::MissingToken, format!("Authorization scheme '{scheme}', not Bearer")));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(refuse(RejectionKind::MissingToken, "Bearer without a token"));
    }
    Ok(token)
}

/// A compact JWS, split but not yet trusted.
struct JwtParts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`, what the signature covers.
    signed: &'a str,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| refuse(RejectionKind::InvalidToken, format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| refuse(RejectionKind::InvalidToken, format!("the {what} is not the expected JSON ({e})")))
}

impl<'a> JwtParts<'a> {
    fn split(token: &'a str) -> Result<JwtParts<'a>, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse(RejectionKind::InvalidToken, format!("{} bytes long, not a JWT", token.len())));
        }
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(payload), Some(signature), None) if !header.is_empty() && !payload.is_empty() => {
                Ok(JwtParts { header, payload, signature, signed: &token[..header.len() + 1 + payload.len()] })
            }
            _ => Err(refuse(RejectionKind::InvalidToken, "not a compact JWS (three base64url parts)")),
        }
    }

    /// The `kid`, once the header is known to ask for RS256 and nothing we do not understand.
    fn kid(&self) -> Result<String, Rejection> {
        let header: JwtHeader = decode_part(self.header, "JWT header")?;
        match header.alg.as_deref() {
            Some("RS256") => {}
            Some(alg) => {
                let alg: String = alg.chars().take(20).collect();
                return Err(refuse(RejectionKind::InvalidToken, format!("alg '{alg}', only RS256 is accepted")));
            }
            None => return Err(refuse(RejectionKind::InvalidToken, "no alg in the JWT header")),
        }
        if header.crit.is_some() {
            // RFC 7515 4.1.11: extensions we do not implement must make the token invalid.
            return Err(refuse(RejectionKind::InvalidToken, "the JWT header has crit extensions"));
        }
        if self.signature.is_empty() {
            return Err(refuse(RejectionKind::InvalidToken, "no signature"));
        }
        match header.kid {
            Some(kid) if !kid.is_empty() && kid.len() <= 256 => Ok(kid),
            _ => Err(refuse(RejectionKind::InvalidToken, "no kid in the JWT header")),
        }
    }

    fn claims(&self) -> Result<Claims, Rejection> {
        decode_part(self.payload, "JWT payload")
    }
}

/// The claims itsmc looks at; Entra sends many more.
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    tid: Option<String>,
    /// v1 tokens.
    appid: Option<String>,
    /// v2 tokens.
    azp: Option<String>,
    oid: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
}

/// Entra sends one audience; JWT allows a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn values(&self) -> &[String] {
        match self {
            Audience::One(one) => std::slice::from_ref(one),
            Audience::Many(many) => many,
        }
    }
}

fn seconds(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| number.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
}

/// Steps 4 to 8 of the module documentation, on claims whose signature is good.
fn validate(claims: &Claims, keys: &KeySet, settings: &EntraSettings, now: i64) -> Result<Caller, Rejection> {
    let skew = CLOCK_SKEW.as_secs() as i64;
    let exp = claims
        .exp
        .as_ref()
        .and_then(seconds)
        .ok_or_else(|| refuse(RejectionKind::InvalidToken, "no numeric exp claim"))?;
    if now > exp.saturating_add(skew) {
        return Err(refuse(RejectionKind::Expired, format!("expired {} s ago (exp {exp})", now - exp)));
    }
    if let Some(nbf) = &claims.nbf {
        let nbf = seconds(nbf).ok_or_else(|| refuse(RejectionKind::InvalidToken, "nbf is not a usable number"))?;
        if nbf > now.saturating_add(skew) {
            return Err(refuse(RejectionKind::NotYetValid, format!("not valid before {nbf}, now is {now}")));
        }
    }

    let iss = claims.iss.as_deref().unwrap_or_default();
    let version = if iss == keys.v1_issuer {
        TokenVersion::V1
    } else if iss == keys.v2_issuer {
        TokenVersion::V2
    } else {
        return Err(refuse(
            RejectionKind::WrongTenant,
            format!("issuer '{iss}' is neither '{}' nor '{}'", keys.v1_issuer, keys.v2_issuer),
        ));
    };
    let tid = claims.tid.as_deref().unwrap_or_default();
    if !same_id(tid, &keys.tenant) {
        return Err(refuse(RejectionKind::WrongTenant, format!("tid '{tid}', not {}", keys.tenant)));
    }

    let audiences = claims.aud.as_ref().map(Audience::values).unwrap_or_default();
    if !audiences.iter().any(|aud| settings.audiences.iter().any(|ours| same_id(aud, ours))) {
        return Err(refuse(
            RejectionKind::WrongAudience,
            format!("aud {audiences:?}, expected one of {:?}", settings.audiences),
        ));
    }

    let (claim, app) = match version {
        TokenVersion::V1 => ("appid", claims.appid.as_deref()),
        TokenVersion::V2 => ("azp", claims.azp.as_deref()),
    };
    let app = app.unwrap_or_default();
    if !same_id(app, ACTION_GROUP_APP_ID) {
        return Err(refuse(
            RejectionKind::WrongCaller,
            format!("{claim} '{app}' is not the Azure Monitor action group app {ACTION_GROUP_APP_ID}"),
        ));
    }

    if settings.require_role && !claims.roles.iter().any(|role| role == SECURE_WEBHOOK_ROLE) {
        return Err(refuse(
            RejectionKind::MissingRole,
            format!(
                "roles {:?} lack {SECURE_WEBHOOK_ROLE}: assign the app role to the action group app's service \
                 principal",
                claims.roles
            ),
        ));
    }

    Ok(Caller {
        app_id: ACTION_GROUP_APP_ID.to_string(),
        tenant_id: keys.tenant.clone(),
        object_id: claims.oid.clone(),
        token_version: version,
        roles: claims.roles.clone(),
        expires_at: DateTime::from_timestamp(exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn settings_from_the_environment() {
        assert_eq!(EntraSettings::from_lookup(lookup(&[])), Ok(None));
        let s = EntraSettings::from_lookup(lookup(&[
            ("ITSMC_ENTRA_TENANT_ID", " 72F988BF-86F1-41AF-91AB-2D7CD011DB47 "),
            ("ITSMC_ENTRA_AUDIENCE", "api://itsmc, 0D5F1E0E-1111-2222-3333-444455556666,"),
            ("ITSMC_ENTRA_REQUIRE_ROLE", "TRUE"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.tenant_id, "72f988bf-86f1-41af-91ab-2d7cd011db47");
        assert_eq!(s.audiences, ["api://itsmc", "0d5f1e0e-1111-2222-3333-444455556666"]);
        assert!(s.require_role);
        assert_eq!(s.authority.as_str(), DEFAULT_AUTHORITY);

        let s =
            EntraSettings::new("Contoso.onmicrosoft.com", vec!["api://x".into()], false, Some("http://127.0.0.1:9"))
                .unwrap();
        assert_eq!(s.tenant_id, "contoso.onmicrosoft.com");
        assert_eq!(s.authority.as_str(), "http://127.0.0.1:9/");
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let setting = |pairs: &[(&str, &str)]| EntraSettings::from_lookup(lookup(pairs)).unwrap_err().setting;
        let aud = ("ITSMC_ENTRA_AUDIENCE", "api://itsmc");
        assert_eq!(setting(&[("ITSMC_ENTRA_TENANT_ID", "common"), aud]), "ITSMC_ENTRA_TENANT_ID");
        assert_eq!(setting(&[("ITSMC_ENTRA_TENANT_ID", "not a tenant"), aud]), "ITSMC_ENTRA_TENANT_ID");
        assert_eq!(setting(&[("ITSMC_ENTRA_TENANT_ID", "contoso.com")]), "ITSMC_ENTRA_AUDIENCE");
        // Without the tenant, the other settings do not silently leave the route open.
        assert_eq!(setting(&[aud]), "ITSMC_ENTRA_TENANT_ID");
        assert_eq!(setting(&[("ITSMC_ENTRA_REQUIRE_ROLE", "true")]), "ITSMC_ENTRA_TENANT_ID");
        assert_eq!(
            setting(&[("ITSMC_ENTRA_TENANT_ID", "contoso.com"), ("ITSMC_ENTRA_AUDIENCE", "my app")]),
            "ITSMC_ENTRA_AUDIENCE"
        );
        assert_eq!(
            setting(&[("ITSMC_ENTRA_TENANT_ID", "contoso.com"), aud, ("ITSMC_ENTRA_REQUIRE_ROLE", "yes")]),
            "ITSMC_ENTRA_REQUIRE_ROLE"
        );
        for authority in ["http://login.microsoftonline.com/", "https://u:p@login.example/", "ftp://x/", "nope"] {
            assert_eq!(
                setting(&[("ITSMC_ENTRA_TENANT_ID", "contoso.com"), aud, ("ITSMC_ENTRA_AUTHORITY", authority)]),
                "ITSMC_ENTRA_AUTHORITY",
                "{authority}"
            );
        }
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(bearer_token(None).unwrap_err().kind(), RejectionKind::MissingToken);
        assert_eq!(bearer_token(Some("Basic YTpi")).unwrap_err().kind(), RejectionKind::MissingToken);
        assert_eq!(bearer_token(Some("Bearer   ")).unwrap_err().kind(), RejectionKind::MissingToken);
        assert_eq!(bearer_token(Some("bearer a.b.c")).unwrap(), "a.b.c");
        // A bare credential is not logged as if it were a scheme.
        let bare = bearer_token(Some("c2VjcmV0OnBhc3N3b3Jk")).unwrap_err();
        assert!(!format!("{bare:?}").contains("c2VjcmV0"), "{bare:?}");
    }
}
