//! Cherwell Service Management (Ivanti CSM), through its REST API: incidents created and updated with
//! `savebusinessobject`, found by the correlation key in a field of their own with `getsearchresults`, notes
//! written as Journal - Note records related to the incident; incidents and change requests read for the sync
//! with `getsearchresults` on their last-modified field.
//!
//! `requests` says what to send, `client` sends it, `auth` keeps the token fresh, `catalog` holds the business
//! object and field ids CSM's configuration gives, `servicedesk` maps records to `ServiceDesk_CL`; this file
//! maps the [`Connector`] operations onto them and reads the answers.

mod auth;
mod catalog;
mod client;
pub mod requests;
mod servicedesk;
mod settings;

pub use settings::{AuthMode, CherwellSettings, SETTINGS, settings_from_lookup};

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use self::catalog::{BusOb, Catalog};
use self::client::{Client, Failure};
use self::requests::FieldValue;
use crate::config::Connection;
use crate::itsm::limit::Limiter;
use crate::itsm::{Choice, Connector, Diagnosis, Found, ItsmError, RemoteConfiguration, WorkItem};
use crate::secrets::Secrets;
use crate::sync::{Change, SyncKind, Window};
use crate::workitem::{Content, WorkItemType};

pub struct Cherwell {
    connection: Connection,
    settings: CherwellSettings,
    client: Client,
    catalog: Catalog,
}

fn text(value: &Value, name: &str) -> String {
    value.get(name).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A field of a read record, by name.
fn field<'v>(record: &'v Value, name: &str) -> Option<&'v str> {
    record
        .get("fields")
        .and_then(Value::as_array)?
        .iter()
        .find(|f| f.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(name)))?
        .get("value")
        .and_then(Value::as_str)
}

impl Cherwell {
    pub fn new(
        connection: &Connection,
        settings: &CherwellSettings,
        http: reqwest::Client,
        vault: Option<Arc<Secrets>>,
    ) -> Cherwell {
        let auth = auth::Auth::new(settings, vault);
        Cherwell {
            connection: connection.clone(),
            settings: settings.clone(),
            client: Client::new(settings.url.clone(), http, auth, Limiter::new(connection.limits)),
            catalog: Catalog::default(),
        }
    }

    /// Cherwell has incidents; events and alerts are refused (at start-up for the connection's own type, here
    /// for a type an alert's `?workItemType=` asks for).
    fn incident_only(&self, kind: WorkItemType) -> Result<(), ItsmError> {
        match kind {
            WorkItemType::Incident => Ok(()),
            other => Err(ItsmError::Rejected(format!(
                "Cherwell has no {} work items; connection '{}' creates Incidents",
                other.as_str(),
                self.connection.name
            ))),
        }
    }

    /// Runs `op` with the business object's configuration; when CSM says an id in it is unknown, reads the
    /// configuration again and runs `op` once more.
    async fn with_object<T, F, Fut>(&self, name: &str, op: F) -> Result<T, ItsmError>
    where
        F: Fn(Arc<BusOb>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut refreshed = false;
        loop {
            let object = self.catalog.object(&self.client, name).await?;
            match op(Arc::clone(&object)).await {
                Err(Failure::Stale(reason)) if !refreshed => {
                    tracing::info!(
                        object = name,
                        reason,
                        "Cherwell no longer knows an id itsmc kept; reading its configuration again"
                    );
                    self.catalog.forget(&object);
                    refreshed = true;
                }
                other => return other.map_err(ItsmError::from),
            }
        }
    }

