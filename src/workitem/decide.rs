//! Which work items an alert touches, and the identity of one delivery.
//!
//! The correlation key is a hash we make from the connection, the work item type, the grouping and the
//! alert's identity; it is hex only, so it is safe in any query language and never leaks alert text.

use sha2::{Digest, Sha256};

use crate::alert::{Alert, Condition};
use crate::workitem::{Grouping, WorkItemType};

/// One work item the alert belongs to: its correlation key, and the configuration item for per-CI grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub correlation_key: String,
    pub configuration_item: Option<String>,
}

fn hex_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    // 40 hex characters: 160 bits is plenty against collisions, and fits every product's key field.
    hex::encode(&hasher.finalize()[..20])
}

/// What identifies "the same alert" across fire, re-fire and resolve. Legacy payloads without an id fall
/// back to rule and targets: their resolve (Deactivated) then finds the work item its fire created.
fn alert_identity(alert: &Alert) -> String {
    match &alert.id {
        Some(id) => id.clone(),
        None => format!("{}|{}", rule_identity(alert), alert.target_resources.join(",")),
    }
}

fn rule_identity(alert: &Alert) -> &str {
    alert.rule_id.as_deref().unwrap_or(&alert.rule)
}

/// The work items this alert touches under `grouping`: one, or one per configuration item.
pub fn correlation_keys(connection: &str, kind: WorkItemType, grouping: Grouping, alert: &Alert) -> Vec<Plan> {
    let base = [connection, kind.as_str(), grouping.as_str()];
    match grouping {
        Grouping::Alert => {
            let identity = alert_identity(alert);
            vec![Plan {
                correlation_key: hex_hash(&[&base[..], &[identity.as_str()]].concat()),
                configuration_item: None,
            }]
        }
        Grouping::Rule => vec![Plan {
            correlation_key: hex_hash(&[&base[..], &[rule_identity(alert)]].concat()),
            configuration_item: None,
        }],
        Grouping::Ci => {
            let mut items: Vec<&str> = alert.configuration_items.iter().map(String::as_str).collect();
            if items.is_empty() {
                // No CI named: each target resource stands for one.
                items = alert.target_resources.iter().map(String::as_str).collect();
            }
            // The key reads a CI in lower case, so `WEB01` and `web01` are one work item: one plan, with the
            // spelling that sorts first whatever order they came in.
            items.sort_by_cached_key(|ci| (ci.to_ascii_lowercase(), *ci));
            items.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
            if items.is_empty() {
                items.push("");
            }
            items
                .into_iter()
                .map(|ci| Plan {
                    correlation_key: hex_hash(&[&base[..], &[rule_identity(alert), &ci.to_ascii_lowercase()]].concat()),
                    configuration_item: (!ci.is_empty()).then(|| ci.to_string()),
                })
                .collect()
        }
    }
}

/// The identity of one delivery: the same alert, condition and time posted twice (retries, two action
/// groups) is one delivery. Payloads without an id use the hash of the body instead.
pub fn delivery_id(connection: &str, kind: WorkItemType, alert: &Alert) -> String {
    let condition = match alert.condition {
        Condition::Fired => "Fired",
        Condition::Resolved => "Resolved",
    };
    match &alert.id {
        Some(id) => {
            let fired = alert.fired_at.map(|t| t.to_rfc3339()).unwrap_or_default();
            hex_hash(&[connection, kind.as_str(), id, condition, &fired])
        }
        None => hex_hash(&[connection, kind.as_str(), "body", alert.body_hash.as_deref().unwrap_or_default()]),
    }
}
