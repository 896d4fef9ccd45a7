//! The WebDriver client of `support::browser` against two static pages served on 127.0.0.1: reading the DOM,
//! clicking, waiting, a screenshot, and seeing an alert and a console error. Needs chromium and chromedriver
//! (`.ci/run` installs them).

mod support;

use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use support::browser::Browser;
use support::serve::Server;

/// A counter the button increments a moment after the click, so that the test has to wait for it.
const COUNTER: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>counter</title></head>
<body>
<p id="x">Hello from the smoke test</p>
<p>Count: <span id="count">0</span> <button id="more">+1</button></p>
<script>
document.getElementById("more").addEventListener("click", () => setTimeout(() => {
    const count = document.getElementById("count");
    count.textContent = String(Number(count.textContent) + 1);
}, 100));
</script>
</body></html>"#;

const NOISY: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>noisy</title></head>
<body><script>console.error("boom"); alert("hi");</script></body></html>"#;

fn pages() -> (Server, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = Router::new().route("/", get(|| async { Html(COUNTER) })).route("/noisy", get(|| async { Html(NOISY) }));
    (Server::http("browser-pages", listener, app), url)
}

#[tokio::test]
async fn browser_reads_clicks_waits_and_sees_dialogs_and_console_errors() {
    let (_server, url) = pages();
    let browser = Browser::start().await;

    browser.goto(&format!("{url}/")).await;
    assert_eq!(browser.text("#x").await, "Hello from the smoke test");
    assert_eq!(browser.text("#count").await, "0");
    browser.click("#more").await;
    let count = browser.wait_for("Number(document.getElementById('count').textContent)", Duration::from_secs(5)).await;
    assert_eq!(count, 1);
    assert_eq!(browser.eval("return document.title").await, "counter");
    assert_eq!(browser.dialog().await, None);
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-smoke.png");
    let _ = std::fs::remove_file(&screenshot);
    browser.screenshot(&screenshot).await;
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {:?}", &png[..png.len().min(8)]);

    browser.goto(&format!("{url}/noisy")).await;
    assert_eq!(browser.dialog().await.as_deref(), Some("hi"));
    let errors = browser.console_errors().await;
    assert!(errors.iter().any(|e| e.contains("boom")), "console errors: {errors:?}");
}
