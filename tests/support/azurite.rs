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

// ---- An Azurite of the test's own, to stop and start again ----

/// Azurite's Table service as `npm ci --prefix .ci` installs it (`.ci/run` does).
#[allow(dead_code)]
pub fn table_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/node_modules/.bin/azurite-table");
    assert!(
        path.exists(),
        "{} does not exist: run `npm ci --prefix .ci` (or `bash .ci/run`). This test starts, stops and restarts an \
         Azurite of its own, which the shared one on {DEFAULT_TABLE_ENDPOINT} cannot stand in for.",
        path.display()
    );
    path
}

/// An Azurite Table service of the test's own on a free port of 127.0.0.1, keeping its tables on disk
/// (`--location`, not `--inMemoryPersistence`), so that it can be stopped and started again on the same port
/// with its data as it was. Killed when dropped.
#[allow(dead_code)]
pub struct PrivateAzurite {
    pub port: u16,
    location: tempfile::TempDir,
    child: Option<std::process::Child>,
}

#[allow(dead_code)]
impl PrivateAzurite {
    /// Starts one; returns once its port answers.
    pub fn start() -> PrivateAzurite {
        table_binary();
        let location = tempfile::tempdir().expect("a directory for Azurite's data");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut azurite = PrivateAzurite { port, location, child: None };
        azurite.restart();
        azurite
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.port)
    }

    pub fn connection_string(&self) -> String {
        connection_string_for(&self.endpoint())
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.location.path().join("azurite.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether something accepts connections on its port.
    pub fn answers(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            std::time::Duration::from_millis(200),
        )
        .is_ok()
    }

    /// Starts it (again) on its port and location; returns once the port answers. Panics, with Azurite's log,
    /// when it exits or does not listen within 30 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "Azurite is running already");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("Azurite's log");
        let child = std::process::Command::new(table_binary())
            .args(["--tableHost", "127.0.0.1", "--tablePort", &self.port.to_string(), "--location"])
            .arg(self.location.path())
            .args(["--disableTelemetry", "--silent", "--skipApiVersionCheck"])
            .current_dir(self.location.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("Azurite's log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", table_binary().display()));
        self.child = Some(child);
        let started = std::time::Instant::now();
        while !self.answers() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("Azurite exited ({status}) before it listened on 127.0.0.1:{}:\n{}", self.port, self.log());
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "Azurite did not listen on 127.0.0.1:{} within 30 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops it as Ctrl-C does (SIGINT: it writes its tables to disk and closes its port), and waits until it
    /// has exited; SIGKILL if it has not within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), SIGINT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Azurite did not stop within 10 s of SIGINT:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Freezes it (SIGSTOP): its port stays open, but nothing answers until [`Self::unfreeze`].
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), SIGSTOP);
        }
    }

    pub fn unfreeze(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), SIGCONT);
        }
    }
}

impl Drop for PrivateAzurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[allow(dead_code)]
const SIGINT: i32 = 2;
#[allow(dead_code)]
const SIGCONT: i32 = 18;
#[allow(dead_code)]
const SIGSTOP: i32 = 19;

#[allow(dead_code)]
fn signal(pid: u32, signal: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    // SAFETY: kill(2) takes plain integers; the pid is a child of this process that has not been waited for.
    unsafe {
        kill(pid as i32, signal);
    }
}
