//! The Azure Workbook (`infra/workbook.json`, deployed by `infra/modules/workbook.bicep`): what can be checked
//! without a portal. It is a Notebook/1.0 document whose queries run on the workspace, each query reads only
//! `ServiceDesk_CL` and `ServiceDeskLog_CL`, and every column it names is declared in the column file of a table
//! it reads (`schema/*.json`, the files the sync and the tables are made from). The check is a small tokenizer,
//! not a KQL parser: it skips comments, string literals and workbook parameters (`{TimeRange}`), takes names
//! assigned with `=` (`extend X =`, `summarize X =`, `let x =`) as the query's own, and tests every other name
//! that looks like a column; `the_checker_finds_what_it_should` shows it failing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TABLES: [&str; 2] = ["ServiceDesk_CL", "ServiceDeskLog_CL"];
const WORKSPACES: &str = "microsoft.operationalinsights/workspaces";
/// The suffixes Log Analytics gives custom columns by type (string, double, bool, datetime, guid, long).
const COLUMN_SUFFIXES: [&str; 6] = ["_s", "_d", "_b", "_t", "_g", "_l"];
/// What may start a query besides a table or a `let` name.
const SOURCES: [&str; 4] = ["union", "print", "range", "datatable"];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn workbook() -> Value {
    serde_json::from_str(&read("infra/workbook.json")).expect("infra/workbook.json is JSON")
}

/// Each table's declared columns, from its column file.
fn columns() -> BTreeMap<String, BTreeSet<String>> {
    TABLES
        .iter()
        .map(|table| {
            let schema: Value = serde_json::from_str(&read(&format!("schema/{table}.json"))).expect("column file");
            assert_eq!(schema["table"], *table);
            let names = schema["columns"]
                .as_array()
                .expect("columns")
                .iter()
                .map(|c| c["name"].as_str().expect("column name").to_string())
                .collect();
            (table.to_string(), names)
        })
        .collect()
}

/// Every item of the workbook, groups' items included.
fn all_items(items: &[Value], into: &mut Vec<Value>) {
    for item in items {
        into.push(item.clone());
        if let Some(inner) = item["content"]["items"].as_array() {
            all_items(inner, into);
        }
    }
}

fn items() -> Vec<Value> {
    let mut items = Vec::new();
    all_items(workbook()["items"].as_array().expect("items"), &mut items);
    items
}

