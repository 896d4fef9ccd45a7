//! The alert path: parse -> decide -> claim -> call the ITSM tool -> record.
//!
//! A delivery is claimed by a conditional insert of its record (which also holds the raw body), so a
//! retried or doubly-sent alert is processed once, and a crash at any point leaves a record the outbox
//! picks up. Each work item is claimed through its link (correlation key -> work item), so racing
//! deliveries of one problem make one work item. The ITSM call runs in its own task: when it outlasts
//! the route's budget, the route answers 202 and the task finishes in the background.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::alert::{self, Alert, Condition};
use crate::config::{Config, Connection};
use crate::itsm::{self, Connector, ItsmError, WorkItem};
use crate::outbox::{self, Wakeup};
use crate::store::{Entry, Insert, Store, StoreError, Swap, Table};
use crate::workitem::{self, Content, Fields, Grouping, OnResolve, RefireAfterClose, Scope, WorkItemType};

/// What the query string of `/api/alert` may choose, as ITSMC's ITSM action did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub connection: Option<String>,
    #[serde(rename = "workItemType")]
    pub work_item_type: Option<String>,
    pub template: Option<String>,
    pub grouping: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Duplicate,
    Ignored,
    Updated,
    Resolved,
    Created,
    Queued,
}

/// What the route answers (200) and the recent-operations list shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub action: Action,
    #[serde(rename = "workItems")]
    pub work_items: Vec<WorkItemView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItemView {
    pub connection: String,
    #[serde(flatten)]
    pub item: WorkItem,
}

/// Why an alert was not accepted: the route's error answer.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// 400: the request is wrong; `code` is stable, `message` names the field.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 502: the ITSM tool rejected the work item for good (dead-lettered, shown in /api/workitems).
    #[error("{0}")]
    Rejected(String),
    /// 413: the alert is too large for the state store to keep (the route takes up to 1 MiB; Table Storage
    /// keeps about 750 KiB of it). Nothing was recorded.
    #[error("{0}")]
    TooLarge(String),
    /// 503: nothing could be persisted; the action group should retry.
    #[error("{0}")]
    Unavailable(String),
}

/// One line of `/api/workitems`.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub at: chrono::DateTime<chrono::Utc>,
    pub delivery: String,
    pub connection: String,
    pub rule: String,
    pub condition: &'static str,
    pub action: Action,
    #[serde(rename = "workItems")]
    pub work_items: Vec<WorkItemView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Intake {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    connectors: HashMap<String, Arc<dyn Connector>>,
    pub journal: Arc<itsm::dry_run::Journal>,
    recent: Mutex<VecDeque<Recent>>,
    done: Mutex<DoneCache>,
    /// `ServiceDeskLog_CL` rows of the operations run here, until the sync's sink takes them.
    pub log: Arc<crate::ingest::connector_log::ConnectorLog>,
    /// The last test or refresh of each connection, for the health route.
    pub connection_status: crate::connections::Status,
    pub(crate) wakeup: Wakeup,
}

const RECENT: usize = 500;

/// The work items of deliveries this instance finished, newest last. A finished delivery's outcome never
/// changes, so a duplicate that reaches the instance that ran it is answered from here without a store
/// request (Table Storage would take two: the refused insert, then a read for the work items to name).
#[derive(Default)]
struct DoneCache {
    outcomes: HashMap<String, Vec<WorkItemView>>,
    order: VecDeque<String>,
}

impl DoneCache {
    const CAPACITY: usize = 4096;

    fn get(&self, delivery: &str) -> Option<Outcome> {
        let work_items = self.outcomes.get(delivery)?.clone();
        Some(Outcome { action: Action::Duplicate, work_items })
    }

