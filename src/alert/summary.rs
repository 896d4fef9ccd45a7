//! Reads an alert context by its shape and says what the condition was, in lines a person can read.
//!
//! Shape, not `monitoringService`, decides the reader: the same metric criteria arrive in the common schema
//! and in the legacy metric payload, the same log V1 fields in the common schema and in the webhook forms,
//! and a monitoring service Azure adds tomorrow still gets whatever lines its shape allows (or none).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::fields::{embedded, field, field_any, flag, get, get_any, one_line, str_list, text};

/// Longest query or free text quoted in a summary line.
const QUOTE_MAX: usize = 200;

/// Longest summary line: a hostile or broken payload (a 2 MB metric name) must not make a 2 MB work item
/// title downstream. Generous, because real lines are far shorter.
const LINE_MAX: usize = 1000;

/// What a context yields besides itself.
#[derive(Default)]
pub(super) struct Findings {
    pub lines: Vec<String>,
    pub links: Vec<(String, String)>,
    /// `AffectedConfigurationItems` of log search V1, used when `configurationItems` is empty.
    pub configuration_items: Vec<String>,
    /// A budget alert carries no rule name (`alertRule: null`); the budget name stands in for it.
    pub budget_name: Option<String>,
    /// The budget's scope, since a budget alert has no `alertTargetIDs`.
    pub budget_scope: Option<String>,
    /// A Cost Management alert, which carries no severity either.
    pub cost: bool,
    /// Metric and log V2 contexts hold the rule's custom properties in `properties`; other kinds use that
    /// name for event data (activity log), so this is set only for the former.
    pub custom_properties: Option<Value>,
}

impl Findings {
    /// The condition lines, each cut to `LINE_MAX` characters.
    pub fn take_lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.lines);
        // A line of at most `LINE_MAX` bytes has at most that many characters.
        for line in lines.iter_mut().filter(|l| l.len() > LINE_MAX) {
            if let Some((cut, _)) = line.char_indices().nth(LINE_MAX) {
                line.truncate(cut);
                line.push_str("...");
            }
        }
        lines
    }

    pub fn link(&mut self, label: &str, v: Option<&Value>) {
        if let Some(Value::String(url)) = v {
            self.link_str(label, url);
        }
    }

    pub fn link_str(&mut self, label: &str, url: &str) {
        if let Some(url) = self.new_web_url(url) {
            self.links.push((label.to_string(), url));
        }
    }

    /// A link that should come before the context's own (the portal's investigation page).
    pub fn link_first(&mut self, label: &str, url: &str) {
        if let Some(url) = self.new_web_url(url) {
            self.links.insert(0, (label.to_string(), url));
        }
    }

    /// `url` trimmed, if it is an http(s) URL not listed yet: the filtered and unfiltered search links are
    /// often the same URL, and one click target is enough.
    fn new_web_url(&self, url: &str) -> Option<String> {
        let url = url.trim();
        let is_web = url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"))
            || url.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("http://"));
        (is_web && !self.links.iter().any(|(_, u)| u == url)).then(|| url.to_string())
    }
}

/// Interprets a common schema `alertContext`. Its search rows are left where they are: see
/// [`alert_context_rows`], which must follow the same shapes. `result_rows`: the context's search results
/// were left out of `ctx` and counted (see `context::Readable`).
pub(super) fn alert_context(ctx: &Value, monitoring_service: &str, result_rows: Option<usize>) -> Findings {
    let mut f = Findings::default();
    if !ctx.is_object() {
        return f;
    }
    if let Some(condition) = get(ctx, "condition").filter(|c| c.is_object()) {
        f.custom_properties = get(ctx, "properties").cloned();
        criteria(condition, &mut f);
    } else if result_rows.is_some()
        || get_any(ctx, &["SearchQuery", "SearchResults", "SearchResult", "AlertType"]).is_some()
    {
        log_v1(ctx, result_rows, &mut f);
    } else if let Some(data) = get(ctx, "AlertData").filter(|d| d.is_object()) {
        budget(data, &mut f);
    } else if get_any(ctx, &["DetectionSummary", "SmartDetectorId", "SmartDetectorName"]).is_some() {
        smart_detector(ctx, &mut f);
    } else if get(ctx, "expression").is_some() {
        prometheus(ctx, &mut f);
    } else if get_any(ctx, &["operationName", "eventSource", "eventDataId"]).is_some() {
        activity_log(ctx, monitoring_service, &mut f);
    }
    f
}

