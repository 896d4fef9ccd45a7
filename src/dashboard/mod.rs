//! The web dashboard: ITSMC's four tiles (work items created, impacted computers, connector status, alert rules),
//! the synced records by state and priority, and each connection's health with its test, refresh and retry
//! buttons. Served at `GET /` to browsers when no API key is set, and at `GET /api/dashboard` (behind the key,
//! or the function key through the Functions host).
//!
//! `snapshot` reads what is shown from the store, `page` renders it. A page renders from the last snapshot;
//! one older than [`MAX_AGE`] is rebuilt in the background for the next view, so a page view never waits on a
//! read of the whole store, except the first and those asking `?fresh=1` (the Refresh button).

mod page;
pub mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use snapshot::Snapshot;

use crate::server::{Shared, error};
use crate::store::StoreError;

/// How old a snapshot may be before a page view starts a new one.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// The last snapshot, shared by the page views of this instance.
#[derive(Default)]
pub struct Dashboard {
    /// The snapshot and when its read started.
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// Held while a snapshot is read: one read of the store at a time, whoever asks.
    reading: tokio::sync::Mutex<()>,
    /// Whether a background read is under way or queued.
    rebuilding: AtomicBool,
}

impl Dashboard {
    /// The snapshot to render: the last one (starting a rebuild when it is old), or a new one when there is none
    /// or `fresh` asks for it.
    pub async fn snapshot(self: &Arc<Self>, shared: &Shared, fresh: bool) -> Result<Arc<Snapshot>, StoreError> {
        let asked = Instant::now();
        match self.last() {
            Some((at, snapshot)) if !fresh => {
                if at.elapsed() > MAX_AGE && !self.rebuilding.swap(true, Ordering::AcqRel) {
                    let (dashboard, shared) = (Arc::clone(self), shared.clone());
                    tokio::spawn(async move {
                        // Cleared however the read ends, a panic included, so that views go on starting reads.
                        let _clear = Clear(&dashboard.rebuilding);
                        if let Err(e) = dashboard.read(&shared, asked).await {
                            tracing::warn!(error = %e, "the dashboard could not read the store");
                        }
                    });
                }
                Ok(snapshot)
            }
            _ => self.read(&shared.clone(), asked).await,
        }
    }

    fn last(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.last.lock().ok().and_then(|last| last.clone())
    }

    /// A snapshot read after `asked`: the one a read that started meanwhile made, or a new one.
    async fn read(&self, shared: &Shared, asked: Instant) -> Result<Arc<Snapshot>, StoreError> {
        let _reading = self.reading.lock().await;
        if let Some((_, snapshot)) = self.last().filter(|(at, _)| *at >= asked) {
            return Ok(snapshot);
        }
        let started = Instant::now();
        let snapshot = Arc::new(snapshot::build(&shared.intake, &shared.syncer).await?);
        if let Ok(mut last) = self.last.lock() {
            *last = Some((started, Arc::clone(&snapshot)));
        }
        Ok(snapshot)
    }
}

struct Clear<'a>(&'a AtomicBool);

impl Drop for Clear<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The page rendered from `snapshot`.
pub fn render(snapshot: &Snapshot, shared: &Shared) -> String {
    page::render(snapshot, env!("CARGO_PKG_VERSION"), &shared.intake.store.describe())
}

#[derive(serde::Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    fresh: Option<String>,
}

/// `GET /api/dashboard` (and `GET /` from a browser when no key is set). The `Server-Timing` header says how
/// long reading the store (when this view did) and rendering took.
pub async fn page(State(shared): State<Shared>, Query(query): Query<PageQuery>) -> Response {
    let started = Instant::now();
    let fresh = query.fresh.is_some_and(|f| f != "0");
    let snapshot = match shared.dashboard.snapshot(&shared, fresh).await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    };
    let read = started.elapsed();
    let html = render(&snapshot, &shared);
    let timing = format!(
        "snapshot;dur={:.2}, render;dur={:.2}",
        read.as_secs_f64() * 1e3,
        (started.elapsed() - read).as_secs_f64() * 1e3
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::HeaderName::from_static("server-timing"), timing),
            (header::CONTENT_SECURITY_POLICY, page::CONTENT_SECURITY_POLICY.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
            // `/` answers HTML or JSON by what is asked.
            (header::VARY, "accept".to_string()),
        ],
        html,
    )
        .into_response()
}

/// `POST /api/deliveries/{key}/retry`: a dead letter back in the outbox.
pub async fn retry(State(shared): State<Shared>, axum::extract::Path(key): axum::extract::Path<String>) -> Response {
    use crate::outbox::Revived;
    let unknown = || error(StatusCode::NOT_FOUND, "unknown_delivery", format!("no delivery {key}"));
    // Delivery keys are hex: anything else names none (and would only trouble the store).
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return unknown();
    }
    match crate::outbox::revive(&shared.intake, &key).await {
        Ok(Revived::Pending) => axum::Json(Revived::Pending).into_response(),
        Ok(Revived::NotFound) => unknown(),
        Ok(Revived::NotDead { state }) => error(
            StatusCode::CONFLICT,
            "not_dead",
            format!("delivery {key} is {state}, not dead-lettered: there is nothing to retry"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    }
}