    fn work_item(&self, object: &BusOb, rec_id: &str, public_id: &str) -> Result<WorkItem, ItsmError> {
        if rec_id.is_empty() {
            return Err(ItsmError::Rejected("Cherwell's answer has no busObRecId".into()));
        }
        let number = Some(public_id.to_string()).filter(|n| !n.is_empty());
        // The browser client's address for a record, next to the API's: https://host/CherwellClient/Access/...
        let url = match (&number, self.client.base_url.rsplit_once('/')) {
            (Some(number), Some((host, api))) if api.eq_ignore_ascii_case("CherwellAPI") => {
                Some(format!("{host}/CherwellClient/Access/{}/{number}", object.name))
            }
            _ => None,
        };
        Ok(WorkItem { kind: WorkItemType::Incident, id: rec_id.to_string(), number, url })
    }

    fn status_active(&self, status: &str) -> bool {
        !self.settings.closed_statuses.iter().any(|s| s.eq_ignore_ascii_case(status.trim()))
    }

    /// `(names, value)` pairs as fields to save, each by the first name the object has; a name it lacks is a
    /// stale configuration (once) or a rejection naming the field.
    fn resolve_fields(&self, object: &BusOb, named: &[(Vec<String>, String)]) -> Result<Vec<FieldValue>, Failure> {
        named
            .iter()
            .map(|(names, value)| match object.first_field(names) {
                Some(f) => Ok(FieldValue { id: f.id.clone(), name: f.name.clone(), value: value.clone() }),
                None => Err(Failure::Stale(format!(
                    "the Cherwell business object {} has no field named {}; add it in CSM Administrator or change the \
                     connection's fields",
                    object.name,
                    names.join(" or ")
                ))),
            })
            .collect()
    }

    /// Saves fields of a record (create when `rec_id` is `None`) and reads the answer, field errors included.
    async fn save(&self, object: &BusOb, rec_id: Option<&str>, fields: &[FieldValue]) -> Result<Value, Failure> {
        let answer = self.client.answer_reloading(&requests::save(&object.id, rec_id, fields)).await?;
        let errors: Vec<String> = answer
            .body
            .get("fieldValidationErrors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                let id = text(e, "fieldId");
                let short = id.rsplit("FI:").next().unwrap_or_default();
                let name = object.fields.iter().find(|f| f.id == short).map_or(id.clone(), |f| f.name.clone());
                let reason = [text(e, "error"), text(e, "errorCode")].into_iter().find(|t| !t.is_empty());
                format!("{name}: {}", reason.unwrap_or_else(|| "refused".into()))
            })
            .collect();
        if !errors.is_empty() {
            return Err(Failure::Itsm(ItsmError::Rejected(format!(
                "Cherwell refused the {} ({}): {}",
                object.name,
                client::error_text(&answer),
                errors.join("; ")
            ))));
        }
        let what = client::describe(&requests::save(&object.id, rec_id, &[]));
        if (200..300).contains(&answer.status) {
            if let Some(failure) = client::body_error(&answer.body, answer.status, &what) {
                return Err(failure);
            }
            return Ok(answer.body);
        }
        Err(client::classify(&answer, &what))
    }

    async fn set_fields(&self, item: &WorkItem, fields: Vec<(String, String)>) -> Result<(), ItsmError> {
        self.incident_only(item.kind)?;
        let named: Vec<(Vec<String>, String)> = fields.into_iter().map(|(n, v)| (vec![n], v)).collect();
        self.with_object(&self.settings.incident_object, |object| {
            let named = &named;
            async move {
                let fields = self.resolve_fields(&object, named)?;
                self.save(&object, Some(&item.id), &fields).await.map(drop)
            }
        })
        .await
    }

    async fn note(&self, item: &WorkItem, note: &str) -> Result<(), ItsmError> {
        self.incident_only(item.kind)?;
        self.with_object(&self.settings.incident_object, |incident| async move {
            let journal = self.catalog.journal(&self.client, &incident, &self.settings.journal_relationship).await?;
            let fields = [
                FieldValue {
                    id: journal.type_field.id.clone(),
                    name: journal.type_field.name.clone(),
                    value: journal.note_type_id.clone(),
                },
                FieldValue {
                    id: journal.details_field.id.clone(),
                    name: journal.details_field.name.clone(),
                    value: note.to_string(),
                },
            ];
            let request =
                requests::save_related(&incident.id, &item.id, &journal.relationship_id, &journal.bus_ob_id, &fields);
            self.client.send(&request).await.map(drop)
        })
        .await
    }

    fn object_name(&self, kind: SyncKind) -> &str {
        match kind {
            SyncKind::Incident => &self.settings.incident_object,
            SyncKind::ChangeRequest => &self.settings.change_object,
        }
    }
}

