//! The outbox: deliveries that could not finish in time (ITSM tool slow, 429, 5xx, down) are retried here
//! with exponential backoff and jitter, honouring `Retry-After`, until they succeed or are dead-lettered.
//!
//! Pending deliveries live in the store (`state = pending`), so any instance can take one over: an
//! instance takes a delivery by moving its lease forward with a compare-and-swap, and a lease that ran out
//! (its instance died) is taken by the next drain. The local worker sleeps until the earliest known due
//! time, and rescans the store every 30 s for work other instances left behind.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::OutboxSettings;
use crate::intake::{Intake, Resolved, now_ms};
use crate::store::{Entry, Filter, Swap, Table};

/// How long to wait before attempt `attempt` (1-based): exponential with jitter, at least `retry_after`.
pub fn backoff(settings: &OutboxSettings, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let base = settings.first_backoff.saturating_mul(1 << exponent).min(settings.max_backoff);
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter).max(retry_after.unwrap_or_default())
}

/// Tells the local worker when the next retry is due, so it need not poll the store.
#[derive(Default)]
pub struct Wakeup {
    due: AtomicI64,
    notify: Notify,
}

impl Wakeup {
    pub fn at(&self, due_ms: i64) {
        let current = self.due.load(Ordering::Relaxed);
        if current == 0 || due_ms < current {
            self.due.store(due_ms, Ordering::Relaxed);
            self.notify.notify_one();
        }
    }

    fn take(&self) -> i64 {
        self.due.swap(0, Ordering::Relaxed)
    }
}

/// What one drain did, for the timer's answer and the logs.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrainReport {
    pub pending: usize,
    pub attempted: usize,
    pub succeeded: usize,
    pub requeued: usize,
    pub dead: usize,
    /// The earliest time (ms) a pending delivery is due next, 0 when none.
    #[serde(skip)]
    pub next_due: i64,
}

/// How many deliveries one instance retries at once. The connections' limiters decide how many requests go to
/// the tools; this only keeps enough deliveries ready to fill every place they give (a delivery spends part of
/// its time waiting for a lookup, part in the store), and bounds the memory a drain holds however long the
/// outbox is: a few KB each.
const PARALLEL: usize = 256;

/// Deliveries read from the outbox at a time: each holds its alert's body while it waits its turn.
const PAGE: usize = 250;

/// Retry every due pending delivery once. The outbox is read a page at a time while earlier pages are worked
/// on, so a drain of 100,000 deliveries holds one page and `PARALLEL` deliveries in memory, not all of them.
/// When a pass over the outbox found work, another pass follows while that work is still running: what fell
/// due meanwhile (an alert storm's webhooks, queued at once) joins without the pipeline running dry first.
pub async fn drain(intake: &Arc<Intake>) -> DrainReport {
    let mut report = DrainReport::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    // Each pass counts the outbox afresh; the last one's view is the report's.
    loop {
        (report.pending, report.next_due) = (0, 0);
        match pass(intake, &mut report, &mut tasks, &mut running).await {
            Some(started) if started > 0 => continue,
            _ => break,
        }
    }
    while let Some(done) = tasks.join_next().await {
        report.count(done, &mut running);
    }
    report
}

/// One pass over the outbox: every due delivery not already running is started. How many were; `None` when the
/// outbox could not be read.
async fn pass(
    intake: &Arc<Intake>,
    report: &mut DrainReport,
    tasks: &mut tokio::task::JoinSet<(String, Retried)>,
    running: &mut HashSet<String>,
) -> Option<usize> {
    let mut started = 0;
    let mut continuation: Option<String> = None;
    let now = now_ms();
    loop {
        let filter = Some(Filter { field: "state", value: "pending" });
        let page = match intake.store.scan(Table::Deliveries, filter, continuation.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "the outbox could not be read");
                return None;
            }
        };
        for entry in page.entries {
            report.pending += 1;
            let next =
                entry.value["nextAttemptAt"].as_i64().unwrap_or(0).max(entry.value["leaseUntil"].as_i64().unwrap_or(0));
            if next > now {
                if report.next_due == 0 || next < report.next_due {
                    report.next_due = next;
                }
                continue;
            }
            if running.contains(&entry.key) {
                continue;
            }
            while tasks.len() >= PARALLEL {
                let Some(done) = tasks.join_next().await else { break };
                report.count(done, running);
            }
            running.insert(entry.key.clone());
            started += 1;
            let intake = Arc::clone(intake);
            tasks.spawn(async move { (entry.key.clone(), retry(&intake, entry).await) });
        }
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => return Some(started),
        }
    }
}

type Retried = Option<Result<crate::intake::Outcome, crate::intake::IntakeError>>;

impl DrainReport {
    fn count(&mut self, done: Result<(String, Retried), tokio::task::JoinError>, running: &mut HashSet<String>) {
        let retried = match done {
            Ok((key, retried)) => {
                running.remove(&key);
                retried
            }
            Err(e) => {
                // The key is lost with the task; a later pass finds the delivery under its lease.
                tracing::error!(error = %e, "an outbox retry panicked");
                return;
            }
        };
        match retried {
            Some(Ok(outcome)) if outcome.action == crate::intake::Action::Queued => {
                self.attempted += 1;
                self.requeued += 1;
            }
            Some(Ok(_)) => {
                self.attempted += 1;
                self.succeeded += 1;
            }
            Some(Err(_)) => {
                self.attempted += 1;
                self.dead += 1;
            }
            None => {}
        }
    }
}

