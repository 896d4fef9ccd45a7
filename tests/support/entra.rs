//! A Microsoft Entra ID tenant in a box, for the Secure Webhook validator (`itsmc::server::entra`):
//! an axum server on `127.0.0.1` that serves a tenant's OpenID configuration and signing keys as
//! Entra does, and mints the access tokens Entra gives the "Azure Monitor action group" app
//! (client-credentials grant) for our app registration. The production validator runs unchanged
//! against it; only the authority URL differs (`http://127.0.0.1:PORT/`).
//!
//! # What it emulates, and from which public material
//!
//! - **OpenID configuration**, `GET /{tenant}/v2.0/.well-known/openid-configuration` (and the v1
//!   `GET /{tenant}/.well-known/openid-configuration`), for the tenant's GUID or its domain: the
//!   document always names the GUID (`issuer` `{authority}{guid}/v2.0`, `jwks_uri`
//!   `{authority}{guid}/discovery/v2.0/keys`), as Entra's does. Another tenant gets 400 with
//!   AADSTS90002 ("Tenant not found"). Source: Microsoft identity platform docs "OpenID Connect on the
//!   Microsoft identity platform" (v2-protocols-oidc) and the OpenID Connect Discovery 1.0 metadata.
//! - **Keys**, `GET /{tenant}/discovery/v2.0/keys` and `GET /{tenant}/discovery/keys`:
//!   `{"keys":[{kty, use, kid, x5t, n, e, x5c, issuer}]}` (no `issuer` in the v1 document), `kid` =
//!   `x5t` = the base64url SHA-1 thumbprint of the key's self-signed certificate. Source: the key
//!   document as published at `login.microsoftonline.com/common/discovery/v2.0/keys` (quoted in public
//!   Q&A threads), the "Access token claims reference" (`kid`, `x5t`).
//! - **Tokens** (minted, not served: there is no token endpoint), the claim sets of an app-only access
//!   token for the action group app `461e8683-5575-4561-ac7f-899cc907d62a`. v1: `aud` (the client id
//!   or the Application ID URI the caller asked for), `iss` `https://sts.windows.net/{tid}/`, `iat`,
//!   `nbf`, `exp`, `aio`, `appid`, `appidacr`, `idp`, `oid`, `rh`, `roles` (only when the app role is
//!   assigned), `sub`, `tid`, `uti`, `ver` `1.0`, header `{typ, alg: RS256, x5t, kid}`. v2: `aud` the
//!   client id, `iss` `{authority}{tid}/v2.0`, `azp`/`azpacr` instead of `appid`/`appidacr`, no `idp`,
//!   `ver` `2.0`, header `{typ, alg: RS256, kid}`. Lifetime 60 to 90 minutes. Source: "Access token
//!   claims reference" (which claims exist in which version, `x5t` only in v1), Azure Monitor's
//!   "Action groups" page (Secure Webhook PowerShell script: the app id and the role
//!   `ActionGroupsSecureWebhook`).
//! - **Faults**: every request can answer 500 (Entra's `server_error` body) or wait first.
//! - **Key rotation**: keys can be published, withdrawn and chosen for signing at any time.
//!
//! # What it leaves out
//!
//! The token endpoint and every grant, sign-in, national clouds' v1 issuers, per-application signing
//! keys (`?appid=` on the configuration URL, for apps with claims mapping), `common`/`organizations`
//! documents, caching headers, and the optional claims (`idtyp`, `xms_*`).
//!
//! The keys are the test-only keys under `tests/support/keys/` (see the README there).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};

use super::serve::Server;

/// The emulated tenant (the GUID Microsoft's docs use in examples).
pub const TENANT_ID: &str = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490";
/// A domain of the tenant, usable wherever Entra takes a tenant.
pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";
/// Another tenant, for tokens that must be refused.
pub const OTHER_TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// "Azure Monitor action group", the first-party app that gets Secure Webhook tokens.
pub const ACTION_GROUP_APP_ID: &str = "461e8683-5575-4561-ac7f-899cc907d62a";
/// The action group app's service principal in the tenant (`oid`, `sub`).
pub const ACTION_GROUP_OBJECT_ID: &str = "2b7f6a0e-3c1d-4e8f-9a6b-5c4d3e2f1a0b";
/// Our app registration: its Application (client) ID...
pub const CLIENT_ID: &str = "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f";
/// ... and its Application ID URI.
pub const APP_ID_URI: &str = "api://itsmc-test";
pub const SECURE_WEBHOOK_ROLE: &str = "ActionGroupsSecureWebhook";