/// The search rows of a common schema `alertContext`, found as `alert_context` reads it: a simple log
/// alert's `event` rows (under `condition`), or log search V1's results.
pub(super) fn alert_context_rows(ctx: &Value) -> Vec<Value> {
    if !ctx.is_object() {
        return Vec::new();
    }
    if let Some(condition) = get(ctx, "condition").filter(|c| c.is_object()) {
        let Some(Value::Array(all_of)) = get(condition, "allOf") else { return Vec::new() };
        let events = all_of.iter().filter(|item| item.is_object()).filter_map(|item| match get(item, "event") {
            Some(Value::Array(events)) => Some(events),
            _ => None,
        });
        return events.flatten().filter_map(name_value_row).collect();
    }
    if get_any(ctx, &["SearchQuery", "SearchResults", "SearchResult", "AlertType"]).is_some() {
        return log_v1_rows(ctx);
    }
    Vec::new()
}

/// `condition.allOf` of metric alerts (static, dynamic, web test) and of log search alerts V2 and simple
/// log alerts; also the legacy metric alert's condition.
pub(super) fn criteria(condition: &Value, f: &mut Findings) {
    let window = field(condition, "windowSize");
    let Some(Value::Array(all_of)) = get(condition, "allOf") else { return };
    for item in all_of {
        if !item.is_object() {
            continue;
        }
        if let Some(metric) = field(item, "metricName") {
            f.lines.push(metric_line(&metric, item, window.as_deref()));
        } else if let Some(query) = field(item, "searchQuery") {
            f.lines.push(log_criterion_line(&query, item));
        } else if let Some(value) = get(item, "metricValue").and_then(text) {
            let crit = join_present(&[field(item, "operator"), field(item, "threshold")]);
            f.lines.push(if crit.is_empty() { format!("Value: {value}") } else { format!("{crit}: {value}") });
        }
        dimensions_line(get(item, "dimensions"), f);
        f.link("Search results", get(item, "linkToSearchResultsUI"));
        f.link("Filtered search results", get(item, "linkToFilteredSearchResultsUI"));
        f.link("Search results (API)", get(item, "linkToSearchResultsAPI"));
        f.link("Filtered search results (API)", get(item, "linkToFilteredSearchResultsAPI"));
    }
}

/// The classic metric alert's single condition (`context.condition.metricName`), whose `windowSize` is a
/// number of minutes rather than an ISO 8601 duration.
pub(super) fn classic_condition(condition: &Value, f: &mut Findings) {
    let Some(metric) = field(condition, "metricName") else { return };
    let window = field(condition, "windowSize").map(|w| match w.parse::<u32>() {
        Ok(minutes) => format!("PT{minutes}M"),
        Err(_) => w.into_owned(),
    });
    f.lines.push(metric_line(&metric, condition, window.as_deref()));
    dimensions_line(get(condition, "dimensions"), f);
}

/// `Percentage CPU GreaterThan 25 (Average over PT5M): 7.727`
fn metric_line(metric: &str, item: &Value, window: Option<&str>) -> String {
    let mut line = join_present(&[Some(Cow::Borrowed(metric)), field(item, "operator"), field(item, "threshold")]);
    let mut detail = match (field(item, "timeAggregation"), window) {
        (Some(agg), Some(w)) => format!("{agg} over {w}"),
        (Some(agg), None) => agg.into_owned(),
        (None, Some(w)) => format!("over {w}"),
        (None, None) => String::new(),
    };
    if let Some(sensitivity) = field(item, "alertSensitivity") {
        push_part(&mut detail, &format!("dynamic threshold, {sensitivity} sensitivity"));
    }
    if let Some(test) = field(item, "webTestName") {
        push_part(&mut detail, &format!("web test {test}"));
    }
    if !detail.is_empty() {
        line.push_str(&format!(" ({detail})"));
    }
    if let Some(value) = get(item, "metricValue").and_then(text) {
        line.push_str(&format!(": {value}"));
        if let Some(unit) = field(item, "metricUnit") {
            line.push_str(&format!(" {unit}"));
        }
    }
    line
}

/// `Heartbeat | count LowerThan 1: 0`; a simple log alert has no operator or threshold: `query: 1`.
fn log_criterion_line(query: &str, item: &Value) -> String {
    let aggregation = field(item, "timeAggregation").map(|agg| {
        let lower = agg.to_ascii_lowercase();
        match field(item, "metricMeasureColumn") {
            // A count counts rows whatever the measure column says.
            Some(column) if lower != "count" => format!("{lower}({column})"),
            _ => lower,
        }
    });
    let crit = join_present(&[aggregation.map(Cow::Owned), field(item, "operator"), field(item, "threshold")]);
    let mut line = one_line(query, QUOTE_MAX);
    if !crit.is_empty() {
        line.push_str(" | ");
        line.push_str(&crit);
    }
    if let Some(value) = get(item, "metricValue").and_then(text) {
        line.push_str(&format!(": {value}"));
    }
    line
}

