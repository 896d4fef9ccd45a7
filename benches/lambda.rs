//! The Lambda adapter's cost per request, beside the plain router in the same run: the same requests
//! answered by the axum router directly (`plain`: an `http::Request` in, the body collected) and through
//! `lambda::Function::invoke` (`lambda`: the Function URL event's JSON bytes parsed into an invocation as
//! lambda_runtime does, converted by lambda_http, answered, and serialized back to JSON). Neither includes
//! a network hop: `plain`'s socket and Lambda's Runtime API calls are both left out, so the difference is
//! the adapter's own work.
//!
//! Requests: `GET /` (readiness: the health document, reading the store) and a duplicate alert (answered
//! from memory, the alert route's fastest path), on the embedded defaults.
//!
//! Run: `cargo bench --bench lambda`.

#[path = "support/app.rs"]
mod app;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use itsmc::lambda::{Function, Invocation};
use lambda_http::LambdaEvent;
use serde_json::{Value, json};
use tower::ServiceExt;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).expect("fixture")
}

fn function_url_event(method: &str, path: &str, body: &str) -> Vec<u8> {
    let mut event: Value = serde_json::from_str(&fixture("aws/function-url-request.json")).unwrap();
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["body"] = json!(body);
    serde_json::to_vec(&event).unwrap()
}

fn adapter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, _dir) = app::embedded(&runtime);
    let router = app.router();
    let function = Function::new(app);
    let alert = fixture("azure-monitor/cas-test-metric-static-fired.json");
    // The first delivery creates the work item; every later one is a duplicate.
    let first = runtime.block_on(
        router.clone().oneshot(http::Request::post("/api/alert").body(axum::body::Body::from(alert.clone())).unwrap()),
    );
    assert_eq!(first.unwrap().status(), 200);

    let requests = [("readiness", "GET", "/", String::new()), ("duplicate_alert", "POST", "/api/alert", alert)];
    let mut group = c.benchmark_group("lambda_adapter");
    for (name, method, path, body) in &requests {
        group.bench_function(format!("plain/{name}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let request = http::Request::builder()
                    .method(*method)
                    .uri(*path)
                    .body(axum::body::Body::from(body.clone()))
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert!(response.status().is_success());
                black_box(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap())
            })
        });
        let event = function_url_event(method, path, body);
        group.bench_function(format!("lambda/{name}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let payload: Invocation = serde_json::from_slice(&event).unwrap();
                let answer = function.invoke(LambdaEvent::new(payload, Default::default())).await.unwrap();
                black_box(answer.get().len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, adapter);
criterion_main!(benches);