#[async_trait]
impl Connector for Cherwell {
    async fn find(&self, kind: WorkItemType, correlation_key: &str) -> Result<Option<Found>, ItsmError> {
        self.incident_only(kind)?;
        // The key is hex we made; checked anyway, as it goes into a query.
        if correlation_key.is_empty() || !correlation_key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.with_object(&self.settings.incident_object, |object| async move {
            let key = object.require(&self.settings.correlation_field, "ITSMC_CHERWELL_CORRELATION_FIELD")?;
            let status = object.require(&self.settings.status_field, "ITSMC_CHERWELL_STATUS_FIELD")?;
            let created = object.field("CreatedDateTime");
            let mut fields = vec![key.id.as_str(), status.id.as_str()];
            let mut sorting = Vec::new();
            if let Some(created) = created {
                // The newest first, should there be several.
                fields.push(created.id.as_str());
                sorting.push((created.id.as_str(), false));
            }
            let filter = requests::Filter { field_id: &key.id, operator: "eq", value: correlation_key.to_string() };
            let request = requests::search(&object.id, &fields, &[filter], &sorting, 1, 1);
            let body = self.client.send(&request).await?;
            let Some(record) = body.get("businessObjects").and_then(Value::as_array).and_then(|r| r.first()) else {
                return Ok(None);
            };
            let item = self.work_item(&object, &text(record, "busObRecId"), &text(record, "busObPublicId"))?;
            let active = self.status_active(field(record, &status.name).unwrap_or_default());
            Ok(Some(Found { item, active }))
        })
        .await
    }

    async fn create(&self, kind: WorkItemType, content: &Content) -> Result<WorkItem, ItsmError> {
        self.incident_only(kind)?;
        let named = requests::create_fields(&self.connection, &self.settings, content);
        self.with_object(&self.settings.incident_object, |object| {
            let named = &named;
            async move {
                let fields = self.resolve_fields(&object, named)?;
                let body = self.save(&object, None, &fields).await?;
                Ok(self.work_item(&object, &text(&body, "busObRecId"), &text(&body, "busObPublicId"))?)
            }
        })
        .await
    }

    async fn is_active(&self, item: &WorkItem) -> Result<bool, ItsmError> {
        self.incident_only(item.kind)?;
        let found = self
            .with_object(&self.settings.incident_object, |object| async move {
                let status = object.require(&self.settings.status_field, "ITSMC_CHERWELL_STATUS_FIELD")?.name.clone();
                let record = self.client.send(&requests::read(&object.id, &item.id)).await?;
                Ok(self.status_active(field(&record, &status).unwrap_or_default()))
            })
            .await;
        match found {
            Err(ItsmError::NotFound(_)) => Ok(false),
            other => other,
        }
    }

    async fn add_note(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        self.note(item, note).await
    }