/// Log search V1 (common schema context, the Log Analytics and Application Insights webhooks, the
/// OMS-era and custom JSON forms): the query line, dimensions and links. The result rows are only
/// counted here (or by the caller: `result_rows`); [`log_v1_rows`] builds them.
pub(super) fn log_v1(ctx: &Value, result_rows: Option<usize>, f: &mut Findings) {
    let query = field(ctx, "SearchQuery");
    let alert_type = field(ctx, "AlertType");
    let operator = field_any(ctx, &["Operator", "AlertThresholdOperator"]);
    let threshold = field_any(ctx, &["Threshold", "AlertThresholdValue"]);
    let count = field(ctx, "ResultCount");
    if query.is_some() || operator.is_some() || count.is_some() {
        let mut line = query.map_or_else(|| "Log search".to_string(), |q| one_line(&q, QUOTE_MAX));
        let crit = join_present(&[alert_type, operator, threshold]);
        if !crit.is_empty() {
            line.push_str(" | ");
            line.push_str(&crit);
        }
        if let Some(count) = count {
            line.push_str(&format!(": {count}"));
        }
        f.lines.push(line);
    }
    dimensions_line(get(ctx, "Dimensions"), f);
    f.link("Search results", get(ctx, "LinkToSearchResults"));
    f.link("Filtered search results", get(ctx, "LinkToFilteredSearchResultsUI"));
    f.link("Search results (API)", get(ctx, "LinkToSearchResultsAPI"));
    f.link("Filtered search results (API)", get(ctx, "LinkToFilteredSearchResultsAPI"));
    let counted = result_rows.or_else(|| get_any(ctx, &["SearchResults", "SearchResult"]).map(search_row_count));
    let rows = counted.unwrap_or(0);
    if counted.is_some() {
        // A custom JSON payload may carry nothing but the rule name and the results.
        if f.lines.is_empty() {
            f.lines.push(format!("Log search returned {rows} row{}", if rows == 1 { "" } else { "s" }));
        }
    }
    // `IncludedSearchResults` ("True"/"False", common schema) says whether Azure dropped the results to
    // stay under 256 KB; `IncludeSearchResults` (a bool, custom JSON) only says they were asked for.
    if get(ctx, "IncludedSearchResults").and_then(flag) == Some(false) && rows == 0 {
        f.lines.push("Search results were not included in the payload; follow the search results link".into());
    }
    if let Some(items) = get(ctx, "AffectedConfigurationItems") {
        f.configuration_items = str_list(items);
    }
}

/// The result rows of a log search V1 context or body, as `log_v1` finds them.
pub(super) fn log_v1_rows(ctx: &Value) -> Vec<Value> {
    get_any(ctx, &["SearchResults", "SearchResult"]).map(search_rows).unwrap_or_default()
}

/// The rows of search results as the payload holds them.
enum ResultRows<'v> {
    /// `tables[0]` and its `rows`: arrays of cells in the order of its `columns`.
    Table(&'v Value, &'v [Value]),
    /// The OMS-era `value` array; its objects are the rows.
    Objects(&'v [Value]),
    None,
}

/// Where the rows of (decoded) search results are: `tables[0].rows`, else `value`.
fn result_rows(results: &Value) -> ResultRows<'_> {
    if let Some(Value::Array(tables)) = get(results, "tables") {
        return match tables.first().map(|table| (table, get(table, "rows"))) {
            Some((table, Some(Value::Array(rows)))) => ResultRows::Table(table, rows),
            _ => ResultRows::None,
        };
    }
    match get(results, "value") {
        Some(Value::Array(rows)) => ResultRows::Objects(rows),
        _ => ResultRows::None,
    }
}

/// How many rows `search_rows` would return, without building them.
fn search_row_count(results: &Value) -> usize {
    match result_rows(&embedded(results)) {
        ResultRows::Table(_, rows) => rows.len(),
        ResultRows::Objects(rows) => rows.iter().filter(|r| r.is_object()).count(),
        ResultRows::None => 0,
    }
}

