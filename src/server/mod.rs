//! The HTTP face of itsmc: one axum router for the Azure Functions host (custom handler with request
//! forwarding), local use and AWS Lambda (`crate::lambda`).
//!
//! Routes: `GET /` and `GET /api/health` (readiness), `POST /api/alert` (function-alert),
//! `POST /function-sync` (the timer, in the Functions invocation envelope), `GET /api/workitems`,
//! `GET /api/servicedesk` (the rows the sync keeps locally when no Logs Ingestion endpoint is set),
//! `POST /api/connections/{name}/test|refresh` (connection care), `GET /api/dashboard` (and `GET /` from a
//! browser when no key is set) and `POST /api/deliveries/{key}/retry` (`crate::dashboard`).

mod alert;
pub mod entra;
mod functions;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::intake::Intake;
use crate::store::{Filter, Table};
use crate::sync::{SyncKind, Syncer};

/// A JSON error answer: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message.into() } }))).into_response()
}

/// What the handlers share; each takes the part it needs (`State<Arc<Intake>>` or `State<Arc<Syncer>>`).
#[derive(Clone)]
pub struct Shared {
    pub intake: Arc<Intake>,
    pub syncer: Arc<Syncer>,
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

impl axum::extract::FromRef<Shared> for Arc<Intake> {
    fn from_ref(shared: &Shared) -> Self {
        Arc::clone(&shared.intake)
    }
}

impl axum::extract::FromRef<Shared> for Arc<Syncer> {
    fn from_ref(shared: &Shared) -> Self {
        Arc::clone(&shared.syncer)
    }
}

/// The routes; with `entra`, the alert route takes only Secure Webhook calls with a valid token.
pub fn router(intake: Arc<Intake>, syncer: Arc<Syncer>, entra: Option<Arc<entra::EntraValidator>>) -> Router {
    let mut alert = post(alert::post_alert);
    if let Some(validator) = entra {
        alert = alert.route_layer(axum::middleware::from_fn_with_state(validator, entra::require_token));
    }
    let mut routes = Router::new()
        .route("/api/health", get(health))
        .route("/api/alert", alert)
        .route("/function-sync", post(functions::timer))
        .route("/api/workitems", get(workitems))
        .route("/api/servicedesk", get(servicedesk))
        .route("/api/connections/{name}/test", post(test_connection))
        .route("/api/connections/{name}/refresh", post(refresh_connection))
        .route("/api/dashboard", get(crate::dashboard::page))
        .route("/api/deliveries/{key}/retry", post(crate::dashboard::retry));
    // The readiness probe stays open; behind a key, it says only that itsmc is ready, since the health
    // document names endpoints, connections and their problems, and reads the store.
    let readiness = match intake.config.api_key.clone() {
        Some(key) => {
            routes = routes.route_layer(axum::middleware::from_fn_with_state(Arc::new(key), require_api_key));
            get(|| async { axum::Json(json!({ "status": "ready", "version": env!("CARGO_PKG_VERSION") })) })
        }
        None => get(front),
    };
    routes
        .route("/", readiness)
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn(refuse_cross_site))
        .with_state(Shared { intake, syncer, dashboard: Default::default() })
}

/// `GET /` with no key set: the dashboard for a browser (it asks for HTML), the health document for the rest
/// (probes, scripts).
async fn front(
    state: axum::extract::State<Shared>,
    query: axum::extract::Query<crate::dashboard::PageQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_html = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        crate::dashboard::page(state, query).await
    } else {
        health(axum::extract::State(Arc::clone(&state.intake)), axum::extract::State(Arc::clone(&state.syncer))).await
    }
}

/// A browser's request to change something, sent by a page of another site (a form or `fetch` posting to
/// `127.0.0.1:7071`, where no key guards the routes): refused. Browsers say where a request comes from in
/// `Sec-Fetch-Site`; action groups, scripts and the dashboard's own buttons are not cross-site.
async fn refuse_cross_site(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let cross_site = request.headers().get("sec-fetch-site").is_some_and(|site| site == "cross-site");
    if cross_site && request.method() != axum::http::Method::GET {
        return error(StatusCode::FORBIDDEN, "cross_site", "itsmc takes no changes from another site's pages");
    }
    next.run(request).await
}

/// `ITSMC_API_KEY`, given the way the Functions host takes its keys: `?code=` or the `x-functions-key` header.
async fn require_api_key(
    axum::extract::State(key): axum::extract::State<Arc<crate::config::Secret>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use sha2::{Digest, Sha256};
    let from_query = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "code").map(|(_, value)| value)
    });
    let given = from_query
        .map(|value| value.into_owned())
        .or_else(|| request.headers().get("x-functions-key").and_then(|value| value.to_str().ok()).map(str::to_owned));
    // Comparing digests, not the keys, gives a timing attacker nothing about the key.
    let matches =
        given.is_some_and(|given| Sha256::digest(given.as_bytes()) == Sha256::digest(key.expose().as_bytes()));
    if matches {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs the key set in ITSMC_API_KEY, as ?code= or the x-functions-key header",
        )
    }
}

