//! One sync of one connection and kind: read pages of changes from the watermark on, send them in
//! batches, move the watermark after each accepted batch.
//!
//! Reading, building and sending overlap: a reader task fetches the next page through a channel of two
//! pages, and up to two batches upload in their own tasks while the next is built, so memory holds a few
//! pages and three batches whatever the backlog.
//!
//! Pages are keyset pages in (update time, id) order: `Since(t)` asks for records updated at or after `t`,
//! and what was already read at `t` is dropped here. A page that holds only one second cannot move `t`
//! on, so the rest of that second is read by id (`Within`), then the sync continues `After` it. Offsets are
//! never used: they skip records while the data changes underneath.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::watermark::{self, Watermark};
use super::{Change, SyncKind, Window, kinds};
use crate::config::{OutboxSettings, SyncSettings};
use crate::ingest::{Batch, Batcher, IngestError, Sink};
use crate::itsm::{Connector, ItsmError};
use crate::store::{Store, StoreError, Table};
use crate::sync::schema;

/// How a run of one connection and kind went; summed into the timer's answer and the connector log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindReport {
    pub connection: String,
    pub kind: &'static str,
    /// Records the ITSM tool returned.
    pub read: u64,
    /// Rows Logs Ingestion accepted.
    pub sent: u64,
    /// Records re-read in the overlap or at a page boundary and not sent again.
    pub skipped: u64,
    pub batches: u64,
    /// Batches the service refused for good (kept in the `sync` table for inspection).
    pub refused: u64,
    /// Requests made to the ITSM tool.
    pub requests: u64,
    /// The watermark after the run.
    pub watermark: String,
    /// Why the run stopped early; `None` when it read everything there was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the error needs an operator (wrong setup) rather than time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub setup_error: bool,
    pub duration_ms: u64,
}

/// One line for logs and the command line: `prod Incident: 40 read, 40 sent, ...`.
impl std::fmt::Display for KindReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} read, {} sent, {} skipped, {} batches, {} refused, watermark {}, {} ms",
            self.connection,
            self.kind,
            self.read,
            self.sent,
            self.skipped,
            self.batches,
            self.refused,
            self.watermark,
            self.duration_ms
        )
    }
}

/// What the reader hands to the sender.
enum Read {
    Page(Vec<Change>),
    Failed(ItsmError),
    /// Out of time: what was read is sent, the rest waits for the next run.
    OutOfTime,
}

/// Everything one run needs.
pub struct Job<'a> {
    pub store: &'a dyn Store,
    pub sink: Arc<Sink>,
    pub connector: Arc<dyn Connector>,
    pub connection: &'a str,
    pub kind: SyncKind,
    pub settings: &'a SyncSettings,
    pub retry: &'a OutboxSettings,
    /// Start this many days back instead of at the watermark (`itsmc sync --since`).
    pub since_days: Option<u32>,
    pub deadline: Instant,
    /// Called after each accepted batch with the report so far.
    pub progress: &'a (dyn Fn(&KindReport) + Sync),
}