/// Rows of `SearchResults.tables[0]` as objects column -> value; the OMS-era `value` array of objects is
/// taken as it is.
fn search_rows(results: &Value) -> Vec<Value> {
    match result_rows(&embedded(results)) {
        ResultRows::Table(table, rows) => {
            let names: Vec<Cow<'_, str>> = match get(table, "columns") {
                Some(Value::Array(columns)) => columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| get(c, "name").and_then(text).unwrap_or_else(|| Cow::Owned(format!("column{i}"))))
                    .collect(),
                _ => Vec::new(),
            };
            let shape = RowShape::new(&names);
            rows.iter().map(|row| shape.object(row, &names)).collect()
        }
        ResultRows::Objects(rows) => rows.iter().filter(|r| r.is_object()).cloned().collect(),
        ResultRows::None => Vec::new(),
    }
}

/// Every row of a table has the same columns, so the object is built once with null values and cloned
/// per row; the cells then go into the clone's slots in key order. Cloning copies the tree as it is, where
/// inserting column by column would search and rebalance it for every cell of every row.
struct RowShape {
    template: Map<String, Value>,
    /// For each key of `template`, in its order, the column that fills it (the last one, if two columns
    /// share a name, as inserting would leave it).
    columns: Vec<usize>,
}

impl RowShape {
    fn new(names: &[Cow<'_, str>]) -> RowShape {
        let mut order: Vec<(usize, &str)> = names.iter().map(AsRef::as_ref).enumerate().collect();
        order.sort_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)));
        order.dedup_by(|later, earlier| later.1 == earlier.1);
        let template = order.iter().map(|(_, name)| ((*name).to_string(), Value::Null)).collect();
        RowShape { template, columns: order.into_iter().map(|(i, _)| i).collect() }
    }

    fn object(&self, row: &Value, names: &[Cow<'_, str>]) -> Value {
        let Value::Array(cells) = row else { return row.clone() };
        if cells.len() == names.len() {
            let mut object = self.template.clone();
            for ((_, slot), &column) in object.iter_mut().zip(&self.columns) {
                if let Some(cell) = cells.get(column) {
                    *slot = cell.clone();
                }
            }
            return Value::Object(object);
        }
        // A row that does not match its columns: name what can be named, number the rest.
        let mut object = Map::new();
        for (i, cell) in cells.iter().enumerate() {
            let name = names.get(i).map_or_else(|| format!("column{i}"), |n| n.to_string());
            object.insert(name, cell.clone());
        }
        Value::Object(object)
    }
}

/// A simple log alert's `event` row: `[{name, value}, ...]` as one object.
fn name_value_row(row: &Value) -> Option<Value> {
    let Value::Array(pairs) = row else { return None };
    let mut object = Map::new();
    for pair in pairs {
        if let Some(name) = get(pair, "name").and_then(text) {
            object.insert(name.into_owned(), pair.get("value").cloned().unwrap_or(Value::Null));
        }
    }
    Some(Value::Object(object))
}

/// `Dimensions: Computer = web01, ApiName = GetBlob`
fn dimensions_line(dimensions: Option<&Value>, f: &mut Findings) {
    let Some(Value::Array(dimensions)) = dimensions else { return };
    let pairs: Vec<String> = dimensions
        .iter()
        .filter_map(|d| Some(format!("{} = {}", field(d, "name")?, get(d, "value").and_then(text).unwrap_or_default())))
        .collect();
    if !pairs.is_empty() {
        f.lines.push(format!("Dimensions: {}", pairs.join(", ")));
    }
}

