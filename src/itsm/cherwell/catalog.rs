//! The connection's view of CSM's configuration: business object ids, field ids, states, and the journal
//! relationship, read once through `getbusinessobjectsummary`, `getbusinessobjecttemplate` and
//! `getbusinessobjectschema`, and kept until CSM says an id is unknown (an administrator changed the
//! business object), when it is read again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::client::{Client, Failure};
use super::requests;
use crate::itsm::ItsmError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub id: String,
    pub display_name: String,
}

/// One business object as its summary and template describe it.
#[derive(Debug)]
pub struct BusOb {
    /// CSM's name for it.
    pub name: String,
    /// The name itsmc asked for (the configured one), which the catalog keeps it under; it may differ from
    /// CSM's `name` (another case, or a display name CSM's summary answers).
    pub requested: String,
    pub id: String,
    pub fields: Vec<Field>,
    /// The lifecycle's states, in CSM's order (empty for objects without one).
    pub states: Vec<String>,
    /// The record id field (`RecID`).
    pub rec_id_field: String,
    /// Members of a group (`Journal - Note` of `Journal`), as (display name, name, id).
    pub members: Vec<(String, String, String)>,
}

impl BusOb {
    /// The field called `name` (its name, else its display name; case as CSM compares: ignored).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .or_else(|| self.fields.iter().find(|f| f.display_name.eq_ignore_ascii_case(name)))
    }

    /// The first of `names` the object has.
    pub fn first_field(&self, names: &[impl AsRef<str>]) -> Option<&Field> {
        names.iter().find_map(|name| self.field(name.as_ref()))
    }

    /// The field called `name`; else the configuration may be stale (an administrator just added the field):
    /// read once more, then a rejection that names the field, the object and what to do.
    pub fn require(&self, name: &str, setting: &str) -> Result<&Field, Failure> {
        self.field(name).ok_or_else(|| {
            Failure::Stale(format!(
                "the Cherwell business object {} has no field named {name}; add it in CSM Administrator or change {setting}",
                self.name
            ))
        })
    }
}

/// Where incident notes go: Journal records of type Journal - Note, related to the incident.
#[derive(Debug)]
pub struct Journal {
    pub bus_ob_id: String,
    pub note_type_id: String,
    pub relationship_id: String,
    pub type_field: Field,
    pub details_field: Field,
}

#[derive(Default)]
pub struct Catalog {
    objects: Mutex<HashMap<String, Arc<BusOb>>>,
    journal: Mutex<Option<Arc<Journal>>>,
    loading: tokio::sync::Mutex<()>,
}

