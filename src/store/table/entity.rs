//! How one stored entry becomes one Table Storage entity and back, and the service's limits, checked
//! before anything is sent. The layout itself is described at the top of [`super`].

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::store::{Entry, StoreError};

/// The version of the layout below, stored in every entity so that a later layout can tell old entities
/// apart (and an older itsmc refuses a newer layout rather than misreading it).
pub(super) const LAYOUT_VERSION: i64 = 1;
pub(super) const LAYOUT: &str = "Layout";
pub(super) const PARTS: &str = "Parts";
/// The value's JSON is split over `J0`, `J1`, ... (binary properties).
const PART_PREFIX: &str = "J";
/// Top-level string fields, as `F_<name>` when the name is a plain identifier, else `H_<sha256 of it>`.
const FIELD_PREFIX: &str = "F_";
const HASHED_FIELD_PREFIX: &str = "H_";
/// An indexed string stored as its hash starts with this; no string stored verbatim does.
const HASHED_VALUE_PREFIX: &str = "sha256:";

/// Characters of the key that make the partition key (see the module comment of [`super`]).
const PARTITION_KEY_CHARS: usize = 2;
/// PartitionKey and RowKey hold up to 1 KiB each, counted in UTF-16 (2 bytes a unit).
const KEY_MAX_UTF16: usize = 512;
/// A binary property holds up to 64 KiB.
const PART_MAX_BYTES: usize = 64 * 1024;
/// An entity holds up to 1 MiB, counted as the service documents it (see [`entity_size`]).
const ENTITY_MAX_BYTES: usize = 1024 * 1024;
/// Azurite (and the service's request limit) count the request body itself, base64 and all.
const BODY_MAX_BYTES: usize = 1024 * 1024;
/// 255 properties, of which PartitionKey, RowKey and Timestamp are the service's.
const CUSTOM_PROPERTIES_MAX: usize = 252;
/// Longer indexed strings are stored as their hash, so that a long top-level string (an alert body)
/// costs the entity 71 characters rather than a second copy of itself.
const INDEXED_VERBATIM_MAX_UTF16: usize = 256;
/// Field names up to this length that are identifiers keep their name (readable in Storage Explorer).
const FIELD_NAME_VERBATIM_MAX: usize = 200;

/// Refuses a key the service would reject (or misroute, for `/` and `?` in a URL path), before sending.
pub(super) fn check_key(table: &str, key: &str) -> Result<(), StoreError> {
    let bad = key.chars().find(|&c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control());
    if let Some(c) = bad {
        return Err(StoreError::Refused(format!(
            "{table}/{}: the key holds {}, which Table Storage does not allow in a key \
             (no / \\ # ? or control characters); nothing was sent",
            shown(key),
            c.escape_debug()
        )));
    }
    let units = utf16_len(key);
    if units > KEY_MAX_UTF16 {
        return Err(StoreError::Refused(format!(
            "{table}/{}: the key is {units} UTF-16 units long, over the {KEY_MAX_UTF16} (1 KiB) \
             Table Storage allows; nothing was sent",
            shown(key)
        )));
    }
    Ok(())
}

/// A key as error messages show it: escaped, and cut short when long.
pub(super) fn shown(key: &str) -> String {
    let mut out: String = key.chars().take(80).flat_map(char::escape_debug).collect();
    if key.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

/// The first characters of the key: taking a prefix keeps (PartitionKey, RowKey) order equal to key order.
pub(super) fn partition_key(key: &str) -> &str {
    match key.char_indices().nth(PARTITION_KEY_CHARS) {
        Some((end, _)) => &key[..end],
        None => key,
    }
}

/// The property that holds top-level string field `field`.
pub(super) fn field_property(field: &str) -> String {
    let mut chars = field.chars();
    let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier && field.len() <= FIELD_NAME_VERBATIM_MAX {
        format!("{FIELD_PREFIX}{field}")
    } else {
        format!("{HASHED_FIELD_PREFIX}{}", hex::encode(Sha256::digest(field.as_bytes())))
    }
}

/// What the property of a top-level string holds: the string itself when it is short and plain, else
/// its hash. A filter compares against the same form, so equality stays exact and on the server.
pub(super) fn indexed_value(value: &str) -> Cow<'_, str> {
    let plain = utf16_len(value) <= INDEXED_VERBATIM_MAX_UTF16
        && !value.chars().any(char::is_control)
        && !value.starts_with(HASHED_VALUE_PREFIX);
    if plain {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("{HASHED_VALUE_PREFIX}{}", hex::encode(Sha256::digest(value.as_bytes()))))
    }
}

