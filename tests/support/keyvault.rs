//! Azure Key Vault (secrets) in a box: an HTTPS server speaking the Key Vault data-plane protocol that
//! `azure_security_keyvault_secrets::SecretClient` uses, so the real SDK client runs unchanged against it.
//! Bearer tokens are checked against the tokens the managed identity emulator (`identity.rs`) issued.
//! Tests rotate secrets, read what was written, restrict access and count requests through
//! [`KeyVaultEmulator`].
//!
//! # Reaching it under a vault host name
//!
//! The SDK checks that the `resource` of Key Vault's authentication challenge matches the vault's host
//! (`https://vault.azure.net` requires a host ending in `.vault.azure.net`), and that check stays on in
//! itsmc. So the emulator is addressed as `https://itsmc-emulator.vault.azure.net:{port}/`: its
//! certificate (from `tls.rs`'s test CA) names that host, and [`KeyVaultEmulator::client`] gives a client
//! that resolves the name to `127.0.0.1`. [`KeyVaultEmulator::loopback_url`] is the same server under
//! `https://127.0.0.1:{port}/`, which the SDK refuses after the challenge, as it would refuse any vault
//! whose URL does not match its challenge.
//!
//! # What it emulates, and from which public material
//!
//! - **The challenge**: a request without `Authorization` answers 401 with
//!   `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/{tenant}",
//!   resource="https://vault.azure.net"` and the body `AKV10000: Request is missing a Bearer or PoP
//!   token.` (fixture `keyvault-401-challenge-recording.json`, recorded by the Azure SDK for JavaScript
//!   tests). A token that is expired answers 401 `[TokenExpired] Error validating token: 'S2S12086'.`
//!   (as captured in public reports); one issued for another audience `AKV10022: Invalid audience…`; one
//!   the identity emulator never issued gets an emulator-specific message. Every 401 carries the challenge.
//! - **`api-version`** is required: without it 400 `BadParameter` (message is the emulator's own).
//! - **Get Secret** `GET /secrets/{name}[/{version}]` (a trailing `/` means the latest version, which is
//!   what the Rust SDK sends): 200 with the secret bundle `{value, id, attributes{enabled, created,
//!   updated, recoveryLevel, recoverableDays}, contentType?, tags?}`. Source: REST reference "Get Secret"
//!   and fixture `keyvault-get-secret-example.json`.
//! - **Set Secret** `PUT /secrets/{name}` `{value, contentType?, tags?, attributes?}`: a new version (32
//!   hex digits) becomes the latest; answers the bundle. Names must match `^[0-9a-zA-Z-]+$` (1–127
//!   characters) and compare case-insensitively. Source: REST reference "Set Secret".
//! - **Errors** in Key Vault's envelope `{"error":{"code","message","innererror"?}}`: 404 `SecretNotFound`
//!   "A secret with (name/id) … was not found in this key vault. …"; 403 `Forbidden` with innererror
//!   `ForbiddenByRbac` ("Caller is not authorized to perform action on resource. … Action:
//!   'Microsoft.KeyVault/vaults/secrets/getSecret/action' …") or `AccessDenied` ("The user, group or
//!   application '…' does not have secrets get permission on key vault '…'"), depending on
//!   [`PermissionModel`]; 403 `Forbidden`/`SecretDisabled` "Operation get is not allowed on a disabled
//!   secret." Texts as they appear in public issue reports and SDK tests.
//!
//! # What it leaves out
//!
//! Listing, deleting, recovering, backup/restore, updating properties, expiry (`exp`/`nbf`) enforcement,
//! tags filters, certificates and keys, PoP tokens, throttling, and network rules. Access is per identity
//! (client id) for the whole vault, not per secret.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::identity::{TENANT_ID, TokenCheck, TokenRegistry};
use super::serve::lock;
use super::tls::{TestCa, TlsServer};

/// The emulated vault's name.
pub const VAULT_NAME: &str = "itsmc-emulator";
/// The host the emulator is addressed by (resolved to `127.0.0.1` by [`KeyVaultEmulator::client`]).
pub const VAULT_HOST: &str = "itsmc-emulator.vault.azure.net";
/// Key Vault's audience: the `resource` of its challenge, and what tokens must be issued for.
pub const AUDIENCE: &str = "https://vault.azure.net";
const LOCATION: &str = "westeurope";
const SUBSCRIPTION: &str = "3f2c9a71-5e4b-4d8a-b6c1-9e0f2a7d4b58";
const RESOURCE_GROUP: &str = "itsmc-rg";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// How the vault authorizes data-plane calls; it decides the shape of a 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermissionModel {
    /// Azure RBAC: roles such as Key Vault Secrets User (read) and Officer (read and write).
    Rbac,
    /// Vault access policies granting secret permissions such as `get` and `set`.
    AccessPolicy,
}

