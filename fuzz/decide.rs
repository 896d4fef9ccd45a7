//! The code both fuzz targets run, shared with `tests/fuzz_regressions.rs` so that a regression test runs
//! exactly what found the crash: the fuzz targets include it with `#[path = "../decide.rs"] mod decide;`,
//! the test with `#[path = "../fuzz/decide.rs"] mod decide;`.
//!
//! [`parse`] is `itsmc::alert::parse` and what its error must be. [`decide`] is what the alert path does
//! with an alert before its first store write (the `parse_and_decide` group of `benches/parse.rs`): the
//! delivery id, the correlation keys, the template scope and each work item's content, for every work item
//! type and grouping; then, as a connection with templates would, field templates over every scope name
//! (which builds the alert's context) and the search rows of per-row grouping. Each step checks what its
//! callers rely on and panics, as a fuzz target should, when that does not hold.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use itsmc::alert::{Alert, ParseError};
use itsmc::workitem::template::Template;
use itsmc::workitem::{Content, Fields, Grouping, Scope, WorkItemType};

/// Every work item type and grouping the crate offers.
pub const KINDS: [WorkItemType; 3] = [WorkItemType::Incident, WorkItemType::Event, WorkItemType::Alert];
pub const GROUPINGS: [Grouping; 3] = [Grouping::Alert, Grouping::Rule, Grouping::Ci];

/// The codes `ParseError::code` documents.
const CODES: [&str; 4] = ["not_json", "not_an_alert", "missing_field", "invalid_field"];

/// Field templates that read every scope name, the context and each filter, as a connection may define.
static FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    [
        ("short_description", "{{ severity }} {{ rule }} on {{ resourceName | default(\"unknown resource\") }}"),
        ("urgency", "{{ severityNumber | map(0 = \"1\", 1 = \"1\", 2 = \"2\", _ = \"3\") }}"),
        ("description", "{{ description | truncate(40) | trim }} {{ condition | lower }} {{ signalType | upper }}"),
        ("ids", "{{ alertId }} {{ ruleId }} {{ schema }} {{ monitoringService }} {{ firedAt }} {{ resolvedAt }}"),
        ("where", "{{ targetResources }} {{ resource }} {{ resourceGroup }} {{ subscription }} {{ resourceType }}"),
        ("cmdb_ci", "{{ configurationItem }} {{ configurationItems[0] }} {{ configurationItems | json }}"),
        ("properties", "{{ customProperties | json }} {{ customProperties[\"team\"] | default(\"none\") }}"),
        ("context", "{{ context | json }}"),
        ("metric", "{{ context.condition.allOf.0.metricName }}={{ context.condition.allOf[0].metricValue }}"),
        ("search", "{{ context.SearchResults.tables.0.rows | truncate(100) }} {{ context.SearchQuery | upper }}"),
    ]
    .into_iter()
    .map(|(name, source)| {
        let template = Template::compile(source).unwrap_or_else(|e| panic!("template {name}: {e}"));
        (name.to_string(), template)
    })
    .collect()
});

/// `itsmc::alert::parse`: an alert, or an error with a documented code and a message that says something.
pub fn parse(body: &[u8]) -> Result<Alert, ParseError> {
    let result = itsmc::alert::parse(body);
    if let Err(e) = &result {
        assert!(CODES.contains(&e.code), "undocumented error code {:?}", e.code);
        assert!(!e.message.trim().is_empty(), "empty message for error code {}", e.code);
    }
    result
}

/// 40 lowercase hex digits, as every key and delivery id is.
fn is_key(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The decision step for every work item type and grouping, then templates and search rows. A work item's
/// content does not depend on its type, so it is built for every plan of one type only.
pub fn decide(alert: &Alert) {
    assert_eq!(alert.body_hash.is_some(), alert.id.is_none(), "a body hash exactly when there is no id");
    assert!(!alert.rule.trim().is_empty(), "an alert has a rule");
    let scope = Scope::new(alert);
    for kind in KINDS {
        let delivery = itsmc::workitem::delivery_id("default", kind, alert);
        assert!(is_key(&delivery), "delivery id {delivery:?}");
        for grouping in GROUPINGS {
            let plans = itsmc::workitem::correlation_keys("default", kind, grouping, alert);
            assert!(!plans.is_empty(), "{grouping:?}: an alert touches at least one work item");
            if grouping != Grouping::Ci {
                assert_eq!(plans.len(), 1, "{grouping:?}: one work item");
            }
            let mut keys = BTreeSet::new();
            for plan in plans {
                assert!(is_key(&plan.correlation_key), "correlation key {:?}", plan.correlation_key);
                assert!(keys.insert(plan.correlation_key.clone()), "{grouping:?}: two plans for one work item");
                if kind != WorkItemType::Incident {
                    continue;
                }
                let key = plan.correlation_key.clone();
                let content =
                    Content::build(alert, &scope, plan.correlation_key, plan.configuration_item.as_deref(), &[]);
                assert_eq!(content.correlation_key, key);
                assert!(content.title.contains(alert.rule.as_str()), "the title names the rule");
                assert!(!content.description.is_empty());
                assert!(content.fields.is_empty());
            }
        }
    }
    // What a connection with field templates adds: one work item's fields (they do not depend on the plan).
    let plan = itsmc::workitem::correlation_keys("default", WorkItemType::Incident, Grouping::Alert, alert).remove(0);
    let content = Content::build(alert, &scope, plan.correlation_key, None, &[&*FIELDS]);
    assert_eq!(content.fields.len(), FIELDS.len());
    // Per-row grouping reads the search rows, built from the context.
    let _ = alert.context();
    let _ = alert.search_rows();
}
