//! The alert context, read cheaply. A common schema `alertContext` is read in the same pass as the rest of
//! the payload, but its search results (`SearchResults`, most of a 10 KB log alert) are only counted, not
//! built: the alert path needs their row count for the summary, not the rows. The whole context is built
//! from the body the first time something asks for it (a template naming `context.*`, per-row grouping).

use std::fmt;
use std::sync::OnceLock;

use serde::de::value::SeqAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// An alert's context, built into a JSON value on first read.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The body it came in, when the value is not built yet; `data.alertContext` in it is the context.
    body: Option<Box<str>>,
    value: OnceLock<Value>,
}

impl Context {
    /// The `data.alertContext` of a common schema `body`, built when first read.
    pub(super) fn in_body(body: &str) -> Context {
        Context { body: Some(body.into()), value: OnceLock::new() }
    }

    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Envelope {
                data: Data,
            }
            #[derive(serde::Deserialize)]
            struct Data {
                #[serde(rename = "alertContext", default)]
                alert_context: Value,
            }
            // The parser read this body already; what it accepted but cannot build (nesting past serde_json's
            // recursion limit inside search results it only counted) reads as null.
            let body = self.body.as_deref().unwrap_or_default();
            serde_json::from_str::<Envelope>(body).map(|e| e.data.alert_context).unwrap_or(Value::Null)
        })
    }
}

impl From<Value> for Context {
    fn from(value: Value) -> Context {
        Context { body: None, value: OnceLock::from(value) }
    }
}

impl Serialize for Context {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

/// What the parser keeps of an `alertContext`.
#[derive(Debug, Default)]
pub(super) struct Readable {
    /// The context, less the search results that were counted instead.
    pub value: Value,
    /// The rows of the search results `summary` reads (`SearchResults`, else `SearchResult`), when they
    /// were counted rather than kept in `value`.
    pub result_rows: Option<usize>,
    /// Whether anything was left out of `value`.
    pub partial: bool,
}

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

/// Visitor methods for JSON scalars and null: each answers `$answer`, in which `$value()` builds the scalar
/// as a `Value` (visitors that only count never call it, so skipping a string allocates nothing).
macro_rules! scalar_kinds {
    ($value:ident => $answer:expr) => {
        #[allow(unused_variables)]
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            let $value = || Value::from(v);
            Ok($answer)
        }
        #[allow(unused_variables)]
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            let $value = || Value::from(v);
            Ok($answer)
        }
        #[allow(unused_variables)]
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            let $value = || Value::from(v);
            Ok($answer)
        }
        #[allow(unused_variables)]
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            let $value = || Value::from(v);
            Ok($answer)
        }
        #[allow(unused_variables)]
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            let $value = || Value::from(v);
            Ok($answer)
        }
        #[allow(unused_variables)]
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            let $value = || Value::Null;
            Ok($answer)
        }
    };
}

/// Builds a `Value` for anything but an object, which it reads member by member.
struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        let mut value = Map::new();
        // Per spelling: the counted rows, `None` when the member is absent or kept in `value`.
        let mut counted: [Option<usize>; 2] = [None, None];
        while let Some(key) = map.next_key::<String>()? {
            let spelling = RESULTS.iter().position(|s| *s == key);
            let Some(i) = spelling else {
                value.insert(key, map.next_value()?);
                continue;
            };
            // A later duplicate replaces an earlier one, as when building a value.
            match map.next_value::<Results>()? {
                Results::Counted(rows) => {
                    counted[i] = Some(rows);
                    value.remove(&key);
                }
                Results::Kept(kept) => {
                    counted[i] = None;
                    value.insert(key, kept);
                }
            }
        }
        // `summary` reads `SearchResults` unless it is absent or null, then `SearchResult`.
        let first_present = value.get(RESULTS[0]).is_some_and(|v| !v.is_null());
        let result_rows = if first_present { None } else { counted[0].or(counted[1]) };
        let partial = counted.iter().any(Option::is_some);
        Ok(Readable { value: Value::Object(value), result_rows, partial })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Readable, A::Error> {
        let value = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Readable { value, ..Readable::default() })
    }

    scalar_kinds!(value => Readable { value: value(), ..Readable::default() });
}