/// Deletes finished deliveries older than `keep` (at most `limit` a call), so the store does not grow with
/// every alert ever received. Their work items stay linked: a delivery retried after this long is taken as
/// a new fire of the same problem (a note on its work item), not a duplicate. Dead letters stay until an
/// operator deals with them.
pub async fn prune(intake: &Intake, keep: Duration, limit: usize) -> Result<usize, crate::store::StoreError> {
    let before = now_ms() - keep.as_millis() as i64;
    let mut pruned = 0;
    let mut continuation: Option<String> = None;
    loop {
        let filter = Some(Filter { field: "state", value: "done" });
        let page = intake.store.scan(Table::Deliveries, filter, continuation.as_deref(), 1000).await?;
        for entry in page.entries {
            if pruned == limit {
                return Ok(pruned);
            }
            let done_at = entry.value["doneAt"].as_i64().unwrap_or(i64::MAX);
            if done_at < before && intake.store.delete(Table::Deliveries, &entry.key, &entry.etag).await? {
                pruned += 1;
            }
        }
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => return Ok(pruned),
        }
    }
}

/// Take the delivery's lease and run it; `None` when another instance took it first.
async fn retry(intake: &Arc<Intake>, entry: Entry) -> Retried {
    let mut record = entry.value;
    record["leaseUntil"] = json!(now_ms() + intake.config.outbox.lease.as_millis() as i64);
    let etag = match intake.store.replace(Table::Deliveries, &entry.key, &record, &entry.etag).await {
        Ok(Swap::Replaced { etag }) => etag,
        Ok(Swap::Stale(_)) => return None,
        Err(e) => {
            tracing::warn!(delivery = entry.key, error = %e, "could not take an outbox lease");
            return None;
        }
    };
    let body = record["body"].as_str().unwrap_or_default().to_string();
    let resolved: Option<Resolved> = serde_json::from_value(record["options"].clone()).ok();
    let (alert, resolved) = match (crate::alert::parse(body.as_bytes()), resolved) {
        (Ok(alert), Some(resolved)) => (alert, resolved),
        _ => {
            // Written by us, so this is a bug or an incompatible version: keep it, visibly.
            dead_letter(intake, &entry.key, &etag, record, "the stored delivery can no longer be read").await;
            return Some(Err(crate::intake::IntakeError::Rejected("unreadable delivery".into())));
        }
    };
    Some(intake.run(entry.key, etag, record, alert, resolved, None).await)
}

async fn dead_letter(intake: &Intake, key: &str, etag: &str, mut record: Value, reason: &str) {
    record["state"] = json!("dead");
    record["lastError"] = json!(reason);
    record["deadAt"] = json!(now_ms());
    tracing::error!(delivery = key, reason, "work item dead-lettered");
    let _ = intake.store.replace(Table::Deliveries, key, &record, etag).await;
}

/// What an operator's retry of a dead letter did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Revived {
    /// Back in the outbox, due now.
    Pending,
    /// No delivery has that key.
    NotFound,
    /// It is not dead (pending or done): nothing to retry.
    NotDead { state: String },
}

/// Puts a dead letter back in the outbox, due now, with its attempts and age started over (an operator fixed what
/// stopped it, or wants it tried once more).
pub async fn revive(intake: &Intake, key: &str) -> Result<Revived, crate::store::StoreError> {
    for _ in 0..5 {
        let Some(entry) = intake.store.get(Table::Deliveries, key).await? else {
            return Ok(Revived::NotFound);
        };
        let mut record = entry.value;
        let state = record["state"].as_str().unwrap_or_default().to_string();
        if state != "dead" {
            return Ok(Revived::NotDead { state });
        }
        let now = now_ms();
        record["state"] = json!("pending");
        record["attempts"] = json!(0);
        record["firstSeenAt"] = json!(now);
        record["nextAttemptAt"] = json!(now);
        record["leaseUntil"] = json!(0);
        if let Some(map) = record.as_object_mut() {
            map.remove("deadAt");
        }
        if let Swap::Replaced { .. } = intake.store.replace(Table::Deliveries, key, &record, &entry.etag).await? {
            tracing::info!(delivery = key, "dead letter put back in the outbox by an operator");
            intake.wakeup.at(now);
            return Ok(Revived::Pending);
        }
    }
    Err(crate::store::StoreError::Unavailable(format!("delivery {key} kept changing while it was retried")))
}

/// The local background worker: drains when something is due, and rescans every 30 s.
pub async fn run_worker(intake: Arc<Intake>) {
    const RESCAN: i64 = 30_000;
    let mut next = now_ms();
    loop {
        let wait = (next - now_ms()).clamp(0, RESCAN) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = intake.wakeup.notify.notified() => {}
        }
        let hinted = intake.wakeup.take();
        if hinted > 0 {
            next = next.min(hinted);
        }
        if next > now_ms() {
            continue;
        }
        let report = drain(&intake).await;
        if report.attempted > 0 {
            tracing::info!(?report, "outbox drained");
        }
        let poll = intake.config.outbox.poll.as_millis() as i64;
        next = if report.next_due > 0 { report.next_due.max(now_ms() + poll) } else { now_ms() + RESCAN };
        if report.requeued > 0 || report.pending > report.attempted {
            // Retries that failed again set their own wake-up; also look again soon for leases running out.
            next = next.min(now_ms() + poll.max(1_000));
        }
    }
}