async fn health(
    axum::extract::State(intake): axum::extract::State<Arc<Intake>>,
    axum::extract::State(syncer): axum::extract::State<Arc<Syncer>>,
) -> Response {
    let mut warnings = Vec::new();
    let mut sync = Vec::new();
    for connection in &intake.config.connections {
        let store = intake.store.as_ref();
        for (kind, mark) in crate::sync::watermark::of_connection(store, &intake.config.sync.kinds, connection).await {
            let state = match mark {
                Ok(Some(mark)) => {
                    if let Some(error) = &mark.last_error {
                        warnings.push(format!(
                            "connection '{}': the last {} sync stopped: {error}",
                            connection.name,
                            kind.name()
                        ));
                    }
                    json!({ "watermark": mark.updated, "sent": mark.sent, "lastRunAt": mark.last_run_at, "lastError": mark.last_error })
                }
                Ok(None) => json!({ "watermark": null }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            sync.push(json!({ "connection": connection.name, "type": kind.name(), "state": state }));
        }
    }
    let connections: Vec<_> = intake
        .config
        .connections
        .iter()
        .map(|c| {
            let credentials = intake.connection(&c.name).and_then(|(_, connector)| connector.credentials_status());
            if credentials.as_ref().is_some_and(|s| s["refreshTokenExpiresSoon"] == true) {
                warnings.push(format!(
                    "connection '{}': the OAuth refresh token runs out at {}; itsmc will sign in with the password then",
                    c.name,
                    credentials.as_ref().map_or("", |s| s["refreshTokenEndsAt"].as_str().unwrap_or_default())
                ));
            }
            let status = intake.connection_status.get(&c.name);
            if let Some(problem) = status.as_ref().filter(|d| !d.ok) {
                warnings.push(format!("connection '{}': {} ({})", c.name, problem.message, problem.code));
            }
            json!({
                "name": c.name,
                "product": c.product.name(),
                "status": status,
                "workItemType": c.work_item_type,
                "grouping": c.grouping,
                "credentials": credentials,
            })
        })
        .collect();
    axum::Json(json!({
        "status": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "store": intake.store.describe(),
        "connections": connections,
        "sync": { "destination": syncer.sink.describe(), "runs": sync },
        "warnings": warnings,
    }))
    .into_response()
}

/// Recent operations (this instance, newest first), pending and dead-lettered deliveries (all
/// instances, from the store), and what dry-run connections would have sent.
async fn workitems(axum::extract::State(intake): axum::extract::State<Arc<Intake>>) -> Response {
    let mut lists = serde_json::Map::new();
    for state in ["pending", "dead"] {
        let mut rows = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = match intake
                .store
                .scan(Table::Deliveries, Some(Filter { field: "state", value: state }), continuation.as_deref(), 1000)
                .await
            {
                Ok(page) => page,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
            };
            for entry in page.entries {
                let v = &entry.value;
                rows.push(json!({
                    "delivery": entry.key,
                    "connection": v["connection"],
                    "rule": v["rule"],
                    "condition": v["condition"],
                    "attempts": v["attempts"],
                    "firstSeenAt": v["firstSeenAt"],
                    "nextAttemptAt": v["nextAttemptAt"],
                    "lastError": v["lastError"],
                }));
            }
            match page.continuation {
                Some(c) if rows.len() < 10_000 => continuation = Some(c),
                _ => break,
            }
        }
        lists.insert(state.to_string(), rows.into());
    }
    axum::Json(json!({
        "recent": intake.recent(),
        "pending": lists.remove("pending"),
        "deadLetters": lists.remove("dead"),
        "dryRun": intake.journal.recent(),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct ServiceDeskQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// The `ServiceDesk_CL` rows the sync kept locally (no Logs Ingestion endpoint), latest first.
async fn servicedesk(
    axum::extract::State(syncer): axum::extract::State<Arc<Syncer>>,
    axum::extract::Query(query): axum::extract::Query<ServiceDeskQuery>,
) -> Response {
    let kind = match query.kind.as_deref().map(SyncKind::parse) {
        None => SyncKind::Incident,
        Some(Some(kind)) => kind,
        Some(None) => {
            return error(StatusCode::BAD_REQUEST, "invalid_option", "type: use Incident or ChangeRequest");
        }
    };
    if let crate::ingest::Sink::LogsIngestion(client) = syncer.sink.as_ref() {
        return error(
            StatusCode::CONFLICT,
            "not_local",
            format!("rows go to Log Analytics ({}); query ServiceDesk_CL there", client.describe()),
        );
    }
    let limit = query.limit.unwrap_or(1000).clamp(1, 100_000);
    match crate::ingest::local::LocalRows::rows(syncer.intake.store.as_ref(), kind.name(), usize::MAX).await {
        Ok(mut rows) => {
            let modified = |row: &serde_json::Value| row["LastModifiedDate_t"].as_str().unwrap_or_default().to_string();
            rows.sort_by_key(|row| std::cmp::Reverse(modified(row)));
            let total = rows.len();
            rows.truncate(limit);
            axum::Json(json!({ "type": kind.name(), "total": total, "rows": rows })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    }
}

/// `POST /api/connections/{name}/test`: whether the connection works, and if not why (`code`, `message`).
async fn test_connection(
    axum::extract::State(intake): axum::extract::State<Arc<Intake>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match crate::connections::test(&intake, &name).await {
        Ok(diagnosis) => axum::Json(diagnosis).into_response(),
        Err(message) => error(StatusCode::NOT_FOUND, "unknown_connection", message),
    }
}

/// `POST /api/connections/{name}/refresh`: read the tool's choice lists and templates now, keep them, and
/// check the connection's settings against them (ITSMC's Sync button).
async fn refresh_connection(
    axum::extract::State(intake): axum::extract::State<Arc<Intake>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match crate::connections::refresh(&intake, &name).await {
        Ok(refreshed) => axum::Json(refreshed).into_response(),
        Err(message) => error(StatusCode::NOT_FOUND, "unknown_connection", message),
    }
}