/// The request body of an insert or replace of `value` under `key`: refused, naming the limit, when the
/// service would refuse it.
pub(super) fn encode(table: &str, key: &str, value: &Value) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(value)
        .map_err(|err| StoreError::Unavailable(format!("{table}/{}: cannot serialize: {err}", shown(key))))?;
    let partition = partition_key(key);
    let mut entity = Map::new();
    // The service's size formula: 4 bytes, the keys in UTF-16, then per property 8 bytes, its name in
    // UTF-16 and its value (4 bytes for an Int32, length + 4 for binary, UTF-16 + 4 for a string).
    let mut size = 4 + 2 * (utf16_len(partition) + utf16_len(key));
    let mut add = |entity: &mut Map<String, Value>, name: String, value: Value, value_size: usize| {
        size += 8 + 2 * name.len() + value_size;
        entity.insert(name, value);
    };
    entity.insert("PartitionKey".into(), partition.into());
    entity.insert("RowKey".into(), key.into());
    add(&mut entity, LAYOUT.into(), LAYOUT_VERSION.into(), 4);
    let parts: Vec<&[u8]> = if json.is_empty() { vec![&[]] } else { json.chunks(PART_MAX_BYTES).collect() };
    add(&mut entity, PARTS.into(), parts.len().into(), 4);
    for (i, part) in parts.iter().enumerate() {
        let name = format!("{PART_PREFIX}{i}");
        entity.insert(format!("{name}@odata.type"), "Edm.Binary".into());
        add(&mut entity, name, BASE64.encode(part).into(), part.len() + 4);
    }
    let mut fields = 0;
    if let Value::Object(object) = value {
        for (field, value) in object {
            if let Value::String(text) = value {
                let indexed = indexed_value(text);
                let value_size = 2 * utf16_len(&indexed) + 4;
                add(&mut entity, field_property(field), indexed.into_owned().into(), value_size);
                fields += 1;
            }
        }
    }
    let properties = 2 + parts.len() + fields;
    if properties > CUSTOM_PROPERTIES_MAX {
        return Err(StoreError::Refused(format!(
            "{table}/{}: the value has {fields} top-level string fields; with its {} JSON parts that makes \
             {properties} properties, over the {CUSTOM_PROPERTIES_MAX} a Table Storage entity holds; nothing was sent",
            shown(key),
            parts.len()
        )));
    }
    let body = serde_json::to_vec(&entity)
        .map_err(|err| StoreError::Unavailable(format!("{table}/{}: cannot serialize: {err}", shown(key))))?;
    if size > ENTITY_MAX_BYTES || body.len() > BODY_MAX_BYTES {
        return Err(StoreError::Refused(format!(
            "{table}/{}: the value is too large for Table Storage: {} bytes of JSON make an entity of {size} \
             bytes and a request of {} bytes, and the service takes at most 1 MiB of each; nothing was sent",
            shown(key),
            json.len(),
            body.len()
        )));
    }
    Ok(body)
}

