//! Connection secrets from Key Vault through a managed identity (`itsmc::secrets`), with the real
//! `azure_identity` and `azure_security_keyvault_secrets` clients talking to the emulators in
//! `tests/support/` (identity endpoint, Key Vault over TLS with a test CA).
//!
//! # Why most tests run in a child process
//!
//! `ManagedIdentityCredential` reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` from the process
//! environment (its option to pass them in is compiled only into the SDK's own tests), and changing the
//! environment while other threads run is undefined behaviour. So each test that needs them re-runs this
//! test binary for itself alone (`<name> --exact --test-threads=1`, see [`isolated`]); in that child the
//! test sets the two variables before it starts a single thread, then starts the emulators and a runtime.
//! The parent only checks that the child passed. Tests that need no identity environment run in-process.
//!
//! # How the SDK comes to trust the emulated vault
//!
//! The vault is served under `https://itsmc-emulator.vault.azure.net:{port}/` with a certificate from a
//! CA made for the test; the client trusts that CA and resolves that host to `127.0.0.1`
//! (`keyvault::KeyVaultEmulator::client`). The host matters: the SDK sends a token only when the host
//! ends with the challenge's resource (`.vault.azure.net`), a check itsmc keeps on.
//! `production_client_trusts_itsmc_ca_file_and_keeps_challenge_verification` shows both halves with
//! itsmc's own client builder: `ITSMC_CA_FILE` makes the TLS handshake succeed, and a vault URL whose
//! host does not match the challenge gets no token.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use itsmc::config::Secret;
use itsmc::secrets::{self, Operation, Refusal, SecretError, SecretNames, Secrets};

use identity::{IdentityConfig, IdentityEmulator};
use keyvault::{Access, Caller, KeyVaultEmulator, PermissionModel};
use support::{identity, keyvault, servicenow, tls};

/// Set in the child process to the name of the test it runs.
const CHILD: &str = "ITSMC_SECRETS_TEST_CHILD";
/// What a wrong `IDENTITY_HEADER` is set to.
const WRONG_HEADER: &str = "2d0b5e8c-not-the-platform-header";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// What the identity environment of the child process looks like.
#[derive(Clone, Copy)]
enum Environment {
    /// `IDENTITY_ENDPOINT` is the emulator, `IDENTITY_HEADER` what it expects.
    ManagedIdentity,
    /// `IDENTITY_HEADER` is set to something else.
    WrongHeader,
    /// `IDENTITY_HEADER` is not set.
    NoHeader,
    /// `IDENTITY_ENDPOINT` is a port nothing listens on.
    UnreachableEndpoint,
}

/// Everything a test talks to.
struct World {
    identity: IdentityEmulator,
    vault: KeyVaultEmulator,
    ca: tls::TestCa,
}

impl World {
    fn start(identity: IdentityEmulator) -> World {
        let ca = tls::TestCa::new();
        let vault = KeyVaultEmulator::start(&ca, identity.tokens());
        World { identity, vault, ca }
    }

    /// The HTTP client itsmc would be given, here resolving the vault's host to the emulator.
    fn http(&self) -> reqwest::Client {
        self.vault.client(&self.ca)
    }

    fn credential(&self, client_id: Option<&str>) -> Arc<dyn TokenCredential> {
        secrets::credential(self.http(), client_id).expect("a credential")
    }

    fn secrets_as(&self, client_id: Option<&str>) -> Secrets {
        Secrets::key_vault(&self.vault.url(), self.credential(client_id), self.http()).expect("a Key Vault source")
    }

    fn secrets(&self) -> Secrets {
        self.secrets_as(None)
    }

    /// The system-assigned identity's client id.
    fn system_client_id(&self) -> String {
        IdentityConfig::default().system_assigned.expect("a system-assigned identity").client_id
    }

    /// Requests the vault answered with a valid token.
    fn authorized_requests(&self) -> usize {
        self.vault.requests().iter().filter(|r| matches!(r.caller, Caller::Identity(_))).count()
    }