/// Activity log events (administrative, policy, autoscale, security), Service Health and Resource Health,
/// in the common schema's `alertContext` or the legacy `data.context.activityLog`.
pub(super) fn activity_log(ev: &Value, monitoring_service: &str, f: &mut Findings) {
    let properties = get(ev, "properties").map(embedded);
    let properties = properties.as_deref().unwrap_or(&Value::Null);
    // `eventSource` is a word in one sample and an enum number in another, so the operation name and the
    // properties' shape decide as well.
    let source = field(ev, "eventSource").unwrap_or_default();
    let operation = field(ev, "operationName").unwrap_or_default();
    let is = |service: &str, source_word: &str, prefix: &str| {
        monitoring_service.eq_ignore_ascii_case(service)
            || source.eq_ignore_ascii_case(source_word)
            || operation.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    if is("ServiceHealth", "ServiceHealth", "Microsoft.ServiceHealth/") || get(properties, "trackingId").is_some() {
        service_health(properties, f);
        return;
    }
    if is("Resource Health", "ResourceHealth", "Microsoft.ResourceHealth/")
        || get(properties, "currentHealthStatus").is_some()
    {
        resource_health(properties, f);
        return;
    }
    let mut line = if operation.is_empty() { "Activity log event".to_string() } else { operation.into_owned() };
    if let Some(status) = field(ev, "status") {
        line.push_str(&format!(": {status}"));
        if let Some(sub) = field(ev, "subStatus") {
            line.push_str(&format!(" ({sub})"));
        }
    }
    if let Some(caller) = caller(ev) {
        line.push_str(&format!(" by {caller}"));
    }
    f.lines.push(line);
    if let Some(description) = field(properties, "description") {
        f.lines.push(one_line(&description, QUOTE_MAX));
    }
    if let Some(policies) = get(properties, "policies") {
        policy_lines(&embedded(policies), f);
    }
    if let Some(threat) = field(properties, "threatStatus") {
        let what = join_with(&[field(properties, "category"), field(properties, "compromisedEntity")], " on ");
        f.lines.push(format!("Threat: {what} ({threat})"));
    }
}

/// Who did it: `caller`, or failing that the name in `claims` (a JSON document encoded in a string).
fn caller(ev: &Value) -> Option<String> {
    if let Some(caller) = field(ev, "caller") {
        return Some(caller.into_owned());
    }
    let claims = embedded(get(ev, "claims")?);
    field_any(&claims, &["name", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn", "unique_name", "appid"])
        .map(Cow::into_owned)
}

/// Policy events carry their definitions as a JSON array encoded in a string.
fn policy_lines(policies: &Value, f: &mut Findings) {
    let Value::Array(items) = policies else { return };
    for p in items {
        if let Some(name) = field_any(p, &["policyDefinitionName", "policyDefinitionReferenceId"]) {
            let extra = join_with(&[field(p, "policyDefinitionEffect"), field(p, "policyAssignmentName")], ", ");
            f.lines.push(if extra.is_empty() {
                format!("Policy: {name}")
            } else {
                format!("Policy: {name} ({extra})")
            });
        }
    }
}

/// `Maintenance: Azure Synapse Analytics Scheduled Maintenance Pending`, the service, region and stage,
/// and the impacted services, which are a JSON string in real alerts and an array in test alerts.
fn service_health(p: &Value, f: &mut Findings) {
    let title = field_any(p, &["title", "defaultLanguageTitle"]).unwrap_or(Cow::Borrowed("Service Health event"));
    f.lines.push(match field(p, "incidentType") {
        Some(kind) => format!("{kind}: {}", one_line(&title, QUOTE_MAX)),
        None => one_line(&title, QUOTE_MAX),
    });
    let mut facts = Vec::new();
    for (label, key) in
        [("Service", "service"), ("Region", "region"), ("Stage", "stage"), ("Tracking id", "trackingId")]
    {
        if let Some(v) = field(p, key) {
            facts.push(format!("{label}: {v}"));
        }
    }
    if !facts.is_empty() {
        f.lines.push(facts.join("; "));
    }
    if let Some(impacted) = get(p, "impactedServices") {
        let impacted = embedded(impacted);
        if let Value::Array(services) = &*impacted {
            let names: Vec<String> = services
                .iter()
                .filter_map(|s| {
                    let name = field(s, "ServiceName")?;
                    let regions: Vec<Cow<'_, str>> = match get(s, "ImpactedRegions") {
                        Some(Value::Array(rs)) => rs.iter().filter_map(|r| field(r, "RegionName")).collect(),
                        _ => Vec::new(),
                    };
                    Some(if regions.is_empty() {
                        name.into_owned()
                    } else {
                        format!("{name} ({})", regions.join(", "))
                    })
                })
                .collect();
            if !names.is_empty() {
                f.lines.push(format!("Impacted: {}", names.join("; ")));
            }
        }
    }
    match (field(p, "impactStartTime"), field(p, "impactMitigationTime")) {
        (Some(start), Some(end)) => f.lines.push(format!("Impact: {start} to {end}")),
        (Some(start), None) => f.lines.push(format!("Impact from {start}")),
        _ => {}
    }
}

/// `This virtual machine is stopping...` then `Health: Available -> Unavailable (Downtime, UserInitiated)`.
fn resource_health(p: &Value, f: &mut Findings) {
    if let Some(title) = field(p, "title") {
        f.lines.push(one_line(&title, QUOTE_MAX));
    }
    if let Some(current) = field(p, "currentHealthStatus") {
        let mut line = match field(p, "previousHealthStatus") {
            Some(previous) => format!("Health: {previous} -> {current}"),
            None => format!("Health: {current}"),
        };
        let why = join_with(&[field(p, "type"), field(p, "cause")], ", ");
        if !why.is_empty() {
            line.push_str(&format!(" ({why})"));
        }
        f.lines.push(line);
    }
    if let Some(details) = field(p, "details") {
        f.lines.push(one_line(&details, QUOTE_MAX));
    }
}

/// Cost Management budgets: `Budget X (Forecasted): spent $999.99, threshold $50.00 of budget $50.00`.
fn budget(data: &Value, f: &mut Findings) {
    let name = field(data, "BudgetName");
    let mut line = match (&name, field(data, "ThresholdType")) {
        (Some(n), Some(t)) => format!("Budget {n} ({t})"),
        (Some(n), None) => format!("Budget {n}"),
        (None, Some(t)) => format!("Budget ({t})"),
        (None, None) => "Budget".to_string(),
    };
    let mut parts = Vec::new();
    if let Some(spent) = field(data, "SpentAmount") {
        parts.push(format!("spent {spent}"));
    }
    if let Some(threshold) = field(data, "NotificationThresholdAmount") {
        parts.push(format!("threshold {threshold}"));
    }
    if let Some(budget) = field(data, "BudgetThreshold") {
        parts.push(format!("budget {budget}"));
    }
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join(", "));
    }
    f.lines.push(line);
    if let Some(forecast) = field(data, "ForecastedTotalForPeriod") {
        f.lines.push(format!("Forecasted total for the period: {forecast}"));
    }
    f.cost = true;
    f.budget_name = name.map(Cow::into_owned);
    f.budget_scope = field(data, "Scope").map(|s| s.trim_end_matches('/').to_string());
}

