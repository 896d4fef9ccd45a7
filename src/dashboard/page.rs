//! The dashboard's HTML, rendered on the server from a [`Snapshot`] with maud (which escapes every value it
//! is given: alert and ITSM texts can hold markup). Charts are inline SVG drawn here; the page's script only
//! refreshes the page and sends the buttons' requests, and fetches nothing from anywhere but itsmc.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::snapshot::{ConnectionHealth, DeadLetter, Snapshot, Synced, SyncedKind, WorkItems};
use crate::itsm::WorkItem;

/// One colour per work item type, and for the rest.
fn colour(kind: &str) -> &'static str {
    match kind {
        "Incident" => "#c0392b",
        "Event" => "#2874a6",
        "Alert" => "#d68910",
        _ => "#7d8c8d",
    }
}

/// The page: `version` and `store` for the header.
pub fn render(snapshot: &Snapshot, version: &str, store: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "itsmc" }
                link rel="icon" href="data:,";
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "itsmc" }
                    span.meta { "version " (version) " · store " (store) }
                    span.meta #built {
                        "as of " (snapshot.built_at.format("%Y-%m-%d %H:%M:%S UTC"))
                        " (read in " (snapshot.build_time.as_millis()) " ms)"
                    }
                    button #refresh type="button" { "Refresh" }
                }
                main #dashboard {
                    (tiles(snapshot))
                    (created(&snapshot.work_items))
                    div.columns {
                        (computers(&snapshot.work_items))
                        (rules(&snapshot.work_items))
                    }
                    (connections(&snapshot.connections))
                    (dead_letters(&snapshot.dead_letters))
                    (synced(&snapshot.synced))
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
    .into_string()
}

fn tile(id: &str, title: &str, value: u64, detail: Markup) -> Markup {
    html! {
        div.tile id=(id) {
            h2 { (title) }
            div.value data-value=(value) { (value) }
            div.detail { (detail) }
        }
    }
}

fn tiles(snapshot: &Snapshot) -> Markup {
    let items = &snapshot.work_items;
    let problems = snapshot.connections.iter().filter(|c| has_problem(c)).count() as u64;
    html! {
        section.tiles {
            (tile("tile-created", "Work items created", items.total, html! {
                @for (kind, n) in &items.by_type {
                    span.kind style={ "border-color:" (colour(kind)) } { (kind) " " (n) } " "
                }
                " · " (items.open) " open"
            }))
            (tile("tile-computers", "Impacted computers", items.computers_total, html! {
                "with work items from alerts"
            }))
            (tile("tile-status", "Connections with problems", problems, html! {
                "of " (snapshot.connections.len()) " · " (snapshot.dead_letters.len()) " dead letters listed"
            }))
            (tile("tile-rules", "Alert rules", items.rules_total, html! { "that created work items" }))
        }
    }
}

fn has_problem(connection: &ConnectionHealth) -> bool {
    connection.diagnosis.as_ref().is_some_and(|d| !d.ok)
        || connection.dead > 0
        || connection.sync.iter().any(|s| s.last_error.is_some())
}

