//! A plugin's config JSON Schema in the form Kong validates filter configs with: JSON Schema
//! draft 4, self-contained (Kong's `<filter>.meta.json` `config_schema`; Kong 3.5+ accepts only
//! draft 4). The source is the schemars draft 2020-12 schema of the same Rust types the plugin
//! parses with, converted:
//!
//! - `$ref` to `$defs`/`definitions` inlined (a recursive type is refused: draft 4 without
//!   definitions cannot express it), the definitions dropped;
//! - `const: v` as `enum: [v]`; numeric `exclusiveMinimum`/`exclusiveMaximum` as draft 4's
//!   `minimum` + boolean; `prefixItems` as the tuple form of `items`; `null` out of `enum`s
//!   (Kong's Lua validator cannot compile it) into a `type: "null"` alternative;
//! - keywords draft 4 lacks (`examples`, `deprecated`, `readOnly`, `$comment`, ...) dropped:
//!   annotations only, or checks the plugin makes itself when it loads the config.

use serde_json::{Map, Value};

/// Draft 4 keywords kept as they are (their subschemas are converted).
const DRAFT4_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "patternProperties",
    "additionalProperties",
    "required",
    "minProperties",
    "maxProperties",
    "dependencies",
    "items",
    "additionalItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "enum",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "title",
    "description",
    "default",
];

/// The draft 4 meta-schema URI.
pub const DRAFT4: &str = "http://json-schema.org/draft-04/schema#";

/// Converts a schemars schema to a self-contained draft 4 schema.
pub fn to_draft4(schema: &Value) -> Result<Value, String> {
    let empty = Map::new();
    let definitions = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut converted = convert(schema, definitions, &mut Vec::new())?;
    if let Value::Object(map) = &mut converted {
        map.insert("$schema".to_owned(), Value::String(DRAFT4.to_owned()));
    }
    Ok(converted)
}

fn convert(
    node: &Value,
    definitions: &Map<String, Value>,
    expanding: &mut Vec<String>,
) -> Result<Value, String> {
    let Value::Object(object) = node else {
        // `true`/`false` schemas are draft 6; as draft 4, `{}` and `{"not": {}}`.
        return Ok(match node {
            Value::Bool(false) => serde_json::json!({ "not": {} }),
            _ => Value::Object(Map::new()),
        });
    };
    let mut out = Map::new();
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"))
            .ok_or_else(|| format!("cannot inline the reference {reference:?}"))?;
        if expanding.iter().any(|seen| seen == name) {
            return Err(format!(
                "{name} is recursive: draft 4 without definitions cannot express it"
            ));
        }
        let target = definitions
            .get(name)
            .ok_or_else(|| format!("the reference {reference:?} names no definition"))?;
        expanding.push(name.to_owned());
        let inlined = convert(target, definitions, expanding);
        expanding.pop();
        if let Value::Object(inlined) = inlined? {
            out = inlined;
        }
    }
    for (key, value) in object {
        let converted = match key.as_str() {
            "properties" | "patternProperties" => {
                Some(map_of_schemas(value, definitions, expanding)?)
            }
            "dependencies" => Some(match value {
                Value::Object(_) => map_of_schemas(value, definitions, expanding)?,
                other => other.clone(),
            }),
            // Draft 4 takes a boolean here too.
            "additionalProperties" | "additionalItems" if value.is_boolean() => Some(value.clone()),
            "additionalProperties" | "additionalItems" | "not" => {
                Some(convert(value, definitions, expanding)?)
            }
            "items" => Some(match value {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|item| convert(item, definitions, expanding))
                        .collect::<Result<_, _>>()?,
                ),
                other => convert(other, definitions, expanding)?,
            }),
            "allOf" | "anyOf" | "oneOf" => Some(Value::Array(
                value
                    .as_array()
                    .map(|schemas| {
                        schemas
                            .iter()
                            .map(|schema| convert(schema, definitions, expanding))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?
                    .unwrap_or_default(),
            )),
            "exclusiveMinimum" | "exclusiveMaximum" if value.is_number() => {
                let bound = if key == "exclusiveMinimum" {
                    "minimum"
                } else {
                    "maximum"
                };
                out.insert(bound.to_owned(), value.clone());
                Some(Value::Bool(true))
            }
            other if DRAFT4_KEYWORDS.contains(&other) => Some(value.clone()),
            "const" => {
                out.insert("enum".to_owned(), Value::Array(vec![value.clone()]));
                None
            }
            "prefixItems" => {
                if let Value::Array(items) = value {
                    let items = items
                        .iter()
                        .map(|item| convert(item, definitions, expanding))
                        .collect::<Result<Vec<_>, _>>()?;
                    // In 2020-12, `items` next to `prefixItems` means what draft 4's
                    // `additionalItems` does.
                    if let Some(rest) = object.get("items") {
                        out.insert(
                            "additionalItems".to_owned(),
                            if rest.is_boolean() {
                                rest.clone()
                            } else {
                                convert(rest, definitions, expanding)?
                            },
                        );
                    }
                    out.insert("items".to_owned(), Value::Array(items));
                }
                None
            }
            _ => None,
        };
        if let Some(converted) = converted {
            if key == "items" && object.contains_key("prefixItems") {
                continue;
            }
            out.insert(key.clone(), converted);
        }
    }
    without_null_in_enum(&mut out);
    Ok(Value::Object(out))
}

