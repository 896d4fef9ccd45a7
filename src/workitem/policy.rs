//! The knobs a connection sets: work item type, grouping, lifecycle policy, severity mapping.
//! Each parses from the same words in the query string, the environment and the TOML file.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::alert::Severity;

/// The kind of work item, as ITSMC's ITSM action named them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkItemType {
    Incident,
    Event,
    Alert,
}

impl WorkItemType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkItemType::Incident => "Incident",
            WorkItemType::Event => "Event",
            WorkItemType::Alert => "Alert",
        }
    }
}

impl FromStr for WorkItemType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "incident" => Ok(WorkItemType::Incident),
            "event" => Ok(WorkItemType::Event),
            "alert" => Ok(WorkItemType::Alert),
            _ => Err(format!("'{s}' is not a work item type; use Incident, Event or Alert")),
        }
    }
}

/// Which alerts share one work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One work item per alert (its id): fire, re-fires and resolve of one alert share it. The default.
    Alert,
    /// One work item per alert rule, whatever resource fired (ITSMC's default).
    Rule,
    /// One work item per configuration item (ITSMC's "Create individual work items for each Configuration Item").
    Ci,
}

impl Grouping {
    pub fn as_str(self) -> &'static str {
        match self {
            Grouping::Alert => "alert",
            Grouping::Rule => "rule",
            Grouping::Ci => "ci",
        }
    }
}

impl FromStr for Grouping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "alert" | "peralert" => Ok(Grouping::Alert),
            "rule" | "perrule" => Ok(Grouping::Rule),
            "ci" | "perci" | "configurationitem" => Ok(Grouping::Ci),
            _ => Err(format!("'{s}' is not a grouping; use alert, rule or ci")),
        }
    }
}

/// What a re-fire does when the work item it belongs to was resolved or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefireAfterClose {
    /// Open a new work item (the default: a closed incident stays a record of what happened).
    New,
    /// Reopen the closed one and add a work note.
    Reopen,
    /// Do nothing.
    Ignore,
}

impl FromStr for RefireAfterClose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "new" => Ok(RefireAfterClose::New),
            "reopen" => Ok(RefireAfterClose::Reopen),
            "ignore" => Ok(RefireAfterClose::Ignore),
            _ => Err(format!("'{s}' is not a re-fire policy; use new, reopen or ignore")),
        }
    }
}

/// What a Resolved alert does to its open work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnResolve {
    /// Resolve it (ServiceNow incident state 6 with close code and notes). The default.
    Resolve,
    /// Only add a work note; a person resolves it.
    Comment,
    /// Do nothing.
    Nothing,
}

impl FromStr for OnResolve {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "resolve" => Ok(OnResolve::Resolve),
            "comment" => Ok(OnResolve::Comment),
            "nothing" => Ok(OnResolve::Nothing),
            _ => Err(format!("'{s}' is not a resolve policy; use resolve, comment or nothing")),
        }
    }
}

/// The lifecycle policy of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub refire_after_close: RefireAfterClose,
    pub on_resolve: OnResolve,
    /// ServiceNow `close_code` set on resolve.
    pub close_code: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refire_after_close: RefireAfterClose::New,
            on_resolve: OnResolve::Resolve,
            close_code: "Solved (Permanently)".into(),
        }
    }
}

/// Urgency and impact (1 high .. 3 low) for each Azure severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UrgencyImpact {
    pub urgency: u8,
    pub impact: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeverityMap(pub [UrgencyImpact; 5]);

impl Default for SeverityMap {
    /// Sev0 is an outage (1/1, priority 1); Sev4 is verbose (3/3, priority 5).
    fn default() -> Self {
        let ui = |urgency, impact| UrgencyImpact { urgency, impact };
        SeverityMap([ui(1, 1), ui(1, 2), ui(2, 2), ui(2, 3), ui(3, 3)])
    }
}

impl SeverityMap {
    pub fn get(&self, severity: Severity) -> UrgencyImpact {
        self.0[severity.number() as usize]
    }
}
