//! The App Service / Azure Functions managed identity endpoint in a box: a plain-HTTP server on
//! `127.0.0.1` answering token requests the way the endpoint named by `IDENTITY_ENDPOINT` does, so
//! `azure_identity`'s `ManagedIdentityCredential` runs unchanged against it. The tokens it issues are
//! recorded in a [`TokenRegistry`] that the Key Vault emulator (`keyvault.rs`) checks bearer tokens
//! against, as Key Vault checks Entra ID's signature.
//!
//! # What it emulates, and from which public material
//!
//! - `GET {IDENTITY_ENDPOINT}?resource=…&api-version=2019-08-01[&client_id=…]` with the header
//!   `X-IDENTITY-HEADER: {IDENTITY_HEADER}`. Answers 200 with
//!   `{access_token, expires_on, resource, token_type, client_id}`, `expires_on` being a *string* of epoch
//!   seconds. Source: App Service docs "Managed identities", REST endpoint reference (the fixture
//!   `managed-identity-token-response.json` is its example response).
//! - A user-assigned identity is chosen with `client_id`; without it the system-assigned identity is
//!   used. An identity the app does not have answers 400
//!   `{"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":…}`
//!   (the body as captured from App Service in public issue reports).
//! - A missing or wrong `X-IDENTITY-HEADER` answers 401 in the same envelope. The status comes from a
//!   public report (azure-sdk-for-js#11595: the `x-identity-header` protocol answers 401 where the older
//!   `secret` protocol answered 400); the message text is the emulator's own, no capture of it was found.
//! - A missing `resource` or an `api-version` other than `2019-08-01` answers 400 in that envelope
//!   (messages are the emulator's own).
//! - Tokens are JWT-shaped (`header.payload.signature`, base64url) with `aud`, `appid`, `oid`, `tid`,
//!   `exp`; the signature is random bytes: nothing verifies it except this emulator's registry.
//!
//! # What it leaves out
//!
//! `principal_id`/`object_id`/`mi_res_id` selectors (only `client_id`), the older `2017-09-01` protocol
//! with the `secret` header, IMDS, and any latency. Tests drive token lifetime and expiry through
//! [`IdentityEmulator::set_token_lifetime`] and [`IdentityEmulator::expire_tokens`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::serve::{Server, lock, random_uuid};

/// The API version App Service's endpoint speaks (the only one this emulator accepts).
pub const API_VERSION: &str = "2019-08-01";
/// The path App Service uses; `IDENTITY_ENDPOINT` is `http://127.0.0.1:{port}/msi/token`.
pub const TOKEN_PATH: &str = "/msi/token";
/// The header value [`IdentityConfig::default`] expects, i.e. what the platform would put in `IDENTITY_HEADER`.
pub const DEFAULT_IDENTITY_HEADER: &str = "6c1f8a0e-2b9d-4f57-9a43-0d8e5b7c2f14";
/// The tenant every identity belongs to.
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// One managed identity: its application (client) id and its service principal's object id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentity {
    pub client_id: String,
    pub object_id: String,
}

impl ManagedIdentity {
    pub fn new(client_id: &str, object_id: &str) -> ManagedIdentity {
        ManagedIdentity { client_id: client_id.into(), object_id: object_id.into() }
    }
}

/// The identities the emulated app has, and how the endpoint behaves.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The `X-IDENTITY-HEADER` value the endpoint requires.
    pub header: String,
    pub system_assigned: Option<ManagedIdentity>,
    pub user_assigned: Vec<ManagedIdentity>,
    /// How long issued tokens live. App Service tokens live about a day; the Azure SDK renews a token
    /// when it has less than five minutes left, so a lifetime under that makes it ask for a new token
    /// on every request.
    pub token_lifetime: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            header: DEFAULT_IDENTITY_HEADER.into(),
            system_assigned: Some(ManagedIdentity::new(
                "0d9c7e6b-1f4a-4c3e-8b2d-5a6f7e8d9c01",
                "5b8e2c1d-7a3f-4e9b-a6c2-1d4f8e7b3a90",
            )),
            user_assigned: vec![ManagedIdentity::new(
                "a3e1c5d7-9b2f-4a6e-8c1d-3f5b7e9a2c4d",
                "e7c9a1b3-5d2f-4e8a-9c6b-0a2d4f6e8b1c",
            )],
            token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// A token the endpoint issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The `resource` it was issued for (its audience).
    pub resource: String,
    pub client_id: String,
    pub object_id: String,
    pub tenant_id: String,
    pub expires_at: SystemTime,
}

