//! Azurite for the store tests: where it listens, a Table store on a table prefix of the test's own, and
//! removing those tables afterwards.
//!
//! `.ci/run` installs Azurite (pinned in `.ci/package-lock.json`) and starts it on 127.0.0.1:10002 before the
//! tests. Without it the Table Storage tests fail, saying how to start it: a silently skipped test would
//! pass in a CI that never started the emulator.

use itsmc::store::TableStore;

/// Where the tests look for Azurite's Table service, unless `ITSMC_TEST_AZURITE_TABLE` says otherwise.
pub const DEFAULT_TABLE_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";
/// Azurite's well-known development account and key (public: they are in Azure's documentation).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn table_endpoint() -> String {
    std::env::var("ITSMC_TEST_AZURITE_TABLE").unwrap_or_else(|_| DEFAULT_TABLE_ENDPOINT.to_owned())
}

/// A SharedKey connection string for the development account at `endpoint`.
pub fn connection_string_for(endpoint: &str) -> String {
    format!("DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};TableEndpoint={endpoint}")
}

pub fn http_client() -> reqwest::Client {
    itsmc::http::build_client(&itsmc::http::HttpSettings::default()).expect("the HTTP client")
}

/// A table prefix no other test uses: `t` and 16 hex digits.
pub fn fresh_prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// A store on Azurite with `prefix`'s tables created: with the account key, or (`entra`) on the HTTPS service
/// with Entra tokens.
pub async fn open(prefix: &str, entra: bool) -> TableStore {
    let endpoint = if entra { entra_endpoint() } else { table_endpoint() };
    let store = connect(prefix, entra).unwrap_or_else(|err| panic!("Azurite at {endpoint}: {err}"));
    if let Err(err) = store.ensure_tables().await {
        panic!(
            "Azurite's Table service is not usable at {endpoint}: {err}\n\
             The Table Storage tests need Azurite: run `bash .ci/run`, which installs and starts it (the Entra \
             tests need its second, HTTPS service); or run `npm ci --prefix .ci` and start \
             `.ci/node_modules/.bin/azurite-table --inMemoryPersistence` yourself; or point \
             ITSMC_TEST_AZURITE_TABLE at a running one."
        );
    }
    store
}

fn connect(prefix: &str, entra: bool) -> Result<TableStore, itsmc::store::StoreError> {
    if entra {
        let url = entra_endpoint().parse().expect("a URL");
        TableStore::with_credential(url, StorageTokens::new("https://storage.azure.com"), prefix, entra_http_client())
    } else {
        TableStore::from_connection_string(&connection_string_for(&table_endpoint()), prefix, http_client())
    }
}

/// Deletes `prefix`'s tables, on a thread and runtime of its own so that a `Drop` can call it. Failures
/// are ignored: Azurite keeps its tables in memory, and they go when it stops.
pub fn drop_tables_blocking(prefix: String, entra: bool) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            if let Ok(store) = connect(&prefix, entra) {
                let _ = store.drop_tables().await;
            }
        });
    });
    let _ = cleanup.join();
}

// ---- Entra (bearer token) authentication ----

/// The table service that takes Entra tokens: `.ci/run` starts a second Azurite over HTTPS with
/// `--oauth basic`, unless `ITSMC_TEST_AZURITE_ENTRA_TABLE` points elsewhere.
pub fn entra_endpoint() -> String {
    std::env::var("ITSMC_TEST_AZURITE_ENTRA_TABLE")
        .unwrap_or_else(|_| "https://127.0.0.1:10012/devstoreaccount1".into())
}

/// itsmc's own HTTP client, trusting the CI's test CA the way `ITSMC_CA_FILE` makes production trust one.
pub fn entra_http_client() -> reqwest::Client {
    let ca_file = std::env::var("ITSMC_TEST_AZURITE_CA_FILE").unwrap_or_else(|_| {
        panic!(
            "ITSMC_TEST_AZURITE_CA_FILE is not set: the Entra Table Storage tests need the HTTPS Azurite that \
             `bash .ci/run` starts (with its test CA)"
        )
    });
    let settings = itsmc::http::HttpSettings { ca_file: Some(ca_file), ..itsmc::http::HttpSettings::default() };
    itsmc::http::build_client(&settings).expect("the HTTP client")
}

/// Tokens shaped as Entra issues them to a managed identity for Azure Storage. Azurite (`--oauth basic`)
/// checks their issuer, audience and lifetime, not their signature.
#[derive(Debug)]
pub struct StorageTokens {
    pub audience: String,
    pub requests: std::sync::atomic::AtomicUsize,
}

impl StorageTokens {
    pub fn new(audience: &str) -> std::sync::Arc<StorageTokens> {
        std::sync::Arc::new(StorageTokens { audience: audience.into(), requests: Default::default() })
    }
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StorageTokens {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        use base64::Engine;
        self.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let part = |json: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
        let now = azure_core::time::OffsetDateTime::now_utc();
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "tid": tenant,
            "oid": "00000000-0000-0000-0000-0000000000aa",
            "iat": now.unix_timestamp() - 60,
            "nbf": now.unix_timestamp() - 60,
            "exp": now.unix_timestamp() + 3600,
        });
        let token =
            format!("{}.{}.c2lnbmF0dXJl", part(serde_json::json!({"alg": "RS256", "typ": "JWT"})), part(claims));
        Ok(azure_core::credentials::AccessToken::new(token, now + azure_core::time::Duration::hours(1)))
    }
}