/// What an identity may do with secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub get: bool,
    pub set: bool,
}

impl Access {
    pub const NONE: Access = Access { get: false, set: false };
    pub const READ: Access = Access { get: true, set: false };
    pub const READ_WRITE: Access = Access { get: true, set: true };
}

/// How a request was authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No `Authorization` header: the challenge request.
    Anonymous,
    /// A valid token of the identity with this client id.
    Identity(String),
    /// A token the vault refused (expired, wrong audience, unknown, malformed).
    Refused,
}

/// One request the vault answered.
#[derive(Clone, Debug)]
pub struct VaultRequest {
    pub method: String,
    pub path: String,
    pub api_version: Option<String>,
    pub caller: Caller,
    pub status: u16,
}

#[derive(Clone)]
struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: Option<Value>,
    enabled: bool,
    created: u64,
}

struct StoredSecret {
    /// The name as first written (Key Vault keeps it; lookups ignore case).
    name: String,
    /// Oldest first; the last one is the current version.
    versions: Vec<Version>,
}

struct Vault {
    secrets: BTreeMap<String, StoredSecret>,
    model: PermissionModel,
    /// Per client id; identities not listed may do everything.
    access: HashMap<String, Access>,
    requests: Vec<VaultRequest>,
    tokens: TokenRegistry,
}

type Shared = Arc<Mutex<Vault>>;

/// The running vault. Dropping it stops the server.
pub struct KeyVaultEmulator {
    shared: Shared,
    server: TlsServer,
}

impl KeyVaultEmulator {
    /// Start on a fresh port of `127.0.0.1`, serving a certificate from `ca` and accepting the tokens in
    /// `tokens` (see [`super::identity::IdentityEmulator::tokens`]).
    pub fn start(ca: &TestCa, tokens: TokenRegistry) -> KeyVaultEmulator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the vault");
        let shared = Arc::new(Mutex::new(Vault {
            secrets: BTreeMap::new(),
            model: PermissionModel::Rbac,
            access: HashMap::new(),
            requests: Vec::new(),
            tokens,
        }));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = super::tls::serve(listener, ca.server_config(&[VAULT_HOST]), app);
        KeyVaultEmulator { shared, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The vault URL as itsmc would be configured with it: `https://itsmc-emulator.vault.azure.net:{port}/`.
    pub fn url(&self) -> String {
        format!("https://{VAULT_HOST}:{}/", self.addr().port())
    }

    /// The same server as `https://127.0.0.1:{port}/` (a URL whose host does not match the challenge).
    pub fn loopback_url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.addr().port())
    }

    /// A client that trusts `ca` and resolves [`VAULT_HOST`] to this emulator.
    pub fn client(&self, ca: &TestCa) -> reqwest::Client {
        ca.client_resolving(VAULT_HOST, self.addr())
    }

    /// Write a new version of a secret, as an operator rotating it would (`az keyvault secret set`).
    /// Returns the version id.
    pub fn put_secret(&self, name: &str, value: &str) -> String {
        self.lock().write(name, value.to_string(), None, None)
    }

    /// The current value of a secret.
    pub fn latest(&self, name: &str) -> Option<String> {
        let vault = self.lock();
        vault.secrets.get(&name.to_ascii_lowercase()).and_then(|s| s.versions.last()).map(|v| v.value.clone())
    }

    /// Version ids of a secret, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let vault = self.lock();
        vault
            .secrets
            .get(&name.to_ascii_lowercase())
            .map(|s| s.versions.iter().map(|v| v.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Enable or disable the current version of a secret. Returns `false` when there is no such secret.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> bool {
        let mut vault = self.lock();
        match vault.secrets.get_mut(&name.to_ascii_lowercase()).and_then(|s| s.versions.last_mut()) {
            Some(version) => {
                version.enabled = enabled;
                true
            }
            None => false,
        }
    }

    pub fn set_permission_model(&self, model: PermissionModel) {
        self.lock().model = model;
    }

    /// Restrict (or restore) what the identity with this client id may do.
    pub fn set_access(&self, client_id: &str, access: Access) {
        self.lock().access.insert(client_id.to_ascii_lowercase(), access);
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<VaultRequest> {
        self.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    fn lock(&self) -> MutexGuard<'_, Vault> {
        lock(&self.shared)
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Vault {
    fn write(&mut self, name: &str, value: String, content_type: Option<String>, tags: Option<Value>) -> String {
        super::serve::capture::secret("key vault secret value", &value);
        let id = hex::encode(rand::random::<[u8; 16]>());
        let version = Version { id: id.clone(), value, content_type, tags, enabled: true, created: now_secs() };
        self.secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| StoredSecret { name: name.to_string(), versions: Vec::new() })
            .versions
            .push(version);
        id
    }

    fn access_of(&self, client_id: &str) -> Access {
        self.access.get(&client_id.to_ascii_lowercase()).copied().unwrap_or(Access::READ_WRITE)
    }
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(VAULT_HOST).to_string();
    let api_version = parts.uri.query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "api-version").map(|(_, v)| v.into_owned())
    });
    let mut vault = lock(&shared);
    let (caller, reply) =
        answer(&mut vault, &parts.method, parts.uri.path(), &parts.headers, &api_version, &host, &body);
    vault.requests.push(VaultRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        api_version,
        caller,
        status: reply.status().as_u16(),
    });
    reply
}