    /// `text` shows none of `values`, no token the identity endpoint issued (nor a part of one) and no
    /// identity header.
    fn assert_clean(&self, text: &str, values: &[&str]) {
        for value in values {
            assert!(!text.contains(value), "a secret value shows in: {text}");
        }
        for token in self.identity.tokens().all() {
            for part in token.split('.') {
                assert!(!text.contains(part), "a token shows in: {text}");
            }
        }
        for header in [identity::DEFAULT_IDENTITY_HEADER, WRONG_HEADER] {
            assert!(!text.contains(header), "the identity header shows in: {text}");
        }
    }
}

/// Run `scenario` in a child process of its own with the given identity environment (see the module
/// documentation). `test` is the test function itself; its name selects the test in the child.
fn isolated<T, F, Fut>(_test: T, environment: Environment, scenario: F)
where
    T: Fn(),
    F: FnOnce(World) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = std::any::type_name::<T>().rsplit("::").next().expect("a test name");
    if std::env::var(CHILD).as_deref() == Ok(name) {
        run_child(environment, scenario);
    } else {
        run_parent(name);
    }
}

fn run_parent(name: &str) {
    let mut command = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    command.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(CHILD, name);
    // The child decides its identity environment; nothing from the host may leak into it.
    for variable in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
    ] {
        command.env_remove(variable);
    }
    let output = command.output().expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the test failed in its child process ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

fn run_child<F, Fut>(environment: Environment, scenario: F)
where
    F: FnOnce(World) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = IdentityConfig::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the identity endpoint");
    let endpoint = match environment {
        Environment::UnreachableEndpoint => {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
            let addr = closed.local_addr().expect("its address");
            drop(closed);
            format!("http://{addr}{}", identity::TOKEN_PATH)
        }
        _ => format!("http://{}{}", listener.local_addr().expect("its address"), identity::TOKEN_PATH),
    };
    // SAFETY: this process was started to run this one test (`--exact --test-threads=1`), and the test
    // has not started any thread yet: the emulators, the runtime and the clients all start below. The
    // harness's own thread only waits for the test to finish, so nothing reads the environment while it
    // changes.
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", &endpoint);
        match environment {
            Environment::ManagedIdentity | Environment::UnreachableEndpoint => {
                std::env::set_var("IDENTITY_HEADER", &config.header);
            }
            Environment::WrongHeader => std::env::set_var("IDENTITY_HEADER", WRONG_HEADER),
            Environment::NoHeader => std::env::remove_var("IDENTITY_HEADER"),
        }
    }
    let world = World::start(IdentityEmulator::start_on(listener, config));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(scenario(world));
}

/// A credential for tests that must not get as far as asking for a token.
#[derive(Debug, Default)]
struct CountingCredential(AtomicUsize);

#[async_trait::async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "no token in this test"))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading, caching, rotation, write-back
// ---------------------------------------------------------------------------------------------

#[test]
fn get_reads_through_the_managed_identity_and_caches() {
    isolated(get_reads_through_the_managed_identity_and_caches, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "s3cr3t-Pa55word");
        let secrets = world.secrets();
        assert_eq!(world.vault.request_count(), 0, "nothing is read before it is asked for");

        let value = secrets.get("prod-password").await.expect("the password");
        assert_eq!(value.expose(), "s3cr3t-Pa55word");

        // The SDK's first request carries no token and meets the challenge; the retry carries one.
        let requests = world.vault.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!((&requests[0].caller, requests[0].status), (&Caller::Anonymous, 401));
        assert_eq!((&requests[1].caller, requests[1].status), (&Caller::Identity(world.system_client_id()), 200));
        assert_eq!(requests[1].path, "/secrets/prod-password/");
        assert!(requests[1].api_version.is_some());
        let tokens = world.identity.requests();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_eq!(tokens[0].resource.as_deref(), Some(keyvault::AUDIENCE));
        assert_eq!(tokens[0].api_version.as_deref(), Some(identity::API_VERSION));
        assert!(tokens[0].header_ok && tokens[0].client_id.is_none());

        // Cached: no request, whatever the case of the name (Key Vault ignores it).
        let again = secrets.get("PROD-Password").await.expect("the password again");
        assert_eq!(again, value);
        assert_eq!(world.vault.request_count(), 2);
        assert_eq!(world.identity.request_count(), 1);

        assert_eq!(format!("{value:?}"), "***");
        let printed = format!("{secrets:?}");
        assert!(printed.contains("prod-password"), "{printed}");
        world.assert_clean(&printed, &["s3cr3t-Pa55word"]);
    });
}

