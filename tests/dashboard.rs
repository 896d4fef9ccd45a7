//! The dashboard in headless Chromium (through chromedriver, `support::browser`), against itsmc with a ServiceNow
//! emulator, alerts posted through the alert route, a dead letter, and a sync into the local rows: the tiles'
//! numbers are what the store holds, Refresh, Retry and Test work in place, and markup carried by alert and ITSM
//! values stays text. Needs chromium and chromedriver (`.ci/run` installs them).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use itsmc::store::Table;
use serde_json::{Map, Value, json};
use support::browser::Browser;
use support::harness::{Itsmc, fixture, metric_alert};
use support::itsm::start_itsmc;
use support::servicenow::{EmulatorConfig, ServiceNowEmulator};

const WAIT: Duration = Duration::from_secs(10);

/// Markup an attacker could put in an alert rule's name or a computer's name, or a person in an ITSM record: each
/// sets `window.__pwned` if it ever runs.
const SCRIPT_RULE: &str = "<script>window.__pwned='rule'</script>";
const IMG_COMPUTER: &str = "\"><img src=x onerror=\"window.__pwned='computer'\">";
const SVG_STATE: &str = "<svg onload=\"window.__pwned='state'\"></svg>";

/// A metric alert of `rule` about `computer`, with markup in its description and custom properties too.
fn alert(id: &str, rule: &str, computer: &str) -> String {
    let mut body: Value = serde_json::from_str(&metric_alert(id, "Fired", "2026-11-25T12:00:00Z", "Sev2")).unwrap();
    let essentials = &mut body["data"]["essentials"];
    essentials["alertRule"] = json!(rule);
    essentials["configurationItems"] = json!([computer]);
    essentials["description"] = json!("<b onmouseover=\"window.__pwned='description'\">hover</b>");
    body["data"]["customProperties"] = json!({ "note": "javascript:window.__pwned='property'", "svg": SVG_STATE });
    body.to_string()
}

/// What the store holds, counted as the tiles count it: links with a work item, their distinct computers and
/// rules.
async fn stored(itsmc: &Itsmc) -> (usize, usize, usize) {
    let page = itsmc.intake.store.scan(Table::Links, None, None, 10_000).await.unwrap();
    let links: Vec<&Value> = page.entries.iter().map(|e| &e.value).filter(|v| v["workItem"].is_object()).collect();
    let distinct = |field: &str| {
        links.iter().filter_map(|v| v[field].as_str()).filter(|s| !s.is_empty()).collect::<BTreeSet<_>>().len()
    };
    (links.len(), distinct("configurationItem"), distinct("rule"))
}

/// Clicks Refresh and waits until the page shows what it read (the button is disabled until then).
async fn refresh(browser: &Browser) {
    browser.click("#refresh").await;
    browser.wait_for("!document.getElementById('refresh').disabled", WAIT).await;
}