/// What a resource server learns from checking a bearer token.
#[derive(Clone, Debug)]
pub enum TokenCheck {
    Valid(IssuedToken),
    Expired(IssuedToken),
    /// Issued for another resource.
    WrongAudience(IssuedToken),
    /// Not issued by this endpoint.
    Unknown,
}

/// Every token the identity endpoint issued, shared with the resource servers that check them.
#[derive(Clone, Default)]
pub struct TokenRegistry(Arc<Mutex<HashMap<String, IssuedToken>>>);

impl TokenRegistry {
    /// Check `token` for use at a resource whose audience is `audience` (a trailing `/` is ignored, as
    /// Entra ID treats `https://vault.azure.net` and `https://vault.azure.net/` alike).
    pub fn check(&self, token: &str, audience: &str) -> TokenCheck {
        let Some(issued) = lock(&self.0).get(token).cloned() else {
            return TokenCheck::Unknown;
        };
        if issued.resource.trim_end_matches('/') != audience.trim_end_matches('/') {
            TokenCheck::WrongAudience(issued)
        } else if issued.expires_at <= SystemTime::now() {
            TokenCheck::Expired(issued)
        } else {
            TokenCheck::Valid(issued)
        }
    }

    /// The raw tokens issued so far, for asserting that none of them leaks into an error or a log.
    pub fn all(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }

    /// Record a token issued for `issued.resource`; the Entra emulator's token endpoint (`entra.rs`) issues
    /// into the same registry, so resource servers accept app tokens as they accept managed identity ones.
    pub fn insert(&self, token: String, issued: IssuedToken) {
        super::serve::capture::secret("access token (identity or entra emulator)", &token);
        lock(&self.0).insert(token, issued);
    }

    fn expire_all(&self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for issued in lock(&self.0).values_mut() {
            issued.expires_at = past;
        }
    }
}

/// One request the endpoint answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub resource: Option<String>,
    pub api_version: Option<String>,
    pub client_id: Option<String>,
    /// Whether `X-IDENTITY-HEADER` was present and right.
    pub header_ok: bool,
    pub status: u16,
}

struct Endpoint {
    config: IdentityConfig,
    requests: Vec<TokenRequest>,
    tokens: TokenRegistry,
}

type Shared = Arc<Mutex<Endpoint>>;

/// The running endpoint. Dropping it stops the server.
pub struct IdentityEmulator {
    addr: SocketAddr,
    shared: Shared,
    tokens: TokenRegistry,
    _server: Server,
}

impl IdentityEmulator {
    /// Start on a fresh port of `127.0.0.1`.
    pub fn start(config: IdentityConfig) -> IdentityEmulator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the identity endpoint");
        IdentityEmulator::start_on(listener, config)
    }

    /// Start on a listener bound beforehand, so `IDENTITY_ENDPOINT` can be known (and set) before any
    /// thread starts.
    pub fn start_on(listener: std::net::TcpListener, config: IdentityConfig) -> IdentityEmulator {
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let tokens = TokenRegistry::default();
        super::serve::capture::secret("identity header", &config.header);
        let shared = Arc::new(Mutex::new(Endpoint { config, requests: Vec::new(), tokens: tokens.clone() }));
        let app = Router::new().route(TOKEN_PATH, axum::routing::any(token)).with_state(shared.clone());
        let server = Server::http(&format!("identity-endpoint-{}", addr.port()), listener, app);
        IdentityEmulator { addr, shared, tokens, _server: server }
    }

    /// The value for `IDENTITY_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    /// The registry a resource server checks bearer tokens against.
    pub fn tokens(&self) -> TokenRegistry {
        self.tokens.clone()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Tokens issued from now on live this long.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().config.token_lifetime = lifetime;
    }

    /// Every token issued so far expires now (resource servers refuse them from now on), as if the
    /// clock had passed their `expires_on`. The client does not know: it still holds them as valid.
    pub fn expire_tokens(&self) {
        self.tokens.expire_all();
    }

    fn lock(&self) -> MutexGuard<'_, Endpoint> {
        lock(&self.shared)
    }
}

