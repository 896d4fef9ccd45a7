//! System Center Service Manager, through the Cireson portal's API (SCSM has no REST API of its own, and the
//! web app ITSMC installed beside it is gone with ITSMC). Incidents for the alert path; incidents and change
//! requests for the sync.
//!
//! `settings` reads the connection's settings, `requests` says what to send and how a projection is edited,
//! `client` sends it, `auth` keeps the portal's token; this file maps the [`Connector`] operations onto them.
//! Every change is a read of the projection, an edit, and a commit of both (`original` as read, `current` as
//! wanted): the portal saves the difference.

mod auth;
mod client;
pub mod requests;
mod servicedesk;
mod settings;

pub use settings::{SETTINGS, ScsmSettings, settings_from_lookup};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::Connection;
use crate::itsm::limit::Limiter;
use crate::itsm::{Connector, Diagnosis, Found, ItsmError, WorkItem};
use crate::secrets::Secrets;
use crate::sync::{Change, SyncKind, Window};
use crate::workitem::{Content, WorkItemType};
use requests::{INCIDENT_CLOSED, INCIDENT_RESOLVED};

/// The first span a sync reads in one request; it grows while windows are sparse and shrinks when one holds
/// far more than a page.
const FIRST_SPAN: Duration = Duration::from_secs(3600);
const LONGEST_SPAN: Duration = Duration::from_secs(32 * 86_400);

pub struct Scsm {
    connection: Connection,
    settings: ScsmSettings,
    client: client::Client,
    /// The signed-in user: its BaseId (a new incident's `createdById`) and display name (who wrote a comment).
    user: tokio::sync::OnceCell<(String, String)>,
    /// Per sync kind, the span of `LastModified` one request reads (the portal has no paging).
    spans: Mutex<[Duration; 2]>,
}

impl Scsm {
    pub fn new(
        connection: &Connection,
        settings: &ScsmSettings,
        http: reqwest::Client,
        vault: Option<Arc<Secrets>>,
    ) -> Scsm {
        let auth = auth::Auth::new(settings, vault);
        Scsm {
            connection: connection.clone(),
            settings: settings.clone(),
            client: client::Client::new(settings.url.clone(), http, auth, Limiter::new(connection.limits)),
            user: tokio::sync::OnceCell::new(),
            spans: Mutex::new([FIRST_SPAN; 2]),
        }
    }

    async fn user(&self) -> Result<&(String, String), ItsmError> {
        self.user
            .get_or_try_init(|| async {
                let answer = self.client.send(&requests::user_rights(&self.settings)).await?;
                let id = requests::text(&answer, "Id").to_ascii_lowercase();
                if !crate::config::is_guid(&id) {
                    return Err(ItsmError::Rejected(format!(
                        "the Cireson portal does not know user '{}' (IsUserAuthorized answered no Id)",
                        self.settings.username
                    )));
                }
                let name = Some(requests::text(&answer, "Name")).filter(|n| !n.is_empty());
                Ok((id, name.unwrap_or(&self.settings.username).to_string()))
            })
            .await
    }

    fn work_item(&self, projection: &Value) -> Result<WorkItem, ItsmError> {
        let id = requests::text(projection, "BaseId").to_ascii_lowercase();
        if id.is_empty() {
            return Err(ItsmError::Rejected("the Cireson portal's answer has no BaseId".into()));
        }
        let number = Some(requests::text(projection, "Id").to_string()).filter(|n| !n.is_empty());
        let url = number.as_ref().map(|n| format!("{}/Incident/Edit/{n}", self.settings.url));
        Ok(WorkItem { kind: WorkItemType::Incident, id, number, url })
    }

    /// The incident as the portal has it now, or `NotFound`.
    async fn read(&self, base_id: &str) -> Result<Value, ItsmError> {
        let answer = self.client.send(&requests::by_base_id(&self.settings.incident_projection_id, base_id)).await?;
        requests::into_objects(answer)
            .next()
            .ok_or_else(|| ItsmError::NotFound(format!("the Cireson portal has no incident with BaseId {base_id}")))
    }

