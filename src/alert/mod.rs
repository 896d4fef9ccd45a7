//! Azure Monitor payloads in, one [`Alert`] out.
//!
//! `parse` detects the schema (common alert schema, legacy metric, legacy activity log, log search V1 for
//! Log Analytics and Application Insights, custom JSON / OMS-era) and builds the normalized model. It is
//! tolerant of every variant Azure is known to send and strict about what an alert must carry: a rule, a
//! condition (Fired or Resolved) and a severity. It never panics, whatever the body.
//!
//! `detect` tells the families apart; `common`, `legacy` and `logsearch` read one family each; `summary`
//! turns an alert context into readable condition lines, links and search rows; `fields` holds the
//! lenient readers they share.

mod common;
mod context;
mod detect;
mod fields;
mod legacy;
mod logsearch;
mod model;
mod summary;

pub use context::Context;
pub use model::{Alert, Condition, Schema, Severity};

/// What was wrong with a payload; `field` names the JSON path an operator should look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// Stable machine code: `not_json`, `not_an_alert`, `missing_field`, `invalid_field`.
    pub code: &'static str,
    /// Names the field and what is wrong with it.
    pub message: String,
}

/// Parse a request body into an [`Alert`].
pub fn parse(body: &[u8]) -> Result<Alert, ParseError> {
    detect::parse(body)
}