impl Job<'_> {
    pub async fn run(self) -> KindReport {
        let started = Instant::now();
        let mut report =
            KindReport { connection: self.connection.to_string(), kind: self.kind.name(), ..KindReport::default() };
        if let Err(error) = self.sync(&mut report).await {
            report.setup_error = matches!(error, Stop::Ingest(IngestError::Setup(_)));
            report.error = Some(error.to_string());
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        report
    }

    async fn sync(&self, report: &mut KindReport) -> Result<(), Stop> {
        let key = watermark::key(self.connection, self.kind);
        let now = chrono::Utc::now();
        let (mut mark, mut etag) = match (self.since_days, watermark::load(self.store, &key).await?) {
            (None, Some((mark, etag))) => (mark, Some(etag)),
            // A first sync, or `--since`: from the start of the scope, keeping the count of rows sent.
            (since, stored) => {
                let days = since.unwrap_or(self.settings.days);
                let start = kinds::format_time(now - chrono::Duration::days(i64::from(days)));
                let sent = stored.as_ref().map_or(0, |(mark, _)| mark.sent);
                (Watermark { sent, ..Watermark::starting_at(start) }, stored.map(|(_, etag)| etag))
            }
        };
        report.watermark = mark.updated.clone();
        let start = self.overlap_before(&mark.updated).unwrap_or_else(|| mark.updated.clone());

        let (pages, mut received) = mpsc::channel(2);
        let reader = tokio::spawn(read_pages(
            Arc::clone(&self.connector),
            self.kind,
            start,
            self.settings.page_size,
            self.deadline,
            self.retry.clone(),
            pages,
        ));
        let _stop_reader = AbortOnDrop(reader);

        let time_generated = schema::service_desk().index("TimeGenerated");
        let now_text = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut batcher = Batcher::new(schema::service_desk(), self.settings.batch_bytes);
        // The rows in the batcher: their position and fingerprint, and the last one's position.
        let mut gathered: Vec<(String, u64)> = Vec::new();
        let mut last: Option<(String, String)> = None;
        let mut uploads: VecDeque<Upload> = VecDeque::new();
        let mut outcome = Ok(());
        'read: while let Some(read) = received.recv().await {
            let page = match read {
                Read::Page(page) => page,
                Read::Failed(error) => {
                    outcome = Err(Stop::Itsm(error));
                    break;
                }
                Read::OutOfTime => break,
            };
            report.requests += 1;
            report.read += page.len() as u64;
            for mut change in page {
                let print = watermark::fingerprint(&change.id, &change.updated);
                if mark.was_sent(&change.updated, print) {
                    report.skipped += 1;
                    continue;
                }
                change.row.set(time_generated, now_text.as_str());
                if let Some(batch) = batcher.push(&change.row) {
                    let (updated, id) = last.clone().expect("a full batch has a last row");
                    if uploads.len() == UPLOADS_IN_FLIGHT
                        && let Some(oldest) = uploads.pop_front()
                        && let Err(stop) = self.finish(oldest, &key, &mut mark, &mut etag, &mut batcher, report).await
                    {
                        outcome = Err(stop);
                        break 'read;
                    }
                    uploads.push_back(self.upload(batch, updated, id, std::mem::take(&mut gathered)));
                }
                gathered.push((change.updated.clone(), print));
                last = Some((change.updated, change.id));
            }
        }
        if outcome.is_ok()
            && let (Some(batch), Some((updated, id))) = (batcher.take(), last)
        {
            uploads.push_back(self.upload(batch, updated, id, gathered));
        }
        // In order: the watermark follows the batches as they were read. After a failure it stays, and what
        // later uploads delivered anyway is remembered so the next run does not send it again.
        while let Some(upload) = uploads.pop_front() {
            if outcome.is_ok() {
                if let Err(stop) = self.finish(upload, &key, &mut mark, &mut etag, &mut batcher, report).await {
                    outcome = Err(stop);
                }
            } else if let Ok((batch, Ok(()))) = upload.task.await {
                report.sent += batch.rows as u64;
                mark.remember(upload.gathered);
            }
        }
        if let Err(stop @ (Stop::Overtaken | Stop::Store(_))) = outcome {
            return Err(stop);
        }
        mark.last_run_at = chrono::Utc::now().timestamp_millis();
        mark.last_error = outcome.as_ref().err().map(ToString::to_string);
        // Only the run's end is recorded here; a run that moved nothing leaves no write behind.
        if report.batches > 0 || mark.last_error.is_some() || etag.is_none() {
            self.save(&key, &mark, etag.as_deref()).await?;
        }
        report.watermark = mark.updated;
        outcome
    }

    /// Starts sending a batch in its own task, so the next one is read and built meanwhile.
    fn upload(&self, batch: Batch, updated: String, id: String, gathered: Vec<(String, u64)>) -> Upload {
        let (sink, retry, deadline) = (Arc::clone(&self.sink), self.retry.clone(), self.deadline);
        let task = tokio::spawn(async move {
            let sent = send(&sink, &batch, &retry, deadline).await;
            (batch, sent)
        });
        Upload { task, updated, id, gathered }
    }

    /// Waits for an upload, then moves the watermark to its last row. A refused batch is kept and passed.
    async fn finish(
        &self,
        upload: Upload,
        key: &str,
        mark: &mut Watermark,
        etag: &mut Option<String>,
        batcher: &mut Batcher,
        report: &mut KindReport,
    ) -> Result<(), Stop> {
        let (batch, sent) = upload.task.await.map_err(|e| {
            Stop::Ingest(IngestError::Unavailable {
                message: format!("the upload task failed: {e}"),
                retry_after: None,
            })
        })?;
        match sent {
            Ok(()) => report.sent += batch.rows as u64,
            Err(IngestError::Refused(reason)) => {
                tracing::error!(connection = self.connection, kind = self.kind.name(), rows = batch.rows, %reason,
                    "Logs Ingestion refused a batch; it is kept in the sync table and the sync goes on");
                self.keep_refused(&batch, &reason).await?;
                report.refused += 1;
            }
            Err(error) => return Err(Stop::Ingest(error)),
        }
        batcher.recycle(batch.json);
        report.batches += 1;
        let keep_from = self.overlap_before(&upload.updated).unwrap_or_default();
        mark.advance(&upload.updated, &upload.id, upload.gathered, &keep_from);
        *etag = Some(self.save(key, mark, etag.as_deref()).await?);
        report.watermark = mark.updated.clone();
        (self.progress)(report);
        Ok(())
    }

    /// The time `overlap` before `time`, where a run starts reading and the watermark's memory of what it
    /// sent begins.
    fn overlap_before(&self, time: &str) -> Option<String> {
        let overlap = chrono::Duration::from_std(self.settings.overlap).unwrap_or_default();
        kinds::parse_time(time).map(|t| kinds::format_time(t - overlap))
    }

    async fn save(&self, key: &str, mark: &Watermark, etag: Option<&str>) -> Result<String, Stop> {
        watermark::save(self.store, key, mark, etag).await?.ok_or(Stop::Overtaken)
    }

    async fn keep_refused(&self, batch: &Batch, reason: &str) -> Result<(), Stop> {
        use base64::Engine as _;
        let packed = crate::ingest::gzip(batch.json.as_bytes());
        let value = serde_json::json!({
            "state": "refused",
            "connection": self.connection,
            "kind": self.kind.name(),
            "stream": batch.schema.stream,
            "reason": reason,
            "rows": batch.rows,
            "at": chrono::Utc::now().to_rfc3339(),
            "gzipBase64": base64::engine::general_purpose::STANDARD.encode(packed),
        });
        let key = format!("refused-{:016x}", watermark::fingerprint(&batch.json, reason));
        self.store.insert(Table::Sync, &key, &value).await?;
        Ok(())
    }
}