    async fn resolve(
        &self,
        item: &WorkItem,
        _content: &Content,
        close_code: &str,
        close_notes: &str,
    ) -> Result<(), ItsmError> {
        self.incident_only(item.kind)?;
        let named: Vec<(Vec<String>, String)> = requests::resolve_fields(&self.settings, close_code, close_notes)
            .into_iter()
            .map(|(n, v)| (vec![n], v))
            .collect();
        self.with_object(&self.settings.incident_object, |object| {
            let named = &named;
            async move {
                // A person may have resolved or closed it since: their close stands.
                let status = object.require(&self.settings.status_field, "ITSMC_CHERWELL_STATUS_FIELD")?.name.clone();
                let record = self.client.send(&requests::read(&object.id, &item.id)).await?;
                let current = field(&record, &status).unwrap_or_default().trim();
                if !self.status_active(current) || current.eq_ignore_ascii_case(&self.settings.resolved_status) {
                    tracing::info!(
                        incident = item.number.as_deref().unwrap_or(&item.id),
                        status = current,
                        "the Cherwell incident is already resolved or closed; leaving it as it is"
                    );
                    return Ok(());
                }
                let fields = self.resolve_fields(&object, named)?;
                self.save(&object, Some(&item.id), &fields).await.map(drop)
            }
        })
        .await
    }

    async fn reopen(&self, item: &WorkItem, _content: &Content, note: &str) -> Result<(), ItsmError> {
        self.set_fields(item, requests::reopen_fields(&self.settings)).await?;
        self.note(item, note).await
    }

    async fn changes(&self, kind: SyncKind, window: &Window, limit: usize) -> Result<Vec<Change>, ItsmError> {
        self.with_object(self.object_name(kind), |object| async move {
            let plan = servicedesk::Plan::new(kind, &object, &self.settings)?;
            let reader = servicedesk::Reader {
                client: &self.client,
                object: &object,
                plan: &plan,
                kind,
                connection: &self.connection.name,
                format: &self.settings.date_format,
            };
            reader.changes(window, limit).await
        })
        .await
    }

    async fn probe(&self) -> Diagnosis {
        let incident = match self.catalog_for_probe(&self.settings.incident_object).await {
            Ok(object) => object,
            Err(diagnosis) => return diagnosis,
        };
        if incident.field(&self.settings.correlation_field).is_none() {
            return Diagnosis::problem(
                "missing_field",
                format!(
                    "the Cherwell business object {} has no field named {}, which holds itsmc's correlation key: add a \
                     text field of 40 characters with that name in CSM Administrator (or name another in \
                     ITSMC_CHERWELL_CORRELATION_FIELD)",
                    incident.name, self.settings.correlation_field
                ),
            );
        }
        let unknown: Vec<&String> = [&self.settings.resolved_status, &self.settings.reopen_status]
            .into_iter()
            .chain(&self.settings.closed_statuses)
            .filter(|s| {
                !incident.states.is_empty() && !incident.states.iter().any(|known| known.eq_ignore_ascii_case(s))
            })
            .collect();
        if !unknown.is_empty() {
            return Diagnosis::problem(
                "invalid_values",
                format!(
                    "{} has no status {}; its statuses are {} (ITSMC_CHERWELL_RESOLVED_STATUS, _REOPEN_STATUS, \
                     _CLOSED_STATUSES)",
                    incident.name,
                    unknown.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "),
                    incident.states.join(", ")
                ),
            );
        }
        let mut read = Vec::new();
        for name in [&self.settings.incident_object, &self.settings.change_object] {
            let object = match self.catalog_for_probe(name).await {
                Ok(object) => object,
                Err(diagnosis) => return diagnosis,
            };
            // One record, as the sync reads them: the user may see the object's configuration but not its records.
            let request = requests::search(&object.id, &[object.rec_id_field.as_str()], &[], &[], 1, 1);
            if let Err(diagnosis) = self.probe_answer(&request, name).await {
                return diagnosis;
            }
            read.push(name.as_str());
        }
        Diagnosis::ok(format!(
            "signed in to {} as {} and read {}",
            self.client.base_url,
            self.settings.username,
            read.join(" and ")
        ))
    }

    async fn configuration(&self) -> Result<RemoteConfiguration, ItsmError> {
        self.catalog.clear();
        let incident = self.catalog.object(&self.client, &self.settings.incident_object).await?;
        let mut configuration = RemoteConfiguration::default();
        let states = incident.states.iter().map(|s| Choice { value: s.clone(), label: s.clone() }).collect();
        configuration.choices.insert(self.settings.status_field.clone(), states);
        Ok(configuration)
    }
}