fn text(value: &Value, name: &str) -> String {
    value.get(name).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl Catalog {
    fn cached(&self, name: &str) -> Option<Arc<BusOb>> {
        self.objects.lock().ok()?.get(&name.to_ascii_lowercase()).cloned()
    }

    /// The business object called `name`, read from CSM the first time.
    pub async fn object(&self, client: &Client, name: &str) -> Result<Arc<BusOb>, Failure> {
        if let Some(object) = self.cached(name) {
            return Ok(object);
        }
        let _one_at_a_time = self.loading.lock().await;
        if let Some(object) = self.cached(name) {
            return Ok(object);
        }
        let object = Arc::new(load(client, name).await?);
        tracing::info!(object = name, id = %object.id, fields = object.fields.len(), "read the Cherwell business object's configuration");
        if let Ok(mut objects) = self.objects.lock() {
            objects.insert(name.to_ascii_lowercase(), Arc::clone(&object));
        }
        Ok(object)
    }

    /// The journal's ids, read from CSM the first time.
    pub async fn journal(
        &self,
        client: &Client,
        incident: &BusOb,
        relationship: &str,
    ) -> Result<Arc<Journal>, Failure> {
        if let Some(journal) = self.journal.lock().ok().and_then(|j| j.clone()) {
            return Ok(journal);
        }
        let journal_object = self.object(client, "Journal").await?;
        let _one_at_a_time = self.loading.lock().await;
        if let Some(journal) = self.journal.lock().ok().and_then(|j| j.clone()) {
            return Ok(journal);
        }
        let schema = client.send(&requests::schema(&incident.id)).await?;
        let relationship_id = schema
            .get("relationships")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| text(r, "displayName").eq_ignore_ascii_case(relationship))
            .map(|r| text(r, "relationshipId"))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                Failure::Stale(format!(
                    "the Cherwell business object {} has no relationship named '{relationship}' to write notes to; \
                     check ITSMC_CHERWELL_JOURNAL_RELATIONSHIP",
                    incident.name
                ))
            })?;
        let note_type_id = journal_object
            .members
            .iter()
            .find(|(display, name, _)| {
                display.eq_ignore_ascii_case("Journal - Note") || name.eq_ignore_ascii_case("JournalNote")
            })
            .map(|(_, _, id)| id.clone())
            .ok_or_else(|| ItsmError::Rejected("Cherwell's Journal has no Journal - Note member".into()))?;
        let journal = Arc::new(Journal {
            bus_ob_id: journal_object.id.clone(),
            note_type_id,
            relationship_id,
            type_field: journal_object.require("JournalTypeID", "the Journal business object")?.clone(),
            details_field: journal_object.require("Details", "the Journal business object")?.clone(),
        });
        if let Ok(mut cached) = self.journal.lock() {
            *cached = Some(Arc::clone(&journal));
        }
        Ok(journal)
    }

    /// CSM said an id is unknown while `object` was in use: forget the configuration, so the next use reads it
    /// again. When another caller already did (`object` is no longer the kept copy), nothing is forgotten.
    pub fn forget(&self, object: &Arc<BusOb>) {
        let current = self.cached(&object.requested).is_some_and(|cached| Arc::ptr_eq(&cached, object));
        if current {
            self.clear();
        }
    }

    /// Forget everything (a refresh the operator asked for).
    pub fn clear(&self) {
        if let Ok(mut objects) = self.objects.lock() {
            objects.clear();
        }
        if let Ok(mut journal) = self.journal.lock() {
            *journal = None;
        }
    }
}

async fn load(client: &Client, name: &str) -> Result<BusOb, Failure> {
    let summaries = client.send(&requests::summary(name)).await?;
    let summary = summaries
        .as_array()
        .and_then(|all| all.iter().find(|s| text(s, "name").eq_ignore_ascii_case(name)).or(all.first()))
        .filter(|s| !text(s, "busObId").is_empty())
        .ok_or_else(|| {
            ItsmError::Rejected(format!(
                "Cherwell has no business object named {name} (getbusinessobjectsummary found none)"
            ))
        })?;
    let id = text(summary, "busObId");
    let template = client.send(&requests::template(&id)).await?;
    let fields = template
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| Field { name: text(f, "name"), id: text(f, "fieldId"), display_name: text(f, "displayName") })
        .filter(|f| !f.id.is_empty() && !f.name.is_empty())
        .collect();
    let states =
        text(summary, "states").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let members = summary
        .get("groupSummaries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| (text(m, "displayName"), text(m, "name"), text(m, "busObId")))
        .collect();
    let shown = text(summary, "name");
    Ok(BusOb {
        name: if shown.is_empty() { name.to_string() } else { shown },
        requested: name.to_string(),
        id,
        fields,
        states,
        rec_id_field: text(summary, "firstRecIdField"),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, requested: &str) -> Arc<BusOb> {
        Arc::new(BusOb {
            name: name.into(),
            requested: requested.into(),
            id: "bo".into(),
            fields: Vec::new(),
            states: Vec::new(),
            rec_id_field: "rec".into(),
            members: Vec::new(),
        })
    }

    #[test]
    fn a_stale_object_is_forgotten_under_the_name_it_was_asked_for() {
        let catalog = Catalog::default();
        // Asked for as "incidents", CSM's summary named it "Incident" (the fallback to its first summary).
        let kept = object("Incident", "Incidents");
        catalog.objects.lock().unwrap().insert("incidents".into(), Arc::clone(&kept));
        // Another caller's copy, already replaced: nothing is forgotten.
        catalog.forget(&object("Incident", "Incidents"));
        assert!(catalog.cached("Incidents").is_some());
        catalog.forget(&kept);
        assert!(catalog.cached("Incidents").is_none(), "read again on the next use");
    }
}
