//! What `.ci/scan-secrets` reads (issue 8: no log line or error body of the test suite holds a secret). When
//! `ITSMC_TEST_CAPTURE_DIR` names a directory (`.ci/run` sets it), this puts there:
//!
//! - `<binary>-<pid>.log`: everything logged in this test process (itsmc in-process, its dependencies), as JSON
//!   lines, at [`DEFAULT_FILTER`] (or `ITSMC_TEST_CAPTURE_LOG`). The subscriber is installed when the binary
//!   loads (an `.init_array` entry, as the `ctor` crate makes one), so every test of every binary that includes
//!   this file (through `support/serve.rs`, which declares it so that every emulator can register its secrets)
//!   is covered, whether it starts itsmc through the harness or calls the library itself.
//! - `bodies-<binary>-<pid>.jsonl`: every answer of status >= 400 an in-process itsmc gives ([`record_errors`],
//!   layered on the harness's router), whichever client asked.
//! - `<binary>-<pid>-<name>-<n>.stdout|.stderr`: what an `itsmc` process a test starts prints ([`CaptureExt`]),
//!   at the same log level.
//! - `secrets.txt`: `kind<TAB>value`, every secret value the tests use: the credentials the emulators accept and
//!   the tokens they issue (registered where they are configured or minted), the secret-looking settings itsmc is
//!   started with, Azurite's well-known account key. Each also in its JSON-escaped and form-encoded forms.
//!
//! Without the variable nothing here does anything.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use base64::Engine;

/// The directory the capture goes to; unset: no capture.
pub const DIR_VAR: &str = "ITSMC_TEST_CAPTURE_DIR";
/// Overrides [`DEFAULT_FILTER`] (an `EnvFilter` directive string), for in-process logs and started processes.
pub const FILTER_VAR: &str = "ITSMC_TEST_CAPTURE_LOG";
/// Debug for everything, trace for itsmc: what an operator who turns logging up would see.
pub const DEFAULT_FILTER: &str = "debug,itsmc=trace";
/// Azurite's account key: published, but a secret in form (an `AccountKey=` of a connection string).
pub const AZURITE_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Capture {
    dir: PathBuf,
    /// `<binary>-<pid>`: the test crate's name and this process.
    stem: String,
    filter: String,
    secrets: Mutex<(Option<File>, HashSet<String>)>,
    bodies: Mutex<Option<File>>,
    children: AtomicUsize,
}

fn capture() -> Option<&'static Capture> {
    static CAPTURE: OnceLock<Option<Capture>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let dir = PathBuf::from(std::env::var_os(DIR_VAR).filter(|d| !d.is_empty())?);
            std::fs::create_dir_all(&dir).ok()?;
            // `<test crate>::support::capture`: the crate is the test binary's name without cargo's hash.
            let binary = module_path!().split("::").next().unwrap_or("test");
            let filter = std::env::var(FILTER_VAR).ok().filter(|f| !f.is_empty());
            Some(Capture {
                stem: format!("{binary}-{}", std::process::id()),
                filter: filter.unwrap_or_else(|| DEFAULT_FILTER.to_string()),
                secrets: Mutex::new((append(&dir.join("secrets.txt")), HashSet::new())),
                bodies: Mutex::new(None),
                children: AtomicUsize::new(0),
                dir,
            })
        })
        .as_ref()
}

fn append(path: &Path) -> Option<File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether capture is on in this process.
pub fn enabled() -> bool {
    capture().is_some()
}

/// Installs the log subscriber (once; later calls do nothing) and registers the fixed secrets. Runs when the
/// binary loads; the harness and the test servers call it too, for platforms without `.init_array`.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(capture) = capture() else { return };
        secret("azurite account key", AZURITE_ACCOUNT_KEY);
        let Some(file) = append(&capture.dir.join(format!("{}.log", capture.stem))) else { return };
        // The emulators (this crate's `support`) see credentials by design: their own events are not itsmc's.
        let crate_name = module_path!().split("::").next().unwrap_or("test");
        let directives = format!("{},{crate_name}::support=off", capture.filter);
        let Ok(filter) = tracing_subscriber::EnvFilter::try_new(directives) else { return };
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_thread_names(true)
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    });
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static INIT_AT_LOAD: extern "C" fn() = {
    extern "C" fn init_at_load() {
        // Nothing here may unwind: a panic before `main` aborts the test binary.
        let _ = std::panic::catch_unwind(init);
    }
    init_at_load
};