fn answer(
    vault: &mut Vault,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    api_version: &Option<String>,
    host: &str,
    body: &Bytes,
) -> (Caller, Response) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).unwrap_or(""));
    let issued = match bearer {
        None => return (Caller::Anonymous, unauthorized("AKV10000: Request is missing a Bearer or PoP token.")),
        Some(token) => match vault.tokens.check(token, AUDIENCE) {
            TokenCheck::Valid(issued) => issued,
            TokenCheck::Expired(_) => {
                return (Caller::Refused, unauthorized("[TokenExpired] Error validating token: 'S2S12086'."));
            }
            TokenCheck::WrongAudience(issued) => {
                let message = format!("AKV10022: Invalid audience. Expected {AUDIENCE}, found: {}.", issued.resource);
                return (Caller::Refused, unauthorized(&message));
            }
            TokenCheck::Unknown => {
                return (
                    Caller::Refused,
                    unauthorized("[InvalidToken] The bearer token was not issued by the identity emulator."),
                );
            }
        },
    };
    let caller = Caller::Identity(issued.client_id.clone());
    if api_version.as_deref().is_none_or(str::is_empty) {
        return (
            caller,
            error(StatusCode::BAD_REQUEST, "BadParameter", "The api-version query parameter is required.", None),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = match (method, segments.as_slice()) {
        (&Method::GET, ["secrets", name]) | (&Method::GET, ["secrets", name, ""]) => {
            get_secret(vault, &issued, name, None, host)
        }
        (&Method::GET, ["secrets", name, version]) => get_secret(vault, &issued, name, Some(version), host),
        (&Method::PUT, ["secrets", name]) => set_secret(vault, &issued, name, body, host),
        (_, ["secrets", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "BadParameter", "The method is not supported.", None)
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", "The requested resource was not found.", None),
    };
    (caller, reply)
}

fn get_secret(
    vault: &Vault,
    caller: &super::identity::IssuedToken,
    name: &str,
    version: Option<&str>,
    host: &str,
) -> Response {
    if !vault.access_of(&caller.client_id).get {
        return forbidden(vault.model, caller, "get", "getSecret", name);
    }
    let stored = vault.secrets.get(&name.to_ascii_lowercase());
    let found = match (stored, version) {
        (Some(stored), None) => stored.versions.last().map(|v| (stored, v)),
        (Some(stored), Some(id)) => stored.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)).map(|v| (stored, v)),
        (None, _) => None,
    };
    let Some((stored, version_found)) = found else {
        let id = match version {
            Some(version) => format!("{name}/{version}"),
            None => name.to_string(),
        };
        let message = format!(
            "A secret with (name/id) {id} was not found in this key vault. If you recently deleted this secret you \
             may be able to recover it using the correct recovery command. For help resolving this issue, please \
             see https://go.microsoft.com/fwlink/?linkid=2125182"
        );
        return error(StatusCode::NOT_FOUND, "SecretNotFound", &message, None);
    };
    if !version_found.enabled {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
            Some("SecretDisabled"),
        );
    }
    json_reply(StatusCode::OK, bundle(host, stored, version_found))
}