/// Application Insights smart detection: what was detected, and the detected vs normal value.
fn smart_detector(ctx: &Value, f: &mut Findings) {
    let summary = field(ctx, "DetectionSummary").map(|s| one_line(&s, QUOTE_MAX));
    f.lines.push(match (field(ctx, "SmartDetectorName"), summary) {
        (Some(name), Some(s)) => format!("{name}: {s}"),
        (Some(name), None) => name.into_owned(),
        (None, Some(s)) => s,
        (None, None) => "Smart detection".to_string(),
    });
    match (field(ctx, "DetectedValue"), field(ctx, "NormalValue")) {
        (Some(d), Some(n)) => f.lines.push(format!("Detected: {d}; normal: {n}")),
        (Some(d), None) => f.lines.push(format!("Detected: {d}")),
        _ => {}
    }
}

/// Azure Monitor managed Prometheus: `sql_up > 0: 0`, then labels and the summary annotation.
fn prometheus(ctx: &Value, f: &mut Findings) {
    let expression = field(ctx, "expression").map(|e| one_line(&e, QUOTE_MAX)).unwrap_or_default();
    let mut line = match field(ctx, "expressionValue") {
        Some(v) => format!("{expression}: {v}"),
        None => expression,
    };
    if let Some(duration) = field(ctx, "for") {
        line.push_str(&format!(" (for {duration})"));
    }
    f.lines.push(line);
    if let Some(Value::Object(labels)) = get(ctx, "labels") {
        let pairs: Vec<String> = labels.iter().filter_map(|(k, v)| Some(format!("{k}={}", text(v)?))).collect();
        if !pairs.is_empty() {
            f.lines.push(format!("Labels: {}", pairs.join(", ")));
        }
    }
    if let Some(annotations) = get(ctx, "annotations") {
        for key in ["summary", "description"] {
            if let Some(v) = field(annotations, key) {
                f.lines.push(one_line(&v, QUOTE_MAX));
            }
        }
        f.link("Runbook", get(annotations, "runbook_url"));
    }
}

/// Present parts joined with spaces.
fn join_present(parts: &[Option<Cow<'_, str>>]) -> String {
    join_with(parts, " ")
}

fn join_with(parts: &[Option<Cow<'_, str>>], sep: &str) -> String {
    let mut out = String::new();
    for part in parts.iter().flatten() {
        push_word(&mut out, part, sep);
    }
    out
}

fn push_part(out: &mut String, part: &str) {
    push_word(out, part, ", ");
}

fn push_word(out: &mut String, part: &str, sep: &str) {
    if !out.is_empty() {
        out.push_str(sep);
    }
    out.push_str(part);
}