/// The entry an entity holds. `etag` is the response's ETag header, when the entity came alone.
pub(super) fn decode(table: &str, mut entity: Map<String, Value>, etag: Option<&str>) -> Result<Entry, StoreError> {
    let Some(Value::String(key)) = entity.remove("RowKey") else {
        return Err(StoreError::Corrupt(format!("{table}: the service returned an entity without a RowKey")));
    };
    let corrupt = |what: String| StoreError::Corrupt(format!("{table}/{}: {what}", shown(&key)));
    let etag = match (etag, entity.get("odata.etag")) {
        (Some(etag), _) => etag.to_owned(),
        (None, Some(Value::String(etag))) => etag.clone(),
        _ => return Err(corrupt("the service returned the entity without an ETag".into())),
    };
    match entity.get(LAYOUT).and_then(Value::as_i64) {
        Some(LAYOUT_VERSION) => {}
        Some(other) => {
            return Err(corrupt(format!(
                "the entity has layout {other}, which this itsmc cannot read (written by a newer version?)"
            )));
        }
        None => return Err(corrupt(format!("the entity has no {LAYOUT} property: it was not written by itsmc"))),
    }
    let parts = entity
        .get(PARTS)
        .and_then(Value::as_u64)
        .filter(|&n| (1..=CUSTOM_PROPERTIES_MAX as u64).contains(&n))
        .ok_or_else(|| corrupt(format!("the entity's {PARTS} property is missing or out of range")))?;
    let mut json = Vec::new();
    for i in 0..parts {
        let name = format!("{PART_PREFIX}{i}");
        let Some(Value::String(encoded)) = entity.get(&name) else {
            return Err(corrupt(format!("the entity lacks {name}, part {} of {parts} of its value", i + 1)));
        };
        BASE64.decode_vec(encoded, &mut json).map_err(|err| corrupt(format!("{name} is not base64: {err}")))?;
    }
    let value = serde_json::from_slice(&json).map_err(|err| corrupt(format!("the stored value is not JSON: {err}")))?;
    Ok(Entry { key, etag, value })
}

/// Whether `etag` has the shape of the etags the Table service issues (`W/"datetime'…'"`). Anything else
/// cannot match a stored entity, so it is never sent: `*` would make the write unconditional, and a
/// malformed value would make the service answer 400 instead of 412.
pub(super) fn is_service_etag(etag: &str) -> bool {
    etag.strip_prefix("W/\"datetime'").and_then(|rest| rest.strip_suffix("'\"")).is_some_and(|inner| {
        !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\'')
    })
}

fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_with_forbidden_characters_are_refused() {
        for key in ["a/b", "a\\b", "a#b", "a?b", "a\u{0}b", "tab\there", "a\u{7f}", "a\u{85}b"] {
            let err = check_key("links", key).unwrap_err().to_string();
            assert!(err.contains("does not allow") && err.contains("nothing was sent"), "{key:?}: {err}");
        }
        for key in ["", "a", "it's", "a,b=(c)", "100%", "ünï 東京", "+&;:@$!*"] {
            check_key("links", key).unwrap();
        }
        check_key("links", &"x".repeat(512)).unwrap();
        assert!(check_key("links", &"x".repeat(513)).unwrap_err().to_string().contains("513 UTF-16"));
        // Astral characters count twice, as the service counts them.
        assert!(check_key("links", &"🔥".repeat(257)).is_err());
    }

    #[test]
    fn the_partition_key_is_a_prefix_in_key_order() {
        assert_eq!(partition_key("4cd95b93"), "4c");
        assert_eq!(partition_key("a"), "a");
        assert_eq!(partition_key(""), "");
        assert_eq!(partition_key("東京リ"), "東京");
        let mut keys = vec!["b", "a", "ab", "a0", "aa0", "", "zz", "z", "0", "a\u{e9}", "ab\u{1f525}", "aa"];
        keys.sort();
        let mut by_entity = keys.clone();
        by_entity.sort_by_key(|k| (partition_key(k), *k));
        assert_eq!(by_entity, keys);
    }

    #[test]
    fn field_properties_are_identifiers() {
        assert_eq!(field_property("state"), "F_state");
        assert_eq!(field_property("_x1"), "F__x1");
        for field in ["a-b", "é", "1st", "", "with space", &"x".repeat(201)] {
            let name = field_property(field);
            assert!(name.starts_with("H_") && name.len() == 66, "{field}: {name}");
        }
        assert_ne!(field_property("a-b"), field_property("a_b"));
    }

    #[test]
    fn indexed_values_are_exact_and_bounded() {
        assert_eq!(indexed_value("pending"), "pending");
        assert_eq!(indexed_value("it's"), "it's");
        for long in ["x".repeat(257), "a\nb".into(), "sha256:abc".into()] {
            let indexed = indexed_value(&long);
            assert!(indexed.starts_with("sha256:") && indexed.len() == 71, "{long:?}");
        }
        assert_ne!(indexed_value("sha256:abc"), indexed_value("sha256:abd"));
    }

    #[test]
    fn values_round_trip_through_the_layout() {
        let value = json!({"state": "pending", "n": 1, "nested": {"state": "x"}, "body": "y".repeat(200_000)});
        let body = encode("links", "k'1", &value).unwrap();
        let mut entity: Map<String, Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(entity["PartitionKey"], "k'");
        assert_eq!(entity["Parts"], 4);
        assert_eq!(entity["F_state"], "pending");
        assert!(entity["F_body"].as_str().unwrap().starts_with("sha256:"));
        assert!(!entity.contains_key("F_n") && !entity.contains_key("F_nested"));
        entity.insert("odata.etag".into(), "W/\"datetime'x'\"".into());
        let entry = decode("links", entity, None).unwrap();
        assert_eq!((entry.key.as_str(), entry.etag.as_str(), entry.value), ("k'1", "W/\"datetime'x'\"", value));
    }

    #[test]
    fn values_over_the_limits_are_refused() {
        let err = encode("links", "big", &json!({"x": "y".repeat(800_000)})).unwrap_err().to_string();
        assert!(err.contains("too large") && err.contains("1 MiB") && err.contains("nothing was sent"), "{err}");
        let many: Map<String, Value> = (0..251).map(|i| (format!("f{i}"), json!("v"))).collect();
        let err = encode("links", "many", &Value::Object(many)).unwrap_err().to_string();
        assert!(err.contains("251 top-level string fields"), "{err}");
        // Just under the limits still fits.
        encode("links", "ok", &json!({"x": "y".repeat(700_000)})).unwrap();
    }

    #[test]
    fn unreadable_entities_are_corrupt() {
        let good: Map<String, Value> = serde_json::from_slice(&encode("t", "k", &json!({"a": 1})).unwrap()).unwrap();
        // Each case sets (or, with null, removes) one property.
        let cases = [
            ("no layout", LAYOUT, Value::Null),
            ("newer layout", LAYOUT, json!(2)),
            ("missing part", PARTS, json!(2)),
            ("not base64", "J0", json!("***")),
            ("not JSON", "J0", json!(BASE64.encode("{\"a\":"))),
            ("no row key", "RowKey", Value::Null),
        ];
        for (what, property, value) in cases {
            let mut entity = good.clone();
            match value {
                Value::Null => entity.remove(property),
                value => entity.insert(property.into(), value),
            };
            assert!(matches!(decode("t", entity, Some("W/\"e\"")), Err(StoreError::Corrupt(_))), "{what}");
        }
    }

    #[test]
    fn only_service_shaped_etags_are_sent() {
        assert!(is_service_etag("W/\"datetime'2020-08-17T22%3A44%3A35.4183385Z'\""));
        for etag in ["*", "", "nonsense", "W/\"bogus\"", "W/\"datetime''\"", "W/\"datetime'a\"b'\"", "0000000000000001"]
        {
            assert!(!is_service_etag(etag), "{etag}");
        }
    }
}
