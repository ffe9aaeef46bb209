//! The JSON Schema of the records, and the field tables of docs/schema.md,
//! both generated from the types in this crate.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::Record;

/// The JSON Schema (draft 2020-12) of one output line, as `oomtrace schema`
/// prints it.
///
/// A field is required unless it was added after its record type first
/// shipped: those carry `#[serde(default)]` (schemars gives them a
/// `default`), because records written before them lack them. Fields that
/// shipped with their record are always written, `null` when unknown, so
/// they stay required even when nullable.
pub fn json_schema() -> Value {
    use schemars::{Schema, generate::SchemaSettings, transform::RecursiveTransform};
    let mut settings = SchemaSettings::draft2020_12();
    settings
        .transforms
        .push(Box::new(RecursiveTransform(|schema: &mut Schema| {
            let required: Option<Vec<Value>> = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .filter(|(_, property)| property.get("default").is_none())
                        .map(|(name, _)| Value::from(name.as_str()))
                        .collect()
                });
            if let Some(required) = required {
                schema.insert("required".into(), required.into());
            }
        })));
    let schema = settings.into_generator().into_root_schema_for::<Record>();
    schema.to_value()
}

/// One Markdown table per record type: every field as a dotted path (`[]`
/// for array elements), its JSON type, whether it is always present, and its
/// meaning (the doc comment of the Rust field). docs/schema.md embeds them
/// between `<!-- fields:TYPE -->` and `<!-- /fields -->`.
pub fn field_tables() -> Vec<(String, String)> {
    field_tables_of(&json_schema())
}

/// [`field_tables`] of any version of the schema (a committed copy).
fn field_tables_of(schema: &Value) -> Vec<(String, String)> {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let variants = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut tables = Vec::new();
    for variant in &variants {
        let Some(name) = variant
            .pointer("/properties/type/const")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let mut rows =
            String::from("| field | type | always present | meaning |\n|---|---|---|---|\n");
        // The variant is `{$ref: the record's struct, properties: {type}}`.
        let body = resolve(&serde_json::json!({ "$ref": variant["$ref"] }), &defs);
        walk(&body, &defs, "", &mut rows, 0);
        tables.push((name.to_string(), rows));
    }
    tables
}

/// Where the schema of each version is committed, relative to the
/// workspace: `cargo xtask docs` keeps it equal to [`json_schema`] as long
/// as fields are only added, and a test compares the two.
pub fn committed_schema_path(version: u32) -> String {
    format!("oomtrace/record/schema/v{version}.json")
}

