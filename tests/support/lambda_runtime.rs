//! The AWS Lambda Runtime API in a box: the HTTP interface Lambda gives a custom runtime inside the
//! execution environment (`http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/...`). The test hands it events;
//! itsmc (the `bootstrap`, started as Lambda starts it: no arguments, the `AWS_LAMBDA_*` variables set)
//! fetches them with lambda_runtime and posts its answers back, exactly as on Lambda.
//!
//! # What it emulates, and from which public material
//!
//! Source: the Lambda Developer Guide, "Using the Lambda runtime API for custom runtimes" (API version
//! 2018-06-01) and "Defined runtime environment variables".
//! - `GET /2018-06-01/runtime/invocation/next` waits (no timeout) until an event is queued, then answers
//!   200 with the event as the body and the headers `Lambda-Runtime-Aws-Request-Id`,
//!   `Lambda-Runtime-Deadline-Ms` (epoch milliseconds), `Lambda-Runtime-Invoked-Function-Arn` and
//!   `Lambda-Runtime-Trace-Id`.
//! - `POST /2018-06-01/runtime/invocation/{id}/response` takes the answer: 202 `{"status":"OK"}`; an id
//!   that is not the one in flight 400 (`InvalidRequestID`); a body over 6 MB 413 (the synchronous
//!   invocation payload limit).
//! - `POST /2018-06-01/runtime/invocation/{id}/error` and `POST /2018-06-01/runtime/init/error` take
//!   `{errorMessage, errorType}` (and the `Lambda-Runtime-Function-Error-Type` header): 202.
//! - [`LambdaRuntime::environment`] gives the variables Lambda defines for a function
//!   (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`, `_MEMORY_SIZE`, `_VERSION`, log group and stream).
//!
//! # What it leaves out
//!
//! Several environments, freezing between invocations, timeouts that kill the process, streaming
//! responses, extensions and the telemetry API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use super::serve::{Server, lock};

/// The largest response a synchronous invocation may return.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The function's answer, parsed as JSON.
    Response(Value),
    /// `/invocation/{id}/error`: `{errorType, errorMessage}`.
    Error(Value),
}

#[derive(Default)]
struct Queue {
    waiting: std::collections::VecDeque<(String, Bytes)>,
    answers: HashMap<String, oneshot::Sender<Outcome>>,
    in_flight: Option<String>,
    init_error: Option<Value>,
    next_calls: usize,
}

#[derive(Clone, Default)]
struct Shared {
    queue: Arc<Mutex<Queue>>,
    arrived: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        lock(&self.queue)
    }
}

pub struct LambdaRuntime {
    addr: std::net::SocketAddr,
    shared: Shared,
    _server: Server,
    sequence: std::sync::atomic::AtomicU64,
}

impl LambdaRuntime {
    pub fn start() -> LambdaRuntime {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("lambda runtime: bind");
        let addr = listener.local_addr().expect("lambda runtime: address");
        let shared = Shared::default();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(invocation_error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let server = Server::http("lambda-runtime-api", listener, app);
        LambdaRuntime { addr, shared, _server: server, sequence: Default::default() }
    }

    /// The variables Lambda sets for the runtime process.
    pub fn environment(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "itsmc".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/itsmc".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/25/[$LATEST]0123456789abcdef".into()),
            ("AWS_REGION", "eu-west-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Queue `event` and wait (up to `timeout`) for the function to answer it.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> Outcome {
        let n = self.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("8476a536-e9f4-11e8-9739-{n:012x}");
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.shared.lock();
            queue.answers.insert(id.clone(), answer);
            queue.waiting.push_back((id.clone(), Bytes::from(event.to_string())));
        }
        self.shared.arrived.notify_waiters();
        self.shared.arrived.notify_one();
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(outcome)) => outcome,
            _ => panic!("lambda runtime: invocation {id} had no answer within {timeout:?}"),
        }
    }

    /// What the runtime reported to `/runtime/init/error`, if anything.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.lock().init_error.clone()
    }

    /// How many times the runtime asked for the next event.
    pub fn next_calls(&self) -> usize {
        self.shared.lock().next_calls
    }
}

async fn next(State(shared): State<Shared>) -> Response {
    shared.lock().next_calls += 1;
    loop {
        let notified = shared.arrived.notified();
        if let Some((id, event)) = {
            let mut queue = shared.lock();
            let taken = queue.waiting.pop_front();
            if let Some((id, _)) = &taken {
                queue.in_flight = Some(id.clone());
            }
            taken
        } {
            let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(300);
            return (
                StatusCode::OK,
                [
                    ("content-type", "application/json".to_string()),
                    ("lambda-runtime-aws-request-id", id),
                    ("lambda-runtime-deadline-ms", deadline.as_millis().to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:eu-west-1:123456789012:function:itsmc".into(),
                    ),
                    (
                        "lambda-runtime-trace-id",
                        "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1".into(),
                    ),
                ],
                event,
            )
                .into_response();
        }
        notified.await;
    }
}

/// The in-flight invocation's answer channel, if `id` is that invocation.
fn take_answer(shared: &Shared, id: &str) -> Option<oneshot::Sender<Outcome>> {
    let mut queue = shared.lock();
    if queue.in_flight.as_deref() != Some(id) {
        return None;
    }
    queue.in_flight = None;
    queue.answers.remove(id)
}

fn invalid_request_id(id: &str) -> Response {
    let body = json!({ "errorMessage": format!("Invalid request ID: {id}"), "errorType": "InvalidRequestID" });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn response(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    if body.len() > MAX_RESPONSE_BYTES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(json!({ "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).", "errorType": "RequestEntityTooLarge" })),
        )
            .into_response();
    }
    let Some(answer) = take_answer(&shared, &id) else { return invalid_request_id(&id) };
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    let _ = answer.send(Outcome::Response(value));
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}

fn error_body(headers: &HeaderMap, body: &Bytes) -> Value {
    let mut value: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| json!({ "errorMessage": String::from_utf8_lossy(body) }));
    if let Some(kind) = headers.get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()) {
        value["headerErrorType"] = Value::String(kind.to_string());
    }
    value
}

async fn invocation_error(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(answer) = take_answer(&shared, &id) else { return invalid_request_id(&id) };
    let _ = answer.send(Outcome::Error(error_body(&headers, &body)));
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}

async fn init_error(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    shared.lock().init_error = Some(error_body(&headers, &body));
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}