/// Kong's validator (lua-resty-ljsonschema) refuses to compile an `enum` holding `null`
/// ("unsupported enum type"), and a schema that does not compile stops Kong: `null` moves to
/// a `type: "null"` alternative.
fn without_null_in_enum(out: &mut Map<String, Value>) {
    let Some(Value::Array(values)) = out.get("enum") else {
        return;
    };
    if !values.iter().any(Value::is_null) {
        return;
    }
    let others: Vec<Value> = values.iter().filter(|v| !v.is_null()).cloned().collect();
    out.remove("enum");
    let alternatives = if others.is_empty() {
        serde_json::json!({ "type": "null" })
    } else {
        serde_json::json!({ "anyOf": [{ "enum": others }, { "type": "null" }] })
    };
    match out.get_mut("allOf") {
        Some(Value::Array(all)) => all.push(alternatives),
        _ => {
            out.insert("allOf".to_owned(), Value::Array(vec![alternatives]));
        }
    }
}

fn map_of_schemas(
    value: &Value,
    definitions: &Map<String, Value>,
    expanding: &mut Vec<String>,
) -> Result<Value, String> {
    let Value::Object(map) = value else {
        return Ok(value.clone());
    };
    let mut out = Map::new();
    for (name, schema) in map {
        out.insert(name.clone(), convert(schema, definitions, expanding)?);
    }
    Ok(Value::Object(out))
}