/// Registers a secret value: `kind` says what it is (it is printed, the value never). Also registers the forms it
/// takes in a JSON string and in a form or query, and each line of a multi-line value.
pub fn secret(kind: &str, value: &str) {
    let Some(capture) = capture() else { return };
    let mut forms = vec![value.to_string()];
    let lines: Vec<&str> = value.lines().map(str::trim).filter(|l| l.len() >= 8 && !l.starts_with("-----")).collect();
    if lines.len() > 1 {
        forms.extend(lines.iter().map(|l| l.to_string()));
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    forms.push(json.strip_prefix('"').and_then(|j| j.strip_suffix('"')).unwrap_or_default().to_string());
    forms.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
    let kind = kind.replace(['\t', '\n', '\r'], " ");
    let (file, seen) = &mut *lock(&capture.secrets);
    let Some(file) = file else { return };
    for form in forms {
        if form.is_empty() || form.contains('\n') || form.contains('\r') || !seen.insert(form.clone()) {
            continue;
        }
        let _ = file.write_all(format!("{kind}\t{form}\n").as_bytes());
    }
}

/// [`secret`] for each value.
pub fn secrets<S: AsRef<str>>(kind: &str, values: impl IntoIterator<Item = S>) {
    for value in values {
        secret(kind, value.as_ref());
    }
}

/// A user's password, and the `Authorization: Basic` credentials it makes with the user name (which is not
/// itself a secret).
pub fn basic(kind: &str, user: &str, password: &str) {
    secret(kind, password);
    secret(
        &format!("{kind} (Basic credentials)"),
        &base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
    );
}

/// Registers the secrets among settings (environment variables) itsmc is given: a password, client secret, API
/// key or identity header by its name, an `AccountKey=` or `SharedAccessSignature=` in a connection string, and
/// the credentials of the connections file `ITSMC_CONNECTIONS_FILE` names.
pub fn settings<K: AsRef<str>, V: AsRef<str>>(settings: impl IntoIterator<Item = (K, V)>) {
    if !enabled() {
        return;
    }
    for (name, value) in settings {
        let (name, value) = (name.as_ref(), value.as_ref());
        if secret_name(name) {
            secret(&format!("setting {name}"), value);
        }
        for part in value.split(';') {
            for key in ["AccountKey=", "SharedAccessSignature="] {
                if let Some(found) = part.trim().strip_prefix(key) {
                    secret(&format!("setting {name} {key}"), found);
                }
            }
        }
        if name == "ITSMC_CONNECTIONS_FILE"
            && let Ok(text) = std::fs::read_to_string(value)
            && let Ok(table) = text.parse::<toml::Table>()
        {
            connections_file(&toml::Value::Table(table));
        }
    }
}

/// A password, client secret, API key or the managed identity endpoint's header; not what only names one: a Key
/// Vault secret's name (`*_SECRET_NAME`), the variable that holds it (`client_secret_env`), an id or a file.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    let secretly = ["PASSWORD", "SECRET", "API_KEY", "IDENTITY_HEADER"].iter().any(|s| name.contains(s));
    secretly && !["_NAME", "_ENV", "_ID", "_FILE"].iter().any(|s| name.ends_with(s))
}

fn connections_file(value: &toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                match value {
                    toml::Value::String(text) if secret_name(key) => secret(&format!("connections file {key}"), text),
                    other => connections_file(other),
                }
            }
        }
        toml::Value::Array(items) => items.iter().for_each(connections_file),
        _ => {}
    }
}

/// Layers [`record_errors`] on an itsmc router when capture is on.
pub fn router(router: axum::Router) -> axum::Router {
    if enabled() { router.layer(axum::middleware::from_fn(record_errors)) } else { router }
}

