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

/// A store on Azurite with `prefix`'s tables created.
pub async fn open(prefix: &str) -> TableStore {
    let endpoint = table_endpoint();
    let store = TableStore::from_connection_string(&connection_string_for(&endpoint), prefix, http_client())
        .unwrap_or_else(|err| panic!("ITSMC_TEST_AZURITE_TABLE={endpoint}: {err}"));
    if let Err(err) = store.ensure_tables().await {
        panic!(
            "Azurite's Table service is not usable at {endpoint}: {err}\n\
             The Table Storage tests need Azurite: run `bash .ci/run`, which installs and starts it; or run \
             `npm ci --prefix .ci` and start `.ci/node_modules/.bin/azurite-table --inMemoryPersistence` \
             yourself; or point ITSMC_TEST_AZURITE_TABLE at a running one."
        );
    }
    store
}

/// Deletes `prefix`'s tables, on a thread and runtime of its own so that a `Drop` can call it. Failures
/// are ignored: Azurite keeps its tables in memory, and they go when it stops.
pub fn drop_tables_blocking(prefix: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let endpoint = table_endpoint();
            if let Ok(store) =
                TableStore::from_connection_string(&connection_string_for(&endpoint), &prefix, http_client())
            {
                let _ = store.drop_tables().await;
            }
        });
    });
    let _ = cleanup.join();
}