/// The spellings of a log search V1 context's results, in the order `summary` prefers them.
const RESULTS: [&str; 2] = ["SearchResults", "SearchResult"];

/// Search results: an object is counted as `summary` would count it (`tables[0].rows`, else the objects in
/// `value`); anything else (null, or results embedded in a string) is kept for `summary` to read.
enum Results {
    Counted(usize),
    Kept(Value),
}

impl<'de> Deserialize<'de> for Results {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Results;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("search results")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Results, A::Error> {
                let (mut tables, mut objects) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "tables" => tables = map.next_value::<FirstTableRows>()?.0,
                        "value" => objects = map.next_value::<ObjectCount>()?.0,
                        _ => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Results::Counted(tables.or(objects).unwrap_or(0)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Results, A::Error> {
                Ok(Results::Kept(Value::deserialize(SeqAccessDeserializer::new(seq))?))
            }
            scalar_kinds!(value => Results::Kept(value()));
        }
        deserializer.deserialize_any(V)
    }
}

/// `tables`: `Some` (the rows of its first table, 0 if that has none) when it is an array.
struct FirstTableRows(Option<usize>);

impl<'de> Deserialize<'de> for FirstTableRows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstTableRows;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tables")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstTableRows, A::Error> {
                let rows = seq.next_element::<TableRows>()?.map_or(0, |t| t.0);
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(FirstTableRows(Some(rows)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FirstTableRows, A::Error> {
                SkipVisitor.visit_map(map)?;
                Ok(FirstTableRows(None))
            }
            scalar_kinds!(_value => FirstTableRows(None));
        }
        deserializer.deserialize_any(V)
    }
}

/// A table: how many `rows` it has (0 when it is not an object or its rows are not an array).
struct TableRows(usize);

impl<'de> Deserialize<'de> for TableRows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TableRows;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TableRows, A::Error> {
                let mut rows = 0;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "rows" {
                        rows = map.next_value::<ObjectCount>()?.1.unwrap_or(0);
                    } else {
                        map.next_value::<Skip>()?;
                    }
                }
                Ok(TableRows(rows))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TableRows, A::Error> {
                SkipVisitor.visit_seq(seq)?;
                Ok(TableRows(0))
            }
            scalar_kinds!(_value => TableRows(0));
        }
        deserializer.deserialize_any(V)
    }
}

/// An array: `(objects in it, elements in it)`; both `None` when it is not an array.
struct ObjectCount(Option<usize>, Option<usize>);

impl<'de> Deserialize<'de> for ObjectCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ObjectCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ObjectCount, A::Error> {
                let (mut objects, mut elements) = (0, 0);
                while let Some(IsObject(object)) = seq.next_element()? {
                    elements += 1;
                    objects += usize::from(object);
                }
                Ok(ObjectCount(Some(objects), Some(elements)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectCount, A::Error> {
                SkipVisitor.visit_map(map)?;
                Ok(ObjectCount(None, None))
            }
            scalar_kinds!(_value => ObjectCount(None, None));
        }
        deserializer.deserialize_any(V)
    }
}

/// Any JSON value, skipped: whether it was an object.
struct IsObject(bool);

impl<'de> Deserialize<'de> for IsObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IsObject, A::Error> {
                SkipVisitor.visit_map(map)?;
                Ok(IsObject(true))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<IsObject, A::Error> {
                SkipVisitor.visit_seq(seq)?;
                Ok(IsObject(false))
            }
            scalar_kinds!(_value => IsObject(false));
        }
        deserializer.deserialize_any(V)
    }
}

/// Any JSON value, skipped. Unlike serde's `IgnoredAny`, which serde_json skips without looking at its
/// depth, this goes through `deserialize_any` at every level, so nesting past the recursion limit is
/// refused here as it is when the value is built.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    scalar_kinds!(_value => Skip);
}