#[test]
fn concurrent_gets_share_one_read() {
    isolated(concurrent_gets_share_one_read, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-client-secret", "client-secret-value");
        let secrets = Arc::new(world.secrets());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let secrets = secrets.clone();
            tasks.spawn(async move { secrets.get("prod-client-secret").await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.expect("task").expect("the secret").expose(), "client-secret-value");
        }
        assert_eq!(world.authorized_requests(), 1);
        assert_eq!(world.identity.request_count(), 1);
    });
}

#[test]
fn reload_after_rotation_returns_the_new_value() {
    isolated(reload_after_rotation_returns_the_new_value, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "first-password");
        let secrets = world.secrets();
        assert_eq!(secrets.get("prod-password").await.expect("first").expose(), "first-password");

        // An operator rotates it: a new version in the vault.
        world.vault.put_secret("prod-password", "rotated-password");
        assert_eq!(secrets.get("prod-password").await.expect("cached").expose(), "first-password");
        assert_eq!(world.authorized_requests(), 1, "get answers from the cache");

        assert_eq!(secrets.reload("prod-password").await.expect("reloaded").expose(), "rotated-password");
        assert_eq!(world.authorized_requests(), 2, "reload reads the vault");
        assert_eq!(secrets.get("prod-password").await.expect("cached").expose(), "rotated-password");
        assert_eq!(world.authorized_requests(), 2);
        assert_eq!(world.identity.request_count(), 1, "the token is reused");
    });
}

#[test]
fn set_writes_a_new_version_that_get_and_reload_return() {
    isolated(set_writes_a_new_version_that_get_and_reload_return, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-refresh-token", "refresh-1");
        let secrets = world.secrets();
        assert_eq!(secrets.get("prod-refresh-token").await.expect("first").expose(), "refresh-1");

        secrets.set("prod-refresh-token", &Secret::new("refresh-2")).await.expect("written");
        assert_eq!(world.vault.latest("prod-refresh-token").as_deref(), Some("refresh-2"));
        assert_eq!(world.vault.versions("prod-refresh-token").len(), 2, "a new version, the old one kept");
        let before = world.vault.request_count();
        assert_eq!(secrets.get("prod-refresh-token").await.expect("cached").expose(), "refresh-2");
        assert_eq!(world.vault.request_count(), before, "get answers from the cache");
        assert_eq!(secrets.reload("prod-refresh-token").await.expect("reloaded").expose(), "refresh-2");
        assert_eq!(world.vault.request_count(), before + 1);

        // Writing a secret that does not exist yet creates it; another instance reads it.
        secrets.set("staging-refresh-token", &Secret::new("refresh-new")).await.expect("created");
        let other = world.secrets();
        assert_eq!(other.get("staging-refresh-token").await.expect("read").expose(), "refresh-new");
    });
}

// ---------------------------------------------------------------------------------------------
// Errors the operator can act on
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_secret_tells_the_operator_to_create_it() {
    isolated(missing_secret_tells_the_operator_to_create_it, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "present-password");
        let secrets = world.secrets();
        secrets.get("prod-password").await.expect("present");
        let error = secrets.get("prod-client-secret").await.expect_err("absent");
        assert_eq!(error, SecretError::NotFound { vault: "itsmc-emulator".into(), name: "prod-client-secret".into() });
        let text = error.to_string();
        assert!(text.contains("create secret prod-client-secret in itsmc-emulator"), "{text}");
        assert!(!error.is_transient());
        world.assert_clean(&text, &["present-password"]);
        world.assert_clean(&format!("{error:?}"), &["present-password"]);
    });
}