async fn token(
    State(shared): State<Shared>,
    method: axum::http::Method,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut endpoint = lock(&shared);
    let header_ok = headers
        .get("x-identity-header")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == endpoint.config.header);
    let (status, body) = if method != axum::http::Method::GET {
        failure(StatusCode::METHOD_NOT_ALLOWED, "The requested method is not supported.")
    } else if !header_ok {
        failure(StatusCode::UNAUTHORIZED, "The X-IDENTITY-HEADER header is missing or does not match.")
    } else if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        failure(StatusCode::BAD_REQUEST, "The api-version parameter is missing or not supported; use 2019-08-01.")
    } else if query.get("resource").is_none_or(|resource| resource.is_empty()) {
        failure(StatusCode::BAD_REQUEST, "The resource parameter is required.")
    } else {
        let identity = match query.get("client_id") {
            Some(client_id) => {
                endpoint.config.user_assigned.iter().find(|id| id.client_id.eq_ignore_ascii_case(client_id)).cloned()
            }
            None => endpoint.config.system_assigned.clone(),
        };
        match identity {
            None => failure(StatusCode::BAD_REQUEST, "Unable to load the proper Managed Identity."),
            Some(identity) => {
                let resource = query.get("resource").cloned().unwrap_or_default();
                let expires_at = SystemTime::now() + endpoint.config.token_lifetime;
                let expires_on = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let token = jwt_shaped(&resource, &identity, expires_on);
                endpoint.tokens.insert(
                    token.clone(),
                    IssuedToken {
                        resource: resource.clone(),
                        client_id: identity.client_id.clone(),
                        object_id: identity.object_id.clone(),
                        tenant_id: TENANT_ID.into(),
                        expires_at,
                    },
                );
                let body = json!({
                    "access_token": token,
                    "expires_on": expires_on.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                    "client_id": identity.client_id,
                });
                (StatusCode::OK, body)
            }
        }
    };
    endpoint.requests.push(TokenRequest {
        resource: query.get("resource").cloned(),
        api_version: query.get("api-version").cloned(),
        client_id: query.get("client_id").cloned(),
        header_ok,
        status: status.as_u16(),
    });
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

/// App Service's error envelope.
fn failure(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (status, json!({ "statusCode": status.as_u16(), "message": message, "correlationId": random_uuid() }))
}

fn jwt_shaped(resource: &str, identity: &ManagedIdentity, expires_on: u64) -> String {
    let encode = |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let header = encode(&json!({ "typ": "JWT", "alg": "RS256", "kid": "itsmc-identity-emulator" }));
    let payload = encode(&json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "appid": identity.client_id,
        "oid": identity.object_id,
        "tid": TENANT_ID,
        "exp": expires_on,
        "uti": random_uuid(),
    }));
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    format!("{header}.{payload}.{signature}")
}

/// A managed identity as a credential object, for tests that build a client themselves rather than through
/// the process environment: asks the identity emulator over HTTP, as App Service's endpoint is asked.
#[derive(Debug)]
pub struct EndpointCredential {
    pub endpoint: String,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for EndpointCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let resource = scopes[0].trim_end_matches("/.default");
        let answer: Value = reqwest::Client::new()
            .get(&self.endpoint)
            .query(&[("resource", resource), ("api-version", "2019-08-01")])
            .header("X-IDENTITY-HEADER", DEFAULT_IDENTITY_HEADER)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Credential, e))?
            .json()
            .await
            .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Credential, e))?;
        let token = answer["access_token"].as_str().unwrap_or_default().to_string();
        Ok(azure_core::credentials::AccessToken::new(
            token,
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}