    /// Read, edit, commit. A commit SCSM refuses because someone changed the incident since it was read (its
    /// optimistic concurrency check) is tried once more on a fresh read; if that collides too, the outbox tries
    /// again later (`Transient`). A refusal for any other reason (an enumeration id SCSM does not know, say) is
    /// `Rejected`: the same edit would be refused again.
    async fn change(&self, base_id: &str, edit: impl Fn(&mut Value)) -> Result<(), ItsmError> {
        let mut refused = String::new();
        for _ in 0..2 {
            let original = self.read(base_id).await?;
            let mut current = original.clone();
            edit(&mut current);
            if current == original {
                return Ok(());
            }
            match committed(self.client.send(&requests::commit(&original, &current)).await?) {
                Ok(_) => return Ok(()),
                Err(reason) if is_conflict(&reason) => refused = reason,
                Err(reason) => {
                    return Err(ItsmError::Rejected(format!(
                        "SCSM refused the change to incident {base_id}: {reason}"
                    )));
                }
            }
        }
        Err(ItsmError::Transient {
            message: format!("incident {base_id} changed while itsmc was changing it; trying again later: {refused}"),
            retry_after: None,
        })
    }

    fn span(&self, kind: SyncKind) -> Duration {
        self.spans.lock().map(|s| s[kind as usize]).unwrap_or(FIRST_SPAN)
    }

    fn set_span(&self, kind: SyncKind, span: Duration) {
        if let Ok(mut spans) = self.spans.lock() {
            spans[kind as usize] = span.clamp(Duration::from_secs(1), LONGEST_SPAN);
        }
    }