#[test]
fn refused_reads_and_writes_name_the_role_to_grant() {
    isolated(refused_reads_and_writes_name_the_role_to_grant, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "stored-password");
        world.vault.put_secret("prod-refresh-token", "stored-refresh");
        let identity = world.system_client_id();
        let secrets = world.secrets();

        // Read-only (Key Vault Secrets User): the write is refused.
        world.vault.set_access(&identity, Access::READ);
        let error = secrets.set("prod-refresh-token", &Secret::new("unwritten-refresh")).await.expect_err("refused");
        let SecretError::Forbidden { operation, refusal, .. } = &error else { panic!("{error:?}") };
        assert_eq!((*operation, *refusal), (Operation::Write, Refusal::Rbac));
        let text = error.to_string();
        assert!(text.contains("grant the function's identity Key Vault Secrets Officer on itsmc-emulator"), "{text}");
        assert!(text.contains("setSecret"), "the vault's reason is quoted: {text}");
        world.assert_clean(&text, &["unwritten-refresh", "stored-password", "stored-refresh"]);
        world.assert_clean(&format!("{error:?}"), &["unwritten-refresh"]);
        assert_eq!(world.vault.latest("prod-refresh-token").as_deref(), Some("stored-refresh"));

        // No role at all: the read is refused.
        world.vault.set_access(&identity, Access::NONE);
        let error = secrets.get("prod-password").await.expect_err("refused");
        let text = error.to_string();
        assert!(matches!(error, SecretError::Forbidden { operation: Operation::Read, refusal: Refusal::Rbac, .. }));
        assert!(text.contains("grant the function's identity Key Vault Secrets User on itsmc-emulator"), "{text}");
        world.assert_clean(&text, &["stored-password"]);

        // A vault on access policies says so.
        world.vault.set_permission_model(PermissionModel::AccessPolicy);
        let error = secrets.get("prod-password").await.expect_err("refused");
        let text = error.to_string();
        assert!(matches!(error, SecretError::Forbidden { refusal: Refusal::AccessPolicy, .. }), "{error:?}");
        assert!(text.contains("access policy") && text.contains("Key Vault Secrets User on itsmc-emulator"), "{text}");

        // A disabled secret is not a permission problem.
        world.vault.set_access(&identity, Access::READ_WRITE);
        world.vault.set_enabled("prod-password", false);
        let error = secrets.get("prod-password").await.expect_err("disabled");
        assert!(matches!(error, SecretError::Disabled { .. }), "{error:?}");
        assert!(error.to_string().contains("enable its current version"), "{error}");
    });
}

#[test]
fn wrong_identity_header_is_a_clear_error() {
    isolated(wrong_identity_header_is_a_clear_error, Environment::WrongHeader, |world| async move {
        world.vault.put_secret("prod-password", "unreached-password");
        let secrets = world.secrets();
        let error = secrets.get("prod-password").await.expect_err("no token");
        let SecretError::IdentityHeaderRefused { endpoint, detail } = &error else { panic!("{error:?}") };
        assert_eq!(endpoint, &world.identity.endpoint());
        assert!(detail.contains("401"), "{detail}");
        let text = error.to_string();
        assert!(text.contains("X-IDENTITY-HEADER") && text.contains("IDENTITY_HEADER"), "{text}");
        world.assert_clean(&text, &["unreached-password"]);
        world.assert_clean(&format!("{error:?}"), &["unreached-password"]);
        assert!(world.identity.requests().iter().all(|r| !r.header_ok && r.status == 401));
        assert_eq!(world.authorized_requests(), 0);
    });
}