/// Every KQL query: query items' and query-driven parameters', named for the messages.
fn queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for item in items() {
        let name = item["name"].as_str().unwrap_or("?").to_string();
        match item["type"].as_i64() {
            Some(3) => queries.push((name, item["content"]["query"].as_str().expect("query").to_string())),
            Some(9) => {
                for parameter in item["content"]["parameters"].as_array().expect("parameters") {
                    if let Some(query) = parameter["query"].as_str() {
                        let parameter_name = parameter["name"].as_str().unwrap_or("?");
                        queries.push((format!("{name}/{parameter_name}"), query.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    queries
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The query without comments, string literals and workbook parameters: a literal becomes `''`, except a quoted
/// name in brackets (`['Col_s']`), which stays a name; `{TimeRange}` and `{Connection:label}` become spaces.
fn strip(kql: &str) -> String {
    let chars: Vec<char> = kql.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            let verbatim = out.ends_with('@');
            let mut literal = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && !verbatim {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    literal.push(ch);
                }
                i += 1;
            }
            i += 1;
            let after = chars.get(i..).unwrap_or_default();
            let bracketed = out.trim_end().ends_with('[') && after.iter().find(|c| !c.is_whitespace()) == Some(&']');
            if bracketed && !literal.is_empty() && literal.chars().all(is_ident) {
                out.push_str(&literal);
            } else {
                out.push_str("''");
            }
        } else if c == '{' {
            let end = chars[i + 1..].iter().position(|&c| c == '}').map(|p| i + 1 + p);
            let parameter = end.filter(|&end| {
                let inside: String = chars[i + 1..end].iter().collect();
                let name = inside.split(':').next().unwrap_or_default();
                !name.is_empty() && name.chars().all(is_ident) && !inside.contains(char::is_whitespace)
            });
            match parameter {
                Some(end) => {
                    out.push(' ');
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

struct Token<'a> {
    text: &'a str,
    start: usize,
    end: usize,
}

/// Identifiers (not numbers nor timespans such as `1h`) with their byte offsets.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (start, is_ident(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                if !text[s..i].starts_with(|c: char| c.is_ascii_digit()) {
                    tokens.push(Token { text: &text[s..i], start: s, end: i });
                }
                start = None;
            }
            _ => {}
        }
    }
    tokens
}

fn next_char(text: &str, at: usize) -> Option<char> {
    text[at..].chars().find(|c| !c.is_whitespace())
}

fn previous_char(text: &str, at: usize) -> Option<char> {
    text[..at].chars().rev().find(|c| !c.is_whitespace())
}

/// A name given a value: `X = ...`, not `X == ...`, `X =~ ...` (nor `!=`, `<=`, `>=`, which do not follow a name).
fn is_assigned(text: &str, token: &Token) -> bool {
    let rest = text[token.end..].trim_start();
    rest.starts_with('=') && !rest[1..].starts_with(['=', '~'])
}

/// What is wrong with one query: tables other than the two, sources that are no table nor `let` name, and
/// column-like names declared by none of the tables it reads.
fn check(kql: &str, columns: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let text = strip(kql);
    let tokens = tokens(&text);
    let mut problems = Vec::new();

    let mut read = BTreeSet::new();
    for token in tokens.iter().filter(|t| t.text.ends_with("_CL")) {
        if TABLES.contains(&token.text) {
            read.insert(token.text);
        } else {
            problems.push(format!("reads table {}", token.text));
        }
    }
    if read.is_empty() {
        problems.push(format!("reads neither {} nor {}", TABLES[0], TABLES[1]));
    }

    let local: BTreeSet<&str> = tokens.iter().filter(|t| is_assigned(&text, t)).map(|t| t.text).collect();
    let lets: BTreeSet<&str> =
        tokens.windows(2).filter(|pair| pair[0].text == "let").map(|pair| pair[1].text).collect();

    // Where a tabular source stands: the start of a statement (after `let x =`), `(` before a pipe, the right side
    // of join and lookup, and union's list. Options such as `kind=leftouter` are skipped.
    let mut sources = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let before = previous_char(&text, token.start);
        let statement_start = matches!(before, None | Some(';'))
            || (before == Some('=') && i >= 2 && tokens[i - 2].text == "let" && !is_assigned(&text, token));
        let piped = before == Some('(') && next_char(&text, token.end) == Some('|');
        if (statement_start && token.text != "let") || piped {
            sources.push(token);
        }
        if matches!(token.text, "join" | "lookup" | "union") {
            let mut j = i + 1;
            while j + 1 < tokens.len() && is_assigned(&text, &tokens[j]) {
                j += 2;
            }
            while j < tokens.len() {
                sources.push(&tokens[j]);
                if token.text != "union" || next_char(&text, tokens[j].end) != Some(',') {
                    break;
                }
                j += 1;
            }
        }
    }
    for source in sources {
        let call = next_char(&text, source.end) == Some('(');
        let known = TABLES.contains(&source.text) || lets.contains(source.text) || SOURCES.contains(&source.text);
        if !call && !known {
            problems.push(format!("reads {}, which is no table of the workbook's nor a let name", source.text));
        }
    }

    let allowed: BTreeSet<&str> = read.iter().flat_map(|table| columns[*table].iter().map(String::as_str)).collect();
    let every_column: BTreeSet<&str> = columns.values().flatten().map(String::as_str).collect();
    let mut reported = BTreeSet::new();
    for token in &tokens {
        let name = token.text;
        let column_like = COLUMN_SUFFIXES.iter().any(|s| name.ends_with(s)) || every_column.contains(name);
        if column_like
            && !name.ends_with("_CL")
            && !allowed.contains(name)
            && !local.contains(name)
            && reported.insert(name)
        {
            let tables: Vec<&str> = read.iter().copied().collect();
            problems.push(format!("{name} is declared by none of {tables:?}"));
        }
    }
    problems
}

#[test]
fn the_workbook_is_a_notebook_of_queries_on_the_workspace() {
    let workbook = workbook();
    assert_eq!(workbook["version"], "Notebook/1.0");
    assert_eq!(
        workbook["$schema"],
        "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"
    );
    let items = items();
    let queries: Vec<&Value> = items.iter().filter(|i| i["type"] == 3).collect();
    assert!(queries.len() >= 10, "only {} query items", queries.len());
    assert!(items.iter().any(|i| i["type"] == 1), "no text item");

    let mut visualizations = BTreeSet::new();
    let mut names = BTreeSet::new();
    for item in &items {
        let name = item["name"].as_str().expect("every item has a name");
        assert!(names.insert(name), "two items are named {name}");
    }
    for item in &queries {
        let (name, content) = (&item["name"], &item["content"]);
        assert_eq!(content["version"], "KqlItem/1.0", "{name}");
        assert_eq!(content["queryType"], 0, "{name}: not a Logs query");
        assert_eq!(content["resourceType"], WORKSPACES, "{name}");
        assert_eq!(content["timeContextFromParameter"], "TimeRange", "{name}");
        let query = content["query"].as_str().expect("query");
        // The parameters filter every tile: the time range, and the connection.
        assert!(query.contains("{TimeRange}"), "{name} ignores the time range");
        assert!(query.contains("{Connection}"), "{name} ignores the connection");
        let visualization = content["visualization"].as_str().expect("visualization");
        assert!(
            ["table", "tiles", "barchart", "timechart", "piechart", "areachart", "linechart"].contains(&visualization),
            "{name}: {visualization}"
        );
        visualizations.insert(visualization);
        if visualization == "tiles" {
            assert!(content["tileSettings"]["titleContent"]["columnMatch"].is_string(), "{name}");
            assert!(content["tileSettings"]["leftContent"]["columnMatch"].is_string(), "{name}");
        }
    }
    for wanted in ["table", "tiles", "barchart", "timechart", "piechart"] {
        assert!(visualizations.contains(wanted), "no {wanted} in {visualizations:?}");
    }

    let parameters: Vec<&Value> = items
        .iter()
        .filter(|i| i["type"] == 9)
        .flat_map(|i| i["content"]["parameters"].as_array().expect("parameters"))
        .collect();
    let parameter =
        |name: &str| *parameters.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no parameter {name}"));
    assert_eq!(parameter("TimeRange")["type"], 4, "a time range picker");
    let connection = parameter("Connection");
    assert_eq!(connection["type"], 2, "a drop-down");
    assert_eq!(connection["multiSelect"], true);
    assert_eq!(connection["typeSettings"]["selectAllValue"], "*", "the queries test '*' in ({{Connection}})");
    assert_eq!(connection["queryType"], 0);
    assert_eq!(connection["resourceType"], WORKSPACES);
}

#[test]
fn every_query_reads_only_the_two_tables_and_their_declared_columns() {
    let columns = columns();
    let queries = queries();
    assert!(queries.iter().any(|(name, _)| name.ends_with("/Connection")), "the connection parameter's query");
    let mut read = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, query) in &queries {
        for table in TABLES.iter().filter(|t| tokens(&strip(query)).iter().any(|token| token.text == **t)) {
            read.insert(*table);
        }
        problems.extend(check(query, &columns).into_iter().map(|p| format!("{name}: {p}")));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(read.len(), 2, "the workbook reads {read:?}");
}

#[test]
fn the_checker_finds_what_it_should() {
    let columns = columns();
    let problems = |kql: &str| check(kql, &columns);

    let found = problems("ServiceDesk_CL | where Bogus_s == 'x'");
    assert!(found.iter().any(|p| p.starts_with("Bogus_s ")), "{found:?}");
    // Declared, but by the other table.
    let found = problems("ServiceDeskLog_CL | where CRState_s == 'x' | project IncidentState_s");
    assert_eq!(found.len(), 2, "{found:?}");
    let found = problems("ServiceDesk_CL | project ['Bogus_d']");
    assert!(found.iter().any(|p| p.starts_with("Bogus_d ")), "{found:?}");
    // Other tables, wherever they stand.
    for kql in [
        "Heartbeat | take 1",
        "let x = Heartbeat; ServiceDesk_CL | take 1",
        "ServiceDesk_CL | join kind=inner (Heartbeat | take 1) on Computer",
        "ServiceDesk_CL | lookup kind=leftouter Heartbeat on Computer",
        "union ServiceDesk_CL, Heartbeat",
        "ServiceDesk_CL | join (Other_CL) on Computer",
    ] {
        assert!(!problems(kql).is_empty(), "{kql}");
    }
    assert!(!problems("print x = 1").is_empty(), "a query that reads neither table");

    // What must pass: names in strings and comments, the query's own names, both tables' columns when it reads
    // both, workbook parameters, let names as sources.
    for kql in [
        "ServiceDesk_CL | where Title_s == 'Bogus_s' and Computer != \"Bogus_d\" // Bogus_b",
        "ServiceDesk_CL | where Title_s matches regex @'\\d_s' | extend Local_s = 1 | where Local_s == 1",
        "ServiceDeskLog_CL | join kind=leftouter (ServiceDesk_CL | take 1) on $left.WorkItemId_s == $right.ServiceDeskId_s",
        "let x = ServiceDeskLog_CL | where TimeGenerated {TimeRange}; x | lookup kind=leftouter (ServiceDesk_CL) on Computer",
        "union ServiceDesk_CL, ServiceDeskLog_CL | where ServiceDeskConnectionName_s in ({Connection:value})",
        "let n = toscalar(ServiceDesk_CL | count); print n",
    ] {
        assert_eq!(problems(kql), Vec::<String>::new(), "{kql}");
    }
}

#[test]
fn the_bicep_module_loads_the_workbook_and_main_deploys_it() {
    let module = read("infra/modules/workbook.bicep");
    assert!(module.contains("'Microsoft.Insights/workbooks@2023-06-01'"), "the workbook resource");
    assert!(module.contains("loadJsonContent('../workbook.json')"), "the module serializes infra/workbook.json");
    assert!(module.contains("sourceId: workspaceId"), "linked to the workspace");
    assert!(module.contains("kind: 'shared'") && module.contains("category: 'workbook'"));

    let main = read("infra/main.bicep");
    assert!(main.contains("module workbook 'modules/workbook.bicep'"), "main.bicep does not deploy the workbook");
    assert!(main.contains("workspaceId: workspace.outputs.id"), "the workbook reads the deployment's workspace");
}
