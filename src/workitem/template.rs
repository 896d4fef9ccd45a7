//! Field templates: work item field values with `{{ placeholders }}` over the alert.
//!
//! Microsoft's connector could only fill work item fields with constants. In itsmc a connection
//! defines named templates whose values mix literal text with placeholders that read the alert:
//!
//! ```toml
//! short_description = "{{ severity }} {{ rule }} on {{ resourceName | default(\"unknown resource\") }}"
//! urgency           = "{{ severity | map(\"Sev0\" = \"1\", \"Sev1\" = \"2\", _ = \"3\") }}"
//! description       = "{{ description | truncate(4000) }}"
//! work_notes        = "Alert context: {{ context | json }}"
//! ```
//!
//! Templates are compiled once when the configuration is loaded; a syntax error stops the load
//! with a message naming the character where it is, e.g. `at character 17: unknown filter
//! `uper` (known filters: truncate, default, map, upper, lower, trim, json)`. Positions are
//! 1-based and counted in characters (Unicode scalar values) of the template text. Rendering an
//! alert never fails: whatever the alert contains, a template produces a string.
//!
//! # Syntax
//!
//! Everything outside `{{ … }}` is copied as is (a lone `{` or `}`, or `}}`, is ordinary text).
//! Inside, an *expression* is a path (or a quoted string), then zero or more `| filter`s, applied
//! left to right. Spaces and newlines around the parts of an expression are ignored.
//!
//! ## Paths
//!
//! | Path                                   | Reads                                                 |
//! |----------------------------------------|-------------------------------------------------------|
//! | `severity`                             | the scope variable `severity`                         |
//! | `context.condition.windowSize`         | nested objects, one name per `.`                      |
//! | `targetResources.0`, `targetResources[0]` | element 0 of an array                              |
//! | `context.condition.allOf.0.metricName` | indexes and names mixed                               |
//! | `customProperties["my.key"]`           | a name containing `.`, spaces or other characters     |
//! | `["name with spaces"].x`               | a quoted first segment                                |
//!
//! A bare name is made of letters, digits, `_`, `-`, `$` and `@`; anything else must be quoted
//! with `["…"]` (`a.["b"]` is accepted too). A segment of digits indexes an array and, on an
//! object, reads the key with that text; a quoted segment always reads an object key. A path that
//! leads nowhere (missing key, index out of range, indexing a string) is *missing* and renders
//! as empty text, unless a `default` says otherwise.
//!
//! ## Values
//!
//! * strings render as they are (no quotes);
//! * numbers and booleans render as their JSON text (`3`, `0.5`, `true`);
//! * `null` and missing values render as empty text;
//! * arrays of scalars render as their elements joined by `", "` (`a, b, c`);
//!   any other array (containing arrays or objects) renders as compact JSON;
//! * objects render as compact JSON (`{"a":1}`).
//!
//! ## Filters
//!
//! | Filter                              | Effect                                                                  |
//! |-------------------------------------|-------------------------------------------------------------------------|
//! | `truncate(N)`                       | keep at most `N` characters (Unicode scalar values)                     |
//! | `default("text")`                   | `"text"` when the value is missing, `null`, `""` or renders as empty    |
//! | `map("Sev0" = "1", _ = "3")`        | replace an exact match of the rendered text; `_` is the fallback        |
//! | `upper`, `lower`                    | Unicode upper / lower case                                              |
//! | `trim`                              | remove leading and trailing whitespace                                  |
//! | `json`                              | the value as compact JSON (strings get quotes and escapes)              |
//!
//! * `truncate` cuts exactly at `N` characters and appends nothing (no `…`): ServiceNow fields
//!   have hard length limits, and a marker would itself eat into the limit. A character here is a
//!   Unicode scalar value, so a cut may separate a letter from a following combining accent; the
//!   result is always valid text.
//! * `default` tests the value as it is at that point of the chain: put it before `json`
//!   (`{{ x | default("none") | json }}`), since `json` turns `null` into the text `null`.
//!   An empty array, or an array holding one `null` or `""`, renders as empty and counts too.
//! * `map` compares the rendered text with each key exactly (case-sensitive, no trimming).
//!   Without `_`, a value matching no key passes through unchanged. A missing value is matched as
//!   the empty text, so `map("" = "none")` and `_` both catch it. Keys and values are quoted
//!   strings or whole numbers (`map(0 = "1", 1 = "1", 2 = "2", _ = "3")` over `severityNumber`).
//!   A key may appear only once; a trailing comma is allowed.
//! * `json` on a missing value renders nothing; on anything else valid JSON (`null`, `"text"`,
//!   `[1,2]`, `{"a":1}`), handy for pasting an object into a description.
//! * `upper`, `lower`, `trim` and `json` take no arguments (`upper()` is also accepted).
//!
//! ## Strings and escapes
//!
//! Filter arguments and quoted path segments are written in double quotes; inside them `\"` is a
//! quote, `\\` a backslash, `\n` a newline and `\t` a tab. Any other `\` escape is an error.
//!
//! An expression may also be a quoted string instead of a path: `{{ "text" }}` renders `text`.
//! That is how to write a literal `{{`: `{{"{{"}}` renders `{{`. (No escape is needed for `}}`
//! outside a placeholder.) Placeholders made only of quoted strings and filters are evaluated
//! when the template is compiled, so `Template::is_constant` is still true for `a {{"{{"}} b`.
//!
//! # Scope variables
//!
//! The alert path renders templates over an object with these names (absent values are missing):
//!
//! | Name                 | Value                                                                    |
//! |----------------------|--------------------------------------------------------------------------|
//! | `rule`               | the alert rule name                                                      |
//! | `ruleId`             | the alert rule resource id                                               |
//! | `severity`           | the severity as Azure writes it, e.g. `"Sev3"`                           |
//! | `severityNumber`     | the severity as a number, 0 (critical) to 4 (verbose)                    |
//! | `condition`          | the monitor condition, `"Fired"` or `"Resolved"`                         |
//! | `signalType`         | `"Metric"`, `"Log"`, `"Activity Log"`, …                                 |
//! | `monitoringService`  | e.g. `"Platform"`, `"Log Analytics"`, `"Application Insights"`           |
//! | `description`        | the alert rule description                                               |
//! | `firedAt`            | when the alert fired (RFC 3339)                                          |
//! | `resolvedAt`         | when the alert resolved (RFC 3339), missing while fired                  |
//! | `targetResources`    | array of the alert target resource ids                                   |
//! | `resource`           | the first target resource id                                             |
//! | `resourceName`       | the name of that resource                                                |
//! | `resourceGroup`      | its resource group                                                       |
//! | `subscription`       | its subscription id                                                      |
//! | `resourceType`       | its resource type, e.g. `"microsoft.compute/virtualmachines"`            |
//! | `configurationItems` | array of the configuration items named by the alert                      |
//! | `configurationItem`  | the first configuration item, or else the resource name                  |
//! | `customProperties`   | object of the alert's custom properties                                  |
//! | `context`            | the alert context exactly as Azure sent it (its shape depends on the signal) |
//! | `alertId`            | the Azure Monitor alert id                                               |
//! | `schema`             | the payload schema id, e.g. `"azureMonitorCommonAlertSchema"`            |
//!
//! # Examples
//!
//! ```
//! use itsmc::workitem::template::Template;
//! use serde_json::json;
//!
//! let scope = json!({
//!     "severity": "Sev1",
//!     "rule": "CPU high",
//!     "resourceName": "vm-web-01",
//!     "targetResources": ["/subscriptions/s/resourceGroups/rg/providers/x/vm-web-01"],
//!     "customProperties": { "owner.team": "web" },
//!     "context": { "condition": { "allOf": [ { "metricName": "Percentage CPU", "metricValue": 97.5 } ] } }
//! });
//! let t = Template::compile(
//!     "[{{ severity | map(\"Sev0\" = \"P1\", \"Sev1\" = \"P2\", _ = \"P3\") }}] {{ rule | upper }} \
//!      on {{ resourceName }}: {{ context.condition.allOf.0.metricName }} = \
//!      {{ context.condition.allOf[0].metricValue }} (team {{ customProperties[\"owner.team\"] }}, \
//!      runbook {{ customProperties.runbook | default(\"none\") }})",
//! ).unwrap();
//! assert_eq!(
//!     t.render(&scope),
//!     "[P2] CPU HIGH on vm-web-01: Percentage CPU = 97.5 (team web, runbook none)"
//! );
//!
//! let err = Template::compile("{{ rule | shout }}").unwrap_err();
//! assert_eq!(err.position, 11);
//! assert!(err.to_string().starts_with("at character 11: unknown filter `shout`"));
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde_json::Value;