#[test]
fn missing_identity_header_is_a_setting_error() {
    isolated(missing_identity_header_is_a_setting_error, Environment::NoHeader, |world| async move {
        let error = secrets::credential(world.http(), None).expect_err("refused");
        assert!(matches!(error, SecretError::IdentityConfig { .. }));
        assert!(error.to_string().contains("IDENTITY_HEADER is not"), "{error}");
        assert_eq!(world.identity.request_count(), 0);
    });
}

#[test]
fn unreachable_identity_endpoint_is_a_clear_error() {
    isolated(unreachable_identity_endpoint_is_a_clear_error, Environment::UnreachableEndpoint, |world| async move {
        let secrets = world.secrets();
        let error = secrets.get("prod-password").await.expect_err("no token");
        let SecretError::IdentityUnreachable { endpoint, .. } = &error else { panic!("{error:?}") };
        assert_eq!(Some(endpoint.clone()), std::env::var("IDENTITY_ENDPOINT").ok());
        assert!(error.is_transient());
        let text = error.to_string();
        assert!(text.contains("cannot reach the managed identity endpoint"), "{text}");
        world.assert_clean(&text, &[]);
    });
}

#[test]
fn user_assigned_identity_is_chosen_by_client_id() {
    isolated(user_assigned_identity_is_chosen_by_client_id, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "user-assigned-read");
        let user_assigned = IdentityConfig::default().user_assigned[0].client_id.clone();
        let secrets = world.secrets_as(Some(&user_assigned));
        assert_eq!(secrets.get("prod-password").await.expect("read").expose(), "user-assigned-read");
        let tokens = world.identity.requests();
        assert_eq!(tokens.last().and_then(|r| r.client_id.clone()), Some(user_assigned.clone()));
        assert!(world.vault.requests().iter().any(|r| r.caller == Caller::Identity(user_assigned.clone())));

        // An identity the app does not have.
        let unknown = "11111111-2222-4333-8444-555555555555";
        let error = world.secrets_as(Some(unknown)).get("prod-password").await.expect_err("no such identity");
        assert!(
            matches!(&error, SecretError::IdentityNotAssigned { client_id: Some(id), .. } if id == unknown),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(secrets::MANAGED_IDENTITY_CLIENT_ID_SETTING) && text.contains(unknown), "{text}");
        assert!(text.contains("Unable to load the proper Managed Identity"), "the endpoint's reason: {text}");
        world.assert_clean(&text, &["user-assigned-read"]);
    });
}