async fn tile(browser: &Browser, id: &str) -> usize {
    let value = browser.eval(&format!("return document.querySelector('#{id} .value').dataset.value")).await;
    value.as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("tile {id} has no number: {value}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_store_its_buttons_work_and_hostile_values_stay_text() {
    let servicenow = ServiceNowEmulator::start(EmulatorConfig::default());
    let now = Utc::now();
    servicenow.seed_incidents(30, now - chrono::Duration::days(3), now - chrono::Duration::hours(1));
    servicenow.seed_change_requests(8, now - chrono::Duration::days(3), now - chrono::Duration::hours(1));
    let mut hostile = Map::new();
    hostile.insert("short_description".into(), json!("markup in a record"));
    hostile.insert("state".into(), json!(SVG_STATE));
    servicenow.seed("incident", [hostile]);
    let itsmc = start_itsmc(&servicenow, None, &[]).await;

    for i in 0..6 {
        let (status, answer) =
            itsmc.alert("", &alert(&format!("cpu-{i}"), &format!("cpu-{}", i % 3), &format!("vm{}", i % 4))).await;
        assert_eq!((status, answer["action"].as_str()), (200, Some("created")), "{answer}");
    }
    let (status, answer) = itsmc.alert("", &alert("hostile", SCRIPT_RULE, IMG_COMPUTER)).await;
    assert_eq!(status, 200, "{answer}");
    // ServiceNow refuses the next request outright: that alert is dead-lettered.
    servicenow.fail_next(1, 400, None);
    let (_, refused) = itsmc.alert("", &alert("refused", "disk-full", "db1")).await;
    let (_, workitems) = itsmc.get("/api/workitems").await;
    assert_eq!(workitems["deadLetters"].as_array().map(Vec::len), Some(1), "{refused} {workitems}");
    let (status, synced) =
        itsmc.post("/function-sync", fixture("protocols/functions-customhandler-timer-request.json")).await;
    assert_eq!(status, 200, "{synced}");

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", itsmc.url)).await;
    browser.wait_for("document.querySelector('#tile-created .value')", WAIT).await;

    // The four tiles are what the store holds.
    let (work_items, computers, rules) = stored(&itsmc).await;
    assert_eq!(work_items, 7, "six alerts and the hostile one made work items");
    assert_eq!(tile(&browser, "tile-created").await, work_items);
    assert_eq!(tile(&browser, "tile-computers").await, computers);
    assert_eq!(tile(&browser, "tile-rules").await, rules);
    assert_eq!(tile(&browser, "tile-status").await, 1, "the connection with a dead letter has a problem");
    // The synced incidents: every record the local rows keep, counted.
    let kept =
        itsmc::ingest::local::LocalRows::rows(itsmc.intake.store.as_ref(), "Incident", usize::MAX).await.unwrap();
    let shown = browser.eval("return document.querySelector('[data-kind=Incident] .rows').dataset.value").await;
    assert_eq!(shown.as_str().and_then(|v| v.parse().ok()), Some(kept.len()), "synced incidents");
    assert_eq!(kept.len(), servicenow.count("incident"), "every incident of the instance was synced");

    // Nothing that came with an alert or a record ran, and it all shows as the text it is.
    assert_eq!(browser.eval("return window.__pwned === undefined").await, true, "an injected script ran");
    assert_eq!(browser.dialog().await, None);
    let injected = "return document.querySelectorAll('main script, main img, main [onerror], main [onload], \
                    main [onmouseover], main svg:not(.chart), main svg.chart svg').length";
    assert_eq!(browser.eval(injected).await, 0, "markup from values became elements");
    assert!(browser.text("#rules").await.contains(SCRIPT_RULE), "the rule's name shows as text");
    assert!(browser.text("#computers").await.contains(IMG_COMPUTER.trim_start_matches('"')), "and the computer's");
    assert!(browser.text("#synced").await.contains(SVG_STATE), "and the record's state");

    // Refresh shows what changed since the page was read.
    let (_, answer) = itsmc.alert("", &alert("late", "memory-high", "vm9")).await;
    assert_eq!(answer["action"], "created");
    refresh(&browser).await;
    assert_eq!(tile(&browser, "tile-created").await, work_items + 1);

    // Test says in place that the connection works.
    browser.click("[data-connection] button[data-post$='/test']").await;
    let result = browser.wait_for("document.querySelector('[data-connection] output.done')?.textContent", WAIT).await;
    assert!(result.as_str().is_some_and(|r| r.starts_with("ok: ")), "{result}");

    // Retry puts the dead letter back; ServiceNow takes it now, and the page shows its work item.
    browser.click("#dead-letters button[data-post$='/retry']").await;
    let result = browser.wait_for("document.querySelector('#dead-letters output.done')?.textContent", WAIT).await;
    assert_eq!(result, "back in the outbox");
    let created = work_items + 2;
    let mut shown = 0;
    for _ in 0..50 {
        refresh(&browser).await;
        shown = tile(&browser, "tile-created").await;
        if shown == created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(shown, created, "the retried alert made its work item");
    assert_eq!(stored(&itsmc).await.0, created);
    assert!(browser.text("#dead-letters").await.starts_with("Dead letters\nNone"), "no dead letter is left");

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    browser.screenshot(&screenshot).await;
    assert!(std::fs::read(&screenshot).unwrap().starts_with(b"\x89PNG"), "a PNG screenshot");
}

/// Behind `ITSMC_API_KEY`, the dashboard is at `/api/dashboard` with the key, and `/` stays the readiness answer.
#[tokio::test]
async fn behind_a_key_the_dashboard_needs_it() {
    let itsmc = Itsmc::start(&[("ITSMC_API_KEY", "k3y-for-the-dashboard")]).await;
    let client = reqwest::Client::new();
    let html = |path: &str| client.get(format!("{}{path}", itsmc.url)).header("accept", "text/html").send();
    let refused = html("/api/dashboard").await.unwrap();
    assert_eq!(refused.status(), 401);
    let page = html("/api/dashboard?code=k3y-for-the-dashboard").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'sha256-"));
    assert!(page.text().await.unwrap().contains("id=\"tile-created\""));
    let front = html("/").await.unwrap();
    let ready: Value = front.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "/ says only that itsmc is ready");
}

/// The buttons' routes: another site's page cannot press them, and Retry answers for what it is given.
#[tokio::test]
async fn button_routes_refuse_other_sites_and_name_what_they_cannot_retry() {
    let itsmc = Itsmc::start(&[]).await;
    let client = reqwest::Client::new();
    let post = |path: &str, site: &'static str| {
        client.post(format!("{}{path}", itsmc.url)).header("sec-fetch-site", site).send()
    };
    let from_elsewhere = post("/api/connections/default/test", "cross-site").await.unwrap();
    assert_eq!(from_elsewhere.status(), 403);
    let body: Value = from_elsewhere.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cross_site");
    assert_eq!(post("/api/connections/default/test", "same-origin").await.unwrap().status(), 200);

    let (status, answer) = itsmc.alert("", &alert("done-1", "cpu", "vm1")).await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("created")));
    let page = itsmc.intake.store.scan(Table::Deliveries, None, None, 10).await.unwrap();
    let done = &page.entries[0].key;
    for (path, status, code) in [
        (format!("/api/deliveries/{done}/retry"), 409, "not_dead"),
        ("/api/deliveries/00ff/retry".to_string(), 404, "unknown_delivery"),
        ("/api/deliveries/not%2Fhex/retry".to_string(), 404, "unknown_delivery"),
    ] {
        let (got, body) = itsmc.post(&path, "").await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
}
