//! Looking correlation keys up together. Before it creates, itsmc asks ServiceNow whether a work item with the
//! key exists (so that lost state never makes a duplicate), and in an alert storm those lookups would be half of
//! every request sent, against an instance that counts requests. So lookups that wait while others are on their
//! way are sent as one query for all their keys (`correlation_idIN…`): a storm of N alerts costs N creates and
//! about N/100 lookups, and a lone lookup goes at once, as before.
//!
//! The alert route's own attempt does not join a batch (see [`crate::itsm::limit::inline`]): it looks its key
//! up alone, so that it can give up at once when the connection is busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use super::client::Client;
use super::{field, is_active, requests, result, work_item};
use crate::itsm::{Found, ItsmError};
use crate::workitem::WorkItemType;

/// Keys one query asks for: 100 keys of 64 hex digits keep the URL under 8 KB.
const BATCH: usize = 100;
/// How long a batch that has room waits for more keys. Only the outbox's retries wait for a batch, and a
/// lookup saved is a request the instance's rate limit leaves for a create.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);
/// Lookup queries on their way at once. Only the outbox's retries wait for one, so fewer and fuller batches
/// beat shorter waits; two keep a slow answer from holding every lookup up.
const RUNNERS: usize = 2;

type Answer = Result<Option<Found>, ItsmError>;

#[derive(Default)]
pub struct Lookups {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    queue: Vec<(WorkItemType, String, oneshot::Sender<Answer>)>,
    runners: usize,
}

impl Lookups {
    /// The newest work item with `key`, looked up with whatever other keys are waiting.
    pub async fn find(self: &Arc<Self>, client: &Arc<Client>, kind: WorkItemType, key: &str) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start_runner = {
            let mut waiting = self.lock();
            waiting.queue.push((kind, key.to_string(), tx));
            let start = waiting.runners < RUNNERS;
            if start {
                waiting.runners += 1;
            }
            start
        };
        if start_runner {
            tokio::spawn(Arc::clone(self).run(Arc::clone(client)));
        }
        rx.await.unwrap_or_else(|_| {
            Err(ItsmError::Transient { message: "the ServiceNow lookup was stopped".into(), retry_after: None })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends batches until nobody waits.
    async fn run(self: Arc<Self>, client: Arc<Client>) {
        struct Leaving<'a>(&'a Lookups);
        impl Drop for Leaving<'_> {
            fn drop(&mut self) {
                self.0.lock().runners -= 1;
            }
        }
        let _leaving = Leaving(&self);
        loop {
            if self.lock().queue.len() < BATCH {
                tokio::time::sleep(LINGER).await;
            }
            let batch = {
                let mut waiting = self.lock();
                let Some(kind) = waiting.queue.first().map(|(kind, ..)| *kind) else { return };
                let (batch, rest) = waiting.queue.drain(..).partition::<Vec<_>, _>(|(k, ..)| *k == kind);
                waiting.queue = rest;
                let mut batch = batch;
                if batch.len() > BATCH {
                    let more = batch.split_off(BATCH);
                    waiting.queue.splice(0..0, more);
                }
                batch
            };
            answer(&client, batch).await;
        }
    }
}

async fn answer(client: &Client, batch: Vec<(WorkItemType, String, oneshot::Sender<Answer>)>) {
    let kind = batch[0].0;
    if batch.len() == 1 {
        let (_, key, tx) = batch.into_iter().next().expect("one");
        let _ = tx.send(find_one(client, kind, &key).await);
        return;
    }
    let keys: Vec<&str> = batch.iter().map(|(_, key, _)| key.as_str()).collect();
    let Some(request) = requests::find_many(kind, &keys) else {
        for (_, key, tx) in batch {
            let _ = tx.send(find_one(client, kind, &key).await);
        }
        return;
    };
    let records = match client.send(&request).await {
        Ok(answer) => result(answer),
        Err(error) => {
            for (.., tx) in batch {
                let _ = tx.send(Err(error.clone()));
            }
            return;
        }
    };
    let records = records.as_array().map(Vec::as_slice).unwrap_or_default();
    let full = records.len() >= requests::FIND_MANY_PAGE;
    // Newest first: the first record of each key is its work item.
    let mut newest: HashMap<String, &Value> = HashMap::new();
    for record in records {
        newest.entry(field(record, requests::key_field(kind)).to_ascii_lowercase()).or_insert(record);
    }
    for (_, key, tx) in batch {
        let found = match newest.get(&key.to_ascii_lowercase()) {
            Some(record) => found(client, kind, record).map(Some),
            // A full page may have left this key's records out.
            None if full => find_one(client, kind, &key).await,
            None => Ok(None),
        };
        let _ = tx.send(found);
    }
}

/// One key, one query.
pub async fn find_one(client: &Client, kind: WorkItemType, key: &str) -> Answer {
    let Some(request) = requests::find(kind, key) else { return Ok(None) };
    let records = result(client.send(&request).await?);
    records.as_array().and_then(|r| r.first()).map(|record| found(client, kind, record)).transpose()
}

fn found(client: &Client, kind: WorkItemType, record: &Value) -> Result<Found, ItsmError> {
    Ok(Found { item: work_item(&client.base_url, kind, record)?, active: is_active(record) })
}
