//! Provance: IT service management on Dynamics 365, through Dataverse's Web API (v9.2). Work items are
//! incidents (cases); the sync also reads Provance's change requests from the table the connection names.
//!
//! `settings` reads the connection, `requests` says what to send, `client` sends it, `auth` keeps the Entra
//! token for the environment, `servicedesk` maps records to `ServiceDesk_CL`; this file maps the
//! [`Connector`] operations onto them and reads the answers.
//!
//! The sync's pages are keyset pages in (second, id) order, compared as text. Dataverse orders by the full
//! `modifiedon` and then by the id in its database's order, which is not text order, so [`Provance::changes`]
//! reads a second that a page cuts through again whole (a page at a time, keeping its first ids as text), orders
//! each page itself and answers at most the page asked for.

mod auth;
mod client;
pub mod requests;
mod servicedesk;
mod settings;

pub use settings::{Customer, ProvanceAuth, ProvanceSettings, SETTINGS, settings_from_lookup};

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::Connection;
use crate::itsm::limit::Limiter;
use crate::itsm::{Choice, Connector, Diagnosis, Found, ItsmError, RemoteConfiguration, WorkItem};
use crate::secrets::Secrets;
use crate::sync::{Change, SyncKind, Window};
use crate::workitem::{Content, WorkItemType};
use servicedesk::Plan;

pub struct Provance {
    connection: Connection,
    settings: ProvanceSettings,
    client: client::Client,
    incidents: Plan,
    /// Found through the table's metadata on first use.
    change_requests: tokio::sync::Mutex<Option<Plan>>,
}

/// Case states (`statecode`): 0 Active, 1 Resolved, 2 Canceled.
const ACTIVE: i64 = 0;

impl Provance {
    pub fn new(
        connection: &Connection,
        settings: &ProvanceSettings,
        http: reqwest::Client,
        vault: Option<Arc<Secrets>>,
    ) -> Provance {
        let auth = auth::Auth::new(settings.auth.clone(), &settings.url, http.clone(), vault);
        Provance {
            connection: connection.clone(),
            settings: settings.clone(),
            client: client::Client::new(settings.url.clone(), http, auth, Limiter::new(connection.limits)),
            incidents: Plan::incidents(settings),
            change_requests: tokio::sync::Mutex::new(None),
        }
    }

    fn work_item(&self, record: &Value) -> Result<WorkItem, ItsmError> {
        let id = text(record, "incidentid");
        if id.is_empty() {
            return Err(ItsmError::Rejected("Dataverse's answer has no incidentid".into()));
        }
        let number = Some(text(record, "ticketnumber")).filter(|n| !n.is_empty());
        let url = Some(format!("{}/main.aspx?pagetype=entityrecord&etn=incident&id={id}", self.client.url));
        Ok(WorkItem { kind: WorkItemType::Incident, id, number, url })
    }

    /// Provance has incidents only; the configuration refuses the others, a request's `workItemType` is refused here.
    fn incidents_only(&self, kind: WorkItemType) -> Result<(), ItsmError> {
        match kind {
            WorkItemType::Incident => Ok(()),
            other => Err(ItsmError::Rejected(format!(
                "Provance (Dataverse) has incidents only, not {}s; use workItemType=Incident",
                other.as_str()
            ))),
        }
    }

    /// The case's state and version: `(statecode, @odata.etag)`.
    async fn state(&self, id: &str) -> Result<(i64, String), ItsmError> {
        let record = self.client.send(&requests::status(id), &[]).await?.json("GET incidents")?;
        Ok((record.get("statecode").and_then(Value::as_i64).unwrap_or(ACTIVE), text(&record, "@odata.etag")))
    }

    async fn plan(&self, kind: SyncKind) -> Result<Plan, ItsmError> {
        if kind == SyncKind::Incident {
            return Ok(self.incidents.clone());
        }
        let Some(entity_set) = &self.settings.change_entity_set else {
            return Err(ItsmError::Rejected(
                "no change request table is configured (ITSMC_PROVANCE_CHANGE_ENTITY_SET)".into(),
            ));
        };
        let mut cached = self.change_requests.lock().await;
        if let Some(plan) = cached.as_ref() {
            return Ok(plan.clone());
        }
        let answer = self.client.send(&requests::entity_definition(entity_set), &[]).await?;
        let definitions = answer.json("GET EntityDefinitions")?;
        let definition =
            definitions.get("value").and_then(Value::as_array).and_then(|v| v.first()).ok_or_else(|| {
                ItsmError::Rejected(format!(
                    "Dataverse has no table with the entity set {entity_set} (ITSMC_PROVANCE_CHANGE_ENTITY_SET)"
                ))
            })?;
        let (id, name) = (text(definition, "PrimaryIdAttribute"), text(definition, "PrimaryNameAttribute"));
        if id.is_empty() || name.is_empty() {
            return Err(ItsmError::Rejected(format!("the table of {entity_set} has no primary id or name column")));
        }
        let plan = Plan::change_requests(&self.settings, entity_set, &id, &name);
        *cached = Some(plan.clone());
        Ok(plan)
    }