#[test]
fn expired_tokens_are_renewed_or_reported() {
    isolated(expired_tokens_are_renewed_or_reported, Environment::ManagedIdentity, |world| async move {
        world.vault.put_secret("prod-password", "expiring-password");

        // A day-long token: the SDK keeps it until five minutes before expiry, so a token the vault
        // stops accepting earlier (revoked, clock skew) is reported, not silently retried forever.
        let long_lived = world.secrets();
        long_lived.get("prod-password").await.expect("read");
        world.identity.expire_tokens();
        let error = long_lived.reload("prod-password").await.expect_err("refused token");
        assert!(matches!(error, SecretError::TokenRefused { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("TokenExpired") && text.contains("refused the identity's token"), "{text}");
        world.assert_clean(&text, &["expiring-password"]);

        // Tokens within the SDK's renewal window are renewed before each request.
        world.identity.set_token_lifetime(Duration::from_secs(120));
        let short_lived = world.secrets();
        short_lived.get("prod-password").await.expect("read");
        let asked = world.identity.request_count();
        world.identity.expire_tokens();
        assert_eq!(short_lived.reload("prod-password").await.expect("renewed").expose(), "expiring-password");
        assert!(world.identity.request_count() > asked, "a new token was fetched");
    });
}

// ---------------------------------------------------------------------------------------------
// In-process: no identity environment needed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn production_client_trusts_itsmc_ca_file_and_keeps_challenge_verification() {
    let world = World::start(IdentityEmulator::start(IdentityConfig::default()));
    // itsmc's own builder, with ITSMC_CA_FILE naming the test CA.
    let http = itsmc::http::build_client(&world.ca.http_settings()).expect("itsmc's HTTP client");
    let credential = Arc::new(CountingCredential::default());
    let secrets = Secrets::key_vault(&world.vault.loopback_url(), credential.clone(), http).expect("a source");
    let error = secrets.get("prod-password").await.expect_err("no token for a mismatched host");
    assert!(matches!(error, SecretError::ChallengeMismatch { .. }), "{error:?}");
    assert!(error.to_string().contains("https://<vault name>.vault.azure.net/"), "{error}");
    // The TLS handshake succeeded (the vault answered the challenge request), and no token was asked for.
    let requests = world.vault.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((&requests[0].caller, requests[0].status), (&Caller::Anonymous, 401));
    assert_eq!(credential.0.load(Ordering::SeqCst), 0);

    // Without ITSMC_CA_FILE the emulator's certificate is not trusted: the vault is unreachable.
    let plain = itsmc::http::build_client(&itsmc::http::HttpSettings::default()).expect("client");
    let secrets = Secrets::key_vault(&world.vault.loopback_url(), credential.clone(), plain).expect("a source");
    let error = secrets.get("prod-password").await.expect_err("untrusted certificate");
    assert!(matches!(&error, SecretError::VaultUnreachable { vault, .. } if vault == "127.0.0.1"), "{error:?}");
    assert!(error.to_string().contains("ITSMC_CA_FILE"), "{error}");
}

#[test]
fn secret_names_follow_the_connection() {
    let names = SecretNames::for_connection("prod");
    assert_eq!(
        names,
        SecretNames {
            password: "prod-password".into(),
            client_secret: "prod-client-secret".into(),
            refresh_token: "prod-refresh-token".into(),
        }
    );
    assert!(names.validate().is_ok());
    // Connection names may hold '_'; Key Vault names may not.
    assert_eq!(SecretNames::for_connection("prod_eu").password, "prod-eu-password");
    assert_eq!(secrets::key_vault_name("a.b c_d-e"), "a-b-c-d-e");
    // Overrides are checked.
    let overridden = SecretNames { password: "snow/password".into(), ..SecretNames::for_connection("prod") };
    let error = overridden.validate().expect_err("refused");
    assert!(matches!(error, SecretError::InvalidName { ref name, .. } if name == "snow/password"), "{error:?}");
    let too_long = SecretNames { refresh_token: "x".repeat(128), ..SecretNames::for_connection("prod") };
    assert!(too_long.validate().is_err());
}

#[tokio::test]
async fn invalid_names_and_urls_are_refused_before_any_request() {
    let credential = Arc::new(CountingCredential::default());
    let http = reqwest::Client::new();
    for (url, expected) in [
        ("http://contoso.vault.azure.net/", "https://"),
        ("https://contoso.vault.azure.net/secrets/x", "without a path"),
        ("contoso.vault.azure.net", "not a URL"),
    ] {
        let error = Secrets::key_vault(url, credential.clone(), http.clone()).expect_err("refused");
        assert!(
            matches!(error, SecretError::InvalidVaultUrl { .. }) && error.to_string().contains(expected),
            "{error}"
        );
    }
    let secrets = Secrets::key_vault("https://contoso.vault.azure.net", credential.clone(), http).expect("valid");
    assert_eq!(secrets.vault_url(), "https://contoso.vault.azure.net/");
    let error = secrets.get("prod_password").await.expect_err("invalid name");
    assert!(error.to_string().contains("letters, digits and '-'"), "{error}");
    assert_eq!(credential.0.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Wired into a ServiceNow connection
// ---------------------------------------------------------------------------------------------

/// An alert path whose ServiceNow credentials are all in Key Vault (none in the settings).
fn intake_with_vault(
    world: &World,
    servicenow: &servicenow::ServiceNowEmulator,
    oauth: bool,
) -> Arc<itsmc::intake::Intake> {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let mut env = vec![
        ("ITSMC_DATA_DIR".to_string(), dir.display().to_string()),
        ("ITSMC_KEY_VAULT_URL".to_string(), world.vault.url()),
        ("ITSMC_PRODUCT".to_string(), "servicenow".to_string()),
        ("ITSMC_CONNECTION_NAME".to_string(), "prod".to_string()),
        ("ITSMC_URL".to_string(), servicenow.url()),
        ("ITSMC_USERNAME".to_string(), "itsmc".to_string()),
    ];
    if oauth {
        env.push(("ITSMC_CLIENT_ID".to_string(), "itsmc-client".to_string()));
    }
    let env: std::collections::HashMap<_, _> = env.into_iter().collect();
    let config = itsmc::config::Config::from_lookup(|name| env.get(name).cloned()).expect("valid settings");
    let store = itsmc::store::EmbeddedStore::open(&dir).expect("store");
    let vault = Arc::new(world.secrets());
    Arc::new(itsmc::intake::Intake::new(Arc::new(config), Arc::new(store), world.http(), Some(vault)))
}

fn alert(id: &str) -> String {
    serde_json::json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {"essentials": {
            "alertId": format!("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{id}"),
            "alertRule": "cpu-high", "severity": "Sev2", "monitorCondition": "Fired",
            "alertTargetIDs": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"]
        }, "alertContext": {}}
    })
    .to_string()
}

#[test]
fn a_password_rotated_in_the_vault_is_picked_up_when_servicenow_refuses_the_old_one() {
    isolated(
        a_password_rotated_in_the_vault_is_picked_up_when_servicenow_refuses_the_old_one,
        Environment::ManagedIdentity,
        |world| async move {
            let servicenow = servicenow::ServiceNowEmulator::start(
                servicenow::EmulatorConfig::default().with_user("itsmc", "first-password"),
            );
            world.vault.put_secret("prod-password", "first-password");
            let intake = intake_with_vault(&world, &servicenow, false);
            let options = itsmc::intake::Options::default();
            let first = intake.accept(alert("a1").as_bytes(), &options).await.expect("created");
            assert_eq!(first.action, itsmc::intake::Action::Created);

            // The password is rotated in ServiceNow and in the vault while itsmc runs with the old one cached.
            servicenow.set_password("itsmc", "second-password");
            world.vault.put_secret("prod-password", "second-password");
            let reads = world.authorized_requests();
            let second = intake.accept(alert("a2").as_bytes(), &options).await.expect("created after a reload");
            assert_eq!(second.action, itsmc::intake::Action::Created, "the next alert after the 401 succeeds");
            assert_eq!(servicenow.count("incident"), 2);
            assert_eq!(world.authorized_requests(), reads + 1, "the password was read again once");
        },
    );
}

#[test]
fn a_refresh_token_servicenow_hands_out_is_written_back_to_the_vault() {
    isolated(
        a_refresh_token_servicenow_hands_out_is_written_back_to_the_vault,
        Environment::ManagedIdentity,
        |world| async move {
            let servicenow = servicenow::ServiceNowEmulator::start(
                servicenow::EmulatorConfig::default()
                    .with_user("itsmc", "the-password")
                    .with_oauth_client("itsmc-client", "the-client-secret"),
            );
            world.vault.put_secret("prod-password", "the-password");
            world.vault.put_secret("prod-client-secret", "the-client-secret");
            let intake = intake_with_vault(&world, &servicenow, true);
            let options = itsmc::intake::Options::default();
            intake.accept(alert("r1").as_bytes(), &options).await.expect("created");
            assert_eq!(servicenow.token_grants(), ["password"], "no refresh token in the vault yet: the password");
            let mut written = None;
            for _ in 0..100 {
                written = world.vault.latest("prod-refresh-token");
                if written.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let written = written.expect("the refresh token was written back");
            assert!(!written.is_empty());

            // A new instance (nothing cached) starts from the written-back refresh token, not the password.
            let restarted = intake_with_vault(&world, &servicenow, true);
            restarted.accept(alert("r2").as_bytes(), &options).await.expect("created");
            assert_eq!(servicenow.token_grants(), ["password", "refresh_token"]);
        },
    );
}