    async fn modified(
        &self,
        kind: SyncKind,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<Change>, ItsmError> {
        let answer = self.client.send(&requests::modified(&self.settings, kind, from, to)).await?;
        let Some(list) = answer.as_array() else {
            return Err(ItsmError::Transient {
                message: format!("the Cireson portal answered a {} query with no list", kind.name()),
                retry_after: None,
            });
        };
        // A record without a BaseId or LastModified cannot be placed in the sync's order: skipped, so that the
        // rest of the span still syncs.
        Ok(list
            .iter()
            .filter_map(|p| {
                let change = servicedesk::change(p, kind, &self.connection.name);
                if change.is_none() {
                    tracing::warn!(
                        connection = %self.connection.name,
                        kind = kind.name(),
                        id = requests::text(p, "Id"),
                        base_id = requests::text(p, "BaseId"),
                        last_modified = requests::text(p, "LastModified"),
                        "the Cireson portal sent a record without a BaseId or LastModified; not syncing it"
                    );
                }
                change
            })
            .collect())
    }
}

/// A commit's answer: `{"success": true, "BaseId": ...}`, or the reason SCSM gave.
fn committed(answer: Value) -> Result<Value, String> {
    match answer.get("success").and_then(Value::as_bool) {
        Some(false) => Err(client::error_text(&answer.to_string())),
        _ => Ok(answer),
    }
}

/// Whether a commit's refusal is SCSM's optimistic concurrency check: the work item's `LastModified` is no longer
/// the one in `original` (SCSM's `DiscoveryDataModificationCollisionException`, which the portal passes on).
fn is_conflict(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["discoverydatamodificationcollision", "changed by another", "modified by another", "concurrency"]
        .iter()
        .any(|mark| reason.contains(mark))
}

fn is_active(projection: &Value) -> bool {
    let status = requests::enum_id(projection, "Status");
    status != INCIDENT_RESOLVED && status != INCIDENT_CLOSED
}

fn created(projection: &Value) -> Option<DateTime<Utc>> {
    servicedesk::parse_time(requests::text(projection, "CreatedDate"))
}

#[async_trait]
impl Connector for Scsm {
    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError> {
        let Some(request) = requests::find(&self.settings, correlation_key).filter(|_| kind == WorkItemType::Incident)
        else {
            return Ok(None);
        };
        let answer = self.client.send(&request).await?;
        let newest = requests::into_objects(answer)
            .max_by_key(|p| (created(p), requests::text(p, "Id").len(), requests::text(p, "Id").to_string()));
        match newest {
            Some(projection) => Ok(Some(Found { item: self.work_item(&projection)?, active: is_active(&projection) })),
            None => Ok(None),
        }
    }

    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError> {
        if kind != WorkItemType::Incident {
            return Err(ItsmError::Rejected(format!("SCSM connections create incidents, not {kind:?}s")));
        }
        let (user_id, _) = self.user().await?;
        let template = self.client.send(&requests::from_template(&self.settings, user_id)).await?;
        if !template.is_object() {
            return Err(ItsmError::Rejected(format!(
                "the Cireson portal made no incident from template {} (ITSMC_SCSM_TEMPLATE_ID)",
                self.settings.template_id
            )));
        }
        let current = requests::new_incident(&template, &self.connection, &self.settings, content);
        let answer = committed(self.client.send(&requests::commit(&template, &current)).await?)
            .map_err(|reason| ItsmError::Rejected(format!("SCSM refused the new incident: {reason}")))?;
        let base_id = Some(requests::text(&answer, "BaseId"))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| requests::text(&current, "BaseId"))
            .to_ascii_lowercase();
        if base_id.is_empty() {
            return Err(ItsmError::Rejected("the Cireson portal saved the incident but named no BaseId".into()));
        }
        // The number (IR…) is given when the incident is saved: read it back. The incident exists either way;
        // failing here would have the outbox find it and note a re-fire that never happened.
        match self.read(&base_id).await {
            Ok(saved) => self.work_item(&saved),
            Err(error) => {
                tracing::warn!(%error, base_id, "SCSM saved the incident, but reading its number back failed");
                Ok(WorkItem { kind, id: base_id, number: None, url: None })
            }
        }
    }

    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError> {
        match self.read(&item.id).await {
            Ok(projection) => Ok(is_active(&projection)),
            Err(ItsmError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn add_note(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        let (_, by) = self.user().await?;
        self.change(&item.id, |p| requests::add_comment(p, SyncKind::Incident, note, by, Utc::now())).await
    }

    async fn resolve(
        &self,
        item: &WorkItem,
        _content: &Content,
        _close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError> {
        // One a person already resolved or closed is left as they left it: their resolution stands.
        self.change(&item.id, |p| {
            if is_active(p) {
                requests::resolve(p, &self.settings, close_notes, Utc::now());
            }
        })
        .await
    }

    async fn reopen(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        let (_, by) = self.user().await?;
        self.change(&item.id, |p| requests::reopen(p, note, by, Utc::now())).await
    }

    /// The portal reads no pages: a query answers every match. So the records after the window's start are read
    /// a span of `LastModified` at a time (widening while spans hold less than a page, narrowed when one holds
    /// far more), sorted by (update time, BaseId), and the first `limit` answered. Every record of a span is
    /// read, so what is answered has no gap before it.
    async fn changes(&self, kind: SyncKind, window: &Window, limit: usize) -> Result<Vec<Change>, ItsmError> {
        let second = chrono::Duration::seconds(1);
        let parse = |t: &str| {
            crate::sync::kinds::parse_time(t)
                .ok_or_else(|| ItsmError::Rejected(format!("the sync position {window:?} is not a time")))
        };
        let (mut from, after_id) = match window {
            Window::Since(t) => (parse(t)?, None),
            Window::After(t) => (parse(t)? + second, None),
            Window::Within { updated, after_id } => (parse(updated)?, Some(after_id.as_str())),
        };
        if let Some(after_id) = after_id {
            let mut within = self.modified(kind, from, Some(from + second)).await?;
            within.retain(|c| c.id.as_str() > after_id);
            within.sort_by(|a, b| (&a.updated, &a.id).cmp(&(&b.updated, &b.id)));
            within.truncate(limit);
            return Ok(within);
        }
        let horizon = Utc::now() + chrono::Duration::minutes(5);
        let mut found: Vec<Change> = Vec::new();
        loop {
            let span = self.span(kind);
            let to = from + chrono::Duration::from_std(span).unwrap_or(second);
            let last = to >= horizon;
            let page = self.modified(kind, from, (!last).then_some(to)).await?;
            if page.len() > 4 * limit.max(1) && span > Duration::from_secs(1) {
                // Far more than a page in one span: read it again narrower rather than carry it all.
                self.set_span(kind, span / 4);
                continue;
            }
            if page.len() < limit / 4 {
                self.set_span(kind, span * 4);
            }
            found.extend(page);
            if found.len() >= limit || last {
                break;
            }
            from = to;
        }
        found.sort_by(|a, b| (&a.updated, &a.id).cmp(&(&b.updated, &b.id)));
        found.truncate(limit);
        Ok(found)
    }

    async fn probe(&self) -> Diagnosis {
        let rights = match self.client.probe(&requests::user_rights(&self.settings), "the user's rights").await {
            Ok(rights) => rights,
            Err(diagnosis) => return diagnosis,
        };
        let allowed = |name: &str| rights.get("Security").and_then(|s| s.get(name)).and_then(Value::as_bool);
        let analyst = rights.get("Analyst").map(|a| a.as_bool().unwrap_or(a.as_i64() == Some(1)));
        if analyst == Some(false) || allowed("CanCreateIncident") == Some(false) {
            return Diagnosis::problem(
                "missing_role",
                format!(
                    "'{}' may sign in but is not an analyst allowed to create incidents; add it to an SCSM user role \
                     with incident rights (Incident Resolvers, or an advanced operator role) and to the portal's \
                     analysts",
                    self.settings.username
                ),
            );
        }
        let user_id = requests::text(&rights, "Id").to_ascii_lowercase();
        let template = requests::from_template(&self.settings, &user_id);
        match self.client.probe(&template, "the incident template").await {
            Ok(projection) if projection.is_object() => {}
            Err(diagnosis) if diagnosis.code != "unexpected" => return diagnosis,
            Ok(_) | Err(_) => {
                return Diagnosis::problem(
                    "missing_template",
                    format!(
                        "the portal makes no incident from template {} (ITSMC_SCSM_TEMPLATE_ID); give the id of an \
                         incident template (Library > Templates in the SCSM console)",
                        self.settings.template_id
                    ),
                );
            }
        }
        for (kind, setting) in [
            (SyncKind::Incident, "ITSMC_SCSM_INCIDENT_PROJECTION_ID"),
            (SyncKind::ChangeRequest, "ITSMC_SCSM_CHANGE_PROJECTION_ID"),
        ] {
            let projection = requests::projection(&self.settings, kind);
            let what = format!("the {} projection {projection} ({setting})", kind.name());
            let read = requests::by_base_id(projection, requests::NOTHING);
            if let Err(diagnosis) = self.client.probe(&read, &what).await {
                return diagnosis;
            }
        }
        // A criteria on a property the class does not declare fails: the correlation key would never be found.
        let find = requests::find(&self.settings, "0").expect("a hex key");
        if let Err(diagnosis) = self.client.probe(&find, "incidents by their correlation key").await {
            return match diagnosis.code.as_str() {
                "unavailable" | "unexpected" => Diagnosis::problem(
                    "missing_property",
                    format!(
                        "incidents cannot be searched by {} of class {} (ITSMC_SCSM_CORRELATION_PROPERTY, \
                         ITSMC_SCSM_CORRELATION_CLASS_ID): {}",
                        self.settings.correlation_property, self.settings.correlation_class_id, diagnosis.message
                    ),
                ),
                _ => diagnosis,
            };
        }
        Diagnosis::ok(format!(
            "signed in to {} as {}, made an incident from the template (unsaved) and read incidents and change requests",
            self.settings.url, self.settings.username
        ))
    }
}