    /// The first `keep` records, in id order, of those of `plan`'s table modified in the second starting at
    /// `second` whose id sorts after `after_id`. Dataverse does not order ids as text, so the whole second is
    /// read, a page at a time, holding no more than `keep` records and one page whatever the second holds.
    async fn second(
        &self,
        plan: &Plan,
        second: chrono::DateTime<chrono::Utc>,
        after_id: Option<&str>,
        keep: usize,
        page: usize,
    ) -> Result<Vec<Change>, ItsmError> {
        let (from, until) = (
            crate::sync::kinds::format_iso(second),
            crate::sync::kinds::format_iso(second + chrono::Duration::seconds(1)),
        );
        let mut request = requests::changes(&plan.entity_set, &plan.select, &plan.id_field, &from, Some(&until), page);
        let mut kept: Vec<Change> = Vec::new();
        loop {
            let (changes, next) = self.page(plan, &request).await?;
            kept.extend(changes.into_iter().filter(|c| after_id.is_none_or(|after| c.id.as_str() > after)));
            if kept.len() > keep {
                kept.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                kept.dedup_by(|a, b| a.id == b.id);
                kept.truncate(keep);
            }
            match next {
                Some(link) => request = requests::next(&link, &request.prefer),
                None => break,
            }
        }
        kept.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        kept.dedup_by(|a, b| a.id == b.id);
        kept.truncate(keep);
        Ok(kept)
    }

    /// Reads pages from `request` on until `limit` records are in `into` or the list ends; `true` when more
    /// were left.
    async fn read(
        &self,
        plan: &Plan,
        request: requests::Request,
        limit: usize,
        into: &mut Vec<Change>,
    ) -> Result<bool, ItsmError> {
        let mut request = request;
        loop {
            let (changes, next) = self.page(plan, &request).await?;
            into.extend(changes);
            match next {
                Some(link) if into.len() < limit => request = requests::next(&link, &request.prefer),
                Some(_) => return Ok(true),
                None => return Ok(false),
            }
        }
    }

    /// One page of changes, without the records that have no place in the order, and its next link.
    async fn page(&self, plan: &Plan, request: &requests::Request) -> Result<(Vec<Change>, Option<String>), ItsmError> {
        let answer = self.client.send(request, &[]).await?;
        let page = servicedesk::page(&answer.body, &plan.entity_set)?;
        let changes = page.value.iter().filter_map(|record| plan.change(record, &self.connection.name)).collect();
        Ok((changes, page.next_link))
    }
}

