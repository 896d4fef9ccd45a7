//! What the product-independent tests need of an ITSM emulator: the settings that point itsmc at it, its work
//! items as one shape, and the faults and changes a test makes. Each product's emulator implements
//! [`EmulatedItsm`], so the alert path and the sync run table-driven over every product (`tests/products.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::harness::Itsmc;
use super::servicenow::ServiceNowEmulator;

/// A work item as a test looks at it, whatever the product keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedItem {
    /// The product's id (ServiceNow `sys_id`, Cherwell `busObRecId`, Dataverse `incidentid`).
    pub id: String,
    /// The correlation key itsmc stored on it.
    pub correlation: String,
    /// Neither resolved nor closed.
    pub open: bool,
    /// Work notes / journal entries added after creation, oldest first.
    pub notes: Vec<String>,
}

pub trait EmulatedItsm: Send + Sync {
    /// The product's name as `ITSMC_PRODUCT` takes it.
    fn product(&self) -> &'static str;
    /// The environment settings of one connection to this emulator (ITSMC_PRODUCT, ITSMC_URL, credentials...).
    fn settings(&self) -> Vec<(String, String)>;
    /// The incidents (`kind` "Incident") or change requests ("ChangeRequest"), in creation order.
    fn items(&self, kind: &str) -> Vec<EmulatedItem>;
    /// Answer every request with 503 (the product down) until called with `false`.
    fn set_down(&self, down: bool);
    /// A person resolves (or closes) the work item `id`.
    fn close(&self, id: &str);
    /// `n` records of `kind` last modified evenly between `from` and `to`, for the sync.
    fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>);
}

/// itsmc with `product`'s settings, then `ITSMC_CONNECTION_NAME` when `name` is given, then `extra`, which win;
/// a setting whose value ends up empty is left out.
pub async fn start_itsmc(product: &dyn EmulatedItsm, name: Option<&str>, extra: &[(&str, &str)]) -> Itsmc {
    let mut settings: HashMap<String, String> = product.settings().into_iter().collect();
    if let Some(name) = name {
        settings.insert("ITSMC_CONNECTION_NAME".into(), name.into());
    }
    for (k, v) in extra {
        settings.insert(k.to_string(), v.to_string());
    }
    settings.retain(|_, v| !v.is_empty());
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Itsmc::start(&pairs).await
}

impl EmulatedItsm for ServiceNowEmulator {
    fn product(&self) -> &'static str {
        "servicenow"
    }

    fn settings(&self) -> Vec<(String, String)> {
        [
            ("ITSMC_PRODUCT", "servicenow".to_string()),
            ("ITSMC_URL", self.url()),
            ("ITSMC_USERNAME", super::servicenow::DEFAULT_USERNAME.to_string()),
            ("ITSMC_PASSWORD", super::servicenow::DEFAULT_PASSWORD.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn items(&self, kind: &str) -> Vec<EmulatedItem> {
        let table = if kind == "ChangeRequest" { "change_request" } else { "incident" };
        let text = |record: &serde_json::Map<String, serde_json::Value>, field: &str| {
            record.get(field).and_then(|v| v.as_str()).unwrap_or_default().to_string()
        };
        self.records(table)
            .iter()
            .map(|record| {
                let id = text(record, "sys_id");
                let notes = self.journal(&id).into_iter().filter(|(e, _)| e == "work_notes").map(|(_, v)| v).collect();
                EmulatedItem {
                    correlation: text(record, "correlation_id"),
                    open: !["6", "7", "8"].contains(&text(record, "state").as_str()),
                    notes,
                    id,
                }
            })
            .collect()
    }

    fn set_down(&self, down: bool) {
        ServiceNowEmulator::set_down(self, down);
    }

    fn close(&self, id: &str) {
        let table = if self.record("incident", id).is_some() { "incident" } else { "change_request" };
        self.update(table, id, serde_json::json!({ "state": "7" }));
    }

    fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        if kind == "ChangeRequest" { self.seed_change_requests(n, from, to) } else { self.seed_incidents(n, from, to) }
    }
}
