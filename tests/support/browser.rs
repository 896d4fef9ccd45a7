//! A small WebDriver client for the browser tests: headless Chromium driven by chromedriver over the W3C WebDriver
//! protocol (plain HTTP with reqwest), so a test can load a page served on 127.0.0.1, read the DOM, click, and see
//! dialogs, console errors and a screenshot of what a user would.
//!
//! `Browser::start` runs chromedriver (`ITSMC_CHROMEDRIVER`, default `/usr/bin/chromedriver`) on a free port and
//! opens one session of Chromium (`ITSMC_CHROMIUM`, default `/usr/bin/chromium`) with a fresh profile; dropping the
//! `Browser` ends the session and kills chromedriver. CI installs both (Debian's `chromium` and `chromium-driver`,
//! in `.ci/run`). Every method panics with the WebDriver command and error when chromedriver refuses one.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::harness::{KillOnDrop, free_port};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    port: u16,
    /// `http://127.0.0.1:{port}/session/{id}`, which every command but the first starts with.
    session: String,
    session_id: String,
    // Dropped in this order, after `Drop::drop` has ended the session (and with it Chromium).
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

/// A WebDriver error: `{"value":{"error":..,"message":..}}`.
#[derive(Debug)]
struct WebDriverError {
    error: String,
    message: String,
}

impl std::fmt::Display for WebDriverError {
    /// Chromedriver's message, which mostly starts with the error already.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with(&self.error) {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.error, self.message)
        }
    }
}

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(variable).unwrap_or_else(|_| default.to_owned()));
    if !path.exists() {
        panic!(
            "{} not found (set {variable} or install it: apt-get install -y chromium chromium-driver)",
            path.display()
        );
    }
    path
}

impl Browser {
    /// Starts chromedriver (ITSMC_CHROMEDRIVER or /usr/bin/chromedriver) on a free port and a session of headless
    /// Chromium (ITSMC_CHROMIUM or /usr/bin/chromium) with a fresh temporary profile. Dialogs stay open
    /// (`unhandledPromptBehavior: "ignore"`) for `dialog()` to see, and the browser log is kept for
    /// `console_errors()`. Panics naming the missing binary and the apt-get command when one is missing.
    pub async fn start() -> Browser {
        let chromedriver = binary("ITSMC_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = binary("ITSMC_CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let mut driver = KillOnDrop(driver);
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(status)) = send(&http, reqwest::Method::GET, &format!("{base}/status"), None).await
                && status["ready"] == true
            {
                break;
            }
            if let Ok(Some(exit)) = driver.try_wait() {
                panic!("{} exited before it was ready: {exit}", chromedriver.display());
            }
            assert!(Instant::now() < deadline, "{} not ready on port {port} within 20 s", chromedriver.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "unhandledPromptBehavior": "ignore",
        }}});
        let created = command_at(&http, reqwest::Method::POST, &base, "/session", Some(capabilities)).await;
        let session_id = created["sessionId"].as_str().expect("a session id").to_owned();
        let session = format!("{base}/session/{session_id}");
        Browser { http, port, session, session_id, _driver: driver, _profile: profile }
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body: use `return ...`) and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Polls `condition` (an expression) until it is truthy, up to `timeout`; panics saying what it waited for. An
    /// expression that throws (the element is not there yet) counts as not yet.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> Value {
        let script =
            format!("try {{ const v = ({condition}); return [!!v, v]; }} catch (e) {{ return [false, String(e)]; }}");
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.eval(&script).await;
            if result[0] == true {
                return result[1].clone();
            }
            if Instant::now() >= deadline {
                panic!("waited {timeout:?} for `{condition}`; last value: {}", result[1]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element matching the CSS selector (through WebDriver's element click).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// The text of the first element matching the selector.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self.command(reqwest::Method::GET, &format!("/element/{element}/text"), None).await;
        text.as_str().expect("element text").to_owned()
    }

    /// The text of an open alert/confirm/prompt, if one is open. While one is, the page takes no scripts: `eval`,
    /// `wait_for`, `click` and `text` fail with "unexpected alert open".
    pub async fn dialog(&self) -> Option<String> {
        match send(&self.http, reqwest::Method::GET, &format!("{}/alert/text", self.session), None).await {
            Ok(Ok(text)) => Some(text.as_str().unwrap_or_default().to_owned()),
            Ok(Err(e)) if e.error == "no such alert" => None,
            Ok(Err(e)) => panic!("WebDriver GET /alert/text: {e}"),
            Err(e) => panic!("WebDriver GET /alert/text: {e}"),
        }
    }

    /// Console messages and page errors of level SEVERE (chromedriver's browser log), each as text. Chromedriver
    /// hands each entry out once: a second call returns only what was logged since the first.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self.post("/se/log", json!({"type": "browser"})).await;
        let entries = entries.as_array().expect("log entries");
        let severe = entries.iter().filter(|entry| entry["level"] == "SEVERE");
        severe.map(|entry| entry["message"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// A PNG screenshot of the page, written to `path` (directories created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64 PNG")).expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    async fn find(&self, css: &str) -> String {
        let found = self.post("/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("element reference for {css:?}: {found}")).to_owned()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        command_at(&self.http, method, &self.session, path, body).await
    }
}

/// Sends one command; the outer error is chromedriver not answering, the inner one a WebDriver error.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Result<Value, WebDriverError>, reqwest::Error> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response: Value = request.send().await?.json().await?;
    let value = response["value"].clone();
    Ok(match value["error"].as_str() {
        Some(error) => Err(WebDriverError {
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        }),
        None => Ok(value),
    })
}

/// Sends `path` under `base`, panicking with the command and chromedriver's message if it fails.
async fn command_at(
    http: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let what = format!("WebDriver {method} {path} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
    match send(http, method, &format!("{base}{path}"), body).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(e) => panic!("{what}: chromedriver did not answer: {e}"),
    }
}

impl Drop for Browser {
    /// Ends the session so that chromedriver closes Chromium (killing chromedriver alone would leave it running).
    /// Blocking and over a bare socket, since a drop can neither await nor count on a runtime.
    fn drop(&mut self) {
        let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session_id, self.port
        );
        if socket.write_all(request.as_bytes()).is_ok() {
            // Chromedriver answers once Chromium has quit, and then keeps the connection open despite `close`.
            let _ = socket.read(&mut [0; 512]);
        }
    }
}
