//! The field table of `--json`'s document, for docs/report.md, made from
//! its JSON Schema (the doc comments of [`super::model`]): one row per
//! field, nested objects and arrays of objects flattened to dotted paths.
//! `cargo xtask docs` writes it (`oomtrace report --json-schema-markdown`);
//! a test fails when docs/report.md is not current.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Where the table sits in docs/report.md.
#[cfg(test)]
pub const OPEN: &str = "<!-- report-fields -->";
#[cfg(test)]
pub const CLOSE: &str = "<!-- /report-fields -->";

/// The table, from the document's schema.
pub fn table(schema: &Value) -> String {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut rows = String::from("| field | type | meaning |\n|---|---|---|\n");
    walk(schema, &defs, "", &mut rows);
    rows
}

/// `doc` with its table replaced by `table`.
#[cfg(test)]
pub fn fill(doc: &str, table: &str) -> Result<String, String> {
    let start = doc.find(OPEN).ok_or_else(|| format!("no {OPEN} marker"))?;
    let end = doc[start..]
        .find(CLOSE)
        .map(|e| start + e)
        .ok_or_else(|| format!("no {CLOSE} after {OPEN}"))?;
    Ok(format!("{}{OPEN}\n{table}{}", &doc[..start], &doc[end..]))
}

/// The schema a `$ref` points to (else the schema itself), with the
/// referring schema's description kept.
fn resolve(schema: &Value, defs: &Map<String, Value>) -> Value {
    let target = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get(name));
    match target {
        Some(target) => {
            let mut merged = target.clone();
            if let (Some(into), Some(d)) = (merged.as_object_mut(), schema.get("description")) {
                into.insert("description".into(), d.clone());
            }
            merged
        }
        None => schema.clone(),
    }
}

fn walk(object: &Value, defs: &Map<String, Value>, prefix: &str, rows: &mut String) {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        let path = format!("{prefix}{name}");
        let resolved = resolve(property, defs);
        let description = resolved
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        let _ = writeln!(
            rows,
            "| `{path}` | {} | {description} |",
            type_name(&resolved, defs)
        );
        // An optional object is `anyOf` its schema and null.
        let inner = resolved
            .get("anyOf")
            .and_then(Value::as_array)
            .and_then(|any| any.iter().find(|s| s.get("type") != Some(&"null".into())))
            .map_or_else(|| resolved.clone(), |s| resolve(s, defs));
        if inner.get("properties").is_some() {
            walk(&inner, defs, &format!("{path}."), rows);
        } else if let Some(items) = resolved.get("items") {
            walk(&resolve(items, defs), defs, &format!("{path}[]."), rows);
        }
    }
}

/// `integer`, `string or null`, `"a" \| "b"`, `array of object`, `map of
/// integer`.
fn type_name(schema: &Value, defs: &Map<String, Value>) -> String {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let values: Vec<String> = variants
            .iter()
            .filter_map(|v| v.get("const").map(Value::to_string))
            .collect();
        if values.len() == variants.len() {
            return values.join(" \\| ");
        }
    }
    let base = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => match schema.get("anyOf").and_then(Value::as_array) {
            // An optional object: its `$ref` or null.
            Some(any) => any
                .iter()
                .map(|s| type_name(&resolve(s, defs), defs))
                .collect::<Vec<_>>()
                .join(" or "),
            None => "any".into(),
        },
    };
    if base.starts_with("array")
        && let Some(items) = schema.get("items")
    {
        return base.replacen(
            "array",
            &format!("array of {}", type_name(&resolve(items, defs), defs)),
            1,
        );
    }
    if base.starts_with("object")
        && let Some(values) = schema.get("additionalProperties")
        && values.is_object()
    {
        return base.replacen(
            "object",
            &format!("map of {}", type_name(&resolve(values, defs), defs)),
            1,
        );
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<String> {
        table(&super::super::json_schema())
            .lines()
            .skip(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_field_of_the_document_is_described() {
        let rows = rows();
        assert!(
            rows.iter()
                .any(|r| r.starts_with("| `subjects[].advice.action` |"))
        );
        let bare: Vec<&String> = rows.iter().filter(|r| r.ends_with("|  |")).collect();
        assert!(
            bare.is_empty(),
            "fields without a doc comment in model.rs: {bare:#?}"
        );
    }

    /// docs/report.md as committed holds today's table.
    #[test]
    fn docs_report_md_is_current() {
        let doc = include_str!("../../../docs/report.md");
        let filled = fill(doc, &table(&super::super::json_schema())).expect("markers");
        assert!(
            filled == doc,
            "docs/report.md's field table differs from the document's schema: run `cargo xtask docs`"
        );
    }
}