fn set_secret(
    vault: &mut Vault,
    caller: &super::identity::IssuedToken,
    name: &str,
    body: &Bytes,
    host: &str,
) -> Response {
    if !vault.access_of(&caller.client_id).set {
        return forbidden(vault.model, caller, "set", "setSecret", name);
    }
    if !valid_name(name) {
        let message = format!("The secret name '{name}' is invalid: use 1 to 127 letters, digits and dashes.");
        return error(StatusCode::BAD_REQUEST, "BadParameter", &message, None);
    }
    let Ok(Value::Object(mut parameters)) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "BadParameter", "The request body is not a JSON object.", None);
    };
    let Some(Value::String(value)) = parameters.remove("value") else {
        return error(StatusCode::BAD_REQUEST, "BadParameter", "Property 'value' is required.", None);
    };
    let content_type = parameters.remove("contentType").and_then(|v| v.as_str().map(str::to_string));
    let tags = parameters.remove("tags").filter(Value::is_object);
    let version = vault.write(name, value, content_type, tags);
    let stored = &vault.secrets[&name.to_ascii_lowercase()];
    let written = stored.versions.iter().find(|v| v.id == version).expect("the version just written");
    json_reply(StatusCode::OK, bundle(host, stored, written))
}

fn bundle(host: &str, stored: &StoredSecret, version: &Version) -> Value {
    let mut bundle = Map::new();
    bundle.insert("value".into(), json!(version.value));
    if let Some(content_type) = &version.content_type {
        bundle.insert("contentType".into(), json!(content_type));
    }
    bundle.insert("id".into(), json!(format!("https://{host}/secrets/{}/{}", stored.name, version.id)));
    bundle.insert(
        "attributes".into(),
        json!({
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }),
    );
    if let Some(tags) = &version.tags {
        bundle.insert("tags".into(), tags.clone());
    }
    Value::Object(bundle)
}

/// A 403 in the shape the vault's permission model produces.
fn forbidden(
    model: PermissionModel,
    caller: &super::identity::IssuedToken,
    permission: &str,
    action: &str,
    name: &str,
) -> Response {
    let principal = format!(
        "appid={};oid={};iss=https://sts.windows.net/{}/",
        caller.client_id, caller.object_id, caller.tenant_id
    );
    match model {
        PermissionModel::Rbac => {
            let message = format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or \
                 role definitions were changed recently, please observe propagation time.\r\nCaller: {principal}\r\n\
                 Action: 'Microsoft.KeyVault/vaults/secrets/{action}/action'\r\nResource: \
                 '/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/providers/microsoft.keyvault/vaults/\
                 {VAULT_NAME}/secrets/{}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: \
                 'DeniedWithNoValidRBAC' \r\nVault: {VAULT_NAME};location={LOCATION}\r\n",
                name.to_ascii_lowercase()
            );
            error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("ForbiddenByRbac"))
        }
        PermissionModel::AccessPolicy => {
            let message = format!(
                "The user, group or application '{principal}' does not have secrets {permission} permission on key \
                 vault '{VAULT_NAME};location={LOCATION}'. For help resolving this issue, please see \
                 https://go.microsoft.com/fwlink/?linkid=2125287"
            );
            error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("AccessDenied"))
        }
    }
}

/// 401 with Key Vault's challenge, which every 401 carries.
fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let challenge =
        format!("Bearer authorization=\"https://login.microsoftonline.com/{TENANT_ID}\", resource=\"{AUDIENCE}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Key Vault's error envelope.
fn error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let Some(inner) = inner {
        error["innererror"] = json!({ "code": inner });
    }
    json_reply(status, json!({ "error": error }))
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert("x-ms-keyvault-region", HeaderValue::from_static(LOCATION));
    headers.insert("x-ms-keyvault-service-version", HeaderValue::from_static("1.9.195.1"));
    if let Ok(id) = HeaderValue::from_str(&hex::encode(rand::random::<[u8; 16]>())) {
        headers.insert("x-ms-request-id", id);
    }
    response
}
