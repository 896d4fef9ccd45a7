//! What the dashboard shows, read from the store in one pass: work items by type, day, computer and alert rule
//! (from the links), each connection's health (its last test, credentials, sync runs, outbox), the dead letters,
//! and the synced records by state and priority (from the summary the local rows keep).
//!
//! Reading 100,000 links takes longer than a page view should, so the page renders from the last snapshot and
//! `super::Dashboard` builds a new one in the background when it is older than a few seconds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use crate::intake::{Intake, Link};
use crate::itsm::{Diagnosis, WorkItem};
use crate::store::{Filter, Store, StoreError, Table, for_each};
use crate::sync::Syncer;

/// Days the created-per-day chart covers, today included.
pub const DAYS: i64 = 14;
/// Rows in the computers and rules tables, and work items listed per computer.
const TOP: usize = 15;
const ITEMS_PER_COMPUTER: usize = 5;
/// Dead letters listed (newest first), and latest errors per connection.
const DEAD_LISTED: usize = 50;
const ERRORS_LISTED: usize = 5;

pub struct Snapshot {
    pub built_at: DateTime<Utc>,
    pub build_time: Duration,
    pub work_items: WorkItems,
    pub connections: Vec<ConnectionHealth>,
    pub dead_letters: Vec<DeadLetter>,
    pub synced: Synced,
}

#[derive(Default)]
pub struct WorkItems {
    /// Links with a work item, and of them the ones still open.
    pub total: u64,
    pub open: u64,
    pub by_type: BTreeMap<String, u64>,
    /// The last [`DAYS`] days (UTC), each with its count per type; days with none are present.
    pub per_day: Vec<(NaiveDate, BTreeMap<String, u64>)>,
    /// Distinct computers and rules, and the ones with the most work items.
    pub computers_total: u64,
    pub computers: Vec<Computer>,
    pub rules_total: u64,
    pub rules: Vec<Rule>,
}

pub struct Computer {
    pub name: String,
    pub count: u64,
    /// The newest few, with their link state.
    pub items: Vec<(WorkItem, String)>,
}

pub struct Rule {
    pub name: String,
    pub count: u64,
    pub by_type: BTreeMap<String, u64>,
}

pub struct ConnectionHealth {
    pub name: String,
    pub product: &'static str,
    /// The last connection test or refresh of this instance (none since it started: `None`).
    pub diagnosis: Option<Diagnosis>,
    /// What the connector says of its credentials (OAuth token and refresh token expiry).
    pub credentials: Option<Value>,
    pub sync: Vec<SyncRun>,
    pub pending: u64,
    pub dead: u64,
    /// The latest errors of its pending and dead deliveries, newest first: (Unix ms, message).
    pub errors: Vec<(i64, String)>,
}

pub struct SyncRun {
    pub kind: &'static str,
    /// Update time of the last record synced, as the product gave it.
    pub watermark: Option<String>,
    /// How far the watermark is behind now.
    pub lag: Option<chrono::Duration>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub sent: u64,
}

pub struct DeadLetter {
    pub key: String,
    pub connection: String,
    pub rule: String,
    pub attempts: i64,
    pub error: String,
    pub dead_at: i64,
}

pub enum Synced {
    /// Rows kept in the store (no Logs Ingestion endpoint): per work item type, rows and counts by state and
    /// priority.
    Local(Vec<SyncedKind>),
    /// Rows go to Log Analytics: where.
    Workspace(String),
}

pub struct SyncedKind {
    pub kind: String,
    pub rows: i64,
    pub by_state: Vec<(String, i64)>,
    pub by_priority: Vec<(String, i64)>,
}

pub async fn build(intake: &Intake, syncer: &Syncer) -> Result<Snapshot, StoreError> {
    let started = Instant::now();
    let now = Utc::now();
    let store = intake.store.as_ref();
    let work_items = work_items(store, now).await?;
    let (deliveries, dead_letters) = deliveries(store).await?;
    let mut connections = Vec::new();
    for connection in &intake.config.connections {
        let mut sync = Vec::new();
        for (kind, mark) in crate::sync::watermark::of_connection(store, &intake.config.sync.kinds, connection).await {
            let mark = mark?;
            let watermark = mark.as_ref().map(|m| m.updated.clone()).filter(|w| !w.is_empty());
            sync.push(SyncRun {
                kind: kind.name(),
                lag: watermark.as_deref().and_then(crate::sync::kinds::parse_time).map(|at| now - at),
                watermark,
                last_run_at: mark.as_ref().and_then(|m| DateTime::from_timestamp_millis(m.last_run_at)),
                last_error: mark.as_ref().and_then(|m| m.last_error.clone()),
                sent: mark.as_ref().map_or(0, |m| m.sent),
            });
        }
        let outbox = deliveries.get(&connection.name.to_ascii_lowercase());
        connections.push(ConnectionHealth {
            name: connection.name.clone(),
            product: connection.product.name(),
            diagnosis: intake.connection_status.get(&connection.name),
            credentials: intake.connection(&connection.name).and_then(|(_, c)| c.credentials_status()),
            sync,
            pending: outbox.map_or(0, |o| o.pending),
            dead: outbox.map_or(0, |o| o.dead),
            errors: outbox.map(|o| o.errors.clone()).unwrap_or_default(),
        });
    }
    let synced = match syncer.sink.as_ref() {
        crate::ingest::Sink::Local(_) => Synced::Local(synced(&crate::ingest::local::LocalRows::summary(store).await?)),
        crate::ingest::Sink::LogsIngestion(_) => Synced::Workspace(syncer.sink.describe()),
    };
    Ok(Snapshot { built_at: now, build_time: started.elapsed(), work_items, connections, dead_letters, synced })
}