/// Batches being sent while the next is built: two keep the link busy without holding much memory.
const UPLOADS_IN_FLIGHT: usize = 2;

/// A batch on its way, and where the watermark goes when it arrives.
struct Upload {
    task: tokio::task::JoinHandle<(Batch, Result<(), IngestError>)>,
    updated: String,
    id: String,
    gathered: Vec<(String, u64)>,
}

/// Sends a batch, again while the service throttles or fails and the run has time left.
async fn send(sink: &Sink, batch: &Batch, retry: &OutboxSettings, deadline: Instant) -> Result<(), IngestError> {
    retrying(
        retry,
        deadline,
        || sink.send(batch),
        |e| match e {
            IngestError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        },
    )
    .await
}

/// The sync's one retry loop: `attempt` again, after the outbox's backoff (or the service's `Retry-After`), while
/// `transient` says the error may pass, up to five times and never past the deadline.
async fn retrying<T, E, F: std::future::Future<Output = Result<T, E>>>(
    retry: &OutboxSettings,
    deadline: Instant,
    mut attempt: impl FnMut() -> F,
    transient: impl Fn(&E) -> Option<Option<Duration>>,
) -> Result<T, E> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(retry_after) = transient(&error) else { return Err(error) };
        let wait = crate::outbox::backoff(retry, attempts, retry_after);
        if attempts >= 5 || Instant::now() + wait >= deadline {
            return Err(error);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("reading from the ITSM tool failed: {0}")]
    Itsm(ItsmError),
    #[error("sending to Log Analytics failed: {0}")]
    Ingest(IngestError),
    #[error("the state store failed: {0}")]
    Store(#[from] StoreError),
    #[error("another run moved this watermark meanwhile; this run stopped")]
    Overtaken,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader: keyset pages from `start` on, each without what an earlier page already held.
async fn read_pages(
    connector: Arc<dyn Connector>,
    kind: SyncKind,
    start: String,
    page_size: usize,
    deadline: Instant,
    retry: OutboxSettings,
    pages: mpsc::Sender<Read>,
) {
    let mut window = Window::Since(start);
    let mut last: Option<(String, String)> = None;
    loop {
        if Instant::now() >= deadline {
            let _ = pages.send(Read::OutOfTime).await;
            return;
        }
        let page = match fetch(connector.as_ref(), kind, &window, page_size, deadline, &retry).await {
            Ok(page) => page,
            Err(error) => {
                let _ = pages.send(Read::Failed(error)).await;
                return;
            }
        };
        let full = page.len() >= page_size;
        let next = match (page.first(), page.last()) {
            (Some(first), Some(tail)) if full => Some(match &window {
                Window::Within { .. } => Window::Within { updated: tail.updated.clone(), after_id: tail.id.clone() },
                _ if first.updated == tail.updated => {
                    Window::Within { updated: tail.updated.clone(), after_id: tail.id.clone() }
                }
                _ => Window::Since(tail.updated.clone()),
            }),
            (_, Some(tail)) if matches!(window, Window::Within { .. }) => Some(Window::After(tail.updated.clone())),
            _ => match &window {
                // An empty `Within` page: the second is done.
                Window::Within { updated, .. } => Some(Window::After(updated.clone())),
                _ => None,
            },
        };
        let fresh: Vec<Change> = page
            .into_iter()
            .filter(|c| {
                last.as_ref().is_none_or(|(u, i)| (c.updated.as_str(), c.id.as_str()) > (u.as_str(), i.as_str()))
            })
            .collect();
        if let Some(tail) = fresh.last() {
            last = Some((tail.updated.clone(), tail.id.clone()));
        }
        if pages.send(Read::Page(fresh)).await.is_err() {
            return;
        }
        match next {
            Some(next) => window = next,
            None => return,
        }
    }
}

/// One page, asked again while the tool is throttling or failing and time is left.
async fn fetch(
    connector: &dyn Connector,
    kind: SyncKind,
    window: &Window,
    page_size: usize,
    deadline: Instant,
    retry: &OutboxSettings,
) -> Result<Vec<Change>, ItsmError> {
    retrying(
        retry,
        deadline,
        || connector.changes(kind, window, page_size),
        |e| match e {
            ItsmError::Transient { retry_after, .. } => Some(*retry_after),
            _ => None,
        },
    )
    .await
}