/// A property as text (`""` when absent or not a string).
fn text(record: &Value, name: &str) -> String {
    record.get(name).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn position(text: &str) -> Result<chrono::DateTime<chrono::Utc>, ItsmError> {
    crate::sync::kinds::parse_time(text)
        .ok_or_else(|| ItsmError::Rejected(format!("the sync position '{text}' is not a UTC date-time")))
}

#[async_trait]
impl Connector for Provance {
    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError> {
        let Some(request) = requests::find(&self.settings, correlation_key).filter(|_| kind == WorkItemType::Incident)
        else {
            return Ok(None);
        };
        let answer = self.client.send(&request, &[]).await?.json("GET incidents")?;
        match answer.get("value").and_then(Value::as_array).and_then(|v| v.first()) {
            Some(record) => Ok(Some(Found {
                item: self.work_item(record)?,
                active: record.get("statecode").and_then(Value::as_i64) == Some(ACTIVE),
            })),
            None => Ok(None),
        }
    }

    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError> {
        self.incidents_only(kind)?;
        let request = requests::create(&self.connection, &self.settings, content);
        let record = self.client.send(&request, &[]).await?.json("POST incidents")?;
        self.work_item(&record)
    }

    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError> {
        match self.state(&item.id).await {
            Ok((state, _)) => Ok(state == ACTIVE),
            Err(ItsmError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn add_note(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        self.incidents_only(item.kind)?;
        self.client.send(&requests::note(&item.id, note), &[]).await.map(drop)
    }

    async fn resolve(
        &self,
        item: &WorkItem,
        _content: &Content,
        close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError> {
        self.incidents_only(item.kind)?;
        let request = requests::close(&self.settings, &item.id, close_code, close_notes);
        match self.client.send(&request, &[]).await {
            Ok(_) => Ok(()),
            // Dataverse refuses to close a case that is no longer active: someone resolved or canceled it
            // first, which is what the resolve wanted.
            Err(ItsmError::Rejected(reason)) => match self.state(&item.id).await {
                Ok((state, _)) if state != ACTIVE => Ok(()),
                _ => Err(ItsmError::Rejected(reason)),
            },
            Err(e) => Err(e),
        }
    }

    async fn reopen(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        self.incidents_only(item.kind)?;
        // Reactivate the version read; when someone changed the case meanwhile (412), read it again and decide
        // once more.
        for attempt in 0..2 {
            let (state, etag) = self.state(&item.id).await?;
            if state == ACTIVE {
                break;
            }
            let answer = self.client.send(&requests::reopen(&item.id, &etag), &[412]).await?;
            if answer.status != 412 {
                break;
            }
            if attempt == 1 {
                return Err(ItsmError::Transient {
                    message: format!("case {} kept changing while itsmc reopened it (HTTP 412 twice)", item.id),
                    retry_after: None,
                });
            }
        }
        self.client.send(&requests::note(&item.id, note), &[]).await.map(drop)
    }

    /// At most `limit` changes in (second, id) order, ids compared as text. Every second answered is whole up to
    /// its last id answered, so that the sync, going on `Since` the last second or `Within` it after the last id,
    /// skips nothing.
    async fn changes(&self, kind: SyncKind, window: &Window, limit: usize) -> Result<Vec<Change>, ItsmError> {
        let plan = self.plan(kind).await?;
        let limit = limit.max(1);
        let page = limit.min(5000);
        let from = match window {
            Window::Since(updated) => position(updated)?,
            Window::After(updated) => position(updated)? + chrono::Duration::seconds(1),
            Window::Within { updated, after_id } => {
                // The rest of one second, by id.
                return self.second(&plan, position(updated)?, Some(after_id), limit, page).await;
            }
        };
        let first = requests::changes(
            &plan.entity_set,
            &plan.select,
            &plan.id_field,
            &crate::sync::kinds::format_iso(from),
            None,
            page,
        );
        let mut changes = Vec::new();
        let more = self.read(&plan, first, limit, &mut changes).await?;
        if more && let Some(last) = changes.last().map(|c| c.updated.clone()) {
            // Dataverse's order within the last second read is not (second, id), and the second may go on past
            // the page: when the earlier seconds leave room, read that second's first ids instead.
            changes.retain(|c| c.updated != last);
            if changes.len() < limit {
                let rest = limit - changes.len();
                changes.extend(self.second(&plan, position(&last)?, None, rest, page).await?);
            }
        }
        changes.sort_by(|a, b| (a.updated.as_str(), a.id.as_str()).cmp(&(b.updated.as_str(), b.id.as_str())));
        changes.truncate(limit);
        Ok(changes)
    }

    async fn probe(&self) -> Diagnosis {
        let found = self.client.probe(&requests::who_am_i(), "who it is (WhoAmI)").await;
        if !found.ok {
            return found;
        }
        let mut read = vec!["incidents".to_string()];
        let found = self.client.probe(&requests::probe("incidents", Some("incidentid")), "incidents").await;
        if !found.ok {
            return found;
        }
        if let Some(set) = &self.settings.change_entity_set {
            let found = self.client.probe(&requests::probe(set, None), set).await;
            if !found.ok {
                return found;
            }
            read.push(set.clone());
        }
        Diagnosis::ok(format!("signed in to {} and read {}", self.client.url, read.join(" and ")))
    }

    async fn configuration(&self) -> Result<RemoteConfiguration, ItsmError> {
        let mut configuration = RemoteConfiguration::default();
        for field in requests::CHOICE_FIELDS {
            let answer = match self.client.send(&requests::options(field), &[]).await {
                Ok(answer) => answer.json("GET EntityDefinitions")?,
                // A column the organization does not have offers nothing to check against.
                Err(ItsmError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let options = answer.pointer("/OptionSet/Options").and_then(Value::as_array).cloned().unwrap_or_default();
            let choices = options
                .iter()
                .map(|option| Choice {
                    value: option.get("Value").map(|v| v.to_string()).unwrap_or_default(),
                    label: option
                        .pointer("/Label/UserLocalizedLabel/Label")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                })
                .collect();
            configuration.choices.insert(field.to_string(), choices);
        }
        Ok(configuration)
    }
}