async fn work_items(store: &dyn Store, now: DateTime<Utc>) -> Result<WorkItems, StoreError> {
    let first_day = now.date_naive() - chrono::Duration::days(DAYS - 1);
    let mut items = WorkItems::default();
    let mut per_day: BTreeMap<NaiveDate, BTreeMap<String, u64>> = BTreeMap::new();
    // Per computer: its work items, and the newest few (created at, the work item, the link's state).
    type Newest = Vec<(i64, WorkItem, String)>;
    let mut computers: HashMap<String, (u64, Newest)> = HashMap::new();
    let mut rules: HashMap<String, (u64, BTreeMap<String, u64>)> = HashMap::new();
    for_each(store, Table::Links, None, |entry| {
        let Ok(link) = serde_json::from_value::<Link>(entry.value) else { return };
        let Some(item) = link.work_item else { return };
        let kind = item.kind.as_str().to_string();
        items.total += 1;
        items.open += u64::from(link.state == "open");
        *items.by_type.entry(kind.clone()).or_default() += 1;
        let created = if link.created_at > 0 { link.created_at } else { link.updated_at };
        if let Some(day) = DateTime::from_timestamp_millis(created).map(|t| t.date_naive())
            && day >= first_day
        {
            *per_day.entry(day).or_default().entry(kind.clone()).or_default() += 1;
        }
        if !link.configuration_item.is_empty() {
            let (count, newest) = computers.entry(link.configuration_item).or_default();
            *count += 1;
            newest.push((created, item, link.state));
            if newest.len() > 2 * ITEMS_PER_COMPUTER {
                newest.sort_by_key(|(at, ..)| std::cmp::Reverse(*at));
                newest.truncate(ITEMS_PER_COMPUTER);
            }
        }
        let (count, by_type) = rules.entry(link.rule).or_default();
        *count += 1;
        *by_type.entry(kind).or_default() += 1;
    })
    .await?;
    items.per_day = (0..DAYS)
        .map(|d| first_day + chrono::Duration::days(d))
        .map(|day| (day, per_day.remove(&day).unwrap_or_default()))
        .collect();
    items.computers_total = computers.len() as u64;
    items.rules_total = rules.len() as u64;
    let computers = computers.into_iter().map(|(name, (count, mut newest))| {
        newest.sort_by_key(|(at, ..)| std::cmp::Reverse(*at));
        let items = newest.into_iter().take(ITEMS_PER_COMPUTER).map(|(_, item, state)| (item, state)).collect();
        Computer { name, count, items }
    });
    items.computers = top(computers.collect(), |c| c.count, |c| &c.name);
    let rules = rules.into_iter().map(|(name, (count, by_type))| Rule { name, count, by_type });
    items.rules = top(rules.collect(), |r| r.count, |r| &r.name);
    Ok(items)
}

/// The [`TOP`] with the most work items, ties by name.
fn top<T>(mut all: Vec<T>, count: impl Fn(&T) -> u64, name: impl Fn(&T) -> &str) -> Vec<T> {
    all.sort_by(|a, b| count(b).cmp(&count(a)).then_with(|| name(a).cmp(name(b))));
    all.truncate(TOP);
    all
}

#[derive(Default)]
struct Outbox {
    pending: u64,
    dead: u64,
    errors: Vec<(i64, String)>,
}

/// Pending and dead deliveries per connection (lower case), and the newest dead letters.
async fn deliveries(store: &dyn Store) -> Result<(HashMap<String, Outbox>, Vec<DeadLetter>), StoreError> {
    let mut outboxes: HashMap<String, Outbox> = HashMap::new();
    let mut dead_letters = Vec::new();
    for state in ["pending", "dead"] {
        let filter = Some(Filter { field: "state", value: state });
        for_each(store, Table::Deliveries, filter, |entry| {
            let v = &entry.value;
            let text = |field: &str| v[field].as_str().unwrap_or_default().to_string();
            let outbox = outboxes.entry(text("connection").to_ascii_lowercase()).or_default();
            let at = v["deadAt"].as_i64().or_else(|| v["firstSeenAt"].as_i64()).unwrap_or(0);
            if state == "dead" {
                outbox.dead += 1;
                dead_letters.push(DeadLetter {
                    key: entry.key.clone(),
                    connection: text("connection"),
                    rule: text("rule"),
                    attempts: v["attempts"].as_i64().unwrap_or(0),
                    error: text("lastError"),
                    dead_at: at,
                });
            } else {
                outbox.pending += 1;
            }
            if let Some(error) = v["lastError"].as_str() {
                outbox.errors.push((at, error.to_string()));
            }
        })
        .await?;
    }
    for outbox in outboxes.values_mut() {
        outbox.errors.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        outbox.errors.truncate(ERRORS_LISTED);
    }
    dead_letters.sort_by_key(|d| std::cmp::Reverse(d.dead_at));
    dead_letters.truncate(DEAD_LISTED);
    Ok((outboxes, dead_letters))
}

fn synced(summary: &Value) -> Vec<SyncedKind> {
    let counts = |group: &Value| {
        let mut counts: Vec<(String, i64)> = group
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, n)| (name.clone(), n.as_i64().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts
    };
    summary
        .as_object()
        .into_iter()
        .flatten()
        .map(|(kind, v)| SyncedKind {
            kind: kind.clone(),
            rows: v["rows"].as_i64().unwrap_or(0).max(0),
            by_state: counts(&v["state"]),
            by_priority: counts(&v["priority"]),
        })
        .collect()
}
