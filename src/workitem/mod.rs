//! What to do in the ITSM tool for an alert: which work item (grouping and correlation key), what the
//! lifecycle policy says for a re-fire or a resolve, and what the work item says (templates).
//!
//! Product-neutral: `itsm/<product>/mapping.rs` turns a [`Content`] into that product's fields.

mod content;
mod decide;
mod policy;
pub mod template;

pub use content::{Content, Fields, ResourceId, Scope, condition_word, describe};
pub use decide::{Plan, correlation_keys, delivery_id};
pub use policy::{Grouping, OnResolve, Policy, RefireAfterClose, SeverityMap, UrgencyImpact, WorkItemType};