/// A compile error: where (1-based character position in the template) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: {message}")]
pub struct TemplateError {
    /// 1-based position of the offending character, counted in characters (Unicode scalar values).
    pub position: usize,
    pub message: String,
}

/// A compiled field template. See the [module documentation](self) for the syntax.
#[derive(Clone)]
pub struct Template {
    source: Box<str>,
    parts: Box<[Part]>,
    /// Output buffer size to start with: the literal text plus a little per placeholder.
    capacity: usize,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(Box<str>),
    Expr(Expr),
}

#[derive(Clone, Debug)]
struct Expr {
    path: Box<[Seg]>,
    filters: Box<[Filter]>,
}

#[derive(Clone, Debug)]
enum Seg {
    /// A quoted or non-numeric name: object key only.
    Key(Box<str>),
    /// A run of digits: array index, or on an object the key with that text.
    Index(usize, Box<str>),
}

#[derive(Clone, Debug)]
enum Filter {
    Truncate(usize),
    Default(Box<str>),
    Map { pairs: Box<[(Box<str>, Box<str>)]>, fallback: Option<Box<str>> },
    Upper,
    Lower,
    Trim,
    Json,
}

const KNOWN_FILTERS: &str = "truncate, default, map, upper, lower, trim, json";

impl Template {
    /// Compile once at configuration load.
    ///
    /// # Errors
    ///
    /// A [`TemplateError`] naming the 1-based character position and what is wrong there:
    /// an unclosed `{{`, an unknown filter, a bad argument, an unterminated string, ….
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        let mut p = Parser { src: source, pos: 0, open: 0 };
        let mut parts = Vec::new();
        let mut lit = String::new();
        while p.pos < source.len() {
            let rest = &source[p.pos..];
            let Some(k) = rest.find("{{") else {
                lit.push_str(rest);
                break;
            };
            lit.push_str(&rest[..k]);
            p.open = p.pos + k;
            p.pos = p.open + 2;
            match p.placeholder()? {
                Parsed::Const(text) => lit.push_str(&text),
                Parsed::Expr(expr) => {
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit).into()));
                    }
                    parts.push(Part::Expr(expr));
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit.into()));
        }
        let capacity = parts
            .iter()
            .map(|part| match part {
                Part::Literal(s) => s.len(),
                Part::Expr(_) => 32,
            })
            .sum();
        Ok(Template { source: source.into(), parts: parts.into(), capacity })
    }

    /// Render against a scope (the names built from an alert, or any JSON object). Never fails, never
    /// panics: a missing path renders as empty (unless `default` says otherwise).
    #[must_use]
    pub fn render<S: Names + ?Sized>(&self, scope: &S) -> String {
        let mut out = String::with_capacity(self.capacity);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Expr(expr) => {
                    let start = match lookup(scope, &expr.path) {
                        Some(v) => Cur::Val(v),
                        None => Cur::Missing,
                    };
                    write_cur(&mut out, apply_filters(start, &expr.filters));
                }
            }
        }
        out
    }

    /// True when the template has no placeholders over the alert (a constant). Placeholders made
    /// only of quoted strings, such as the `{{"{{"}}` escape, are folded at compile time and do
    /// not count.
    #[must_use]
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Literal(_)))
    }

    /// The template text as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&&*self.source).finish()
    }
}