/// The `<filter>.meta.json` document Kong reads next to `<filter>.wasm`.
pub fn filter_meta(schema: &Value) -> Result<Value, String> {
    Ok(serde_json::json!({ "config_schema": to_draft4(schema)? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inlines_definitions_and_keeps_sibling_keywords() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Config",
            "type": "object",
            "properties": {
                "limit": { "$ref": "#/$defs/Limit", "description": "the limit" },
                "limits": { "type": "array", "items": { "$ref": "#/$defs/Limit" } }
            },
            "additionalProperties": false,
            "$defs": {
                "Limit": {
                    "type": "object",
                    "properties": { "rate": { "type": "integer", "format": "uint32", "minimum": 0 } },
                    "required": ["rate"],
                    "additionalProperties": false
                }
            }
        });
        let limit = json!({
            "type": "object",
            "properties": { "rate": { "type": "integer", "format": "uint32", "minimum": 0 } },
            "required": ["rate"],
            "additionalProperties": false
        });
        let mut described = limit.clone();
        described["description"] = json!("the limit");
        assert_eq!(
            to_draft4(&schema).unwrap(),
            json!({
                "$schema": DRAFT4,
                "title": "Config",
                "type": "object",
                "properties": {
                    "limit": described,
                    "limits": { "type": "array", "items": limit }
                },
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn rewrites_newer_keywords() {
        let schema = json!({
            "oneOf": [
                { "const": "api", "examples": ["api"], "deprecated": true },
                { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1 }
            ],
            "$comment": "x"
        });
        assert_eq!(
            to_draft4(&schema).unwrap(),
            json!({
                "$schema": DRAFT4,
                "oneOf": [
                    { "enum": ["api"] },
                    { "type": "number", "minimum": 0, "exclusiveMinimum": true,
                      "maximum": 1, "exclusiveMaximum": true }
                ]
            })
        );
    }

    #[test]
    fn null_leaves_enums() {
        let schema = json!({ "type": ["string", "null"], "enum": ["api", "strict", null],
                             "properties": { "off": { "const": null } } });
        let converted = to_draft4(&schema).unwrap();
        assert_eq!(
            converted,
            json!({ "$schema": DRAFT4, "type": ["string", "null"],
                    "allOf": [{ "anyOf": [{ "enum": ["api", "strict"] }, { "type": "null" }] }],
                    "properties": { "off": { "allOf": [{ "type": "null" }] } } })
        );
        let validator = jsonschema::draft4::new(&converted).unwrap();
        assert!(validator.is_valid(&json!("api")));
        assert!(validator.is_valid(&json!(null)));
        assert!(!validator.is_valid(&json!("lax")));
    }

    #[test]
    fn tuples_become_draft4_items() {
        let schema = json!({ "type": "array", "prefixItems": [{ "type": "string" }, { "const": 1 }], "items": false });
        assert_eq!(
            to_draft4(&schema).unwrap(),
            json!({ "$schema": DRAFT4, "type": "array",
                    "items": [{ "type": "string" }, { "enum": [1] }],
                    "additionalItems": false })
        );
    }

    #[test]
    fn property_names_are_not_mistaken_for_keywords() {
        let schema = json!({ "type": "object", "properties": { "const": { "type": "string" }, "examples": true } });
        assert_eq!(
            to_draft4(&schema).unwrap()["properties"],
            json!({ "const": { "type": "string" }, "examples": {} })
        );
    }

    #[test]
    fn refuses_recursive_and_dangling_references() {
        let recursive = json!({ "$ref": "#/$defs/Node", "$defs": {
            "Node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Node" } } } } });
        assert_eq!(
            to_draft4(&recursive).unwrap_err(),
            "Node is recursive: draft 4 without definitions cannot express it"
        );
        let dangling = json!({ "$ref": "#/$defs/Gone" });
        assert_eq!(
            to_draft4(&dangling).unwrap_err(),
            "the reference \"#/$defs/Gone\" names no definition"
        );
    }

    #[test]
    fn every_plugin_schema_converts_to_valid_draft4_that_accepts_its_example() {
        for plugin in &crate::plugins::ALL {
            let converted =
                to_draft4(&plugin.schema()).unwrap_or_else(|err| panic!("{}: {err}", plugin.name));
            assert!(
                jsonschema::draft4::meta::is_valid(&converted),
                "{}: not a draft 4 schema",
                plugin.name
            );
            let text = converted.to_string();
            assert!(!text.contains("$ref"), "{}: {text}", plugin.name);
            assert!(!text.contains("$defs"), "{}: {text}", plugin.name);
            let validator = jsonschema::draft4::new(&converted).unwrap();
            let example: Value = serde_json::from_str(plugin.example_config).unwrap();
            assert!(validator.is_valid(&example), "{}", plugin.name);
            // deny_unknown_fields carries over: a misspelt top-level field is refused.
            let mut misspelt = example.clone();
            misspelt["no_such_field"] = json!(1);
            assert!(!validator.is_valid(&misspelt), "{}", plugin.name);
        }
    }
}
