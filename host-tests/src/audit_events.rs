//! palisade-audit's events as they leave the proxy, checked against their Avro schemas in
//! `manifests/events/` with `apache-avro`, strictly: every schema field present (nulls written
//! out), no field the schema lacks, every value of the schema's type.

use std::path::PathBuf;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::Value as Json;

use crate::wasm_host::workspace_root;

/// The event types, as `event_type` names them and their schema files are named.
pub const EVENT_TYPES: [&str; 5] = [
    "api_call",
    "user_action",
    "data_access",
    "admin_operation",
    "security",
];

fn schema_path(event_type: &str) -> PathBuf {
    workspace_root().join(format!("manifests/events/{event_type}.avsc"))
}

/// The parsed schema of one event type.
pub fn schema(event_type: &str) -> Result<Schema, String> {
    let path = schema_path(event_type);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Schema::parse_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Field names of a record schema.
fn field_names(schema: &Schema) -> Option<Vec<String>> {
    match schema {
        Schema::Record(record) => Some(record.fields.iter().map(|f| f.name.clone()).collect()),
        _ => None,
    }
}

/// The record inside `["null", record]`, if the field is one.
fn record_of(schema: &Schema) -> Option<&Schema> {
    match schema {
        Schema::Record(_) => Some(schema),
        Schema::Union(union) => union.variants().iter().find_map(record_of),
        _ => None,
    }
}

/// Every key of `object` is a field of `schema` and every field is a key (recursively).
fn same_fields(object: &Json, schema: &Schema, at: &str) -> Result<(), String> {
    let (Some(object), Some(mut expected)) = (object.as_object(), field_names(schema)) else {
        return Ok(());
    };
    let mut keys: Vec<String> = object.keys().cloned().collect();
    keys.sort();
    expected.sort();
    if keys != expected {
        return Err(format!(
            "{at}: fields {keys:?}, the schema has {expected:?}"
        ));
    }
    if let Schema::Record(record) = schema {
        for field in &record.fields {
            if let (Some(value), Some(inner)) = (object.get(&field.name), record_of(&field.schema))
            {
                if !value.is_null() {
                    same_fields(value, inner, &format!("{at}.{}", field.name))?;
                }
            }
        }
    }
    Ok(())
}

/// Checks one event (as JSON) against the schema its `event_type` names; returns the type.
pub fn validate(event: &Json) -> Result<String, String> {
    let event_type = event
        .get("event_type")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("no event_type in {event}"))?
        .to_owned();
    if !EVENT_TYPES.contains(&event_type.as_str()) {
        return Err(format!("unknown event_type {event_type:?}"));
    }
    let schema = schema(&event_type)?;
    same_fields(event, &schema, "event")?;
    let value = Avro::from(event.clone()).resolve(&schema).map_err(|e| {
        format!("{event_type} event does not resolve against its schema: {e}: {event}")
    })?;
    apache_avro::to_avro_datum(&schema, value)
        .map_err(|e| format!("{event_type} event cannot be written as Avro: {e}"))?;
    Ok(event_type)
}