/// What a schema change breaks for readers of records of the same version:
/// every field of `committed` that `current` lacks (removed or renamed),
/// and every field whose type changed other than by new enum values, as
/// `TYPE.path: why`. Empty when the change only adds.
pub fn breaking_changes(committed: &Value, current: &Value) -> Vec<String> {
    let fields = |schema: &Value| -> std::collections::BTreeMap<String, String> {
        field_tables_of(schema)
            .into_iter()
            .flat_map(|(record, rows)| {
                rows.lines()
                    .skip(2)
                    .filter_map(|row| {
                        let mut cells = row.split(" | ");
                        let path = cells
                            .next()?
                            .trim_start_matches("| `")
                            .trim_end_matches('`');
                        let kind = cells.next()?.to_string();
                        Some((format!("{record}.{path}"), kind))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (before, now) = (fields(committed), fields(current));
    let mut broken = Vec::new();
    for (path, kind) in &before {
        match now.get(path) {
            None => broken.push(format!("{path}: removed or renamed")),
            Some(new) if new != kind && !only_values_added(kind, new) => {
                broken.push(format!("{path}: {kind} became {new}"))
            }
            Some(_) => {}
        }
    }
    broken
}

/// Whether type `new` is `old` with enum values added (`"a" \| "b"` to
/// `"a" \| "b" \| "c"`, nullability unchanged).
fn only_values_added(old: &str, new: &str) -> bool {
    let split = |t: &str| {
        let (values, null) = match t.strip_suffix(" or null") {
            Some(values) => (values, true),
            None => (t, false),
        };
        let values: Vec<String> = values.split(" \\| ").map(str::to_string).collect();
        (values, null)
    };
    let ((old, old_null), (new, new_null)) = (split(old), split(new));
    old_null == new_null
        && old.iter().all(|v| v.starts_with('"'))
        && old.iter().all(|v| new.contains(v))
}

/// `doc` with every `<!-- fields:TYPE -->` … `<!-- /fields -->` region
/// replaced by the current table of record type TYPE: how docs/schema.md is
/// kept equal to the types (`cargo xtask docs` writes it, a test checks it).
pub fn fill_field_tables(doc: &str) -> Result<String, String> {
    const OPEN: &str = "<!-- fields:";
    const CLOSE: &str = "<!-- /fields -->";
    let tables = field_tables();
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let name_end = after_open
            .find(" -->")
            .ok_or("an unterminated `<!-- fields:` marker")?;
        let name = &after_open[..name_end];
        let body = &after_open[name_end + " -->".len()..];
        let end = body
            .find(CLOSE)
            .ok_or_else(|| format!("no {CLOSE} after the fields:{name} marker"))?;
        let table = tables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("no record type {name:?}"))?;
        out.push_str(&rest[..start]);
        let _ = write!(out, "{OPEN}{name} -->\n{table}{CLOSE}");
        rest = &body[end + CLOSE.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The object a schema stands for, with `$ref` followed.
fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> Value {
    let mut merged = schema.clone();
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get(name))
        && let (Some(into), Some(from)) = (merged.as_object_mut(), target.as_object())
    {
        for (key, value) in from {
            into.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    merged
}

/// The non-null alternative of an `Option<T>` (`anyOf: [T, null]`), if that
/// is what `schema` is.
fn non_null(schema: &Value) -> Option<&Value> {
    let options = schema.get("anyOf")?.as_array()?;
    let mut rest = options
        .iter()
        .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"));
    let only = rest.next()?;
    rest.next().is_none().then_some(only)
}

fn walk(object: &Value, defs: &Map<String, Value>, prefix: &str, rows: &mut String, depth: usize) {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, property) in properties {
        if depth == 0 && name == "type" {
            continue;
        }
        let path = format!("{prefix}{name}");
        let (inner, nullable) = match non_null(property) {
            Some(inner) => (inner.clone(), true),
            None => (property.clone(), false),
        };
        let resolved = resolve(&inner, defs);
        let description = property
            .get("description")
            .or_else(|| inner.get("description"))
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let present = if required.contains(&name.as_str()) {
            "yes"
        } else {
            "no (added later)"
        };
        let _ = writeln!(
            rows,
            "| `{path}` | {} | {present} | {} |",
            type_name(&resolved, nullable, defs),
            cell(description),
        );
        if resolved.get("properties").is_some() {
            walk(&resolved, defs, &format!("{path}."), rows, depth + 1);
        } else if let Some(items) = resolved.get("items") {
            let items = resolve(items, defs);
            walk(&items, defs, &format!("{path}[]."), rows, depth + 1);
        }
    }
}

/// `integer`, `string or null`, `"a" \| "b"`, `object`, `array of object`.
fn type_name(schema: &Value, nullable: bool, defs: &Map<String, Value>) -> String {
    let mut name = if let Some(values) = enum_values(schema) {
        values.join(" \\| ")
    } else {
        match schema.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect::<Vec<_>>()
                .join(" or "),
            _ => "any".into(),
        }
    };
    if name == "array"
        && let Some(items) = schema.get("items")
    {
        name = format!("array of {}", type_name(&resolve(items, defs), false, defs));
    }
    let schema_nullable =
        matches!(schema.get("type"), Some(Value::Array(t)) if t.iter().any(|t| t == "null"));
    if nullable || schema_nullable {
        name.push_str(" or null");
    }
    name
}

/// The values of a string enum, quoted, whether schemars wrote it as `enum`
/// or as `oneOf` of documented `const`s.
fn enum_values(schema: &Value) -> Option<Vec<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(|v| format!("`{v}`")).collect());
    }
    let variants = schema.get("oneOf")?.as_array()?;
    let mut out = Vec::new();
    for variant in variants {
        if let Some(value) = variant.get("const") {
            out.push(format!("`{value}`"));
        } else if let Some(values) = variant.get("enum").and_then(Value::as_array) {
            out.extend(values.iter().map(|v| format!("`{v}`")));
        } else {
            return None;
        }
    }
    Some(out)
}

/// A description as one table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def<'a>(schema: &'a Value, name: &str) -> &'a Value {
        &schema["$defs"][name]
    }

    fn required(schema: &Value, name: &str) -> Vec<String> {
        def(schema, name)["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no required list"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn every_record_type_is_in_the_schema() {
        let mut schema = json_schema();
        // `memory.growth.kind` writes `unknown` (a shape none of the kinds
        // fits); every other `Unknown` is read-only and left out.
        let growth = schema["$defs"]
            .as_object_mut()
            .and_then(|defs| defs.remove("GrowthKind"))
            .expect("GrowthKind");
        assert!(growth.to_string().contains("\"unknown\""), "{growth}");
        let text = schema.to_string();
        for t in [
            "start",
            "oom_kill",
            "late_exit",
            "signal_kill",
            "container_exit",
            "lost",
            "heartbeat",
            "stop",
        ] {
            assert!(text.contains(&format!("\"{t}\"")), "{t} missing");
        }
        assert!(!text.contains("\"Unknown\"") && !text.contains("\"unknown\""));
    }

    #[test]
    fn fields_that_shipped_first_are_required_added_ones_are_not() {
        let schema = json_schema();
        let victim = required(&schema, "Victim");
        for field in ["pid", "comm_hex", "container_init", "rss", "cgroup"] {
            assert!(victim.iter().any(|f| f == field), "{field}: {victim:?}");
        }
        let kill = required(&schema, "OomKill");
        assert!(kill.iter().any(|f| f == "seq"));
        for added in ["hostname", "boot_id", "run_id"] {
            assert!(!kill.iter().any(|f| f == added), "{added}: {kill:?}");
        }
        let counters = required(&schema, "Counters");
        assert!(counters.iter().any(|f| f == "untracked_victims"));
        assert!(!counters.iter().any(|f| f == "late_exits"));
        let oom = required(&schema, "Oom");
        assert!(oom.iter().any(|f| f == "limit_scope"));
        for added in ["killed", "signal_kill_seq", "group_kill"] {
            assert!(!oom.iter().any(|f| f == added), "{added}: {oom:?}");
        }
        // The new record types shipped with every field they have.
        let signal = required(&schema, "SignalKill");
        for field in [
            "seq",
            "source",
            "target",
            "sender",
            "after_sigterm",
            "part_of_oom_kill",
            "memcg",
            "exit",
            "container_survives",
        ] {
            assert!(signal.iter().any(|f| f == field), "{field}: {signal:?}");
        }
        let sender = required(&schema, "Sender");
        assert_eq!(
            sender,
            [
                "pid",
                "tid",
                "uid",
                "comm",
                "comm_hex",
                "kind",
                "code",
                "cgroup",
                "kind_from"
            ]
        );
        let exit = required(&schema, "ContainerExit");
        for field in ["pid_ns", "cause", "cause_seq", "sender", "other_oom_kills"] {
            assert!(exit.iter().any(|f| f == field), "{field}: {exit:?}");
        }
        assert_eq!(
            required(&schema, "OtherOomKills"),
            ["count", "seqs", "since"]
        );
    }

    /// docs/schema.md documents every field, in the words of the types.
    #[test]
    fn the_schema_docs_are_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema.md");
        let doc = std::fs::read_to_string(&path).expect("docs/schema.md");
        let filled = fill_field_tables(&doc).expect("markers");
        for (name, _) in field_tables() {
            assert!(
                doc.contains(&format!("<!-- fields:{name} -->")),
                "docs/schema.md has no table for {name}"
            );
        }
        assert!(
            filled == doc,
            "docs/schema.md's field tables differ from the record types: run `cargo xtask docs`"
        );
    }

    #[test]
    fn tables_document_every_field_of_every_record() {
        let tables = field_tables();
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "start",
                "oom_kill",
                "late_exit",
                "signal_kill",
                "container_exit",
                "oom_stall",
                "lost",
                "heartbeat",
                "stop",
                "rank_process",
                "rank_memcg"
            ]
        );
        let kill = &tables[1].1;
        for row in [
            "| `victim.rss.anon_bytes` | integer or null | yes |",
            "| `memcg.levels[].oom_group` | boolean or null | yes |",
            "| `oom.limit_scope` | `\"container\"` \\| `\"pod\"` \\| `\"cgroup\"` \\| `\"node\"` or null | yes |",
            "| `run_id` | string or null | no (added later) |",
            "| `oom.killed` | boolean or null | no (added later) |",
            "| `oom.signal_kill_seq` | integer or null | no (added later) |",
            "| `oom.group_kill` | boolean or null | no (added later) |",
        ] {
            assert!(kill.contains(row), "{row} not in:\n{kill}");
        }
        let signal = &tables[3].1;
        for row in [
            "| `target.pid` | integer or null | yes |",
            "| `sender.kind` | `\"userspace_oom_killer\"` \\| `\"container_runtime\"` \\| `\"kernel\"` \\| `\"other\"` | yes |",
            "| `sender.code` | `\"user\"` \\| `\"tkill\"` \\| `\"queue\"` \\| `\"kernel\"` \\| `\"other\"` | yes |",
            "| `sender.kind_from` | `\"comm\"` \\| `\"cgroup_xattr\"` \\| `\"si_code\"` or null | yes |",
            "| `after_sigterm.ms_before` | number | yes |",
            "| `part_of_oom_kill` | integer or null | yes |",
            "| `memcg.levels[].limit_bytes` | integer or null | yes |",
        ] {
            assert!(signal.contains(row), "{row} not in:\n{signal}");
        }
        let exit = &tables[4].1;
        for row in [
            "| `cause` | `\"oom_kill\"` \\| `\"signal_kill\"` \\| `\"signal\"` \\| `\"exit\"` | yes |",
            "| `sender` | object or null | yes |",
            "| `other_oom_kills.seqs` | array of integer | yes |",
        ] {
            assert!(exit.contains(row), "{row} not in:\n{exit}");
        }
        let stall = &tables[5].1;
        for row in [
            "| `phase` | `\"start\"` \\| `\"end\"` | yes |",
            "| `tasks[].state` | string or null | yes |",
        ] {
            assert!(stall.contains(row), "{row} not in:\n{stall}");
        }
        assert!(
            tables[0].1.contains("| `probes[].name` |"),
            "{}",
            tables[0].1
        );
        for (name, table) in &tables {
            for line in table.lines().skip(2) {
                assert!(
                    !line.ends_with("|  |"),
                    "{name}: a field without a doc comment: {line}"
                );
            }
        }
    }
}