/// Two templates are equal when their source text is.
impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Template {}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Template::compile(&source).map_err(|e| serde::de::Error::custom(format_args!("invalid template: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// The value flowing through a filter chain.
enum Cur<'a> {
    Missing,
    Val(&'a Value),
    Text(Cow<'a, str>),
}

/// What a template's first path segment is looked up in. A trait rather than one JSON object so the
/// alert path can lend large values (the alert's context) to the scope instead of copying them into it.
pub trait Names {
    fn name(&self, name: &str) -> Option<&Value>;

    /// The scope as one JSON value, when it is one: its root may then also be an array.
    fn as_value(&self) -> Option<&Value> {
        None
    }
}

impl Names for Value {
    fn name(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }

    fn as_value(&self) -> Option<&Value> {
        Some(self)
    }
}

fn lookup<'a, S: Names + ?Sized>(scope: &'a S, path: &[Seg]) -> Option<&'a Value> {
    if let Some(root) = scope.as_value() {
        return walk(root, path);
    }
    let (first, rest) = path.split_first()?;
    let (Seg::Key(name) | Seg::Index(_, name)) = first;
    walk(scope.name(name)?, rest)
}

fn walk<'a>(mut v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    for seg in path {
        v = match (v, seg) {
            (Value::Object(map), Seg::Key(key) | Seg::Index(_, key)) => map.get(&**key)?,
            (Value::Array(items), Seg::Index(i, _)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn apply_filters<'a>(mut cur: Cur<'a>, filters: &'a [Filter]) -> Cur<'a> {
    for filter in filters {
        cur = apply(cur, filter);
    }
    cur
}

fn apply<'a>(cur: Cur<'a>, filter: &'a Filter) -> Cur<'a> {
    match filter {
        Filter::Truncate(n) => Cur::Text(truncate_chars(text_of(cur), *n)),
        Filter::Default(text) => {
            if renders_empty(&cur) {
                Cur::Text(Cow::Borrowed(text))
            } else {
                cur
            }
        }
        Filter::Map { pairs, fallback } => {
            let found = {
                let text = text_ref(&cur);
                pairs.iter().find(|(key, _)| **key == *text).map(|(_, value)| value)
            };
            match found.or(fallback.as_ref()) {
                Some(value) => Cur::Text(Cow::Borrowed(value)),
                None => cur,
            }
        }
        Filter::Upper => Cur::Text(Cow::Owned(text_of(cur).to_uppercase())),
        Filter::Lower => Cur::Text(Cow::Owned(text_of(cur).to_lowercase())),
        Filter::Trim => Cur::Text(match text_of(cur) {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        }),
        Filter::Json => Cur::Text(match cur {
            Cur::Missing => Cow::Borrowed(""),
            // `Value`'s Display is compact JSON and cannot fail.
            Cur::Val(v) => Cow::Owned(v.to_string()),
            Cur::Text(t) => Cow::Owned(serde_json::to_string(&*t).unwrap_or_default()),
        }),
    }
}

/// Keep at most `n` Unicode scalar values. Nothing is appended when cutting: ServiceNow fields
/// have hard length limits, and an ellipsis would itself count against them.
fn truncate_chars(text: Cow<'_, str>, n: usize) -> Cow<'_, str> {
    let Some((cut, _)) = text.char_indices().nth(n) else {
        return text;
    };
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..cut]),
        Cow::Owned(mut s) => {
            s.truncate(cut);
            Cow::Owned(s)
        }
    }
}

fn renders_empty(cur: &Cur<'_>) -> bool {
    match cur {
        Cur::Missing => true,
        Cur::Text(t) => t.is_empty(),
        Cur::Val(v) => value_renders_empty(v),
    }
}

fn value_renders_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => match items.as_slice() {
            [] => true,
            [only] => matches!(only, Value::Null) || only.as_str() == Some(""),
            _ => false,
        },
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => false,
    }
}