    fn put(&mut self, delivery: &str, outcome: &Outcome) {
        if self.outcomes.insert(delivery.to_owned(), outcome.work_items.clone()).is_none() {
            self.order.push_back(delivery.to_owned());
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A resolved set of options for one delivery, persisted with it so a retry does the same thing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Resolved {
    pub connection: String,
    #[serde(rename = "workItemType")]
    pub kind: WorkItemType,
    pub grouping: Grouping,
    pub template: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> IntakeError {
    IntakeError::BadRequest { code, message: message.into() }
}

impl Intake {
    /// `vault`: where the connections' secrets are that their settings leave out (Key Vault).
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        http: reqwest::Client,
        vault: Option<Arc<crate::secrets::Secrets>>,
    ) -> Intake {
        let journal = Arc::new(itsm::dry_run::Journal::default());
        let connectors = config
            .connections
            .iter()
            .map(|c| (c.name.to_ascii_lowercase(), itsm::connect(c, http.clone(), journal.clone(), vault.clone())))
            .collect();
        Intake {
            config,
            store,
            connectors,
            journal,
            recent: Mutex::default(),
            done: Mutex::default(),
            log: Arc::default(),
            connection_status: Default::default(),
            wakeup: Wakeup::default(),
        }
    }

    pub fn connection(&self, name: &str) -> Option<(&Arc<Connection>, &Arc<dyn Connector>)> {
        let connection = self.config.connection(Some(name))?;
        let connector = self.connectors.get(&connection.name.to_ascii_lowercase())?;
        Some((connection, connector))
    }

    fn resolve_options(&self, options: &Options) -> Result<Resolved, IntakeError> {
        let connection = self.config.connection(options.connection.as_deref()).ok_or_else(|| {
            let known: Vec<&str> = self.config.connections.iter().map(|c| c.name.as_str()).collect();
            bad(
                "unknown_connection",
                format!(
                    "connection: '{}' is not configured; known connections: {}",
                    options.connection.as_deref().unwrap_or_default(),
                    known.join(", ")
                ),
            )
        })?;
        let kind = match &options.work_item_type {
            Some(raw) => raw.parse().map_err(|e: String| bad("invalid_option", format!("workItemType: {e}")))?,
            None => connection.work_item_type,
        };
        let grouping = match &options.grouping {
            Some(raw) => raw.parse().map_err(|e: String| bad("invalid_option", format!("grouping: {e}")))?,
            None => connection.grouping,
        };
        if let Some(template) = &options.template
            && !connection.templates.contains_key(template)
        {
            let known: Vec<&str> = connection.templates.keys().map(String::as_str).collect();
            return Err(bad(
                "unknown_template",
                format!(
                    "template: '{template}' is not defined for connection '{}'; defined: {}",
                    connection.name,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        }
        Ok(Resolved { connection: connection.name.clone(), kind, grouping, template: options.template.clone() })
    }

    /// The link to claim with the delivery, for a fire with one work item. It is claimed without looking
    /// first: a link that exists (a re-fire) just refuses the claim, and looking would cost Table Storage
    /// a request on every new alert.
    fn first_fire_link(&self, alert: &Alert, resolved: &Resolved, delivery: &str) -> Option<(String, Value)> {
        if alert.condition != Condition::Fired {
            return None;
        }
        let mut plans = workitem::correlation_keys(&resolved.connection, resolved.kind, resolved.grouping, alert);
        if plans.len() != 1 {
            return None;
        }
        let plan = plans.pop()?;
        let link = Link::claim(
            &resolved.connection,
            &alert.rule,
            &plan.configuration_item.unwrap_or_else(|| alert.configuration_item()),
            delivery,
            self.lease_until(),
        );
        Some((plan.correlation_key, serde_json::to_value(link).ok()?))
    }

    fn lease_until(&self) -> i64 {
        now_ms() + self.config.outbox.lease.as_millis() as i64
    }

    /// Accept one posted alert. `Ok` is answered 200 (or 202 for `Action::Queued`).
    pub async fn accept(self: &Arc<Self>, body: &[u8], options: &Options) -> Result<Outcome, IntakeError> {
        let alert = alert::parse(body).map_err(|e| bad(e.code, e.message))?;
        let resolved = self.resolve_options(options)?;
        let delivery = workitem::delivery_id(&resolved.connection, resolved.kind, &alert);
        if let Some(outcome) = self.done.lock().ok().and_then(|done| done.get(&delivery)) {
            return Ok(outcome);
        }
        let now = now_ms();
        let record = json!({
            "state": "pending",
            "connection": resolved.connection,
            "options": resolved,
            "body": String::from_utf8_lossy(body),
            "rule": alert.rule,
            "condition": workitem::condition_word(alert.condition),
            "attempts": 0,
            "firstSeenAt": now,
            "nextAttemptAt": now,
            "leaseUntil": self.lease_until(),
        });
        // A first fire claims its work item's link together with the delivery (one store batch, or two
        // concurrent Table Storage requests), and hands the claim to `run`, which need not read it back: the
        // create path makes two rounds of writes and no reads. Racing claims stay safe: a link claimed here is
        // owned by this delivery id, and whoever runs this delivery takes it over.
        let link_claim = self.first_fire_link(&alert, &resolved, &delivery);
        let claim_delivery = self.store.insert(Table::Deliveries, &delivery, &record);
        let claim_link = async {
            let (key, value) = link_claim?;
            // Losing this race is fine: the delivery then claims or waits for the link as usual.
            let etag = self.store.claim(Table::Links, &key, &value).await.ok()??;
            Some(Entry { key, etag, value })
        };
        // The budget covers the store too: one that accepts connections and never answers must not hold the
        // action group past it. Writes cut short here may still land; a retried webhook then finds its delivery.
        let deadline = tokio::time::Instant::now() + self.config.alert_budget;
        let Ok((claimed, claimed_link)) =
            tokio::time::timeout_at(deadline, async { tokio::join!(claim_delivery, claim_link) }).await
        else {
            return Err(IntakeError::Unavailable(format!(
                "the alert could not be recorded: the state store did not answer within {} ms",
                self.config.alert_budget.as_millis()
            )));
        };
        if let (Err(_), Some(link)) = (&claimed, &claimed_link) {
            // The delivery was not recorded, so nothing will run it: give the link back rather than leave a
            // claim that holds its key until the lease runs out. Failing here only delays the next claimant.
            let _ = self.store.delete(Table::Links, &link.key, &link.etag).await;
        }
        let etag = match claimed {
            Ok(Insert::Inserted { etag }) => etag,
            Ok(Insert::Conflict(existing)) => return Ok(duplicate(&existing.value)),
            Err(StoreError::Refused(reason)) => {
                return Err(IntakeError::TooLarge(format!("the alert cannot be recorded: {reason}")));
            }
            Err(e) => return Err(IntakeError::Unavailable(format!("the alert could not be recorded: {e}"))),
        };
        let this = Arc::clone(self);
        // The webhook's own attempt does not queue behind a busy connection: the outbox is there for that.
        let attempt = async move { this.run(delivery, etag, record, alert, resolved, claimed_link).await };
        let mut task = tokio::spawn(crate::itsm::limit::inline(attempt));
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(IntakeError::Unavailable(format!("processing failed: {join}"))),
            // Still working: the task records its outcome, and the outbox retries it if it fails. Where it
            // cannot go on, the delivery stays pending under its lease and the outbox runs it after; a create
            // cut short is found by its key then.
            Err(_) => {
                if !self.config.finish_after_answer {
                    task.abort();
                }
                Ok(Outcome { action: Action::Queued, work_items: Vec::new() })
            }
        }
    }

    /// Run a claimed delivery and record its outcome; used by the route and by the outbox. `claimed_link`: the
    /// link `accept` just claimed for it, as stored.
    pub(crate) async fn run(
        &self,
        delivery: String,
        etag: String,
        mut record: Value,
        alert: Alert,
        resolved: Resolved,
        claimed_link: Option<Entry>,
    ) -> Result<Outcome, IntakeError> {
        let started = std::time::Instant::now();
        let mut finishes = Vec::new();
        // A run must end before its lease does: after it, another instance may run the same delivery, and two
        // runs at once could both create. Stopped here, the delivery stays pending and its link `creating`;
        // the next run finds what this one made by its key.
        let limit = self.config.outbox.lease.mul_f64(0.75);
        let executed =
            tokio::time::timeout(limit, self.execute(&delivery, &alert, &resolved, claimed_link, &mut finishes));
        let result = executed.await.unwrap_or_else(|_| {
            Err(Failure::Itsm(ItsmError::Transient {
                message: format!(
                    "the delivery took longer than {} s, three quarters of its lease",
                    limit.as_secs_f64()
                ),
                retry_after: None,
            }))
        });
        let attempts = record["attempts"].as_i64().unwrap_or(0) + 1;
        record["attempts"] = json!(attempts);
        let now = now_ms();
        let answer = match &result {
            Ok(outcome) => {
                record["state"] = json!("done");
                record["result"] = json!(outcome);
                record["doneAt"] = json!(now);
                if let Some(map) = record.as_object_mut() {
                    // The outcome is what later duplicates need; the body was only for retries.
                    map.remove("body");
                    map.remove("lastError");
                }
                Ok(outcome.clone())
            }
            Err(error) => {
                let first_seen = record["firstSeenAt"].as_i64().unwrap_or(now);
                let expired = now - first_seen >= self.config.outbox.max_age.as_millis() as i64;
                record["lastError"] = json!(error.to_string());
                if error.is_retryable() && !expired {
                    // Held back by the connection's limits, nothing failed: the outbox takes it at once, and its
                    // place in the connection's queue is the wait.
                    let held_back = matches!(error, Failure::Itsm(ItsmError::Busy { .. }));
                    let wait = if held_back {
                        error.retry_after().unwrap_or_default()
                    } else {
                        outbox::backoff(&self.config.outbox, attempts as u32, error.retry_after())
                    };
                    record["state"] = json!("pending");
                    record["nextAttemptAt"] = json!(now + wait.as_millis() as i64);
                    record["leaseUntil"] = json!(0);
                    if held_back {
                        tracing::debug!(delivery, rule = %alert.rule, error = %error, "work item left to the outbox");
                    } else {
                        tracing::warn!(delivery, rule = %alert.rule, attempts, error = %error, retry_in_ms = wait.as_millis() as u64, "work item queued for retry");
                    }
                    self.wakeup.at(now + wait.as_millis() as i64);
                    Ok(Outcome { action: Action::Queued, work_items: Vec::new() })
                } else {
                    record["state"] = json!("dead");
                    record["deadAt"] = json!(now);
                    tracing::error!(delivery, rule = %alert.rule, attempts, error = %error, "work item dead-lettered: it will not be retried");
                    Err(IntakeError::Rejected(format!("the ITSM tool did not take the work item: {error}")))
                }
            }
        };
        let record_outcome = self.store.replace(Table::Deliveries, &delivery, &record, &etag);
        let record_links = async {
            for (key, link, etag) in &finishes {
                let saved = match serde_json::to_value(link) {
                    Ok(value) => self.store.replace(Table::Links, key, &value, etag).await,
                    Err(e) => Err(StoreError::Corrupt(e.to_string())),
                };
                // A link left in `creating` is taken over once its lease runs out; the ITSM lookup by key
                // then finds the work item made here.
                if !matches!(saved, Ok(Swap::Replaced { .. })) {
                    tracing::warn!(key, "the link to a new work item could not be recorded");
                }
            }
        };
        let (recorded, ()) = tokio::join!(record_outcome, record_links);
        match recorded {
            Ok(Swap::Replaced { .. }) => {
                if let (Ok(outcome), Ok(mut done)) = (&answer, self.done.lock())
                    && record["state"] == "done"
                {
                    done.put(&delivery, outcome);
                }
            }
            Ok(Swap::Stale(_)) => tracing::warn!(delivery, "the delivery record changed while it was processed"),
            // The record keeps its lease: after it runs out the outbox runs the delivery again.
            Err(e) => tracing::warn!(delivery, error = %e, "the outcome could not be recorded"),
        }
        self.remember(&delivery, &alert, &resolved, &answer);
        self.log_operation(&alert, &resolved, &answer, &result, attempts as u32, started.elapsed());
        answer
    }

    /// The connector log's row for one run of a delivery.
    fn log_operation(
        &self,
        alert: &Alert,
        resolved: &Resolved,
        answer: &Result<Outcome, IntakeError>,
        result: &Result<Outcome, Failure>,
        attempt: u32,
        took: Duration,
    ) {
        use crate::ingest::connector_log::Event;
        let work_item = answer.as_ref().ok().and_then(|o| o.work_items.first());
        let number = work_item.map(|w| w.item.number.as_deref().unwrap_or(&w.item.id));
        let (operation, http_status, error_code) = match (answer, result) {
            (Ok(outcome), Ok(_)) => (action_word(outcome.action), 200, None),
            (Ok(_), Err(_)) => ("queued", 202, Some("retrying")),
            (Err(_), _) => ("dead-lettered", 502, Some("itsm_rejected")),
        };
        let message = match number {
            Some(number) => format!("{operation} {number} for alert rule '{}'", alert.rule),
            None => format!("{operation}: alert rule '{}'", alert.rule),
        };
        let computer = alert.configuration_item();
        self.log.record(Event {
            connection: &resolved.connection,
            operation,
            success: result.is_ok(),
            message,
            error: result.as_ref().err().map(ToString::to_string),
            error_code,
            alert_id: alert.id.as_deref(),
            rule: Some(&alert.rule),
            work_item: number,
            work_item_type: work_item.map(|w| w.item.kind.as_str()),
            computer: Some(&computer).filter(|c| !c.is_empty()).map(String::as_str),
            http_status: Some(http_status),
            attempt: Some(attempt),
            duration_ms: Some(took.as_millis() as u64),
        });
    }

    fn remember(&self, delivery: &str, alert: &Alert, resolved: &Resolved, answer: &Result<Outcome, IntakeError>) {
        let (action, work_items, error) = match answer {
            Ok(outcome) => (outcome.action, outcome.work_items.clone(), None),
            Err(e) => (Action::Queued, Vec::new(), Some(e.to_string())),
        };
        let entry = Recent {
            at: chrono::Utc::now(),
            delivery: delivery.to_string(),
            connection: resolved.connection.clone(),
            rule: alert.rule.clone(),
            condition: workitem::condition_word(alert.condition),
            action,
            work_items,
            error,
        };
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }

    pub fn recent(&self) -> Vec<Recent> {
        self.recent.lock().map(|r| r.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Apply the delivery to each of its work items. Link writes that may wait are returned, also on failure,
    /// so `run` stores them with the delivery's outcome.
    async fn execute(
        &self,
        delivery: &str,
        alert: &Alert,
        resolved: &Resolved,
        mut claimed_link: Option<Entry>,
        finishes: &mut Vec<(String, Link, String)>,
    ) -> Result<Outcome, Failure> {
        let (connection, connector) = self.connection(&resolved.connection).ok_or_else(|| {
            Failure::Permanent(format!("connection '{}' is no longer configured", resolved.connection))
        })?;
        let scope = Scope::new(alert);
        let mut field_sets: Vec<&Fields> = vec![&connection.fields];
        if let Some(template) = resolved.template.as_ref().and_then(|t| connection.templates.get(t)) {
            field_sets.push(template);
        }
        let mut action = None;
        let mut work_items = Vec::new();
        for plan in workitem::correlation_keys(&connection.name, resolved.kind, resolved.grouping, alert) {
            let content =
                Content::build(alert, &scope, plan.correlation_key, plan.configuration_item.as_deref(), &field_sets);
            let step = Step {
                intake: self,
                connection,
                connector: connector.as_ref(),
                kind: resolved.kind,
                delivery,
                alert,
                content: &content,
                scope: &scope,
            };
            let known = claimed_link.take_if(|link| link.key == content.correlation_key);
            let applied = step.apply(known).await?;
            action = action.max(Some(applied.action));
            finishes.extend(applied.finish);
            if let Some(item) = applied.item {
                work_items.push(WorkItemView { connection: connection.name.clone(), item });
            }
        }
        Ok(Outcome { action: action.unwrap_or(Action::Ignored), work_items })
    }
}

fn action_word(action: Action) -> &'static str {
    match action {
        Action::Duplicate => "duplicate",
        Action::Ignored => "ignored",
        Action::Updated => "updated",
        Action::Resolved => "resolved",
        Action::Created => "created",
        Action::Queued => "queued",
    }
}

fn duplicate(existing: &Value) -> Outcome {
    let work_items = existing
        .get("result")
        .and_then(|r| r.get("workItems"))
        .and_then(|w| serde_json::from_value(w.clone()).ok())
        .unwrap_or_default();
    Outcome { action: Action::Duplicate, work_items }
}

/// Why executing a delivery failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error(transparent)]
    Itsm(#[from] ItsmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another delivery holds the work item right now (it is being created).
    #[error("another delivery is working on this work item")]
    Busy,
    #[error("{0}")]
    Permanent(String),
}

impl Failure {
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Itsm(e) => e.is_retryable(),
            Failure::Store(_) | Failure::Busy => true,
            Failure::Permanent(_) => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Itsm(e) => e.retry_after(),
            Failure::Busy => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The link between a correlation key and its work item, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Link {
    /// `creating` (claimed, the work item may not exist yet), `open`, or `resolved` (by us).
    pub state: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub lease_until: i64,
    pub work_item: Option<WorkItem>,
    #[serde(default)]
    pub fire_count: u64,
    #[serde(default)]
    pub last_delivery: String,
    #[serde(default)]
    pub connection: String,
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub configuration_item: String,
    /// When the work item was created (Unix milliseconds; 0 in links written before this was kept).
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

impl Link {
    fn claim(connection: &str, rule: &str, configuration_item: &str, owner: &str, lease_until: i64) -> Link {
        Link {
            state: "creating".into(),
            owner: owner.into(),
            lease_until,
            work_item: None,
            fire_count: 0,
            last_delivery: String::new(),
            connection: connection.into(),
            rule: rule.into(),
            configuration_item: configuration_item.into(),
            created_at: 0,
            updated_at: now_ms(),
        }
    }
}

/// What one work item's step did, and the link write it leaves for the end of the delivery.
struct Applied {
    action: Action,
    item: Option<WorkItem>,
    finish: Option<(String, Link, String)>,
}

impl Applied {
    fn done(action: Action, item: Option<WorkItem>) -> Applied {
        Applied { action, item, finish: None }
    }
}

/// One work item's share of a delivery.
struct Step<'a> {
    intake: &'a Intake,
    connection: &'a Connection,
    connector: &'a dyn Connector,
    kind: WorkItemType,
    delivery: &'a str,
    alert: &'a Alert,
    content: &'a Content,
    scope: &'a Scope<'a>,
}

/// CAS retries before giving the delivery to the outbox; only racing writers on one key need more than one.
const ATTEMPTS: usize = 8;

impl Step<'_> {
    fn key(&self) -> &str {
        &self.content.correlation_key
    }

    fn store(&self) -> &dyn Store {
        self.intake.store.as_ref()
    }

    fn new_link(&self, state: &str) -> Link {
        let mut link = Link::claim(
            &self.connection.name,
            &self.alert.rule,
            &self.content.configuration_item,
            self.delivery,
            self.intake.lease_until(),
        );
        link.state = state.into();
        link
    }

    async fn save(&self, link: &Link, etag: &str) -> Result<bool, Failure> {
        let mut link = link.clone();
        link.updated_at = now_ms();
        let value = serde_json::to_value(&link).map_err(|e| Failure::Permanent(e.to_string()))?;
        Ok(matches!(self.store().replace(Table::Links, self.key(), &value, etag).await?, Swap::Replaced { .. }))
    }

    /// `known`: the link as this delivery just claimed it, so the first attempt need not read it.
    async fn apply(&self, mut known: Option<Entry>) -> Result<Applied, Failure> {
        let mut noted = false;
        for _ in 0..ATTEMPTS {
            let entry = match known.take() {
                Some(entry) => Some(entry),
                None => self.store().get(Table::Links, self.key()).await?,
            };
            let Some(entry) = entry else {
                if self.alert.condition == Condition::Resolved {
                    return self.resolve_unlinked().await;
                }
                let link = self.new_link("creating");
                let value = serde_json::to_value(&link).map_err(|e| Failure::Permanent(e.to_string()))?;
                match self.store().insert(Table::Links, self.key(), &value).await? {
                    Insert::Inserted { etag } => return self.create(link, etag).await,
                    Insert::Conflict(_) => continue,
                }
            };
            let mut link: Link = serde_json::from_value(entry.value)
                .map_err(|e| Failure::Store(StoreError::Corrupt(format!("link {}: {e}", self.key()))))?;
            if link.state == "creating" {
                let mine = link.owner == self.delivery;
                let leased = link.lease_until > now_ms();
                if mine && leased {
                    // Claimed with the delivery (or by this delivery's earlier attempt, still leased).
                    return self.create(link, entry.etag).await;
                }
                if leased {
                    return Err(Failure::Busy);
                }
                if self.alert.condition == Condition::Resolved {
                    // A resolve never creates. The claim's owner died (or was never recorded) before linking
                    // anything: drop the claim, so the next fire starts afresh, and resolve what the ITSM tool
                    // has under the key.
                    if !self.store().delete(Table::Links, self.key(), &entry.etag).await? {
                        continue;
                    }
                    return self.resolve_unlinked().await;
                }
                // Its owner died: take it over. `create` looks the key up in the ITSM tool first, so a work
                // item the owner made before dying is found, not doubled.
                link.owner = self.delivery.into();
                link.lease_until = self.intake.lease_until();
                if !self.save(&link, &entry.etag).await? {
                    continue;
                }
                let etag = self.etag().await?;
                return self.create(link, etag).await;
            }
            let item = link
                .work_item
                .clone()
                .ok_or_else(|| Failure::Permanent(format!("link {} has no work item", self.key())))?;
            if link.last_delivery == self.delivery {
                return Ok(Applied::done(Action::Duplicate, Some(item)));
            }
            match (self.alert.condition, link.state.as_str()) {
                (Condition::Fired, "open") => {
                    if !noted {
                        if !self.connector.is_active(&item).await? {
                            return self.refire_after_close(link, entry.etag, item).await;
                        }
                        self.connector.add_note(&item, self.content, &self.refire_note(link.fire_count + 1)).await?;
                        noted = true;
                    }
                    link.fire_count += 1;
                    link.last_delivery = self.delivery.into();
                    if self.save(&link, &entry.etag).await? {
                        return Ok(Applied::done(Action::Updated, Some(item)));
                    }
                }
                (Condition::Fired, _) => return self.refire_after_close(link, entry.etag, item).await,
                (Condition::Resolved, "open") => {
                    let action = self.resolve(&item).await?;
                    if action == Action::Resolved {
                        link.state = "resolved".into();
                    }
                    link.last_delivery = self.delivery.into();
                    if self.save(&link, &entry.etag).await? {
                        return Ok(Applied::done(action, Some(item)));
                    }
                }
                (Condition::Resolved, _) => return Ok(Applied::done(Action::Ignored, Some(item))),
            }
        }
        Err(Failure::Busy)
    }

    async fn etag(&self) -> Result<String, Failure> {
        match self.store().get(Table::Links, self.key()).await? {
            Some(entry) => Ok(entry.etag),
            None => Err(Failure::Busy),
        }
    }

    fn refire_note(&self, count: u64) -> String {
        let at = self.alert.fired_at.unwrap_or_else(chrono::Utc::now).to_rfc3339();
        format!("Azure Monitor alert \"{}\" fired again at {at} ({count} times in all).", self.alert.rule)
    }

    /// Create the work item for a link we hold in `creating`, unless the ITSM tool already has an open one
    /// with this key (our state was lost, or an owner died after creating it).
    async fn create(&self, mut link: Link, etag: String) -> Result<Applied, Failure> {
        let (action, item) = match self.connector.find(self.kind, self.key()).await? {
            Some(found) if found.active => {
                self.connector
                    .add_note(&found.item, self.content, &self.refire_note(link.fire_count.max(1) + 1))
                    .await?;
                (Action::Updated, found.item)
            }
            _ => (Action::Created, self.connector.create(self.kind, self.content).await?),
        };
        link.state = "open".into();
        link.work_item = Some(item.clone());
        link.fire_count += 1;
        if action == Action::Created {
            link.created_at = now_ms();
        }
        link.last_delivery = self.delivery.into();
        link.lease_until = 0;
        link.updated_at = now_ms();
        // Written together with the delivery's outcome (one store batch), by `Intake::run`.
        Ok(Applied { action, item: Some(item), finish: Some((self.key().to_string(), link, etag)) })
    }

    async fn refire_after_close(&self, mut link: Link, etag: String, item: WorkItem) -> Result<Applied, Failure> {
        match self.connection.policy.refire_after_close {
            RefireAfterClose::Ignore => {
                link.last_delivery = self.delivery.into();
                self.save(&link, &etag).await?;
                Ok(Applied::done(Action::Ignored, Some(item)))
            }
            RefireAfterClose::Reopen => {
                self.connector.reopen(&item, self.content, &self.refire_note(link.fire_count + 1)).await?;
                link.state = "open".into();
                link.fire_count += 1;
                link.last_delivery = self.delivery.into();
                self.save(&link, &etag).await?;
                Ok(Applied::done(Action::Updated, Some(item)))
            }
            RefireAfterClose::New => {
                let mut claim = self.new_link("creating");
                claim.fire_count = 0;
                if !self.save(&claim, &etag).await? {
                    return Err(Failure::Busy);
                }
                let etag = self.etag().await?;
                self.create(claim, etag).await
            }
        }
    }

    async fn resolve(&self, item: &WorkItem) -> Result<Action, Failure> {
        match self.connection.policy.on_resolve {
            OnResolve::Resolve => {
                let notes = self.connection.close_notes.render(self.scope);
                self.connector.resolve(item, self.content, &self.connection.policy.close_code, &notes).await?;
                Ok(Action::Resolved)
            }
            OnResolve::Comment => {
                let at = self.alert.resolved_at.unwrap_or_else(chrono::Utc::now).to_rfc3339();
                let note = format!("Azure Monitor alert \"{}\" was resolved at {at}.", self.alert.rule);
                self.connector.add_note(item, self.content, &note).await?;
                Ok(Action::Updated)
            }
            OnResolve::Nothing => Ok(Action::Ignored),
        }
    }

    /// A resolve for a key we hold no link for: never create, but resolve what the ITSM tool has open
    /// under the key (our state was lost since it was created).
    async fn resolve_unlinked(&self) -> Result<Applied, Failure> {
        match self.connector.find(self.kind, self.key()).await? {
            Some(found) if found.active => {
                let action = self.resolve(&found.item).await?;
                let mut link = self.new_link(if action == Action::Resolved { "resolved" } else { "open" });
                link.work_item = Some(found.item.clone());
                link.last_delivery = self.delivery.into();
                link.lease_until = 0;
                let value = serde_json::to_value(&link).map_err(|e| Failure::Permanent(e.to_string()))?;
                self.store().insert(Table::Links, self.key(), &value).await?;
                Ok(Applied::done(action, Some(found.item)))
            }
            _ => Ok(Applied::done(Action::Ignored, None)),
        }
    }
}
