//! A Microsoft Entra ID tenant in a box, for the Secure Webhook validator (`itsmc::server::entra`) and for
//! `azure_identity`'s `ClientSecretCredential` (`itsmc::secrets::credential` with `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`): an axum server on `127.0.0.1` that serves a tenant's
//! OpenID configuration and signing keys as Entra does, mints the access tokens Entra gives the "Azure
//! Monitor action group" app (client-credentials grant) for our app registration, and answers the
//! client credentials grant at its token endpoint for app registrations a test adds. The production
//! clients run unchanged against it; only the authority differs: `http://127.0.0.1:PORT/` from
//! [`EntraEmulator::start`], `https://127.0.0.1:PORT/` from [`EntraEmulator::start_tls`] (the SDK takes
//! only an https `AZURE_AUTHORITY_HOST`; the certificate comes from `tls.rs`'s test CA).
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
//! - **Tokens** minted for the action group app (not served), the claim sets of an app-only access
//!   token for the action group app `461e8683-5575-4561-ac7f-899cc907d62a`. v1: `aud` (the client id
//!   or the Application ID URI the caller asked for), `iss` `https://sts.windows.net/{tid}/`, `iat`,
//!   `nbf`, `exp`, `aio`, `appid`, `appidacr`, `idp`, `oid`, `rh`, `roles` (only when the app role is
//!   assigned), `sub`, `tid`, `uti`, `ver` `1.0`, header `{typ, alg: RS256, x5t, kid}`. v2: `aud` the
//!   client id, `iss` `{authority}{tid}/v2.0`, `azp`/`azpacr` instead of `appid`/`appidacr`, no `idp`,
//!   `ver` `2.0`, header `{typ, alg: RS256, kid}`. Lifetime 60 to 90 minutes. Source: "Access token
//!   claims reference" (which claims exist in which version, `x5t` only in v1), Azure Monitor's
//!   "Action groups" page (Secure Webhook PowerShell script: the app id and the role
//!   `ActionGroupsSecureWebhook`).
//! - **Token endpoint**, `POST /{tenant}/oauth2/v2.0/token`, client credentials grant with a shared secret:
//!   a form-encoded body (`application/x-www-form-urlencoded`) of `client_id`, `client_secret`, `scope`,
//!   `grant_type=client_credentials`; `scope` must be one resource's `{resource}/.default`. Success is 200
//!   `{token_type: "Bearer", expires_in, ext_expires_in, access_token}` (numbers of seconds, 60 to 90
//!   minutes, `Cache-Control: no-store`). Source: Microsoft identity platform docs "Microsoft identity
//!   platform and the OAuth 2.0 client credentials flow" (v2-oauth2-client-creds-grant-flow: "First case:
//!   Access token request with a shared secret", "Successful response"), RFC 6749 §4.4 and §5.1.
//! - **Tokens it issues** are v1 app-only access tokens signed with the current signing key: `aud` the
//!   resource (the scope without `/.default`), `appid` the client id, `appidacr` `1` (a client secret),
//!   `oid`/`sub` the app's service principal, `tid`, `iss` `https://sts.windows.net/{tid}/`, no `roles`.
//!   Each is recorded in the [`TokenRegistry`] the emulator was started with, for that resource, so the
//!   Key Vault and Logs Ingestion emulators accept it. Source: "Access token claims reference" (`appidacr`
//!   1 = client secret; v1 `aud` is the resource's App ID URI, as Key Vault, Storage and Monitor tokens are).
//! - **Token errors** as JSON `{error, error_description, error_codes, timestamp, trace_id,
//!   correlation_id, error_uri}`, the description `AADSTS{code}: {message}` followed by `\r\nTrace ID: …
//!   \r\nCorrelation ID: …\r\nTimestamp: yyyy-mm-dd hh:mm:ssZ`. Source: the client credentials page's
//!   "Error response" and the sample error of "Microsoft Entra authentication and authorization error
//!   codes" (reference-error-codes), `error_uri` `…/error?code=N` as in azure_identity's own test
//!   fixture. Codes and texts, as quoted in public issue reports and the error code reference:
//!   401 `invalid_client` AADSTS7000215 (wrong secret), AADSTS7000222 (expired secret), AADSTS7000218 (no
//!   secret) — 401 per RFC 6749 §5.2 for a failed client authentication; 400 `unauthorized_client`
//!   AADSTS700016 (no such app in the tenant); 400 `invalid_request` AADSTS90002 (tenant not found),
//!   AADSTS900144 (a required parameter missing; also what a body that is not form-encoded gets),
//!   AADSTS900561 (not a POST); 400 `invalid_scope` AADSTS1002012 (a scope without `/.default`) and
//!   AADSTS70011 (more than one scope or an empty resource); 400 `unsupported_grant_type` AADSTS70003
//!   (its message is the emulator's own). The order in which the checks run is the emulator's own.
//! - **Faults**: every request can answer 500 (Entra's `server_error` body) or wait first.
//! - **Key rotation**: keys can be published, withdrawn and chosen for signing at any time.
//!
//! # What it leaves out
//!
//! Every other grant (authorization code, certificates and federated assertions, on-behalf-of, refresh),
//! `client_secret_basic` (credentials in an `Authorization` header), the v1 token endpoint
//! (`/oauth2/token` with `resource`), `common`/`organizations` at the token endpoint (they answer
//! AADSTS90002 here), application permissions (`roles` in app tokens) and consent, sign-in, national
//! clouds' v1 issuers, per-application signing keys (`?appid=` on the configuration URL, for apps with
//! claims mapping), `common`/`organizations` documents, caching headers, and the optional claims
//! (`idtyp`, `xms_*`).
//!
//! The keys are the test-only keys under `tests/support/keys/` (see the README there).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};

