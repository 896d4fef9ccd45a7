//! An app registration's client secret as itsmc's Azure identity (`itsmc::secrets::credential` with
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`), as on AWS Lambda where no managed
//! identity exists: the real `azure_identity::ClientSecretCredential` asks the Entra emulator's token
//! endpoint (`tests/support/entra.rs`, over TLS from a test CA, named by `AZURE_AUTHORITY_HOST`) for
//! tokens, which the Key Vault and Logs Ingestion emulators accept because the Entra emulator records them
//! in the same `TokenRegistry` they check.
//!
//! # The process environment
//!
//! The credential reads those variables from the process environment (the SDK reads
//! `AZURE_AUTHORITY_HOST` itself), so this file is a test binary of its own and every test holds
//! [`ENVIRONMENT`] for its whole run: it binds the Entra emulator's port (no thread yet), sets the
//! variables, and only then starts the emulators and a runtime, all of which it stops before releasing
//! the lock. So no thread of this process runs while a variable changes, except the test harness's
//! own, which only waits for results, and other tests' threads, which are parked on the lock.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use azure_core::credentials::TokenCredential;
use base64::Engine;
use itsmc::ingest::Batch;
use itsmc::ingest::client::LogsIngestion;
use itsmc::secrets::{self, SecretError, Secrets, TokenCache};
use serde_json::Value;

use support::entra::{self, EntraEmulator, TENANT_ID};
use support::identity::{TokenCheck, TokenRegistry};
use support::keyvault::{self, Caller, KeyVaultEmulator};
use support::logs_ingestion::{self, LogsIngestionEmulator};
use support::tls::TestCa;

/// Our app registration on Lambda: its client id and its client secret (shaped as Entra makes them).
const APP_ID: &str = "6f1c2b9e-4d7a-4c3e-9b8f-2a5d7e1c0b34";
const APP_SECRET: &str = "Xq78Q~kR7vN2pL5tZ9.hJ4mB6cF1dG0sW3yE8uA_";
/// A secret Entra never issued for the app (an old one, a typo, the secret's id instead of its value).
const WRONG_SECRET: &str = "bT38Q~Wr0ngS3cretVa1ue.NeverIssued_9xYz2";
/// Another app id, unknown to the tenant.
const UNKNOWN_APP_ID: &str = "d2e4f6a8-1b3c-4d5e-8f9a-0b1c2d3e4f5a";

const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
const FORM: &str = "application/x-www-form-urlencoded";

/// Held by every test for its whole run (see the module documentation).
static ENVIRONMENT: Mutex<()> = Mutex::new(());

/// Every variable a test may set, and those that would pick another identity if the host had them.
const VARIABLES: [&str; 6] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
];

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Everything a test talks to: one CA, one token registry shared by Entra and the resource servers.
struct World {
    entra: EntraEmulator,
    vault: KeyVaultEmulator,
    logs: LogsIngestionEmulator,
    tokens: TokenRegistry,
    ca: TestCa,
}

impl World {
    /// The HTTP client for Key Vault: trusts the test CA and resolves the vault's host to the emulator
    /// (itsmc's own builder cannot resolve; see `tests/secrets.rs`). It reaches Entra at 127.0.0.1 too.
    fn vault_http(&self) -> reqwest::Client {
        self.vault.client(&self.ca)
    }

    /// itsmc's own client with `ITSMC_CA_FILE` naming the test CA, as on Lambda behind a TLS proxy.
    fn itsmc_http(&self) -> reqwest::Client {
        itsmc::http::build_client(&self.ca.http_settings()).expect("itsmc's HTTP client")
    }

    fn credential(&self) -> Arc<dyn TokenCredential> {
        secrets::credential(self.vault_http(), None).expect("a client secret credential")
    }

    fn secrets(&self) -> Secrets {
        Secrets::key_vault(&self.vault.url(), self.credential(), self.vault_http()).expect("a Key Vault source")
    }

    /// Requests the vault answered with a valid token.
    fn authorized_vault_requests(&self) -> usize {
        self.vault.requests().iter().filter(|r| matches!(r.caller, Caller::Identity(_))).count()
    }

    /// `text` shows neither client secret nor any token Entra issued (nor a part of one).
    fn assert_clean(&self, text: &str) {
        for secret in [APP_SECRET, WRONG_SECRET] {
            assert!(!text.contains(secret), "a client secret shows in: {text}");
        }
        for token in self.tokens.all() {
            for part in token.split('.') {
                assert!(!text.contains(part), "a token shows in: {text}");
            }
        }
    }
}

/// Run `test` with exactly the variables `settings` gives (given the Entra emulator's
/// `AZURE_AUTHORITY_HOST`) set, and the app [`APP_ID`] registered with [`APP_SECRET`]. See the module
/// documentation for the order of things.
fn with_environment<S, F, Fut>(settings: S, test: F)
where
    S: FnOnce(&str) -> Vec<(&'static str, String)>,
    F: FnOnce(World) -> Fut,
    Fut: Future<Output = ()>,
{
    let _environment = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Entra emulator");
    let authority_host = format!("https://{}", listener.local_addr().expect("its address"));
    let settings = settings(&authority_host);
    // SAFETY: see the module documentation: this test holds ENVIRONMENT, the previous holder stopped
    // every thread it started, and this one starts none before the variables are set.
    unsafe {
        for name in VARIABLES {
            std::env::remove_var(name);
        }
        for (name, value) in &settings {
            std::env::set_var(name, value);
        }
    }
    let ca = TestCa::new();
    let tokens = TokenRegistry::default();
    let entra = EntraEmulator::start_tls_on(listener, &ca, tokens.clone());
    assert_eq!(entra.authority_host(), authority_host);
    entra.register_app(APP_ID, APP_SECRET);
    let vault = KeyVaultEmulator::start(&ca, tokens.clone());
    let logs = LogsIngestionEmulator::start(&ca, tokens.clone());
    let world = World { entra, vault, logs, tokens, ca };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(test(world));
    drop(runtime);
}

/// The three variables for `tenant`, `client_id` and `secret`, and `AZURE_AUTHORITY_HOST`.
fn app_settings(
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> impl FnOnce(&str) -> Vec<(&'static str, String)> + use<> {
    let (tenant, client_id, secret) = (tenant.to_owned(), client_id.to_owned(), secret.to_owned());
    move |authority_host| {
        vec![
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", client_id),
            ("AZURE_CLIENT_SECRET", secret),
            ("AZURE_AUTHORITY_HOST", authority_host.to_owned()),
        ]
    }
}

/// The claims of a JWT, undecoded signature aside.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

// ---------------------------------------------------------------------------------------------
// (a) Key Vault, Logs Ingestion and Table Storage tokens from the client secret
// ---------------------------------------------------------------------------------------------

#[test]
fn a_key_vault_secret_is_read_with_the_app_registrations_client_secret() {
    with_environment(app_settings(TENANT_ID, APP_ID, APP_SECRET), |world| async move {
        world.vault.put_secret("prod-password", "kv-Pa55word-read-on-lambda");
        let secrets = world.secrets();
        assert!(world.entra.token_requests().is_empty(), "no token is asked for before a secret is");

        let value = secrets.get("prod-password").await.expect("the password");
        assert_eq!(value.expose(), "kv-Pa55word-read-on-lambda");

        // One client credentials request, for Key Vault's scope (from its challenge), form-encoded.
        let requests = world.entra.token_requests();
        assert_eq!(
            requests,
            [entra::TokenRequest {
                method: "POST".into(),
                tenant: TENANT_ID.into(),
                content_type: Some(FORM.into()),
                grant_type: Some(entra::CLIENT_CREDENTIALS.into()),
                client_id: Some(APP_ID.into()),
                scope: Some(VAULT_SCOPE.into()),
                client_secret_sent: true,
                status: 200,
                error_code: None,
            }]
        );

        // The vault met the challenge request, then the app's token.
        let vault_requests = world.vault.requests();
        assert_eq!(vault_requests.len(), 2, "{vault_requests:?}");
        assert_eq!((&vault_requests[0].caller, vault_requests[0].status), (&Caller::Anonymous, 401));
        assert_eq!((&vault_requests[1].caller, vault_requests[1].status), (&Caller::Identity(APP_ID.into()), 200));

        // The token is Entra's v1 app token for Key Vault, of the app's service principal.
        let issued = world.tokens.all();
        assert_eq!(issued.len(), 1);
        let TokenCheck::Valid(token) = world.tokens.check(&issued[0], keyvault::AUDIENCE) else {
            panic!("the token is not valid for Key Vault")
        };
        let app = world.entra.app(APP_ID).expect("the app");
        assert_eq!((token.client_id.as_str(), token.object_id.as_str()), (APP_ID, app.object_id.as_str()));
        let claims = claims(&issued[0]);
        assert_eq!(claims["aud"], keyvault::AUDIENCE);
        assert_eq!(claims["appid"], APP_ID);
        assert_eq!(claims["appidacr"], "1");
        assert_eq!(claims["tid"], TENANT_ID);

        // Cached value; a reload reads the vault again with the SDK's cached token.
        assert_eq!(secrets.get("prod-password").await.expect("cached").expose(), "kv-Pa55word-read-on-lambda");
        world.vault.put_secret("prod-password", "kv-rotated");
        assert_eq!(secrets.reload("prod-password").await.expect("reloaded").expose(), "kv-rotated");
        assert_eq!(world.authorized_vault_requests(), 2);
        assert_eq!(world.entra.token_requests().len(), 1, "the token is reused");
        world.assert_clean(&format!("{secrets:?}"));
    });
}

#[test]
fn logs_ingestion_and_table_storage_tokens_come_through_itsmc_ca_file() {
    with_environment(app_settings(TENANT_ID, APP_ID, APP_SECRET), |world| async move {
        // itsmc's own client (ITSMC_CA_FILE) for both Entra and the service, as App::start builds them.
        let http = world.itsmc_http();
        let credential = secrets::credential(http.clone(), None).expect("a client secret credential");

        let ingestion = LogsIngestion::new(world.logs.settings(), credential.clone(), http);
        let batch = Batch {
            schema: itsmc::sync::schema::service_desk(),
            json: r#"[{"TimeGenerated":"2025-01-01T00:00:00Z","ServiceDeskId_s":"INC0010001"}]"#.into(),
            rows: 1,
        };
        ingestion.send(&batch).await.expect("the upload is taken");
        let uploads = world.logs.requests();
        assert_eq!(uploads.len(), 1, "{uploads:?}");
        assert_eq!((uploads[0].status, uploads[0].client_id.as_deref()), (204, Some(APP_ID)));
        assert_eq!(world.logs.row_count(logs_ingestion::SERVICE_DESK_STREAM), 1);

        // Table Storage's token cache over the same credential.
        let storage = TokenCache::new(credential, STORAGE_SCOPE);
        let token = storage.token().await.expect("a storage token");
        let TokenCheck::Valid(issued) = world.tokens.check(token.token.secret(), "https://storage.azure.com") else {
            panic!("the token is not valid for Azure Storage")
        };
        assert_eq!(issued.client_id, APP_ID);

        let scopes: Vec<Option<String>> = world.entra.token_requests().into_iter().map(|r| r.scope).collect();
        assert_eq!(scopes, [Some(itsmc::ingest::client::MONITOR_SCOPE.to_owned()), Some(STORAGE_SCOPE.to_owned())]);
    });
}

// ---------------------------------------------------------------------------------------------
// (b) Errors getting a token
// ---------------------------------------------------------------------------------------------

/// The failure of the first read of a secret, and what the vault and Entra saw.
async fn failed_read(world: &World) -> SecretError {
    world.vault.put_secret("prod-password", "kv-never-read");
    let error = world.secrets().get("prod-password").await.expect_err("no token");
    assert_eq!(world.authorized_vault_requests(), 0, "no token reached the vault");
    assert!(world.tokens.all().is_empty(), "Entra issued no token");
    assert!(!error.is_transient(), "{error:?}");
    world.assert_clean(&error.to_string());
    world.assert_clean(&format!("{error:?}"));
    assert!(!error.to_string().contains("kv-never-read"), "{error}");
    error
}

/// The `Entra (…)` source of an [`SecretError::Identity`], and its detail.
///
/// The detail carries Entra's `AADSTS…` reason but not the HTTP status: azure_identity 1.0.0 cannot
/// deserialize Entra's error body (its `error_description: &str` cannot borrow a string with escapes, and
/// Entra's always has `\r\nTrace ID: …`), so the reason arrives quoted in a serde message instead of as an
/// HTTP error. The tests assert the reason, which is what the operator needs.
fn entra_failure(error: &SecretError, tenant: &str, client_id: &str) -> String {
    let SecretError::Identity { source, detail } = error else { panic!("not an identity error: {error:?}") };
    assert_eq!(
        source,
        &format!(
            "Entra (tenant {tenant}, app {client_id}, with AZURE_CLIENT_SECRET; check the secret has not expired)"
        )
    );
    let text = error.to_string();
    assert!(text.starts_with(source.as_str()), "{text}");
    detail.clone()
}

#[test]
fn a_wrong_client_secret_names_azure_client_secret_and_entra_and_never_shows_the_secret() {
    with_environment(app_settings(TENANT_ID, APP_ID, WRONG_SECRET), |world| async move {
        let error = failed_read(&world).await;
        let detail = entra_failure(&error, TENANT_ID, APP_ID);
        assert!(
            detail.starts_with("AADSTS7000215: Invalid client secret provided."),
            "the reason alone, not the SDK's parse error: {detail}"
        );

        // Entra was asked once (a 401 is not retried) and refused the secret.
        let requests = world.entra.token_requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!((requests[0].status, requests[0].error_code), (401, Some(7000215)));
        assert!(requests[0].client_secret_sent);

        // The same refusal through a token cache (Logs Ingestion, Table Storage) shows no secret either.
        let cache = TokenCache::new(world.credential(), STORAGE_SCOPE);
        let error = cache.token().await.expect_err("no token");
        let text = format!("{error} {error:?}");
        assert!(text.contains("AZURE_CLIENT_SECRET") && text.contains("7000215"), "{text}");
        world.assert_clean(&text);
    });
}

#[test]
fn an_expired_secret_an_unknown_app_and_an_unknown_tenant_are_told_apart() {
    with_environment(app_settings(TENANT_ID, APP_ID, APP_SECRET), |world| async move {
        world.entra.expire_secret(APP_ID, APP_SECRET);
        let detail = entra_failure(&failed_read(&world).await, TENANT_ID, APP_ID);
        assert!(detail.contains("AADSTS7000222: The provided client secret keys for app"), "{detail}");
    });
    with_environment(app_settings(TENANT_ID, UNKNOWN_APP_ID, APP_SECRET), |world| async move {
        let detail = entra_failure(&failed_read(&world).await, TENANT_ID, UNKNOWN_APP_ID);
        assert!(detail.contains(&format!("AADSTS700016: Application with identifier '{UNKNOWN_APP_ID}'")), "{detail}");
    });
    with_environment(app_settings(entra::OTHER_TENANT_ID, APP_ID, APP_SECRET), |world| async move {
        let detail = entra_failure(&failed_read(&world).await, entra::OTHER_TENANT_ID, APP_ID);
        assert!(detail.contains(&format!("AADSTS90002: Tenant '{}' not found", entra::OTHER_TENANT_ID)), "{detail}");
        assert_eq!(world.entra.token_requests()[0].tenant, entra::OTHER_TENANT_ID);
    });
}

// ---------------------------------------------------------------------------------------------
// (c) Settings that cannot work
// ---------------------------------------------------------------------------------------------

#[test]
fn a_secret_without_its_tenant_or_app_is_a_configuration_error_naming_the_missing_one() {
    for (missing, kept) in
        [("AZURE_TENANT_ID", ("AZURE_CLIENT_ID", APP_ID)), ("AZURE_CLIENT_ID", ("AZURE_TENANT_ID", TENANT_ID))]
    {
        with_environment(
            move |authority_host| {
                vec![
                    (kept.0, kept.1.to_owned()),
                    ("AZURE_CLIENT_SECRET", APP_SECRET.to_owned()),
                    ("AZURE_AUTHORITY_HOST", authority_host.to_owned()),
                ]
            },
            |world| async move {
                let error = secrets::credential(world.vault_http(), None).expect_err("refused");
                let SecretError::IdentityConfig { message } = &error else { panic!("{error:?}") };
                assert!(message.starts_with(&format!("AZURE_CLIENT_SECRET is set but {missing} is not")), "{message}");
                world.assert_clean(&format!("{error} {error:?}"));
                assert!(world.entra.token_requests().is_empty());
            },
        );
    }
    // The secret alone names neither.
    with_environment(
        |_| vec![("AZURE_CLIENT_SECRET", APP_SECRET.to_owned())],
        |world| async move {
            let error = secrets::credential(world.vault_http(), None).expect_err("refused");
            assert!(error.to_string().contains("AZURE_TENANT_ID is not"), "{error}");
            world.assert_clean(&format!("{error} {error:?}"));
        },
    );
}

#[test]
fn a_tenant_and_client_id_without_a_secret_are_left_to_other_credentials() {
    // Workload identity and other SDKs set these two; they are not a half-configured client secret.
    for settings in [
        vec![("AZURE_TENANT_ID", TENANT_ID.to_owned()), ("AZURE_CLIENT_ID", APP_ID.to_owned())],
        vec![("AZURE_TENANT_ID", TENANT_ID.to_owned())],
        vec![("AZURE_CLIENT_ID", APP_ID.to_owned())],
    ] {
        with_environment(
            move |_| settings,
            |world| async move {
                secrets::credential(world.vault_http(), None).expect("another credential");
                assert!(world.entra.token_requests().is_empty());
            },
        );
    }
}

#[test]
fn a_plain_http_authority_host_is_refused_before_any_request() {
    with_environment(
        |authority_host| {
            let mut settings = app_settings(TENANT_ID, APP_ID, APP_SECRET)(authority_host);
            settings[3].1 = authority_host.replacen("https://", "http://", 1);
            settings
        },
        |world| async move {
            let error = secrets::credential(world.vault_http(), None).expect_err("refused");
            let SecretError::IdentityConfig { message } = &error else { panic!("{error:?}") };
            assert!(message.contains("HTTPS"), "{message}");
            world.assert_clean(&format!("{error} {error:?}"));
            assert!(world.entra.token_requests().is_empty());
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The emulator's token endpoint on the wire
// ---------------------------------------------------------------------------------------------

/// A token request's form fields.
type Form = Vec<(&'static str, &'static str)>;

/// A raw answer of the token endpoint.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> Answer {
    let response = http.post(url).form(form).send().await.expect("an answer");
    answer(response).await
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("a JSON body");
    Answer { status, headers, body }
}

impl Answer {
    /// Entra's error shape, with this status, `error` and AADSTS code.
    fn assert_error(&self, status: u16, error: &str, code: u32) {
        assert_eq!((self.status, self.body["error"].as_str()), (status, Some(error)), "{}", self.body);
        assert_eq!(self.body["error_codes"], serde_json::json!([code]), "{}", self.body);
        let description = self.body["error_description"].as_str().expect("a description");
        assert!(description.starts_with(&format!("AADSTS{code}: ")), "{description}");
        let trace_id = self.body["trace_id"].as_str().expect("a trace id");
        let correlation_id = self.body["correlation_id"].as_str().expect("a correlation id");
        let timestamp = self.body["timestamp"].as_str().expect("a timestamp");
        assert!(
            description.ends_with(&format!(
                "\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
            )),
            "{description}"
        );
        assert!(chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%d %H:%M:%SZ").is_ok(), "{timestamp}");
        assert!(self.body["error_uri"].as_str().is_some_and(|uri| uri.ends_with(&format!("/error?code={code}"))));
    }
}

#[test]
fn the_token_endpoint_speaks_the_client_credentials_grant() {
    with_environment(
        |_| Vec::new(),
        |world| async move {
            let http = world.itsmc_http();
            let url = world.entra.token_endpoint(TENANT_ID);
            let grant = |secret: &'static str, scope: &'static str| {
                vec![
                    ("client_id", APP_ID),
                    ("client_secret", secret),
                    ("grant_type", "client_credentials"),
                    ("scope", scope),
                ]
            };

            // Success, also for the tenant's domain name.
            for url in [url.clone(), world.entra.token_endpoint(entra::TENANT_DOMAIN)] {
                let ok = post(&http, &url, &grant(APP_SECRET, "https://monitor.azure.com//.default")).await;
                assert_eq!(ok.status, 200, "{}", ok.body);
                let keys: Vec<&str> = ok.body.as_object().expect("an object").keys().map(String::as_str).collect();
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, ["access_token", "expires_in", "ext_expires_in", "token_type"]);
                assert_eq!(ok.body["token_type"], "Bearer");
                let lifetime = ok.body["expires_in"].as_i64().expect("seconds, a number");
                assert!((3600..5400).contains(&lifetime), "{lifetime}");
                assert_eq!(ok.body["ext_expires_in"], ok.body["expires_in"]);
                assert_eq!(ok.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store, no-cache"));
                let token = ok.body["access_token"].as_str().expect("a token");
                // `https://monitor.azure.com/` and `https://monitor.azure.com` are one audience.
                assert!(matches!(world.tokens.check(token, logs_ingestion::AUDIENCE), TokenCheck::Valid(_)));
                assert!(matches!(world.tokens.check(token, keyvault::AUDIENCE), TokenCheck::WrongAudience(_)));
                assert_eq!(claims(token)["aud"], "https://monitor.azure.com/");
            }

            // Refusals, each in Entra's error shape.
            let refusals: Vec<(Form, u16, &str, u32)> = vec![
                (grant(WRONG_SECRET, VAULT_SCOPE), 401, "invalid_client", 7000215),
                (grant("", VAULT_SCOPE), 401, "invalid_client", 7000218),
                (grant(APP_SECRET, "https://vault.azure.net/user_impersonation"), 400, "invalid_scope", 1002012),
                (
                    grant(APP_SECRET, "https://vault.azure.net/.default https://storage.azure.com/.default"),
                    400,
                    "invalid_scope",
                    70011,
                ),
                (grant(APP_SECRET, ""), 400, "invalid_request", 900144),
                (
                    vec![
                        ("client_id", UNKNOWN_APP_ID),
                        ("client_secret", APP_SECRET),
                        ("grant_type", "client_credentials"),
                        ("scope", VAULT_SCOPE),
                    ],
                    400,
                    "unauthorized_client",
                    700016,
                ),
                (
                    vec![
                        ("client_id", APP_ID),
                        ("client_secret", APP_SECRET),
                        ("grant_type", "password"),
                        ("scope", VAULT_SCOPE),
                    ],
                    400,
                    "unsupported_grant_type",
                    70003,
                ),
                (
                    vec![("client_id", APP_ID), ("client_secret", APP_SECRET), ("scope", VAULT_SCOPE)],
                    400,
                    "invalid_request",
                    900144,
                ),
            ];
            for (form, status, error, code) in &refusals {
                post(&http, &url, form).await.assert_error(*status, error, *code);
            }
            post(&http, &world.entra.token_endpoint(entra::OTHER_TENANT_ID), &grant(APP_SECRET, VAULT_SCOPE))
                .await
                .assert_error(400, "invalid_request", 90002);

            // The parameters come from a form body only, and only in a POST.
            let json: HashMap<&str, &str> = grant(APP_SECRET, VAULT_SCOPE).into_iter().collect();
            let response = http.post(&url).json(&json).send().await.expect("an answer");
            answer(response).await.assert_error(400, "invalid_request", 900144);
            let response = http.get(&url).send().await.expect("an answer");
            answer(response).await.assert_error(400, "invalid_request", 900561);

            // No secret is recorded, only whether one came; every answer is in the log.
            let requests = world.entra.token_requests();
            assert_eq!(requests.len(), 2 + refusals.len() + 3);
            assert!(!format!("{requests:?}").contains(APP_SECRET));
            assert!(!format!("{:?}", world.entra.app(APP_ID)).contains(APP_SECRET));
            assert_eq!(requests[2].error_code, Some(7000215));
            assert!(!requests[3].client_secret_sent);

            // A second secret (rotation) works beside the first; an app removed gets AADSTS700016.
            world.entra.register_app(APP_ID, "Yb91Q~second.secret_during-rotation0000");
            let ok = post(&http, &url, &grant("Yb91Q~second.secret_during-rotation0000", VAULT_SCOPE)).await;
            assert_eq!(ok.status, 200, "{}", ok.body);
            world.entra.remove_app(APP_ID);
            post(&http, &url, &grant(APP_SECRET, VAULT_SCOPE)).await.assert_error(400, "unauthorized_client", 700016);

            // Faults apply here as to the other routes.
            world.entra.set_failing(true);
            let failed = post(&http, &url, &grant(APP_SECRET, VAULT_SCOPE)).await;
            assert_eq!((failed.status, failed.body["error"].as_str()), (500, Some("server_error")));
        },
    );
}