impl Cherwell {
    /// A business object's configuration for the connection test, or what went wrong in an operator's terms.
    async fn catalog_for_probe(&self, name: &str) -> Result<Arc<BusOb>, Diagnosis> {
        self.probe_answer(&requests::summary(name), name).await?;
        self.catalog.object(&self.client, name).await.map_err(|failure| match ItsmError::from(failure) {
            ItsmError::Rejected(message) => Diagnosis::problem("missing_object", message),
            other => Diagnosis::problem("unexpected", other.to_string()),
        })
    }

    fn missing_role(&self, what: &str, reason: &str) -> Diagnosis {
        Diagnosis::problem(
            "missing_role",
            format!(
                "user {} may sign in but not read {what} ({reason}); give the user's security group rights to view, \
                 add and edit {what} (and to add Journal records)",
                self.settings.username
            ),
        )
    }

    /// Sends one request for the connection test and tells apart what can be wrong.
    async fn probe_answer(&self, request: &requests::Request, what: &str) -> Result<(), Diagnosis> {
        let answer = match self.client.answer(request).await {
            Ok(answer) => answer,
            Err(failure) => {
                let unreachable = |message: String| {
                    Diagnosis::problem(
                        "unreachable",
                        format!("{}: {message}; check ITSMC_URL and that this host can reach it", self.client.base_url),
                    )
                };
                return Err(match (self.client.auth().failure(), ItsmError::from(failure)) {
                    (Some(auth::GrantFailure::ClientId(message) | auth::GrantFailure::Credentials(message)), _) => {
                        Diagnosis::problem("wrong_credentials", message)
                    }
                    (Some(auth::GrantFailure::Unreachable(message)), _) => unreachable(message),
                    (Some(auth::GrantFailure::Status { status: 429, retry_after, message }), _) => {
                        rate_limited(retry_after, &message)
                    }
                    (Some(auth::GrantFailure::Status { status: 500..=599, message, .. }), _) => {
                        Diagnosis::problem("unavailable", message)
                    }
                    (Some(auth::GrantFailure::Status { message, .. }), _) => Diagnosis::problem("unexpected", message),
                    (None, ItsmError::Auth(message)) => Diagnosis::problem("wrong_credentials", message),
                    (None, ItsmError::Transient { message, .. }) => unreachable(message),
                    (None, other) => Diagnosis::problem("unexpected", other.to_string()),
                });
            }
        };
        let code = answer.body.get("errorCode").and_then(Value::as_str).unwrap_or_default().to_ascii_uppercase();
        let has_error = answer.body.get("hasError").and_then(Value::as_bool) == Some(true);
        let reason = client::error_text(&answer);
        match answer.status {
            200..=299 if !has_error => Ok(()),
            403 => Err(self.missing_role(what, &reason)),
            _ if code == "INSUFFICIENTRIGHTS" => Err(self.missing_role(what, &reason)),
            401 => Err(Diagnosis::problem(
                "wrong_credentials",
                format!("Cherwell granted a token but refused it ({reason}); check the REST API client's settings"),
            )),
            429 => Err(rate_limited(answer.retry_after, &reason)),
            500..=599 => {
                Err(Diagnosis::problem("unavailable", format!("Cherwell answered HTTP {}: {reason}", answer.status)))
            }
            status => Err(Diagnosis::problem("unexpected", format!("Cherwell answered HTTP {status}: {reason}"))),
        }
    }
}

fn rate_limited(retry_after: Option<std::time::Duration>, reason: &str) -> Diagnosis {
    Diagnosis::problem(
        "rate_limited",
        format!(
            "Cherwell's rate limit is reached{} ({reason}); try again later, or sync less often",
            retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default()
        ),
    )
}