fn created(items: &WorkItems) -> Markup {
    let kinds: Vec<&String> = items.by_type.keys().collect();
    html! {
        section #created {
            h2 { "Work items created per day, last " (super::snapshot::DAYS) " days" }
            div.columns {
                (bar_chart(&items.per_day))
                table.data {
                    thead { tr { th { "day (UTC)" } @for kind in &kinds { th { (kind) } } th { "all" } } }
                    tbody {
                        @for (day, counts) in items.per_day.iter().rev().filter(|(_, counts)| !counts.is_empty()) {
                            tr {
                                td { (day.format("%Y-%m-%d")) }
                                @for kind in &kinds { td.n { (counts.get(*kind).copied().unwrap_or(0)) } }
                                td.n { (counts.values().sum::<u64>()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stacked bars, one per day, one colour per type.
fn bar_chart(days: &[(chrono::NaiveDate, BTreeMap<String, u64>)]) -> Markup {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 160.0;
    const LEFT: f64 = 40.0;
    const BOTTOM: f64 = 20.0;
    let most = days.iter().map(|(_, c)| c.values().sum::<u64>()).max().unwrap_or(0).max(1);
    let slot = (WIDTH - LEFT) / days.len().max(1) as f64;
    let scale = (HEIGHT - BOTTOM - 10.0) / most as f64;
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label="work items created per day" {
            line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) stroke="#999" {}
            text x=(LEFT - 6.0) y="14" text-anchor="end" { (most) }
            text x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
            @for (i, (day, counts)) in days.iter().enumerate() {
                @let x = LEFT + i as f64 * slot + slot * 0.15;
                @let mut top = HEIGHT - BOTTOM;
                @for (kind, n) in counts {
                    @let height = *n as f64 * scale;
                    @let y = { top -= height; top };
                    rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", slot * 0.7))
                        height=(format!("{height:.1}")) fill=(colour(kind)) {
                        title { (day.format("%Y-%m-%d")) ": " (n) " " (kind) }
                    }
                }
                @if i % 2 == 0 {
                    text x=(format!("{:.1}", x + slot * 0.35)) y=(HEIGHT - 5.0) text-anchor="middle" {
                        (day.format("%m-%d"))
                    }
                }
            }
        }
    }
}

fn work_item(item: &WorkItem) -> Markup {
    let label = item.number.as_deref().unwrap_or(&item.id);
    html! {
        @match &item.url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                a href=(url) rel="noopener noreferrer" target="_blank" { (label) }
            }
            _ => span { (label) },
        }
    }
}

fn computers(items: &WorkItems) -> Markup {
    let rows = items.computers.iter().map(|computer| {
        let newest =
            html! { @for (item, state) in &computer.items { span.item title=(state) { (work_item(item)) } " " } };
        (computer.name.as_str(), computer.count, newest)
    });
    ranked("computers", "Impacted computers", ["computer", "newest"], rows)
}

fn rules(items: &WorkItems) -> Markup {
    let rows = items.rules.iter().map(|rule| {
        let by_type = html! { @for (kind, n) in &rule.by_type { (kind) " " (n) " " } };
        (rule.name.as_str(), rule.count, by_type)
    });
    ranked("rules", "Alert rules that created work items", ["rule", "by type"], rows)
}

/// A table of names with their work items, most first: (name, work items, detail).
fn ranked<'a>(id: &str, title: &str, columns: [&str; 2], rows: impl Iterator<Item = (&'a str, u64, Markup)>) -> Markup {
    html! {
        section id=(id) {
            h2 { (title) }
            table.data {
                thead { tr { th { (columns[0]) } th { "work items" } th { (columns[1]) } } }
                tbody {
                    @for (name, count, detail) in rows {
                        tr { td { (name) } td.n { (count) } td { (detail) } }
                    }
                }
            }
        }
    }
}

fn connections(connections: &[ConnectionHealth]) -> Markup {
    html! {
        section #connections {
            h2 { "Connections" }
            @for (i, c) in connections.iter().enumerate() {
                @let out = format!("connection-result-{i}");
                div.connection data-connection=(c.name) {
                    h3 {
                        (c.name) " " span.product { (c.product) } " "
                        @match &c.diagnosis {
                            Some(d) if d.ok => span.ok { "ok" },
                            Some(d) => span.problem { (d.code) },
                            None => span.unknown { "not tested since start" },
                        }
                    }
                    @if let Some(d) = c.diagnosis.as_ref().filter(|d| !d.ok) {
                        p.fix { (d.message) }
                    }
                    dl {
                        dt { "authentication" }
                        dd { (credentials(c)) }
                        dt { "outbox" }
                        dd.outbox { span.pending { (c.pending) } " pending · " span.dead { (c.dead) } " dead letters" }
                    }
                    table.data {
                        thead { tr { th { "sync" } th { "last record" } th { "lag" } th { "last run" } th { "rows sent" } th { "last error" } } }
                        tbody {
                            @for run in &c.sync {
                                tr {
                                    td { (run.kind) }
                                    td { (run.watermark.as_deref().unwrap_or("not synced yet")) }
                                    td { (run.lag.map(lag).unwrap_or_default()) }
                                    td { (run.last_run_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()) }
                                    td.n { (run.sent) }
                                    td.error { (run.last_error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                    @if !c.errors.is_empty() {
                        h4 { "Latest errors" }
                        ul.errors {
                            @for (at, error) in &c.errors {
                                li { time { (millis(*at)) } " " (error) }
                            }
                        }
                    }
                    div.actions {
                        button type="button" data-post={ "/api/connections/" (crate::http::percent_encode(&c.name)) "/test" } data-out=(out) { "Test" }
                        " "
                        button type="button" data-post={ "/api/connections/" (crate::http::percent_encode(&c.name)) "/refresh" } data-out=(out) { "Refresh configuration" }
                        output id=(out) {}
                    }
                }
            }
        }
    }
}

fn credentials(c: &ConnectionHealth) -> Markup {
    let credentials = c.credentials.as_ref();
    html! {
        @match credentials.and_then(|v| v["refreshTokenEndsAt"].as_str()) {
            None => { "signs in with its configured credentials" }
            Some(at) => {
                "OAuth refresh token until " (at)
                @if credentials.is_some_and(|v| v["refreshTokenExpiresSoon"] == true) {
                    " " span.problem { "runs out soon: itsmc will sign in with the password then" }
                }
            }
        }
    }
}

fn lag(lag: chrono::Duration) -> String {
    match lag.num_seconds() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn millis(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn dead_letters(dead: &[DeadLetter]) -> Markup {
    html! {
        section #dead-letters {
            h2 { "Dead letters" }
            @if dead.is_empty() {
                p { "None: every alert reached its ITSM tool or is still being tried." }
            } @else {
                table.data {
                    thead { tr { th { "dead since" } th { "connection" } th { "rule" } th { "attempts" } th { "error" } th {} } }
                    tbody {
                        @for (i, d) in dead.iter().enumerate() {
                            @let out = format!("retry-result-{i}");
                            tr data-delivery=(d.key) {
                                td { (millis(d.dead_at)) }
                                td { (d.connection) }
                                td { (d.rule) }
                                td.n { (d.attempts) }
                                td.error { (d.error) }
                                td {
                                    button type="button" data-post={ "/api/deliveries/" (crate::http::percent_encode(&d.key)) "/retry" } data-out=(out) { "Retry" }
                                    output id=(out) {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn synced(synced: &Synced) -> Markup {
    html! {
        section #synced {
            h2 { "Synced incidents and change requests" }
            @match synced {
                Synced::Workspace(destination) => {
                    p { "Rows go to Log Analytics (" (destination) "): see the itsmc workbook, or query ServiceDesk_CL." }
                }
                Synced::Local(kinds) if kinds.is_empty() => p { "Nothing synced yet." },
                Synced::Local(kinds) => {
                    div.columns { @for kind in kinds { (synced_kind(kind)) } }
                }
            }
        }
    }
}

fn synced_kind(kind: &SyncedKind) -> Markup {
    html! {
        div.synced data-kind=(kind.kind) {
            h3 { (kind.kind) " " span.rows data-value=(kind.rows) { (kind.rows) } }
            h4 { "by state" }
            (counts_chart(&kind.by_state, "state"))
            h4 { "by priority" }
            table.data.priority {
                tbody { @for (priority, n) in &kind.by_priority { tr { td { (priority) } td.n { (n) } } } }
            }
        }
    }
}

/// Horizontal bars, one per value, with its count.
fn counts_chart(counts: &[(String, i64)], what: &str) -> Markup {
    const WIDTH: f64 = 420.0;
    const LABEL: f64 = 150.0;
    const ROW: f64 = 20.0;
    let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let height = ROW * counts.len().max(1) as f64;
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label={ "records by " (what) } {
            @for (i, (name, n)) in counts.iter().enumerate() {
                @let y = i as f64 * ROW;
                text x=(LABEL - 6.0) y=(y + 14.0) text-anchor="end" { (name) }
                rect x=(LABEL) y=(y + 3.0) height=(ROW - 6.0) fill="#2874a6"
                    width=(format!("{:.1}", (WIDTH - LABEL - 60.0) * *n as f64 / most)) {
                    title { (name) ": " (n) }
                }
                text.count x=(format!("{:.1}", LABEL + (WIDTH - LABEL - 60.0) * *n as f64 / most + 4.0)) y=(y + 14.0)
                    data-state=(name) { (n) }
            }
        }
    }
}

const STYLE: &str = include_str!("page.css");

/// Only the page's own script runs (by its hash: markup that slipped into a value could not run a script or an
/// event handler), and it talks to itsmc only.
pub static CONTENT_SECURITY_POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

const SCRIPT: &str = include_str!("page.js");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workitem::WorkItemType;

    /// A work item's link only when its URL is http(s): a `javascript:` or `data:` URL from a product's answer
    /// shows as text.
    #[test]
    fn only_web_urls_become_links() {
        let item = |url: &str| WorkItem {
            kind: WorkItemType::Incident,
            id: "x".into(),
            number: Some("INC1".into()),
            url: Some(url.into()),
        };
        assert!(work_item(&item("https://contoso.service-now.com/x")).into_string().starts_with("<a href=\"https://"));
        for url in ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "data:text/html,<b>"] {
            assert_eq!(work_item(&item(url)).into_string(), "<span>INC1</span>", "{url}");
        }
    }

    /// The policy lets run exactly the script the page carries.
    #[test]
    fn the_policy_names_the_page_scripts_hash() {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let page = html! { script { (PreEscaped(SCRIPT)) } }.into_string();
        let body = page.strip_prefix("<script>").and_then(|p| p.strip_suffix("</script>")).unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()));
        assert!(CONTENT_SECURITY_POLICY.contains(&format!("script-src 'sha256-{hash}'")));
    }
}