/// Appends every answer of status >= 400 to `bodies-<binary>-<pid>.jsonl`: method, path (not the query, where a
/// Functions key may be), status, the thread (the test's name on a current-thread runtime) and the body.
pub async fn record_errors(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let (method, path) = (request.method().to_string(), request.uri().path().to_string());
    let response = next.run(request).await;
    let Some(capture) = capture().filter(|_| response.status().as_u16() >= 400) else { return response };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let line = serde_json::json!({
        "thread": std::thread::current().name().unwrap_or_default(),
        "method": method,
        "path": path,
        "status": parts.status.as_u16(),
        "body": String::from_utf8_lossy(&bytes),
    });
    let mut file = lock(&capture.bodies);
    if file.is_none() {
        *file = append(&capture.dir.join(format!("bodies-{}.jsonl", capture.stem)));
    }
    if let Some(file) = file.as_mut() {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Files for the output of one started process: `<binary>-<pid>-<name>-<n>.stdout` and `.stderr`.
fn output_files(name: &str) -> Option<(PathBuf, PathBuf)> {
    let capture = capture()?;
    let n = capture.children.fetch_add(1, Ordering::Relaxed);
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let base = capture.dir.join(format!("{}-{name}-{n}", capture.stem));
    Some((base.with_extension("stdout"), base.with_extension("stderr")))
}

/// A file in the capture for the stderr of a started process the test also reads: `<binary>-<pid>-<name>-<n>.stderr`.
pub fn stderr_file(name: &str) -> Option<PathBuf> {
    output_files(name).map(|(_, stderr)| stderr)
}

/// How a test starts `itsmc` so that what it prints is captured.
pub trait CaptureExt {
    /// Registers the secrets among the settings given to the command and logs at the capture's level, without
    /// colours. Call it after the settings (it overrides `RUST_LOG`).
    fn capture_env(&mut self) -> &mut Command;
    /// [`Self::capture_env`], and stdout and stderr to files (for a process whose output the test does not read).
    fn captured(&mut self, name: &str) -> &mut Command;
    /// [`Self::capture_env`], then `output()`, with a copy of what it printed to files.
    fn captured_output(&mut self, name: &str) -> std::io::Result<Output>;
}

impl CaptureExt for Command {
    fn capture_env(&mut self) -> &mut Command {
        let Some(capture) = capture() else { return self };
        let given: Vec<(String, String)> =
            self.get_envs().filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string()))).collect();
        settings(given);
        self.env("RUST_LOG", &capture.filter).env("NO_COLOR", "1")
    }

    fn captured(&mut self, name: &str) -> &mut Command {
        self.capture_env();
        let Some((stdout, stderr)) = output_files(name) else { return self };
        if let (Ok(stdout), Ok(stderr)) = (File::create(stdout), File::create(stderr)) {
            self.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
        }
        self
    }

    fn captured_output(&mut self, name: &str) -> std::io::Result<Output> {
        self.capture_env();
        self.output().map(|output| tee(name, output))
    }
}

/// Writes a copy of what a finished process printed to the capture files; returns it unchanged.
pub fn tee(name: &str, output: Output) -> Output {
    if let Some((stdout, stderr)) = output_files(name) {
        let _ = std::fs::write(stdout, &output.stdout);
        let _ = std::fs::write(stderr, &output.stderr);
    }
    output
}

/// Copies a running process's piped stdout and stderr to the capture files as it prints them (a pipe nobody
/// reads would also stall it once full). Without capture, the child is returned as it is.
pub fn drain(mut child: Child, name: &str) -> Child {
    let Some((stdout, stderr)) = output_files(name) else { return child };
    fn copy(from: Option<impl std::io::Read + Send + 'static>, to: PathBuf) {
        if let (Some(mut from), Ok(mut to)) = (from, File::create(to)) {
            std::thread::spawn(move || std::io::copy(&mut from, &mut to));
        }
    }
    copy(child.stdout.take(), stdout);
    copy(child.stderr.take(), stderr);
    child
}