/// A test-only RSA key with its certificate, as the emulator publishes and signs with it.
#[derive(Clone)]
pub struct TestKey {
    /// The `kid` (and `x5t`) it is published and signed under.
    pub kid: String,
    /// PKCS#1 DER of the private key.
    der: Vec<u8>,
    /// base64url modulus and exponent.
    pub n: String,
    pub e: String,
    /// base64 (standard) DER certificate, for `x5c`.
    pub certificate: String,
}

fn pem_body(pem: &str) -> Vec<u8> {
    let base64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    STANDARD.decode(base64).expect("entra emulator: test key PEM is base64")
}

impl TestKey {
    fn load(key_pem: &str, cert_pem: &str, kid: &str) -> TestKey {
        let der = pem_body(key_pem);
        let jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_der(&der), Algorithm::RS256)
            .expect("entra emulator: test key is a PKCS#1 RSA key");
        let AlgorithmParameters::RSA(rsa) = jwk.algorithm else { panic!("entra emulator: test key is not RSA") };
        TestKey { kid: kid.to_owned(), der, n: rsa.n, e: rsa.e, certificate: STANDARD.encode(pem_body(cert_pem)) }
    }

    /// The emulator's first signing key.
    pub fn a() -> TestKey {
        TestKey::load(
            include_str!("keys/entra-test-key-a.pem"),
            include_str!("keys/entra-test-key-a.crt"),
            "7mXUqERH0V4hZHblr6j0xIMsDAs",
        )
    }

    /// A second key, for rotation.
    pub fn b() -> TestKey {
        TestKey::load(
            include_str!("keys/entra-test-key-b.pem"),
            include_str!("keys/entra-test-key-b.crt"),
            "u-7hVgh3WmGqUfIgL_4ER8GtslQ",
        )
    }

    /// A key the tenant never publishes: an attacker's.
    pub fn c() -> TestKey {
        TestKey::load(
            include_str!("keys/entra-test-key-c.pem"),
            include_str!("keys/entra-test-key-c.crt"),
            "gUzgq35plUeYLowTlhh-axlCFUY",
        )
    }

    /// The same key under another `kid`.
    pub fn with_kid(mut self, kid: &str) -> TestKey {
        self.kid = kid.to_owned();
        self
    }

    fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut key = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
            "x5c": [self.certificate],
        });
        if let Some(issuer) = issuer {
            key["issuer"] = json!(issuer);
        }
        key
    }

    /// Signs `header.payload` with RS256, as Entra does.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signed = format!("{}.{}", part(header), part(claims));
        let signature =
            jsonwebtoken::crypto::sign(signed.as_bytes(), &EncodingKey::from_rsa_der(&self.der), Algorithm::RS256)
                .expect("entra emulator: RS256 signing");
        format!("{signed}.{signature}")
    }
}

fn part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The header Entra puts on a token of this claim set: `x5t` only in v1 tokens.
pub fn header_for(claims: &Value, kid: &str) -> Value {
    if claims["ver"] == "1.0" {
        json!({ "typ": "JWT", "alg": "RS256", "x5t": kid, "kid": kid })
    } else {
        json!({ "typ": "JWT", "alg": "RS256", "kid": kid })
    }
}

/// A token with `alg: none` and no signature.
pub fn unsigned_token(claims: &Value, kid: &str) -> String {
    format!("{}.{}.", part(&json!({ "typ": "JWT", "alg": "none", "kid": kid })), part(claims))
}

/// A token "signed" with HS256 and `secret` (the classic attack uses the RSA public key as the secret).
pub fn hs256_token(claims: &Value, kid: &str, secret: &[u8]) -> String {
    let signed = format!("{}.{}", part(&json!({ "typ": "JWT", "alg": "HS256", "kid": kid })), part(claims));
    let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
        .expect("entra emulator: HS256 signing");
    format!("{signed}.{signature}")
}

