//! The schema as a contract: within a schema version fields are only added.
//! The schema of each version is committed (`schema/vN.json`, written by
//! `cargo xtask docs`, which refuses a breaking change); these tests fail
//! when today's record types remove, rename or retype a field of it without
//! bumping `SCHEMA_VERSION`, and when the committed copy is behind.

use std::path::Path;

use oomtrace_record::{SCHEMA_VERSION, breaking_changes, committed_schema_path, json_schema};
use serde_json::Value;

fn committed() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(committed_schema_path(SCHEMA_VERSION));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: a new schema version is committed by `cargo xtask docs`",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("the committed schema is JSON")
}

#[test]
fn fields_are_only_added_within_a_version() {
    let broken = breaking_changes(&committed(), &json_schema());
    assert!(
        broken.is_empty(),
        "schema {SCHEMA_VERSION} promises these fields to readers; bump SCHEMA_VERSION to \
         change them: {broken:#?}"
    );
}

#[test]
fn the_committed_schema_is_current() {
    assert!(
        committed() == json_schema(),
        "the committed schema is behind the record types: run `cargo xtask docs`"
    );
}

#[test]
fn a_removed_field_and_a_retyped_one_are_caught() {
    let today = json_schema();
    let mut fewer = today.clone();
    // The kill record's `seq`, gone; `oom.kernel_log` made a number.
    let defs = fewer["$defs"].as_object_mut().expect("$defs");
    let kill = defs.get_mut("OomKill").expect("OomKill");
    kill["properties"]
        .as_object_mut()
        .expect("properties")
        .remove("seq");
    let broken = breaking_changes(&today, &fewer);
    assert!(
        broken
            .iter()
            .any(|b| b == "oom_kill.seq: removed or renamed"),
        "{broken:?}"
    );
    assert!(
        breaking_changes(&fewer, &today).is_empty(),
        "adding is fine"
    );
    let mut retyped = today.clone();
    retyped["$defs"]["OomKill"]["properties"]["seq"] = serde_json::json!({"type": "string"});
    let broken = breaking_changes(&today, &retyped);
    assert!(
        broken
            .iter()
            .any(|b| b.starts_with("oom_kill.seq: integer became string")),
        "{broken:?}"
    );
}