use super::identity::{IssuedToken, TokenRegistry};
use super::serve::{Server, lock, random_uuid};
use super::tls::{TestCa, TlsServer};

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
/// The tenant's display name, as AADSTS700016 names the directory.
pub const TENANT_NAME: &str = "Contoso";
/// The grant the token endpoint implements.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";

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
        super::serve::capture::secret("entra-signed token", &format!("{signed}.{signature}"));
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

/// An app registration of the tenant, with the client secrets it may use at the token endpoint.
#[derive(Clone, Debug)]
pub struct AppRegistration {
    /// The Application (client) ID.
    pub client_id: String,
    /// Its service principal's object id in the tenant (`oid` and `sub` of its tokens).
    pub object_id: String,
    secrets: Vec<ClientSecret>,
}

#[derive(Clone)]
struct ClientSecret {
    value: String,
    expired: bool,
}

/// Never shows the value.
impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret").field("expired", &self.expired).finish_non_exhaustive()
    }
}

/// One request the token endpoint answered. The client secret is not recorded, only whether one came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    /// The tenant as the path named it.
    pub tenant: String,
    pub content_type: Option<String>,
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub client_secret_sent: bool,
    pub status: u16,
    /// The AADSTS code of a refusal.
    pub error_code: Option<u32>,
}

/// A running emulated tenant. It serves until dropped.
pub struct EntraEmulator {
    addr: SocketAddr,
    tenant: Arc<Mutex<Tenant>>,
    server: Serving,
}

/// Plain HTTP (the validator's tests) or TLS (the SDK's credentials).
enum Serving {
    Http(Server),
    /// Taken out and dropped (which stops it) by [`EntraEmulator::shutdown`].
    Tls(Mutex<Option<TlsServer>>),
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
    apps: Vec<AppRegistration>,
    /// Where issued tokens are recorded for the resource servers.
    tokens: TokenRegistry,
    token_requests: Vec<TokenRequest>,
}

impl EntraEmulator {
    /// Binds `127.0.0.1:0` and serves tenant [`TENANT_ID`] with key A published and signing, over plain
    /// HTTP. Tokens from its token endpoint go to a registry of its own ([`Self::tokens`]).
    ///
    /// The server runs on its own thread and runtime, so it keeps answering whatever the test's
    /// runtime does.
    pub fn start() -> EntraEmulator {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("entra emulator: bind 127.0.0.1:0");
        EntraEmulator::launch(listener, "http", TokenRegistry::default(), |listener, app| {
            Serving::Http(Server::http("entra-emulator", listener, app))
        })
    }