/// A running emulated tenant. It serves until dropped.
pub struct EntraEmulator {
    addr: SocketAddr,
    tenant: Arc<Mutex<Tenant>>,
    server: Server,
}

struct Tenant {
    authority: String,
    published: Vec<TestKey>,
    signing: TestKey,
    failing: bool,
    latency: Duration,
    config_fetches: usize,
    jwks_fetches: usize,
    requests: Vec<String>,
}

impl EntraEmulator {
    /// Binds `127.0.0.1:0` and serves tenant [`TENANT_ID`] with key A published and signing.
    ///
    /// The server runs on its own thread and runtime, so it keeps answering whatever the test's
    /// runtime does.
    pub fn start() -> EntraEmulator {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("entra emulator: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("entra emulator: set_nonblocking");
        let addr = listener.local_addr().expect("entra emulator: local_addr");
        let key = TestKey::a();
        let tenant = Arc::new(Mutex::new(Tenant {
            authority: format!("http://{addr}/"),
            published: vec![key.clone()],
            signing: key,
            failing: false,
            latency: Duration::ZERO,
            config_fetches: 0,
            jwks_fetches: 0,
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&tenant));
        let server = Server::http("entra-emulator", listener, app);
        EntraEmulator { addr, tenant, server }
    }

    /// `http://127.0.0.1:PORT/`, the authority to give the validator.
    pub fn authority(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The v2 issuer, `{authority}{tid}/v2.0`.
    pub fn v2_issuer(&self) -> String {
        format!("{}{TENANT_ID}/v2.0", self.authority())
    }

    /// Stops serving and closes the port. Idempotent; dropping the emulator does the same.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// Adds a key to the published key document (replacing one with the same `kid`).
    pub fn publish(&self, key: TestKey) {
        let mut tenant = self.lock();
        tenant.published.retain(|k| k.kid != key.kid);
        tenant.published.push(key);
    }

    /// Removes the key with this `kid` from the key document.
    pub fn withdraw(&self, kid: &str) {
        self.lock().published.retain(|k| k.kid != kid);
    }

    /// Signs new tokens with `key` (published or not).
    pub fn sign_with(&self, key: TestKey) {
        self.lock().signing = key;
    }

    /// Key rotation as Entra does it: publish the new key, then sign with it.
    pub fn rotate_to(&self, key: TestKey) {
        self.publish(key.clone());
        self.sign_with(key);
    }

    /// While failing, every request answers 500.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Delay before every answer from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// How many key documents were asked for (answered or not).
    pub fn jwks_fetches(&self) -> usize {
        self.lock().jwks_fetches
    }

    /// How many OpenID configuration documents were asked for (answered or not).
    pub fn config_fetches(&self) -> usize {
        self.lock().config_fetches
    }

    /// `METHOD path` of every request so far, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The claims of a v1 access token for the action group app, for `audience` (the client id or
    /// the Application ID URI, whichever the action group asked for), with the app role assigned.
    pub fn v1_claims(&self, audience: &str) -> Value {
        let now = now();
        json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime(),
            "aio": opaque(48),
            "appid": ACTION_GROUP_APP_ID,
            "appidacr": "2",
            "idp": format!("https://sts.windows.net/{TENANT_ID}/"),
            "oid": ACTION_GROUP_OBJECT_ID,
            "rh": format!("0.{}.", opaque(60)),
            "roles": [SECURE_WEBHOOK_ROLE],
            "sub": ACTION_GROUP_OBJECT_ID,
            "tid": TENANT_ID,
            "uti": opaque(22),
            "ver": "1.0",
        })
    }

    /// The claims of a v2 access token for the action group app (the audience is always the client
    /// id in v2), with the app role assigned.
    pub fn v2_claims(&self) -> Value {
        let now = now();
        json!({
            "aud": CLIENT_ID,
            "iss": self.v2_issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime(),
            "aio": opaque(48),
            "azp": ACTION_GROUP_APP_ID,
            "azpacr": "2",
            "oid": ACTION_GROUP_OBJECT_ID,
            "rh": format!("1.{}.", opaque(60)),
            "roles": [SECURE_WEBHOOK_ROLE],
            "sub": ACTION_GROUP_OBJECT_ID,
            "tid": TENANT_ID,
            "uti": opaque(22),
            "ver": "2.0",
        })
    }

    /// Signs `claims` with the current signing key, under its `kid`, with Entra's header.
    pub fn sign(&self, claims: &Value) -> String {
        let key = self.lock().signing.clone();
        key.sign(&header_for(claims, &key.kid), claims)
    }

    /// A v1 token for `audience`, as the action group would send it.
    pub fn mint_v1(&self, audience: &str) -> String {
        self.sign(&self.v1_claims(audience))
    }

    /// A v2 token, as the action group would send it.
    pub fn mint_v2(&self) -> String {
        self.sign(&self.v2_claims())
    }

    fn lock(&self) -> MutexGuard<'_, Tenant> {
        lock(&self.tenant)
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Entra gives app tokens a lifetime between 60 and 90 minutes.
fn lifetime() -> i64 {
    3600 + rand::random_range(0..1800)
}

/// A random base64url string standing for Entra's opaque claims (`aio`, `rh`, `uti`).
fn opaque(length: usize) -> String {
    let bytes: Vec<u8> = (0..length).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes).chars().take(length).collect()
}

/// A poisoned lock only means a test thread panicked mid-call; the server must keep answering.
fn lock(tenant: &Mutex<Tenant>) -> MutexGuard<'_, Tenant> {
    tenant.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Route {
    Config { v2: bool },
    Keys { v2: bool },
    Unknown,
}

fn route(path: &str) -> (Option<&str>, Route) {
    let Some(rest) = path.strip_prefix('/') else { return (None, Route::Unknown) };
    let Some((tenant, rest)) = rest.split_once('/') else { return (None, Route::Unknown) };
    let route = match rest {
        "v2.0/.well-known/openid-configuration" => Route::Config { v2: true },
        ".well-known/openid-configuration" => Route::Config { v2: false },
        "discovery/v2.0/keys" => Route::Keys { v2: true },
        "discovery/keys" => Route::Keys { v2: false },
        _ => Route::Unknown,
    };
    (Some(tenant), route)
}

async fn handle(State(tenant): State<Arc<Mutex<Tenant>>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let latency = {
        let mut t = lock(&tenant);
        t.requests.push(format!("{} {path}", request.method()));
        match route(&path).1 {
            Route::Config { .. } => t.config_fetches += 1,
            Route::Keys { .. } => t.jwks_fetches += 1,
            Route::Unknown => {}
        }
        t.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let t = lock(&tenant);
    if t.failing {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "error": "server_error",
                "error_description": "AADSTS90033: A transient error has occurred. Please try again.",
                "error_codes": [90033],
            }),
        );
    }
    let (name, route) = route(&path);
    let known = name.is_some_and(|n| n.eq_ignore_ascii_case(TENANT_ID) || n.eq_ignore_ascii_case(TENANT_DOMAIN));
    match (route, known) {
        (Route::Unknown, _) => reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
        (_, false) => reply(
            StatusCode::BAD_REQUEST,
            json!({
                "error": "invalid_tenant",
                "error_description": format!(
                    "AADSTS90002: Tenant '{}' not found. Check to make sure you have the correct tenant ID and are \
                     signing into the correct cloud.",
                    name.unwrap_or_default()
                ),
                "error_codes": [90002],
            }),
        ),
        (Route::Config { v2 }, true) => reply(StatusCode::OK, configuration(&t.authority, v2)),
        (Route::Keys { v2 }, true) => {
            let issuer = format!("{}{TENANT_ID}/v2.0", t.authority);
            let keys: Vec<Value> = t.published.iter().map(|k| k.jwk(v2.then_some(issuer.as_str()))).collect();
            reply(StatusCode::OK, json!({ "keys": keys }))
        }
    }
}

/// The tenant's OpenID configuration, always naming the tenant by GUID.
fn configuration(authority: &str, v2: bool) -> Value {
    let base = format!("{authority}{TENANT_ID}");
    if v2 {
        json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{base}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name",
                "tid", "ver", "at_hash", "c_hash", "email"
            ],
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        })
    } else {
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": format!("https://sts.windows.net/{TENANT_ID}/"),
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        })
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

/// Claims as a mutable map, for tests that change or drop one.
pub fn edit(claims: &Value, change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut map = claims.as_object().cloned().unwrap_or_default();
    change(&mut map);
    Value::Object(map)
}