/// The current value as text, consuming it (borrowing from the scope or template when possible).
fn text_of(cur: Cur<'_>) -> Cow<'_, str> {
    match cur {
        Cur::Missing => Cow::Borrowed(""),
        Cur::Val(Value::String(s)) => Cow::Borrowed(s),
        Cur::Val(v) => {
            let mut s = String::new();
            write_value(&mut s, v);
            Cow::Owned(s)
        }
        Cur::Text(t) => t,
    }
}

/// The current value as text, without consuming it.
fn text_ref<'c>(cur: &'c Cur<'_>) -> Cow<'c, str> {
    match cur {
        Cur::Missing => Cow::Borrowed(""),
        Cur::Val(Value::String(s)) => Cow::Borrowed(s),
        Cur::Val(v) => {
            let mut s = String::new();
            write_value(&mut s, v);
            Cow::Owned(s)
        }
        Cur::Text(t) => Cow::Borrowed(t),
    }
}

fn write_cur(out: &mut String, cur: Cur<'_>) {
    match cur {
        Cur::Missing => {}
        Cur::Val(v) => write_value(out, v),
        Cur::Text(t) => out.push_str(&t),
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => out.push_str(s),
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
        }
        // Compact JSON; writing into a String cannot fail.
        Value::Array(_) | Value::Object(_) => {
            let _ = write!(out, "{v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling

enum Parsed {
    Expr(Expr),
    /// A placeholder over a quoted string only, evaluated at compile time.
    Const(String),
}

/// One argument of a filter: `atom` or `atom = atom`.
struct Arg {
    pos: usize,
    key: Atom,
    value: Option<(usize, Atom)>,
}

enum Atom {
    Str(String),
    /// Starts with a digit or `-`; validated by the filter that takes it.
    Num(String),
    Word(String),
}

impl Atom {
    fn describe(&self) -> String {
        match self {
            Atom::Str(s) => format!("{s:?}"),
            Atom::Num(s) | Atom::Word(s) => format!("`{s}`"),
        }
    }

    /// A quoted string or a whole number, as text.
    fn into_text(self) -> Option<String> {
        match self {
            Atom::Str(s) => Some(s),
            Atom::Num(s) if is_whole_number(&s) => Some(s),
            Atom::Num(_) | Atom::Word(_) => None,
        }
    }
}

fn is_whole_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '$' | '@')
}

fn show(c: char) -> String {
    if c.is_whitespace() || c.is_control() { format!("{c:?}") } else { format!("`{c}`") }
}

struct Parser<'s> {
    src: &'s str,
    /// Byte offset of the next character; always on a character boundary.
    pos: usize,
    /// Byte offset of the `{{` of the placeholder being parsed.
    open: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'s str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.src[start..self.pos]
    }

    fn err_at(&self, byte_pos: usize, message: impl Into<String>) -> TemplateError {
        let chars = self.src.char_indices().take_while(|(i, _)| *i < byte_pos).count();
        TemplateError { position: chars + 1, message: message.into() }
    }

    fn unclosed(&self) -> TemplateError {
        self.err_at(self.open, "unclosed `{{`: expected `}}` before the end of the template")
    }

    /// An error at the current position about what was found there (or the unclosed `{{`).
    fn unexpected(&self, expected: &str) -> TemplateError {
        match self.peek() {
            None => self.unclosed(),
            Some(c) => self.err_at(self.pos, format!("expected {expected}, found {}", show(c))),
        }
    }

    /// After `{{`: the expression and the closing `}}`.
    fn placeholder(&mut self) -> Result<Parsed, TemplateError> {
        self.skip_ws();
        enum Primary {
            Path(Box<[Seg]>),
            Lit(String),
        }
        let primary = match self.peek() {
            Some('"') => Primary::Lit(self.string()?),
            Some(c) if is_name_char(c) || c == '[' => Primary::Path(self.path()?),
            Some('}') if self.src[self.pos..].starts_with("}}") => {
                return Err(self.err_at(self.pos, "empty placeholder: expected a path or a quoted string after `{{`"));
            }
            _ => return Err(self.unexpected("a path or a quoted string")),
        };
        let mut filters = Vec::new();
        loop {
            self.skip_ws();
            if self.src[self.pos..].starts_with("}}") {
                self.pos += 2;
                break;
            }
            if !self.eat('|') {
                return Err(self.unexpected("`|` or `}}`"));
            }
            self.skip_ws();
            filters.push(self.filter()?);
        }
        Ok(match primary {
            Primary::Path(path) => Parsed::Expr(Expr { path, filters: filters.into() }),
            Primary::Lit(text) => {
                let mut out = String::new();
                write_cur(&mut out, apply_filters(Cur::Text(Cow::Borrowed(&text)), &filters));
                Parsed::Const(out)
            }
        })
    }

    fn path(&mut self) -> Result<Box<[Seg]>, TemplateError> {
        let mut segs = Vec::new();
        if self.peek() == Some('[') {
            segs.push(self.bracket()?);
        } else {
            segs.push(self.name_seg());
        }
        loop {
            match self.peek() {
                Some('.') => {
                    self.bump();
                    match self.peek() {
                        Some('[') => segs.push(self.bracket()?),
                        Some(c) if is_name_char(c) => segs.push(self.name_seg()),
                        _ => return Err(self.unexpected("a name after `.`")),
                    }
                }
                Some('[') => segs.push(self.bracket()?),
                _ => return Ok(segs.into()),
            }
        }
    }

    /// A bare name; the caller has checked that one starts here.
    fn name_seg(&mut self) -> Seg {
        let name = self.take_while(is_name_char);
        let canonical_index = name == "0" || !name.starts_with('0');
        match name.parse::<usize>() {
            Ok(i) if canonical_index && name.bytes().all(|b| b.is_ascii_digit()) => Seg::Index(i, name.into()),
            _ => Seg::Key(name.into()),
        }
    }

    /// `["name"]` or `[N]`, at the `[`.
    fn bracket(&mut self) -> Result<Seg, TemplateError> {
        self.bump();
        self.skip_ws();
        let seg = match self.peek() {
            Some('"') => Seg::Key(self.string()?.into()),
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                let digits = self.take_while(|c| c.is_ascii_digit());
                match digits.parse::<usize>() {
                    Ok(i) => Seg::Index(i, digits.into()),
                    Err(_) => return Err(self.err_at(start, "array index is too large")),
                }
            }
            _ => {
                return Err(self.unexpected("a quoted name or an array index inside `[ ]`"));
            }
        };
        self.skip_ws();
        if !self.eat(']') {
            return Err(self.unexpected("`]`"));
        }
        Ok(seg)
    }

    /// A double-quoted string, at the `"`.
    fn string(&mut self) -> Result<String, TemplateError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.err_at(start, "unterminated string: missing the closing `\"`"));
            };
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let escape = self.pos - 1;
                    match self.bump() {
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(other) => {
                            return Err(self.err_at(
                                escape,
                                format!(
                                    "unknown escape `\\{other}` in a string \
                                     (known: `\\\"`, `\\\\`, `\\n`, `\\t`)"
                                ),
                            ));
                        }
                        None => {
                            return Err(self.err_at(start, "unterminated string: missing the closing `\"`"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    /// A filter after `|` (and spaces).
    fn filter(&mut self) -> Result<Filter, TemplateError> {
        let name_pos = self.pos;
        let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
        if name.is_empty() {
            return Err(self.unexpected("a filter name after `|`"));
        }
        let name = name.to_owned();
        self.skip_ws();
        let args = if self.peek() == Some('(') {
            let paren = self.pos;
            self.bump();
            Some((paren, self.args()?))
        } else {
            None
        };
        let no_args = |p: &Self, filter: Filter| match &args {
            None => Ok(filter),
            Some((_, a)) if a.is_empty() => Ok(filter),
            Some((paren, _)) => Err(p.err_at(*paren, format!("`{name}` takes no arguments"))),
        };
        match name.as_str() {
            "upper" => no_args(self, Filter::Upper),
            "lower" => no_args(self, Filter::Lower),
            "trim" => no_args(self, Filter::Trim),
            "json" => no_args(self, Filter::Json),
            "truncate" => {
                let atom = self.single_arg(
                    name_pos,
                    args,
                    "`truncate` needs one argument, the maximum number of characters, \
                     e.g. `truncate(80)`",
                    "truncate",
                )?;
                let (pos, atom) = atom;
                match &atom {
                    Atom::Num(s) if s.bytes().all(|b| b.is_ascii_digit()) => s
                        .parse::<usize>()
                        .map(Filter::Truncate)
                        .map_err(|_| self.err_at(pos, format!("`truncate` length `{s}` is too large"))),
                    _ => Err(self.err_at(
                        pos,
                        format!("`truncate` needs a whole number of characters, found {}", atom.describe()),
                    )),
                }
            }
            "default" => {
                let (pos, atom) = self.single_arg(
                    name_pos,
                    args,
                    "`default` needs one argument, the text to use, e.g. `default(\"n/a\")`",
                    "default",
                )?;
                let described = atom.describe();
                match atom.into_text() {
                    Some(text) => Ok(Filter::Default(text.into())),
                    None => Err(self.err_at(pos, format!("`default` needs a quoted string, found {described}"))),
                }
            }
            "map" => self.map_filter(name_pos, args),
            _ => Err(self.err_at(name_pos, format!("unknown filter `{name}` (known filters: {KNOWN_FILTERS})"))),
        }
    }

    /// After `(`: comma-separated arguments up to and including `)`.
    fn args(&mut self) -> Result<Vec<Arg>, TemplateError> {
        let mut args = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(')') {
                return Ok(args);
            }
            let pos = self.pos;
            let key = self.atom()?;
            self.skip_ws();
            let value = if self.eat('=') {
                self.skip_ws();
                let vpos = self.pos;
                Some((vpos, self.atom()?))
            } else {
                None
            };
            args.push(Arg { pos, key, value });
            self.skip_ws();
            if self.eat(')') {
                return Ok(args);
            }
            if !self.eat(',') {
                return Err(self.unexpected("`,` or `)` in the argument list"));
            }
        }
    }

    fn atom(&mut self) -> Result<Atom, TemplateError> {
        match self.peek() {
            Some('"') => Ok(Atom::Str(self.string()?)),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                Ok(Atom::Num(self.take_while(|c| c == '-' || c == '.' || is_name_char(c)).to_owned()))
            }
            Some(c) if is_name_char(c) => Ok(Atom::Word(self.take_while(is_name_char).to_owned())),
            _ => Err(self.unexpected("an argument (a quoted string, a number or `_`)")),
        }
    }

    /// Exactly one plain (not `key = value`) argument.
    fn single_arg(
        &self,
        name_pos: usize,
        args: Option<(usize, Vec<Arg>)>,
        missing: &str,
        name: &str,
    ) -> Result<(usize, Atom), TemplateError> {
        let Some((_, args)) = args else {
            return Err(self.err_at(name_pos, missing));
        };
        let count = args.len();
        let mut args = args.into_iter();
        let Some(first) = args.next() else {
            return Err(self.err_at(name_pos, missing));
        };
        if let Some(second) = args.next() {
            return Err(self.err_at(second.pos, format!("`{name}` takes one argument, found {count}")));
        }
        if first.value.is_some() {
            return Err(self.err_at(first.pos, format!("`{name}` takes a single value, not a `key = value` pair")));
        }
        Ok((first.pos, first.key))
    }

    fn map_filter(&self, name_pos: usize, args: Option<(usize, Vec<Arg>)>) -> Result<Filter, TemplateError> {
        let args = match args {
            Some((_, args)) if !args.is_empty() => args,
            _ => {
                return Err(self.err_at(
                    name_pos,
                    "`map` needs `\"from\" = \"to\"` pairs, e.g. `map(\"Sev0\" = \"1\", _ = \"3\")`",
                ));
            }
        };
        let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(args.len());
        let mut fallback: Option<Box<str>> = None;
        for arg in args {
            let Some((vpos, value)) = arg.value else {
                return Err(self.err_at(
                    arg.pos,
                    format!("`map` takes `\"from\" = \"to\"` pairs, found {} without `=`", arg.key.describe()),
                ));
            };
            let described = value.describe();
            let Some(value) = value.into_text() else {
                return Err(self.err_at(vpos, format!("`map` values must be quoted strings, found {described}")));
            };
            if matches!(&arg.key, Atom::Word(w) if w == "_") {
                if fallback.is_some() {
                    return Err(self.err_at(arg.pos, "`map` has more than one `_` fallback"));
                }
                fallback = Some(value.into());
                continue;
            }
            let described = arg.key.describe();
            let Some(key) = arg.key.into_text() else {
                return Err(
                    self.err_at(arg.pos, format!("`map` keys must be quoted strings or `_`, found {described}"))
                );
            };
            if pairs.iter().any(|(k, _)| **k == *key) {
                return Err(self.err_at(arg.pos, format!("`map` has the key {key:?} twice")));
            }
            pairs.push((key.into(), value.into()));
        }
        Ok(Filter::Map { pairs: pairs.into(), fallback })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, scope: &Value) -> String {
        Template::compile(template).unwrap_or_else(|e| panic!("{template:?} does not compile: {e}")).render(scope)
    }

    fn compile_err(template: &str) -> TemplateError {
        match Template::compile(template) {
            Ok(t) => panic!("{template:?} compiled: {t:?}"),
            Err(e) => e,
        }
    }

    fn scope() -> Value {
        json!({
            "s": "Hello",
            "n": 42,
            "f": 2.5,
            "b": true,
            "nul": null,
            "empty": "",
            "spaced": "  padded\t",
            "list": ["a", "b", 3, true, null],
            "nested": [[1, 2], {"k": "v"}],
            "none": [],
            "lonely": [""],
            "obj": {"a": 1, "b": [true, "x"], "c": {"d": null}},
            "dots": {"my.key": "dotted", "with space": "spaced out", "0": "zero key"},
            "items": [{"name": "first"}, {"name": "second"}],
            "multi": "héllo wörld €uro 🎉 end",
            "quote": "say \"hi\"\n",
            "with space": {"inner": "top-level quoted"},
        })
    }

    #[test]
    fn literal_only_and_empty() {
        let t = Template::compile("just text { } }} {x}").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.render(&json!({})), "just text { } }} {x}");
        assert_eq!(t.source(), "just text { } }} {x}");
        let t = Template::compile("").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.render(&json!({})), "");
        assert!(!Template::compile("{{ s }}").unwrap().is_constant());
    }

    #[test]
    fn scalar_values() {
        let s = scope();
        assert_eq!(render("{{s}}", &s), "Hello");
        assert_eq!(render("{{ s }}!", &s), "Hello!");
        assert_eq!(render("n={{ n }} f={{ f }} b={{ b }}", &s), "n=42 f=2.5 b=true");
        assert_eq!(render("[{{ nul }}][{{ empty }}][{{ missing }}]", &s), "[][][]");
        assert_eq!(render("{{\n  s\n  |\n  upper\n}}", &s), "HELLO", "newlines inside");
    }

    #[test]
    fn arrays_and_objects() {
        let s = scope();
        assert_eq!(render("{{ list }}", &s), "a, b, 3, true, ");
        assert_eq!(render("{{ nested }}", &s), r#"[[1,2],{"k":"v"}]"#);
        assert_eq!(render("{{ none }}", &s), "");
        assert_eq!(render("{{ obj }}", &s), r#"{"a":1,"b":[true,"x"],"c":{"d":null}}"#);
        assert_eq!(render("{{ obj.b }}", &s), "true, x");
    }

    #[test]
    fn paths_with_indexes_and_quotes() {
        let s = scope();
        assert_eq!(render("{{ list.0 }}{{ list.1 }}{{ list[2] }}", &s), "ab3");
        assert_eq!(render("{{ items.1.name }}", &s), "second");
        assert_eq!(render("{{ items[0].name }}", &s), "first");
        assert_eq!(render("{{ items[ 0 ][\"name\"] }}", &s), "first");
        assert_eq!(render("{{ items.0.[\"name\"] }}", &s), "first");
        assert_eq!(render("{{ dots[\"my.key\"] }}", &s), "dotted");
        assert_eq!(render("{{ dots[\"with space\"] }}", &s), "spaced out");
        assert_eq!(render("{{ dots.0 }}|{{ dots[0] }}", &s), "zero key|zero key");
        assert_eq!(render("{{ [\"with space\"].inner }}", &s), "top-level quoted");
        assert_eq!(render("{{ obj.c.d }}", &s), "");
        assert_eq!(
            render(
                "{{ context.condition.allOf.0.metricName }}",
                &json!({"context": {"condition": {"allOf": [{"metricName": "cpu"}]}}})
            ),
            "cpu"
        );
        // Quoted segments never index arrays; a leading-zero index is a key only.
        assert_eq!(render("{{ list[\"0\"] }}", &s), "");
        assert_eq!(render("{{ list.00 }}", &s), "");
        assert_eq!(render("{{ $x.@y.a-b }}", &json!({"$x": {"@y": {"a-b": "ok"}}})), "ok");
        assert_eq!(render("{{ ключ }}", &json!({"ключ": "значение"})), "значение");
    }

    #[test]
    fn missing_paths() {
        let s = scope();
        for t in [
            "{{ nope }}",
            "{{ s.x }}",
            "{{ s.0 }}",
            "{{ list.99 }}",
            "{{ list.x }}",
            "{{ obj.a.b }}",
            "{{ items.0.name.0 }}",
            "{{ n.0 }}",
            "{{ list.18446744073709551615 }}",
            "{{ list.99999999999999999999999 }}",
        ] {
            assert_eq!(render(t, &s), "", "{t}");
        }
        // A scope that is not an object.
        assert_eq!(render("a{{ x }}b", &json!("str")), "ab");
        assert_eq!(render("a{{ 0 }}b", &json!(["first"])), "afirstb");
        assert_eq!(render("a{{ x.y }}b", &Value::Null), "ab");
    }

    #[test]
    fn default_filter() {
        let s = scope();
        assert_eq!(render("{{ missing | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ nul | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ empty | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ none | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ lonely | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ s | default(\"d\") }}", &s), "Hello");
        assert_eq!(render("{{ n | default(\"d\") }}", &s), "42");
        assert_eq!(render("{{ b | default(\"d\") }}", &s), "true");
        assert_eq!(render("{{ obj | default(\"d\") }}", &s).chars().next(), Some('{'));
        assert_eq!(render("{{ missing | default(7) }}", &s), "7");
        assert_eq!(render("{{ missing | default(\"\") }}", &s), "");
        // Applies to the value at that point of the chain.
        assert_eq!(render("{{ spaced | trim | default(\"d\") }}", &s), "padded");
        assert_eq!(render("{{ \"  \" | trim | default(\"d\") }}", &s), "d");
        assert_eq!(render("{{ nul | json | default(\"d\") }}", &s), "null");
        assert_eq!(render("{{ nul | default(\"d\") | json }}", &s), "\"d\"");
        assert_eq!(render("{{ missing | default(\"a\") | default(\"b\") }}", &s), "a");
    }

    #[test]
    fn map_filter() {
        let sev = |v: &str| json!({ "severity": v });
        let with_fallback = "{{ severity | map(\"Sev0\" = \"1\", \"Sev1\" = \"2\", _ = \"3\") }}";
        assert_eq!(render(with_fallback, &sev("Sev0")), "1");
        assert_eq!(render(with_fallback, &sev("Sev1")), "2");
        assert_eq!(render(with_fallback, &sev("Sev4")), "3");
        assert_eq!(render(with_fallback, &sev("sev0")), "3", "case-sensitive");
        assert_eq!(render(with_fallback, &json!({})), "3", "missing takes `_`");
        let without = "{{ severity | map(\"Sev0\" = \"1\", \"Sev1\" = \"2\") }}";
        assert_eq!(render(without, &sev("Sev1")), "2");
        assert_eq!(render(without, &sev("Sev3")), "Sev3", "passes through");
        assert_eq!(render(without, &json!({})), "");
        // `_` anywhere, numbers as keys and values, trailing comma, missing as "".
        let numbers = "{{ n | map(_ = \"other\", 0 = 1, 42 = \"answer\",) }}";
        assert_eq!(render(numbers, &json!({"n": 42})), "answer");
        assert_eq!(render(numbers, &json!({"n": 0})), "1");
        assert_eq!(render(numbers, &json!({"n": 7})), "other");
        assert_eq!(render("{{ x | map(\"\" = \"none\") }}", &json!({})), "none");
        // Matches the rendered text of arrays; pass-through keeps the value for `json`.
        assert_eq!(render("{{ l | map(\"a, b\" = \"ab\") }}", &json!({"l": ["a", "b"]})), "ab");
        assert_eq!(render("{{ o | map(\"x\" = \"y\") | json }}", &json!({"o": {"k": 1}})), r#"{"k":1}"#);
        // Chained.
        assert_eq!(render("{{ severity | map(\"Sev2\" = \"minor\") | upper }}", &sev("Sev2")), "MINOR");
    }

    #[test]
    fn truncate_filter() {
        let s = scope();
        assert_eq!(render("{{ s | truncate(3) }}", &s), "Hel");
        assert_eq!(render("{{ s | truncate(5) }}", &s), "Hello");
        assert_eq!(render("{{ s | truncate(50) }}", &s), "Hello");
        assert_eq!(render("{{ s | truncate(0) }}", &s), "");
        assert_eq!(render("{{ missing | truncate(3) }}", &s), "");
        assert_eq!(render("{{ n | truncate(1) }}", &s), "4");
        assert_eq!(render("{{ obj | truncate(6) }}", &s), "{\"a\":1");
        // Multibyte: counted in characters, cut on a boundary, nothing appended.
        assert_eq!(render("{{ multi | truncate(2) }}", &s), "hé");
        assert_eq!(render("{{ multi | truncate(8) }}", &s), "héllo wö");
        assert_eq!(render("{{ multi | truncate(13) }}", &s), "héllo wörld €");
        assert_eq!(render("{{ multi | truncate(18) }}", &s), "héllo wörld €uro 🎉");
        assert_eq!(render("{{ \"🎉🎉🎉\" | truncate(2) }}", &s), "🎉🎉");
        assert_eq!(render("{{ s | truncate(18446744073709551615) }}", &s), "Hello");
        // Owned text (after upper) truncates too.
        assert_eq!(render("{{ multi | upper | truncate(5) }}", &s), "HÉLLO");
        let big = json!({ "v": "x".repeat(1_000_000) });
        assert_eq!(render("{{ v | truncate(10) }}", &big), "xxxxxxxxxx");
    }

    #[test]
    fn case_and_trim_filters() {
        let s = scope();
        assert_eq!(render("{{ s | upper }}", &s), "HELLO");
        assert_eq!(render("{{ s | lower }}", &s), "hello");
        assert_eq!(render("{{ s | upper() }}", &s), "HELLO");
        assert_eq!(render("{{ multi | upper }}", &s), "HÉLLO WÖRLD €URO 🎉 END");
        assert_eq!(render("{{ \"straße\" | upper }}", &s), "STRASSE");
        assert_eq!(render("[{{ spaced | trim }}]", &s), "[padded]");
        assert_eq!(render("[{{ spaced | upper | trim }}]", &s), "[PADDED]");
        assert_eq!(render("[{{ s | upper | trim }}]", &s), "[HELLO]");
        assert_eq!(render("[{{ missing | trim | upper | lower }}]", &s), "[]");
        assert_eq!(render("{{ b | upper }}", &s), "TRUE");
        assert_eq!(render("{{ list | upper }}", &s), "A, B, 3, TRUE, ");
    }

    #[test]
    fn json_filter() {
        let s = scope();
        assert_eq!(render("{{ obj | json }}", &s), r#"{"a":1,"b":[true,"x"],"c":{"d":null}}"#);
        assert_eq!(render("{{ list | json }}", &s), r#"["a","b",3,true,null]"#);
        assert_eq!(render("{{ s | json }}", &s), r#""Hello""#);
        assert_eq!(render("{{ quote | json }}", &s), r#""say \"hi\"\n""#);
        assert_eq!(render("{{ n | json }}", &s), "42");
        assert_eq!(render("{{ nul | json }}", &s), "null");
        assert_eq!(render("[{{ missing | json }}]", &s), "[]");
        assert_eq!(render("{{ s | upper | json }}", &s), r#""HELLO""#);
        assert_eq!(render("{{ obj | json | truncate(4) }}", &s), r#"{"a""#);
        assert_eq!(render("{{ s | json | json }}", &s), r#""\"Hello\"""#);
    }

    #[test]
    fn strings_escapes_and_constant_folding() {
        let s = scope();
        let t = Template::compile("a {{\"{{\"}} b }} c").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.render(&s), "a {{ b }} c");
        assert_eq!(render("{{ \"x\\\"y\\\\z\\n\\t\" }}", &s), "x\"y\\z\n\t");
        let t = Template::compile("{{ \"abc\" | upper | truncate(2) }}-{{ s }}").unwrap();
        assert!(!t.is_constant());
        assert_eq!(t.render(&s), "AB-Hello");
        assert_eq!(render("{{ s | map(\"Hello\" = \"}} {{ \\\"\") }}", &s), "}} {{ \"");
        assert_eq!(render("{{ missing | default(\"a|b)c\") }}", &s), "a|b)c");
        assert_eq!(render("{{ dots[\"my.key\"] }}{{ \"\" }}", &s), "dotted");
        // JSON-looking templates: `}}}` closes the placeholder, then a literal `}`.
        assert_eq!(render("{\"v\": {{ n }}}", &s), "{\"v\": 42}");
        assert_eq!(render("{\"v\": {{ s | json }}}", &s), "{\"v\": \"Hello\"}");
    }

    #[test]
    fn deserialize_debug_clone_eq() {
        #[derive(serde::Deserialize)]
        struct Conf {
            fields: std::collections::BTreeMap<String, Template>,
        }
        let conf: Conf = serde_json::from_value(json!({"fields": {"urgency": "{{ s | lower }}"}})).unwrap();
        let t = &conf.fields["urgency"];
        assert_eq!(t.render(&scope()), "hello");
        assert_eq!(format!("{t:?}"), r#"Template("{{ s | lower }}")"#);
        assert_eq!(t.clone(), *t);
        let err = serde_json::from_value::<Conf>(json!({"fields": {"u": "{{ s | nope }}"}})).err().unwrap().to_string();
        assert!(err.contains("invalid template: at character 8: unknown filter `nope`"), "{err}");
        assert!(serde_json::from_value::<Template>(json!(5)).is_err());
    }

    #[test]
    fn error_display() {
        let e = TemplateError { position: 3, message: "bad".into() };
        assert_eq!(e.to_string(), "at character 3: bad");
    }

    #[test]
    fn compile_errors() {
        // (template, position, message fragment)
        let cases: &[(&str, usize, &str)] = &[
            ("abc {{ s", 5, "unclosed `{{`"),
            ("abc {{", 5, "unclosed `{{`"),
            ("{{ s | upper", 1, "unclosed `{{`"),
            ("{{ s | truncate(5", 1, "unclosed `{{`"),
            ("{{ s | map(\"a\" = ", 1, "unclosed `{{`"),
            ("{{ s.", 1, "unclosed `{{`"),
            ("{{ s[", 1, "unclosed `{{`"),
            ("{{ s | ", 1, "unclosed `{{`"),
            ("{{ s } }}", 6, "expected `|` or `}}`, found `}`"),
            ("é {{ }}", 6, "empty placeholder"),
            ("{{}}", 3, "empty placeholder"),
            ("{{ | upper }}", 4, "expected a path or a quoted string, found `|`"),
            ("{{ .a }}", 4, "expected a path or a quoted string, found `.`"),
            ("{{ a b }}", 6, "expected `|` or `}}`, found `b`"),
            ("{{ a. }}", 6, "expected a name after `.`, found ' '"),
            ("{{ a..b }}", 6, "expected a name after `.`, found `.`"),
            ("{{ a[x] }}", 6, "expected a quoted name or an array index"),
            ("{{ a[\"x\" }}", 10, "expected `]`, found `}`"),
            ("{{ a[99999999999999999999999] }}", 6, "array index is too large"),
            ("{{ a | }}", 8, "expected a filter name after `|`, found `}`"),
            ("{{ a || upper }}", 7, "expected a filter name after `|`, found `|`"),
            ("{{ a | shout }}", 8, "unknown filter `shout` (known filters: truncate"),
            ("{{ a | Upper }}", 8, "unknown filter `Upper`"),
            ("{{ a | upper(1) }}", 13, "`upper` takes no arguments"),
            ("{{ a | json(\"x\") }}", 12, "`json` takes no arguments"),
            ("{{ a | trim(x) }}", 12, "`trim` takes no arguments"),
            ("{{ a | lower(,) }}", 14, "expected an argument"),
            ("{{ a | truncate }}", 8, "`truncate` needs one argument"),
            ("{{ a | truncate() }}", 8, "`truncate` needs one argument"),
            ("{{ a | truncate(1, 2) }}", 20, "`truncate` takes one argument, found 2"),
            ("{{ a | truncate(\"5\") }}", 17, "needs a whole number of characters, found \"5\""),
            ("{{ a | truncate(abc) }}", 17, "needs a whole number of characters, found `abc`"),
            ("{{ a | truncate(-1) }}", 17, "found `-1`"),
            ("{{ a | truncate(1.5) }}", 17, "found `1.5`"),
            ("{{ a | truncate(5x) }}", 17, "found `5x`"),
            ("{{ a | truncate(99999999999999999999999) }}", 17, "is too large"),
            ("{{ a | truncate(n = 5) }}", 17, "not a `key = value` pair"),
            ("{{ a | truncate(5 5) }}", 19, "expected `,` or `)` in the argument list, found `5`"),
            ("{{ a | default }}", 8, "`default` needs one argument"),
            ("{{ a | default(x) }}", 16, "`default` needs a quoted string, found `x`"),
            ("{{ a | default(1.5) }}", 16, "`default` needs a quoted string, found `1.5`"),
            ("{{ a | default(\"x\", \"y\") }}", 21, "`default` takes one argument, found 2"),
            ("{{ a | map }}", 8, "`map` needs `\"from\" = \"to\"` pairs"),
            ("{{ a | map() }}", 8, "`map` needs"),
            ("{{ a | map(\"x\") }}", 12, "found \"x\" without `=`"),
            ("{{ a | map(x = \"y\") }}", 12, "`map` keys must be quoted strings or `_`, found `x`"),
            ("{{ a | map(\"x\" = y) }}", 18, "`map` values must be quoted strings, found `y`"),
            ("{{ a | map(\"x\" = ) }}", 18, "expected an argument"),
            ("{{ a | map(_ = \"1\", _ = \"2\") }}", 21, "more than one `_`"),
            ("{{ a | map(\"k\" = \"1\", \"k\" = \"2\") }}", 23, "the key \"k\" twice"),
            ("{{ a | map(1 = \"1\", \"1\" = \"2\") }}", 21, "the key \"1\" twice"),
            ("{{ \"abc }}", 4, "unterminated string"),
            ("{{ \"abc\\", 4, "unterminated string"),
            ("{{ \"a\\qb\" }}", 6, "unknown escape `\\q`"),
            ("{{ a | default(\"\\x\") }}", 17, "unknown escape `\\x`"),
            ("{{ a[\"b\\\"] }}", 6, "unterminated string"),
            ("ü{{ a | ü }}", 9, "expected a filter name after `|`, found `ü`"),
            ("{{ a\n| upper\n| bogus }}", 16, "unknown filter `bogus`"),
            ("{{ a }} {{", 9, "unclosed `{{`"),
            ("{{ a }\n}", 6, "found `}`"),
            ("{{ a\u{0} }}", 5, "found '\\0'"),
        ];
        for &(template, position, fragment) in cases {
            let err = compile_err(template);
            assert!(err.message.contains(fragment), "{template:?}: message {:?} lacks {fragment:?}", err.message);
            assert_eq!(err.position, position, "{template:?}: {err}");
            assert_eq!(err.to_string(), format!("at character {position}: {}", err.message));
        }
    }

    /// xorshift64*: a tiny deterministic PRNG for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_never_panic() {
        const PIECES: &[&str] = &[
            "{{",
            "}}",
            "{",
            "}",
            "|",
            "(",
            ")",
            "[",
            "]",
            "\"",
            "\\",
            ".",
            ",",
            "=",
            "_",
            " ",
            "\n",
            "0",
            "7",
            "-",
            "s",
            "list",
            "obj",
            "dots",
            "truncate",
            "default",
            "map",
            "upper",
            "lower",
            "trim",
            "json",
            "é",
            "🎉",
            "€",
            "\u{0}",
            "Sev0",
            "99999999999999999999999",
            "\\\"",
        ];
        let s = scope();
        let other = json!({"s": 1, "list": {"0": [1]}});
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut compiled = 0;
        for round in 0..20_000 {
            let input = if round % 4 == 0 {
                // Raw bytes, made into text the way a config loader would.
                let len = rng.below(40);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                // Syntax-heavy fragments, often starting a placeholder.
                let mut text = String::from(if round % 2 == 0 { "{{ " } else { "" });
                for _ in 0..rng.below(16) {
                    text.push_str(PIECES[rng.below(PIECES.len())]);
                }
                text
            };
            match Template::compile(&input) {
                Ok(t) => {
                    compiled += 1;
                    assert_eq!(t.source(), input);
                    let a = t.render(&s);
                    let b = t.render(&other);
                    let _ = t.render(&Value::Null);
                    if t.is_constant() {
                        assert_eq!(a, b, "{input:?}");
                    }
                }
                Err(e) => {
                    let chars = input.chars().count();
                    assert!(
                        (1..=chars + 1).contains(&e.position),
                        "{input:?}: position {} out of 1..={}",
                        e.position,
                        chars + 1
                    );
                    assert!(!e.message.is_empty());
                }
            }
        }
        assert!(compiled > 1_000, "only {compiled} inputs compiled");
    }

    #[test]
    fn realistic_alert_scope() {
        let scope = json!({
            "rule": "High CPU on web tier",
            "ruleId": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-monitor/providers/microsoft.insights/metricAlerts/High CPU on web tier",
            "severity": "Sev1",
            "severityNumber": 1,
            "condition": "Fired",
            "signalType": "Metric",
            "monitoringService": "Platform",
            "description": "  CPU above 90% for 5 minutes on a web VM.  ",
            "firedAt": "2024-05-01T12:34:56.789Z",
            "targetResources": [
                "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/vm-web-01"
            ],
            "resource": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/vm-web-01",
            "resourceName": "vm-web-01",
            "resourceGroup": "rg-web",
            "subscription": "11111111-2222-3333-4444-555555555555",
            "resourceType": "microsoft.compute/virtualmachines",
            "configurationItems": ["vm-web-01", "vm-web-02"],
            "configurationItem": "vm-web-01",
            "customProperties": { "assignment.group": "Web Ops", "runbook": "" },
            "context": {
                "properties": null,
                "conditionType": "SingleResourceMultipleMetricCriteria",
                "condition": {
                    "windowSize": "PT5M",
                    "allOf": [{
                        "metricName": "Percentage CPU",
                        "metricNamespace": "Microsoft.Compute/virtualMachines",
                        "operator": "GreaterThan",
                        "threshold": "90",
                        "timeAggregation": "Average",
                        "dimensions": [{ "name": "ResourceId", "value": "vm-web-01" }],
                        "metricValue": 97.25
                    }],
                    "windowStartTime": "2024-05-01T12:29:56.789Z",
                    "windowEndTime": "2024-05-01T12:34:56.789Z"
                }
            },
            "alertId": "/subscriptions/11111111-2222-3333-4444-555555555555/providers/Microsoft.AlertsManagement/alerts/aaaa-bbbb",
            "schema": "azureMonitorCommonAlertSchema"
        });
        let short = Template::compile(
            "[{{ severity }}] {{ rule }} on {{ configurationItem | upper }} ({{ condition | lower }})",
        )
        .unwrap();
        assert_eq!(short.render(&scope), "[Sev1] High CPU on web tier on VM-WEB-01 (fired)");
        let urgency =
            Template::compile("{{ severityNumber | map(0 = \"1\", 1 = \"1\", 2 = \"2\", _ = \"3\") }}").unwrap();
        assert_eq!(urgency.render(&scope), "1");
        let description = Template::compile(
            "{{ description | trim }}\n\
             Metric: {{ context.condition.allOf.0.metricName }} \
             {{ context.condition.allOf.0.operator }} {{ context.condition.allOf.0.threshold }} \
             (value {{ context.condition.allOf[0].metricValue }}, window {{ context.condition.windowSize }})\n\
             Dimensions: {{ context.condition.allOf.0.dimensions | json }}\n\
             Resource: {{ resource }} in {{ resourceGroup }} / {{ subscription }}\n\
             CIs: {{ configurationItems }}\n\
             Group: {{ customProperties[\"assignment.group\"] }}\n\
             Runbook: {{ customProperties.runbook | default(\"none\") }}\n\
             Resolved: {{ resolvedAt | default(\"not yet\") }}\n\
             Signal: {{ signalType }} / {{ monitoringService }} / {{ schema | truncate(12) }}\n\
             Alert: {{ alertId }}",
        )
        .unwrap();
        assert_eq!(
            description.render(&scope),
            "CPU above 90% for 5 minutes on a web VM.\n\
             Metric: Percentage CPU GreaterThan 90 (value 97.25, window PT5M)\n\
             Dimensions: [{\"name\":\"ResourceId\",\"value\":\"vm-web-01\"}]\n\
             Resource: /subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/vm-web-01 in rg-web / 11111111-2222-3333-4444-555555555555\n\
             CIs: vm-web-01, vm-web-02\n\
             Group: Web Ops\n\
             Runbook: none\n\
             Resolved: not yet\n\
             Signal: Metric / Platform / azureMonitor\n\
             Alert: /subscriptions/11111111-2222-3333-4444-555555555555/providers/Microsoft.AlertsManagement/alerts/aaaa-bbbb"
        );
        let ids = Template::compile("{{ targetResources.0 }}|{{ ruleId | truncate(14) }}|{{ firedAt }}|{{ context.properties | default(\"-\") }}").unwrap();
        assert_eq!(
            ids.render(&scope),
            "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/vm-web-01|/subscriptions|2024-05-01T12:34:56.789Z|-"
        );
    }
}