    /// Like [`Self::start`], but over TLS with a certificate from `ca` (valid for `127.0.0.1`), as
    /// `AZURE_AUTHORITY_HOST` must be https; tokens from the token endpoint are recorded in `tokens` (the
    /// registry the Key Vault and Logs Ingestion emulators check, e.g. an `IdentityEmulator`'s).
    pub fn start_tls(ca: &TestCa, tokens: TokenRegistry) -> EntraEmulator {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("entra emulator: bind 127.0.0.1:0");
        EntraEmulator::start_tls_on(listener, ca, tokens)
    }

    /// [`Self::start_tls`] on a listener bound beforehand, so `AZURE_AUTHORITY_HOST` can be known (and set)
    /// before any thread starts.
    pub fn start_tls_on(listener: std::net::TcpListener, ca: &TestCa, tokens: TokenRegistry) -> EntraEmulator {
        let config = ca.server_config(&[]);
        EntraEmulator::launch(listener, "https", tokens, move |listener, app| {
            Serving::Tls(Mutex::new(Some(super::tls::serve(listener, config, app))))
        })
    }

    fn launch(
        listener: std::net::TcpListener,
        scheme: &str,
        tokens: TokenRegistry,
        serve: impl FnOnce(std::net::TcpListener, Router) -> Serving,
    ) -> EntraEmulator {
        listener.set_nonblocking(true).expect("entra emulator: set_nonblocking");
        let addr = listener.local_addr().expect("entra emulator: local_addr");
        let key = TestKey::a();
        let tenant = Arc::new(Mutex::new(Tenant {
            authority: format!("{scheme}://{addr}/"),
            published: vec![key.clone()],
            signing: key,
            failing: false,
            latency: Duration::ZERO,
            config_fetches: 0,
            jwks_fetches: 0,
            requests: Vec::new(),
            apps: Vec::new(),
            tokens,
            token_requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&tenant));
        let server = serve(listener, app);
        EntraEmulator { addr, tenant, server }
    }

    /// `http://127.0.0.1:PORT/` (`https://` when started with TLS), the authority to give the validator.
    pub fn authority(&self) -> String {
        self.lock().authority.clone()
    }

    /// The value for `AZURE_AUTHORITY_HOST`: the authority without its trailing `/`.
    pub fn authority_host(&self) -> String {
        self.authority().trim_end_matches('/').to_owned()
    }

    /// `{authority}{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}{tenant}/oauth2/v2.0/token", self.authority())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The v2 issuer, `{authority}{tid}/v2.0`.
    pub fn v2_issuer(&self) -> String {
        format!("{}{TENANT_ID}/v2.0", self.authority())
    }

    /// Stops serving and closes the port. Idempotent; dropping the emulator does the same.
    pub fn shutdown(&self) {
        match &self.server {
            Serving::Http(server) => server.shutdown(),
            Serving::Tls(server) => drop(lock(server).take()),
        }
    }

    /// Registers an app with a client secret (or adds the secret to an app already registered, as a
    /// second secret during rotation). Returns its service principal's object id.
    pub fn register_app(&self, client_id: &str, secret: &str) -> String {
        super::serve::capture::secret("entra client secret", secret);
        let mut tenant = self.lock();
        let secret = ClientSecret { value: secret.to_owned(), expired: false };
        if let Some(app) = tenant.apps.iter_mut().find(|app| app.client_id.eq_ignore_ascii_case(client_id)) {
            app.secrets.push(secret);
            return app.object_id.clone();
        }
        let object_id = random_uuid();
        tenant.apps.push(AppRegistration {
            client_id: client_id.to_owned(),
            object_id: object_id.clone(),
            secrets: vec![secret],
        });
        object_id
    }

    /// The app registration with this client id, if any.
    pub fn app(&self, client_id: &str) -> Option<AppRegistration> {
        self.lock().apps.iter().find(|app| app.client_id.eq_ignore_ascii_case(client_id)).cloned()
    }

    /// The secret passes its end date: the token endpoint answers AADSTS7000222 for it from now on.
    pub fn expire_secret(&self, client_id: &str, secret: &str) {
        let mut tenant = self.lock();
        for app in tenant.apps.iter_mut().filter(|app| app.client_id.eq_ignore_ascii_case(client_id)) {
            app.secrets.iter_mut().filter(|s| s.value == secret).for_each(|s| s.expired = true);
        }
    }

    /// Deletes the app registration (its secrets with it).
    pub fn remove_app(&self, client_id: &str) {
        self.lock().apps.retain(|app| !app.client_id.eq_ignore_ascii_case(client_id));
    }

    /// The registry tokens from the token endpoint are recorded in.
    pub fn tokens(&self) -> TokenRegistry {
        self.lock().tokens.clone()
    }

    /// Every request the token endpoint answered, oldest first (not those [`Self::set_failing`] refused).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().token_requests.clone()
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

enum Route {
    Config { v2: bool },
    Keys { v2: bool },
    Token,
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
        "oauth2/v2.0/token" => Route::Token,
        _ => Route::Unknown,
    };
    (Some(tenant), route)
}

async fn handle(State(tenant): State<Arc<Mutex<Tenant>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let latency = {
        let mut t = lock(&tenant);
        t.requests.push(format!("{} {path}", parts.method));
        match route(&path).1 {
            Route::Config { .. } => t.config_fetches += 1,
            Route::Keys { .. } => t.jwks_fetches += 1,
            Route::Token | Route::Unknown => {}
        }
        t.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let mut t = lock(&tenant);
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
        (Route::Token, _) => token(&mut t, name.unwrap_or_default(), known, &parts.method, &parts.headers, &body),
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

/// A refusal of the token endpoint: status, OAuth `error`, AADSTS code, message.
struct Refusal(StatusCode, &'static str, u32, String);

impl Refusal {
    fn bad_request(error: &'static str, code: u32, message: String) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, error, code, message)
    }

    fn invalid_client(code: u32, message: String) -> Refusal {
        Refusal(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    }

    fn missing(parameter: &str) -> Refusal {
        let message = format!("The request body must contain the following parameter: '{parameter}'.");
        Refusal::bad_request("invalid_request", 900144, message)
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`: the client credentials grant with a shared secret.
fn token(
    t: &mut Tenant,
    tenant_name: &str,
    known: bool,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let form_encoded = content_type.as_deref().is_some_and(|c| {
        c.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    // Entra reads parameters from a form body only: a JSON body has no `grant_type` as far as it is concerned.
    let form: HashMap<String, String> =
        if form_encoded { url::form_urlencoded::parse(body).into_owned().collect() } else { HashMap::new() };
    let parameter = |name: &str| form.get(name).filter(|value| !value.is_empty()).cloned();
    let mut record = TokenRequest {
        method: method.to_string(),
        tenant: tenant_name.to_owned(),
        content_type,
        grant_type: parameter("grant_type"),
        client_id: parameter("client_id"),
        scope: parameter("scope"),
        client_secret_sent: parameter("client_secret").is_some(),
        status: 200,
        error_code: None,
    };
    let outcome = grant(t, tenant_name, known, method, &record, form.get("client_secret").map(String::as_str));
    let response = match outcome {
        Ok(body) => {
            let mut response = reply(StatusCode::OK, body);
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(Refusal(status, error, code, message)) => {
            record.status = status.as_u16();
            record.error_code = Some(code);
            let trace_id = random_uuid();
            let correlation_id = random_uuid();
            let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
            reply(
                status,
                json!({
                    "error": error,
                    "error_description": format!(
                        "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\n\
                         Timestamp: {timestamp}"
                    ),
                    "error_codes": [code],
                    "timestamp": timestamp,
                    "trace_id": trace_id,
                    "correlation_id": correlation_id,
                    "error_uri": format!("{}error?code={code}", t.authority),
                }),
            )
        }
    };
    t.token_requests.push(record);
    response
}

/// The checks of the grant, and the token when they pass.
fn grant(
    t: &Tenant,
    tenant_name: &str,
    known: bool,
    method: &Method,
    request: &TokenRequest,
    secret: Option<&str>,
) -> Result<Value, Refusal> {
    if method != Method::POST {
        let message = format!("The endpoint only accepts POST requests. Received a {method} request.");
        return Err(Refusal::bad_request("invalid_request", 900561, message));
    }
    if !known {
        let message = format!(
            "Tenant '{tenant_name}' not found. Check to make sure you have the correct tenant ID and are signing \
             into the correct cloud. Check with your subscription administrator, this may happen if there are no \
             active subscriptions for the tenant."
        );
        return Err(Refusal::bad_request("invalid_request", 90002, message));
    }
    let grant_type = request.grant_type.as_deref().ok_or_else(|| Refusal::missing("grant_type"))?;
    if grant_type != CLIENT_CREDENTIALS {
        let message = format!("The app requested an unsupported grant type '{grant_type}'.");
        return Err(Refusal::bad_request("unsupported_grant_type", 70003, message));
    }
    let client_id = request.client_id.as_deref().ok_or_else(|| Refusal::missing("client_id"))?;
    let scope = request.scope.as_deref().ok_or_else(|| Refusal::missing("scope"))?;
    let Some(app) = t.apps.iter().find(|app| app.client_id.eq_ignore_ascii_case(client_id)) else {
        let message = format!(
            "Application with identifier '{client_id}' was not found in the directory '{TENANT_NAME}'. This can \
             happen if the application has not been installed by the administrator of the tenant or consented to by \
             any user in the tenant. You may have sent your authentication request to the wrong tenant."
        );
        return Err(Refusal::bad_request("unauthorized_client", 700016, message));
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|s| !s.ends_with("/.default")) {
        let message = format!(
            "The provided value for scope {bad} is not valid. Client credential flows must have a scope value \
             with /.default suffixed to the resource identifier (application ID URI)."
        );
        return Err(Refusal::bad_request("invalid_scope", 1002012, message));
    }
    let resource = scopes[0].strip_suffix("/.default").unwrap_or_default();
    if scopes.len() != 1 || resource.is_empty() {
        let message =
            format!("The provided value for the input parameter 'scope' isn't valid. The scope {scope} isn't valid.");
        return Err(Refusal::bad_request("invalid_scope", 70011, message));
    }
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        let message =
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into();
        return Err(Refusal::invalid_client(7000218, message));
    };
    match app.secrets.iter().find(|s| s.value == secret) {
        None => {
            let message = format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret \
                 value, not the client secret ID, for a secret added to app '{}'.",
                app.client_id
            );
            return Err(Refusal::invalid_client(7000215, message));
        }
        Some(s) if s.expired => {
            let message = format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys \
                 for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added \
                 security: https://aka.ms/certCreds.",
                app.client_id
            );
            return Err(Refusal::invalid_client(7000222, message));
        }
        Some(_) => {}
    }
    let lifetime = lifetime();
    let now = now();
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": opaque(48),
        "appid": app.client_id,
        "appidacr": "1",
        "idp": format!("https://sts.windows.net/{TENANT_ID}/"),
        "oid": app.object_id,
        "rh": format!("0.{}.", opaque(60)),
        "sub": app.object_id,
        "tid": TENANT_ID,
        "uti": opaque(22),
        "ver": "1.0",
    });
    let access_token = t.signing.sign(&header_for(&claims, &t.signing.kid), &claims);
    t.tokens.insert(
        access_token.clone(),
        IssuedToken {
            resource: resource.to_owned(),
            client_id: app.client_id.clone(),
            object_id: app.object_id.clone(),
            tenant_id: TENANT_ID.to_owned(),
            expires_at: SystemTime::now() + Duration::from_secs(lifetime.unsigned_abs()),
        },
    );
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    }))
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
